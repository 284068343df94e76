"""The ``stalled`` state: a replica without trustworthy data (new or replaced node).

It takes no part in quorums: it rejects every ``append_entries`` with a zero match index (which
makes the leader send it a snapshot), ignores vote requests, and leaves only through
``bootstrap`` or an installed snapshot (``snapshot_available``). The older README's
``promote(..., config)`` on an empty replica also passes through here (``admin``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import admin
from waraft.core.enter import enter_state
from waraft.core.events import (
    Bootstrap,
    Event,
    Promote,
    SnapshotAvailable,
    TriggerElection,
)
from waraft.core.rpc import AppendEntries, AppendEntriesResponse, Payload
from waraft.core.types import Identity, State, error

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def enter(core: Replica, old: State) -> None:
    enter_state(core, State.STALLED)


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
        case _:
            admin.command(core, event)
