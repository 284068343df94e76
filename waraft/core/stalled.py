"""The ``stalled`` state: a replica without trustworthy data (new or replaced node).

It takes no part in quorums: it rejects every ``append_entries`` with a zero match index (which
makes the leader send it a snapshot), ignores vote requests, and leaves through ``bootstrap``
or an installed snapshot (``snapshot_available``). The older README's ``promote(..., config)``
on an empty replica also passes through here (``admin``).

One more way out, not WARaft's: a replica re-enabled (``enable`` from ``disabled``) that holds
data waits here for a leader's snapshot as WARaft's does, but when no leader has contacted it
for an election timeout it goes where a restart would take it (follower, witness, or candidate
as a single member). In WARaft, disabling and enabling a majority of a partition's replicas
left every one of them stalled, waiting for a leader none of them could become: the partition
had no leader until a node was restarted, and ``trigger_election`` and ``promote`` are refused
in this state. A restart trusts the same data, so leaving here is no less safe than one.

A replica that lost its term and vote (``term_recovery``) stays here, taking no part, until the
voters have told it a term past every one it could have voted in, whatever brought it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import admin, term_recovery
from waraft.core.enter import enter_state
from waraft.core.events import (
    Bootstrap,
    Event,
    Promote,
    SnapshotAvailable,
    Timeout,
    TriggerElection,
)
from waraft.core.rpc import AppendEntries, AppendEntriesResponse, Payload
from waraft.core.types import Identity, State, error

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def enter(core: Replica, old: State) -> None:
    enter_state(core, State.STALLED)
    if old is not State.STALLED:  # (a repeat, on a new term, keeps waiting)
        core.reenabled_wait = old is State.DISABLED and core.holds_data()
    if core.term_lost:
        term_recovery.ask(core)
    elif core.reenabled_wait:
        core.election_timeout()


def _on_timeout(core: Replica) -> None:
    """The wait of a re-enabled replica (see the module docstring) ran out, or that of one
    recovering its lost term (``term_recovery``: it asks again)."""
    if core.term_lost:
        term_recovery.ask(core)
        return
    heard = core.last_quorum_ts
    if heard is not None and core.now - heard < core.settings.raft_election_timeout_ms:
        core.election_timeout()  # a leader is there: its snapshot is on the way
        return
    if not (core.reenabled_wait and core.holds_data()) or core.pending_install is not None:
        return
    core.count("stalled.timeout")
    core.log_notice("re-enabled, and no leader came for its data: going on as after a restart")
    core.goto(core.state_with_data())


def handle_rpc(core: Replica, sender: Identity, payload: Payload) -> None:
    if isinstance(payload, AppendEntries):
        core.last_quorum_ts = core.now
        core.send(sender, AppendEntriesResponse(payload.prev_log_index, False, 0, 0))


def handle_event(core: Replica, event: Event) -> None:
    match event:
        case Bootstrap():
            admin.bootstrap(core, event)
        case SnapshotAvailable():
            admin.install_transfer(core, event)
        case Promote(config=cfg) if cfg is not None:
            admin.promote_with_config(core, event)
        case Promote() | TriggerElection():
            core.reply(event.from_, error("invalid_state"))
        case Timeout():
            _on_timeout(core)
        case _:
            admin.command(core, event)
