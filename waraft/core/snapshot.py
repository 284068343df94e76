"""Snapshot and log-rotation decisions (digest §2.16, §4.4). Transfers happen elsewhere.

* ``should_send_snapshot``: WARaft's three rules for a follower that failed an append.
* ``adopt_snapshot``: after storage opened a transferred snapshot, keep the log past its
  position when the log holds that position (Raft §7), else restart the log there;
  ``reset_log`` restarts it unconditionally (bootstrap).
* ``rotate``: batched trimming — trim to ``index - keep`` only once at least ``interval``
  entries have piled up below that point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import commit
from waraft.core.effects import RequestSnapshot, ResetLog, TrimLog
from waraft.core.types import Config, Identity, LogPos

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def should_send_snapshot(
    first_index: int,
    follower_last_index: int,
    follower_last_applied: int | None,
    catchup_threshold: int,
) -> bool:
    """A follower needs a snapshot when it is empty (stalled), when the entries it needs are
    trimmed away, or when it lags too far behind in applying."""
    if follower_last_index == 0:
        return True
    if first_index > follower_last_index:
        return True
    if follower_last_applied is None:
        return False
    return follower_last_index - follower_last_applied > catchup_threshold


def maybe_request_snapshot(
    core: Replica, peer: Identity, follower_last_index: int, follower_last_applied: int | None
) -> None:
    """On a failed append: ask the catch-up coordinator for a snapshot if the rules say so."""
    if should_send_snapshot(
        core.log.first_index(),
        follower_last_index,
        follower_last_applied,
        core.settings.raft_snapshot_catchup_threshold,
    ):
        core.count("leader.snapshot.request")
        core.emit(RequestSnapshot(peer, peer in core.current_config().witness))


def reset_log(core: Replica, position: LogPos, storage_config: tuple[int, Config] | None) -> None:
    """Restart the log at ``position`` after storage loaded a snapshot there.

    Commits waiting for entries that will never be applied here are cancelled.
    """
    core.emit(ResetLog(position))
    commit.cancel_queued(core)  # while the log still holds them
    core.log.reset(position)
    core.last_applied = position.index
    core.commit_index = position.index
    core.cached_config = storage_config


def adopt_snapshot(
    core: Replica, position: LogPos, storage_config: tuple[int, Config] | None
) -> None:
    """Take up a transferred snapshot that storage now sits at.

    If our log holds the snapshot's last entry (same index and term), the entries after it
    stay: they may have been acknowledged and counted for a commit, and Raft forbids forgetting
    those (§7; WARaft always resets, which loses them — CORE-4). Only the queued commits the
    snapshot covers are cancelled, and the commit index never moves back. Otherwise the log
    restarts at the snapshot's position.
    """
    log = core.log
    index = position.index
    if index > log.last_index() or log.term(index) != position.term:
        reset_log(core, position, storage_config)
        return
    queued = core.queued
    for covered in sorted(i for i in queued if i <= index):
        from_, priority = queued.pop(covered)
        core.cancel_commit(from_, commit.CANCELLED, priority, commit.queued_size(core, covered))
    core.last_applied = index
    if core.commit_index < index:
        core.commit_index = index
    core.cached_config = storage_config
    if log.first_index() < index:
        core.emit(TrimLog(index))  # what precedes the snapshot is never needed again
        log.trim(index)


def rotate(core: Replica, index: int, byte_floor: int = 0) -> None:
    """Trim in large batches, keeping ``log_rotation_keep`` entries behind ``index``; or to
    ``byte_floor`` when the retained bytes call for more (``replication._byte_floor``)."""
    settings = core.settings
    keep = settings.log_rotation_keep
    target = index - keep
    first = core.log.first_index()
    if target - first >= settings.raft_max_log_records_per_file:
        core.count("log.rotate")
    elif byte_floor > first:
        core.count("log.rotate.bytes")
        target = byte_floor
    else:
        return
    target = max(target, byte_floor)
    core.emit(TrimLog(target))
    core.log.trim(target)
