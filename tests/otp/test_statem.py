"""StateMachine: state timeouts, transitions, state enter, next_event."""

from __future__ import annotations

import time
from typing import Any

import pytest

from waraft import otp
from waraft.otp import statem

from .helpers import WAIT, Events, wait_until


class Machine(otp.StateMachine):
    def init(self, events: Events) -> None:
        self.events = events
        self.transition("idle")

    def on_enter(self, old_state: Any, new_state: Any) -> None:
        self.events.add(("enter", old_state, new_state))

    def handle_state_timeout(self, event: Any) -> None:
        self.events.add(("timeout", self.state, event))
        if event == "crash":
            raise RuntimeError("timeout handler crashed")

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request[0] == "seq":  # several ops in one callback: no timer can fire in between
            return [self.handle_call(op, from_) for op in request[1]][-1]
        op, *args = request
        if op == "arm":
            self.set_state_timeout(*args)
        elif op == "defer":
            self.defer_state_timeout(*args)
        elif op == "arm_deferred":
            self.arm_state_timeout()
        elif op == "busy":
            # Stay in this callback until the armed timer's firing is in our own mailbox.
            wait_until(lambda: self.actor_inbox.qsize() > 0)  # type: ignore[attr-defined]
        elif op == "go":
            self.transition(args[0])
        elif op == "cancel":
            self.cancel_state_timeout()
        elif op == "stale":
            # Arm a short timeout, let it fire into our own mailbox while we are busy, then
            # change state: the queued firing is stale and must be ignored.
            self.set_state_timeout(1, "stale")
            wait_until(lambda: self.actor_inbox.qsize() > 0)  # type: ignore[attr-defined]
            self.transition("moved")
        elif op == "events":
            for event in args:
                self.next_event(event)
            self.events.add(("call", tuple(args)))
        elif op == "armed":
            return self.state_timeout_armed
        return self.state

    def handle_cast(self, msg: Any) -> None:
        self.events.add(("cast", msg))

    def handle_next_event(self, event: Any) -> None:
        self.events.add(("next", event))
        if event == "spawn":
            self.next_event("spawned")


def _start(events: Events) -> otp.Pid:
    pid = Machine.start(events)
    events.wait_len(1)
    events.clear()
    return pid


def test_initial_transition_runs_on_enter_with_no_old_state() -> None:
    events = Events()
    Machine.start(events)
    assert events.wait_len(1) == [("enter", None, "idle")]


def test_state_timeout_fires_and_rearming_replaces_it() -> None:
    events = Events()
    pid = _start(events)
    otp.call(pid, ("seq", [("arm", 20, "first"), ("arm", 40, "second")]))
    assert otp.call(pid, ("armed",)) is True
    # "first" would have come first had it not been replaced.
    assert events.wait_len(1) == [("timeout", "idle", "second")]
    assert otp.call(pid, ("armed",)) is False


def test_a_pushed_back_timeout_fires_at_the_newest_deadline_with_the_newest_event() -> None:
    events = Events()
    pid = _start(events)
    start = time.monotonic()
    otp.call(pid, ("arm", 200, "first"))
    time.sleep(0.05)
    otp.call(pid, ("arm", 300, "second"))  # later than the armed timer: it is kept
    assert events.wait_len(1) == [("timeout", "idle", "second")]
    assert time.monotonic() - start >= 0.345  # 50 ms + 300 ms, never at the first's 200 ms


def test_an_earlier_deadline_replaces_the_armed_timer() -> None:
    events = Events()
    pid = _start(events)
    start = time.monotonic()
    otp.call(pid, ("seq", [("arm", 2000, "late"), ("arm", 20, "early")]))
    assert events.wait_len(1) == [("timeout", "idle", "early")]
    assert time.monotonic() - start < 1.5


