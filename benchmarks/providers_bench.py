"""Throughput of the log and storage providers (no actors, no network).

Run: ``python -m benchmarks.providers_bench [--entries N] [--dir PATH] [--storage-only]``.

Measures
* DiskLog append + sync with one fsync per batch (batches of 100 and 1000 small entries):
  entries/s and fsyncs/s; MemoryLog append for comparison;
* tail reads (``entries()`` served from the recent-entry cache, as a leader replicating the
  tail) and cold reads (older entries read back from the segment files);
* DiskLog open (recovery scan) time;
* apply throughput in batches of 200 for MemoryStorage and SqliteStorage (synchronous NORMAL
  and FULL);
* ``apply_many`` of packed ``$batch`` entries of 1000 writes (100-byte values, 50k keys) for
  MemoryStorage, SqliteStorage and LmdbStorage (default and ``lmdb_sync``), when the ``lmdb``
  package is installed, and NodeLmdbStorage (one environment per node, checksummed values)
  with its checksum scan at open. ``--storage-only`` runs just the storage measurements.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable

from waraft.core.types import Entry, Identity, LogPos
from waraft.log.disk import DiskLog
from waraft.log.memory import MemoryLog
from waraft.log.provider import LogProvider
from waraft.storage.memory import MemoryStorage
from waraft.storage.provider import StorageOptions, StorageProvider
from waraft.storage.sqlite import SqliteStorage

OPTIONS = StorageOptions("bench", 1, Identity("raft_server_bench_1", "nonode@nohost"))


def small_entries(first: int, count: int) -> list[Entry]:
    """Entries shaped like kvstore writes: ~40 bytes encoded."""
    return [
        Entry(1, ("$c", i), ("write", "bench", i % 10_000, i)) for i in range(first, first + count)
    ]


def report(name: str, count: int, seconds: float, unit: str = "entries", extra: str = "") -> None:
    rate = count / seconds if seconds else float("inf")
    print(f"{name:<52} {rate:>12,.0f} {unit}/s   ({count:,} in {seconds:.3f} s){extra}")


def bench_append(log: LogProvider, total: int, batch: int) -> tuple[float, int]:
    batches = [small_entries(i, batch) for i in range(1, total + 1, batch)]
    start = time.perf_counter()
    index = log.last_index() + 1
    for entries in batches:
        log.append(index, entries)
        log.sync()
        index += len(entries)
    return time.perf_counter() - start, len(batches)


def bench_disk_append(root: str, total: int, batch: int) -> None:
    path = os.path.join(root, f"append-{batch}")
    log = DiskLog.open(path)
    before = log.fsyncs
    seconds, batches = bench_append(log, total, batch)
    fsyncs = log.fsyncs - before
    report(
        f"DiskLog append+sync, batches of {batch}",
        total,
        seconds,
        extra=f"  {fsyncs / seconds:,.0f} fsyncs/s, {fsyncs / batches:.2f} per batch",
    )
    log.close()
    shutil.rmtree(path)


def bench_reads(root: str, total: int) -> None:
    path = os.path.join(root, "reads")
    log = DiskLog.open(path)
    bench_append(log, total, 1000)
    last = log.last_index()

    def run(name: str, starts: Callable[[int], int], count: int) -> None:
        rounds = 2000
        began = time.perf_counter()
        got = 0
        for r in range(rounds):
            got += len(log.entries(starts(r), last, count, 1 << 30))
        report(name, got, time.perf_counter() - began)

    run("DiskLog entries(), tail (cache), 15 per call", lambda r: last - 14 - (r % 500), 15)
    run("DiskLog entries(), tail (cache), 200 per call", lambda r: last - 199 - (r % 500), 200)
    run(
        "DiskLog entries(), cold (from disk), 200 per call",
        lambda r: 1 + (r * 997) % (last - 300),
        200,
    )
    log.close()
    began = time.perf_counter()
    reopened = DiskLog.open(path)
    report("DiskLog open (verify + index every record)", last, time.perf_counter() - began)
    reopened.close()
    shutil.rmtree(path)


def bench_memory_log(total: int) -> None:
    for batch in (100, 1000):
        seconds, _ = bench_append(MemoryLog(), total, batch)
        report(f"MemoryLog append, batches of {batch}", total, seconds)


def bench_storage(name: str, storage: StorageProvider, total: int, batch: int = 200) -> None:
    batches = []
    for first in range(1, total + 1, batch):
        batches.append(
            [
                (("write", "bench", i % 50_000, ("value", i)), LogPos(i, 1), None)
                for i in range(first, first + batch)
            ]
        )
    began = time.perf_counter()
    for items in batches:
        storage.apply_batch(items)
    report(f"{name} apply_batch({batch})", total, time.perf_counter() - began)
    storage.close()


def bench_apply_many(name: str, storage: StorageProvider, total: int, batch: int = 1000) -> None:
    """Packed client batches: one ``apply_many`` (one transaction) per ``$batch`` entry."""
    value = b"v" * 100
    entries = [
        [("write", "bench", i % 50_000, value) for i in range(first, first + batch)]
        for first in range(0, total, batch)
    ]
    began = time.perf_counter()
    for index, commands in enumerate(entries, 1):
        storage.apply_many(commands, LogPos(index, 1))
    report(f"{name} apply_many({batch})", batch * len(entries), time.perf_counter() - began, "cmds")
    storage.close()


def bench_storages(root: str, total: int) -> None:
    bench_storage("MemoryStorage", MemoryStorage.open(OPTIONS, root), total)
    bench_storage(
        "SqliteStorage (synchronous=NORMAL)",
        SqliteStorage.open(OPTIONS, os.path.join(root, "sqlite-normal")),
        total,
    )
    full = StorageOptions(
        OPTIONS.table, OPTIONS.partition, OPTIONS.identity, extra={"sqlite_synchronous": "FULL"}
    )
    bench_storage(
        "SqliteStorage (synchronous=FULL)",
        SqliteStorage.open(full, os.path.join(root, "sqlite-full")),
        total // 4,
    )
    bench_apply_many("MemoryStorage", MemoryStorage.open(OPTIONS, root), total)
    bench_apply_many(
        "SqliteStorage (synchronous=NORMAL)",
        SqliteStorage.open(OPTIONS, os.path.join(root, "sqlite-many")),
        total,
    )
    try:
        from waraft.storage.lmdb import LmdbStorage
    except ImportError:
        print("# LmdbStorage skipped: the lmdb package is not installed")
        return
    bench_storage(
        "LmdbStorage (default)", LmdbStorage.open(OPTIONS, os.path.join(root, "lmdb-b")), total
    )
    bench_apply_many(
        "LmdbStorage (default: no fsync)",
        LmdbStorage.open(OPTIONS, os.path.join(root, "lmdb")),
        total,
    )
    synced = StorageOptions(
        OPTIONS.table, OPTIONS.partition, OPTIONS.identity, extra={"lmdb_sync": True}
    )
    bench_apply_many(
        "LmdbStorage (lmdb_sync: fsync per batch)",
        LmdbStorage.open(synced, os.path.join(root, "lmdb-sync")),
        total // 4,
    )
    bench_node_lmdb(root, total)


def bench_node_lmdb(root: str, total: int) -> None:
    """NodeLmdbStorage (one environment per node, a CRC-32 per value) beside LmdbStorage with
    the same sync setting, and the checksum scan of a partition when it opens."""
    from waraft.storage.lmdb import LmdbStorage
    from waraft.storage.node_lmdb import NodeLmdbStorage

    def options(**extra: object) -> StorageOptions:
        return StorageOptions(OPTIONS.table, OPTIONS.partition, OPTIONS.identity, extra=extra)

    bench_apply_many(
        "LmdbStorage (lmdb_sync=False)",
        LmdbStorage.open(options(lmdb_sync=False), os.path.join(root, "lmdb-nosync")),
        total,
    )
    bench_apply_many(
        "NodeLmdbStorage (lmdb_sync=False)",
        NodeLmdbStorage.open(options(lmdb_sync=False), os.path.join(root, "node", "p1")),
        total,
    )
    bench_apply_many(
        "NodeLmdbStorage (default: fsync per batch)",
        NodeLmdbStorage.open(options(), os.path.join(root, "node-sync", "p1")),
        total // 4,
    )
    began = time.perf_counter()
    storage = NodeLmdbStorage.open(options(), os.path.join(root, "node", "p1"))
    report("NodeLmdbStorage open + checksum scan (50k values)", 50_000,
           time.perf_counter() - began, "values")  # fmt: skip
    storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=200_000, help="entries per measurement")
    parser.add_argument("--dir", default=None, help="where to put the files (default: a temp dir)")
    parser.add_argument(
        "--storage-only", action="store_true", help="only the storage provider measurements"
    )
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="waraft-bench-", dir=args.dir)
    try:
        total = args.entries
        print(f"# providers benchmark: {total:,} entries per run, files in {root}")
        if not args.storage_only:
            bench_disk_append(root, total, 100)
            bench_disk_append(root, total, 1000)
            bench_memory_log(total)
            bench_reads(root, total)
        bench_storages(root, total)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
