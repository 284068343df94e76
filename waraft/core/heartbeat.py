"""Follower and witness side of replication (digest §2.10).

``append_entries`` is the consistency check of Raft §5.3 in WARaft's form (its
``check_heartbeat``): the previous entry must be in our log with the leader's term; entries we
already hold with the same term are skipped; the first entry with a different term is a
conflict, and we truncate there — unless that would delete a committed entry, which is fatal
(the replica disables itself: its log or the leader's is corrupt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from waraft.core import commit, quiesce, replication
from waraft.core.effects import CancelTimeout, TruncateLog
from waraft.core.rpc import AppendEntries, AppendEntriesResponse
from waraft.core.types import Entry, Identity, Priority, State

if TYPE_CHECKING:
    from waraft.core.replica import Replica


class Fatal(Exception):
    """The heartbeat would delete committed entries; ``args[0]`` is the disable reason."""


def append_entries(
    core: Replica, prev_index: int, prev_term: int, entries: Sequence[Entry]
) -> tuple[bool, int]:
    """Check and append a leader's entries: ``(accepted, match_or_last_index)``.

    Raises ``Fatal`` when a conflict reaches committed entries.
    """
    log = core.log
    count = len(entries)
    first = log.first_index()
    last = log.last_index()
    if prev_index <= 0 or prev_index < first or prev_index > last:
        core.count(("heartbeat.skip.out_of_range", core.state.value))
        return False, last

    # Find the first index whose term disagrees with the leader's, if any.
    conflict: int | None = None
    if log.term(prev_index) != prev_term:
        conflict = prev_index
    else:
        overlap = min(count, last - prev_index)
        term = log.term
        for offset in range(overlap):
            if term(prev_index + 1 + offset) != entries[offset].term:
                conflict = prev_index + 1 + offset
                break
        if conflict is None:
            if overlap == count:
                return True, prev_index + count
            return _append_new(core, entries[overlap:], prev_index + count, last)

    if conflict <= core.commit_index:
        raise Fatal(_fatal_reason(core, prev_index, count, conflict, prev_term, entries))
    if conflict <= first:
        # The log server refuses to truncate its first entry.
        core.count(("heartbeat.truncate.error", core.state.value))
        return False, last
    core.log_notice("truncating the log ending at %d from %d on", last, conflict)
    core.emit(TruncateLog(conflict))
    commit.cancel_queued_range(core, conflict, last)  # while the log still holds them
    log.truncate(conflict, core.last_applied)
    if conflict == prev_index:
        return False, conflict - 1
    return _append_new(core, entries[conflict - prev_index - 1 :], prev_index + count, conflict - 1)


def _append_new(
    core: Replica, new: Sequence[Entry], match: int, local_last: int
) -> tuple[bool, int]:
    if not core.log.can_append(len(new), Priority.HIGH):
        core.log_notice("not ready to append %d entries after %d", len(new), local_last)
        return False, local_last
    commit.append(core, new if isinstance(new, list) else list(new))
    return True, match


def _fatal_reason(
    core: Replica,
    prev_index: int,
    count: int,
    conflict: int,
    prev_term: int,
    entries: Sequence[Entry],
) -> str:
    local_term = core.log.term(conflict)
    leader_term = prev_term if conflict == prev_index else entries[conflict - prev_index - 1].term
    leader = core.leader
    who = f"{leader.name}@{leader.node}" if leader is not None else "an unknown leader"
    core.count(("heartbeat.error.corruption.excessive_truncation", core.state.value))
    return (
        f"Heartbeat for {prev_index + 1}..{prev_index + count} from {who} in term "
        f"{core.current_term} conflicts at index {conflict} (leader term {leader_term}, "
        f"local term {local_term}), at or below commit index {core.commit_index}; "
        f"truncating would lose committed entries."
    )


def handle_heartbeat(core: Replica, leader: Identity, request: AppendEntries) -> None:
    """A follower's or witness's ``append_entries``: check, append, answer, commit, apply."""
    state = core.state
    try:
        accepted, match = append_entries(
            core, request.prev_log_index, request.prev_log_term, request.entries
        )
    except Fatal as fatal:
        disable(core, fatal.args[0])
        return
    applied = max(0, core.last_applied - core.queues.apply_queue_size())
    core.last_quorum_ts = core.now
    core.leader_commit_index = request.commit_index
    if accepted:
        new_commit = min(request.commit_index, match)
        if new_commit > core.commit_index:
            core.commit_index = new_commit
    target = core.follower_or_witness()
    quiesced = target is state and accepted and quiesce.follower_ack(core, leader, request, match)
    core.send(
        leader, AppendEntriesResponse(request.prev_log_index, accepted, match, applied, quiesced)
    )
    if accepted:
        trim = request.trim_index if core.settings.raft_rotate_by_trim_index else None
        replication.apply_log(core, trim)
    target = core.follower_or_witness()  # applying may have changed the config
    if target is not state:
        core.goto(target)
    elif quiesced:
        core.emit(CancelTimeout())
    else:
        core.election_timeout()


def disable(core: Replica, reason: Any) -> None:
    """Go to ``disabled`` with ``reason`` (persisted by the disabled state's enter)."""
    core.log_notice("disabling: %s", reason)
    core.disable_reason = reason
    core.goto(State.DISABLED)
