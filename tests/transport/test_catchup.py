"""Snapshot catch-up end to end: the leader's RequestSnapshot -> catch-up coordinator ->
storage snapshot -> file transport -> receiving manager -> snapshot_available -> the receiver
turns follower and replication continues."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import (
    APP,
    addr,
    fail_directory_fsync_once,
    ident,
    leader_of,
    state,
    wait_until,
)
from tests.transport.helpers import (
    ChunkCutter,
    ChunkLog,
    follow,
    on,
    receiver_ids,
    replace_receiver,
    sender_ids,
    set_raft,
    start,
    wait_status,
)
from waraft import otp, storage, transport
from waraft.core.types import Identity, LogPos
from waraft.partition import acceptor, part_sup, server, sup
from waraft.services import metrics
from waraft.transport import snapshot_catchup

DISK = "waraft.log.disk:DiskLog"
SQLITE = "waraft.storage.sqlite:SqliteStorage"


@contextmanager
def cluster(root: Path, size: int = 3, **kw: Any) -> Iterator[list[otp.Node]]:
    nodes = [start(root, f"n{i + 1}", **kw) for i in range(size)]
    try:
        config = server.make_config([ident(n) for n in nodes])
        for n in nodes:
            assert server.bootstrap(addr("server", n), LogPos(1, 1), config) == "ok"
        assert server.trigger_election(addr("server", nodes[0])) == "ok"
        wait_until(lambda: leader_of(nodes))
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _write(leader: otp.Node, count: int, prefix: str = "k") -> None:
    for i in range(count):
        op = (f"{prefix}{i}", ("write", "test", f"{prefix}{i}", i))
        assert acceptor.commit(addr("acceptor", leader), op) == "ok"


def _read(node: otp.Node, key: str) -> Any:
    return storage.read(addr("storage", node), ("read", "test", key))


def _snapshots(node: otp.Node) -> list[str]:
    path = Path(server.status(addr("server", node))["partition_path"])
    return sorted(p.name for p in path.iterdir() if p.name.startswith("snapshot."))


def test_a_new_empty_member_is_caught_up_by_a_snapshot(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        _write(leader, 40)
        newcomer = start(tmp_path, "n4")
        assert state(newcomer) == "stalled"
        result = server.adjust_config(addr("server", leader), ("add", ident(newcomer)))
        assert result[0] == "ok"
        wait_until(lambda: state(newcomer) == "follower")
        # Storage holds the data it was sent, and replication carries on from there.
        assert _read(newcomer, "k39") == ("ok", 39)
        _write(leader, 5, prefix="after")
        wait_until(lambda: _read(newcomer, "after4") == ("ok", 4))
        (received,) = receiver_ids(newcomer)
        info = on(newcomer, transport.transport_info, received)
        assert info["meta"]["type"] == "snapshot" and info["meta"]["witness"] is False
        assert info["status"] == "completed"
        status = server.status(addr("server", newcomer))
        assert status["log_first"] == info["meta"]["position"].index
        # The leader's snapshot is deleted once no transport uses it.
        wait_until(lambda: _snapshots(leader) == [])
        assert on(leader, snapshot_catchup.which_transports) == []
        assert on(leader, transport.transport_info, received, "status") == "completed"
        # Counted per partition for the metrics endpoint: sent (and finished) by the leader's
        # node, taken in by the newcomer's (node ids recur between tests: at least once).
        partition = status["partition"]
        sent = metrics.partition_events(node=leader.id)
        assert sent[("test", partition, "snapshot_catchup.start")] >= 1
        assert sent[("test", partition, "snapshot_catchup.completed")] >= 1
        taken = metrics.partition_events(node=newcomer.id)
        assert taken[("test", partition, "snapshot_catchup.receive")] >= 1
        newcomer.stop()


def test_a_far_behind_follower_is_caught_up_after_the_leader_trimmed(tmp_path: Path) -> None:
    settings = {
        "raft_max_log_records_per_file": 10,
        "raft_max_log_records": 20,
        "raft_max_retained_entries": 30,
    }
    with cluster(tmp_path, settings=settings, log_module=DISK, storage_module=SQLITE) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        follower = next(n for n in nodes if n is not leader)
        _write(leader, 5, prefix="early")
        wait_until(lambda: _read(follower, "early4") == ("ok", 4))
        behind = server.status(addr("server", follower))["log_last"]
        spec = {"table": "test", "partition": 1, "log_module": DISK, "storage_module": SQLITE}
        with follower.activate():
            assert sup.stop_partition_under_application(APP, "test", 1) == "ok"
        _write(leader, 150)
        assert server.status(addr("server", leader))["log_first"] > behind
        with follower.activate():
            assert sup.start_partition_under_application(APP, spec)[0] == "ok"
        # It comes back with its own (durable) log, too short for the leader to continue.
        wait_until(lambda: _read(follower, "k149") == ("ok", 149))
        assert state(follower) == "follower"
        assert _read(follower, "early0") == ("ok", 0)
        assert server.status(addr("server", follower))["log_first"] > behind
        (received,) = receiver_ids(follower)
        # The transport is marked completed once the server's install call has returned
        # (``TransportManager._received``): the follower may serve the snapshot's data a
        # moment before that (seen in CI).
        wait_until(
            lambda: on(follower, transport.transport_info, received, "status") == "completed"
        )
        _write(leader, 3, prefix="later")
        wait_until(lambda: _read(follower, "later2") == ("ok", 2))
        wait_until(lambda: _snapshots(leader) == [])


def test_a_disk_fault_publishing_the_snapshot_is_retried_without_restarting_the_leader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The partition directory's fsync after the snapshot's rename into place failing (EIO)
    # crashed the leader's storage actor: its partition restarted and lost the leadership,
    # and the complete copy was left behind untracked. Now the coordinator backs off and
    # retries, as after a provider's own snapshot I/O error.
    with cluster(tmp_path, storage_module=SQLITE) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        _write(leader, 30)
        pid = otp.whereis(addr("server", leader)[0], node=leader)
        part_dir = os.path.abspath(server.status(addr("server", leader))["partition_path"])
        faults = fail_directory_fsync_once(monkeypatch, part_dir)
        newcomer = start(tmp_path, "n4", storage_module=SQLITE)
        try:
            result = server.adjust_config(addr("server", leader), ("add", ident(newcomer)))
            assert result[0] == "ok"
            wait_until(lambda: state(newcomer) == "follower", timeout=30)
            assert faults
            assert _read(newcomer, "k29") == ("ok", 29)
            assert otp.whereis(addr("server", leader)[0], node=leader) is pid
            assert state(leader) == "leader"
            wait_until(lambda: _snapshots(leader) == [])  # nothing left untracked
        finally:
            newcomer.stop()


def test_a_witness_is_sent_a_witness_snapshot(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        _write(leader, 20)
        witness = start(tmp_path, "w")
        result = server.adjust_config(addr("server", leader), ("add_witness", ident(witness)))
        assert result[0] == "ok"
        wait_until(lambda: state(witness) == "witness")
        (received,) = receiver_ids(witness)
        info = on(witness, transport.transport_info, received)
        assert info["meta"]["witness"] is True
        sent_root = on(leader, transport.transport_info, received, "root")
        assert os.path.basename(sent_root).endswith(".witness")
        # Metadata only: the witness knows the position, not the data.
        assert _read(witness, "k19") == "not_found"
        assert storage.position(addr("storage", witness)).index >= info["meta"]["position"].index
        wait_until(lambda: _snapshots(leader) == [])
        witness.stop()


def test_a_catchup_cut_off_midway_is_retried_until_it_completes(tmp_path: Path) -> None:
    raft = {"dist_transport_chunk_size": 64, "transport_idle_timeout_secs": 0.3}
    with cluster(tmp_path, raft=raft) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        _write(leader, 60)
        newcomer = start(tmp_path, "n4", raft=raft)
        cutter = ChunkCutter(newcomer.id, allow=4)
        cutter.install()
        assert server.adjust_config(addr("server", leader), ("add", ident(newcomer)))[0] == "ok"
        wait_until(lambda: cutter.dropped > 0)
        (first,) = wait_until(lambda: sender_ids(leader))
        wait_status(leader, first, "failed")
        wait_status(newcomer, first, "timed_out")
        assert state(newcomer) == "stalled"
        cutter.heal()
        wait_until(lambda: state(newcomer) == "follower")
        assert _read(newcomer, "k59") == ("ok", 59)
        assert len(sender_ids(leader)) >= 2
        assert on(leader, transport.transport_info, sender_ids(leader)[-1], "status") == (
            "completed"
        )
        newcomer.stop()


# -- the coordinator on its own ----------------------------------------------------------------


def _single(tmp_path: Path, **kw: Any) -> otp.Node:
    node = start(tmp_path, "leader", **kw)
    config = server.make_config([ident(node)])
    assert server.bootstrap(addr("server", node), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node) == "leader")
    _write(node, 10)
    return node


def _ask(leader: otp.Node, target: otp.Node, witness: bool = False) -> None:
    """The leader's RequestSnapshot for ``target``, which these tests keep outside the leader's
    config: the target is told who leads (as a heartbeat would), or it refuses the offer."""
    follow(target, leader)
    with leader.activate():
        options = part_sup.options("test", 1)
        snapshot_catchup.catchup(options, Identity("raft_server_test_1", target.id), witness)


def _storage_status(node: otp.Node) -> dict[str, Any]:
    return storage.status(addr("storage", node))


def _coordinator(node: otp.Node) -> dict[str, Any]:
    return on(node, snapshot_catchup.state)


def test_a_snapshot_a_request_under_way_may_reuse_is_not_deleted_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport of the partition's only snapshot ended while another target's snapshot was
    being made at the same position: the coordinator deleted the snapshot (no user left), the
    storage answered the request with that very directory, and the delete, queued behind it,
    removed it under the new transport (failed_to_open_file, and a failed backoff). The slow
    create stands for a storage busy with other work."""
    leader = _single(tmp_path)
    t0, t1 = start(tmp_path, "t0"), start(tmp_path, "t1")
    log0, log1 = ChunkLog(hold=True), ChunkLog(hold=True)
    replace_receiver(t0, log0)
    replace_receiver(t1, log1)
    _ask(leader, t0)
    wait_until(lambda: log0.wait_chunks(1, timeout=0))
    (t0_id,) = _coordinator(leader)["transports"].values()
    made = storage.StorageServer._create_snapshot

    def busy(self: storage.StorageServer, *args: Any) -> Any:
        otp.blocking(time.sleep, 1.5)
        return made(self, *args)

    monkeypatch.setattr(storage.StorageServer, "_create_snapshot", busy)
    _ask(leader, t1)
    wait_until(lambda: _coordinator(leader)["creating"])
    on(leader, transport.cancel, t0_id, "test")
    key1 = ("raft_server_test_1", t1.id)
    wait_until(lambda: key1 in _coordinator(leader)["transports"], timeout=10)
    t1_id = _coordinator(leader)["transports"][key1]
    assert log1.wait_chunks(1)  # its snapshot's files are there to be read and sent
    assert on(leader, transport.transport_info, t1_id, "status") == transport.RUNNING
    assert key1 not in _coordinator(leader)["retry_backoffs"]
    log0.release_all()
    log1.release_all()


