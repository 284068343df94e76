"""Processes: call/cast/send, deferred replies, let-it-crash, start/stop, the registry."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

import pytest

from waraft import otp
from waraft.otp import process
from waraft.otp.logsafe import LogThrottle

from .helpers import WAIT, Events, Worker, wait_until


class Echo(otp.Process):
    def init(self) -> None:
        self.casts: list[Any] = []
        self.infos: list[Any] = []

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "casts":
            return list(self.casts)
        if request == "infos":
            return list(self.infos)
        if request == "call_self":
            try:
                otp.call(self.pid, "casts")
            except otp.ExitError as exc:
                return exc.reason
        return ("echo", request)

    def handle_cast(self, msg: Any) -> None:
        self.casts.append(msg)

    def handle_info(self, msg: Any) -> None:
        self.infos.append(msg)


def test_call_cast_send_and_fifo_order() -> None:
    pid = Echo.start()
    assert otp.call(pid, 42) == ("echo", 42)
    for i in range(1000):
        otp.cast(pid, i)
    otp.send(pid, "info")
    assert otp.call(pid, "casts") == list(range(1000))
    assert otp.call(pid, "infos") == ["info"]


def test_registered_name_and_noproc() -> None:
    pid = Echo.start(name="echo")
    assert otp.whereis("echo") is pid
    assert otp.call("echo", 1) == ("echo", 1)
    with pytest.raises(otp.ExitError) as err:
        otp.call("nobody", 1)
    assert err.value.reason == "noproc"
    otp.cast("nobody", 1)  # never raises
    otp.send("nobody", 1)
    otp.stop(pid)
    with pytest.raises(otp.ExitError) as err:
        otp.call(pid, 1)
    assert err.value.reason == "noproc"
    assert otp.whereis("echo") is None


def test_call_timeout_then_late_reply_is_dropped() -> None:
    events = Events()
    pid = Worker.start(events, "w")
    gate = otp.Event()
    with pytest.raises(otp.ExitError) as err:
        otp.call(pid, ("block", gate), timeout=0.05)
    assert err.value.reason == "timeout"
    gate.set()
    assert otp.call(pid, "ping") == "w"  # still alive; the late "unblocked" went nowhere


def test_calling_self_fails() -> None:
    pid = Echo.start()
    assert otp.call(pid, "call_self") == "calling_self"


class Watcher(otp.Process):
    """Monitors and links to a target; records what it is told."""

    trap_exit = True

    def init(self, events: Events, target: otp.Pid, name: str | None = None) -> None:
        self.events = events
        self.name = name
        otp.monitor(target)
        otp.link(target)

    def handle_info(self, msg: Any) -> None:
        # The name must already be free when the DOWN arrives (restarts re-register it).
        free = None if self.name is None else otp.whereis(self.name) is None
        self.events.add((msg[0], msg[-1], free))


@pytest.mark.parametrize("how", ["call", "cast"])
def test_crash_in_any_handler_stops_and_notifies(how: str) -> None:
    events = Events()
    pid = Worker.start(events, "w", name="w")
    seen = Events()
    Watcher.start(seen, pid, "w")
    if how == "call":
        with pytest.raises(otp.ExitError) as err:
            otp.call(pid, "crash")
        assert err.value.reason == ("error", "ValueError: w crashed")
    else:
        otp.cast(pid, "crash")
    reason = otp.wait_exit(pid, WAIT)
    assert reason == ("error", "ValueError: w crashed")
    assert ("stop", "w", reason) in events.list()  # terminate ran with the reason
    got = seen.wait_len(2)
    expected = [("DOWN", reason, True), ("EXIT", reason, True)]
    assert sorted(got, key=repr) == sorted(expected, key=repr)


class InfoCrasher(otp.Process):
    def init(self, events: Events) -> None:
        self.events = events

    def handle_info(self, msg: Any) -> None:
        raise KeyError(msg)

    def terminate(self, reason: Any) -> None:
        self.events.add(reason)


def test_crash_in_info_handler() -> None:
    events = Events()
    pid = InfoCrasher.start(events)
    otp.send(pid, "boom")
    assert otp.wait_exit(pid, WAIT) == ("error", "KeyError: 'boom'")
    assert events.list() == [("error", "KeyError: 'boom'")]


def test_queued_calls_fail_with_the_exit_reason() -> None:
    events = Events()
    pid = Worker.start(events, "w")
    gate = otp.Event()
    otp.cast(pid, ("block", gate))
    otp.cast(pid, "crash")
    results: list[Any] = []

    def caller() -> None:
        try:
            otp.call(pid, "ping", timeout=WAIT)
        except otp.ExitError as exc:
            results.append(exc.reason)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_until(lambda: pid._inbox.qsize() >= 2)  # the crash cast and the call are queued
    gate.set()
    thread.join(WAIT)
    assert results == [("error", "ValueError: w crashed")]


class Front(otp.Process):
    """Defers calls: hands the reply handle to ``back`` (acceptor -> server -> storage)."""

    def init(self, back: otp.Pid | None) -> None:
        self.back = back
        self.held: list[otp.ReplyTo] = []

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if self.back is not None:
            otp.cast(self.back, (request, from_))
        else:
            self.held.append(from_)
        return otp.NOREPLY

    def handle_cast(self, msg: Any) -> None:
        if msg == "crash":
            raise RuntimeError("front crashed")


class Back(otp.Process):
    def handle_cast(self, msg: Any) -> None:
        request, from_ = msg
        otp.reply(from_, ("from back", request))


def test_deferred_reply_answered_by_third_actor() -> None:
    back = Back.start()
    front = Front.start(back)
    assert otp.call(front, "q", timeout=WAIT) == ("from back", "q")
    results = [otp.call(front, i, timeout=WAIT) for i in range(50)]
    assert results == [("from back", i) for i in range(50)]


def test_deferred_callers_fail_when_holder_crashes() -> None:
    front = Front.start(None)
    results: list[Any] = []

    def caller() -> None:
        try:
            results.append(otp.call(front, "q", timeout=WAIT))
        except otp.ExitError as exc:
            results.append(exc.reason)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_until(lambda: front._actor is not None and len(front._actor._deferred) == 1)
    otp.cast(front, "crash")
    thread.join(WAIT)
    assert results == [("error", "RuntimeError: front crashed")]


class Stuck(otp.Process):
    """Its call handler waits, suspended in a call that is never answered or on an event."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        waits_in, arg, started = request
        started.set()
        if waits_in == "call":
            return otp.call(arg, "q", timeout=None)
        arg.wait(WAIT)
        return "late"


