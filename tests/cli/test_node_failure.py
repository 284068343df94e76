"""A ``waraft node`` whose otp node stops itself (a scheduler thread failed, ``kernel_sup``
gave up restarting) exits non-zero with one line saying why, distribution stopped: before,
the OS process went on answering its peers' pings for a node that served nothing, so the
partitions it led were never taken over (the review's "zombie node")."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.multiprocess.harness import ROOT, NodeProcess, child_env, waraft_cmd
from waraft.cli.node import SHUTDOWN_TIMEOUT


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("scheduler", "('scheduler_failed', "), ("crash_loop", "('kernel_sup_exited', 'shutdown')")],
)
def test_a_node_that_stops_itself_takes_its_process_with_it(
    tmp_path: Path, fault: str, reason: str
) -> None:
    node = NodeProcess(tmp_path, "f1", [])
    env = child_env()
    env["WARAFT_TEST_FAULT"] = fault
    with node.log_path.open("a") as log:
        node.proc = subprocess.Popen(
            waraft_cmd("node", "--name", "f1", "--listen", "127.0.0.1:0", "--memory", "--insecure",
                       "--app-module", "tests.cli.faulty_app"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
            env=env,
        )  # fmt: skip
    try:
        node_id = node.wait_ready()
        try:
            code = node.proc.wait(SHUTDOWN_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the failed node kept running; log:\n{node.log_tail()}") from None
        log = node.log_path.read_text()
        assert code == 1, log[-2000:]
        assert f"waraft node: node {node_id} failed, exiting: {reason}" in log, log[-2000:]
        assert f"distribution {node_id} stopped" in log, log[-2000:]
    finally:
        node.kill()