def test_concurrent_catchups_are_limited_and_finished_ones_back_off(tmp_path: Path) -> None:
    leader = _single(tmp_path, raft={"raft_max_snapshot_catchup": 1})
    targets = [start(tmp_path, f"t{i}") for i in range(2)]
    logs = [ChunkLog(hold=True) for _ in targets]
    for target, log in zip(targets, logs, strict=True):
        replace_receiver(target, log)
    _ask(leader, targets[0])
    wait_until(lambda: logs[0].wait_chunks(1, timeout=0))
    _ask(leader, targets[1])
    _ask(leader, targets[0])  # a target that already has a transport gets no second one
    key0 = ("raft_server_test_1", targets[0].id)
    state_now = _coordinator(leader)  # a call: the casts before it have been handled
    assert list(state_now["transports"]) == [key0]
    assert sender_ids(leader) == [state_now["transports"][key0]]
    assert len(state_now["snapshots"]) == 1 and list(state_now["snapshots"].values()) == [1]
    assert len(_snapshots(leader)) == 1
    # The transport ends (cancelled here): the snapshot goes, the target backs off.
    on(leader, transport.cancel, state_now["transports"][key0], "test")
    wait_until(lambda: key0 in _coordinator(leader)["retry_backoffs"])
    assert _coordinator(leader)["transports"] == {}
    wait_until(lambda: _snapshots(leader) == [])
    # Now the other target can be served.
    set_raft(leader, raft_max_snapshot_catchup=5)
    _ask(leader, targets[1])
    wait_until(lambda: logs[1].wait_chunks(1, timeout=0))
    for log in logs:
        log.release_all()


