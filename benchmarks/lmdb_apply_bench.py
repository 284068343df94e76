"""CPU of the storage actor's LMDB apply (``NodeLmdbStorage.apply_batch``) per write and per
call, in one process, at the harness's two shapes.

``python -m benchmarks.lmdb_apply_bench [lmdb] [memstore]``: ``PARTITIONS`` (default 64)
scheduled processes on two scheduler threads, each owning one partition of the node's LMDB
environment (lazy sync, the default), apply ``PER_CALL`` (default 40) plain writes of 100-byte
values per ``apply_batch`` call, ``ROUNDS`` (default 300) calls each; a round sends one call to
every partition and waits for all of them, as the storage actors of one node get their apply
messages. Keys cycle over ``KEYS`` (default 156: the harness's 10,000 keys over 64 partitions)
per partition. ``memstore`` runs the same loop on ``MemoryStorage``, to subtract.

The shapes that matter (``benchmarks/SCALE.md``): ``PER_CALL=40`` is 64 partitions at 16384 in
flight (a client batch of ~40 requests per ``$batch`` entry, one apply message per round);
``PER_CALL=1 KEYS=10 PARTITIONS=250`` is 1000 partitions at 4096 in flight (~1.3 requests per
round, each partition a few per second). With ``PACE_MS`` set, the calls are spread evenly over
rounds that last that long (``PACE_MS=700 PER_CALL=1 KEYS=10 PARTITIONS=1000 ROUNDS=10``: each
partition applies once every 0.7 s, as at 1000 partitions x 4096 in flight, so its
write-back buffer is due at nearly every apply).

Printed per mode: process CPU (user and system, every thread: the committer and the syncer
included) per write and per call, and the node's group commits (``writes / commits``). Run it
from two trees alternately (``PYTHONPATH=<tree>``) to compare them: other load on the machine
moves wall time much more than it moves process CPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from waraft import otp
from waraft.core.types import Identity, LogPos
from waraft.storage.memory import MemoryStorage
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import StorageOptions

PARTITIONS = int(os.environ.get("PARTITIONS", "64"))
PER_CALL = int(os.environ.get("PER_CALL", "40"))
KEYS = int(os.environ.get("KEYS", "156"))
ROUNDS = int(os.environ.get("ROUNDS", "300"))
PACE_MS = float(os.environ.get("PACE_MS", "0"))
VALUE = os.urandom(100)


class _Applier(otp.Process):
    def init(self, storage: Any) -> None:
        self.storage = storage
        self.next = 0

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        position = LogPos(request, 1)
        first = self.next
        self.next += PER_CALL
        items = [
            (("write", "kv", f"k{(first + i) % KEYS}", VALUE), position, None)
            for i in range(PER_CALL)
        ]
        self.storage.apply_batch(items)
        return "ok"


def run(kind: str) -> str:
    root = tempfile.mkdtemp(prefix=f"lmdb-apply-{kind}-")
    storage_class = {"lmdb": NodeLmdbStorage, "memstore": MemoryStorage}[kind]
    node = otp.Node(f"lab{kind}@t", schedulers=2, io_threads=2, process_type=otp.SCHEDULED)
    stores: list[Any] = [
        storage_class.open(
            StorageOptions("kv", p, Identity("s", "n@h")), os.path.join(root, f"kv.{p}")
        )
        for p in range(PARTITIONS)
    ]
    procs = [_Applier.start(store, node=node) for store in stores]
    try:
        before = os.times()
        start = time.monotonic()
        for r in range(1, ROUNDS + 1):
            handles = []
            for i, proc in enumerate(procs):
                if PACE_MS:
                    at = start + ((r - 1) + i / len(procs)) * PACE_MS / 1000.0
                    time.sleep(max(0.0, at - time.monotonic()))
                handles.append(otp.send_request(proc, r))
            for handle in handles:
                assert otp.wait_response(handle, 60) == "ok"
        for store in stores:
            store.status()  # waits for each partition's last queued write
        after = os.times()
    finally:
        node.stop()
        commits = writes = 0
        if kind == "lmdb":
            env = stores[0]._node
            commits, writes = env.commits, env.writes
        for store in stores:
            store.close()
    calls = PARTITIONS * ROUNDS
    user = (after.user - before.user) * 1e6
    system = (after.system - before.system) * 1e6
    per_write = (user + system) / (calls * PER_CALL)
    return (
        f"{kind}: {per_write:.2f} us CPU per write (user {user / (calls * PER_CALL):.2f}, "
        f"sys {system / (calls * PER_CALL):.2f}), {(user + system) / calls:.1f} us per call; "
        f"{writes} writes in {commits} commits"
    )


def main(argv: list[str]) -> None:
    for kind in argv or ["lmdb", "memstore"]:
        print(run(kind), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
