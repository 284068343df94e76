"""Terms and votes: RPC pre-processing, term advance and the vote handlers (digest §2.5, §2.6).

Pre-processing runs before any state handler, in WARaft's order:

(waraft) A replica that lost its term and vote gets no RPC here: ``term_recovery`` only notes
the sender's term (the dispatcher routes them there).

1. an RPC with a stale term is dropped and answered with ``notify_term`` (not when disabled),
   whoever sent it;
1a. (waraft hardening) a vote or pre-vote request from a node outside the current config's
   membership is dropped and counted: a non-member can never win an election here, so its
   request can only be an attack or a stale removed node, and letting its term through would
   depose a healthy leader. A replica with no config yet (empty membership) still answers
   everyone, so a fresh cluster can bootstrap;
2. a pre-vote request is handled without touching the term;
3. a ``normal`` vote request is refused (with the *request's* term, and without advancing ours)
   while a leader is known to be alive — leader stickiness (thesis §4.2.3) — otherwise it is
   treated as ``allowed``;
4. a newer term is adopted (persisted at once) and the RPC re-delivered;
5. ``notify_term`` at our own term is ignored;
6. the first ``append_entries`` / ``handover`` of a term records its sender as the leader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import quiesce
from waraft.core.effects import PersistState
from waraft.core.errors import RaftCoreError
from waraft.core.rpc import (
    AppendEntries,
    Handover,
    NotifyTerm,
    PreVote,
    RaftRpc,
    RequestPreVote,
    RequestVote,
    Vote,
)
from waraft.core.types import LEASE_UNAFFECTED, DurableState, ElectionType, Identity, State

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def handle_rpc(core: Replica, rpc: RaftRpc) -> None:
    """Apply the term rules, then hand the procedure to the current state."""
    term = rpc.term
    payload = rpc.payload
    sender = rpc.sender
    current = core.current_term
    ptype = type(payload)
    if term < current:
        # Answered for non-members too: it tells a stale sender our term and deposes nobody,
        # and a participant recovering a lost term (``term_recovery``) asks with a pre-vote.
        if core.state is not State.DISABLED:
            core.send(sender, NotifyTerm())
        return
    if (ptype is RequestVote or ptype is RequestPreVote) and not _is_member(core, sender):
        core.count("server.vote_request.non_member")
        return
    if ptype is RequestPreVote:
        core.dispatch_procedure(sender, payload)
        return
    if ptype is RequestVote and payload.election_type is ElectionType.NORMAL:  # type: ignore[union-attr]
        if not is_leader_missing(core):
            core.count("server.request_vote.drop")
            core.send(sender, Vote(False), term=term)
            return
        payload = RequestVote(ElectionType.ALLOWED, payload.last_log_index, payload.last_log_term)  # type: ignore[union-attr]
        rpc = RaftRpc(term, sender, payload)
    if term > current:
        old_leader = core.leader
        on_advance_term(core, term)
        quiesce.tell_old_leader(core, old_leader, sender)
        handle_rpc(core, rpc)
        return
    if ptype is NotifyTerm:
        return
    if core.leader is None and (ptype is AppendEntries or ptype is Handover):
        core.leader = sender
        core.log_notice("leader is now %s", sender)
    core.dispatch_procedure(sender, payload)


def _is_member(core: Replica, sender: Identity) -> bool:
    """Whether ``sender``'s node votes in the current config (True while there is none)."""
    membership = core.current_config().membership
    if not membership:
        return True
    node = sender.node
    return any(member.node == node for member in membership)


def on_advance_term(core: Replica, term: int) -> None:
    """WARaft's ``advance_term`` internal event: leaders and candidates step down."""
    state = core.state
    core.log_notice("advancing to new term %d", term)
    core.count(f"{state.value}.advance_term")
    advance_term(core, term, None)
    if state is State.LEADER or state is State.CANDIDATE:
        core.goto(core.follower_or_witness())
    else:
        core.goto(state)


def advance_term(core: Replica, term: int, voted_for: str | None) -> None:
    """Move to ``term``, forget everything about the old one, and persist before going on."""
    if term <= core.current_term:
        raise RaftCoreError(f"advance_term to {term} from {core.current_term}")
    core.current_term = term
    core.voted_for = voted_for
    core.votes = {}
    core.pre_vote_ref = None
    core.pre_votes = {}
    core.leader = None
    core.next_indices = {}
    core.match_indices = {}
    core.last_applied_indices = {}
    core.heartbeat_send_ts = {}
    core.lease_sends = {}
    core.lease_acks = {}
    core.inflight = {}
    core.inflight_sent = {}
    core.inflight_bytes = {}
    core.handover = None
    core.handover_lease_state = LEASE_UNAFFECTED
    # heartbeat_reply_ts survives: liveness evidence is independent of the term.
    persist(core)


def persist(core: Replica) -> None:
    """Emit the durable state as it is now (term, vote, disable reason)."""
    core.emit(PersistState(DurableState(core.current_term, core.voted_for, core.disable_reason)))


def is_leader_missing(core: Replica) -> bool:
    """No leader heartbeat (or leader quorum) for longer than the minimum election timeout."""
    last = core.last_quorum_ts
    if last is None:
        return True
    return core.now - last > core.settings.raft_election_timeout_ms


def handle_request_pre_vote(core: Replica, candidate: Identity, ref: int) -> None:
    """Say whether we miss a leader, and where our log ends."""
    pos = core.last_log_pos()
    core.send(candidate, PreVote(ref, is_leader_missing(core), pos.index, pos.term))


def handle_request_vote(core: Replica, candidate: Identity, request: RequestVote) -> None:
    """Grant at most one vote per term, to a candidate whose log is at least as up to date."""
    voted_for = core.voted_for
    if voted_for is not None and voted_for != candidate.node:
        core.log_notice("refuses %s: already voted for %s", candidate, voted_for)
        core.send(candidate, Vote(False))
        return
    pos = core.last_log_pos()
    if (request.last_log_term, request.last_log_index) >= (pos.term, pos.index):
        if voted_for is None:
            core.log_notice("votes for %s", candidate)
            core.voted_for = candidate.node
            # Fig. 2: the vote is durable before it is granted.
            persist(core)
        core.send(candidate, Vote(True))
    else:
        core.log_notice(
            "refuses %s: its log %d:%d is behind %d:%d",
            candidate,
            request.last_log_index,
            request.last_log_term,
            pos.index,
            pos.term,
        )
        core.send(candidate, Vote(False))
