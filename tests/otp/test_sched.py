"""Scheduler-specific behaviour of scheduled processes (waraft.otp.sched).

The OTP semantics common to both process types are covered by the rest of tests/otp, which
runs on both; these tests pin what only the scheduler does: fairness, yielding waits, the
long-hold report, the process limit, scheduler faults, thread opt-outs and timers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from waraft import otp
from waraft.otp import sched

from .helpers import WAIT, Events, Worker, wait_until


@pytest.fixture(autouse=True)
def _scheduled_only(process_type: str) -> Iterator[None]:
    # The nodes here choose their process type themselves; one run is enough.
    if process_type != otp.SCHEDULED:
        pytest.skip("scheduler behaviour: run once, under the scheduled parameter")
    yield


def _node(name: str, **opts: Any) -> otp.Node:
    opts.setdefault("process_type", otp.SCHEDULED)
    return otp.Node(name, **opts)


class Recorder(otp.Process):
    """Appends ``(tag, msg)`` to a shared list per cast; a call returns how many it saw."""

    def init(self, log: list[Any], tag: str) -> None:
        self.log = log
        self.tag = tag
        self.seen = 0

    def handle_cast(self, msg: Any) -> None:
        self.seen += 1
        self.log.append((self.tag, msg))

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "seen":
            return self.seen
        if request == "hold":  # blocks its scheduler thread on purpose
            return request
        raise AssertionError(request)


class Hog(otp.Process):
    """Blocks its scheduler thread (the wrong thing to do) until released."""

    def handle_cast(self, msg: Any) -> None:
        started, release = msg
        started.set()
        release.wait(WAIT)


def test_a_busy_process_does_not_starve_another() -> None:
    node = _node("fair@t", schedulers=1, long_hold_ms=10_000)
    log: list[Any] = []
    busy = Recorder.start(log, "busy", node=node)
    quiet = Recorder.start(log, "quiet", node=node)
    hog = Hog.start(node=node)
    started, release = threading.Event(), threading.Event()
    otp.cast(hog, (started, release))
    assert started.wait(WAIT)  # the only scheduler is held: what follows is queued
    n = 20 * sched.FAIRNESS_BUDGET
    for i in range(n):
        otp.cast(busy, i)
    otp.cast(quiet, "hello")
    release.set()
    assert otp.call(busy, "seen") == n
    assert otp.call(quiet, "seen") == 1
    # busy ran first (queued first) but yielded after one budget of messages.
    assert log.index(("quiet", "hello")) == sched.FAIRNESS_BUDGET


class Asker(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        op, target, timeout = request
        try:
            result = otp.call(target, op, timeout=timeout)
        except otp.ExitError as exc:
            return ("exit", exc.reason)
        # Other processes ran on this thread meanwhile: "who am I" must survive the switch.
        assert otp.self_pid() is self.pid and otp.node.current() is self.node
        return ("ok", result)


class Answerer(otp.Process):
    def init(self) -> None:
        self.held: list[otp.ReplyTo] = []

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "ping":
            return "pong"
        if request == "never":
            self.held.append(from_)
            return otp.NOREPLY
        if request == "answer_held":
            for held in self.held:
                held.reply("late")
            return len(self.held)
        raise AssertionError(request)


def test_a_call_between_processes_on_one_scheduler_yields_instead_of_deadlocking() -> None:
    node = _node("one@t", schedulers=1)
    asker = Asker.start(node=node)
    answerer = Answerer.start(node=node)
    assert asker._actor._sched is answerer._actor._sched  # type: ignore[union-attr]
    assert otp.call(asker, ("ping", answerer, WAIT)) == ("ok", "pong")
    # The timeout of a call made inside a scheduled process comes from the timer service.
    assert otp.call(asker, ("never", answerer, 0.05)) == ("exit", "timeout")
    assert otp.call(answerer, "answer_held") == 1  # the late reply is dropped, nothing breaks
    assert otp.call(asker, ("ping", answerer, WAIT)) == ("ok", "pong")
    assert otp.call(asker, ("ping", asker, WAIT)) == ("exit", "calling_self")


class Sleeper(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        otp.sleep(request)
        return "slept"


def test_sleep_and_waits_yield_the_scheduler() -> None:
    node = _node("sleep@t", schedulers=1)
    sleeper = Sleeper.start(node=node)
    other = Answerer.start(node=node)
    handle = otp.send_request(sleeper, 0.3)
    assert otp.call(other, "ping", timeout=0.2) == "pong"  # answered while sleeper sleeps
    assert otp.wait_response(handle, WAIT) == "slept"


class Blocker(otp.Process):
    """A process that must block its thread (as a storage process would on fsync)."""

    process_type = otp.THREAD

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        request.wait(WAIT)  # a threading.Event: blocks the OS thread
        return "done"


def test_a_thread_process_may_block_without_stalling_the_scheduler() -> None:
    node = _node("mixed@t", schedulers=1)
    blocker = Blocker.start(node=node)
    other = Answerer.start(node=node)
    assert blocker._thread is not None and other._thread is None
    gate = threading.Event()
    handle = otp.send_request(blocker, gate)
    assert otp.call(other, "ping", timeout=1.0) == "pong"
    gate.set()
    assert otp.wait_response(handle, WAIT) == "done"


def test_process_type_precedence_start_then_class_then_node_then_default() -> None:
    otp.set_default_process_type(otp.THREAD)
    threaded = otp.Node("thr@t")
    scheduled = _node("sch@t")
    assert Answerer.start(node=threaded)._thread is not None
    assert Answerer.start(node=scheduled)._thread is None
    assert Blocker.start(node=scheduled)._thread is not None  # the class wins
    assert Blocker.start(node=scheduled, process_type=otp.SCHEDULED)._thread is None  # start wins
    assert Answerer.start(node=scheduled, process_type=otp.THREAD)._thread is not None
    otp.set_default_process_type(otp.SCHEDULED)
    assert Answerer.start(node=otp.Node("dflt@t"))._thread is None
    with pytest.raises(ValueError):
        otp.set_default_process_type("fibre")
    with pytest.raises(ValueError):
        otp.Node("bad@t", process_type="fibre")


def test_default_type_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    otp.set_default_process_type(None)
    monkeypatch.setenv("WARAFT_OTP_PROCESS_TYPE", "scheduled")
    assert otp.default_process_type() == otp.SCHEDULED
    monkeypatch.setenv("WARAFT_OTP_PROCESS_TYPE", "thread")
    assert otp.default_process_type() == otp.THREAD
    monkeypatch.setenv("WARAFT_OTP_SCHEDULERS", "3")
    assert sched.default_schedulers() == 3


@pytest.mark.parametrize("name", [None, "raft_server_kv_7"])
def test_a_long_run_is_reported_with_the_process_name_and_counted(
    name: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    node = _node("hold@t", schedulers=1, long_hold_ms=30)
    hog = Hog.start(node=node, name=name)
    # The registered name says which of a node's many servers of one class it is.
    who = f"Hog {hog!r}" if name is None else f"Hog {name} {hog!r}"
    started, release = threading.Event(), threading.Event()
    with caplog.at_level(logging.WARNING, logger="waraft.otp.sched"):
        otp.cast(hog, (started, release))
        assert started.wait(WAIT)
        # Reported while it still holds the scheduler: a stuck process is never silent.
        wait_until(lambda: otp.scheduler_stats(node)["long_holds"] == 1)
        # (counted first, then logged by the watchdog thread: wait for the line as well)
        wait_until(lambda: f"{who} is holding" in caplog.text)
        release.set()
        wait_until(lambda: f"{who} released" in caplog.text)
    assert otp.scheduler_stats(node)["long_holds"] == 1  # one run, counted once
    quick = Answerer.start(node=node)
    for _ in range(10):
        otp.call(quick, "ping")
    assert otp.scheduler_stats(node)["long_holds"] == 1


def test_spawning_past_the_process_limit_fails_the_start() -> None:
    node = _node("limit@t", max_processes=3)
    pids = [Answerer.start(node=node) for _ in range(3)]
    with pytest.raises(otp.StartError) as err:
        Answerer.start(name="fourth", node=node)
    kind, text = err.value.reason
    assert kind == "system_limit" and "max_processes=3" in text
    assert node.registry.whereis("fourth") is None
    otp.stop(pids[0])
    assert otp.call(Answerer.start(name="fourth", node=node), "ping") == "pong"


def test_an_exception_in_a_scheduler_thread_stops_the_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = _node("fault@t", schedulers=2)
    failures = Events()
    node.on_failure(failures.add)  # how an embedding program (waraft node) learns of it
    events = Events()
    a, b = (Worker.start(events, tag, node=node) for tag in "ab")
    sched_a = a._actor._sched  # type: ignore[union-attr]
    assert sched_a is not None and sched_a is not b._actor._sched  # type: ignore[union-attr]
    kernel = otp.kernel.kernel_sup(node)  # round robin: on a's scheduler, stranded with it
    assert kernel._actor._sched is sched_a  # type: ignore[union-attr]
    gate = otp.Event()
    otp.cast(a, ("block", gate))  # a caller waits on a: it must not hang
    handle = otp.send_request(a, "ping")
    sched_a.runq.put(object())  # not a process: the scheduler loop itself fails
    with pytest.raises(otp.ExitError) as err:
        otp.wait_response(handle, WAIT)
    assert err.value.reason[0] == "scheduler_failed"
    assert otp.wait_exit(a, WAIT)[0] == "scheduler_failed"
    wait_until(lambda: not node.alive)
    assert otp.wait_exit(b, WAIT) == "shutdown"  # the rest of the node was stopped in order
    assert otp.sched.wait_loop_end(a, 0)  # nobody waits for a loop that can never run again
    assert "crashed (AttributeError" in caplog.text and "stopping node fault@t" in caplog.text
    assert otp.scheduler_stats(node)["failure"][0] == "scheduler_failed"
    with pytest.raises(otp.StartError):
        Answerer.start(node=node)
    # Reported once, as the scheduler's failure, even when kernel_sup was one of the processes
    # it stranded (kernel_sup's exit stops a node too, but that is a consequence here).
    assert node.wait_stopped(WAIT) and not kernel.is_alive()
    assert failures.list() == [node.failure] and node.failure[0] == "scheduler_failed"


class SlowInit(otp.Process):
    def init(self, started: otp.Event) -> None:
        started.set()
        otp.sleep(WAIT)  # suspended: its supervisor is still handling start_child


def test_a_supervisor_call_being_handled_fails_when_its_scheduler_fails() -> None:
    # The supervisor API waits with timeout=None: its caller must hear of the supervisor's
    # death even while the supervisor was handling that very call (before: it never returned).
    node = _node("stranded@t", schedulers=2)
    sup = otp.supervisor.start({"strategy": "one_for_one"}, [], node=node)
    started = otp.Event()
    results: list[Any] = []

    def caller() -> None:
        spec = {"id": "slow", "start": (SlowInit.start_link, (started,))}
        with node.activate():
            try:
                results.append(otp.supervisor.start_child(sup, spec))
            except otp.ExitError as exc:
                results.append(exc.reason)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    assert started.wait(WAIT)
    sup._actor._sched.runq.put(object())  # type: ignore[union-attr]  # its scheduler fails
    thread.join(WAIT)
    assert len(results) == 1 and results[0][0] == "scheduler_failed"


class PidInit(otp.Process):
    """Records its pid, then waits in init (suspended: its scheduler thread is free)."""

    def init(self, pids: Events) -> None:
        pids.add(self.pid)
        otp.sleep(4 * WAIT)  # outlasts the test's bound


def test_a_plain_thread_blocked_in_start_hears_when_the_scheduler_fails() -> None:
    # Before: the process died with scheduler_failed, but its greenlet (the only code that
    # completed the start) could never run again: start() (timeout=None) waited forever.
    node = _node("initfail@t", schedulers=2)
    pids = Events()
    outcome: list[Any] = []

    def starter() -> None:
        try:
            outcome.append(PidInit.start(pids, node=node))
        except otp.StartError as exc:
            outcome.append(exc.reason)

    thread = threading.Thread(target=starter, daemon=True)
    thread.start()
    victim = pids.wait_len(1)[0]
    victim._actor._sched.runq.put(object())  # type: ignore[union-attr]  # its scheduler fails
    thread.join(WAIT)
    assert not thread.is_alive(), "start() still waits for the init of a dead process"
    assert len(outcome) == 1 and outcome[0] == victim._exit_reason
    assert outcome[0][0] == "scheduler_failed"


def test_start_child_of_a_child_supervisor_fails_when_that_supervisor_scheduler_fails() -> None:
    # What `waraft node` met at start-up: kernel_sup waits in start_child for an application
    # supervisor (spread to another scheduler) whose scheduler fails while its init runs.
    # Before, start_child hung until the node's stop killed the waiting supervisor.
    node = _node("nested@t", schedulers=2)
    top = otp.supervisor.start({"strategy": "one_for_one"}, [], node=node)
    pids = Events()

    def inner_init() -> tuple[dict[str, Any], list[Any]]:
        pids.add(otp.self_pid())
        otp.sleep(4 * WAIT)
        return ({"strategy": "one_for_one"}, [])

    spec = {
        "id": "inner",
        "start": (otp.supervisor.start_link_module, (inner_init,)),
        "type": "supervisor",
    }
    results: list[Any] = []

    def caller() -> None:
        with node.activate():
            results.append(otp.supervisor.start_child(top, spec))

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    inner = pids.wait_len(1)[0]
    assert _sched_of(inner) is not _sched_of(top)  # only the inner one is stranded
    inner._actor._sched.runq.put(object())  # type: ignore[union-attr]
    thread.join(WAIT)
    assert not thread.is_alive(), "start_child still waits for a dead child supervisor"
    assert len(results) == 1 and results[0][0] == "error"
    assert results[0][1][0] == "scheduler_failed"


class Napper(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        otp.sleep(0.2)
        return "late"


class Waiter(otp.Process):
    """Waits in the way a cast says, then records that its handler ran on."""

    def handle_cast(self, msg: Any) -> None:
        how, arg, events = msg
        events.add("waiting")
        try:
            if how == "call":
                otp.call(arg, "q", timeout=None)
            elif how == "sleep":
                otp.sleep(0.2)
            elif how == "blocking":
                otp.blocking(arg.wait, WAIT)
            else:
                arg.wait(WAIT)
        except Exception as exc:  # what a handler may catch: the unwinding is not one of them
            events.add(("caught", exc))
        events.add("ran on")
        otp.send(self.pid, "after its death")


@pytest.mark.parametrize("how", ["call", "sleep", "blocking", "event"])
def test_a_killed_process_stops_at_the_wait_it_is_resumed_from(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, it ran on to the end of its handler after its EXIT/DOWN went out (and after
    # its supervisor had started its next incarnation), sends included.
    node = _node("unwind@t", schedulers=2)
    events = Events()
    gate: Any = {"call": Napper.start(node=node), "blocking": threading.Event()}.get(
        how, otp.Event()
    )
    pid = Waiter.start(node=node)
    otp.cast(pid, (how, gate, events))
    events.wait_len(1)
    otp.kill(pid)
    if how in ("blocking", "event"):
        gate.set()  # resumes it (call and sleep resume on their own)
    assert otp.sched.wait_loop_end(pid, WAIT)  # resumed, and its greenlet has ended
    assert events.list() == ["waiting"]
    assert "crashed" not in caplog.text  # killed, not crashed: nothing more to report


def test_timers_and_thousands_of_processes_cost_no_thread_each() -> None:
    node = _node("many@t", schedulers=2)
    before = threading.active_count()
    events = Events()
    pids = [Worker.start(events, i, node=node) for i in range(2000)]
    for pid in pids[:500]:
        otp.timer.send_after(1, pid, "tick")
    events.wait_for(lambda items: sum(1 for e in items if e[0] == "info") == 500)
    # Two schedulers, plus the timer thread if this test started it.
    assert threading.active_count() - before <= 3
    assert otp.scheduler_stats(node)["processes"] == 2000


class Spawner(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "spawn":
            return Answerer.start_link()
        return otp.supervisor.start_link(
            {"strategy": "one_for_one"},
            [
                {"id": "w", "start": (Answerer.start_link, ())},
                {
                    "id": "s",
                    "start": (otp.supervisor.start_link, ({}, [])),
                    "type": "supervisor",
                },
            ],
        )


def _sched_of(pid: otp.Pid) -> sched.Scheduler | None:
    actor = pid._actor
    assert actor is not None
    return actor._sched


def test_placement_children_share_the_spawner_scheduler_subtrees_spread() -> None:
    node = _node("place@t", schedulers=2)
    first, second = Spawner.start(node=node), Spawner.start(node=node)
    assert _sched_of(first) is not _sched_of(second)  # from a plain thread: round robin
    child = otp.call(first, "spawn")
    assert _sched_of(child) is _sched_of(first)
    sup = otp.call(second, "sup")
    assert _sched_of(sup) is _sched_of(second)
    worker = otp.supervisor.which_children(sup)
    by_id = {cid: pid for cid, pid, _type, _mods in worker}
    assert _sched_of(by_id["w"]) is _sched_of(sup)  # a worker stays with its supervisor
    assert _sched_of(by_id["s"]) is not _sched_of(sup)  # a child supervisor moves on


class Syncer(otp.Process):
    """Does blocking work (as an fsync would) through otp.blocking."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        op, arg = request
        if op == "block":
            return otp.blocking(arg.wait, WAIT)  # a threading.Event: really blocks
        if op == "raise":
            return otp.blocking(int, arg)
        raise AssertionError(request)


