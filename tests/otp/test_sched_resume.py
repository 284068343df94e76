"""``otp.sched.resume_all``: a batch resume of suspended processes, one run-queue put per
scheduler."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from waraft import otp
from waraft.otp import sched


class _FakeRunQueue:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any) -> None:
        self.items.append(item)


class _FakeSched:
    def __init__(self) -> None:
        self.runq = _FakeRunQueue()


class _FakeProc:
    def __init__(self, scheduler: _FakeSched) -> None:
        self._sched = scheduler


def test_resume_all_puts_once_per_scheduler() -> None:
    a, b = _FakeSched(), _FakeSched()
    procs = [_FakeProc(s) for s in (a, b, a, a, b)]
    sched.resume_all(procs)  # type: ignore[arg-type]
    assert len(a.runq.items) == 1 and len(b.runq.items) == 1
    assert a.runq.items[0].procs == [procs[0], procs[2], procs[3]]  # in the given order
    assert b.runq.items[0].procs == [procs[1], procs[4]]
    lone = _FakeProc(a)
    sched.resume_all([lone])  # type: ignore[list-item]
    assert a.runq.items[-1] is lone  # a single process goes as itself, no batch


class _Parker(otp.Process):
    """Registers itself and suspends; answers once some other thread resumed it."""

    parked: ClassVar[list[Any]] = []
    lock = threading.Lock()

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        me = sched.scheduled_caller()
        assert me is not None
        with _Parker.lock:
            _Parker.parked.append(me)
        sched.suspend(me)
        return "resumed"


class _Echo(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return request


def test_a_batch_resume_runs_every_process_once_and_the_scheduler_goes_on() -> None:
    _Parker.parked = []
    node = otp.Node("resumeall@t", schedulers=2, process_type=otp.SCHEDULED)
    try:
        parkers = [_Parker.start(node=node) for _ in range(6)]
        echo = _Echo.start(node=node)
        handles = [otp.send_request(p, "park") for p in parkers]
        deadline = time.monotonic() + 10
        while len(_Parker.parked) < 6:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert otp.call(echo, "still running", timeout=5) == "still running"
        sched.resume_all(list(_Parker.parked))  # from a plain thread, as the WAL's does
        assert [otp.wait_response(h, 10) for h in handles] == ["resumed"] * 6
        assert otp.call(echo, "after", timeout=5) == "after"
        # Each can park and be resumed again (resumed once, not left queued twice).
        _Parker.parked = []
        handle = otp.send_request(parkers[0], "park")
        while not _Parker.parked:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sched.resume_all(list(_Parker.parked))
        assert otp.wait_response(handle, 10) == "resumed"
    finally:
        node.stop()