@pytest.mark.parametrize("timeout", [None, WAIT])
@pytest.mark.parametrize("waits_in", ["call", "event"])
def test_a_call_being_handled_fails_when_the_callee_is_killed(
    waits_in: str, timeout: float | None
) -> None:
    # gen_server:call monitors the callee. Before, only queued and deferred calls were
    # failed: a caller whose call was being handled waited forever (timeout=None, as every
    # supervisor API call does) or got "timeout" instead of the exit reason.
    holder = Front.start(None)  # holds the calls it gets, never answers
    stuck = Stuck.start()
    started, release = otp.Event(), otp.Event()
    results: list[Any] = []

    def caller() -> None:
        arg = holder if waits_in == "call" else release
        try:
            results.append(otp.call(stuck, (waits_in, arg, started), timeout=timeout))
        except otp.ExitError as exc:
            results.append(exc.reason)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    assert started.wait(WAIT)
    otp.kill(stuck)
    thread.join(WAIT)
    assert results == ["killed"]
    release.set()  # a handler that ends after the death: its reply goes nowhere
    assert otp.wait_exit(stuck, WAIT) == "killed"
    assert results == ["killed"]


def test_reply_handle_completes_once() -> None:
    handle = otp.LocalReplyTo()
    handle.reply(1)
    handle.reply(2)
    handle.fail("late")
    assert handle.done
    assert handle.wait(0) == 1
    assert handle.wait(0) == 1
    failed = otp.LocalReplyTo()
    failed.fail("why")
    failed.reply(3)
    with pytest.raises(otp.ExitError) as err:
        failed.wait(0)
    assert err.value.reason == "why"


def test_send_request_and_wait_response() -> None:
    pid = Echo.start()
    handles = [otp.send_request(pid, i) for i in range(5)]
    assert [otp.wait_response(h) for h in handles] == [("echo", i) for i in range(5)]
    with pytest.raises(otp.ExitError) as err:
        otp.wait_response(otp.send_request("nobody", 1))
    assert err.value.reason == "noproc"


