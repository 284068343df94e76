"""What a flood of scrapes on ``waraft node --metrics`` costs the node.

``python -m benchmarks.metrics_flood [--partitions 256] [--scrapers 16] [--duration 10]``: one
memory-mode node (``--insecure``) with ``--partitions`` partitions, bootstrapped as a
one-node cluster, serving ``/metrics`` on 127.0.0.1. First the node idles for ``--duration``
seconds; then ``--scrapers`` threads scrape ``/metrics`` back to back (each waits for its
answer, then asks again) for ``--duration`` seconds. Printed: the node's CPU (% of one core)
idle and under the flood, scrapes answered per second, and scrapes refused (connection closed
or reset: the endpoint's concurrency limit). The endpoint has no authentication, so the flood is
what anyone who can reach the address can do.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from benchmarks.harness.procs import ProcessGroup, free_ports
from benchmarks.harness.waraft_cluster import WaraftCluster


class _MetricsCluster(WaraftCluster):
    def __init__(self, *args: object, metrics_port: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.metrics_port = metrics_port

    def node_argv(self, i: int) -> list[str]:
        return [*super().node_argv(i), "--metrics", f"127.0.0.1:{self.metrics_port}"]


def _flood(port: int, scrapers: int, duration: float) -> tuple[int, int]:
    """Scrapes answered and refused by ``scrapers`` threads in ``duration`` seconds."""
    answered, refused = [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def scrape() -> None:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    r.read()
                with lock:
                    answered[0] += 1
            except OSError:
                with lock:
                    refused[0] += 1

    threads = [threading.Thread(target=scrape) for _ in range(scrapers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answered[0], refused[0]


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=256)
    parser.add_argument("--scrapers", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    (port,) = free_ports(1)
    with tempfile.TemporaryDirectory(prefix="waraft-metrics-flood-") as tmp:
        root = Path(tmp)
        with ProcessGroup(root / "logs") as group:
            cluster = _MetricsCluster(group, 1, args.partitions, root / "data", metrics_port=port)
            try:
                cluster.start(timeout=120)
                cluster.bootstrap(timeout=max(60.0, args.partitions * 0.5))
                time.sleep(3)
                pid = cluster.procs[0].pid
                c0 = _cpu(pid)
                time.sleep(args.duration)
                idle = (_cpu(pid) - c0) / args.duration * 100
                c0, t0 = _cpu(pid), time.monotonic()
                answered, refused = _flood(port, args.scrapers, args.duration)
                window = time.monotonic() - t0
                flood = (_cpu(pid) - c0) / window * 100
            finally:
                for proc in cluster.procs:
                    if proc.killed_at is None:
                        group.kill9(proc)
    print(
        f"partitions={args.partitions} scrapers={args.scrapers} duration={args.duration:.0f}s: "
        f"node CPU idle {idle:.1f} %, under the flood {flood:.1f} %; "
        f"{answered / window:.1f} scrapes/s answered, {refused / window:.1f}/s refused"
    )


if __name__ == "__main__":
    main()
