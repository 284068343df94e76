"""A PySyncObj cluster of N node processes on 127.0.0.1 (see :mod:`benchmarks.harness.pso_node`).

The settings are PySyncObj's ``SyncObjConf`` keywords; :data:`THROUGHPUT_CONF` and
:data:`LATENCY_CONF` are the tuned sets the harness uses (why each value: ``benchmarks/README.md``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq

from benchmarks.harness.procs import Managed, ProcessGroup, free_ports, python_argv, wait_until
from benchmarks.harness.pso_client import node_status

#: Best throughput found on these machines (the sweep is in benchmarks/README.md): replication
#: every 5 ms in batches of up to 1 MiB, larger socket buffers, compaction rarely (it pickles
#: the whole dict in the tick thread every 5000 entries by default, which cut throughput to a
#: fifth), and a 2 ms tick so commands queued between socket events do not wait 50 ms.
THROUGHPUT_CONF: dict[str, Any] = {
    "appendEntriesUseBatch": True,
    "appendEntriesPeriod": 0.005,
    "autoTickPeriod": 0.002,
    "appendEntriesBatchSizeBytes": 2**20,
    "sendBufferSize": 2**22,
    "recvBufferSize": 2**22,
    "logCompactionMinEntries": 1_000_000,
    "raftMinTimeout": 0.4,
    "raftMaxTimeout": 1.4,
}

#: Best latency for one synchronous client: no batching (every command is replicated at once
#: and every apply triggers the next append_entries carrying the commit index).
LATENCY_CONF: dict[str, Any] = {
    **THROUGHPUT_CONF,
    "appendEntriesUseBatch": False,
}


class PySyncObjCluster:
    system = "pysyncobj"

    def __init__(
        self,
        group: ProcessGroup,
        nodes: int,
        conf: Mapping[str, Any],
        data_dir: Path | None = None,
    ) -> None:
        self.group = group
        self.nodes = nodes
        self.conf = dict(conf)
        self.data_dir = data_dir
        ports = free_ports(2 * nodes)
        self.raft = [f"127.0.0.1:{p}" for p in ports[:nodes]]
        self.api = [f"127.0.0.1:{p}" for p in ports[nodes:]]
        self.procs: list[Managed] = []
        self.ctx = zmq.Context()

    def start(self) -> None:
        api_map = ",".join(f"{r}={a}" for r, a in zip(self.raft, self.api, strict=True))
        for i in range(self.nodes):
            peers = ",".join(r for j, r in enumerate(self.raft) if j != i)
            args = [
                "--raft", self.raft[i],
                "--peers", peers,
                "--api", self.api[i],
                "--api-map", api_map,
                "--conf", json.dumps(self.conf),
            ]  # fmt: skip
            if self.data_dir is not None:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                args += ["--journal", str(self.data_dir / f"pso{i + 1}.journal")]
                args += ["--dump", str(self.data_dir / f"pso{i + 1}.dump")]
            argv = python_argv("benchmarks.harness.pso_node", *args)
            self.procs.append(self.group.spawn(f"pso{i + 1}", argv, role="server"))

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.killed_at is None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")

    def status(self, i: int, timeout: float = 0.5) -> dict[str, Any] | None:
        if self.procs[i].killed_at is not None:
            return None
        return node_status(self.ctx, self.api[i], timeout)

    def statuses(self) -> list[dict[str, Any] | None]:
        return [self.status(i) for i in range(self.nodes)]

    def leader(self) -> int | None:
        for i, st in enumerate(self.statuses()):
            if st and st["is_leader"] and st["ready"]:
                return i
        return None

    def wait_leader(self, timeout: float = 30.0) -> int:
        found: list[int] = []

        def ready() -> bool:
            leader = self.leader()
            if leader is None:
                return False
            found.append(leader)
            return True

        wait_until(ready, timeout, "a PySyncObj leader", interval=0.1, check=self.check_alive)
        return found[-1]

    def terms(self) -> dict[str, int]:
        """One partition (PySyncObj has no partitions): the highest term of the live nodes."""
        terms = [int(st["term"]) for st in self.statuses() if st is not None]
        return {"1": max(terms)} if terms else {}

    def server_processes(self) -> list[Managed]:
        return list(self.procs)

    def loadgen_spec(self) -> dict[str, Any]:
        return {"endpoints": list(self.api)}

    def leader_endpoint(self) -> str:
        leader = self.wait_leader()
        return self.api[leader]

    def leader_process(self) -> Managed:
        return self.procs[self.wait_leader()]

    def stop(self) -> None:
        for proc in self.procs:
            self.group.stop(proc)
        self.ctx.term()
