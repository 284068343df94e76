"""Real ``waraft node`` processes for the multi-process and CLI tests.

Every node listens on 127.0.0.1 on a free port chosen BELOW the kernel's ephemeral range (a
restart reuses it, since node ids are part of the membership): a port from the ephemeral range,
freed by a kill -9, can be taken meanwhile as the local port of any outgoing connection on the
machine, and the restarted node then exits with "Address already in use" (which made chaos runs
fail, and before their runner was fixed, hang). Each node keeps durable data under the test's
directory and logs to ``<name>.log`` there. Every process started here is killed by pid by
:meth:`Cluster.kill_all` (the fixtures call it in a finalizer, and an atexit hook does it as a
last resort).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0
FAST_SETTINGS: dict[str, Any] = {
    "raft_election_timeout_ms": 300,
    "raft_election_timeout_ms_max": 600,
    "raft_heartbeat_interval_ms": 50,
    "raft_election_pre_vote": True,
}
PING = 0.2
DOWN = 0.8

_started: set[int] = set()
_taken: set[int] = set()  # ports handed out by this process (a node may not be bound yet)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default lower bound


def free_port(low: int = 20000) -> int:
    """A port of 127.0.0.1 in ``[low, ephemeral range)`` that nothing is bound to now: no
    outgoing connection is ever given one as its local port, so it stays free for a node's
    restarts. (Another process may still pick it deliberately; random choice makes that rare.)"""
    import random
    import socket

    high = _ephemeral_low()
    if high - low < 1000:
        low = 1024
    for _ in range(200):
        port = random.randrange(low, high)
        if port in _taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError(f"no free port in {low}..{high}")


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - safety net only
    for pid in list(_started):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {predicate}")
        time.sleep(interval)


def waraft_cmd(*args: str) -> list[str]:
    """The ``waraft`` command run with this interpreter."""
    return [sys.executable, "-m", "waraft.cli", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class NodeProcess:
    """One ``waraft node`` process."""

    def __init__(self, root: Path, name: str, extra: Sequence[str]) -> None:
        self.name = name
        self.data_dir = root / name
        self.log_path = root / f"{name}.log"
        self.extra = list(extra)
        self.port = 0
        self.node_id: str | None = None
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        if not self.port:
            self.port = free_port()
        cmd = waraft_cmd(
            "node", "--name", self.name, "--listen", f"127.0.0.1:{self.port}",
            "--data-dir", str(self.data_dir), *self.extra,
        )  # fmt: skip
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=ROOT,
                env=child_env(),
            )
        _started.add(self.proc.pid)

    def wait_ready(self, timeout: float = WAIT) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    line = self.proc.stdout.readline()
                    if line.startswith("READY "):
                        self.node_id = line.split()[1]
                        self.port = int(self.node_id.rpartition(":")[2])
                        return self.node_id
                    if not line and self.proc.poll() is not None:
                        break
        raise AssertionError(f"{self.name} not ready; log:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL by pid and reap."""
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        self.proc.wait(WAIT)
        _started.discard(self.proc.pid)

    def terminate(self, timeout: float = WAIT) -> int:
        """SIGTERM, wait, and return the exit status (SIGKILL if it does not stop)."""
        assert self.proc is not None
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} ignored SIGTERM; log:\n{self.log_tail()}") from None
        _started.discard(self.proc.pid)
        return code

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Cluster:
    """``size`` nodes n1..n<size> serving ``table`` partitions, fault injection allowed."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        table: str = "kv",
        partitions: Sequence[int] = (1, 2, 3, 4),
        settings: dict[str, Any] | None = None,
        keys: str | None = None,
    ) -> None:
        """``keys``: a key directory with a node key per node name (n1, n2, ...); without
        one the nodes run ``--insecure``."""
        self.root = root
        self.table = table
        self.partitions = list(partitions)
        extra = [
            "--table", table, "--partitions", ",".join(map(str, partitions)),
            "--ping-interval", str(PING), "--down-after", str(DOWN),
            "--allow-fault-injection", "--log-level", "INFO", *(() if keys else ("--insecure",)),
        ]  # fmt: skip
        for key, value in {**FAST_SETTINGS, **(settings or {})}.items():
            extra += ["--set", f"{key}={json.dumps(value)}"]
        self.nodes = [
            NodeProcess(root, f"n{i}", [*extra, *(("--keys", keys) if keys else ())])
            for i in range(1, size + 1)
        ]

    @property
    def ids(self) -> list[str]:
        ids = [n.node_id for n in self.nodes]
        assert all(ids), "start the cluster first"
        return [str(i) for i in ids]

    def start(self, indices: Sequence[int] | None = None) -> None:
        chosen = [
            self.nodes[i] for i in (indices if indices is not None else range(len(self.nodes)))
        ]
        for node in chosen:
            node.spawn()
        for node in chosen:
            node.wait_ready()

    def bootstrap(self) -> None:
        from waraft.cli import ops

        results = ops.bootstrap_cluster(self.ids, self.table, self.partitions, timeout=WAIT)
        assert not [r for r in results if r.error], [r.error for r in results]

    def index_of(self, node_id: str) -> int:
        return self.ids.index(node_id)

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in self.nodes)

    # -- queries through the test process's node ------------------------------------------------

    def admin(self, index: int, *request: Any, timeout: float = 5.0) -> Any:
        from waraft.cli import admin

        return admin.call(self.ids[index], *request, timeout=timeout)

    def rows(self, nodes: Sequence[str] | None = None) -> dict[tuple[str, int], dict[str, Any]]:
        """Status rows by (node id, partition), reachable nodes only."""
        from waraft.cli import ops

        return {
            (r["node"], r["partition"]): r
            for r in ops.collect_status(nodes or self.ids, timeout=2.0)
            if "error" not in r
        }

    def leader(self, partition: int, among: Sequence[str] | None = None) -> tuple[str, int] | None:
        """``(leader, term)`` when exactly one of ``among`` leads ``partition`` and every
        reachable one of them agrees on it."""
        nodes = list(among or self.ids)
        rows = [r for (n, p), r in self.rows(nodes).items() if p == partition]
        leaders = [r for r in rows if r["state"] == "leader"]
        if len(leaders) != 1:
            return None
        lead = leaders[0]
        if any(r["leader"] != lead["node"] or r["term"] != lead["term"] for r in rows):
            return None
        return str(lead["node"]), int(lead["term"])

    def converged(self, nodes: Sequence[str] | None = None) -> bool:
        """Every partition: one leader, and every node in ``nodes`` applied what it
        committed."""
        nodes = list(nodes or self.ids)
        rows = self.rows(nodes)
        for partition in self.partitions:
            found = [rows.get((n, partition)) for n in nodes]
            if any(r is None for r in found):
                return False
            leader = self.leader(partition, nodes)
            if leader is None:
                return False
            applied = {r["applied"] for r in found if r is not None}
            if len(applied) != 1:
                return False
        return True


def wal_files(data_dir: Path) -> list[int]:
    """The sequence numbers of a node's node-wide WAL files (none with the per-partition log)."""
    return sorted(int(path.stem) for path in data_dir.rglob("wal/*.wal"))