def test_pushing_a_timeout_back_keeps_the_armed_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    armed: list[float] = []
    real = statem.send_after

    def counting(ms: float, target: Any, msg: Any) -> otp.TimerRef:
        armed.append(ms)
        return real(ms, target, msg)

    monkeypatch.setattr(statem, "send_after", counting)
    events = Events()
    pid = _start(events)
    otp.call(pid, ("seq", [("arm", 40 + i, f"e{i}") for i in range(50)]))
    assert len(armed) == 1  # one timer for fifty armings, each later than the last
    assert events.wait_len(1) == [("timeout", "idle", "e49")]
    assert len(armed) <= 2  # at most one re-arm for what was left when it fired


def test_a_deferred_deadline_holds_back_a_firing_that_came_while_the_process_was_busy() -> None:
    # The Raft server's group flush: the timer fired while the process was busy, then an
    # event pushed the deadline back but left the timer to a later arming. The queued firing
    # must wait out the new deadline and deliver the new event.
    events = Events()
    pid = _start(events)
    start = time.monotonic()
    otp.call(pid, ("seq", [("arm", 20, "old"), ("busy",), ("defer", 300, "new")]))
    assert events.wait_len(1) == [("timeout", "idle", "new")]
    assert time.monotonic() - start >= 0.295


def test_arming_a_deferred_timeout_that_already_fired_arms_nothing() -> None:
    events = Events()
    pid = _start(events)
    otp.call(pid, ("seq", [("arm", 20, "old"), ("busy",), ("defer", 0, "due")]))
    assert events.wait_len(1) == [("timeout", "idle", "due")]
    otp.call(pid, ("arm_deferred",))  # the flush that comes after the firing
    assert otp.call(pid, ("armed",)) is False
    otp.call(pid, ("seq", [("defer", 20, "armed"), ("arm_deferred",)]))
    assert events.wait_len(2)[1] == ("timeout", "idle", "armed")


def test_transition_cancels_the_state_timeout_and_repeat_state_runs_enter() -> None:
    events = Events()
    pid = _start(events)
    otp.call(pid, ("seq", [("arm", 20, "never"), ("go", "busy")]))
    otp.call(pid, ("seq", [("arm", 20, "never"), ("go", "busy")]))  # repeat_state
    otp.call(pid, ("arm", 60, "later"))
    got = events.wait_len(3)
    assert got == [
        ("enter", "idle", "busy"),
        ("enter", "busy", "busy"),
        ("timeout", "busy", "later"),
    ]


def test_cancel_state_timeout() -> None:
    events = Events()
    pid = _start(events)
    otp.call(pid, ("seq", [("arm", 10, "never"), ("cancel",)]))
    otp.call(pid, ("arm", 50, "later"))
    assert events.wait_len(1) == [("timeout", "idle", "later")]


def test_stale_timeout_already_queued_is_ignored() -> None:
    events = Events()
    pid = _start(events)
    assert otp.call(pid, ("stale",)) == "moved"
    otp.call(pid, ("arm", 30, "fresh"))
    assert events.wait_len(2) == [("enter", "idle", "moved"), ("timeout", "moved", "fresh")]


def test_next_events_run_before_the_next_mailbox_message_in_order() -> None:
    events = Events()
    pid = _start(events)
    otp.cast(pid, "before")
    handle = otp.send_request(pid, ("events", "a", "spawn", "b"))
    otp.cast(pid, "after")
    otp.wait_response(handle, WAIT)
    assert events.wait_len(7) == [
        ("cast", "before"),
        ("call", ("a", "spawn", "b")),
        ("next", "a"),
        ("next", "spawn"),
        ("next", "b"),
        ("next", "spawned"),
        ("cast", "after"),
    ]


def test_crash_in_state_timeout_handler_stops_the_machine() -> None:
    events = Events()
    pid = _start(events)
    otp.call(pid, ("arm", 1, "crash"))
    assert otp.wait_exit(pid, WAIT) == ("error", "RuntimeError: timeout handler crashed")
