"""Open fds and RSS per node with many durable partitions (issue 14).

Starts 3 ``waraft node`` processes with the durable providers and P partitions each, bootstraps
them, writes a few keys to every partition, and reports each node's open file descriptors
(``/proc/<pid>/fd``) and resident memory (``VmRSS``), plus the time bootstrap took. Every node
process is killed by pid when the run ends (``ProcessGroup``).

    python -m benchmarks.scale_durable --partitions 4 64 256 [--log waraft.log.disk:DiskLog]
        [--storage waraft.storage.lmdb:LmdbStorage]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness.procs import ProcessGroup
from benchmarks.harness.waraft_cluster import WaraftCluster


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _fd_kinds(pid: int) -> dict[str, int]:
    """Open fds by kind: the file's base name for files, else socket/pipe/anon_inode."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":")[0] if ":" in target else os.path.basename(target)
        if kind.endswith(".wal"):
            kind = "*.wal"
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:8])


def _proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rss_mib(pid: int) -> float:
    return _proc_status(pid, "VmRSS") / 1024


def measure(
    partitions: int, log_module: str | None, root: Path, storage_module: str | None = None
) -> dict[str, Any]:
    settings = {"raft_log_module": log_module} if log_module else {}
    if storage_module:
        settings["raft_storage_module"] = storage_module
    with ProcessGroup(root / "logs") as group:
        cluster = WaraftCluster(
            group, 3, partitions, root / "data", durable=True, settings=settings
        )
        started = time.monotonic()
        cluster.start(timeout=300)
        ready = time.monotonic()
        cluster.bootstrap(timeout=300)
        booted = time.monotonic()
        from waraft.client import Client

        with Client(cluster.ids, table="kv", partitions=partitions, timeout=60) as client:
            futures = [
                client.commit_async(f"k{i}", ("write", "kv", f"k{i}", i))
                for i in range(partitions * 4)
            ]
            results = [None if f is None else f.result(120) for f in futures]
            ok = sum(1 for r in results if r == "ok")
            errors = Counter(repr(r)[:80] for r in results if r != "ok")
        written = time.monotonic()
        nodes = [
            {
                "node": p.name,
                "fds": _fds(p.pid),
                "rss_mib": round(_rss_mib(p.pid), 1),
                "threads": _proc_status(p.pid, "Threads"),
                "fd_kinds": _fd_kinds(p.pid),
            }
            for p in cluster.procs
        ]
        cluster.stop()
    return {
        "partitions": partitions,
        "log_module": log_module or "default (waraft node)",
        "storage_module": storage_module or "default (waraft node)",
        "start_s": round(ready - started, 1),
        "bootstrap_s": round(booted - ready, 1),
        "writes_ok": ok,
        "write_errors": dict(errors.most_common(4)),
        "writes_s": round(written - booted, 1),
        "nodes": nodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--log", default=None, help="raft_log_module (default: the node's)")
    parser.add_argument("--storage", default=None, help="raft_storage_module (default: the node's)")
    args = parser.parse_args()
    for count in args.partitions:
        with tempfile.TemporaryDirectory(prefix="waraft-scale-") as tmp:
            print(json.dumps(measure(count, args.log, Path(tmp), args.storage)), flush=True)


if __name__ == "__main__":
    main()
