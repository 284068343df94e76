"""Supervisors: start/stop order, strategies, restart types, intensity, shutdown, the API."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

from waraft import otp
from waraft.otp import supervisor as sup

from .helpers import (
    WAIT,
    Barrier,
    Events,
    Plain,
    Worker,
    child_pid,
    crash,
    starts,
    worker_spec,
)


def _tags(events: Events, kind: str) -> list[Any]:
    return [e[1] for e in events.list() if e[0] == kind]


def _start(strategy: str, tags: list[str], events: Events, **flags: Any) -> otp.Pid:
    return sup.start_link({"strategy": strategy, **flags}, [named_spec(events, t) for t in tags])


def worker_named(events: Events, tag: str) -> otp.Pid:
    return Worker.start_link(events, tag, name=tag)


def named_spec(events: Events, tag: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": tag, "start": (worker_named, (events, tag))}
    spec.update(extra)
    return spec


class Recorder(Worker):
    """Records which registered names existed when its init ran."""

    def init(self, events: Events, tag: Any, *extra: Any) -> None:
        if tag == "a":
            otp.sleep(0.05)  # a window in which an asynchronous start would let b overtake
        events.add(("saw", tag, sorted(n for n in otp.registered() if n in "abcd")))
        super().init(events, tag, *extra)


def test_children_start_in_order_synchronously_and_stop_in_reverse() -> None:
    events = Events()
    specs = [
        {"id": t, "start": (lambda e, t: Recorder.start_link(e, t, name=t), (events, t))}
        for t in "abc"
    ]
    pid = sup.start_link({}, specs)
    assert [c[0] for c in sup.which_children(pid)] == ["a", "b", "c"]
    saw = [e for e in events.list() if e[0] == "saw"]
    # Names are registered before init runs: each child sees itself and its elders only.
    assert saw == [("saw", "a", ["a"]), ("saw", "b", ["a", "b"]), ("saw", "c", ["a", "b", "c"])]
    sup.stop(pid, "shutdown")
    assert [e[1:] for e in events.list() if e[0] == "stop"] == [
        ("c", "shutdown"),
        ("b", "shutdown"),
        ("a", "shutdown"),
    ]


class BadInit(otp.Process):
    def init(self) -> None:
        raise ValueError("cannot start")


def test_failed_child_start_rolls_back_and_fails_the_supervisor() -> None:
    events = Events()
    specs = [
        named_spec(events, "a"),
        {"id": "b", "start": (BadInit.start_link, ())},
        named_spec(events, "c"),
    ]
    with pytest.raises(otp.StartError) as err:
        sup.start_link({}, specs, name="top")
    assert err.value.reason == (
        "shutdown",
        ("failed_to_start_child", "b", ("error", "ValueError: cannot start")),
    )
    assert events.list() == [("start", "a"), ("stop", "a", "shutdown")]
    assert otp.whereis("top") is None and otp.whereis("a") is None


def test_one_for_one_restarts_only_the_failed_child() -> None:
    events = Events()
    pid = _start("one_for_one", ["a", "b", "c"], events, intensity=5)
    before = {c[0]: c[1] for c in sup.which_children(pid)}
    reason = crash(before["b"])
    after = {c[0]: c[1] for c in sup.which_children(pid)}
    assert after["a"] is before["a"] and after["c"] is before["c"]
    assert after["b"] is not before["b"] and after["b"].is_alive()
    assert otp.whereis("b") is after["b"]
    assert events.list()[3:] == [("stop", "b", reason), ("start", "b")]


def test_one_for_all_stops_the_others_newest_first_then_restarts_all_in_order() -> None:
    events = Events()
    pid = _start("one_for_all", ["a", "b", "c"], events, intensity=5)
    events.clear()
    reason = crash(child_pid(pid, "b"))
    sup.which_children(pid)
    assert events.list() == [
        ("stop", "b", reason),
        ("stop", "c", "shutdown"),
        ("stop", "a", "shutdown"),
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
    ]


def test_rest_for_one_restarts_the_failed_child_and_those_started_after_it() -> None:
    events = Events()
    pid = _start("rest_for_one", ["a", "b", "c", "d"], events, intensity=5)
    a = child_pid(pid, "a")
    events.clear()
    reason = crash(child_pid(pid, "b"))
    sup.which_children(pid)
    assert events.list() == [
        ("stop", "b", reason),
        ("stop", "d", "shutdown"),
        ("stop", "c", "shutdown"),
        ("start", "b"),
        ("start", "c"),
        ("start", "d"),
    ]
    assert child_pid(pid, "a") is a


def test_restart_types() -> None:
    events = Events()
    specs = [
        worker_spec(events, "perm"),
        worker_spec(events, "trans", restart="transient"),
        worker_spec(events, "temp", restart="temporary"),
    ]
    pid = sup.start_link({"intensity": 10}, specs)
    # permanent: restarted even after a normal exit
    perm = child_pid(pid, "perm")
    otp.cast(perm, ("stop", "normal"))
    otp.wait_exit(perm, WAIT)
    assert child_pid(pid, "perm") is not perm
    # transient: restarted after an abnormal exit, not after a normal one (spec kept)
    trans = child_pid(pid, "trans")
    crash(trans)
    trans2 = child_pid(pid, "trans")
    assert trans2 is not trans
    otp.cast(trans2, ("stop", ("shutdown", "done")))
    otp.wait_exit(trans2, WAIT)
    assert ("trans", None, "worker", [Worker]) in sup.which_children(pid)
    # temporary: never restarted, spec removed
    crash(child_pid(pid, "temp"))
    assert [c[0] for c in sup.which_children(pid)] == ["perm", "trans"]
    assert sup.count_children(pid) == {"specs": 2, "active": 1, "supervisors": 0, "workers": 2}
    assert sup.restart_child(pid, "trans")[0] == "ok"


def test_temporary_sibling_is_removed_by_a_group_restart() -> None:
    events = Events()
    specs = [worker_spec(events, "a"), worker_spec(events, "tmp", restart="temporary")]
    pid = sup.start_link({"strategy": "one_for_all", "intensity": 5}, specs)
    crash(child_pid(pid, "a"))
    assert [c[0] for c in sup.which_children(pid)] == ["a"]
    assert _tags(events, "start") == ["a", "tmp", "a"]


def test_intensity_exceeded_stops_children_and_exits_shutdown() -> None:
    events = Events()
    pid = _start("one_for_one", ["a", "b"], events, intensity=1, period=60)
    crash(child_pid(pid, "a"))  # one restart: allowed
    crash(child_pid(pid, "a"))  # the second within the period: too many
    assert otp.wait_exit(pid, WAIT) == "shutdown"
    assert events.list()[-1] == ("stop", "b", "shutdown")
    assert otp.whereis("a") is None and otp.whereis("b") is None


def test_one_for_all_group_restart_counts_once() -> None:
    events = Events()
    pid = _start("one_for_all", ["a", "b", "c"], events, intensity=1, period=60)
    crash(child_pid(pid, "b"))
    assert sup.count_children(pid)["active"] == 3  # three restarts would have exceeded 1
    crash(child_pid(pid, "c"))
    assert otp.wait_exit(pid, WAIT) == "shutdown"


def test_escalation_through_two_levels() -> None:
    events = Events()

    def middle() -> otp.Pid:
        return sup.start_link({"intensity": 0}, [worker_spec(events, "leaf")], name="mid")

    top = sup.start_link(
        {"intensity": 1, "period": 60},
        [{"id": "mid", "start": (middle, ()), "type": "supervisor"}],
        name="top",
    )
    assert sup.which_children(top)[0][2] == "supervisor"
    mid1 = otp.whereis("mid")
    assert mid1 is not None
    crash(child_pid(mid1, "leaf"))  # mid cannot restart (intensity 0): it exits shutdown
    assert otp.wait_exit(mid1, WAIT) == "shutdown"
    mid2 = child_pid(top, "mid")  # top restarted it, with a fresh leaf
    assert mid2 is not mid1 and otp.whereis("mid") is mid2
    assert _tags(events, "start") == ["leaf", "leaf"]
    crash(child_pid(mid2, "leaf"))  # again: now top exceeds its intensity too
    assert otp.wait_exit(mid2, WAIT) == "shutdown"
    assert otp.wait_exit(top, WAIT) == "shutdown"
    assert otp.whereis("top") is None


class Stubborn(Worker):
    """Traps exits and blocks in terminate until released."""

    def init(self, events: Events, tag: Any, gate: otp.Event) -> None:
        super().init(events, tag)
        self.gate = gate

    def terminate(self, reason: Any) -> None:
        self.events.add(("terminating", self.tag, reason))
        self.gate.wait(WAIT)
        super().terminate(reason)


class Monitor(otp.Process):
    def init(self, events: Events, target: otp.Pid) -> None:
        self.events = events
        otp.monitor(target)

    def handle_info(self, msg: Any) -> None:
        self.events.add(("down", msg[-1]))


def test_child_ignoring_its_shutdown_timeout_is_abandoned(
    process_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events()
    gate = otp.Event()
    spec = {
        "id": "stuck",
        "start": (lambda: Stubborn.start_link(events, "stuck", gate, name="stuck"), ()),
        "shutdown": 50,
    }
    pid = sup.start_link({}, [spec, worker_spec(events, "other")])
    stuck = child_pid(pid, "stuck")
    Monitor.start(events, stuck)
    try:
        assert sup.terminate_child(pid, "stuck") == "ok"
        assert stuck.exit_reason == "killed"
        assert otp.whereis("stuck") is None
        events.wait_for(lambda items: ("down", "killed") in items)
        assert "did not stop within 50 ms; killed and abandoned" in caplog.text
        assert sup.which_children(pid)[0][:2] == ("stuck", None)
        assert sup.restart_child(pid, "stuck")[0] == "ok"  # the name can be taken again
    finally:
        gate.set()
    assert otp.sched.wait_loop_end(stuck, WAIT)
    # An abandoned thread finishes its terminate (reporting nothing: it was already dead); a
    # scheduled process stops at the wait it is resumed from.
    finished = ("stop", "stuck", "shutdown") in events.list()
    assert finished == (process_type == otp.THREAD)


def test_brutal_kill_and_infinity() -> None:
    events = Events()
    gate = otp.Event()
    specs = [
        worker_spec(events, "brutal", shutdown="brutal_kill"),
        {
            "id": "patient",
            "start": (Stubborn.start_link, (events, "patient", gate)),
            "shutdown": "infinity",
        },
    ]
    pid = sup.start_link({}, specs)
    brutal = child_pid(pid, "brutal")
    assert sup.terminate_child(pid, "brutal") == "ok"
    assert brutal.exit_reason == "killed"
    assert ("stop", "brutal", "killed") not in events.list()  # killed: no terminate
    patient = child_pid(pid, "patient")
    releaser = threading.Timer(0.1, gate.set)
    releaser.start()
    assert sup.terminate_child(pid, "patient") == "ok"  # waits as long as it takes
    assert patient.exit_reason == "shutdown"
    assert ("stop", "patient", "shutdown") in events.list()
    releaser.join()


class Gathering(Worker):
    """terminate waits at a barrier: it passes only if all children stop concurrently."""

    def init(self, events: Events, tag: Any, barrier: Barrier, *extra: Any) -> None:
        super().init(events, tag, *extra)
        self.barrier = barrier

    def terminate(self, reason: Any) -> None:
        if reason != "shutdown":
            return
        if self.barrier.wait(WAIT):
            self.events.add(("met", self.extra))
        else:
            self.events.add(("alone", self.extra))


def test_simple_one_for_one() -> None:
    events = Events()
    barrier = Barrier(3)
    template = {"id": "conn", "start": (Gathering.start_link, (events, "conn", barrier))}
    pid = sup.start_link({"strategy": "simple_one_for_one", "intensity": 5}, [template])
    kids = [sup.start_child(pid, [i])[1] for i in range(3)]
    assert [otp.call(k, "extra") for k in kids] == [(0,), (1,), (2,)]
    assert sup.which_children(pid) == [(None, k, "worker", [Gathering]) for k in kids]
    assert sup.count_children(pid) == {"specs": 1, "active": 3, "supervisors": 0, "workers": 3}
    crash(kids[1])  # restarted with the same extra args
    new = [c[1] for c in sup.which_children(pid)]
    assert len(new) == 3 and kids[1] not in new
    assert sorted(otp.call(k, "extra") for k in new) == [(0,), (1,), (2,)]
    assert sup.terminate_child(pid, "conn") == ("error", "simple_one_for_one")
    assert sup.restart_child(pid, "conn") == ("error", "simple_one_for_one")
    assert sup.delete_child(pid, "conn") == ("error", "simple_one_for_one")
    assert sup.terminate_child(pid, kids[1]) == "ok"  # a dead pid: nothing to do
    events.clear()
    sup.stop(pid, "shutdown")
    assert sorted(e for e in events.list() if e[0] == "met") == [
        ("met", (0,)),
        ("met", (1,)),
        ("met", (2,)),
    ]


def test_simple_one_for_one_terminate_child_by_pid() -> None:
    events = Events()
    pid = sup.start_link(
        {"strategy": "simple_one_for_one"}, [{"id": "t", "start": (Worker.start_link, (events,))}]
    )
    status, kid = sup.start_child(pid, ["k"])
    assert status == "ok"
    assert sup.terminate_child(pid, kid) == "ok"
    assert kid.exit_reason == "shutdown"
    assert sup.which_children(pid) == []
    other = Worker.start(events, "stranger")
    assert sup.terminate_child(pid, other) == ("error", "not_found")


def test_simple_one_for_one_terminate_child_drops_a_restart_to_be_retried() -> None:
    # A child whose restart failed waits as {restarting, OldPid}: terminate_child by the old
    # pid answered ok (a dead pid) and left the retry to bring the child back (review Z, 1).
    events = Events()
    attempts = itertools.count()
    supervisor_pid: list[otp.Pid] = []
    first: list[otp.Pid] = []
    stops: list[otp.ReplyTo] = []

    def flaky(tag: str) -> otp.Pid:
        if next(attempts) == 0:
            return Worker.start_link(events, tag)
        if not stops:
            # Runs inside the supervisor: queue the stop ahead of the retry.
            stops.append(otp.send_request(supervisor_pid[0], ("terminate_child", first[0])))
        raise RuntimeError("not yet")

    pid = sup.start_link(
        {"strategy": "simple_one_for_one", "intensity": 5}, [{"id": "f", "start": (flaky, ())}]
    )
    supervisor_pid.append(pid)
    status, kid = sup.start_child(pid, ["k"])
    assert status == "ok"
    first.append(kid)
    crash(kid)
    sup.which_children(pid)  # the EXIT was queued first: the failed attempt has happened
    assert otp.wait_response(stops[0], WAIT) == "ok"
    assert sup.which_children(pid) == []  # after the retry it had queued: nothing left
    assert next(attempts) == 2  # the first start and the one failed restart
    assert pid.is_alive()


def ignore_start() -> None:
    return None


def test_start_child_results_and_ignore() -> None:
    events = Events()
    pid = sup.start_link({}, [{"id": "ign", "start": (ignore_start, ())}])
    assert sup.which_children(pid) == [("ign", None, "worker", [ignore_start])]
    spec = worker_spec(events, "w")
    status, w = sup.start_child(pid, spec)
    assert status == "ok" and isinstance(w, otp.Pid)
    assert sup.start_child(pid, spec) == ("error", ("already_started", w))
    assert sup.terminate_child(pid, "w") == "ok"
    assert sup.start_child(pid, spec) == ("error", "already_present")
    assert sup.start_child(pid, {"id": "bad", "start": (ignore_start, ()), "restart": "x"}) == (
        "error",
        ("invalid_restart_type", "x"),
    )
    failing = sup.start_child(pid, {"id": "f", "start": (BadInit.start_link, ())})
    assert failing == ("error", ("error", "ValueError: cannot start"))
    temp_ignored = {"id": "ti", "start": (ignore_start, ()), "restart": "temporary"}
    assert sup.start_child(pid, temp_ignored) == ("ok", None)
    assert [c[0] for c in sup.which_children(pid)] == ["ign", "w"]


def test_restart_child_and_delete_child() -> None:
    events = Events()
    pid = sup.start_link({}, [worker_spec(events, "a")])
    assert sup.restart_child(pid, "a") == ("error", "running")
    assert sup.delete_child(pid, "a") == ("error", "running")
    assert sup.restart_child(pid, "zz") == ("error", "not_found")
    assert sup.delete_child(pid, "zz") == ("error", "not_found")
    assert sup.terminate_child(pid, "zz") == ("error", "not_found")
    assert sup.terminate_child(pid, "a") == "ok"
    status, a2 = sup.restart_child(pid, "a")
    assert status == "ok" and a2.is_alive()
    assert sup.terminate_child(pid, "a") == "ok"
    assert sup.get_childspec(pid, "a")[0] == "ok"
    assert sup.delete_child(pid, "a") == "ok"
    assert sup.which_children(pid) == []
    assert sup.get_childspec(pid, "a") == ("error", "not_found")


def test_failed_restart_shows_restarting_and_retries_through_the_mailbox() -> None:
    events = Events()
    attempts = itertools.count()
    peeks: list[otp.ReplyTo] = []
    supervisor_pid: list[otp.Pid] = []

    def flaky() -> otp.Pid:
        n = next(attempts)
        if n == 1:
            # Runs inside the supervisor: queue a which_children call ahead of the retry.
            peeks.append(otp.send_request(supervisor_pid[0], "which_children"))
            raise RuntimeError("not yet")
        return Worker.start_link(events, "flaky")

    pid = sup.start_link({"intensity": 5}, [{"id": "f", "start": (flaky, ())}])
    supervisor_pid.append(pid)
    crash(child_pid(pid, "f"))
    sup.which_children(pid)  # the EXIT was queued first: the failed attempt has happened
    assert otp.wait_response(peeks[0], WAIT) == [("f", "restarting", "worker", [flaky])]
    assert child_pid(pid, "f").is_alive()  # the retry succeeded
    assert next(attempts) == 3


def test_restart_that_keeps_failing_exhausts_the_intensity() -> None:
    events = Events()
    attempts = itertools.count()

    def start_once() -> otp.Pid:
        if next(attempts) > 0:
            raise RuntimeError("never again")
        return Worker.start_link(events, "once")

    pid = sup.start_link({"intensity": 3, "period": 60}, [{"id": "o", "start": (start_once, ())}])
    crash(child_pid(pid, "o"))
    assert otp.wait_exit(pid, WAIT) == "shutdown"
    assert next(attempts) == 4  # first start + 3 counted restart attempts


def test_crash_inside_a_call_handler_is_restarted() -> None:
    events = Events()
    pid = _start("one_for_one", ["a"], events)
    a = child_pid(pid, "a")
    with pytest.raises(otp.ExitError):
        otp.call(a, "crash")
    otp.wait_exit(a, WAIT)
    assert child_pid(pid, "a") is not a  # the supervisor has handled the EXIT by now
    assert otp.call("a", "ping") == "a"


def test_supervisor_api_errors_and_module_style_start() -> None:
    with pytest.raises(otp.StartError) as err:
        sup.start_link({"strategy": "one_for_none"}, [])
    assert err.value.reason == ("supervisor_data", ("invalid_strategy", "one_for_none"))
    with pytest.raises(otp.StartError) as err:
        sup.start_link({}, [{"id": 1, "start": (ignore_start, ())}] * 2)
    assert err.value.reason == ("start_spec", ("duplicate_child_name", 1))
    assert sup.check_childspecs([{"id": 1}]) == ("error", ("missing_start", {"id": 1}))
    events = Events()

    def init(tag: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return {"strategy": "one_for_all"}, [worker_spec(events, tag)]

    pid = sup.start_link_module(init, "m", name="modsup")
    assert otp.whereis("modsup") is pid and starts(events) == ["m"]
    with pytest.raises(otp.StartError) as err:
        sup.start_link_module(init, "m2", name="modsup")
    assert err.value.reason == ("already_started", pid)


def test_supervisor_parent_death_stops_the_tree() -> None:
    events = Events()
    holder: list[otp.Pid] = []

    class Owner(otp.Process):
        def init(self) -> None:
            holder.append(sup.start_link({}, [worker_spec(events, "leaf")]))

    owner = Owner.start()
    otp.exit(owner, "kill")
    child_sup = holder[0]
    assert otp.wait_exit(child_sup, WAIT) == "killed"
    assert ("stop", "leaf", "shutdown") in events.list()


def test_non_trapping_child_is_stopped_by_the_shutdown_signal() -> None:
    events = Events()
    spec = {"id": "p", "start": (Plain.start_link, (events, "p"))}
    pid = sup.start_link({}, [spec])
    p = child_pid(pid, "p")
    assert sup.terminate_child(pid, "p") == "ok"
    assert p.exit_reason == "shutdown"
    assert ("stop", "p", "shutdown") not in events.list()  # no trap, no terminate