def test_a_snapshot_still_being_sent_survives_newer_catchups(tmp_path: Path) -> None:
    # Three lagging targets, each sent a snapshot at a newer position: the storage keeps one
    # older snapshot, but must not delete one a transport is still sending (that transfer
    # would fail, and three catch-ups could keep failing each other).
    leader = _single(tmp_path)
    set_raft(leader, dist_transport_chunk_size=64)  # many chunks: every transfer is held
    targets = [start(tmp_path, f"t{i}") for i in range(3)]
    logs = [ChunkLog(hold=True) for _ in targets]
    for i, (target, log) in enumerate(zip(targets, logs, strict=True)):
        replace_receiver(target, log)
        _write(leader, 3, prefix=f"w{i}")
        _ask(leader, target)
        wait_until(lambda log=log: log.wait_chunks(1, timeout=0))
    state_now = _coordinator(leader)
    in_use = sorted(
        storage.snapshot_name(position, witness)
        for (_, _, position, witness) in state_now["snapshots"]
    )
    assert len(in_use) == 3
    assert _snapshots(leader) == in_use
    for log in logs:
        log.release_all()
    for transport_id in state_now["transports"].values():
        assert wait_status(leader, transport_id, "completed", "failed") == "completed"
    wait_until(lambda: _snapshots(leader) == [])  # released by the coordinator once sent


