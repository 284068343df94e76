"""One partition on one node: supervision, durable state across restarts, admission, status,
and the error cases of the public functions."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.partition.helpers import (
    APP,
    addr,
    cluster,
    fail_directory_fsync_once,
    ident,
    leader_of,
    start_node,
    state,
    wait_until,
)
from tests.providers.helpers import stop_wal_writers
from waraft import otp, storage
from waraft.core.types import Identity, LogPos
from waraft.log.memory import MemoryLog
from waraft.otp import timer as otp_timer
from waraft.partition import acceptor, durable_state, part_sup, server, sup
from waraft.storage.memory import MemoryStorage
from waraft.storage.node_lmdb import NodeEnv, _Write
from waraft.storage.provider import StorageCorruptionError

SQLITE = "waraft.storage.sqlite:SqliteStorage"
DISK = "waraft.log.disk:DiskLog"
WAL = "waraft.log.wal:WalLog"


def _bootstrap_single(node: otp.Node, partition: int = 1) -> None:
    config = server.make_config([ident(node, partition)])
    assert server.bootstrap(addr("server", node, partition), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node, partition) == "leader")


def test_partition_children_start_in_warafts_order_with_its_names(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1])
    with node.activate():
        children = otp.supervisor.which_children("raft_sup_test_1")
        ids = [c[0] for c in children]
        assert ids == [
            "wa_raft_queue",
            "wa_raft_storage",
            "wa_raft_log",
            "wa_raft_server",
            "wa_raft_acceptor",
            "wa_raft_transport_cleanup",
        ]
        for kind in ("queue", "storage", "log", "server", "acceptor", "transport_cleanup"):
            assert otp.whereis(f"raft_{kind}_test_1") is not None, kind
        opts = part_sup.options("test", 1)
        assert opts is not None
        assert opts.database == str(tmp_path / "n1" / "test.1")
        assert otp.supervisor.count_children(sup.default_name(APP))["active"] == 1


def test_killing_the_server_restarts_the_group_with_its_durable_state(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1], log_module=DISK, storage_module=SQLITE)
    _bootstrap_single(node)
    assert acceptor.commit(addr("acceptor", node), ("a", ("write", "t", "a", 1))) == "ok"
    before = server.status(addr("server", node))
    with node.activate():
        old_storage = otp.whereis("raft_storage_test_1")
        old_acceptor = otp.whereis("raft_acceptor_test_1")
        otp.kill("raft_server_test_1")  # untrappable, as a crash of its thread would be
        wait_until(lambda: (p := otp.whereis("raft_storage_test_1")) and p is not old_storage)
        # The acceptor starts after the server, which may already lead by then.
        wait_until(lambda: (p := otp.whereis("raft_acceptor_test_1")) and p is not old_acceptor)
    wait_until(lambda: state(node) == "leader")
    after = server.status(addr("server", node))
    assert after["current_term"] >= before["current_term"]
    assert after["last_applied"] >= before["last_applied"]
    assert acceptor.read(addr("acceptor", node), ("read", "t", "a")) == ("ok", 1)


def test_a_storage_actor_killed_untrappably_comes_back_on_the_node_lmdb(tmp_path: Path) -> None:
    """Its ``terminate`` never ran, so its partition of the node's LMDB stayed taken: every
    restart failed with ``StorageLockedError`` and the node's top supervisor gave up."""
    node = start_node(
        tmp_path,
        "n1",
        [1],
        log_module="waraft.log.wal:WalLog",
        storage_module="waraft.storage.node_lmdb:NodeLmdbStorage",
    )
    _bootstrap_single(node)
    assert acceptor.commit(addr("acceptor", node), ("a", ("write", "t", "a", 1))) == "ok"
    with node.activate():
        old = otp.whereis("raft_storage_test_1")
        otp.kill("raft_storage_test_1")
        wait_until(lambda: (p := otp.whereis("raft_storage_test_1")) and p is not old, 20)
    write = ("b", ("write", "t", "b", 2))
    wait_until(lambda: acceptor.commit(addr("acceptor", node), write) == "ok", 20)
    assert acceptor.read(addr("acceptor", node), ("read", "t", "a")) == ("ok", 1)
    node.stop()


def test_memory_partition_restart_keeps_term_and_vote_but_comes_back_stalled(
    tmp_path: Path,
) -> None:
    node = start_node(tmp_path, "n1", [1])
    _bootstrap_single(node)
    term = server.status(addr("server", node))["current_term"]
    with node.activate():
        otp.kill("raft_acceptor_test_1")
    wait_until(lambda: state(node) == "stalled")
    status = server.status(addr("server", node))
    assert status["current_term"] == term
    assert status["voted_for"] == node.id
    stored = durable_state.load(status["partition_path"])
    assert stored is not None and stored.current_term == term


def test_commit_admission_rejects_the_overflow_and_loses_nothing_accepted(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1], settings={"raft_max_pending_high_priority_commits": 5})
    _bootstrap_single(node)
    handles = [otp.LocalReplyTo() for _ in range(12)]
    items = [(h, (i, ("write", "t", i, i))) for i, h in enumerate(handles)]
    acceptor.commit_batch(addr("acceptor", node), items)
    results = [h.wait(5) for h in handles]
    assert results[:5] == ["ok"] * 5
    assert results[5:] == [("error", "commit_queue_full")] * 7
    for i in range(5):
        assert acceptor.read(addr("acceptor", node), ("read", "t", i)) == ("ok", i)
    assert acceptor.read(addr("acceptor", node), ("read", "t", 5)) == "not_found"
    # The slots came back: the queue is empty again.
    assert server.status(addr("server", node))["commit_queue_high"] == 0


