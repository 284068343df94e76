"""What one retained log entry really costs in memory, against the providers' estimate.

Run: ``python -m benchmarks.entry_memory [--entries N]``.

Entries are built as a follower gets them (decoded from their msgpack encoding) and appended
to a ``waraft.log.memory.MemoryLog`` (the WAL provider holds its entries the same way) in
batches of 50; ``tracemalloc`` measures the heap they take. Shapes: a single ``write`` command,
and a client's packed ``$batch`` of 1 and of 8 writes (what the benchmark harness sends), for
100 B and 1000 B values. Printed per entry: the heap, the encoded size, the provider's estimate
(``byte_size``: encoded + ``ENTRY_MEMORY_OVERHEAD``) and estimate / heap. The heap is not RSS:
the allocator's slack comes on top (``benchmarks/MEMORY.md``).
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

from waraft.core.types import Entry
from waraft.log.memory import ENTRY_MEMORY_OVERHEAD, MemoryLog
from waraft.services.codec import packb, unpackb


def _shapes(value: bytes) -> dict[str, Callable[[int], Any]]:
    def write(i: int, j: int = 0) -> tuple[str, str, str, bytes]:
        return ("write", "kv", f"key-{i:08d}-{j}", value)

    return {
        "write": lambda i: write(i),
        "$batch of 1": lambda i: ("$batch", packb([write(i)])),
        "$batch of 8": lambda i: ("$batch", packb([write(i, j) for j in range(8)])),
    }


def measure(count: int) -> None:
    print(f"ENTRY_MEMORY_OVERHEAD = {ENTRY_MEMORY_OVERHEAD}; {count} entries per row")
    print(f"{'shape':12s} {'value':>6s} {'heap/entry':>10s} {'encoded':>8s} {'estimate':>8s} ratio")
    for size in (100, 1000):
        for name, make in _shapes(b"x" * size).items():
            raw = [packb((3, ("client", i), make(i), None)) for i in range(count)]
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                log = MemoryLog()
                for at in range(0, count, 50):
                    log.append(at + 1, [Entry(*unpackb(r)) for r in raw[at : at + 50]])
                gc.collect()
                heap = (tracemalloc.get_traced_memory()[0] - before) / count
            finally:
                tracemalloc.stop()
            estimate = log.byte_size() / int(log.status()["entries"])
            encoded = estimate - ENTRY_MEMORY_OVERHEAD
            print(
                f"{name:12s} {size:6d} {heap:10.0f} {encoded:8.0f} {estimate:8.0f} "
                f"{estimate / heap:.2f}"
            )
            del log, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    measure(parser.parse_args().entries)


if __name__ == "__main__":
    main()
