"""Reply handles (Erlang's ``From``).

A :class:`ReplyTo` is completed exactly once, by any thread: ``reply(value)`` or
``fail(reason)``; later completions are ignored. A handler that returns :data:`NOREPLY` passes
the obligation to answer to whoever holds the handle (acceptor -> server -> storage).
``waraft.distribution`` subclasses :class:`ReplyTo` to answer callers on other nodes.
"""

from __future__ import annotations

import abc
from _thread import allocate_lock
from typing import TYPE_CHECKING, Any, Final

from waraft.otp.errors import TIMEOUT, ExitError
from waraft.otp.sched import _check_alive, _GreenWaker, scheduled_caller, suspend

if TYPE_CHECKING:
    from waraft.otp.process import Process


class _NoReply:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOREPLY"


NOREPLY: Final[Any] = _NoReply()
"""Returned by ``handle_call`` to defer the reply (``{noreply, State}``)."""


class ReplyTo(abc.ABC):
    """One-shot reply handle. Subclasses implement :meth:`_complete`.

    The once-only rule is enforced here with a non-blocking lock acquire, which is atomic, so
    concurrent completions from different threads are safe and cost no waiting.
    """

    __slots__ = ("_claim",)

    def __init__(self) -> None:
        self._claim = allocate_lock()

    @property
    def done(self) -> bool:
        """True once completed (or given up by a timed-out caller)."""
        return self._claim.locked()

    def reply(self, value: Any) -> None:
        """Answer the caller with ``value`` (ignored if already completed)."""
        if self._claim.acquire(False):
            self._complete(True, value)

    def fail(self, reason: Any) -> None:
        """Make the caller's call raise ``ExitError(reason)`` (ignored if already completed)."""
        if self._claim.acquire(False):
            self._complete(False, reason)

    @abc.abstractmethod
    def _complete(self, ok: bool, value: Any) -> None:
        """Deliver the outcome; called at most once."""


class LocalReplyTo(ReplyTo):
    """A reply handle for a caller in this Python process: a future on a raw lock.

    A waiting thread blocks on ``_ready`` (acquired at creation); completion releases it. A
    waiting scheduled process instead leaves a waker in ``_waiter`` and yields its scheduler;
    completion releases ``_ready`` first, then fires the waker.
    """

    __slots__ = ("_ok", "_ready", "_value", "_waiter")

    def __init__(self) -> None:
        self._claim = allocate_lock()
        ready = allocate_lock()
        ready.acquire()
        self._ready = ready
        self._ok = False
        self._value: Any = None
        self._waiter: _GreenWaker | None = None

    def _complete(self, ok: bool, value: Any) -> None:
        self._ok = ok
        self._value = value
        self._ready.release()
        waiter = self._waiter
        if waiter is not None:
            waiter.fire()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until completed; return the value or raise ``ExitError``.

        ``timeout`` in seconds (None = forever). On timeout the handle is claimed by the caller,
        so a late reply is dropped, and ``ExitError("timeout")`` is raised. Called from a
        scheduled process, the wait yields the scheduler instead of blocking it.
        """
        ready = self._ready
        proc = scheduled_caller()
        if proc is not None:
            got = ready.acquire(False) or self._wait_scheduled(proc, timeout)
        elif timeout is None:
            got = ready.acquire()
        else:
            got = ready.acquire(True, max(timeout, 0.0))
        if not got:
            if self._claim.acquire(False):
                self._value = TIMEOUT
                ready.release()  # a second wait() raises the same timeout at once
                raise ExitError(TIMEOUT)
            ready.acquire()  # a completion won the race; it releases in a moment
        ready.release()  # keep the handle readable by a second wait()
        if self._ok:
            return self._value
        raise ExitError(self._value)

    def _wait_scheduled(self, proc: Process, timeout: float | None) -> bool:
        """Suspend ``proc`` until completion or timeout; True when ``_ready`` is acquired."""
        if timeout is not None and timeout <= 0:
            return False
        ready = self._ready
        waker = _GreenWaker(proc)
        self._waiter = waker
        if ready.acquire(False):  # completed between the caller's check and now
            if not waker.cancel():
                suspend(proc)  # the completion already queued us: take that resumption
                _check_alive(proc)
            return True
        if waker.wait(timeout):
            return ready.acquire(False)  # released before the waker fired
        return False


class _Discard(ReplyTo):
    """The reply handle of a request nobody waits for (a cast sent with no handle).

    Completing it does nothing, any number of times. Admission hands it in place of ``None``
    so that every admitted request carries a handle: whoever completes a request also
    releases what its admission took, and a request without a handle was never released."""

    __slots__ = ()

    def __init__(self) -> None:  # no claim lock: completions are all ignored alike
        pass

    def __repr__(self) -> str:
        return "DISCARD"

    @property
    def done(self) -> bool:
        return False

    def reply(self, value: Any) -> None:
        pass

    def fail(self, reason: Any) -> None:
        pass

    def _complete(self, ok: bool, value: Any) -> None:  # pragma: no cover - never called
        pass


DISCARD: Final[ReplyTo] = _Discard()
"""The one reply handle whose answers go nowhere (see ``_Discard``)."""


def reply(from_: ReplyTo, value: Any) -> None:
    """Complete a deferred call (``gen_server:reply/2``)."""
    from_.reply(value)
