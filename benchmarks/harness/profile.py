"""Sampling profiles of the processes of a run with py-spy (``--profile``), taken over exactly the
measured window, so the figures and the profile describe the same seconds.

py-spy attaches from outside (no code in the profiled process, ``--nonblocking`` so the target
is never paused) and writes collapsed stacks per thread; :func:`summarize` turns them into the
top functions by self and by inclusive samples and the share of each thread. The profiler's own
CPU is tracked (role ``profiler``), and a profiled run is slower than a plain one: use its
figures to find where time goes, not as the benchmark's numbers.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness.procs import Managed, ProcessGroup


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "handle_cast (waraft/server.py:123)"; with --function the
    # line is the function's first line, which names the function uniquely.
    return frame.strip()


def summarize(raw: str, top: int = 15) -> dict[str, Any]:
    """Top functions (self and inclusive samples) and samples per thread, from py-spy's raw
    (collapsed) output recorded with ``--threads``."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if frames and frames[0].startswith(("thread (", "process ")):
            threads[frames[0]] += count
            frames = frames[1:]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count

    def table(counter: Counter[str]) -> list[list[Any]]:
        return [
            [name, n, round(100.0 * n / total, 1) if total else 0.0]
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "threads": {name: n for name, n in threads.most_common()},
        "self": table(self_counts),
        "inclusive": table(incl_counts),
    }


class Profiler:
    def __init__(
        self,
        group: ProcessGroup,
        out_dir: Path,
        rate: int = int(os.environ.get("WARAFT_PROFILE_HZ", "100")),
        on_spawn: Callable[[Managed], None] | None = None,
    ) -> None:
        self.group = group
        self.on_spawn = on_spawn
        self.out_dir = out_dir
        self.rate = rate
        self.binary = find_py_spy()
        self.jobs: list[tuple[Managed, Managed, Path]] = []
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def schedule(self, targets: list[Managed], start_ns: int, duration_s: float) -> None:
        """Start one py-spy per target at ``start_ns`` (monotonic) for ``duration_s``."""
        if self.binary is None:
            self.error = "py-spy not found (pip install py-spy)"
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)

        def run() -> None:
            time.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
            seconds = str(max(1, math.ceil(duration_s)))
            for target in targets:
                if not target.alive():
                    continue
                out = self.out_dir / f"{target.name}.txt"
                argv = [
                    str(self.binary), "record",
                    "--pid", str(target.pid),
                    "--duration", seconds,
                    "--rate", str(self.rate),
                    "--nonblocking", "--gil", "--threads", "--function",
                    "--format", "raw",
                    "--output", str(out),
                ]  # fmt: skip
                spy = self.group.spawn(f"py-spy-{target.name}", argv, role="profiler")
                self.jobs.append((target, spy, out))
                if self.on_spawn is not None:
                    self.on_spawn(spy)

        self._thread = threading.Thread(target=run, name="bench-profiler", daemon=True)
        self._thread.start()

    def profilers(self) -> list[Managed]:
        return [spy for _, spy, _ in self.jobs]

    def collect(self, timeout: float = 30.0) -> dict[str, Any]:
        if self._thread is not None:
            self._thread.join(timeout)
        report: dict[str, Any] = {"tool": "py-spy", "rate_hz": self.rate, "processes": {}}
        if self.error:
            report["error"] = self.error
            return report
        deadline = time.monotonic() + timeout
        for target, spy, out in self.jobs:
            try:
                spy.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.group.stop(spy)
            entry: dict[str, Any] = {"file": str(out), "pid": target.pid}
            if out.exists():
                entry.update(summarize(out.read_text(errors="replace")))
            else:
                entry["error"] = f"no output (py-spy exit {spy.popen.returncode})"
            report["processes"][target.name] = entry
        return report
