"""CPU per write of the durable paths a partition pays beyond memory mode, in one process.

``python -m benchmarks.durable_path_bench [wal] [lmdb]`` with ``ROUNDS`` (default 150) rounds:

* ``wal``: 64 scheduled processes (two scheduler threads), each appending 16 entries of about
  130 bytes to its partition's ``WalLog`` and waiting for the node WAL's fsync, per round;
* ``lmdb``: 64 scheduled processes, each applying one ``apply_many`` of 16 writes to its
  partition of the node's LMDB environment (lazy sync: group commits by the committer thread).

* ``batches``: one partition of the node's LMDB, four ``$batch`` entries of 16 writes applied
  as four ``apply_many`` calls (the storage actor's way before it merged them) and as one
  ``apply_batch`` of their 64 commands (its way with ``merge_batches``), from a plain thread.

``PER_CALL`` (default 16) sets the entries per append and the writes per apply: at 64
partitions and 16384 in flight a harness round carries about one entry (a ``$batch`` of ~3
commands) per append, so ``PER_CALL=1`` is that shape. ``memlog`` and ``memstore`` run the same
loops on ``MemoryLog`` and ``MemoryStorage``: the round trips through the processes without any
durable work, to subtract. ``APPENDS`` (default 1) is the appends per sync of ``wal`` and
``memlog``: about 6 per flush at 64 partitions (``wal:sync`` in the round counters).

The figure is the process's CPU time (every thread: the WAL's I/O thread and the LMDB
committer included) divided by the writes: other load on the machine moves wall time much more
than it moves this. Compare two trees by running this file from each, alternating, several
times (``PYTHONPATH=<tree>``); the medians are in ``benchmarks/SCALE.md``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from waraft import otp
from waraft.core.types import Entry, Identity, LogPos
from waraft.log.memory import MemoryLog
from waraft.log.wal import WalLog
from waraft.storage.memory import MemoryStorage
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import StorageOptions

PARTITIONS = 64
PER_CALL = int(os.environ.get("PER_CALL", "16"))
APPENDS = int(os.environ.get("APPENDS", "1"))  # appends per sync (wal, memlog)
VALUE = "v" * 100


class _Syncer(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        log, first = request
        for a in range(APPENDS):
            at = first + a * PER_CALL
            log.append(
                at,
                [Entry(1, f"k{i}", ("write", "kv", f"k{i}", VALUE)) for i in range(PER_CALL)],
            )
        log.sync()
        return "ok"


class _Applier(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        storage, index = request
        commands = [("write", "kv", f"k{i}", VALUE) for i in range(PER_CALL)]
        storage.apply_many(commands, LogPos(index, 1))
        return "ok"


def run(kind: str, rounds: int) -> float:
    """Microseconds of process CPU per write of ``kind`` (``wal`` or ``lmdb``)."""
    root = tempfile.mkdtemp(prefix=f"durable-path-{kind}-")
    node = otp.Node(f"dpb{kind}@t", schedulers=2, io_threads=2, process_type=otp.SCHEDULED)
    targets: list[Any]
    if kind == "wal":
        targets = [WalLog.open(os.path.join(root, f"kv.{p}")) for p in range(PARTITIONS)]
        procs = [_Syncer.start(node=node) for _ in targets]
    elif kind == "memlog":
        targets = [MemoryLog() for _ in range(PARTITIONS)]
        procs = [_Syncer.start(node=node) for _ in targets]
    elif kind in ("lmdb", "memstore"):
        storage = NodeLmdbStorage if kind == "lmdb" else MemoryStorage
        targets = [
            storage.open(
                StorageOptions("kv", p, Identity("s", "n@h")), os.path.join(root, f"kv.{p}")
            )
            for p in range(PARTITIONS)
        ]
        procs = [_Applier.start(node=node) for _ in targets]
    else:
        raise SystemExit(f"unknown path {kind!r} (wal, lmdb, memlog, memstore)")
    try:
        start = time.process_time()
        for r in range(rounds):
            at = 1 + r * PER_CALL * APPENDS if kind in ("wal", "memlog") else r + 1
            handles = [otp.send_request(p, (t, at)) for p, t in zip(procs, targets, strict=True)]
            for handle in handles:
                assert otp.wait_response(handle, 60) == "ok"
        cpu = time.process_time() - start
    finally:
        node.stop()
        for target in targets:
            target.close()
    return (
        1e6 * cpu / (PARTITIONS * rounds * PER_CALL * (APPENDS if kind in ("wal", "memlog") else 1))
    )


def run_batches(rounds: int) -> tuple[float, float]:
    """Microseconds of process CPU per write: four ``apply_many``, then one ``apply_batch``."""
    root = tempfile.mkdtemp(prefix="durable-path-batches-")
    storage = NodeLmdbStorage.open(
        StorageOptions("kv", 1, Identity("s", "n@h")), os.path.join(root, "kv.1")
    )
    commands = [("write", "kv", f"k{i}", VALUE) for i in range(PER_CALL)]
    index = 1
    try:
        start = time.process_time()
        for _ in range(rounds):
            for _ in range(4):
                storage.apply_many(commands, LogPos(index, 1))
                index += 1
        separate = time.process_time() - start
        start = time.process_time()
        for _ in range(rounds):
            items = []
            for _ in range(4):
                items.extend((c, LogPos(index, 1), None) for c in commands)
                index += 1
            storage.apply_batch(items)
        merged = time.process_time() - start
    finally:
        storage.close()
    writes = rounds * 4 * PER_CALL
    return 1e6 * separate / writes, 1e6 * merged / writes


def main(argv: list[str]) -> None:
    rounds = int(os.environ.get("ROUNDS", "150"))
    for kind in argv or ["wal", "lmdb", "batches"]:
        if kind == "batches":
            separate, merged = run_batches(rounds * 2)
            print(f"batches {separate:.2f} us CPU per write as 4 apply_many, {merged:.2f} merged")
        else:
            print(f"{kind} {run(kind, rounds):.2f} us CPU per write")


if __name__ == "__main__":
    main(sys.argv[1:])
