"""Helpers for partition-runtime tests: nodes with fast timeouts, clusters, waiting."""

from __future__ import annotations

import errno
import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from waraft import otp, storage
from waraft.core.types import Identity, LogPos
from waraft.partition import server, sup
from waraft.services import env

APP = "test_app"
FAST = {
    "raft_election_timeout_ms": 300,
    "raft_election_timeout_ms_max": 500,
    "raft_heartbeat_interval_ms": 40,
    "raft_commit_batch_interval_ms": 1,
}
_ids = itertools.count(1)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def start_node(
    root: Path,
    name: str,
    partitions: list[int],
    settings: dict[str, Any] | None = None,
    node_id: str | None = None,
    **spec: Any,
) -> otp.Node:
    """A node with its own data directory running ``partitions`` of table ``test``
    (``node_id`` restarts a node under the id its data knows it by)."""
    node = otp.Node(node_id or f"{name}.{next(_ids)}@local")
    with node.activate():
        env.set_env(APP, "raft_database", str(root / name))
        for key, value in {**FAST, **(settings or {})}.items():
            env.set_env(APP, key, value)
        args = [{"table": "test", "partition": p, **spec} for p in partitions]
        result = otp.supervisor.start_child("kernel_sup", sup.child_spec(APP, args))
        assert result[0] == "ok", result
    return node


def ident(node: otp.Node, partition: int = 1) -> Identity:
    return Identity(f"raft_server_test_{partition}", node.id)


def addr(kind: str, node: otp.Node, partition: int = 1) -> tuple[str, str]:
    return (f"raft_{kind}_test_{partition}", node.id)


def state(node: otp.Node, partition: int = 1) -> str:
    try:
        return str(server.status(addr("server", node, partition), timeout=2)["state"])
    except otp.ExitError:
        return "down"


def leader_of(nodes: list[otp.Node], partition: int = 1) -> otp.Node | None:
    leaders = [n for n in nodes if state(n, partition) == "leader"]
    return leaders[0] if len(leaders) == 1 else None


@contextmanager
def cluster(root: Path, size: int = 3, partition: int = 1, **kw: Any) -> Iterator[list[otp.Node]]:
    """``size`` bootstrapped nodes with an elected leader."""
    nodes = [start_node(root, f"n{i + 1}", [partition], **kw) for i in range(size)]
    try:
        config = server.make_config([ident(n, partition) for n in nodes])
        for n in nodes:
            assert server.bootstrap(addr("server", n, partition), LogPos(1, 1), config) == "ok"
        assert server.trigger_election(addr("server", nodes[0], partition)) == "ok"
        wait_until(lambda: leader_of(nodes, partition))
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def fail_directory_fsync_once(monkeypatch: pytest.MonkeyPatch, directory: str) -> list[str]:
    """Make the storage layer's next fsync of ``directory`` (``waraft.storage.fsync_directory``,
    as a snapshot's publication calls it) fail once with EIO; the list of the paths it failed,
    filled when it does."""
    real = storage.fsync_directory
    faults: list[str] = []

    def fsync_directory(path: str) -> None:
        if os.path.abspath(path) == directory and not faults:
            faults.append(path)
            raise OSError(errno.EIO, "Input/output error (injected)")
        real(path)

    monkeypatch.setattr(storage, "fsync_directory", fsync_directory)
    return faults
