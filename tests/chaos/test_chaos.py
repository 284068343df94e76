"""The CI-sized chaos run (``make chaos`` runs the long one): real node processes under kill -9,
SIGSTOP/SIGCONT, restart-all and partitions; no linearizability violation, no lost or
duplicated acknowledged append. Runs the suite as a child process with a hard deadline, killed
by pid if it overruns (the child's own watchdog dumps its threads' stacks first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.multiprocess.harness import ROOT, child_env

DURATION = 15
DEADLINE = 150  # the child's watchdog fires at DURATION + 120 s


def test_a_short_chaos_run_finds_no_violation(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tests.chaos.run", "--duration", str(DURATION)]
    cmd += ["--seed", "17", "--interval", "3", "--out", str(tmp_path)]
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
    assert not list(tmp_path.iterdir())  # no failing history saved
