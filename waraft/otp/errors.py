"""Exit reasons and the exceptions of the actor runtime.

Exit reasons follow Erlang: ``"normal"``, ``"shutdown"``, ``("shutdown", term)`` are normal
exits; ``"kill"`` is the untrappable signal and ``"killed"`` the reason it leaves behind;
anything else is abnormal. A crash in a handler leaves ``("error", "ValueError: text")``.
"""

from __future__ import annotations

from typing import Any, Final

NORMAL: Final = "normal"
SHUTDOWN: Final = "shutdown"
KILL: Final = "kill"
KILLED: Final = "killed"
NOPROC: Final = "noproc"
TIMEOUT: Final = "timeout"
CALLING_SELF: Final = "calling_self"


def is_normal_exit(reason: Any) -> bool:
    """True for ``"normal"``, ``"shutdown"`` and ``("shutdown", term)``."""
    if isinstance(reason, str):
        return reason in (NORMAL, SHUTDOWN)
    return isinstance(reason, tuple) and len(reason) == 2 and reason[0] == SHUTDOWN


def error_reason(exc: BaseException) -> tuple[str, str]:
    """The exit reason of a process that crashed with ``exc``: ``("error", "Type: text")``.

    A string rather than the exception object, so that reasons compare by value and can travel
    to other nodes.
    """
    return ("error", f"{type(exc).__name__}: {exc}")


class OtpError(Exception):
    """Base of the runtime's exceptions; ``reason`` is an Erlang-style term."""

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"


class ExitError(OtpError):
    """A call failed: ``"noproc"``, ``"timeout"``, ``("nodedown", node_id)``, ``"calling_self"``
    or the exit reason of the callee that died before replying."""


class StartError(OtpError):
    """A process (or supervisor) could not be started; ``reason`` says why, e.g.
    ``("already_started", pid)``, or the reason ``init`` failed with.

    ``init`` may raise ``StartError(reason)`` itself to fail with exactly ``reason``.
    """


class RegistrationError(OtpError):
    """A name could not be registered: ``("already_registered", pid)``, ``"noproc"``,
    ``("already_named", name)`` or ``"not_registered"`` (unregister of a free name)."""