def test_read_admission_and_apply_queue_limits(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1], settings={"raft_max_pending_reads": 2})
    _bootstrap_single(node)
    handles = [otp.LocalReplyTo() for _ in range(4)]
    acceptor.read_batch(addr("acceptor", node), [(h, ("read", "t", "x"), None) for h in handles])
    results = [h.wait(5) for h in handles]
    assert results == [
        "not_found",
        "not_found",
        ("error", "read_queue_full"),
        ("error", "read_queue_full"),
    ]


def test_status_carries_warafts_fields(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1])
    status = server.status(addr("server", node))
    for key in (
        "state", "id", "table", "partition", "partition_path", "current_term", "voted_for",
        "commit_index", "last_applied", "leader_id", "next_indices", "match_indices",
        "log_module", "log_first", "log_last", "votes", "inflight_applies", "disable_reason",
        "config", "config_index", "witness",
    ):  # fmt: skip
        assert key in status, key
    assert status["state"] == "stalled"
    assert (status["log_first"], status["log_last"], status["commit_index"]) == (0, 0, 0)
    _bootstrap_single(node)
    status = server.status(addr("server", node))
    assert status["state"] == "leader"
    assert status["leader_id"] == node.id
    assert status["config"]["membership"] == [ident(node)]


def test_public_functions_reject_bad_input_and_wrong_states(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1])
    srv, acc = addr("server", node), addr("acceptor", node)
    config = server.make_config([ident(node)])
    # Bad input fails in the caller, before anything is sent.
    with pytest.raises(ValueError):
        server.bootstrap(srv, (1, -1), config)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.bootstrap(srv, LogPos(1, 1), "not a config")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        acceptor.commit(acc, ("only-a-key",))
    with pytest.raises(ValueError):
        acceptor.commit(acc, ("k", None))
    with pytest.raises(ValueError):
        acceptor.commit(acc, ("k", ("write", "t", "k", 1)), priority="urgent")
    for internal in ("noop", "noop_omitted", ("config", None)):
        with pytest.raises(ValueError, match="reserved to the protocol"):
            acceptor.commit(acc, ("k", internal))
    # Values msgpack cannot carry: the server crashed appending them (a review).
    for unencodable in ({1, 2}, object(), 2**64, ("write", "t", "k", 2**70)):
        with pytest.raises(ValueError, match="must encode as msgpack"):
            acceptor.commit(acc, ("k", unencodable))
        with pytest.raises(ValueError, match="must encode as msgpack"):
            acceptor.commit_async(acc, otp.LocalReplyTo(), ("k", unencodable))
    # Wrong states answer errors.
    assert acceptor.commit(acc, ("k", ("write", "t", "k", 1))) == ("error", "not_leader")
    assert server.resign(srv) == ("error", "not_leader")
    assert server.enable(srv) == ("error", "already_enabled")
    assert server.handover(srv) == ("error", "not_leader")
    new_peer = Identity("raft_server_test_1", "n9@local")
    assert server.adjust_config(srv, ("add", new_peer)) == ("error", "not_leader")
    _bootstrap_single(node)
    assert server.bootstrap(srv, LogPos(1, 1), config)[0] == "error"
    assert server.promote(srv, 0)[0] == "error"
    # A reason the state file cannot encode is refused: storing it crashed the partition.
    result = server.disable(srv, {"why": {1, 2}})
    assert result[0] == "error" and result[1][0] == "badarg", result
    assert server.disable(srv, "maintenance") == "ok"
    assert state(node) == "disabled"
    assert acceptor.commit(acc, ("k", ("write", "t", "k", 1))) == ("error", "not_leader")
    assert server.enable(srv) == "ok"
    assert state(node) == "stalled"
    # Nobody holds the name: the server API raises, the acceptor maps it as WARaft does.
    with pytest.raises(otp.ExitError):
        server.status(("raft_server_nope_9", node.id))
    assert acceptor.commit(("raft_acceptor_nope_9", node.id), ("k", ("write", "t", "k", 1))) == (
        "error",
        "unreachable",
    )


def test_bootstrap_refuses_configs_that_can_never_work(tmp_path: Path) -> None:
    """M4: an empty config, a witness-only one and one not naming the replica were each
    answered ok and installed; the replica then refused every later bootstrap."""
    node = start_node(tmp_path, "n1", [1])
    srv = addr("server", node)
    me = ident(node)
    try:
        with pytest.raises(ValueError, match="needs voting members"):
            server.bootstrap(srv, LogPos(1, 1), server.make_config())
        with pytest.raises(ValueError, match="not a witness"):
            server.bootstrap(srv, LogPos(1, 1), server.make_config([me], witnesses=[me]))
        with pytest.raises(ValueError, match="needs voting members"):
            server.promote(srv, "next", True, server.make_config())
        raw = otp.call(srv, ("bootstrap", (1, 1), server.make_config()), 5)
        assert raw[0] == "error" and "badarg" in str(raw)
        ghost = server.make_config([Identity("raft_server_test_1", "ghost@local")])
        refused = ("error", ("invalid_configuration", "not_a_participant"))
        assert server.bootstrap(srv, LogPos(1, 1), ghost) == refused
        status = server.status(srv)
        assert (status["state"], status["last_applied"]) == ("stalled", 0)
        _bootstrap_single(node)
        assert state(node) == "leader"
    finally:
        node.stop()


