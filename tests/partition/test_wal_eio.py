"""EIO on a node's WAL in a running cluster: the failed writer is replaced once, no supervisor
above the partitions escalates, and nothing refused is ever acknowledged."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, ident, leader_of, start_node, wait_until
from waraft import otp
from waraft.core.types import LogPos
from waraft.partition import acceptor, server

SPEC = {
    "log_module": "waraft.log.wal:WalLog",
    "storage_module": "waraft.storage.lmdb:LmdbStorage",
}
SUPERVISORS = ("kernel_sup", "raft_sup_test_app", "raft_sup_test_1", "raft_sup_test_2")


class _FailingFsync:
    """Makes the next ``armed`` ``fdatasync`` calls on files under ``prefix`` fail with EIO
    (a burst of a failing device), leaving every other fsync alone."""

    def __init__(self, prefix: str, real: Callable[[int], None]) -> None:
        self.prefix, self.real = prefix, real
        self.armed = 0
        self.failed = 0
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            hit = self.armed > 0 and self._under_prefix(fd)
            if hit:
                self.armed -= 1
                self.failed += 1
        if hit:
            raise OSError(errno.EIO, "Input/output error (injected)")
        self.real(fd)

    def _under_prefix(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.prefix)
        except OSError:
            return False

    def burst(self, count: int) -> None:
        with self.lock:
            self.armed = count


def _commit(node: otp.Node, p: int, key: int) -> Any:
    try:
        op = (key, ("write", "test", f"k{key}", key))
        return acceptor.commit(addr("acceptor", node, p), op, timeout=2.0)
    except otp.ExitError as exc:
        return ("exit", exc.reason)


def _pids(node: otp.Node, names: tuple[str, ...]) -> dict[str, Any]:
    with node.activate():
        return {name: otp.whereis(name) for name in names}


def _commit_somewhere(nodes: list[otp.Node], p: int, key: int, acked: dict[int, set[int]]) -> bool:
    leader = leader_of(nodes, p)
    if leader is None:
        return False
    ok = _commit(leader, p, key) == "ok"
    if ok:
        acked[p].add(key)
    return ok


@pytest.mark.timeout(120)
def test_two_eio_bursts_on_a_nodes_wal_restart_partitions_not_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A leads partitions 1 and 2. Two bursts of failing fsyncs hit A's WAL about half a
    second apart. Each failed batch fails the writer, which is replaced once by one reopened
    from disk (the failed batch cut off): only the partitions with records in it restart. The
    partition supervisors, the application's and the kernel's keep their processes (the failed
    writer used to stay in service until every partition closed it: each restart attached to
    it and crashed again, up to the application's and then the node's restart limits), the node
    stays up, both partitions commit again, and every commit answered ``ok`` is readable."""
    nodes = [start_node(tmp_path, f"n{i + 1}", [1, 2], **SPEC) for i in range(3)]
    try:
        for p in (1, 2):
            config = server.make_config([ident(n, p) for n in nodes])
            for n in nodes:
                assert server.bootstrap(addr("server", n, p), LogPos(1, 1), config) == "ok"
            assert server.trigger_election(addr("server", nodes[0], p)) == "ok"
        a = nodes[0]
        wait_until(lambda: leader_of(nodes, 1) is a and leader_of(nodes, 2) is a)
        acked: dict[int, set[int]] = {1: set(), 2: set()}
        for p in (1, 2):
            assert _commit_somewhere(nodes, p, p, acked)
        before = _pids(a, SUPERVISORS)
        assert all(before.values()), before
        fsync = _FailingFsync(str(tmp_path / "n1" / "wal") + os.sep, os.fdatasync)
        monkeypatch.setattr(os, "fdatasync", fsync)
        key = 100
        for _ in range(2):
            fsync.burst(2)
            deadline = time.monotonic() + 10
            while fsync.armed and time.monotonic() < deadline:  # A's WAL writes: commit
                key += 1
                _commit_somewhere(nodes, 1 + key % 2, key, acked)
            assert not fsync.armed, "the burst never hit A's WAL"
            time.sleep(0.5)
        for p in (1, 2):
            key += 1
            wait_until(lambda p=p, k=key: _commit_somewhere(nodes, p, k, acked), timeout=30)
        assert _pids(a, SUPERVISORS) == before, "a supervisor above the partitions restarted"
        assert a.alive, a.failure
        for p in (1, 2):
            leader = leader_of(nodes, p)
            assert leader is not None
            for k in sorted(acked[p]):
                read = acceptor.read(addr("acceptor", leader, p), ("read", "test", f"k{k}"))
                assert read == ("ok", k), (p, k, read)
    finally:
        for n in nodes:
            n.stop()
