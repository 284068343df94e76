"""Timers: send_after / cancel_timer."""

from __future__ import annotations

import time
from typing import Any

import pytest

from waraft import otp
from waraft.otp import timer
from waraft.otp.logsafe import LogThrottle

from .helpers import WAIT, Events


class Sink(otp.Process):
    def init(self, events: Events) -> None:
        self.events = events

    def handle_info(self, msg: Any) -> None:
        self.events.add(msg)


def test_send_after_delivers_in_deadline_order() -> None:
    events = Events()
    pid = Sink.start(events)
    refs = {
        "late": otp.send_after(60, pid, "late"),
        "early": otp.send_after(1, pid, "early"),
        "middle": otp.send_after(30, pid, "middle"),
    }
    # Normally early, middle, late; derived from the deadlines so a stalled test thread
    # cannot make the expectation wrong.
    expected = sorted(refs, key=lambda k: refs[k]._deadline)
    assert events.wait_len(3) == expected


def test_cancelled_timer_never_fires() -> None:
    events = Events()
    pid = Sink.start(events)
    ref = otp.send_after(200, pid, "cancelled")
    assert ref.active and ref.remaining_ms() is not None
    assert otp.cancel_timer(ref) is True
    assert otp.cancel_timer(ref) is False
    otp.send_after(250, pid, "marker")  # later deadline: once it is here, the other is gone
    assert events.wait_len(1) == ["marker"]
    assert not ref.active and ref.remaining_ms() is None


def test_cancel_after_firing_returns_false() -> None:
    events = Events()
    pid = Sink.start(events)
    ref = otp.send_after(0, pid, "now")
    events.wait_len(1)
    assert otp.cancel_timer(ref) is False


def test_named_target_resolves_at_fire_time_on_the_arming_node(otp_node: otp.Node) -> None:
    events = Events()
    otp.send_after(200, "sink", "hello")
    Sink.start(events, name="sink")  # registered after arming, before firing
    assert events.wait_len(1) == ["hello"]


def test_many_cancellations_compact_the_heap() -> None:
    events = Events()
    pid = Sink.start(events)
    refs = [otp.send_after(10_000, pid, i) for i in range(3000)]
    assert all(otp.cancel_timer(r) for r in refs)
    otp.send_after(1, pid, "survivor")
    assert events.wait_len(1) == ["survivor"]


def test_a_postponed_timer_fires_once_at_its_new_deadline() -> None:
    events = Events()
    pid = Sink.start(events)
    start = time.monotonic()
    ref = otp.send_after(100, pid, "postponed")
    ref.postpone(start + 0.3)
    ref.postpone(start + 0.2)  # earlier than already asked: no effect
    otp.send_after(150, pid, "marker")  # between the old and the new deadline
    assert events.wait_len(2) == ["marker", "postponed"]
    assert time.monotonic() - start >= 0.3
    assert not ref.active


class Rearming(otp.Process):
    """Arms an hour-long timer to itself at init and on every cast (cancelling the last),
    and one to a name; ``"crash"`` crashes it."""

    def init(self, refs: list[otp.TimerRef]) -> None:
        self.refs = refs
        self.last = otp.send_after(3_600_000, self.pid, "own")
        refs.append(self.last)

    def handle_cast(self, msg: Any) -> None:
        if msg == "crash":
            raise RuntimeError("crash")
        otp.cancel_timer(self.last)
        self.last = otp.send_after(3_600_000, self.pid, "own")
        self.refs.append(self.last)
        self.refs.append(otp.send_after(3_600_000, "a_name", "not its own"))

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return len(self._timers)


def test_the_timers_a_process_armed_to_itself_are_cancelled_when_it_exits() -> None:
    # As Erlang cancels a timer whose destination pid is gone. Before, every incarnation of
    # a restarting process left its timers armed in the shared heap (active, cancellable).
    refs: list[otp.TimerRef] = []
    sup = otp.supervisor.start(
        {"strategy": "one_for_one", "intensity": 100, "period": 1},
        [{"id": "r", "start": (Rearming.start_link, (refs,))}],
    )
    for _ in range(10):
        (_, pid, _, _) = otp.supervisor.which_children(sup)[0]
        otp.cast(pid, "crash")
        assert otp.wait_exit(pid, 5.0)[0] == "error"
    (_, pid, _, _) = otp.supervisor.which_children(sup)[0]  # the last restart is done
    assert len(refs) == 11 and [r.active for r in refs] == [False] * 10 + [True]
    assert otp.cancel_timer(refs[0]) is False
    # Re-arming on every event keeps the set of its own timers small; timers to a name are
    # not its own and outlive it.
    for _ in range(1000):
        otp.cast(pid, "again")
    assert otp.call(pid, "count") <= 2 * 64
    otp.kill(pid)
    otp.wait_exit(pid, 5.0)
    own = [r for r in refs if r._target is pid]
    named = [r for r in refs if r._target == "a_name"]
    assert not any(r.active for r in own) and all(r.active for r in named)
    for ref in named:
        otp.cancel_timer(ref)


class _Injected(BaseException):
    """What no timer callback is written to raise."""


def _assert_timers_work() -> None:
    """A node started now gets its timers (a failed timer loop was replaced)."""
    node = otp.Node("timers_after@t")
    events = Events()
    otp.send_after(1, Sink.start(events, node=node), "tick")
    assert events.wait_len(1) == ["tick"]


def test_a_failed_timer_thread_fails_every_local_node(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, the thread died with only Python's "Exception in thread" traceback: the node
    # looked healthy while every wait timeout and the long-hold watchdog were gone.
    nodes = [otp.Node(f"timer_fail_{i}@t") for i in range(2)]
    failures = Events()
    for node in nodes:
        node.on_failure(failures.add)
    real = timer._TimerService._next_due
    injected: list[bool] = []

    def fails_once(service: timer._TimerService) -> list[timer.TimerRef]:
        if not injected:
            injected.append(True)
            raise RuntimeError("injected")
        return real(service)

    monkeypatch.setattr(timer._TimerService, "_next_due", fails_once)
    # A fresh throttle: the line must not be held back by an earlier test's failure.
    monkeypatch.setattr(timer._service, "_failure_log", LogThrottle())
    otp.send_after(0, Sink.start(Events(), node=nodes[0]), "wake the timer thread")
    reason = ("timer_failed", "RuntimeError: injected")
    assert failures.wait_len(2) == [reason, reason]
    assert all(node.wait_stopped(WAIT) and node.failure == reason for node in nodes)
    assert "the timer thread failed (RuntimeError: injected" in caplog.text
    _assert_timers_work()


def test_a_timer_callback_raising_a_base_exception_fails_every_local_node() -> None:
    node = otp.Node("timer_callback@t")
    failures = Events()
    node.on_failure(failures.add)

    def broken() -> None:
        raise _Injected("injected")

    timer.call_later(0, broken)
    assert failures.wait_len(1) == [("timer_failed", "_Injected: injected")]
    assert node.wait_stopped(WAIT)
    _assert_timers_work()
