"""Strong reads of large values: the leader's memory and the reads answered.

A 3-node cluster (``waraft node`` processes, one partition, durable providers unless
``--memory``), one value of ``--value-kib`` KiB written, then one client keeping
``--inflight`` strong reads of it in flight for ``--duration`` seconds. Prints the leader's
resident size each second and, at the end, its peak, the reads answered ``ok`` and the errors
by kind. This is the case that bounds ``raft_max_read_reply_bytes`` and the replies in parts
(README, "Memory and disk bounds")::

    python -m benchmarks.read_replies --inflight 5000 --duration 15
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness.procs import ProcessGroup
from benchmarks.harness.waraft_cluster import TABLE, WaraftCluster
from waraft.client import Client


def _leader_pid(cluster: WaraftCluster, client: Client) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        leader = client.refresh_leaders().get(1)
        if leader in cluster.ids:
            return cluster.procs[cluster.ids.index(leader)].pid
        time.sleep(0.2)
    raise SystemExit("no leader for partition 1 within 30 s")


def run(inflight: int, duration: float, value_kib: int, durable: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="waraft-reads-") as tmp:
        root = Path(tmp)
        with ProcessGroup(root / "logs") as group:
            cluster = WaraftCluster(group, 3, 1, root / "data", durable=durable)
            cluster.start()
            cluster.bootstrap()
            client = Client(cluster.ids, table=TABLE, partitions=1, max_inflight=inflight)
            try:
                value = b"x" * (value_kib * 1024)
                written = client.commit(1, ("write", TABLE, "k", value), timeout=30)
                if written != "ok":
                    raise SystemExit(f"the write failed: {str(written)[:200]}")
                leader = psutil.Process(_leader_pid(cluster, client))
                return _load(client, leader, inflight, duration)
            finally:
                client.close()


def _load(client: Client, leader: psutil.Process, inflight: int, duration: float) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    room = threading.Semaphore(inflight)
    lock = threading.Lock()

    def done(result: Any) -> None:
        room.release()
        ok = type(result) is tuple and result[:1] == ("ok",)
        with lock:
            outcomes["ok" if ok else str(result)[:60]] += 1

    stop = time.monotonic() + duration

    def generate() -> None:
        while time.monotonic() < stop:
            if room.acquire(timeout=0.5):
                client.read_async(1, ("read", TABLE, "k"), callback=done, timeout=10)

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    samples: list[int] = []
    while time.monotonic() < stop:
        time.sleep(1.0)
        samples.append(leader.memory_info().rss >> 20)
        print(f"leader rss {samples[-1]} MiB, ok {outcomes['ok']}", flush=True)
    thread.join(timeout=15)
    return {
        "leader_rss_peak_mib": max(samples, default=0),
        "reads_ok": outcomes.pop("ok", 0),
        "errors": dict(outcomes),
        "client": client.stats(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inflight", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--value-kib", type=int, default=1024)
    parser.add_argument("--memory", action="store_true", help="in-memory providers")
    args = parser.parse_args(argv)
    result = run(args.inflight, args.duration, args.value_kib, not args.memory)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
