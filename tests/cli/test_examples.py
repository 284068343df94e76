"""The kvstore example's scripts and ``make demo``'s driver, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
