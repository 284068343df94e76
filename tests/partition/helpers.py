"""Helpers for partition-runtime tests: nodes with fast timeouts, clusters, waiting."""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from waraft import otp, storage
from waraft.core.types import Identity, LogPos
from waraft.partition import part_sup, server, sup
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


def count_restarts_over_a_long_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition supervisors started from now on give up after their intensity's restarts
    within 60 s, not 1 s: a loaded machine restarting slowly still gets there."""
    monkeypatch.setitem(part_sup.FLAGS, "period", 60)


def kill_server_until_its_supervisor_gives_up(node: otp.Node, supervisor: otp.Pid) -> None:
    """Kill the partition's server each time it is back, until ``supervisor`` (its
    one_for_all supervisor) has had more restarts than its intensity and exited."""
    name = server.default_name("test", 1)
    killed = None
    deadline = time.monotonic() + 20
    with node.activate():
        while supervisor.is_alive():
            assert time.monotonic() < deadline, "the partition's supervisor never gave up"
            pid = otp.whereis(name)
            if pid is not None and pid is not killed:
                otp.kill(pid)
                killed = pid
            else:
                time.sleep(0.001)


def hold_partition_starts(monkeypatch: pytest.MonkeyPatch, gate: threading.Event) -> None:
    """Partition supervisors started from now on wait for ``gate`` (10 s at most, on an I/O
    thread) before they start: holds a parent's restart of a partition until it is set."""
    normalize_spec = part_sup.normalize_spec

    def held_normalize_spec(*args: Any, **kwargs: Any) -> Any:
        otp.blocking(gate.wait, 10)
        return normalize_spec(*args, **kwargs)

    monkeypatch.setattr(part_sup, "normalize_spec", held_normalize_spec)


@contextmanager
def a_partition_whose_supervisor_gave_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[otp.Node, threading.Event, otp.Pid]]:
    """Node ``n`` running partition test.1, whose one_for_all supervisor was driven past its
    intensity and exited: yields the node, the gate holding its parent's restart of it (set
    it to let the restart go on) and the supervisor that gave up. At the end the gate is set
    and the node stopped."""
    count_restarts_over_a_long_period(monkeypatch)
    node = start_node(tmp_path, "n", [1])
    gate = threading.Event()
    try:
        with node.activate():
            first = wait_until(lambda: otp.whereis(part_sup.default_name("test", 1)))
        hold_partition_starts(monkeypatch, gate)
        kill_server_until_its_supervisor_gives_up(node, first)
        yield node, gate, first
    finally:
        gate.set()
        node.stop()
