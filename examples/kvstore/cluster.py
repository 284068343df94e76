"""A local kvstore cluster: 3 ``waraft node`` processes on 127.0.0.1, bootstrapped.

    python -m examples.kvstore.cluster start    # start (or restart) the nodes, bootstrap once
    python -m examples.kvstore.cluster status   # the status table
    python -m examples.kvstore.cluster stop     # SIGTERM, then SIGKILL after 10 s
    python -m examples.kvstore.cluster stop --clean   # ... and delete the data

Data, logs (``n1.log``) and ``cluster.json`` (node ids, ports, pids) live in ``--dir``
(default ``./data/kvstore``). Node ``n<i>`` listens on ``base-port + i - 1`` (default 7201); a
restart reuses the ports recorded in ``cluster.json``, because node ids are part of every
partition's membership. Nodes run ``waraft node``'s durable providers (WalLog +
NodeLmdbStorage) and ``kvstore_sup`` (``--app-module examples.kvstore.app``).

:class:`LocalCluster` is the library behind it (``examples/demo.py`` uses it too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.kvstore import APP, PARTITIONS, TABLE

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
DEFAULT_SETTINGS: dict[str, Any] = {
    "raft_election_timeout_ms": 500,
    "raft_election_timeout_ms_max": 1000,
    "raft_heartbeat_interval_ms": 100,
}
DEFAULT_DIST: dict[str, Any] = {"ping_interval": 0.25, "down_after": 1.5}


@dataclass
class NodeProc:
    """One node process of the cluster."""

    name: str
    port: int
    data_dir: Path
    out: Path
    log: Path
    pid: int | None = None
    node_id: str | None = None
    metrics_port: int | None = None  # /metrics on the cluster's host, when serving metrics
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        """The process runs (and is still ours: same pid, a waraft node on our data dir)."""
        if self.pid is None:
            return False
        if self.proc is not None:
            return self.proc.poll() is None
        return _is_our_process(self.pid, self.data_dir)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _is_our_process(pid: int, marker: Path) -> bool:
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return "waraft" in text and str(marker) in text
    try:  # no /proc (macOS): trust the pid
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class LocalCluster:
    """``size`` node processes named n1..n<size> with data under ``root``."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        base_port: int = 7201,
        settings: dict[str, Any] | None = None,
        dist: dict[str, float] | None = None,
        table: str = TABLE,
        partitions: Sequence[int] = PARTITIONS,
        keys: Path | None = None,
        metrics: bool = False,
        tied: bool = False,
    ) -> None:
        """``metrics``: every node serves Prometheus metrics on a free port of ``host``
        (``NodeProc.metrics_port``). ``tied``: every node stops (SIGTERM) once this process
        is gone, however it ended (``kill -9`` too; see ``examples.kvstore.tied``); without
        it the nodes outlive this process, as ``start`` needs."""
        self.root = Path(root).resolve()
        self.tied = tied
        self.keys = keys  # a key directory (waraft keys create); None: --insecure
        self.host = host
        self.table = table
        self.partitions = list(partitions)
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.dist: dict[str, Any] = {**DEFAULT_DIST, **(dist or {})}
        self.nodes = [
            NodeProc(
                name=f"n{i}",
                port=0 if base_port == 0 else base_port + i - 1,
                data_dir=self.root / f"n{i}",
                out=self.root / f"n{i}.out",
                log=self.root / f"n{i}.log",
            )
            for i in range(1, size + 1)
        ]
        if metrics:
            for node in self.nodes:
                node.metrics_port = _free_port(host)
        self._load_state()

    # -- state file ------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        by_name = {n.name: n for n in self.nodes}
        for entry in state.get("nodes", []):
            node = by_name.get(entry.get("name"))
            if node is not None:
                node.port = int(entry["port"])
                node.pid = entry.get("pid")
                node.node_id = entry.get("node_id")

    def save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {
            "table": self.table,
            "partitions": self.partitions,
            "nodes": [
                {"name": n.name, "port": n.port, "pid": n.pid, "node_id": n.node_id}
                for n in self.nodes
            ],
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    # -- processes -------------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[str]:
        return [n.node_id or f"{n.name}@{self.host}:{n.port}" for n in self.nodes]

    def command(self, node: NodeProc) -> list[str]:
        main: tuple[str, ...] = ("-m", "waraft.cli")
        if self.tied:
            main = ("-m", "examples.kvstore.tied", str(os.getpid()), "waraft.cli")
        cmd = [
            sys.executable, *main, "node",
            "--name", node.name,
            "--listen", f"{self.host}:{node.port}",
            "--data-dir", str(node.data_dir),
            "--table", self.table,
            "--partitions", ",".join(map(str, self.partitions)),
            "--app", APP,
            "--app-module", "examples.kvstore.app",
            "--ping-interval", str(self.dist["ping_interval"]),
            "--down-after", str(self.dist["down_after"]),
            "--allow-fault-injection",
            *(("--keys", str(self.keys)) if self.keys is not None else ("--insecure",)),
            *(("--metrics", f"{self.host}:{node.metrics_port}") if node.metrics_port else ()),
        ]  # fmt: skip
        for key, value in self.settings.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        return cmd

    def spawn(self, index: int) -> NodeProc:
        """Start node ``index`` (0-based) in its own session; returns without waiting."""
        node = self.nodes[index]
        if node.alive():
            raise RuntimeError(f"{node.name} is already running (pid {node.pid})")
        self.root.mkdir(parents=True, exist_ok=True)
        node.data_dir.mkdir(parents=True, exist_ok=True)
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), environ.get("PYTHONPATH")) if p
        )
        with node.out.open("wb") as out, node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                self.command(node),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                cwd=ROOT,
                env=environ,
                start_new_session=True,  # Ctrl-C in the terminal must not reach the nodes
            )
        node.pid = node.proc.pid
        node.node_id = None
        return node

    def wait_ready(self, nodes: Iterable[NodeProc], timeout: float = READY_TIMEOUT) -> None:
        """Wait for each node's ``READY <id>`` line; record its id and real port."""
        deadline = time.monotonic() + timeout
        for node in nodes:
            while True:
                text = node.out.read_text(errors="replace") if node.out.exists() else ""
                ready = [line for line in text.splitlines() if line.startswith("READY ")]
                if ready:
                    node.node_id = ready[0].split()[1]
                    node.port = int(node.node_id.rpartition(":")[2])
                    break
                if not node.alive():
                    raise RuntimeError(f"{node.name} exited during start-up; see {node.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{node.name} not ready after {timeout:.0f} s; see {node.log}"
                    )
                time.sleep(0.05)
        self.save_state()

    def start(self, indices: Iterable[int] | None = None) -> list[str]:
        """Start the given nodes (default: every node not running) and wait until ready."""
        chosen = [
            i for i in (range(len(self.nodes)) if indices is None else indices)
            if not self.nodes[i].alive()
        ]  # fmt: skip
        started = [self.spawn(i) for i in chosen]
        try:
            self.wait_ready(started)
        finally:
            self.save_state()
        return [n.node_id or "" for n in started]

    def signal(self, index: int, sig: int) -> None:
        """Send ``sig`` to node ``index`` (by pid)."""
        node = self.nodes[index]
        if node.pid is not None and node.alive():
            os.kill(node.pid, sig)

    def kill(self, index: int, timeout: float = 10.0) -> None:
        """SIGKILL node ``index`` and wait for it to be gone."""
        self.signal(index, signal.SIGKILL)
        self._wait_gone([self.nodes[index]], timeout)

    def stop(self, timeout: float = 10.0) -> list[str]:
        """SIGTERM every running node, wait up to ``timeout``, SIGKILL the rest; returns a
        line per node saying how it ended."""
        running = [n for n in self.nodes if n.alive()]
        for node in running:
            if node.pid is not None:
                os.kill(node.pid, signal.SIGTERM)
        self._wait_gone(running, timeout)
        report = []
        for node in running:
            if node.alive() and node.pid is not None:
                os.kill(node.pid, signal.SIGKILL)
                self._wait_gone([node], 5.0)
                report.append(f"{node.name} (pid {node.pid}) killed after {timeout:.0f} s")
            else:
                code = node.proc.returncode if node.proc is not None else None
                how = "" if code is None else f", exit status {code}"
                report.append(f"{node.name} (pid {node.pid}) stopped{how}")
        self.save_state()
        return report

    @staticmethod
    def _wait_gone(nodes: Sequence[NodeProc], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            while node.alive() and time.monotonic() < deadline:
                if node.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        node.proc.wait(max(0.0, min(0.1, deadline - time.monotonic())))
                else:
                    time.sleep(0.05)

    def leftovers(self) -> list[int]:
        """Pids of any process still running with this cluster's directory on its command
        line (should be empty after ``stop``)."""
        found = []
        proc = Path("/proc")
        if not proc.exists():
            return [n.pid for n in self.nodes if n.pid is not None and n.alive()]
        for entry in proc.iterdir():
            pid = int(entry.name) if entry.name.isdigit() else None
            if pid is not None and pid != os.getpid() and _is_our_process(pid, self.root):
                found.append(pid)
        return found


# -- command line ---------------------------------------------------------------------------------


def _cluster(args: argparse.Namespace) -> LocalCluster:
    from waraft.cli import common

    settings = dict(common.parse_assignment(s) for s in getattr(args, "set", None) or [])
    return LocalCluster(Path(args.dir), args.size, base_port=args.base_port, settings=settings)


def _start(args: argparse.Namespace) -> int:
    from waraft.cli import common, ops

    cluster = _cluster(args)
    running = [n.name for n in cluster.nodes if n.alive()]
    if running:
        print(f"already running: {', '.join(running)}; starting the others")
    ids = cluster.start()
    for node_id in ids:
        print(f"started {node_id}")
    with common.client_node(cluster.node_ids, **cluster.dist):
        results = ops.bootstrap_cluster(cluster.node_ids, cluster.table, cluster.partitions)
        for r in results:
            print(
                f"{cluster.table}.{r.partition}: leader {r.leader} (term {r.term})"
                + (f" ERROR {r.error}" if r.error else "")
            )
    print(f"nodes: {','.join(cluster.node_ids)}")
    print(f"try: python -m examples.kvstore.client --nodes {cluster.node_ids[0]} write hello world")
    return 1 if any(r.error for r in results) else 0


def _stop(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    for line in cluster.stop():
        print(line)
    left = cluster.leftovers()
    if left:
        print(f"still running: {left}", file=sys.stderr)
        return 1
    if args.clean:
        shutil.rmtree(cluster.root, ignore_errors=True)
        print(f"removed {cluster.root}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from waraft.cli import common, ops

    cluster = _cluster(args)
    with common.client_node(cluster.node_ids, **cluster.dist):
        rows = ops.collect_status(cluster.node_ids)
    print(ops.format_table(rows))
    return 1 if any(r.get("error") == "unreachable" for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.kvstore.cluster", description="a local 3-node kvstore cluster"
    )
    parser.add_argument("--dir", default="data/kvstore", help="data directory (%(default)s)")
    parser.add_argument("--size", type=int, default=3, help="number of nodes (%(default)s)")
    parser.add_argument("--base-port", type=int, default=7201, help="n1's port (%(default)s)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start the nodes and bootstrap the partitions")
    start.add_argument("--set", action="append", metavar="KEY=VALUE", help="a node setting")
    stop = sub.add_parser("stop", help="stop every node (SIGTERM, then SIGKILL)")
    stop.add_argument("--clean", action="store_true", help="then delete the data directory")
    sub.add_parser("status", help="print the status table")
    args = parser.parse_args(argv)
    handler = {"start": _start, "stop": _stop, "status": _status}[args.cmd]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