def test_a_cast_reply_brings_the_answer_or_the_failure_back_as_a_message() -> None:
    """A process that must not wait on a long request gets its outcome in its mailbox: the
    answer, or the reason the request failed (here an unknown callee), once, however many
    times the handle is completed."""
    collector = Echo.start()
    answered = otp.send_request(Echo.start(), 7, otp.CastReply(collector, lambda *r: ("r", *r)))
    otp.send_request("nobody", 1, otp.CastReply(collector, lambda *r: ("n", *r)))
    wait_until(lambda: len(otp.call(collector, "casts")) == 2)
    answered.reply("again")  # completed already: ignored
    want = [("n", False, "noproc"), ("r", True, ("echo", 7))]
    assert sorted(otp.call(collector, "casts")) == want


def test_name_clash_fails_like_already_started_and_never_runs_init() -> None:
    events = Events()
    first = Worker.start(events, "a", name="taken")
    with pytest.raises(otp.StartError) as err:
        Worker.start(events, "b", name="taken")
    assert err.value.reason == ("already_started", first)
    assert events.list() == [("start", "a")]
    assert otp.whereis("taken") is first


class FailingInit(otp.Process):
    def init(self, how: str) -> None:
        if how == "raise":
            raise ValueError("no")
        if how == "start_error":
            raise otp.StartError(("custom", 1))
        if how == "stop_self":
            self.stop_self("bye")


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("raise", ("error", "ValueError: no")),
        ("start_error", ("custom", 1)),
        ("stop_self", "bye"),
    ],
)
def test_init_failure_is_a_start_error_and_frees_the_name(how: str, reason: Any) -> None:
    with pytest.raises(otp.StartError) as err:
        FailingInit.start(how, name="svc")
    assert err.value.reason == reason
    assert otp.whereis("svc") is None
    FailingInit.start("ok", name="svc")  # the name is free again


