"""Per-generator measurement: latency histograms, counts in the window, errors by kind, and a
timeline of completions for plots and failover analysis.

Rules (the same for every system and every generator):

* an operation counts toward throughput when it completes successfully inside the measured
  window (completion time in ``[start, end)``);
* its latency is recorded when it was *sent* inside the window, from its intended send time to
  its completion: for closed-loop generators the intended time is the actual send time, for
  open-loop (rate-driven) generators it is the schedule's time, so a stalled system is charged
  for the requests it delayed (no coordinated omission);
* errors are counted by kind when they complete inside the window;
* the timeline counts successes and errors per bucket from ``t0`` (warm-up included).
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness.histogram import Histogram
from benchmarks.harness.wire import OP_READ, OP_WRITE
from benchmarks.harness.workload import Window

OP_NAMES = {OP_WRITE: "write", OP_READ: "read"}


class Recorder:
    def __init__(self, window: Window, bucket_ns: int = 100_000_000) -> None:
        self.window = window
        self.bucket_ns = bucket_ns
        self._start = window.start_ns
        self._end = window.end_ns
        self._t0 = window.t0_ns
        self.latency = {OP_WRITE: Histogram(), OP_READ: Histogram()}
        self.ok = {OP_WRITE: 0, OP_READ: 0}
        self.errors: dict[str, int] = {}
        self.errors_outside: dict[str, int] = {}
        self.sent_in_window = 0
        self.ok_outside = 0
        nbuckets = (window.end_ns - window.t0_ns) // bucket_ns + 1
        self.timeline_ok = [0] * nbuckets
        self.timeline_err = [0] * nbuckets
        self.first_ok_ns: int | None = None
        self.last_ok_ns: int | None = None
        self.unfinished = 0

    def sent(self, intended_ns: int) -> None:
        if self._start <= intended_ns < self._end:
            self.sent_in_window += 1

    def done(self, op: int, intended_ns: int, now_ns: int, error: str | None) -> None:
        """One completion: ``error`` None for success, else its kind."""
        bucket = (now_ns - self._t0) // self.bucket_ns
        in_timeline = 0 <= bucket < len(self.timeline_ok)
        if error is None:
            if in_timeline:
                self.timeline_ok[bucket] += 1
            if self._start <= now_ns < self._end:
                self.ok[op] += 1
            else:
                self.ok_outside += 1
            if self._start <= intended_ns < self._end:
                self.latency[op].record(now_ns - intended_ns)
            if self.first_ok_ns is None:
                self.first_ok_ns = now_ns
            self.last_ok_ns = now_ns
            return
        if in_timeline:
            self.timeline_err[bucket] += 1
        target = self.errors if self._start <= now_ns < self._end else self.errors_outside
        target[error] = target.get(error, 0) + 1

    def result(self) -> dict[str, Any]:
        return {
            "ok": {OP_NAMES[op]: n for op, n in self.ok.items()},
            "ok_outside_window": self.ok_outside,
            "sent_in_window": self.sent_in_window,
            "unfinished": self.unfinished,
            "errors": dict(self.errors),
            "errors_outside_window": dict(self.errors_outside),
            "latency": {OP_NAMES[op]: h.to_json() for op, h in self.latency.items()},
            "timeline": {
                "bucket_ns": self.bucket_ns,
                "ok": self.timeline_ok,
                "err": self.timeline_err,
            },
        }
