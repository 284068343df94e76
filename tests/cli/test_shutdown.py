"""SIGTERM to a node with 64 partitions under client load: it exits within the documented
bound (``SHUTDOWN_TIMEOUT``), removes the temporary data dir it created, and logs the stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.cli.test_commands import waraft
from tests.multiprocess.harness import ROOT, NodeProcess, child_env, waraft_cmd
from waraft.cli.node import SHUTDOWN_TIMEOUT

LOAD = "import itertools\nfor i in itertools.count():\n    write(f'k{i % 500}', i)\n"


def test_sigterm_under_load_is_bounded_and_cleans_up(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, "s1", [])
    # No --data-dir: the node makes (and must remove) a temporary one.
    with node.log_path.open("a") as log:
        node.proc = subprocess.Popen(
            waraft_cmd("node", "--name", "s1", "--listen", "127.0.0.1:0", "--memory", "--insecure",
                       "--partitions", "1-64"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
            env=child_env(),
        )  # fmt: skip
    load: subprocess.Popen[str] | None = None
    try:
        node_id = node.wait_ready()
        found = re.search(r"data in (\S+),", node.log_path.read_text())
        assert found is not None
        # Without keys, every start says so (review N: it started silently).
        assert "WITHOUT encryption or authentication" in node.log_path.read_text()
        temp_dir = found.group(1)
        assert os.path.isdir(temp_dir)
        done = waraft("bootstrap", "--nodes", node_id, "--partitions", "1-64")
        assert done.returncode == 0, done.stdout + done.stderr
        load = subprocess.Popen(
            waraft_cmd("shell", "--attach", node_id, "--partitions", "1-64", "-c", LOAD),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env=child_env(),
        )  # fmt: skip
        time.sleep(3.0)
        assert load.poll() is None, "the load generator died before the stop"
        assert node.proc is not None
        started = time.monotonic()
        node.signal(signal.SIGTERM)
        code = node.proc.wait(SHUTDOWN_TIMEOUT + 10)
        took = time.monotonic() - started
        assert took < SHUTDOWN_TIMEOUT + 5, took
        assert not os.path.exists(temp_dir)
        log = node.log_path.read_text()
        assert (code == 0 and "stopped in " in log) or (code == 1 and "abandoning" in log), log[
            -2000:
        ]
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        node.kill()
