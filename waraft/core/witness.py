"""The ``witness`` state: a voting replica that keeps the log but not the state machine's data.

It answers heartbeats and votes like a follower but never starts an election (its timeout
only re-arms) and refuses handovers, promotion and triggered elections. The leader replicates
to it stubbed entries (``config.stub_entries_for_witness``) and never past what some full
member already holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import admin, heartbeat, terms
from waraft.core.enter import enter_state
from waraft.core.events import Event, Promote, Timeout, TriggerElection
from waraft.core.rpc import (
    AppendEntries,
    Handover,
    HandoverFailed,
    Payload,
    RequestPreVote,
    RequestVote,
)
from waraft.core.types import Identity, State, error

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def enter(core: Replica, old: State) -> None:
    enter_state(core, State.WITNESS)
    core.election_timeout()


def handle_rpc(core: Replica, sender: Identity, payload: Payload) -> None:
    match payload:
        case AppendEntries():
            heartbeat.handle_heartbeat(core, sender, payload)
        case RequestVote():
            terms.handle_request_vote(core, sender, payload)
        case RequestPreVote():
            terms.handle_request_pre_vote(core, sender, payload.ref)
        case Handover():
            core.send(sender, HandoverFailed(payload.ref))
        case _:
            pass  # responses, pre-votes and votes mean nothing to a witness


def handle_event(core: Replica, event: Event) -> None:
    match event:
        case Timeout():
            core.election_timeout()  # only refreshes; a witness never campaigns
        case Promote() | TriggerElection():
            core.reply(event.from_, error("invalid_state"))
        case _:
            admin.command(core, event)
