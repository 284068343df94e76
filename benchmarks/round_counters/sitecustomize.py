"""Per-round counters for waraft nodes under the benchmark harness (issue 12, HOTPATH.md).

Put this directory first on ``PYTHONPATH`` and set ``WARAFT_ROUND_COUNTERS=DIR``: every Python
process of the run (the harness passes its environment on) then counts, through wrappers
installed before waraft is imported, what one Raft round costs in events that a sampler cannot
see: scheduler run-queue puts and which of them crossed threads or woke a blocked scheduler,
greenlet runs, mailbox puts, distribution frames, constructions of waraft's dataclasses, timer
arms, postpones, cancels and firings, the leader's replication rounds and why a leader was
busy at a heartbeat timeout, and the process's context switches. Once a second it appends them
to ``DIR/<pid>.jsonl``; ``python -m benchmarks.round_counters.analyze DIR`` divides the
increments over the steady part of the window by the entries each node applied.

A measuring tool: the wrappers cost CPU (the counted run is slower), so take throughput and
CPU per op from a run without it. Without the variable this file does nothing.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("WARAFT_ROUND_COUNTERS")
if _DIR:
    import sys

    # The repository root (the harness puts it on the children's path; the harness itself
    # may run before its own directory is on it).
    _ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if _ROOT not in sys.path:
        sys.path.append(_ROOT)
    from benchmarks.round_counters import _install

    _install.install(_DIR)
