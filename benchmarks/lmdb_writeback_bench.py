"""CPU per command of ``NodeLmdbStorage.apply_many`` with the write-back buffer, at the
harness's shape (scenario a, 64 partitions): ``PER_CALL`` plain writes of 100-byte values per
apply (a ``$batch`` entry), ``KEYS`` distinct keys per partition, a flush every ``PER_FLUSH``
applies: the default 200 is about what 500 ms (the former ``lmdb_flush_interval_ms``) hold at
64 partitions x 16384 in flight, and the before/after figures in ``benchmarks/SCALE.md`` were
taken with it; ``PER_FLUSH=800`` is the current default of 2 s.

``python -m benchmarks.lmdb_writeback_bench`` prints process CPU (the node's committer thread
included) per command: min and median over ``REPS`` repetitions of ``ROUNDS`` applies each.
Run it in two trees alternately (``PYTHONPATH=<tree>``) to compare them; results in
``benchmarks/SCALE.md``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from waraft.core.types import Identity, LogPos
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import StorageOptions

VALUE = os.urandom(100)


def main() -> None:
    rounds = int(os.environ.get("ROUNDS", "3000"))
    reps = int(os.environ.get("REPS", "15"))
    per_call = int(os.environ.get("PER_CALL", "3"))
    keys = int(os.environ.get("KEYS", "156"))
    per_flush = int(os.environ.get("PER_FLUSH", "200"))
    root = tempfile.mkdtemp(prefix="lmdb-writeback-")
    options = StorageOptions(
        "kv", 1, Identity("s", "n@h"), extra={"lmdb_flush_interval_ms": 3_600_000}
    )
    storage = NodeLmdbStorage.open(options, os.path.join(root, "kv.1"))
    names = [f"k{i}" for i in range(keys)]
    index, at = 1, 0
    samples: list[float] = []
    try:
        for _ in range(reps):
            batches = []
            for _ in range(rounds):
                batch = []
                for _ in range(per_call):
                    batch.append(("write", "kv", names[at % keys], VALUE))
                    at += 7
                batches.append(batch)
            start = time.process_time()
            for n, batch in enumerate(batches, 1):
                storage.apply_many(batch, LogPos(index, 1))
                index += 1
                if n % per_flush == 0:
                    storage.write_back()
            storage.write_back()
            storage._drain()
            samples.append((time.process_time() - start) / (rounds * per_call) * 1e6)
    finally:
        storage.close()
    print(
        f"{sys.argv[1] if len(sys.argv) > 1 else 'tree'}: us of CPU per command "
        f"min {min(samples):.2f} median {statistics.median(samples):.2f}"
    )


if __name__ == "__main__":
    main()
