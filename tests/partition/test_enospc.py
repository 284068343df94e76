"""A full disk (ENOSPC, injected into the node's WAL or a partition's disk log) under a
partition (issue 14): writes are refused with ``commit_stalled`` at once, reads and status are
still served, the partition does not restart, the write caught by the stall is acknowledged
only once it is durable, and everything resumes by itself when space returns."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
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
from waraft.core.types import DurableState, LogPos
from waraft.log import disk
from waraft.log.wal import WalWriter
from waraft.partition import acceptor, durable_state, server
from waraft.storage.node_lmdb import NodeEnv
from waraft.storage.provider import write_file_durably


def _commit(node: otp.Node, key: int) -> otp.LocalReplyTo:
    handle = otp.LocalReplyTo()
    acceptor.commit_batch(addr("acceptor", node), [(handle, (key, ("write", "t", key, key)))])
    return handle


def _read(node: otp.Node, key: int, timeout: float = 3.0) -> Any:
    handle = otp.LocalReplyTo()
    acceptor.read_batch(addr("acceptor", node), [(handle, ("read", "t", key), None)])
    return handle.wait(timeout)


def _try_read(node: otp.Node, key: int, timeout: float = 0.5) -> Any:
    try:
        return _read(node, key, timeout)
    except otp.ExitError:
        return None


def _full_disk() -> tuple[dict[str, Any], Callable[[str], OSError | None]]:
    """A fault for ``_inject``: ENOSPC while ``state["now"]``, counting ``state["attempts"]``."""
    state: dict[str, Any] = {"now": True, "attempts": 0}

    def fault(directory: str) -> OSError | None:
        if not state["now"]:
            return None
        state["attempts"] += 1
        return OSError(errno.ENOSPC, "No space left on device")

    return state, fault


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

    full, fault = _full_disk()
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


def test_a_follower_that_cannot_store_a_new_term_holds_back_and_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower's disk is full when a new term reaches it: storing its term and vote fails
    with ENOSPC. It used to crash (DurableStateError) and crash again on every restart; now it
    keeps the new state pending, holds back its sends and applies, and retries until it stores
    it, then catches up with what the new leader committed meanwhile."""
    with cluster(tmp_path, log_module="waraft.log.wal:WalLog") as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        assert acceptor.commit(addr("acceptor", leader), (1, ("write", "t", 1, 1))) == "ok"
        full, other = [n for n in nodes if n is not leader]
        wait_until(
            lambda: all(
                storage.read(addr("storage", n), ("read", "t", 1)) == ("ok", 1)
                for n in (full, other)
            )
        )
        before = server.status(addr("server", full))
        old_term = before["current_term"]
        path = str(before["partition_path"])
        assert durable_state.load(path) == DurableState(old_term, leader.id)
        pid = otp.whereis("raft_server_test_1", node=full)
        assert pid is not None

        real = write_file_durably  # the store's own reference is patched below
        disk_full = {"now": True, "attempts": 0}

        def full_disk(target: str, data: bytes, temp: str) -> None:
            if disk_full["now"] and target.startswith(path + os.sep):
                disk_full["attempts"] += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            real(target, data, temp)

        monkeypatch.setattr(durable_state, "write_file_durably", full_disk)
        # the other follower takes over: its election brings the new term to the full one
        assert server.handover(addr("server", leader), other.id) == ("ok", other.id)
        wait_until(lambda: state(other) == "leader")
        new_term = server.status(addr("server", other))["current_term"]
        assert new_term > old_term
        wait_until(lambda: disk_full["attempts"] > 0)
        assert acceptor.commit(addr("acceptor", other), (2, ("write", "t", 2, 2))) == "ok"
        wait_until(lambda: storage.read(addr("storage", leader), ("read", "t", 2)) == ("ok", 2))
        time.sleep(1.5)  # retrying every STALLED_RETRY_MS, without crashing
        assert otp.whereis("raft_server_test_1", node=full) == pid
        assert disk_full["attempts"] > 1
        stored = durable_state.load(path)
        assert stored is not None and stored.current_term == old_term
        # nothing that depends on the new term leaves it: its applies are held back
        assert storage.read(addr("storage", full), ("read", "t", 2)) == "not_found"
        assert storage.read(addr("storage", full), ("read", "t", 1)) == ("ok", 1)
        # it moved to the new term (and voted) in memory only; none of its answers left it
        assert server.status(addr("server", full))["current_term"] == new_term
        assert full.id not in server.status(addr("server", other))["match_indices"]

        disk_full["now"] = False  # space returns
        wait_until(
            lambda: (s := durable_state.load(path)) is not None and s.current_term == new_term
        )
        wait_until(lambda: storage.read(addr("storage", full), ("read", "t", 2)) == ("ok", 2))
        wait_until(lambda: full.id in server.status(addr("server", other))["match_indices"])
        assert otp.whereis("raft_server_test_1", node=full) == pid
        assert acceptor.commit(addr("acceptor", other), (3, ("write", "t", 3, 3))) == "ok"
        wait_until(lambda: storage.read(addr("storage", full), ("read", "t", 3)) == ("ok", 3))