def test_sup_rejects_bad_partition_args() -> None:
    for bad in ({"table": "t"}, {"table": "", "partition": 1}, {"table": "t", "partition": 0},
                {"table": "t", "partition": 1, "colour": "red"}):  # fmt: skip
        with pytest.raises(ValueError):
            sup.child_spec(APP, [bad])


def test_the_older_readme_promote_with_a_config_bootstraps_and_leads(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1])
    srv = addr("server", node)
    assert server.promote(srv, 1, True, server.make_config([ident(node)])) == "ok"
    status = server.status(srv)
    # The seed README's status after its promote.
    assert status["state"] == "leader"
    assert (status["current_term"], status["commit_index"], status["last_applied"]) == (1, 1, 1)
    assert status["log_last"] == 1
    op = ("k", ("write", "test", "key", 1000))
    assert acceptor.commit(addr("acceptor", node), op) == "ok"


class _FailingSnapshotStorage(MemoryStorage):
    """Writes part of a snapshot, then fails, like a crash or a full disk midway."""

    fail = True

    def create_snapshot(self, path: Any) -> Any:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "data"), "wb") as f:
            f.write(b"half")
        if _FailingSnapshotStorage.fail:
            return ("error", "disk_full")
        return super().create_snapshot(path)


def test_a_failed_snapshot_leaves_nothing_a_later_request_would_reuse(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1], storage_module=_FailingSnapshotStorage)
    _bootstrap_single(node)
    assert acceptor.commit(addr("acceptor", node), ("a", ("write", "t", "a", 1))) == "ok"
    part_dir = server.status(addr("server", node))["partition_path"]
    assert storage.create_snapshot(addr("storage", node)) == ("error", "disk_full")
    assert storage.list_snapshots(part_dir) == []
    assert [n for n in os.listdir(part_dir) if "snapshot" in n] == []
    _FailingSnapshotStorage.fail = False
    try:
        ok, position = storage.create_snapshot(addr("storage", node))
    finally:
        _FailingSnapshotStorage.fail = True
    assert ok == "ok"
    assert storage.list_snapshots(part_dir) == [(position, f"snapshot.{position[0]}.{position[1]}")]


def test_snapshot_retention_spares_the_snapshots_named_in_use(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1])
    _bootstrap_single(node)
    part_dir = server.status(addr("server", node))["partition_path"]
    in_use: list[str] = []
    for i in range(3):
        assert acceptor.commit(addr("acceptor", node), (i, ("write", "t", i, i))) == "ok"
        ok, position = storage.create_snapshot(addr("storage", node), keep=in_use)
        assert ok == "ok"
        in_use.append(storage.snapshot_name(position))
    assert [name for _, name in storage.list_snapshots(part_dir)] == in_use
    # Nothing in use any more: back to one older snapshot besides the new one.
    assert acceptor.commit(addr("acceptor", node), ("z", ("write", "t", "z", 0))) == "ok"
    ok, position = storage.create_snapshot(addr("storage", node))
    assert ok == "ok"
    newest = [in_use[-1], storage.snapshot_name(position)]
    assert [name for _, name in storage.list_snapshots(part_dir)] == newest


class _RaisingSnapshotStorage(MemoryStorage):
    """Writes a whole snapshot, then raises, like a damaged value met while copying."""

    def create_snapshot(self, path: Any) -> Any:
        super().create_snapshot(path)
        raise StorageCorruptionError("damaged value met while copying")


def test_a_snapshot_whose_provider_raises_leaves_no_copy_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restart that follows must not be what removes it: each catch-up that meets the
    # damage would leave a copy until the partition restarts.
    monkeypatch.setattr(storage, "remove_leftovers", lambda path: [])
    node = start_node(tmp_path, "n1", [1], storage_module=_RaisingSnapshotStorage)
    _bootstrap_single(node)
    assert acceptor.commit(addr("acceptor", node), ("a", ("write", "t", "a", 1))) == "ok"
    part_dir = server.status(addr("server", node))["partition_path"]
    with pytest.raises(otp.ExitError):
        storage.create_snapshot(addr("storage", node))
    assert [n for n in os.listdir(part_dir) if "snapshot" in n] == []


@pytest.mark.parametrize("where", ["rename", "fsync_dir"])
def test_a_disk_fault_publishing_a_snapshot_is_an_error_and_restarts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # The rename of the complete copy into place, or the partition directory's fsync after
    # it, failing (ENOSPC, EIO) crashed the storage actor: the one_for_all supervisor
    # restarted the partition, a leader lost its leadership at each catch-up retry, and a
    # failed fsync left an untracked full copy under the snapshot's name.
    node = start_node(tmp_path, "n1", [1], storage_module=SQLITE)
    _bootstrap_single(node)
    assert acceptor.commit(addr("acceptor", node), ("a", ("write", "t", "a", 1))) == "ok"
    part_dir = os.path.abspath(server.status(addr("server", node))["partition_path"])
    pids = {k: otp.whereis(addr(k, node)[0], node=node) for k in ("server", "storage")}
    faults: list[str] = []
    if where == "rename":
        real_rename = os.rename

        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if str(src).endswith(".partial") and not faults:
                faults.append(str(src))
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            real_rename(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "rename", rename)
    else:
        faults = fail_directory_fsync_once(monkeypatch, part_dir)
    answer = storage.create_snapshot(addr("storage", node))
    assert faults and answer[0] == "error", answer
    assert {k: otp.whereis(addr(k, node)[0], node=node) for k in pids} == pids
    assert [n for n in os.listdir(part_dir) if "snapshot" in n] == []
    ok, position = storage.create_snapshot(addr("storage", node))  # the retry succeeds
    assert ok == "ok"
    assert storage.list_snapshots(part_dir) == [(position, storage.snapshot_name(position))]
    assert state(node) == "leader"


