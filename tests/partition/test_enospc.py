"""A full disk (ENOSPC, injected into the node's WAL or a partition's disk log) under a
partition (issue 14): writes are refused with ``commit_stalled`` at once, reads and status are
still served, the partition does not restart, the write caught by the stall is acknowledged
only once it is durable, and everything resumes by itself when space returns."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import (
    addr,
    cluster,
    ident,
    leader_of,
    start_node,
    state,
    wait_until,
)
from waraft import otp, storage
from waraft.core.types import LogPos
from waraft.log import disk
from waraft.log.wal import WalWriter
from waraft.partition import acceptor, server


def _commit(node: otp.Node, key: int) -> otp.LocalReplyTo:
    handle = otp.LocalReplyTo()
    acceptor.commit_batch(addr("acceptor", node), [(handle, (key, ("write", "t", key, key)))])
    return handle


def _read(node: otp.Node, key: int, timeout: float = 3.0) -> Any:
    handle = otp.LocalReplyTo()
    acceptor.read_batch(addr("acceptor", node), [(handle, ("read", "t", key), None)])
    return handle.wait(timeout)


def _inject(monkeypatch: pytest.MonkeyPatch, log_module: str, fault: Any) -> None:
    """Route every write of the log provider through ``fault`` (an injected full disk)."""
    if log_module.endswith(":WalLog"):
        monkeypatch.setattr(WalWriter, "fault", fault)
        return
    real = disk._write_all

    def write_all(fd: int, data: bytes) -> None:
        error = fault("")
        if error is not None:
            raise error
        real(fd, data)

    monkeypatch.setattr(disk, "_write_all", write_all)


@pytest.mark.parametrize("log_module", ["waraft.log.wal:WalLog", "waraft.log.disk:DiskLog"])
def test_a_full_disk_refuses_writes_serves_reads_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_module: str
) -> None:
    node = start_node(tmp_path, "n1", [1], log_module=log_module)
    config = server.make_config([ident(node, 1)])
    assert server.bootstrap(addr("server", node, 1), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node, 1) == "leader")
    assert _commit(node, 1).wait(5) == "ok"
    pid = otp.whereis("raft_server_test_1", node=node)

    full = {"now": True, "attempts": 0}

    def fault(directory: str) -> OSError | None:
        if not full["now"]:
            return None
        full["attempts"] += 1
        return OSError(errno.ENOSPC, "No space left on device")

    _inject(monkeypatch, log_module, fault)
    caught = _commit(node, 2)  # its batch is the one that finds the disk full
    wait_until(lambda: full["attempts"] > 0)
    # the partition keeps answering: reads, status, and a clear error for new writes
    assert _read(node, 1) == ("ok", 1)
    assert server.status(addr("server", node, 1), timeout=2)["state"] == "leader"
    started = time.monotonic()
    assert _commit(node, 3).wait(3) == ("error", "commit_stalled")
    assert time.monotonic() - started < 1.0
    time.sleep(0.5)  # backing off: a few attempts, no restart
    assert not caught.done  # not durable, so not acknowledged
    assert otp.whereis("raft_server_test_1", node=node) == pid
    assert full["attempts"] < 10

    full["now"] = False  # space returns
    assert caught.wait(10) == "ok"
    assert _commit(node, 4).wait(5) == "ok"
    assert [_read(node, k) for k in (1, 2, 3, 4)] == [("ok", 1), ("ok", 2), "not_found", ("ok", 4)]
    assert otp.whereis("raft_server_test_1", node=node) == pid


def test_a_leader_whose_disk_is_full_hands_over_and_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three nodes, the leader's disk fills: it holds back its sends (nothing it cannot make
    durable leaves it), another node takes over and keeps committing, and the stalled node
    rejoins with every acknowledged write once it has room again."""
    with cluster(tmp_path, log_module="waraft.log.wal:WalLog") as nodes:
        old = leader_of(nodes)
        assert old is not None
        assert acceptor.commit(addr("acceptor", old), (1, ("write", "t", 1, 1))) == "ok"
        full = {"now": True}
        old_wal = str(tmp_path / old.id.split(".")[0]) + os.sep  # its raft_database

        def fault(directory: str) -> OSError | None:
            if full["now"] and directory.startswith(old_wal):
                return OSError(errno.ENOSPC, "No space left on device")
            return None

        monkeypatch.setattr(WalWriter, "fault", fault)
        caught = _commit(old, 2)
        rest = [n for n in nodes if n is not old]
        new = wait_until(lambda: leader_of(rest))
        for key in (3, 4):
            assert acceptor.commit(addr("acceptor", new), (key, ("write", "t", key, key))) == "ok"
        assert acceptor.read(addr("acceptor", new), ("read", "t", 1)) == ("ok", 1)
        full["now"] = False
        for key in (1, 3, 4):
            wait_until(
                lambda key=key: (
                    storage.read(addr("storage", old), ("read", "t", key)) == ("ok", key)
                )
            )
        result = caught.wait(10)
        # The write caught by the stall was either committed (then every replica has it) or
        # failed with an error; it is never acknowledged and then lost.
        if result == "ok":
            assert acceptor.read(addr("acceptor", new), ("read", "t", 2)) == ("ok", 2)
        else:
            assert result[0] == "error"