@pytest.mark.timeout(60)
def test_a_partition_restarted_while_its_wal_is_full_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partition's group restarts (its server is killed) while the node's WAL is full.
    The log actor's final sync used to wait for room forever: the restart hung for the
    supervisor's shutdown time, the abandoned actor kept its WalLog attached, and every
    restart then failed with "already has an open WalLog" until the node gave up. Now the
    final sync is bounded and the group comes back, serving reads, while the disk is full.
    (LMDB storage: a memory storage comes back empty, so the partition would come back
    ``stalled`` after any restart.)"""
    node = start_node(
        tmp_path,
        "n1",
        [1],
        log_module="waraft.log.wal:WalLog",
        storage_module="waraft.storage.lmdb:LmdbStorage",
    )
    try:
        config = server.make_config([ident(node, 1)])
        assert server.bootstrap(addr("server", node, 1), LogPos(1, 1), config) == "ok"
        wait_until(lambda: state(node, 1) == "leader")
        assert _commit(node, 1).wait(5) == "ok"

        full, fault = _full_disk()
        _inject(monkeypatch, "waraft.log.wal:WalLog", fault)
        caught = _commit(node, 2)  # its batch is the one that finds the disk full
        wait_until(lambda: full["attempts"] > 0, 5)
        assert not caught.done
        with node.activate():
            old = otp.whereis("raft_server_test_1")
            assert old is not None
            otp.kill("raft_server_test_1")  # one_for_all: the whole group restarts
            wait_until(lambda: (p := otp.whereis("raft_server_test_1")) and p is not old, 10)
        # Back while the disk is still full: it leads, serves reads, refuses writes. A read
        # is answered at once only once the new leader has its term's first entry (committed
        # in memory: a single member); one that arrives before that is answered when an entry
        # after it is applied, i.e. when there is room. So a read may have to be retried.
        wait_until(lambda: state(node) == "leader", 10)
        wait_until(lambda: server.status(addr("server", node))["log_status"]["wal_stalled"])
        wait_until(lambda: _try_read(node, 1) == ("ok", 1), 10)
        assert full["now"]
        assert _commit(node, 3).wait(3) == ("error", "commit_stalled")

        full["now"] = False  # space returns: the WAL's retry (backoff up to 2 s) resumes
        wait_until(lambda: _commit(node, 4).wait(5) == "ok", 15)
        assert _read(node, 1) == ("ok", 1)
        assert _read(node, 4) == ("ok", 4)
        # The write caught by the stall died with its server, unacknowledged: its record was
        # never durable. If it was acknowledged after all, it must be there.
        if caught.done and caught.wait(0) == "ok":
            assert _read(node, 2) == ("ok", 2)
    finally:
        node.stop()


# -- a full disk under the node's LMDB (its WAL still has room) --------------------------------

NODE_LMDB = "waraft.storage.node_lmdb:NodeLmdbStorage"
WAL = "waraft.log.wal:WalLog"
BIG = "x" * 2048


def _full_lmdb(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every commit of the node's LMDB fails as py-lmdb fails it on a full disk while
    ``state["now"]`` (counted in ``state["attempts"]``)."""
    real = NodeEnv._transaction
    state: dict[str, Any] = {"now": True, "attempts": 0}

    def transaction(self: NodeEnv, group: list[Any]) -> None:
        if state["now"]:
            state["attempts"] += 1
            exc = lmdb.DiskError("mdb_txn_commit: No space left on device")
            exc.code = errno.ENOSPC  # type: ignore[attr-defined]
            raise exc
        real(self, group)

    monkeypatch.setattr(NodeEnv, "_transaction", transaction)
    return state


