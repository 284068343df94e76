"""CPU per write of the durable paths a partition pays beyond memory mode, in one process.

``python -m benchmarks.durable_path_bench [wal] [lmdb]`` with ``ROUNDS`` (default 150) rounds:

* ``wal``: 64 scheduled processes (two scheduler threads), each appending 16 entries of about
  130 bytes to its partition's ``WalLog`` and waiting for the node WAL's fsync, per round;
* ``lmdb``: 64 scheduled processes, each applying one ``apply_many`` of 16 writes to its
  partition of the node's LMDB environment (lazy sync: group commits by the committer thread).

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
from waraft.log.wal import WalLog
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import StorageOptions

PARTITIONS = 64
PER_CALL = 16
VALUE = "v" * 100


class _Syncer(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        log, first = request
        log.append(
            first,
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
    elif kind == "lmdb":
        targets = [
            NodeLmdbStorage.open(
                StorageOptions("kv", p, Identity("s", "n@h")), os.path.join(root, f"kv.{p}")
            )
            for p in range(PARTITIONS)
        ]
        procs = [_Applier.start(node=node) for _ in targets]
    else:
        raise SystemExit(f"unknown path {kind!r} (wal, lmdb)")
    try:
        start = time.process_time()
        for r in range(rounds):
            at = 1 + r * PER_CALL if kind == "wal" else r + 1
            handles = [otp.send_request(p, (t, at)) for p, t in zip(procs, targets, strict=True)]
            for handle in handles:
                assert otp.wait_response(handle, 60) == "ok"
        cpu = time.process_time() - start
    finally:
        node.stop()
        for target in targets:
            target.close()
    return 1e6 * cpu / (PARTITIONS * rounds * PER_CALL)


def main(argv: list[str]) -> None:
    rounds = int(os.environ.get("ROUNDS", "150"))
    for kind in argv or ["wal", "lmdb"]:
        print(f"{kind} {run(kind, rounds):.2f} us CPU per write")


if __name__ == "__main__":
    main(sys.argv[1:])
