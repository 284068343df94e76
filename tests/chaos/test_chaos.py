"""The CI-sized chaos run (``make chaos`` runs the long one): real node processes under kill -9,
SIGSTOP/SIGCONT, restart-all and partitions; no linearizability violation, no lost or
duplicated acknowledged append. Runs the suite as a child process with a hard deadline, killed
by pid if it overruns (the child's own watchdog dumps its threads' stacks first)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.chaos.run import _setting
from tests.multiprocess.harness import ROOT, child_env

DURATION = 15
DEADLINE = 150  # the child's watchdog fires at DURATION + 120 s


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
    assert "violations: 0" in out
    assert "acknowledged commits" in out
    wal = re.search(r"WAL files on disk per node: (.*)", out)
    assert wal is not None, out[-3000:]
    for name, seqs in re.findall(r"(n\d) \[([\d, ]*)\]", wal.group(1)):
        numbers = [int(n) for n in seqs.split(",")]
        # Started far more files than the run had restarts (at most 5 faults; seen: 16-18).
        assert numbers[-1] >= 8 and len(numbers) <= 3, (name, numbers)
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
    assert any("read not a prefix" in v for v in check(loaded, got_final))


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