def _lmdb_node(tmp_path: Path, *, sync: bool = False, **settings: Any) -> otp.Node:
    """A single-replica leader on the node's LMDB with a 4 KiB write-back buffer (``sync``:
    with ``lmdb_sync``, every apply its own fsynced commit)."""
    options: dict[str, Any] = {"lmdb_flush_bytes": 4096, "lmdb_flush_interval_ms": 600_000}
    if sync:
        options["lmdb_sync"] = True
    settings = {"raft_storage_options": options, **settings}
    node = start_node(tmp_path, "n1", [1], settings, log_module=WAL, storage_module=NODE_LMDB)
    config = server.make_config([ident(node, 1)])
    assert server.bootstrap(addr("server", node, 1), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node, 1) == "leader")
    assert _commit(node, 1).wait(5) == "ok"
    return node


def _local_read(node: otp.Node, key: Any) -> Any:
    with node.activate():
        return otp.call(addr("storage", node), ("read", ("read", "t", key)), 2.0)


def _storage_status(node: otp.Node) -> dict[str, Any]:
    with node.activate():
        status: dict[str, Any] = otp.call(addr("storage", node), ("status",), 2.0)
    return status


def test_a_full_lmdb_refuses_writes_and_keeps_serving_reads_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review L, bug 1: the node's LMDB found the disk full before its WAL did, and the
    apply that filled the write-back buffer waited for room: the storage actor answered no
    read, even a single-replica leader's strong read of a key written long before, and
    further writes were committed but never applied (timeouts). Now new writes are refused
    with ``commit_stalled`` once the storage actor sees its flush stalled, reads are
    answered, and everything resumes by itself when there is room, nothing acknowledged
    lost."""
    node = _lmdb_node(tmp_path)
    pid = otp.whereis("raft_storage_test_1", node=node)
    full = _full_lmdb(monkeypatch)
    try:
        acked: list[int] = []
        result: Any = None
        for key in range(100, 160):
            handle = otp.LocalReplyTo()
            op = (key, ("write", "t", key, BIG))
            acceptor.commit_batch(addr("acceptor", node), [(handle, op)])
            result = handle.wait(3)
            if result != "ok":
                break
            acked.append(key)
        assert result == ("error", "commit_stalled")
        assert full["attempts"] > 0 and len(acked) >= 2
        started = time.monotonic()
        assert _read(node, 1, timeout=2) == ("ok", 1)  # strong: the leader's read index
        assert _read(node, acked[-1], timeout=2) == ("ok", BIG)
        assert _local_read(node, acked[0]) == ("ok", BIG)
        assert time.monotonic() - started < 2.0
        status = _storage_status(node)
        assert status["writes_stalled"] is not None and "disk full" in status["writes_stalled"]
        assert status["held_applies"] == 0  # everything committed was applied
    finally:
        full["now"] = False  # space returns
    assert wait_until(lambda: _commit(node, 2).wait(3) == "ok", timeout=20)
    assert _storage_status(node)["writes_stalled"] is None
    assert [_read(node, key) for key in acked] == [("ok", BIG)] * len(acked)
    assert otp.whereis("raft_storage_test_1", node=node) == pid  # no restart


def test_applies_past_the_buffer_bound_on_a_full_lmdb_are_held_then_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was committed before the stall showed, beyond what the buffer takes behind a
    stalled flush (``BEHIND_FACTOR`` times its bound), is held by the storage actor, not
    applied and not lost: local reads and status are answered meanwhile, and the held
    writes are applied and acknowledged once there is room."""
    node = _lmdb_node(tmp_path, raft_apply_log_batch_size=1)  # an apply message per entry
    full = _full_lmdb(monkeypatch)
    try:
        handles = [otp.LocalReplyTo() for _ in range(40)]  # 80 KiB: past 8 x 4 KiB
        ops = [(h, (key, ("write", "t", key, BIG))) for key, h in enumerate(handles, 100)]
        acceptor.commit_batch(addr("acceptor", node), ops)
        wait_until(lambda: full["attempts"] > 0)
        assert _local_read(node, 1) == ("ok", 1)  # within 2 s
        wait_until(lambda: _storage_status(node)["held_applies"] > 0, timeout=10)
        assert _local_read(node, 100) == ("ok", BIG)
        assert _commit(node, 2).wait(3) == ("error", "commit_stalled")
        assert not handles[-1].done  # committed, held: not acknowledged
    finally:
        full["now"] = False
    assert [h.wait(20) for h in handles] == ["ok"] * len(handles)
    assert _storage_status(node)["held_applies"] == 0
    assert [_read(node, key) for key in range(100, 140)] == [("ok", BIG)] * 40