def _held_catchup(tmp_path: Path, leader: otp.Node) -> tuple[otp.Node, ChunkLog]:
    """A new node ``t`` and a catch-up of it from ``leader`` held after its first chunk."""
    set_raft(leader, dist_transport_chunk_size=64)  # many chunks: the transfer is held
    target = start(tmp_path, "t")
    log = ChunkLog(hold=True)
    replace_receiver(target, log)
    _ask(leader, target)
    wait_until(lambda: log.wait_chunks(1, timeout=0))
    return target, log


def test_a_snapshot_being_sent_survives_an_operators_snapshots(tmp_path: Path) -> None:
    # An operator (the shell, an admin command, an embedding application) knows nothing of the
    # catch-ups: its create_snapshot, with or without keep, must not delete the snapshot a
    # transport still sends (the sender opens each file only when it sends it).
    leader = _single(tmp_path)
    target, log = _held_catchup(tmp_path, leader)
    ((sent, transport_id),) = _coordinator(leader)["transports"].items()
    (sending,) = _snapshots(leader)
    made = []
    for i, keep in enumerate([None, None, (), ()]):
        _write(leader, 1, prefix=f"op{i}")
        args = {} if keep is None else {"keep": keep}
        ok, position = storage.create_snapshot(addr("storage", leader), **args)
        assert ok == "ok"
        made.append(storage.snapshot_name(position))
        # Retention still applies to the operator's own: the newest older one is kept.
        assert set(_snapshots(leader)) == {sending, *made[-2:]}
    log.release_all()
    assert wait_status(leader, transport_id, "completed", "failed") == "completed"
    assert sent == ("raft_server_test_1", target.id)
    # Once sent, the coordinator deletes it and the storage no longer spares it.
    wait_until(lambda: sending not in _snapshots(leader))
    assert _storage_status(leader)["snapshots_in_use"] == []


def test_a_restarted_storage_is_told_again_which_snapshots_are_being_sent(
    tmp_path: Path,
) -> None:
    # The partition (its storage with it) restarts while the node-wide transport keeps
    # sending: the coordinator's next scan tells the new storage what it must spare.
    leader = _single(tmp_path, log_module=DISK, storage_module=SQLITE)
    _, log = _held_catchup(tmp_path, leader)
    (transport_id,) = _coordinator(leader)["transports"].values()
    (sending,) = _snapshots(leader)
    with leader.activate():
        old = otp.whereis("raft_storage_test_1")
        otp.kill("raft_storage_test_1")
        wait_until(lambda: (p := otp.whereis("raft_storage_test_1")) and p is not old)
    wait_until(lambda: _storage_status(leader)["snapshots_in_use"] == [sending])
    wait_until(lambda: state(leader) == "leader")
    for i in range(2):
        _write(leader, 1, prefix=f"r{i}")
        assert storage.create_snapshot(addr("storage", leader))[0] == "ok"
    assert sending in _snapshots(leader)
    log.release_all()
    assert wait_status(leader, transport_id, "completed", "failed") == "completed"


