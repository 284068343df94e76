"""``benchmarks/client_bench.py``: the client's CPU per op against a stub cluster. It broke
unnoticed when inline handlers were given the sender's origin (its stub took one argument)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_short_run_commits_and_reports_its_cpu_per_op() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.client_bench", "--warmup", "0.1", "--duration", "0.4",
         "--repeat", "1", "--concurrency", "256"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"median: ([\d,]+) ops/s, ([\d.]+) us client CPU per op", proc.stdout)
    assert found, proc.stdout
    assert int(found.group(1).replace(",", "")) > 0 and float(found.group(2)) > 0