def test_with_lmdb_sync_a_full_lmdb_refuses_writes_and_keeps_serving_reads_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lmdb_sync``: every apply waited for its own commit, so the apply that found the disk
    full kept the storage actor from answering anything, reads and status included, until
    there was room. Now it behaves as lazy sync does: the apply's write waits for room
    without the apply, new writes are refused with ``commit_stalled``, reads are answered,
    and everything resumes by itself when there is room, nothing acknowledged lost."""
    node = _lmdb_node(tmp_path, sync=True)
    pid = otp.whereis("raft_storage_test_1", node=node)
    full = _full_lmdb(monkeypatch)
    try:
        caught = _commit(node, 100)  # its apply's write finds the disk full
        wait_until(lambda: full["attempts"] > 0)
        started = time.monotonic()
        assert _read(node, 1, timeout=2) == ("ok", 1)  # strong: the leader's read index
        assert _local_read(node, 1) == ("ok", 1)
        _storage_status(node)
        assert time.monotonic() - started < 2.0
        wait_until(lambda: _storage_status(node)["writes_stalled"] is not None, timeout=5)
        assert "disk full" in _storage_status(node)["writes_stalled"]
        assert _commit(node, 101).wait(3) == ("error", "commit_stalled")
        assert caught.wait(3) == "ok"  # in the log on a majority; durable there
        assert _local_read(node, 100) == ("ok", 100)  # from the write waiting for room
        status = _storage_status(node)
        assert status["durable_position"] < status["position"]  # the log keeps entry 100
    finally:
        full["now"] = False  # space returns
    assert wait_until(lambda: _commit(node, 102).wait(3) == "ok", timeout=20)
    assert _storage_status(node)["writes_stalled"] is None
    assert [_read(node, key) for key in (100, 101, 102)] == [("ok", 100), "not_found", ("ok", 102)]
    assert otp.whereis("raft_storage_test_1", node=node) == pid  # no restart


@pytest.mark.parametrize(
    ("commands", "answers", "after"),
    [
        (
            [("write", "t", 300, 300), ("$batch", [("incr", "t", 7, 1), ("write", "t", 302, 302)])],
            ["ok", [("ok", 1), "ok"]],
            {300: ("ok", 300), 7: ("ok", 1), 302: ("ok", 302)},
        ),
        (
            [("custom_cmd", 1), ("incr", "t", 7, 1)],
            [
                ("error", ("unknown_command", "unknown storage command ('custom_cmd', 1)")),
                ("ok", 1),
            ],
            {7: ("ok", 1)},
        ),
    ],
    ids=["write_then_session_batch", "opaque_then_derived"],
)
def test_with_lmdb_sync_an_apply_message_of_several_writes_on_a_full_lmdb_keeps_serving_reads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    commands: list[Any],
    answers: list[Any],
    after: dict[int, Any],
) -> None:
    """Review V, bug 1: one apply message may need several provider writes (a ``$batch``
    with a derived command starts a chunk of its own, and so does a derived command after a
    provider's own). With ``lmdb_sync`` the second write waited on the first, stalled on the
    full disk, until there was room: status and reads timed out. Now it is answered as with
    one write per message, and the whole message lands once there is room."""
    node = _lmdb_node(tmp_path, sync=True)
    pid = otp.whereis("raft_storage_test_1", node=node)
    full = _full_lmdb(monkeypatch)
    try:
        handles = [otp.LocalReplyTo() for _ in commands]
        ops = [(h, (400 + n, c)) for n, (h, c) in enumerate(zip(handles, commands, strict=True))]
        acceptor.commit_batch(addr("acceptor", node), ops)
        wait_until(lambda: full["attempts"] > 0)
        # Reported once the whole message is applied (the second write included): the
        # status call timed out before.
        wait_until(lambda: _storage_status(node)["writes_stalled"] is not None, timeout=5)
        assert _local_read(node, 1) == ("ok", 1)
        assert _read(node, 1, timeout=2) == ("ok", 1)
        assert _commit(node, 101).wait(3) == ("error", "commit_stalled")
        assert [handle.wait(3) for handle in handles] == answers  # in the log: durable there
        status = _storage_status(node)
        assert status["durable_position"] < status["position"]  # the log keeps the message
    finally:
        full["now"] = False  # space returns
    assert wait_until(lambda: _commit(node, 102).wait(3) == "ok", timeout=20)
    assert {key: _read(node, key) for key in after} == after
    assert otp.whereis("raft_storage_test_1", node=node) == pid  # no restart
