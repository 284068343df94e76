"""The ``disabled`` state: a replica unfit to take part (corruption, operator request).

It behaves as if dead: no heartbeats, no pre-votes, no ``notify_term``; every vote request is
refused, and a handover declined (WARaft ignores it; see ``handle_rpc``). The reason is
persisted so that it stays disabled across restarts; ``enable`` moves it to ``stalled`` (it
must then be given fresh data).

Going disabled, it announces itself once to its peers (``quiesce.announce``, as a replica
that starts does): a quiescent leader would otherwise learn of it only at its next check,
a liveness grace period later. Woken, the leader finds it silent and reports it
(``unresponsive`` in its status) rather than run on fewer replicas than its config names
unseen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import admin, quiesce, terms
from waraft.core.enter import enter_state
from waraft.core.events import Disable, Enable, Event, Promote, TriggerElection
from waraft.core.rpc import Handover, HandoverFailed, Payload, RequestVote, Vote
from waraft.core.types import Identity, State, error

if TYPE_CHECKING:
    from waraft.core.replica import Replica

DEFAULT_REASON = "No reason specified."


def enter(core: Replica, old: State) -> None:
    if old is State.DISABLED:
        enter_state(core, State.DISABLED)
        return
    if core.disable_reason is None:
        core.disable_reason = DEFAULT_REASON
    enter_state(core, State.DISABLED)
    terms.persist(core)
    quiesce.announce(core, ())


def handle_rpc(core: Replica, sender: Identity, payload: Payload) -> None:
    match payload:
        case RequestVote():
            core.send(sender, Vote(False))
        case Handover():
            # WARaft ignores it. A leader that has not yet found this replica silent (it was
            # just disabled) sent the handover in good faith; declining it at once, as a
            # witness does, lets the leader resume instead of holding heartbeats, commits and
            # reads until the handover times out. It says nothing a vote refusal does not.
            core.send(sender, HandoverFailed(payload.ref))
        case _:
            pass


def handle_event(core: Replica, event: Event) -> None:
    match event:
        case Enable():
            core.log_notice("re-enabling: moving to stalled")
            core.disable_reason = None
            terms.persist(core)
            core.goto(State.STALLED)
            core.reply(event.from_, "ok")
        case Disable():
            # Already disabled: keep the new reason, durably (WARaft only updates memory here).
            core.disable_reason = DEFAULT_REASON if event.reason is None else event.reason
            terms.persist(core)
            core.reply(event.from_, "ok")
        case Promote() | TriggerElection():
            core.reply(event.from_, error("invalid_state"))
        case _:
            admin.command(core, event)
