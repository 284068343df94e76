"""A data replica never applies a witness's stub (``noop_omitted``) of a committed entry.

A leader stubbed entries by the newest config, uncommitted or not, and entries at or below
the config that made the peer a witness: when that config was never committed, the peer, a
data member again, applied the stubs as the committed writes and lost them silently. The
leader no longer sends such stubs (``replication._for_witness``); the storage actor refuses
one anyway and waits for a snapshot, as for a config making an incomplete replica a data one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from waraft import storage
from waraft.core.effects import ApplyItem
from waraft.core.sessions import SessionTable
from waraft.core.types import CONFIG, NOOP_OMITTED, Entry, LogPos, Priority
from waraft.storage.memory import MemoryStorage
from waraft.storage.provider import InvalidIncompleteReplica, StorageOptions

from .helpers import A, ApplyQueues, B, C, make_config


def _actor(tmp_path: Path, config: Any) -> storage.StorageServer:
    """A storage actor's apply state over a memory provider whose applied config is
    ``config`` (at index 1)."""
    provider = MemoryStorage.open(StorageOptions("t", 1, A, "raft_storage_t_1"), tmp_path)
    provider.apply_config(config, LogPos(1, 1))
    actor = object.__new__(storage.StorageServer)
    actor.provider = provider
    actor.position = provider.position()
    actor.name = "raft_storage_t_1"
    actor.self_id = A
    actor.queues = ApplyQueues()
    actor._merge_batches = False
    actor._check_results = False
    actor._notify_complete = False
    actor.sessions = SessionTable()
    actor._serve_reads = lambda: None  # type: ignore[method-assign]
    actor._refresh_config()
    return actor


def _items(*commands: Any) -> list[ApplyItem]:
    return [ApplyItem(i, Entry(1, None, c), None, Priority.HIGH) for i, c in enumerate(commands, 2)]


def test_a_data_replica_refuses_a_stub_and_keeps_what_came_before(tmp_path: Path) -> None:
    actor = _actor(tmp_path, make_config(A, B, C))
    with pytest.raises(InvalidIncompleteReplica, match="stub of committed entry 3"):
        actor._apply(_items(("write", "t", "k", 1), NOOP_OMITTED, ("write", "t", "j", 2)), 0)
    provider = actor.provider
    assert actor.position == LogPos(2, 1) and provider.position() == LogPos(2, 1)
    assert provider.read(("read", "t", "k"), actor.position) == ("ok", 1)
    assert not provider.incomplete()


def test_a_witness_applies_stubs(tmp_path: Path) -> None:
    actor = _actor(tmp_path, make_config(B, C, witness=(A,)))
    actor.skipped = 0
    actor._witness_interval = 10
    actor._apply(_items(NOOP_OMITTED, ("write", "t", "k", 1)), 0)
    assert actor.position == LogPos(3, 1) and actor.provider.incomplete()


def test_writes_after_a_demotion_in_the_same_message_are_skipped_as_a_witness(
    tmp_path: Path,
) -> None:
    """A config demoting this replica, then client writes, in one apply message: the plain
    write's fast path read whether the replica is a witness once per message, so it applied
    them as data (a review); applied in two messages they were skipped. A leader does send a
    demoted member such writes whole (``replication._for_witness``)."""
    actor = _actor(tmp_path, make_config(A, B, C))
    actor.skipped = 0
    actor._witness_interval = 10
    demote = (CONFIG, make_config(A, B, C, witness=(A,)))
    actor._apply(_items(demote, ("write", "t", "k", 1), ("write", "t", "j", 2)), 0)
    assert actor.witness and actor.position == LogPos(4, 1)
    assert actor.provider.read(("read", "t", "k"), actor.position) == "not_found"
    assert actor.provider.incomplete()