def test_an_overloaded_target_is_backed_off_and_its_snapshot_removed(tmp_path: Path) -> None:
    leader = _single(tmp_path, settings={"raft_snapshot_catchup_overloaded_backoff_ms": 60_000})
    busy = start(tmp_path, "busy", raft={"raft_max_incoming_snapshot_transfers": 0})
    _ask(leader, busy)
    wait_until(lambda: busy.id in _coordinator(leader)["overload_backoffs"])
    (rejected,) = sender_ids(leader)
    assert on(leader, transport.transport_info, rejected, "error") == (
        "rejected",
        "receiver_overloaded",
    )
    wait_until(lambda: _snapshots(leader) == [])
    # While backing off, new requests for that node are dropped before any snapshot is made.
    set_raft(busy, raft_max_incoming_snapshot_transfers=5)
    _ask(leader, busy)
    on(leader, snapshot_catchup.which_transports)  # the request has been handled by now
    assert sender_ids(leader) == [rejected]


def test_the_precheck_asks_the_target_before_making_a_snapshot(tmp_path: Path) -> None:
    leader = _single(
        tmp_path,
        settings={
            "raft_snapshot_catchup_precheck": True,
            "raft_snapshot_catchup_overloaded_backoff_ms": 60_000,
        },
    )
    busy = start(tmp_path, "busy", raft={"raft_max_incoming_witness_snapshot_transfers": 0})
    _ask(leader, busy, witness=True)
    wait_until(lambda: busy.id in _coordinator(leader)["overload_backoffs"])
    assert sender_ids(leader) == []  # no transport was even offered
    assert _snapshots(leader) == []


def test_stopping_the_coordinator_cancels_its_transports_and_deletes_snapshots(
    tmp_path: Path,
) -> None:
    leader = _single(tmp_path)
    target = start(tmp_path, "t")
    log = ChunkLog(hold=True)
    replace_receiver(target, log)
    _ask(leader, target)
    (transport_id,) = wait_until(lambda: sender_ids(leader))
    wait_until(lambda: len(_snapshots(leader)) == 1)
    sup_name = ("wa_raft_app_sup", leader.id)
    assert otp.supervisor.terminate_child(sup_name, "wa_raft_snapshot_catchup") == "ok"
    assert on(leader, transport.transport_info, transport_id, "status") == "cancelled"
    wait_until(lambda: _snapshots(leader) == [])
    # Requests made while it is down are dropped, not remembered.
    _ask(leader, target)
    assert otp.supervisor.restart_child(sup_name, "wa_raft_snapshot_catchup")[0] == "ok"
    assert on(leader, snapshot_catchup.which_transports) == []
    log.release_all()


def test_a_witness_made_a_full_member_again_is_sent_the_data_instead_of_crashing(
    tmp_path: Path,
) -> None:
    """remove_witness then add: the replica's storage holds a witness's incomplete data and
    refused the config that makes it a data replica. It raised, the partition restarted and
    applied the same entry again (a review counted ~1,500 restarts in two minutes, the
    replica winning elections in between). It goes stalled instead, and the leader's
    snapshot brings the data."""
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        _write(leader, 20)
        witness = start(tmp_path, "w")
        srv = addr("server", leader)
        assert server.adjust_config(srv, ("add_witness", ident(witness)))[0] == "ok"
        wait_until(lambda: state(witness) == "witness")
        _write(leader, 5, prefix="seen")  # applied as a witness: incomplete from here on
        wait_until(lambda: storage.status(addr("storage", witness))["incomplete"] is True)
        assert server.adjust_config(srv, ("remove_witness", ident(witness)))[0] == "ok"
        wait_until(lambda: witness.id not in str(server.status(srv)["config"]))
        pid = otp.whereis("raft_server_test_1", node=witness)
        # The status shows the removal once appended; a next change waits for it to be
        # applied ("not_ready" until then: a CI run on a loaded machine got there first).
        answers: list[Any] = []

        def add() -> bool:
            answers.append(server.adjust_config(srv, ("add", ident(witness))))
            return answers[-1] != ("error", "not_ready")

        wait_until(add)
        assert answers[-1][0] == "ok", answers[-1]
        _write(leader, 5, prefix="after")
        wait_until(lambda: state(witness) == "follower", timeout=30)
        assert _read(witness, "k19") == ("ok", 19)
        wait_until(lambda: _read(witness, "after4") == ("ok", 4))
        assert otp.whereis("raft_server_test_1", node=witness) == pid  # never restarted
        witness.stop()
