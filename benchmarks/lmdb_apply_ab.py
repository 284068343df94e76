"""CPU per write of ``NodeLmdbStorage.apply_batch``: its plain fast path against its general loop.

``python -m benchmarks.lmdb_apply_ab`` (``ROUNDS`` calls of 64 writes per repetition, ``REPS``
repetitions) applies the same batches to two partitions of one node LMDB environment, one with
the fast path (``_encode_plain``, every command a plain write) and one with it switched off,
which leaves the general loop (the branch point 57810ef's ``apply_batch``, unchanged), and
interleaves them repetition by repetition in one process, so that other load on the machine
hits both alike. The figure is process CPU (the committer thread included) per write: min and
median over the repetitions. Results in ``benchmarks/SCALE.md``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

from waraft.core.types import Identity, LogPos
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import StorageOptions

VALUE = b"v" * 100
PER_CALL = 64


def main() -> None:
    rounds = int(os.environ.get("ROUNDS", "200"))
    reps = int(os.environ.get("REPS", "30"))
    root = tempfile.mkdtemp(prefix="lmdb-apply-ab-")
    stores: dict[str, NodeLmdbStorage] = {}
    for partition, name in enumerate(("fast", "general"), 1):
        storage = NodeLmdbStorage.open(
            StorageOptions("kv", partition, Identity("s", "n@h")), os.path.join(root, name)
        )
        if name == "general":
            storage._encode_plain = lambda items: None  # type: ignore[method-assign]
        stores[name] = storage
    index = dict.fromkeys(stores, 1)
    cpu: dict[str, list[float]] = {name: [] for name in stores}
    try:
        for _ in range(reps):
            for name, storage in stores.items():
                batches: list[list[tuple[Any, LogPos, Any]]] = []
                for r in range(rounds):
                    position = LogPos(index[name], 1)
                    index[name] += 1
                    batches.append(
                        [
                            (
                                ("write", "kv", f"key{(r * PER_CALL + i) % 5000}", VALUE),
                                position,
                                None,
                            )
                            for i in range(PER_CALL)
                        ]
                    )
                start = time.process_time()
                for items in batches:
                    storage.apply_batch(items)
                storage.status()  # waits for the last queued write, so its commit is counted
                cpu[name].append((time.process_time() - start) * 1e6 / (rounds * PER_CALL))
    finally:
        for storage in stores.values():
            storage.close()
    for name, figures in cpu.items():
        print(
            f"{name}: min {min(figures):.3f} median {statistics.median(figures):.3f} "
            "us CPU per write"
        )


if __name__ == "__main__":
    main()
