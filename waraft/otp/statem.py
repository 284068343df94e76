"""A gen_statem-style helper on :class:`~waraft.otp.process.Process`.

* ``state`` holds the current state; ``transition(new)`` cancels the state timeout, changes the
  state and runs ``on_enter(old, new)`` (also for ``new == old``: repeat_state). Set the first
  state from ``init`` with ``transition(initial)``; ``old`` is then None.
* One state timeout per process: ``set_state_timeout(ms, event)`` replaces the armed one;
  ``handle_state_timeout(event)`` runs when it fires. Each arm/cancel bumps a generation
  counter, so a firing that was already in the mailbox when the timeout was replaced or
  cancelled is ignored. Re-arming for a deadline no earlier than the armed timer's keeps that
  timer and postpones it (``TimerRef.postpone``: the timer thread files it again instead of
  delivering); a firing that still comes before the newest deadline is armed again for the
  rest. A process that pushes its timeout back on every message (a follower's election timer
  on every append) thus costs one timer per timeout period instead of a cancel and an arm per
  message.
  The timeout never fires before the newest deadline, and fires with the newest event.
* ``defer_state_timeout(ms, event)`` sets the deadline and event at once but leaves the timer
  alone (attribute writes only); ``arm_state_timeout()`` later files the timer for that
  deadline. Between the two the deadline already counts: a firing of the armed timer that
  comes before it is armed again for the rest, exactly as a pushed-back one is. A process that
  defers its timer work to a group flush (the Raft server) thus never takes a firing queued
  while it was busy for a timeout an event it handled since has pushed back.
* ``next_event(event)`` queues an event that ``handle_next_event`` handles right after the
  current callback, before the next mailbox message, in FIFO order.
"""

from __future__ import annotations

import time
from typing import Any

from waraft.otp.process import Process
from waraft.otp.timer import TimerRef, cancel_timer, send_after


class _StateTimeout:
    __slots__ = ("event", "generation")

    def __init__(self, generation: int, event: Any) -> None:
        self.generation = generation
        self.event = event


class StateMachine(Process):
    """Subclass and implement ``on_enter``, ``handle_state_timeout`` and the handlers."""

    state: Any = None
    _st_generation: int = 0
    _st_ref: TimerRef | None = None
    _st_fires_at: float = 0.0  # monotonic seconds the armed timer is to fire at (postponed)
    _st_deadline: float = 0.0  # monotonic seconds the newest arming asked for
    _st_event: Any = None
    _st_due: bool = False  # a deadline is set that has neither fired nor been cancelled

    def transition(self, new_state: Any) -> None:
        """Cancel the state timeout, switch to ``new_state`` and run ``on_enter``."""
        self.cancel_state_timeout()
        old = self.state
        self.state = new_state
        self.on_enter(old, new_state)

    def on_enter(self, old_state: Any, new_state: Any) -> None:
        """State-enter callback (default: nothing)."""

    def set_state_timeout(self, ms: float, event: Any) -> None:
        """Arm the state timeout (replacing any armed one): ``handle_state_timeout(event)``
        runs ``ms`` milliseconds from now at the earliest, unless it is re-armed, cancelled or
        the state changes first."""
        self.defer_state_timeout(ms, event)
        self.arm_state_timeout()

    def defer_state_timeout(self, ms: float, event: Any) -> None:
        """Set the state timeout's deadline (``ms`` from now) and event, leaving the timer to
        a later ``arm_state_timeout``, which the caller must make. The deadline holds from
        now on: a firing of the armed timer that comes before it is armed again for the rest,
        and one that comes after it delivers ``event``. Cheap enough for every event."""
        self._st_deadline = time.monotonic() + ms / 1000.0
        self._st_event = event
        self._st_due = True

    def arm_state_timeout(self) -> None:
        """File the timer for the deadline the last ``defer_state_timeout`` set; nothing
        if that timeout has fired or was cancelled since."""
        if not self._st_due:
            return
        deadline = self._st_deadline
        ref = self._st_ref
        if ref is not None and self._st_fires_at <= deadline:
            # Later than planned: the timer thread re-files the armed timer at its old
            # deadline (no lock, no wake-up here); one that fires early anyway is re-armed
            # for the rest by _dispatch_info.
            ref.postpone(deadline)
            self._st_fires_at = deadline
            return
        self.cancel_state_timeout()
        self._st_fires_at = deadline
        left_ms = max(0.0, (deadline - time.monotonic()) * 1000.0)
        msg = _StateTimeout(self._st_generation, self._st_event)
        self._st_ref = send_after(left_ms, self.pid, msg)

    def cancel_state_timeout(self) -> None:
        """Disarm the state timeout; a firing already queued is ignored."""
        self._st_generation += 1
        self._st_due = False
        ref = self._st_ref
        if ref is not None:
            cancel_timer(ref)
            self._st_ref = None

    @property
    def state_timeout_armed(self) -> bool:
        """True while a state timeout is pending."""
        return self._st_ref is not None

    def handle_state_timeout(self, event: Any) -> None:
        """Called when the state timeout fires."""
        raise NotImplementedError(f"{type(self).__name__} got a state timeout: {event!r}")

    def next_event(self, event: Any) -> None:
        """Queue ``event`` for ``handle_next_event`` before the next mailbox message."""
        self._next_events.append(event)

    def _dispatch_info(self, msg: Any) -> None:
        if type(msg) is _StateTimeout:
            if msg.generation == self._st_generation:
                left_ms = (self._st_deadline - time.monotonic()) * 1000.0
                if left_ms > 0.0:
                    # Pushed back since this timer was armed: wait out the rest. The same
                    # generation, so a cancel before it fires still makes it stale.
                    self._st_fires_at = self._st_deadline
                    self._st_ref = send_after(left_ms, self.pid, msg)
                    return
                self._st_ref = None
                self._st_due = False
                event = self._st_event
                self._st_event = None
                self.handle_state_timeout(event)
            return
        self.handle_info(msg)

    def terminate(self, reason: Any) -> None:
        """Subclasses overriding this should call ``super().terminate(reason)``."""
        self.cancel_state_timeout()
