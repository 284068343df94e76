"""Process identifiers and references.

A :class:`Pid` names one process for its whole life and after it: once the process is dead the
pid keeps its exit reason, sends to it are dropped and calls to it fail with ``noproc``. Pids
compare by identity (one object per process) and belong to this Python process only; remote
processes are addressed as ``(name, node_id)``.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

from waraft.otp.sched import Event

if TYPE_CHECKING:
    from waraft.otp.mailbox import Inbox
    from waraft.otp.node import Node
    from waraft.otp.process import Process

_pid_ids = itertools.count(1)
_ref_ids = itertools.count(1)


class Pid:
    """Handle of one process; safe to share between threads.

    The private fields hold the process's signal state (links, monitors, exit reason). They are
    guarded by ``_lock`` except ``_dead``/``_exit_reason``, which are written once, reason first,
    so that a lock-free reader that sees ``_dead`` also sees the reason.
    """

    __slots__ = (
        "__weakref__",
        "_actor",
        "_dead",
        "_done",
        "_exit_reason",
        "_id",
        "_inbox",
        "_links",
        "_lock",
        "_loop_done",
        "_monitors",
        "_name",
        "_node",
        "_thread",
        "node_id",
    )

    def __init__(self, node: Node, inbox: Inbox, actor: Process) -> None:
        self._id = next(_pid_ids)
        self.node_id: str = node.id
        self._node = node
        self._inbox = inbox
        self._actor: Process | None = actor
        self._lock = threading.Lock()
        self._dead = False
        self._exit_reason: Any = None
        self._links: set[Pid] = set()
        self._monitors: dict[Ref, Pid] = {}
        self._done = Event()  # scheduled processes wait on it without holding a thread
        self._name: str | None = None
        self._thread: threading.Thread | None = None  # thread processes
        self._loop_done: Event | None = None  # scheduled processes: set when the greenlet ends

    def __repr__(self) -> str:
        return f"<{self.node_id}.{self._id}>"

    def is_alive(self) -> bool:
        """False once the process has exited (or was killed/abandoned)."""
        return not self._dead

    @property
    def exit_reason(self) -> Any:
        """The exit reason, or None while the process is alive."""
        return self._exit_reason if self._dead else None

    @property
    def name(self) -> str | None:
        """The registered name, if any."""
        return self._name

    @property
    def node(self) -> Node:
        """The node the process runs on."""
        return self._node


class Ref:
    """A unique reference (Erlang ``make_ref()``): equal only to itself, hashable."""

    __slots__ = ("_id",)

    def __init__(self) -> None:
        self._id = next(_ref_ids)

    def __repr__(self) -> str:
        return f"#Ref<{self._id}>"


class MonitorRef(Ref):
    """The reference returned by ``monitor``; remembers the monitored process."""

    __slots__ = ("_target",)

    def __init__(self, target: Pid | None) -> None:
        super().__init__()
        self._target = target


def make_ref() -> Ref:
    """A new unique reference."""
    return Ref()