def test_blocking_runs_on_io_threads_while_the_scheduler_serves_others() -> None:
    node = _node("io@t", schedulers=1, io_threads=2, long_hold_ms=50)
    syncer = Syncer.start(node=node)
    other = Answerer.start(node=node)
    gate = threading.Event()
    handle = otp.send_request(syncer, ("block", gate))
    assert otp.call(other, "ping", timeout=1.0) == "pong"  # the scheduler is free
    wait_until(lambda: any(t.name.startswith("otp:io:io@t") for t in threading.enumerate()))
    otp.sleep(0.1)
    gate.set()
    assert otp.wait_response(handle, WAIT) is True
    assert otp.scheduler_stats(node)["long_holds"] == 0  # the wait held no scheduler
    with pytest.raises(otp.ExitError) as err:  # its exception is the caller's: a crash
        otp.call(syncer, ("raise", "x"))
    assert err.value.reason[0] == "error" and "ValueError" in err.value.reason[1]
    assert otp.blocking(int, "7") == 7  # outside a process: a plain call


class _ThreadNamer(otp.Process):
    """Answers the name of the thread its ``otp.blocking`` call ran on."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return otp.blocking(lambda: threading.current_thread().name)


def test_blocking_after_the_io_threads_stopped_runs_on_the_caller() -> None:
    """The node stops its I/O threads after its processes had their time to stop: a blocking
    call that comes later (a late terminate releasing a lock or closing a file) used to be
    queued for threads that were gone, and its process waited for ever."""
    node = _node("iostop@t", schedulers=1, io_threads=1)
    try:
        namer = _ThreadNamer.start(node=node)
        assert otp.call(namer, "where", timeout=WAIT).startswith("otp:io:")
        pool = node._io_pool()
        assert pool is not None
        pool.stop(0.0)
        assert otp.call(namer, "where", timeout=WAIT).startswith("otp:sched:")
    finally:
        node.stop()


class _LateBlocker(otp.Process):
    """Holds its scheduler thread until ``gate`` is set, then makes its first blocking call:
    ``ran`` gets the name of the thread that ran it."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        gate, ran, done = request
        gate.wait(WAIT)  # not a yielding wait: the node's stop gives up on this thread
        ran.append(otp.blocking(lambda: threading.current_thread().name))
        done.set()
        return "ok"


