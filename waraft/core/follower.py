"""The ``follower`` state: replicate the leader's log, vote, and campaign when it goes quiet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import admin, heartbeat, terms
from waraft.core.enter import enter_state
from waraft.core.events import Event, Timeout
from waraft.core.rpc import (
    AppendEntries,
    Handover,
    HandoverFailed,
    Payload,
    RequestPreVote,
    RequestVote,
)
from waraft.core.types import ElectionType, Identity, State

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def enter(core: Replica, old: State) -> None:
    enter_state(core, State.FOLLOWER)
    core.election_timeout()


def handle_rpc(core: Replica, sender: Identity, payload: Payload) -> None:
    match payload:
        case AppendEntries():
            heartbeat.handle_heartbeat(core, sender, payload)
        case RequestVote():
            terms.handle_request_vote(core, sender, payload)
        case RequestPreVote():
            terms.handle_request_pre_vote(core, sender, payload.ref)
        case Handover() if core.leader == sender:
            on_handover(core, sender, payload)
        case _:
            pass  # responses, pre-votes, votes and stray handovers mean nothing here


def on_handover(core: Replica, sender: Identity, request: Handover) -> None:
    """Our leader asks us to take over: append its entries, then force an election."""
    core.count("follower.handover")
    settings = core.settings
    if not (settings.raft_leader_eligible and settings.raft_election_weight != 0):
        core.log_notice("declines handover: not eligible for leadership")
        core.send(sender, HandoverFailed(request.ref))
        return
    try:
        accepted, _ = heartbeat.append_entries(
            core, request.prev_log_index, request.prev_log_term, request.entries
        )
    except heartbeat.Fatal as fatal:
        core.count("follower.handover.fatal")
        core.send(sender, HandoverFailed(request.ref))
        heartbeat.disable(core, fatal.args[0])
        return
    if not accepted:
        core.count("follower.handover.rejected")
        core.send(sender, HandoverFailed(request.ref))
        return
    if core.is_self_witness():
        core.send(sender, HandoverFailed(request.ref))
        core.goto(State.WITNESS)
        return
    core.log_notice("starting a forced election for the handover from %s", sender)
    core.next_election_type = ElectionType.FORCE
    core.goto(State.CANDIDATE)


def handle_event(core: Replica, event: Event) -> None:
    if isinstance(event, Timeout):
        core.count("follower.timeout")
        if core.candidate_eligible():
            core.log_notice("times out waiting for leader %s; starting an election", core.leader)
            core.goto(State.CANDIDATE)
        else:
            core.goto(State.FOLLOWER)
        return
    admin.command(core, event)
