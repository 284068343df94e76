"""A gen_statem-style helper on :class:`~waraft.otp.process.Process`.

* ``state`` holds the current state; ``transition(new)`` cancels the state timeout, changes the
  state and runs ``on_enter(old, new)`` (also for ``new == old``: repeat_state). Set the first
  state from ``init`` with ``transition(initial)``; ``old`` is then None.
* One state timeout per process: ``set_state_timeout(ms, event)`` replaces the armed one;
  ``handle_state_timeout(event)`` runs when it fires. Each arm/cancel bumps a generation
  counter, so a firing that was already in the mailbox when the timeout was replaced or
  cancelled is ignored.
* ``next_event(event)`` queues an event that ``handle_next_event`` handles right after the
  current callback, before the next mailbox message, in FIFO order.
"""

from __future__ import annotations

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

    def transition(self, new_state: Any) -> None:
        """Cancel the state timeout, switch to ``new_state`` and run ``on_enter``."""
        self.cancel_state_timeout()
        old = self.state
        self.state = new_state
        self.on_enter(old, new_state)

    def on_enter(self, old_state: Any, new_state: Any) -> None:
        """State-enter callback (default: nothing)."""

    def set_state_timeout(self, ms: float, event: Any) -> None:
        """Arm the state timeout (replacing any armed one)."""
        self.cancel_state_timeout()
        self._st_ref = send_after(ms, self.pid, _StateTimeout(self._st_generation, event))

    def cancel_state_timeout(self) -> None:
        """Disarm the state timeout; a firing already queued is ignored."""
        self._st_generation += 1
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
                self._st_ref = None
                self.handle_state_timeout(msg.event)
            return
        self.handle_info(msg)

    def terminate(self, reason: Any) -> None:
        """Subclasses overriding this should call ``super().terminate(reason)``."""
        self.cancel_state_timeout()
