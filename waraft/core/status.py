"""Status output (WARaft's ``status/1`` fields, digest §2.14) and the published flags (§2.17)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from waraft.core import config, leader, term_recovery
from waraft.core.types import State

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def status(core: Replica, now: int) -> dict[str, Any]:
    """Everything the core knows at ``now``; the shell adds ``partition_path`` and
    ``log_module``. ``live``, ``lagging`` and ``stale`` are :func:`status_flags` at ``now``."""
    leader_id = core.leader
    log = core.log
    cfg = core.current_config()
    live, lagging, stale = status_flags(core, now)
    return {
        "state": core.state.value,
        "id": core.node,
        "table": core.table,
        "partition": core.partition,
        "current_term": core.current_term,
        "voted_for": core.voted_for,
        "commit_index": core.commit_index,
        "last_applied": core.last_applied,
        "leader_name": None if leader_id is None else leader_id.name,
        "leader_id": None if leader_id is None else leader_id.node,
        "pending_high": len(core.pending_high),
        "pending_low": len(core.pending_low),
        "pending_read": core.pending_read,
        "queued": len(core.queued),
        "next_indices": dict(core.next_indices),
        "match_indices": dict(core.match_indices),
        "log_first": log.first_index(),
        "log_last": log.last_index(),
        "votes": dict(core.votes),
        "inflight_applies": core.queues.apply_queue_size(),
        "disable_reason": core.disable_reason,
        # Its term and vote were lost: stalled until these voters tell theirs (term_recovery).
        "term_lost": sorted(term_recovery.unheard(core)) if core.term_lost else None,
        "config": cfg.to_dict(),
        "config_index": core.config_index(),
        "witness": config.is_witness(core.self_id, cfg),
        "quiescent": core.quiescent,
        "down_nodes": sorted(core.down_nodes),
        "elections_started": core.elections_started,
        # A leader's participants that stopped answering it (disabled, down, cut off).
        "unresponsive": leader.unresponsive(core),
        "live": live,
        "lagging": lagging,
        "stale": stale,
    }


def status_flags(core: Replica, now: int) -> tuple[bool, bool, bool]:
    """``(live, lagging, stale)`` at ``now``: they change with time alone (a quorum or leader
    no longer heard), so a caller that keeps them says as of when.

    * stalled / disabled: never live, always lagging and stale;
    * leader: live while a quorum answered within ``raft_max_heartbeat_age_msecs``;
    * others: live while a leader was heard within ``raft_liveness_grace_period_ms``; lagging
      when not live, when the leader's commit index is unknown, or when we are
      ``raft_stale_grace_period_entries`` behind it; a witness is always stale.
    """
    state = core.state
    settings = core.settings
    # A quiescent replica heard from its quorum / leader as recently as node liveness says.
    last = now if core.quiescent else core.last_quorum_ts
    if state is State.STALLED or state is State.DISABLED:
        return (False, True, True)
    if state is State.LEADER:
        live = last is not None and now - last <= settings.raft_max_heartbeat_age_msecs
        return (live, not live, not live)
    live = last is not None and last + settings.raft_liveness_grace_period_ms >= now
    leader_commit = core.leader_commit_index
    lagging = (
        not live
        or leader_commit is None
        or leader_commit - core.last_applied >= settings.raft_stale_grace_period_entries
    )
    return (live, lagging, lagging or state is State.WITNESS)