def test_a_first_blocking_call_after_the_node_stopped_starts_no_io_threads() -> None:
    """Review V: a node that never used ``blocking`` has no I/O threads to stop; a process
    still running after the stop (on a scheduler thread the stop gave up on) that then made
    its first blocking call started a pool of them, never stopped: leaked threads. It now
    runs the call on its own thread."""
    node = _node("iolate@t", schedulers=1, io_threads=2)
    gate, done = threading.Event(), threading.Event()
    ran: list[str] = []
    blocker = _LateBlocker.start(node=node)
    try:
        otp.send_request(blocker, (gate, ran, done))
        node.stop(timeout=0.2)  # gives up on the scheduler thread the process holds
    finally:
        gate.set()
    assert done.wait(WAIT)
    assert ran and ran[0].startswith("otp:sched:")
    assert not [t for t in threading.enumerate() if t.name.startswith("otp:io:iolate@t")]


def test_blocking_in_a_thread_process_is_a_plain_call() -> None:
    node = _node("io2@t", process_type=otp.THREAD)
    syncer = Syncer.start(node=node)
    gate = threading.Event()
    gate.set()
    assert otp.call(syncer, ("block", gate)) is True
    assert not [t for t in threading.enumerate() if t.name.startswith("otp:io:")]


def test_spawning_past_the_memory_limit_fails_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from waraft.otp import node as node_module

    monkeypatch.setattr(node_module, "MEMORY_CHECK_INTERVAL", 0.0)  # read at every start
    rss = {"bytes": 10 << 20}
    monkeypatch.setattr(node_module, "resident_bytes", lambda: rss["bytes"])
    node = _node("memlimit@t", max_memory_mb=64)
    first = Answerer.start(node=node)
    rss["bytes"] = 65 << 20
    with pytest.raises(otp.StartError) as err:
        Answerer.start(name="over", node=node)
    kind, text = err.value.reason
    assert kind == "system_limit" and "65 MiB" in text and "max_memory_mb=64" in text
    assert node.registry.whereis("over") is None
    assert otp.call(first, "ping") == "pong"  # running processes are not touched
    rss["bytes"] = 20 << 20
    assert otp.call(Answerer.start(name="over", node=node), "ping") == "pong"


