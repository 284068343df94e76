"""The ``candidate`` state: pre-vote (optional), then a real election (Raft §5.2, thesis §9.6).

Votes and pre-votes are counted over voting members only, and a majority either way decides:
a majority of refusals ends the election as surely as a majority of grants wins it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import admin, commit, config, reads, replication, terms
from waraft.core.enter import enter_state
from waraft.core.events import CommitBatch, Event, ReadBatch, Timeout
from waraft.core.rpc import (
    AppendEntries,
    Handover,
    Payload,
    PreVote,
    RequestPreVote,
    RequestVote,
    Vote,
)
from waraft.core.types import ElectionType, Identity, State

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def enter(core: Replica, old: State) -> None:
    election_type = core.next_election_type
    core.next_election_type = ElectionType.NORMAL
    core.count("leader.election_started")
    core.elections_started += 1
    enter_state(core, State.CANDIDATE)
    if election_type is ElectionType.NORMAL and core.settings.raft_election_pre_vote:
        start_pre_vote(core)
    else:
        start_election(core, election_type)


def start_pre_vote(core: Replica) -> None:
    """Ask the members whether they miss a leader before disturbing anyone's term."""
    ref = core.next_ref()
    core.pre_vote_ref = ref
    core.pre_votes = {core.node: True}
    _send_to_members(core, RequestPreVote(ref))
    core.election_timeout()
    # Deviation from WARaft: its majority check runs only when a peer's pre-vote arrives, so a
    # sole member with pre-vote enabled never gets elected. Checking our own pre-vote at once
    # lets a single-member cluster elect itself (after a restart, for instance).
    _decide_pre_vote(core)


def start_election(core: Replica, election_type: ElectionType) -> None:
    """New term, vote for ourselves (persisted), ask every other member."""
    terms.advance_term(core, core.current_term + 1, core.node)
    pos = core.last_log_pos()
    core.log_notice("starts a %s election at %d:%d", election_type.value, pos.index, pos.term)
    _send_to_members(core, RequestVote(election_type, pos.index, pos.term))
    core.send(core.self_id, Vote(True))
    core.election_timeout()


def _send_to_members(core: Replica, payload: Payload) -> None:
    self_id = core.self_id
    for peer in core.current_config().membership:
        if peer != self_id:
            core.send(peer, payload)


def handle_rpc(core: Replica, sender: Identity, payload: Payload) -> None:
    match payload:
        case AppendEntries() | Handover():
            # The term has a leader: follow it and let the follower handle this RPC.
            core.goto(core.follower_or_witness())
            core.dispatch_procedure(sender, payload)
        case Vote():
            on_vote(core, sender, payload.vote)
        case PreVote():
            on_pre_vote(core, sender, payload)
        case RequestPreVote():
            terms.handle_request_pre_vote(core, sender, payload.ref)
        case RequestVote():
            core.send(sender, Vote(False))  # we voted for ourselves
        case _:
            pass


def on_vote(core: Replica, sender: Identity, granted: bool) -> None:
    core.votes[sender.node] = granted
    replication.update_heartbeat_reply_ts(core, sender.node)
    outcome = config.find_member_majority(core.votes, core.current_config())
    if outcome is None:
        return
    duration = core.now - core.state_start_ts
    if outcome:
        core.count("candidate.elected")
        core.gather("candidate.election.duration", duration)
        core.log_notice("elected after %d ms with votes from %s", duration, _who(core.votes, True))
        core.goto(State.LEADER)
    else:
        core.count("candidate.rejected")
        core.log_notice("lost after %d ms; opposed by %s", duration, _who(core.votes, False))
        core.goto(core.follower_or_witness())


def on_pre_vote(core: Replica, sender: Identity, reply: PreVote) -> None:
    if core.pre_vote_ref is None or reply.ref != core.pre_vote_ref:
        return  # another round
    pos = core.last_log_pos()
    core.pre_votes[sender.node] = reply.vote and (pos.term, pos.index) >= (
        reply.last_log_term,
        reply.last_log_index,
    )
    _decide_pre_vote(core)


def _decide_pre_vote(core: Replica) -> None:
    outcome = config.find_member_majority(core.pre_votes, core.current_config())
    if outcome is None:
        return
    if outcome:
        core.count("candidate.pre_vote.passed")
        core.log_notice("pre-vote passed with %s", _who(core.pre_votes, True))
        start_election(core, ElectionType.NORMAL)
    else:
        core.count("candidate.pre_vote.failed")
        core.log_notice("pre-vote failed; opposed by %s", _who(core.pre_votes, False))
        core.goto(core.follower_or_witness())


def _who(votes: dict[str, bool], value: bool) -> list[str]:
    return sorted(node for node, vote in votes.items() if vote is value)


def handle_event(core: Replica, event: Event) -> None:
    match event:
        case Timeout():
            if core.candidate_eligible():
                core.goto(State.CANDIDATE)
            else:
                core.goto(core.follower_or_witness())
        case CommitBatch() if core.settings.raft_candidate_buffer_requests:
            commit.add_pending(core, event.items, event.priority)
        case ReadBatch() if core.settings.raft_candidate_buffer_requests:
            reads.candidate_reads(core, event.items)
        case _:
            admin.command(core, event)
