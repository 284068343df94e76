"""The simulated storage: apply order, Raft commands, reads, witnesses, snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from waraft.core.effects import ApplyItem
from waraft.core.types import NOOP, NOOP_OMITTED, Config, Entry, Identity, LogPos, Priority
from waraft.sim.machine import KVStateMachine, UnknownCommand
from waraft.sim.storage import SimStorage, StorageError

ME = Identity("s", "a")
CONFIG = Config(membership=(ME,), participants=(ME,))
WITNESS_CONFIG = Config(membership=(ME,), participants=(ME,), witness=(ME,))


class Host:
    def __init__(self) -> None:
        self.replies: list[tuple[Any, Any, Any, bool]] = []
        self.applied: list[int] = []
        self.incomplete: list[str] = []

    def storage_reply(self, to: Any, value: Any, *, commit: Priority | None, read: bool) -> None:
        self.replies.append((to, value, commit, read))

    def storage_applied(self, index: int, entry: Entry, witness: bool) -> None:
        self.applied.append(index)

    def storage_incomplete(self, reason: str) -> None:
        self.incomplete.append(reason)


def _storage() -> tuple[SimStorage, Host]:
    host = Host()
    return SimStorage(ME, KVStateMachine, host, lambda: 3, lambda: 10**9), host


def _item(index: int, term: int, command: Any, reply_to: Any = None) -> ApplyItem:
    return ApplyItem(index, Entry(term, ("k", index), command), reply_to, Priority.HIGH)


def _drain(storage: SimStorage) -> None:
    while storage.tasks:
        task = storage.tasks.popleft()
        if task[0] == "apply":
            storage.apply_item(task[1], task[2])
        elif task[0] == "read_now":
            storage.read_now(task[1], task[2])


def test_applies_in_order_and_answers_callers() -> None:
    storage, host = _storage()
    storage.enqueue_apply(
        [
            _item(1, 1, ("config", CONFIG)),
            _item(2, 1, NOOP),
            _item(3, 1, ("write", "t", "x", 1), reply_to="c1"),
        ]
    )
    assert storage.apply_queue_size() == 3 and storage.apply_queue_full()
    storage.submit_read(3, "r1", ("read", "t", "x"))
    storage.submit_read(9, "r2", ("read", "t", "x"))
    _drain(storage)
    assert storage.apply_queue_size() == 0 and not storage.apply_queue_full()
    assert storage.position == LogPos(3, 1) and storage.config == (1, CONFIG)
    assert ("c1", "ok", Priority.HIGH, False) in host.replies
    assert ("r1", ("ok", 1), None, True) in host.replies
    assert storage.read_queue_size() == 1
    storage.cancel_reads("not_leader")
    assert ("r2", ("error", "not_leader"), None, True) in host.replies
    assert host.applied == [1, 2, 3]


def test_out_of_order_apply_is_an_error_and_reapply_is_not() -> None:
    storage, _ = _storage()
    storage.enqueue_apply([_item(1, 1, NOOP), _item(1, 1, NOOP)])
    _drain(storage)
    storage.enqueue_apply([_item(3, 1, NOOP)])
    with pytest.raises(StorageError):
        _drain(storage)


def test_witness_skips_users_commands() -> None:
    storage, _ = _storage()
    storage.enqueue_apply(
        [_item(1, 1, ("config", WITNESS_CONFIG)), _item(2, 1, ("write", "t", "x", 1))]
    )
    _drain(storage)
    assert storage.witness and not storage.is_data_replica()
    assert storage.machine.read(("read", "t", "x")) == "not_found"
    storage2, _ = _storage()
    storage2.enqueue_apply([_item(1, 1, NOOP_OMITTED)])
    _drain(storage2)
    assert storage2.incomplete


def test_an_incomplete_replica_made_a_data_replica_waits_for_a_snapshot() -> None:
    """The real storage's check_config: a witness's storage (incomplete) refuses the config
    that makes it a data replica, applies nothing more and says so; the simulated one went
    on applying with the data missing, so the replica could lead and read not_found."""
    storage, host = _storage()
    storage.enqueue_apply(
        [_item(1, 1, ("config", WITNESS_CONFIG)), _item(2, 1, ("write", "t", "x", 1))]
    )
    storage.enqueue_apply([_item(3, 1, ("config", CONFIG)), _item(4, 1, ("write", "t", "y", 2))])
    _drain(storage)
    assert storage.incomplete and storage.position == LogPos(2, 1)
    assert storage.config == (1, WITNESS_CONFIG) and host.applied == [1, 2]
    assert len(host.incomplete) == 1 and storage.apply_queue_size() == 0
    # A witness snapshot does not bring the data; a full one does.
    source, _ = _storage()
    source.enqueue_apply([_item(1, 1, ("config", CONFIG)), _item(2, 1, ("write", "t", "x", 1))])
    source.enqueue_apply([_item(3, 1, ("write", "t", "y", 2))])
    _drain(source)
    witness_snap = source.create_snapshot(witness=True)
    assert storage.open_snapshot(witness_snap, LogPos(3, 1)) == "invalid_incomplete_replica"
    assert storage.position == LogPos(2, 1) and storage.awaiting_data is not None
    assert storage.open_snapshot(source.create_snapshot(), LogPos(3, 1)) is None
    assert storage.awaiting_data is None and storage.is_data_replica()
    storage.enqueue_apply([_item(4, 1, ("write", "t", "z", 3))])
    _drain(storage)
    assert storage.position == LogPos(4, 1) and storage.machine.read(("read", "t", "y")) == (
        "ok",
        2,
    )


def test_a_data_replica_refuses_a_witness_stub() -> None:
    storage, host = _storage()
    storage.enqueue_apply([_item(1, 1, ("config", CONFIG)), _item(2, 1, NOOP_OMITTED)])
    _drain(storage)
    assert storage.position == LogPos(1, 1) and not storage.incomplete
    assert host.incomplete and "stub of committed entry 2" in host.incomplete[0]


def test_snapshots_round_trip_and_check_the_position() -> None:
    storage, _ = _storage()
    storage.enqueue_apply([_item(1, 1, ("config", CONFIG)), _item(2, 1, ("write", "t", "x", 7))])
    _drain(storage)
    snap = storage.create_snapshot()
    storage.enqueue_apply([_item(3, 1, ("write", "t", "x", 8))])
    _drain(storage)
    assert snap.data == {"x": 7}  # independent of later applies
    other, _ = _storage()
    assert other.open_snapshot(snap, LogPos(2, 2)) == "bad_position"
    assert other.position == LogPos(0, 0)
    assert other.open_snapshot(snap, LogPos(2, 1)) is None
    assert other.position == LogPos(2, 1) and other.config == (1, CONFIG)
    assert other.state_digest() == snap.digest != storage.state_digest()  # x=7 vs x=8
    storage.enqueue_apply([_item(4, 1, ("write", "t", "x", 7))])  # back to x=7, one index on
    _drain(storage)
    assert storage.state_digest() == snap.digest  # the state, not the commands that made it
    assert other.machine.read(("read", "t", "x")) == ("ok", 7)
    witness_snap = storage.create_snapshot(witness=True)
    # Not for a replica the snapshot's config makes a data replica (see below).
    assert other.open_snapshot(witness_snap, witness_snap.position) == "invalid_incomplete_replica"
    third = SimStorage(Identity("s", "b"), KVStateMachine, Host(), lambda: 3, lambda: 10**9)
    assert third.open_snapshot(witness_snap, witness_snap.position) is None
    assert third.incomplete and third.machine.read(("read", "t", "x")) == "not_found"


def test_empty_snapshot_for_bootstrap() -> None:
    storage, _ = _storage()
    snap = storage.make_empty_snapshot(LogPos(1, 1), CONFIG, {"x": 1})
    assert storage.open_snapshot(snap, LogPos(1, 1)) is None
    assert storage.config == (1, CONFIG)
    assert storage.machine.read(("read", "t", "x")) == ("ok", 1)


def test_kv_machine_rejects_unknown_commands() -> None:
    machine = KVStateMachine()
    with pytest.raises(UnknownCommand):
        machine.apply(("frobnicate",), 1, 1)
    assert machine.read(NOOP) == "ok"