def test_the_memory_limit_reads_this_process_resident_size() -> None:
    from waraft.otp import node as node_module

    rss = node_module.resident_bytes()
    assert rss is not None and rss > 1 << 20
    with pytest.raises(ValueError):
        otp.Node("negative@t", max_memory_mb=-1)
    node = _node("tiny@t", max_memory_mb=1)  # no Python process fits in 1 MiB
    with pytest.raises(otp.StartError):
        Answerer.start(node=node)


class TurnUser(otp.Process):
    """Leaves work to the end of its scheduler's turn; records when it runs."""

    def init(self, log: list[Any]) -> None:
        self.log = log

    def handle_cast(self, msg: Any) -> None:
        self.log.append(("handled", msg))
        for _ in range(2):  # the same key twice: one hook
            registered = otp.at_turn_end("key", self._hook)
        self.log.append(("registered", registered))

    def _hook(self) -> None:
        node = otp.node.current()
        self.log.append(("hook", None if node is None else node.id))


def test_end_of_turn_hooks_run_once_after_the_run_with_the_node_current() -> None:
    node = _node("turn@t", schedulers=1)
    log: list[Any] = []
    pid = TurnUser.start(log, node=node)
    otp.cast(pid, 1)
    wait_until(lambda: ("hook", "turn@t") in log)
    assert log == [("handled", 1), ("registered", True), ("hook", "turn@t")]
    otp.cast(pid, 2)  # a new turn, a new hook
    wait_until(lambda: len(log) == 6)
    assert log[3:] == [("handled", 2), ("registered", True), ("hook", "turn@t")]


