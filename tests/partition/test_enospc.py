"""A full disk (ENOSPC, injected into the node's WAL) under a partition (issue 14): writes are
refused with ``commit_stalled`` at once, reads and status are still served, the partition
does not restart, the write caught by the stall is acknowledged only once it is durable, and
everything resumes by itself when space returns."""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, ident, start_node, state, wait_until
from waraft import otp
from waraft.core.types import LogPos
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


def test_a_full_disk_refuses_writes_serves_reads_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node(tmp_path, "n1", [1], log_module="waraft.log.wal:WalLog")
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

    monkeypatch.setattr(WalWriter, "fault", fault)
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
