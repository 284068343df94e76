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

    def storage_reply(self, to: Any, value: Any, *, commit: Priority | None, read: bool) -> None:
        self.replies.append((to, value, commit, read))

    def storage_applied(self, index: int, entry: Entry, witness: bool) -> None:
        self.applied.append(index)


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
    third, _ = _storage()
    third.open_snapshot(witness_snap, witness_snap.position)
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
