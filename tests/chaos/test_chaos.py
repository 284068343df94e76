"""The CI-sized chaos run (``make chaos`` runs the long one): real node processes under kill -9,
SIGSTOP/SIGCONT, restart-all and partitions; no linearizability violation, no lost or
duplicated acknowledged append. Runs the suite as a child process with a hard deadline, killed
by pid if it overruns (the child's own watchdog dumps its threads' stacks first)."""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.run import _setting
from tests.multiprocess.harness import ROOT, child_env

DURATION = 15
DEADLINE = 150  # the child's watchdog fires at DURATION + 120 s
MIN_ACKNOWLEDGED = 100  # seen: 3500-4900 in 15 s; a run of dead clients acknowledges few


def test_a_short_chaos_run_finds_no_violation(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tests.chaos.run", "--duration", str(DURATION)]
    cmd += ["--seed", "17", "--interval", "3", "--out", str(tmp_path)]
    # Small WAL files: the node-wide WAL rotates, keeps, checkpoints and deletes files under
    # the faults too (with the default 64 MiB a short run never rotates).
    cmd += ["--setting", "raft_max_log_bytes_per_file=32768"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()  # by pid; its nodes are killed by its watchdog or atexit hook
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"chaos run hung:\n{out[-3000:]}\n{err[-6000:]}") from None
    assert proc.returncode == 0, f"{out[-5000:]}\n{err[-3000:]}"
    assert "violations: 0; undetermined keys: []; workload failures: 0" in out
    acked = re.search(r"(\d+) acknowledged commits", out)
    assert acked is not None and int(acked.group(1)) >= MIN_ACKNOWLEDGED, out[-3000:]
    wal = re.search(r"WAL files on disk per node: (.*)", out)
    assert wal is not None, out[-3000:]
    faults = re.search(r"faults: (.*?); final lengths", out)
    assert faults is not None, out[-3000:]
    for name, seqs in re.findall(r"(n\d) \[([\d, ]*)\]", wal.group(1)):
        numbers = [int(n) for n in seqs.split(",")]
        # Each start of the node opens a file; beyond those, the WAL rotated (at least twice)
        # and deleted what it no longer needed. Files started depend on the writes a loaded
        # machine gets through: seen 16-18 alone, 7 with other tests beside.
        restarts = sum(
            f in (f"kill -9 {name}", "kill -9 every node") for f in faults[1].split(", ")
        )
        assert numbers[-1] >= restarts + 3 and len(numbers) <= 3, (name, numbers, faults[1])
    assert not list(tmp_path.iterdir())  # no failing history saved


def test_a_saved_history_round_trips_and_stays_small(tmp_path: Path) -> None:
    """List reads that are prefixes of the final list are saved as their length (a long run's
    reads would otherwise hold a copy of the list each); loading rebuilds them exactly, and a
    read that is NOT a prefix is kept verbatim, so a re-check still finds it."""
    from tests.chaos.run import check, load, save
    from waraft.sim import Operation, Status

    final = {"l0": tuple(f"a{i}" for i in range(500)), "l1": ()}
    ops = []
    for i in range(500):
        op = Operation(2 * i, 1, "commit", ("append", "kv", "l0", f"a{i}"), 10 * i)
        op.status, op.complete_ms, op.result = Status.OK, 10 * i + 5, "ok"
        read = Operation(2 * i + 1, 2, "read", ("read", "kv", "l0"), 10 * i + 6)
        read.status, read.complete_ms = Status.OK, 10 * i + 7
        read.result = ("ok", list(final["l0"][: i + 1]))
        ops += [op, read]
    bad = Operation(1000, 3, "read", ("read", "kv", "l0"), 6000)
    bad.status, bad.complete_ms, bad.result = Status.OK, 6001, ("ok", ["a1", "a0"])
    ops.append(bad)
    path = tmp_path / "h.history"
    save(path, ops, final, [], [(5, 9, "kill-leader", "kill -9 n1")])
    assert path.stat().st_size < 100_000  # ~1.2 MB with every read's list in full
    loaded, got_final, faults = load(path)
    assert got_final == final and faults == [(5, 9, "kill-leader", "kill -9 n1")]
    assert [(o.result, o.status) for o in loaded[:-1]] == [
        (("ok", tuple(o.result[1])) if o.kind == "read" else o.result, o.status) for o in ops[:-1]
    ]
    assert tuple(loaded[-1].result[1]) == ("a1", "a0")
    assert any("read not a prefix" in v for v in check(loaded, got_final).violations)


def test_a_run_whose_fault_cannot_be_undone_ends_instead_of_hanging(tmp_path: Path) -> None:
    """A node that never reports ready again makes the nemesis raise half-way: the run must
    end (exit 3, with the stacks and the nodes' logs) instead of leaving its client threads
    retrying forever, which kept the interpreter alive at exit."""
    code = (
        "import sys\n"
        "from tests.chaos import run\n"
        "def strike(self):\n"
        "    raise AssertionError('n1 not ready; log: ...')\n"
        "run.Nemesis.strike = strike\n"
        "sys.exit(run.main(['--duration', '3', '--interval', '1', '--seed', '1',"
        f" '--out', {str(tmp_path)!r}]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"the aborted run hung:\n{err[-3000:]}") from None
    kept = (err.rpartition("node data and logs kept in ")[2].splitlines() or [""])[0].strip()
    if kept.startswith(tempfile.gettempdir()):
        shutil.rmtree(kept, ignore_errors=True)
    assert proc.returncode == 3, f"{out[-2000:]}\n{err[-3000:]}"
    assert "chaos: run aborted" in err and "n1 not ready" in err
    assert "Thread" in err  # faulthandler's dump of the threads' stacks


def test_nodes_listen_below_the_ephemeral_port_range() -> None:
    """A restarted node reuses its port; one from the ephemeral range can meanwhile become the
    local port of any outgoing connection, and the restart then fails ("Address already in
    use"), which is how chaos runs lost a node for good."""
    import socket

    from tests.multiprocess.harness import _ephemeral_low, free_port

    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50 and max(ports) < _ephemeral_low()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))  # free indeed