def test_a_thread_process_gets_no_end_of_turn_hook() -> None:
    node = _node("turnthread@t", schedulers=1)
    log: list[Any] = []
    pid = TurnUser.start(log, node=node, process_type=otp.THREAD)
    otp.cast(pid, 1)
    wait_until(lambda: len(log) == 2)
    assert log == [("handled", 1), ("registered", False)]
    assert otp.at_turn_end("key", lambda: None) is False  # a plain thread: none either


class PingPong(otp.Process):
    """Casts a counter back and forth with a partner: the run queue never empties meanwhile."""

    def init(self, log: list[Any]) -> None:
        self.log = log
        self.partner: otp.Pid | None = None

    def handle_cast(self, msg: Any) -> None:
        if msg[0] == "partner":
            self.partner = msg[1]
            return
        count = msg[1]
        if count == 1:  # the first ball: leave work to the end of this turn
            otp.at_turn_end("pingpong", lambda: self.log.append(("hook", self.log[-1][1])))
        self.log.append(("ball", count))
        if count < 200 and self.partner is not None:
            otp.cast(self.partner, ("ball", count + 1))


def test_end_of_turn_hooks_run_even_while_the_run_queue_never_empties() -> None:
    node = _node("pingpong@t", schedulers=1)
    log: list[Any] = []
    a = PingPong.start(log, node=node)
    b = PingPong.start(log, node=node)
    otp.cast(a, ("partner", b))
    otp.cast(b, ("partner", a))
    otp.cast(a, ("ball", 1))
    wait_until(lambda: ("ball", 200) in log)
    hooks = [entry for entry in log if entry[0] == "hook"]
    assert len(hooks) == 1
    assert hooks[0][1] <= sched.TURN_FLUSH_RUNS + 2  # not held back until the rally ended
