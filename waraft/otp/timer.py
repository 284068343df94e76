"""Timers: ``send_after`` / ``cancel_timer`` on one shared heap thread.

The thread is started on first use (importing this module starts nothing) and is a daemon; it
serves every node in this Python process, whatever their process type, so no timer ever costs a
thread of its own. A due timer delivers its message with ``send`` (``handle_info``) from the
timer thread: a mailbox post, which for a scheduled process only marks it runnable, so firing
never blocks on the receiver. ``call_later`` (internal) runs a short callback on the timer
thread instead; the scheduler uses it for the timeouts of waits inside scheduled processes.
Cancelled timers are dropped lazily when they reach the top of the heap; the heap is rebuilt
when most of it is cancelled, so re-arming a timeout on every event (election timers) stays
cheap. Cheaper still, ``TimerRef.postpone`` moves an armed timer later with one attribute
write: when its old deadline comes the timer thread files it again at the new one. The timers
a process arms to its own pid are cancelled when it exits (a per-process set, pruned in bulk).

The thread never fails silently: every wait timeout of a scheduled process and the long-hold
watchdog depend on it, so a node whose timers stopped would hang with every commit timing out
while looking healthy. A failure of its loop, or a callback raising a ``BaseException`` (a
``send``'s ``Exception`` is only logged), is logged at CRITICAL and fails every local node
with ``("timer_failed", text)``, as a scheduler failure does (``Node.failure``, the
``on_failure`` hooks, the node stops). A loop that failed is replaced by the next arming, so
the stopping nodes' own waits, and any node started later, still get their timers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from waraft.otp import node as _node
from waraft.otp.logsafe import LogThrottle
from waraft.otp.threadname import set_os_name

if TYPE_CHECKING:
    from waraft.otp.node import Node
    from waraft.otp.process import Process, Target

logger = logging.getLogger(__name__)

_ARMED: Final = 0
_FIRED: Final = 1
_CANCELLED: Final = 2
_COMPACT_MIN = 1024


class TimerRef:
    """Handle of one pending timer."""

    __slots__ = ("_deadline", "_later", "_msg", "_node", "_state", "_target")

    def __init__(self, deadline: float, target: Target, msg: Any, node: Node | None) -> None:
        self._deadline = deadline
        self._later = 0.0  # see postpone
        self._target = target
        self._msg = msg
        self._node = node
        self._state = _ARMED

    @property
    def active(self) -> bool:
        """True until the timer fires or is cancelled."""
        return self._state == _ARMED

    def remaining_ms(self) -> float | None:
        """Milliseconds until it fires, or None if it fired or was cancelled."""
        if self._state != _ARMED:
            return None
        return max(0.0, (self._deadline - time.monotonic()) * 1000.0)

    def postpone(self, deadline: float) -> None:
        """Ask for the timer to fire at ``deadline`` (monotonic seconds) instead, if that is
        later than now planned: one attribute write, no lock. The timer thread re-files the
        timer when its old deadline comes; if it was already delivering then, the message
        comes early, so the receiver must check the time itself (``StateMachine`` does)."""
        if deadline > self._later:
            self._later = deadline

    def __repr__(self) -> str:
        state = ("armed", "fired", "cancelled")[self._state]
        return f"<TimerRef {state} -> {self._target!r}>"


class _TimerService:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, TimerRef]] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._thread: threading.Thread | None = None
        self._failure_log = LogThrottle()  # a fault that repeats on every restart: 1 line/s

    def add(self, ref: TimerRef) -> None:
        with self._cond:
            heapq.heappush(self._heap, (ref._deadline, next(self._seq), ref))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otp:timer", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is ref:
                self._cond.notify()

    def cancel(self, ref: TimerRef) -> bool:
        with self._cond:
            if ref._state != _ARMED:
                return False
            ref._state = _CANCELLED
            self._cancelled += 1
            self._maybe_compact()
            return True

    def cancel_all(self, refs: list[TimerRef]) -> None:
        """Cancel every armed timer of ``refs`` under one lock."""
        with self._cond:
            for ref in refs:
                if ref._state == _ARMED:
                    ref._state = _CANCELLED
                    self._cancelled += 1
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self._cancelled > _COMPACT_MIN and self._cancelled * 2 > len(self._heap):
            # In place: the timer thread holds a reference to this list.
            self._heap[:] = [e for e in self._heap if e[2]._state == _ARMED]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _run(self) -> None:
        """The timer thread. Whatever ends it fails every local node (``_failed``); the next
        ``add`` starts a replacement (the heap is kept: it holds the pending timers)."""
        set_os_name("otp:timer")
        try:
            self._loop()
        except BaseException as exc:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
            self._failed("the timer thread failed", exc)

    def _loop(self) -> None:
        while True:
            for ref in self._next_due():
                try:
                    _deliver(ref)  # logs a send's Exception itself
                except BaseException as exc:
                    # A callback (a scheduled process's wake-up, the watchdog) broke as no code
                    # expects: a wake-up may be lost. The heap is intact: keep serving the rest.
                    self._failed(f"timer {_what(ref)} raised", exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        """Report a failure of the timer service and fail every local node with it."""
        reason = ("timer_failed", f"{type(exc).__name__}: {exc}")
        count = self._failure_log.ready()
        if count:
            more = f" ({count} such failures since the last line)" if count > 1 else ""
            logger.critical(
                "%s (%s)%s; stopping every local node", what, reason[1], more, exc_info=exc
            )
        for node in _node.local_nodes().values():
            node._fail(reason)

    def _next_due(self) -> list[TimerRef]:
        with self._cond:
            heap = self._heap
            while True:
                if not heap:
                    self._cond.wait()
                    continue
                wait = heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                due: list[TimerRef] = []
                now = time.monotonic()
                while heap and heap[0][0] <= now:
                    ref = heapq.heappop(heap)[2]
                    if ref._state == _ARMED:
                        later = ref._later
                        if later > now:  # postponed: file it again, deliver nothing yet
                            ref._deadline = later
                            heapq.heappush(heap, (later, next(self._seq), ref))
                            continue
                        ref._state = _FIRED
                        due.append(ref)
                    elif self._cancelled > 0:
                        self._cancelled -= 1
                if due:
                    return due


class _CallbackRef(TimerRef):
    """A timer that runs ``fn()`` on the timer thread instead of sending a message."""

    __slots__ = ("_fn",)

    def __init__(self, deadline: float, fn: Callable[[], Any]) -> None:
        super().__init__(deadline, "", None, None)
        self._fn = fn


def _what(ref: TimerRef) -> str:
    return f"callback {ref._fn!r}" if type(ref) is _CallbackRef else f"delivery to {ref._target!r}"


def _deliver(ref: TimerRef) -> None:
    from waraft.otp import process
    from waraft.otp.node import _tls

    try:
        if type(ref) is _CallbackRef:
            ref._fn()  # never blocks: the scheduler's wake-ups are queue puts
        elif ref._node is None:
            process.send(ref._target, ref._msg)
        else:
            # The node current by hand: Node.activate's generator context manager cost more
            # than the send at thousands of timers a second.
            previous = _tls.node
            _tls.node = ref._node
            try:
                process.send(ref._target, ref._msg)
            finally:
                _tls.node = previous
    except Exception:
        logger.exception("timer delivery to %r failed", ref._target)


_service = _TimerService()


def send_after(ms: float, target: Target, msg: Any) -> TimerRef:
    """Deliver ``msg`` to ``target``'s ``handle_info`` after ``ms`` milliseconds.

    A registered name is resolved when the timer fires, on the node current now.
    Timers to a dead process are simply dropped when they fire; a process's timers to its own
    pid are cancelled when it exits (as Erlang cancels a timer whose pid is gone), so that a
    restarting process does not leave its incarnations' timers armed.
    """
    # The arming node is current again at delivery: names resolve there, and the link filter
    # sees the true sender node.
    ref = TimerRef(time.monotonic() + ms / 1000.0, target, msg, _node.current())
    _service.add(ref)
    proc = _node._tls.proc
    if proc is not None and target is proc.pid:
        _own(proc, ref)
    return ref


def _own(proc: Process, ref: TimerRef) -> None:
    """Keep ``ref`` in ``proc``'s timers, which its exit cancels. Timers that fired or were
    cancelled are dropped in bulk once the set doubles: amortised O(1) for a process that
    re-arms a timeout on every event."""
    timers = proc._timers
    timers.add(ref)
    if len(timers) > proc._timers_limit:
        live = {t for t in timers if t._state == _ARMED}
        proc._timers = live
        proc._timers_limit = max(_OWN_PRUNE_MIN, 2 * len(live))


_OWN_PRUNE_MIN = 64


def cancel_own(proc: Process) -> None:
    """Cancel the timers ``proc`` armed to itself (it exited); any thread may call it."""
    timers = proc._timers
    if timers:
        _service.cancel_all(list(timers))


def call_later(seconds: float, fn: Callable[[], Any]) -> TimerRef:
    """Run ``fn()`` on the timer thread after ``seconds`` (internal: it must not block).
    Cancel with :func:`cancel_timer`."""
    ref = _CallbackRef(time.monotonic() + seconds, fn)
    _service.add(ref)
    return ref


def cancel_timer(ref: TimerRef) -> bool:
    """Cancel ``ref``; True if it had not fired yet (its message will not be sent)."""
    return _service.cancel(ref)