def test_settings_on_the_command_line_are_literals_or_strings() -> None:
    assert _setting("raft_max_log_bytes_per_file=32768") == ("raft_max_log_bytes_per_file", 32768)
    assert _setting("raft_quiesce_after_ms=0.5") == ("raft_quiesce_after_ms", 0.5)
    assert _setting("raft_log_heartbeat_binary_entries=True") == (
        "raft_log_heartbeat_binary_entries",
        True,
    )
    assert _setting("raft_label_module=mod:Cls") == ("raft_label_module", "mod:Cls")
    for bad in ("max_log=1", "raft_max_log_bytes_per_file", "=3"):
        with pytest.raises(argparse.ArgumentTypeError):
            _setting(bad)


def test_the_recorder_takes_a_commit_error_outside_the_at_most_once_list_as_not_applied() -> None:
    """The README's promise checked by every chaos run: a commit answered timeout, closed,
    client_failed, session_expired, session_seq_acknowledged or unencodable_result may have
    been applied; any other error (cancelled, say, which once answered an applied commit)
    means not applied at all."""
    from tests.chaos.run import Recorder
    from waraft.sim import Status

    rec = Recorder()
    answers = [
        ("error", "timeout"),
        ("error", "session_expired"),
        ("error", "closed"),
        ("error", "client_failed"),
        ("error", "session_seq_acknowledged"),  # a retry after the record was dropped
        ("error", "unencodable_result"),  # applied, its result cannot travel
        ("error", "cancelled"),
        ("error", ("badarg", {"unhashable": []})),
        "ok",
    ]
    ops = [rec.invoke(1, "commit", ("write", "kv", "k", i)) for i in range(len(answers))]
    for op, answer in zip(ops, answers, strict=True):
        rec.complete(op, answer)
    assert [op.status for op in ops] == [Status.UNKNOWN] * 6 + [Status.FAIL] * 2 + [Status.OK]
    read = rec.invoke(1, "read", ("read", "kv", "k"))
    rec.complete(read, ("error", "timeout"))
    assert read.status is Status.FAIL  # a read without an answer has no effect


def _op(kind: str, command: tuple[Any, ...], start: int, status: str, end: int, result: Any) -> Any:
    from waraft.sim import Operation, Status

    op = Operation(next(_ids), start % 7, kind, command, start)
    op.status, op.complete_ms, op.result = Status(status), end, result
    return op


_ids = itertools.count()


def _append(value: str, start: int, end: int, status: str = "ok") -> Any:
    result = "ok" if status == "ok" else ("error", "timeout")
    return _op("commit", ("append", "kv", "l0", value), start, status, end, result)


def _read(result: Any, start: int, end: int, key: str = "l0") -> Any:
    return _op("read", ("read", "kv", key), start, "ok", end, result)


@pytest.mark.parametrize(
    ("name", "ops"),
    [
        ("a read misses an append acknowledged before it began", lambda: [
            _append("a0", 0, 10), _read("not_found", 20, 30)]),
        ("a read is shorter than one that ended before it began", lambda: [
            _append("a0", 0, 10), _append("a1", 0, 10),
            _read(("ok", ["a0", "a1"]), 20, 30), _read(("ok", ["a0"]), 40, 50)]),
        ("a read sees an append invoked after it ended", lambda: [
            _read(("ok", ["a0"]), 0, 5), _append("a0", 10, 20, "unknown")]),
    ],
)  # fmt: skip
def test_list_reads_are_checked_in_real_time_order(name: str, ops: Any) -> None:
    """Each history has a list read that is a prefix of the final list (the Elle-style check
    passes it) but contradicts the real-time order of the operations."""
    from tests.chaos.run import VIOLATIONS, check, exit_status

    found = check(ops(), {"l0": ("a0", "a1"), "l1": ()})
    assert any("lists not linearizable" in v for v in found.violations), name
    assert exit_status(found, []) == VIOLATIONS