def test_the_storage_removes_the_snapshot_copies_a_crash_left_when_it_opens(
    tmp_path: Path,
) -> None:
    # What a kill -9 leaves while a snapshot is written (a hidden partial copy of the data)
    # or while bootstrap's empty snapshot is opened; complete snapshots and whatever else
    # lives there stay.
    part_dir = tmp_path / "n1" / "test.1"
    left = [
        ".snapshot.7.1.partial",
        ".snapshot.7.1.witness.partial",
        "snapshot.1.1.bootstrap.k2_x9",
    ]
    kept = ["snapshot.5.1", "snapshot.6.1.witness", ".backup.partial", "transport"]
    for name in left + kept:
        (part_dir / name).mkdir(parents=True)
        (part_dir / name / "data").write_bytes(b"copy")
    node = start_node(tmp_path, "n1", [1])
    assert state(node) == "stalled"
    assert sorted(os.listdir(part_dir)) == sorted(kept)


def test_a_corrupt_log_disables_its_partition_and_spares_the_others(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1, 2], log_module=DISK, storage_module=SQLITE)
    for partition in (1, 2):
        _bootstrap_single(node, partition)
        for i in range(50):
            op = (i, ("write", "t", i, "x" * 100))
            assert acceptor.commit(addr("acceptor", node, partition), op) == "ok"
    path = server.status(addr("server", node, 1))["partition_path"]
    node_id = node.id
    node.stop()
    segments = sorted(p for p in (Path(path) / "log").iterdir() if p.suffix == ".wal")
    data = bytearray(segments[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte well before the tail
    segments[0].write_bytes(bytes(data))

    node = start_node(
        tmp_path, "n1", [1, 2], node_id=node_id, log_module=DISK, storage_module=SQLITE
    )
    wait_until(lambda: state(node, 1) == "disabled")
    reason = server.status(addr("server", node, 1))["disable_reason"]
    assert reason[0] == "log_corruption" and "corruption" in reason[1]
    assert acceptor.read(addr("acceptor", node, 1), ("read", "t", 1)) == ("error", "not_leader")
    # The healthy partition on the same node serves as before.
    wait_until(lambda: state(node, 2) == "leader")
    assert acceptor.read(addr("acceptor", node, 2), ("read", "t", 49)) == ("ok", "x" * 100)


def test_a_partition_whose_wal_was_removed_comes_up_disabled_not_empty(tmp_path: Path) -> None:
    # Deleting the node's WAL directory used to give every partition a brand-new log reset to
    # its storage's position: the entries after it (acknowledged to a leader) were gone and
    # the replica voted without them, which lost committed writes.
    node = start_node(tmp_path, "n1", [1], log_module=WAL, storage_module=SQLITE)
    _bootstrap_single(node)
    for i in range(5):
        assert acceptor.commit(addr("acceptor", node), (i, ("write", "t", i, "x"))) == "ok"
    path = Path(server.status(addr("server", node))["partition_path"])
    node_id = node.id
    node.stop()
    stop_wal_writers(tmp_path)
    shutil.rmtree(path.parent / "wal")

    node = start_node(tmp_path, "n1", [1], node_id=node_id, log_module=WAL, storage_module=SQLITE)
    wait_until(lambda: state(node, 1) == "disabled")
    reason = server.status(addr("server", node))["disable_reason"]
    assert reason[0] == "log_corruption" and "log missing" in reason[1], reason
    assert acceptor.read(addr("acceptor", node), ("read", "t", 1)) == ("error", "not_leader")


@pytest.mark.parametrize("term", [2, 1])
def test_a_partition_whose_state_file_was_deleted_comes_up_disabled(
    tmp_path: Path, term: int
) -> None:
    # Without its state file the replica came back with term 0 and no vote, free to vote
    # again in a term it had already voted in. At bootstrap's term 1 it was taken for a crash
    # during bootstrap, a new replica (simulator seed 75199); bootstrap now stores the term
    # before its data lands.
    node = start_node(tmp_path, "n1", [1], log_module=DISK, storage_module=SQLITE)
    _bootstrap_single(node)
    if term == 2:
        assert server.promote(addr("server", node), "next", True) == "ok"
    wait_until(lambda: server.status(addr("server", node))["current_term"] == term)
    assert acceptor.commit(addr("acceptor", node), (1, ("write", "t", 1, "x"))) == "ok"
    path = Path(server.status(addr("server", node))["partition_path"])
    node_id = node.id
    node.stop()
    (path / durable_state.STATE_FILE).unlink()

    node = start_node(tmp_path, "n1", [1], node_id=node_id, log_module=DISK, storage_module=SQLITE)
    wait_until(lambda: state(node, 1) == "disabled")
    status = server.status(addr("server", node))
    assert status["disable_reason"][0] == "durable_state_missing", status["disable_reason"]
    assert f"term {term}" in status["disable_reason"][1]
    assert status["voted_for"] is None


def test_a_replica_enabled_after_its_state_file_was_lost_recovers_a_term_counted_as_voted(
    tmp_path: Path,
) -> None:
    # Enabled, it came back at term 0 with no vote, and after the leader's snapshot followed
    # at the leader's term with no vote: free to vote again in a term it had voted in.
    spec = {"log_module": DISK, "storage_module": SQLITE}
    with cluster(tmp_path, **spec) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        assert acceptor.commit(addr("acceptor", leader), (1, ("write", "t", 1, "x"))) == "ok"
        follower = next(n for n in nodes if n is not leader)
        path = Path(server.status(addr("server", follower))["partition_path"])
        name = next(f"n{i + 1}" for i, n in enumerate(nodes) if n is follower)
        node_id = follower.id
        follower.stop()
        (path / durable_state.STATE_FILE).unlink()
        node = start_node(tmp_path, name, [1], node_id=node_id, **spec)
        try:
            wait_until(lambda: state(node, 1) == "disabled")
            assert server.enable(addr("server", node)) == "ok"
            wait_until(lambda: state(node, 1) == "follower")
            status = server.status(addr("server", node))
            term = server.status(addr("server", leader))["current_term"]
            assert status["current_term"] >= term
            assert status["voted_for"] == node_id  # no second vote in the term it took up
            assert acceptor.commit(addr("acceptor", leader), (2, ("write", "t", 2, "y"))) == "ok"
        finally:
            node.stop()


def test_a_membership_change_naming_no_replica_of_this_partition_is_refused(
    tmp_path: Path,
) -> None:
    # Each was answered ok and appended: a member nobody can reach, another partition's server
    # (which then took this partition's term and leader), a second spelling of a member.
    node = start_node(tmp_path, "n1", [1])
    _bootstrap_single(node)
    srv = addr("server", node)
    name = "raft_server_test_1"
    before = server.status(srv)["config"]
    refused = {
        ("add", Identity(name, "garbage")): "is not a node id",
        ("add", Identity(name, "n9 @local")): "is not a node id",
        ("add_witness", Identity("raft_server_test_2", "n9@local")): "not this partition's",
        ("add", Identity(name, f"{node.id.partition('@')[0]}@elsewhere:1")): "already takes part",
    }
    for action, why in refused.items():
        answer = server.adjust_config(srv, action)
        assert answer[0] == "error" and answer[1][0] == "invalid_peer", (action, answer)
        assert why in answer[1][1], (action, answer)
    assert server.status(srv)["config"] == before
    pid = otp.whereis(srv[0], node=node)
    assert server.adjust_config(srv, (["add"], Identity(name, "n9@local")))[0] == "error"
    assert otp.whereis(srv[0], node=node) == pid  # an unhashable verb is answered, no crash
    ok, _position = server.adjust_config(srv, ("add_participant", Identity(name, "n9@local")))
    assert ok == "ok"


def test_a_peer_whose_node_id_the_distribution_cannot_dial_is_refused(tmp_path: Path) -> None:
    # Review O, finding 1: on a node addressed as name@host:port, "n9@127.0.0.1" (no port)
    # and "n8@127.0.0.1:99999" passed the loose name@host check and were committed as members
    # nobody can reach; removing them later would lose quorum.
    node = start_node(tmp_path, "n1", [1], node_id="n1@127.0.0.1:7101")
    _bootstrap_single(node)
    srv = addr("server", node)
    name = "raft_server_test_1"
    before = server.get_current_config(srv)
    bad_nodes = {
        "n9@127.0.0.1": "not a node id",
        "n8@127.0.0.1:99999": "bad port",
        "n7@127.0.0.1:0": "port 0",
        "n6@127.0.0.1:-1": "bad port",
        "n5@bad host:7105": "host",
    }
    for bad, why in bad_nodes.items():
        for verb in ("add", "add_participant", "add_witness_participant"):
            for call in (server.adjust_config, acceptor.adjust_config):
                target = addr("acceptor" if call is acceptor.adjust_config else "server", node)
                answer = call(target, (verb, Identity(name, bad)))
                assert answer[0] == "error" and answer[1][0] == "invalid_peer", (bad, answer)
                assert why in answer[1][1], (bad, answer)
    assert server.get_current_config(srv) == before
    ok, _position = server.adjust_config(srv, ("add_participant", Identity(name, "n4@[::1]:7104")))
    assert ok == "ok"  # a well-formed address is taken


def test_a_batch_command_applies_and_reads_many_commands_as_one_entry(tmp_path: Path) -> None:
    from waraft.services import codec

    node = start_node(tmp_path, "n1", [1])
    _bootstrap_single(node)
    acc = addr("acceptor", node)
    before = server.status(addr("server", node))["log_last"]
    writes = [("write", "t", i, i) for i in range(5)] + [("delete", "t", 0)]
    assert acceptor.commit(acc, ("k", ("$batch", codec.packb(writes)))) == ["ok"] * 6
    assert server.status(addr("server", node))["log_last"] == before + 1
    reads = [("read", "t", i) for i in range(3)]
    assert acceptor.read(acc, ("$batch", reads)) == ["not_found", ("ok", 1), ("ok", 2)]
    assert acceptor.commit(acc, ("k", ("$batch", []))) == []


class _RecordingLog(MemoryLog):
    trims: ClassVar[list[int]] = []

    def trim(self, index: int) -> None:
        _RecordingLog.trims.append(index)
        super().trim(index)


def test_log_trims_never_pass_what_storage_has_applied(tmp_path: Path) -> None:
    _RecordingLog.trims = []
    node = start_node(tmp_path, "n1", [1], log_module=_RecordingLog)
    _bootstrap_single(node)
    for i in range(20):
        assert acceptor.commit(addr("acceptor", node), (i, ("write", "t", i, i))) == "ok"
    applied = storage.position(addr("storage", node))
    with node.activate():
        otp.cast("raft_log_test_1", ("trim", applied.index + 1000))  # far past storage
        otp.call("raft_log_test_1", ("status",))  # queued behind the trim
    assert _RecordingLog.trims == [applied.index]


def test_unknown_commands_get_an_error_and_never_crash_the_partition(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1], log_module=DISK, storage_module=SQLITE)
    _bootstrap_single(node)
    acc = addr("acceptor", node)
    storage_pid = node.registry.whereis("raft_storage_test_1")
    bad = acceptor.commit(acc, ("k", ("bogus", "t", "k")))
    assert bad[0] == "error" and bad[1][0] == "unknown_command"
    packed = [("write", "t", "a", 1), ("frobnicate",), ("write", "t", "b", 2)]
    results = acceptor.commit(acc, ("k2", ("$batch", packed)))
    assert results[0] == "ok" and results[1][1][0] == "unknown_command" and results[2] == "ok"
    assert acceptor.read(acc, ("read", "t", "b")) == ("ok", 2)
    assert acceptor.read(acc, ("nonsense",))[1][0] == "unknown_command"
    assert node.registry.whereis("raft_storage_test_1") is storage_pid  # never restarted
    # The rejected entries replay the same way after a restart (no crash loop).
    node_id = node.id
    node.stop()
    node = start_node(tmp_path, "n1", [1], node_id=node_id, log_module=DISK, storage_module=SQLITE)
    wait_until(lambda: state(node) == "leader")
    assert acceptor.read(addr("acceptor", node), ("read", "t", "a")) == ("ok", 1)


def _threaded(node: otp.Node, kind: str, partition: int = 1) -> bool:
    with node.activate():
        pid = otp.whereis(f"raft_{kind}_test_{partition}")
    assert pid is not None, kind
    return pid._thread is not None


def test_partitions_run_scheduled_and_blocking_providers_get_threads(tmp_path: Path) -> None:
    # Memory providers never block: the whole partition tree runs on the node's schedulers.
    memory = start_node(tmp_path, "n1", [1])
    _bootstrap_single(memory)
    kinds = ("queue", "storage", "log", "server", "acceptor", "transport_cleanup")
    assert [k for k in kinds if _threaded(memory, k)] == []
    assert otp.scheduler_stats(memory)["schedulers"] >= 1
    # The disk log and SQLite block on I/O: their owners (and the server, which appends and
    # syncs the log itself) get threads of their own; the rest stays scheduled.
    durable = start_node(tmp_path, "n2", [2], log_module=DISK, storage_module=SQLITE)
    assert [k for k in kinds if _threaded(durable, k, 2)] == ["storage", "log", "server"]


def test_memory_snapshots_write_and_read_files_off_the_schedulers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scheduled storage actor's snapshot files (bootstrap's empty snapshot written and read
    # back, a snapshot made for a follower, its directory's rename and fsync, a deletion) are
    # written on the node's I/O threads: an fsync on a scheduler stalls every partition on it.
    import shutil
    import threading

    from waraft.storage import memory as memory_module

    where: dict[str, set[str]] = {}

    def recorded(name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            where.setdefault(name, set()).add(threading.current_thread().name.split(":")[1])
            return fn(*args, **kwargs)

        return call

    for module, name in (
        (memory_module, "write_file_durably"),
        (memory_module, "_read_snapshot"),
        (storage, "fsync_directory"),
    ):
        monkeypatch.setattr(module, name, recorded(name, getattr(module, name)))
    monkeypatch.setattr(shutil, "rmtree", recorded("rmtree", shutil.rmtree))
    node = start_node(tmp_path, "n1", [1])
    _bootstrap_single(node)
    assert acceptor.commit(addr("acceptor", node), ("a", ("write", "t", "a", 1))) == "ok"
    made = storage.create_snapshot(addr("storage", node))
    assert made[0] == "ok"
    with node.activate():
        storage.delete_snapshot("raft_storage_test_1", storage.snapshot_name(made[1], False))
    snapshots = tmp_path / "n1" / "test.1"
    wait_until(lambda: not [n for n in os.listdir(snapshots) if n.startswith("snapshot.")])
    assert set(where) == {"write_file_durably", "_read_snapshot", "fsync_directory", "rmtree"}
    assert all(threads == {"io"} for threads in where.values()), where


def test_the_node_wide_lmdb_storage_runs_scheduled(tmp_path: Path) -> None:
    # Its disk work goes through otp.blocking: no thread per partition for the node's default
    # durable providers (the WAL and the node-wide LMDB environment), which are used for real.
    node = start_node(
        tmp_path,
        "n1",
        [1, 2],
        log_module="waraft.log.wal:WalLog",
        storage_module="waraft.storage.node_lmdb:NodeLmdbStorage",
    )
    kinds = ("queue", "storage", "log", "server", "acceptor", "transport_cleanup")
    for partition in (1, 2):
        _bootstrap_single(node, partition)
        assert [k for k in kinds if _threaded(node, k, partition)] == []
    acc = addr("acceptor", node, 2)
    assert acceptor.commit(acc, ("a", ("write", "t", "k", "v"))) == "ok"
    assert acceptor.read(acc, ("read", "t", "k")) == ("ok", "v")
    assert os.listdir(tmp_path / "n1" / "storage-lmdb") != []


NODE_LMDB = "waraft.storage.node_lmdb:NodeLmdbStorage"
WAL = "waraft.log.wal:WalLog"


def test_trims_wait_for_a_lazily_synced_storage_then_complete(tmp_path: Path) -> None:
    # Lazy sync with 3 s between flushes: what storage applied since its last flush is in the
    # log only, so a trim past it is held back, and retried until a flush covers it.
    _RecordingLog.trims = []
    lazy = {"raft_storage_options": {"lmdb_sync_interval_ms": 3000}}
    node = start_node(tmp_path, "n1", [1], lazy, log_module=_RecordingLog, storage_module=NODE_LMDB)
    _bootstrap_single(node)
    for i in range(20):
        assert acceptor.commit(addr("acceptor", node), (i, ("write", "t", i, i))) == "ok"
    applied = storage.position(addr("storage", node))
    durable = storage.status(addr("storage", node))["durable_position"]
    assert durable.index < applied.index  # the bootstrap snapshot's install, flushed
    with node.activate():
        otp.cast("raft_log_test_1", ("trim", applied.index))
        otp.call("raft_log_test_1", ("status",))  # queued behind the trim
    assert _RecordingLog.trims == [durable.index]
    # Held back, not dropped: done once the background flush (<= 3 s) covers it.
    wait_until(lambda: _RecordingLog.trims[-1:] == [applied.index], timeout=10.0)
    assert storage.status(addr("storage", node))["durable_position"].index >= applied.index


def test_a_restart_applies_the_log_tail_storage_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Power loss with lazy sync: storage comes back at its last flush, older than the log.
    # Emulated by putting back a copy of the node's LMDB environment taken mid-run; the
    # restarted replica must apply the log's tail again, losing nothing it had applied.
    # No write-back buffer (flush interval 0), so the copy below sits at a known position.
    lazy = {
        "raft_storage_options": {"lmdb_sync_interval_ms": 3_600_000, "lmdb_flush_interval_ms": 0}
    }
    spec = {"log_module": WAL, "storage_module": NODE_LMDB}
    node = start_node(tmp_path, "n1", [1], lazy, **spec)
    _bootstrap_single(node)
    acc = addr("acceptor", node)
    for i in range(10):
        assert acceptor.commit(acc, (i, ("write", "t", i, i))) == "ok"
    env_dir = tmp_path / "n1" / "storage-lmdb"
    early = tmp_path / "early"
    early.mkdir()
    # A lazy-sync apply returns before its group commit (a read takes its row from the
    # queued write); a barrier write queued after it commits after it, so the copy below
    # holds everything up to the position it is compared with.
    assert acceptor.read(acc, ("read", "t", 9)) == ("ok", 9)
    node_env = NodeEnv._registry[str(env_dir)]
    node_env.commit(_Write(None, 0, [], [], "test barrier"))
    node_env.env.copy(str(early))
    copied = storage.position(addr("storage", node))
    for i in range(10, 30):
        assert acceptor.commit(acc, (i, ("write", "t", i, i))) == "ok"
    applied = storage.position(addr("storage", node))
    node_id = node.id
    node.stop()
    os.replace(early / "data.mdb", env_dir / "data.mdb")

    caplog.set_level(logging.INFO, logger="waraft.storage")
    node = start_node(tmp_path, "n1", [1], lazy, node_id=node_id, **spec)
    wait_until(lambda: state(node) == "leader")
    opened = [r.getMessage() for r in caplog.records if "opened at" in r.getMessage()]
    assert opened == [f"storage raft_storage_test_1 opened at {copied}"]
    wait_until(lambda: storage.position(addr("storage", node)).index > applied.index)
    acc = addr("acceptor", node)
    assert [acceptor.read(acc, ("read", "t", i)) for i in range(30)] == [
        ("ok", i) for i in range(30)
    ]
    assert copied.index < applied.index


def test_an_idle_partitions_write_back_buffer_reaches_lmdb_and_the_log_can_trim(
    tmp_path: Path,
) -> None:
    # The storage actor arms a timer for the provider's write-back buffer: without it, rows
    # applied just before a partition goes idle stay buffered, and the durable position (the
    # log's trim bound) never reaches them.
    options = {"raft_storage_options": {"lmdb_sync_interval_ms": 50, "lmdb_flush_interval_ms": 100}}
    node = start_node(tmp_path, "n1", [1], options, log_module=WAL, storage_module=NODE_LMDB)
    _bootstrap_single(node)
    acc = addr("acceptor", node)
    for i in range(5):
        assert acceptor.commit(acc, (i, ("write", "t", i, i))) == "ok"
    target = addr("storage", node)
    applied = storage.position(target)

    def written_back() -> bool:
        found = storage.status(target)
        return found["pending_rows"] == 0 and found["durable_position"] == applied

    wait_until(written_back, timeout=10)
    assert acceptor.read(acc, ("read", "t", 4)) == ("ok", 4)


def test_a_partition_that_keeps_applying_gets_no_write_back_timer_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The idle write-back timer is pushed back by every apply: a partition that keeps applying
    # writes its buffer out from its applies, and a timer firing every IDLE_FLUSH_FACTOR
    # intervals only to be armed again cost a timer delivery and a message per partition.
    # Judged by state, not by how regularly this loop runs (a loaded machine deschedules it
    # for longer than the timer's 160 ms, and the timer then fires by rights): a firing is
    # early if the buffer it finds was not due yet, although every apply since that buffer's
    # first row was done before the timer fired (so each had pushed the timer back past it).
    applies = [0]  # applies done by the storage actor
    fired: list[int] = []  # applies done when each write-back timer fired (timer thread)
    early: list[float] = []  # how long before its due time the buffer was, per early firing
    deliver, handle_info = otp_timer._deliver, storage.StorageServer.handle_info
    handle_apply = storage.StorageServer._handle_apply

    def noting_firings(ref: otp.TimerRef) -> None:
        if ref._msg == ("write_back",):
            fired.append(applies[0])
        deliver(ref)

    def counting_applies(self: storage.StorageServer, msg: Any) -> None:
        handle_apply(self, msg)
        applies[0] += 1

    def judging(self: storage.StorageServer, msg: Any) -> None:
        if msg == ("write_back",):
            due = self.provider.write_back_due()
            # An apply handled between the firing and this delivery made the buffer (the
            # message was on its way; the actor reads the time itself): nothing to judge.
            at_fire = fired.pop(0) if fired else None
            if at_fire == applies[0] and due is not None and due > 0:
                early.append(due)
        handle_info(self, msg)

    monkeypatch.setattr(otp_timer, "_deliver", noting_firings)
    monkeypatch.setattr(storage.StorageServer, "_handle_apply", counting_applies)
    monkeypatch.setattr(storage.StorageServer, "handle_info", judging)
    options = {"raft_storage_options": {"lmdb_sync_interval_ms": 50, "lmdb_flush_interval_ms": 80}}
    node = start_node(tmp_path, "n1", [1], options, log_module=WAL, storage_module=NODE_LMDB)
    _bootstrap_single(node)
    acc = addr("acceptor", node)
    target = addr("storage", node)
    # Applies every ~10 ms for 2 s: a timer not pushed back (160 ms after a buffer's first
    # row) would have fired about twenty times, each finding a younger buffer.
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 2.0:
        assert acceptor.commit(acc, (i, ("write", "t", i, i))) == "ok"
        i += 1
        time.sleep(0.01)
    assert early == [], (early, applies[0])
    applied = storage.position(target)

    def written_back() -> bool:
        found = storage.status(target)
        return found["pending_rows"] == 0 and found["durable_position"] == applied

    # Once the applies stop, the buffer still reaches LMDB (by the postponed timer, unless
    # the last apply wrote it out).
    wait_until(written_back, timeout=10)


def test_a_witness_is_marked_incomplete_from_its_first_skipped_entry(tmp_path: Path) -> None:
    """Not only after ``raft_storage_witness_apply_interval`` (5000) skipped entries: until a
    ``noop_omitted`` is applied, a config making the witness a data member would pass its
    storage's check with the data missing."""
    nodes = [start_node(tmp_path, f"n{i}", [1]) for i in (1, 2, 3)]
    try:
        ids = [ident(n) for n in nodes]
        config = server.make_config(ids, [ids[2]])
        for n in nodes:
            assert server.bootstrap(addr("server", n), LogPos(1, 1), config) == "ok"
        assert server.trigger_election(addr("server", nodes[0])) == "ok"
        wait_until(lambda: state(nodes[0]) == "leader")
        acc = addr("acceptor", nodes[0])
        assert acceptor.commit(acc, ("a", ("write", "t", "k", 1))) == "ok"
        witness = addr("storage", nodes[2])
        wait_until(lambda: storage.status(witness)["last_applied"] >= 3)
        status = storage.status(witness)
        assert status["witness"] is True and status["incomplete"] is True
    finally:
        for n in nodes:
            n.stop()


def test_malformed_calls_are_answered_and_restart_nothing(tmp_path: Path) -> None:
    """Calls reachable from the wire with a bad shape used to raise inside the actor, and
    the partition's one_for_all supervisor restarted all six processes each time."""
    node = start_node(tmp_path, "n1", [1])
    try:
        _bootstrap_single(node)
        pids = {k: otp.whereis(addr(k, node)[0], node=node) for k in ("server", "acceptor")}
        bad = [
            (addr("server", node), ("is_peer_ready",)),
            (addr("server", node), ("is_peer_ready", 7)),
            (addr("server", node), ("snapshot_available", "x")),
            (addr("acceptor", node), ("commit",)),
            (addr("acceptor", node), ("read", 1)),
            (addr("acceptor", node), ("commit", ("k",), "high")),
            (addr("storage", node), ("read",)),
        ]
        for target, request in bad:
            answer = otp.call(target, request, 5)
            assert answer[0] == "error" and "badarg" in str(answer), (request, answer)
        assert {k: otp.whereis(addr(k, node)[0], node=node) for k in pids} == pids
        assert acceptor.commit(addr("acceptor", node), ("k", ("write", "t", "k", 1))) == "ok"
    finally:
        node.stop()
