"""What one group commit of the node's WAL costs, with zeros written ahead or appended.

``python -m benchmarks.wal_sync_bench [--syncs 10000] [--repeat 3] [--preallocate 1048576,0]
[--dir DIR]``

Each run opens a partition log on a fresh ``WalWriter`` (``preallocate_bytes`` set per run),
then ``--syncs`` times appends one entry of about 130 bytes and syncs it: one group commit of
one record (one ``fdatasync``) each. Per group commit it prints:

* ``wall``: the sync's wall time (queue, frame, write, fsync, wake the caller);
* ``io cpu``: CPU time of the WAL's I/O thread (its thread CPU clock), the kernel's share of
  the ``fdatasync`` included;
* ``fsync``: the mean of the writer's fsync histogram (the ``fdatasync`` call's wall time).

The runs alternate the ``--preallocate`` values, ``--repeat`` times, each in a fresh directory
under ``--dir`` (default: a temporary directory, which must be on the filesystem to measure;
``/tmp`` here is ext4). Medians per value close the table. Results are in ``benchmarks/SCALE.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass

from waraft.core.types import Entry
from waraft.log.wal import WalLog


@dataclass(frozen=True, slots=True)
class Run:
    """Per group commit of one run, in microseconds."""

    preallocate: int
    syncs: int
    wall_us: float
    io_cpu_us: float
    fsync_us: float


def run(directory: str, syncs: int, preallocate: int) -> Run:
    """One run in the fresh ``directory`` (removed afterwards)."""
    log = WalLog.open(os.path.join(directory, "kv.1"), preallocate_bytes=preallocate)
    try:
        writer = log._writer
        clock = time.pthread_getcpuclockid(writer._thread.ident or 0)
        fsyncs, fsync_sum = writer.fsyncs, writer.fsync_latency.snapshot()["sum"]
        cpu, start = time.clock_gettime(clock), time.perf_counter()
        for i in range(1, syncs + 1):
            log.append(i, [Entry(1, f"k{i}", ("write", "kv", f"k{i}", "v" * 100))])
            log.sync()
        wall = time.perf_counter() - start
        cpu = time.clock_gettime(clock) - cpu
        count = writer.fsyncs - fsyncs
        fsync_sum = writer.fsync_latency.snapshot()["sum"] - fsync_sum
    finally:
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
    return Run(preallocate, count, 1e6 * wall / count, 1e6 * cpu / count, 1e6 * fsync_sum / count)


def _sizes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of byte counts: {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"byte counts must be 0 or more: {text!r}")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> list[Run]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wal_sync_bench")
    parser.add_argument("--syncs", type=_positive, default=10000)
    parser.add_argument("--repeat", type=_positive, default=3)
    parser.add_argument("--preallocate", type=_sizes, default=[1024 * 1024, 0])
    parser.add_argument("--dir", default=None, help="parent of the runs' directories")
    args = parser.parse_args(argv)
    parent = tempfile.mkdtemp(prefix="wal-sync-", dir=args.dir)
    runs: list[Run] = []
    print(f"{'preallocate':>11} {'commits':>7} {'wall us':>8} {'io cpu us':>9} {'fsync us':>8}")
    try:
        for r in range(args.repeat):
            for k, preallocate in enumerate(args.preallocate):
                where = os.path.join(parent, f"r{r}-{k}")
                one = run(where, args.syncs, preallocate)
                runs.append(one)
                print(
                    f"{one.preallocate:>11} {one.syncs:>7} {one.wall_us:>8.0f} "
                    f"{one.io_cpu_us:>9.0f} {one.fsync_us:>8.0f}"
                )
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    for preallocate in args.preallocate:
        mine = [one for one in runs if one.preallocate == preallocate]
        print(
            f"{preallocate:>11} {'median':>7} "
            f"{statistics.median(one.wall_us for one in mine):>8.0f} "
            f"{statistics.median(one.io_cpu_us for one in mine):>9.0f} "
            f"{statistics.median(one.fsync_us for one in mine):>8.0f}"
        )
    return runs


if __name__ == "__main__":
    main()