def test_a_linearizable_list_history_passes() -> None:
    from tests.chaos.run import CLEAN, check, exit_status

    ops = [
        _read("not_found", 0, 1),
        _append("a0", 2, 10),
        _append("a1", 3, 4, "unknown"),  # never seen: may or may not have happened
        _read(("ok", ["a0"]), 5, 9),  # concurrent with a0's append
        _append("a2", 11, 20, "unknown"),
        _read(("ok", ["a0", "a2"]), 21, 22),
        _read(("ok", ("a0", "a2")), 23, 24),  # a loaded history holds tuples
    ]
    found = check(ops, {"l0": ("a0", "a2"), "l1": ()})
    assert found.violations == [] and found.undetermined == []
    assert exit_status(found, []) == CLEAN


def test_an_undetermined_verdict_is_reported_and_not_a_pass(tmp_path: Path) -> None:
    """A register history the search cannot decide within its budget (22 unknown writes, each
    read by a concurrent read, and one read of a value never written) is neither a violation
    nor clean: exit 2, with the key named, for a run and for ``--check``."""
    from tests.chaos.run import UNDETERMINED, check, exit_status, main, save

    n = 22
    ops = [
        _op("commit", ("write", "kv", "r", f"w{i}"), 0, "unknown", 5, ("error", "timeout"))
        for i in range(n)
    ]
    ops += [_op("read", ("read", "kv", "r"), 10, "ok", 11, ("ok", f"w{i}")) for i in range(n)]
    ops += [_op("read", ("read", "kv", "r"), 20, "ok", 21, ("ok", "never-written"))]
    final: dict[str, Any] = {"l0": (), "l1": ()}
    found = check(ops, final)
    assert found.violations == [] and found.undetermined == ["r"]
    assert exit_status(found, []) == UNDETERMINED
    assert "undetermined" in found.describe() and "'r'" in found.describe()
    path = tmp_path / "h.history"
    save(path, ops, final, [])
    assert main(["--check", str(path)]) == UNDETERMINED


def test_a_client_thread_that_raises_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client thread's exception was only printed by the thread hook: the run went on with
    fewer (or no) clients, a shorter history checked clean and the run exited 0. Now it is
    recorded, with its traceback, and the run exits 4 (violations still win: exit 1)."""
    import threading

    import waraft.client
    from tests.chaos import run

    class Broken:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def commit(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("client bug: commit raised")

        def read(self, *args: Any, **kwargs: Any) -> Any:
            return "not_found"

        def close(self) -> None:
            pass

    monkeypatch.setattr(waraft.client, "Client", Broken)
    rec = run.Recorder()
    stop = threading.Event()
    thread = threading.Thread(target=run._worker, args=(1, ["n1"], rec, stop, 5, True))
    thread.start()
    thread.join(10)
    stop.set()
    assert not thread.is_alive()
    assert len(rec.failures) == 1 and "client bug: commit raised" in rec.failures[0]
    failures = run.workload_failures(rec, range(1, 3), stopped=rec.now())
    assert "client2 completed no operation" in failures
    assert run.exit_status(run.Checked(), failures) == run.WORKLOAD_FAILED
    assert run.exit_status(run.Checked(["lost"]), failures) == run.VIOLATIONS


def test_a_client_silent_long_before_the_end_fails_the_run() -> None:
    from tests.chaos import run

    rec = run.Recorder()
    for client, at in ((1, 1_000), (2, 30_000)):
        op = rec.history.invoke(client, "read", ("read", "kv", "r"), at - 10)
        rec.last_completion[client] = at
        rec.history.ok(op, "not_found", at)
    failures = run.workload_failures(rec, range(1, 3), stopped=30_500)
    assert failures == ["client1 completed nothing after 1000 ms (clients stopped at 30500 ms)"]


def test_the_longest_gap_counts_the_stretch_after_the_last_acknowledgement() -> None:
    """Acknowledgements at 100 and 200 ms, the faults ended at 5000 ms: the clients saw no
    commit for 4.8 s, charged to the last fault."""
    from tests.chaos.run import longest_gap, unavailability

    ops = [_op("commit", ("write", "kv", "r", i), t - 5, "ok", t, "ok") for i, t in
           enumerate((100, 200))]  # fmt: skip
    assert longest_gap(ops, 5000) == 4800
    fault = (150, 300, "kill-leader", "kill -9 n1")
    assert unavailability(ops, [fault], 5000) == [(fault, 4800, 200)]