def test_init_timeout_kills_the_process(
    process_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    gate = otp.Event()
    pids: list[otp.Pid] = []
    ran_on: list[str] = []

    class Slow(otp.Process):
        def init(self) -> None:
            pids.append(self.pid)
            gate.wait(WAIT)
            ran_on.append("init")

    try:
        with pytest.raises(otp.StartError) as err:
            Slow.start(name="slow", timeout=0.05)
        assert err.value.reason == "timeout"
        assert otp.whereis("slow") is None
    finally:
        gate.set()
    # A scheduled process stops at the wait it is resumed from; a thread cannot be stopped.
    assert otp.sched.wait_loop_end(pids[0], WAIT)
    assert ran_on == ([] if process_type == otp.SCHEDULED else ["init"])
    assert "crashed in init" not in caplog.text


class GatedInit(otp.Process):
    """Waits in init until its gate opens (a peer that is slow to answer, say)."""

    def init(self, pids: Events, gate: otp.Event) -> None:
        pids.add(self.pid)
        gate.wait(4 * WAIT)  # outlasts the test's bound: only the gate ends it in time


@pytest.mark.parametrize(
    ("how", "reason"), [("kill", "killed"), ("exit", "boom"), ("node_stop", "killed")]
)
def test_a_process_killed_in_init_fails_its_start_at_once(how: str, reason: Any) -> None:
    # start() waits for init with timeout=None (as supervisors do). Before, a process killed
    # in init left its starter waiting until init returned, which a scheduled process killed
    # at a wait never does (and a thread one got its pid back, of a dead process).
    node = otp.Node(f"initkill_{how}@t")
    pids, gate = Events(), otp.Event()
    outcome: list[Any] = []

    def starter() -> None:
        try:
            outcome.append(GatedInit.start(pids, gate, node=node))
        except otp.StartError as exc:
            outcome.append(("start_error", exc.reason))

    thread = threading.Thread(target=starter, daemon=True)
    thread.start()
    try:
        victim = pids.wait_len(1)[0]
        if how == "kill":
            otp.kill(victim)
        elif how == "exit":
            otp.exit(victim, "boom")
        else:
            node.stop(timeout=0.1)  # init ignores the stop: killed past the timeout
        thread.join(WAIT)
        assert not thread.is_alive(), "start() still waits for the init of a dead process"
    finally:
        gate.set()
    assert outcome == [("start_error", reason)]
    assert otp.wait_exit(victim, WAIT) == reason


def test_stop_runs_terminate_and_stop_self_replies_first() -> None:
    events = Events()
    pid = Worker.start(events, "w")
    otp.stop(pid, "shutdown")
    assert events.list()[-1] == ("stop", "w", "shutdown")
    with pytest.raises(otp.ExitError) as err:
        otp.stop(pid)
    assert err.value.reason == "noproc"
    pid = Worker.start(events, "v")
    assert otp.call(pid, ("stop", ("shutdown", "done"))) == "stopping"
    assert otp.wait_exit(pid, WAIT) == ("shutdown", "done")
    assert events.list()[-1] == ("stop", "v", ("shutdown", "done"))


def test_stop_times_out_on_a_busy_process() -> None:
    events = Events()
    pid = Worker.start(events, "w")
    gate = otp.Event()
    otp.cast(pid, ("block", gate))
    with pytest.raises(otp.ExitError) as err:
        otp.stop(pid, timeout=0.05)
    assert err.value.reason == "timeout"
    gate.set()
    assert otp.wait_exit(pid, WAIT) == "normal"


class BadTerminate(otp.Process):
    def terminate(self, reason: Any) -> None:
        raise RuntimeError("terminate failed")


def test_exception_in_terminate_is_logged_and_exit_proceeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pid = BadTerminate.start(name="bt")
    otp.stop(pid, "shutdown")
    assert pid.exit_reason == "shutdown"
    assert "terminate('shutdown') raised" in caplog.text


class NoInfo(otp.Process):
    """Answers calls; unexpected messages go to the default ``handle_info``."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return request


def test_the_default_handle_info_logs_a_bounded_line_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default logged every unexpected message whole: 10 infos of 4 MiB from a client
    key (the acceptor has no ``handle_info``) grew a node's log by 168 MB. Now one line a
    second for every process together, the message in a bounded repr."""
    # A throttle of its own, so that no other test's line has used up this second.
    monkeypatch.setattr(process, "_UNEXPECTED_INFO_LOG", LogThrottle(60.0), raising=False)
    pid = NoInfo.start()
    big = ("client_batch", ("x", "app.x@127.0.0.1:9"), b"\x00" * 100_000)
    with caplog.at_level(logging.WARNING, logger="waraft.otp.process"):
        for _ in range(20):
            otp.send(pid, big)
        assert otp.call(pid, "after", WAIT) == "after"  # behind every info: all handled
    lines = [r.getMessage() for r in caplog.records if "unexpected message" in r.getMessage()]
    assert len(lines) == 1, [line[:200] for line in lines[:3]]
    assert len(lines[0]) < 500, lines[0][:500]
    assert "client_batch" in lines[0] and "(100000 bytes)" in lines[0]


def test_registry_functions() -> None:
    pid = Echo.start()
    other = Echo.start()
    otp.register("r", pid)
    assert otp.whereis("r") is pid
    assert "r" in otp.registered()
    with pytest.raises(otp.RegistrationError) as err:
        otp.register("r", other)
    assert err.value.reason == ("already_registered", pid)
    with pytest.raises(otp.RegistrationError):
        otp.register("r2", pid)  # one name per process
    otp.unregister("r")
    assert otp.whereis("r") is None
    with pytest.raises(otp.RegistrationError):
        otp.unregister("r")
    otp.register("r", other)
    otp.stop(other)
    assert otp.whereis("r") is None and "r" not in otp.registered()


def test_importing_waraft_starts_no_thread() -> None:
    code = (
        "import threading, waraft, waraft.otp, waraft.otp.supervisor, waraft.otp.timer;"
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_is_normal_exit() -> None:
    assert otp.is_normal_exit("normal")
    assert otp.is_normal_exit("shutdown")
    assert otp.is_normal_exit(("shutdown", {"any": "term"}))
    assert not otp.is_normal_exit("killed")
    assert not otp.is_normal_exit(("error", "x"))
    assert not otp.is_normal_exit(("shutdown", 1, 2))
