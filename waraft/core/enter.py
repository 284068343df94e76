"""What every state does on entry (WARaft's ``enter_state/2``, digest §2.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from waraft.core import admin, commit, replication
from waraft.core.types import State

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def enter_state(core: Replica, state: State) -> None:
    """Record the entry time, fix the leader field, and cancel pending requests.

    Pending commits and reads survive only into ``leader`` (a candidate may have buffered
    them for the leadership it just won); every other state fails them with ``not_leader``.
    """
    core.state_start_ts = core.now
    admin.settle_promotion(core, state)  # a promote's election ends with leaving candidate
    if state is State.LEADER:
        core.leader = core.self_id
    elif core.leader == core.self_id:
        core.leader = None
    if state is not State.LEADER:
        commit.cancel_pending(core, "not_leader")
    replication.update_quorum_ts(core)
