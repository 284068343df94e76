"""A waraft cluster of N node processes on 127.0.0.1, run only through the public ``waraft``
command: ``waraft node`` per node, ``waraft bootstrap`` once, ``waraft status --json`` for
terms and leaders (never during a measured window: each call is a Python process of its own).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.harness.procs import (
    REPO_ROOT,
    Managed,
    ProcessGroup,
    free_ports,
    python_env,
    wait_until,
)

TABLE = "kv"


def waraft_argv(*args: str) -> list[str]:
    """The ``waraft`` command run by this interpreter (same virtualenv, no PATH lookup)."""
    return [sys.executable, "-m", "waraft.cli", *args]


def fsync_total(rows: list[dict[str, Any]]) -> int | None:
    """Group commits in ``waraft status --json`` rows (see ``WaraftCluster.fsyncs``)."""
    per_partition = 0
    per_node: dict[str, int] = {}
    known = False
    for row in rows:
        if "error" in row:
            continue
        wal = row.get("wal_fsyncs")
        if isinstance(wal, int):
            node = str(row.get("node"))
            per_node[node] = max(per_node.get(node, 0), wal)
            known = True
            continue
        count = row.get("log_fsyncs")
        if isinstance(count, int):
            per_partition += count
            known = True
    return per_partition + sum(per_node.values()) if known else None


class WaraftCluster:
    system = "waraft"

    def __init__(
        self,
        group: ProcessGroup,
        nodes: int,
        partitions: int,
        data_dir: Path,
        *,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        log_level: str = "WARNING",
    ) -> None:
        self.group = group
        self.nodes = nodes
        self.partitions = partitions
        self.data_dir = data_dir
        self.durable = durable
        self.settings = dict(settings or {})
        self.log_level = log_level
        ports = free_ports(nodes)
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.ids = [
            f"{name}@127.0.0.1:{port}" for name, port in zip(self.names, ports, strict=True)
        ]
        self.listen = [f"127.0.0.1:{port}" for port in ports]
        self.procs: list[Managed] = []

    @property
    def partition_list(self) -> str:
        return f"1-{self.partitions}" if self.partitions > 1 else "1"

    def describe_settings(self) -> dict[str, Any]:
        return {
            "providers": self.providers(),
            "set": dict(self.settings),
            "partitions": self.partitions,
        }

    def providers(self) -> str:
        """The log and storage the nodes run: ``waraft node``'s defaults unless ``--set``."""
        if not self.durable:
            return "memory"
        log = self.settings.get("raft_log_module", "waraft.log.wal:WalLog (node default)")
        storage = self.settings.get(
            "raft_storage_module", "waraft.storage.node_lmdb:NodeLmdbStorage (node default)"
        )
        return f"durable ({log}, {storage})"

    def node_argv(self, i: int) -> list[str]:
        argv = waraft_argv(
            "node",
            "--name", self.names[i],
            "--listen", self.listen[i],
            "--data-dir", str(self.data_dir / self.names[i]),
            "--table", TABLE,
            "--partitions", self.partition_list,
            "--log-level", self.log_level,
            # Figures compare the protocol with other systems run without TLS: no CURVE.
            "--insecure",
        )  # fmt: skip
        if not self.durable:
            argv.append("--memory")
        for key, value in self.settings.items():
            argv += ["--set", f"{key}={value}"]
        return argv

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.nodes):
            self.procs.append(self.group.spawn(self.names[i], self.node_argv(i), role="server"))
        for proc in self.procs:
            wait_until(
                lambda p=proc: "READY " in p.output(),  # type: ignore[misc]
                timeout,
                f"{proc.name} to print READY",
                check=self.check_alive,
            )

    def bootstrap(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        out = self._cli(
            "bootstrap",
            "--nodes", ",".join(self.ids),
            "--table", TABLE,
            "--partitions", self.partition_list,
            "--timeout", str(timeout),
            "--json",
            timeout=timeout + 30,
        )  # fmt: skip
        summary: Any = json.loads(out)
        rows = summary if isinstance(summary, list) else summary.get("partitions", summary)
        return rows if isinstance(rows, list) else [summary]

    def status(self, timeout: float = 3.0) -> list[dict[str, Any]]:
        """Rows of ``waraft status --json`` for the live nodes."""
        live = [self.ids[i] for i, p in enumerate(self.procs) if p.killed_at is None]
        if not live:
            return []
        out = self._cli(
            "status",
            "--nodes", ",".join(live),
            "--table", TABLE,
            "--partitions", self.partition_list,
            "--timeout", str(timeout),
            "--json",
            timeout=timeout * len(live) + 30,
            check=False,
        )  # fmt: skip
        try:
            rows = json.loads(out)
        except ValueError:
            return []
        return [r for r in rows if isinstance(r, dict)]

    def _cli(self, *args: str, timeout: float, check: bool = True) -> str:
        proc = subprocess.run(
            waraft_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=python_env(),
            cwd=str(REPO_ROOT),
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"waraft {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    # -- what the runner needs ---------------------------------------------------------------

    def loadgen_spec(self) -> dict[str, Any]:
        return {"nodes": list(self.ids), "table": TABLE, "partitions": self.partitions}

    def terms(self, timeout: float = 3.0) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.status(timeout):
            if "error" in row or row.get("term") is None:
                continue
            key = str(row.get("partition"))
            out[key] = max(out.get(key, 0), int(row["term"]))
        return out

    def fsyncs(self) -> int | None:
        """Log group commits (fsyncs) so far over the cluster; None for in-memory logs.

        A per-partition log (``log_fsyncs``) counts its own fsyncs: summed over every row. The
        node-wide WAL (``wal_fsyncs``) is one counter that every partition of a node reports:
        counted once per node (the largest value seen, rows being read one by one)."""
        return fsync_total(self.status())

    def leaders(self) -> dict[int, str]:
        """partition → leader node id, from the nodes that say they lead."""
        out: dict[int, str] = {}
        for row in self.status():
            if row.get("state") == "leader" and row.get("partition") is not None:
                out[int(row["partition"])] = str(row["node"])
        return out

    def leader_process(self) -> Managed:
        counts: dict[str, int] = {}
        for node in self.leaders().values():
            counts[node] = counts.get(node, 0) + 1
        if not counts:
            raise RuntimeError("no waraft leader to kill")
        victim = max(counts, key=lambda n: counts[n])
        return self.procs[self.ids.index(victim)]

    def server_processes(self) -> list[Managed]:
        return list(self.procs)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.killed_at is None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")

    def stop(self) -> None:
        for proc in self.procs:
            self.group.stop(proc, timeout=25.0)
