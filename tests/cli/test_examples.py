"""The kvstore example's scripts and ``make demo``'s driver, run as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.multiprocess.harness import ROOT, child_env


def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env=child_env(),
    )  # fmt: skip


def test_kvstore_cluster_and_client(tmp_path: Path) -> None:
    where = ["-m", "examples.kvstore.cluster", "--dir", str(tmp_path), "--base-port", "0"]
    try:
        started = run(*where, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        state = json.loads((tmp_path / "cluster.json").read_text())
        ids = [n["node_id"] for n in state["nodes"]]
        assert len(ids) == 3 and all(ids)
        for p in range(1, 5):
            assert f"kvstore.{p}: leader " in started.stdout
        kv = ["-m", "examples.kvstore.client", "--nodes"]
        assert run(*kv, ids[0], "write", "fruit", '{"name": "fig"}').stdout == "ok\n"
        assert run(*kv, ids[1], "read", "fruit").stdout == '{"name": "fig"}\n'
        assert run(*kv, ids[2], "delete", "fruit").stdout == "ok\n"
        gone = run(*kv, ids[0], "read", "fruit")
        assert gone.returncode == 1 and gone.stdout == "not_found\n"
        assert run(*kv, ids[0], "append", "list", "a").stdout == "ok\n"
        assert run(*kv, ids[1], "append", "list", "b").stdout == "ok\n"
        assert run(*kv, ids[2], "read", "list").stdout == '["a", "b"]\n'
        assert run(*kv, ids[0], "incr", "hits", "5").stdout == "5\n"
        assert run(*kv, ids[1], "incr", "hits").stdout == "6\n"
        status = run(*where, "status")
        assert status.returncode == 0 and status.stdout.count("| kvstore.") == 12
    finally:
        stopped = run(*where, "stop", "--clean")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.count(" stopped") == 3 and not tmp_path.exists()


def test_make_demo_runs_end_to_end_and_leaves_nothing_running() -> None:
    done = run("examples/demo.py", timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for marker in (
        "== 1. Start 3 node processes",
        "== 5. SIGKILL the leader of partition 1",
        "new leader of kvstore.1:",
        "all 240 keys read back intact",
        "at the kill ->",
        "no node process left running",
        "demo complete",
    ):
        assert marker in out, marker


_NODE_LINE = re.compile(r"\] n\d is \S+ \(pid (\d+)\)$")


def _alive(pid: int) -> bool:
    """The process runs (a zombie, gone but not yet reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """``examples/demo.py`` with its temporary directory under ``tmp_path``, and the pids of
    its three nodes once they are up (it says so, one line each)."""
    env = child_env()
    env["TMPDIR"] = str(tmp_path)
    demo = subprocess.Popen(
        [sys.executable, "examples/demo.py"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=(tmp_path / "demo.err").open("w"),
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout or ()])
    reader.daemon = True
    reader.start()
    pids: list[int] = []
    deadline = time.monotonic() + 60
    while len(pids) < 3:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        found = _NODE_LINE.search(line.rstrip())
        if found:
            pids.append(int(found.group(1)))
    return demo, pids


def _stop_all(demo: subprocess.Popen[str], pids: list[int]) -> None:
    """Whatever the test left running, by pid."""
    for pid in [demo.pid, *pids]:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    demo.wait(10)


def _gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_demo_told_to_stop_stops_its_nodes_and_removes_its_directory(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # SIGTERM (timeout, CI, kill) and SIGHUP (terminal closed) ended the demo at once: its 3
    # nodes, in their own sessions, served on, and its directory (with the keys) stayed;
    # Ctrl-C cleaned up but printed a KeyboardInterrupt traceback.
    demo, pids = _start_demo(tmp_path)
    try:
        demo.send_signal(sig)
        assert demo.wait(60) == 128 + sig
        assert _gone(pids, 30) == []
        assert list(tmp_path.glob("waraft-demo-*")) == []
        err = (tmp_path / "demo.err").read_text()
        assert "Traceback" not in err, err
    finally:
        _stop_all(demo, pids)


def test_the_nodes_of_a_demo_killed_with_sigkill_stop_too(tmp_path: Path) -> None:
    # No cleanup can run in the demo: each node notices that its parent is gone.
    demo, pids = _start_demo(tmp_path)
    try:
        demo.kill()
        demo.wait(10)
        assert _gone(pids, 30) == []
    finally:
        _stop_all(demo, pids)
