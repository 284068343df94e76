"""Strong reads (digest §2.12).

A leader serves a read at ``ReadIndex = max(commit_index, first index of its term)`` (raised
to the caller's minimum index). Three paths:

* a sole member that has applied up to the read index answers at once (``ReadNow``);
* a valid leader lease (off by default) answers at once as well;
* otherwise the read is queued in storage (``SubmitRead``) and the leader forces a new quorum
  round by appending — a ``'$read'`` marker entry when no commit is pending to ride on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from waraft.core import replication
from waraft.core.effects import ReadNow, SubmitRead
from waraft.core.types import LEASE_IN_PROGRESS, LEASE_PENDING_RECONFIRMATION

if TYPE_CHECKING:
    from waraft.core.replica import Replica

MIN_INDEX_AHEAD = "min_index_ahead"
"""Why a read whose minimum index is past the leader's log (a candidate's: past the new term's
first index), or is not an int, is refused."""


def min_index_ahead(min_index: Any, last_index: int) -> bool:
    """Whether a read's minimum index is not an int or is past ``last_index``.

    ``last_index`` is the last index the log will hold when the read is queued: the leader's
    last index, or a candidate's plus one (see ``candidate_reads``).
    """
    return min_index is not None and (type(min_index) is not int or min_index > last_index)


def leader_reads(core: Replica, items: Any) -> None:
    """Serve or queue a batch of ``(from_, command, min_index)`` reads on the leader."""
    running = core.handover
    if running is not None:
        reason = ("notify_redirect", running[0])
        for from_, _, _ in items:
            core.count("read.rejected.handover")
            core.cancel_read(from_, reason)
        return
    submitted = False
    last_index = core.log.last_index()
    for from_, command, min_index in items:
        if min_index_ahead(min_index, last_index):
            # No index a client was ever given is past the leader's log (a committed entry is
            # in every later leader's log); such a read would wait forever and hold a slot of
            # the node's read budget, so it is refused at once.
            core.count("read.rejected.min_index")
            core.cancel_read(from_, MIN_INDEX_AHEAD)
            continue
        read_index = max(core.commit_index, core.first_current_term_log_index)
        if min_index is not None and min_index > read_index:
            read_index = min_index
        if (
            not core.pending_high
            and not core.pending_low
            and read_index <= core.last_applied
            and core.is_single_member()
        ):
            core.emit(ReadNow(from_, command))
            continue
        miss = lease_miss(core, read_index)
        if miss is None:
            core.count("leader.read.lease.hit")
            core.emit(ReadNow(from_, command))
            continue
        core.count(("leader.read.lease.miss", miss))
        # Held until an entry is appended for it (commit.release_reads); the read index
        # computed here only matters as the caller's minimum.
        core.held_reads.append((from_, command, read_index))
        core.pending_read = True
        submitted = True
    if submitted:
        replication.batch_or_heartbeat(core)


def lease_miss(core: Replica, read_index: int) -> str | None:
    """``None`` when the leader lease covers a read at ``read_index``, else why not."""
    lease_ms = core.settings.raft_leader_read_lease_ms
    if lease_ms <= 0:
        return "disabled"
    if core.handover is not None or core.handover_lease_state == LEASE_IN_PROGRESS:
        return "handover"
    if core.handover_lease_state == LEASE_PENDING_RECONFIRMATION:
        return "pending_reconfirmation"
    if core.commit_index < core.first_current_term_log_index:
        return "not_current_term"
    last_quorum = replication.lease_quorum_ts(core)  # by send times, not answer times
    if last_quorum is None:
        return "no_quorum_ts"
    if core.last_applied < read_index:
        return "not_applied"
    if core.now - last_quorum > lease_ms:
        return "stale"
    return None


def candidate_reads(core: Replica, items: Any) -> None:
    """Buffered reads on a candidate: queued at the index the new term would start at.

    Safe because losing the election cancels them (``cancel_pending`` on leaving). The
    leader's ``min_index_ahead`` rule applies to the log the candidate would lead with: its
    own (a candidate's log does not change during an election round) plus the entry a new
    leader appends at once (``leader.enter``) at the new term's first index. A minimum past
    that is refused at once, as the leader refuses it: queued, the read would hold a slot of
    the node's read budget for as long as this node went on to lead.
    """
    base = core.log.last_index() + 1
    for from_, command, min_index in items:
        if min_index_ahead(min_index, base):
            core.count("read.rejected.min_index")
            core.cancel_read(from_, MIN_INDEX_AHEAD)
            continue
        # Every minimum admitted is at most ``base``: the read index is the new term's first.
        core.emit(SubmitRead(base, from_, command))
        core.read_index_high = max(core.read_index_high, base)
        core.pending_read = True
