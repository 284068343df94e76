"""``RaftCore``: WARaft's server state machine (``wa_raft_server``) as a pure object.

The engine mirrors ``gen_statem`` with ``state_enter``: every transition (and every repeat of
the same state) emits ``StateChanged`` and runs the new state's enter function; a handler that
re-delivers an event (WARaft's ``next_event``) does so after its transition has run; casts to
ourselves (a candidate's own vote) are queued behind the current event. The per-state logic
lives in the state modules (``stalled``, ``follower``, ``candidate``, ``leader``, ``witness``,
``disabled``), shared Raft rules in ``terms``, ``replication``, ``commit``, ``reads``,
``handover``, ``admin`` and ``snapshot``.

Deliberate deviations from WARaft (each documented where it is made):

* strong reads wait for an entry appended after them and are failed when leadership ends
  (``commit.release_reads``, ``commit.cancel_pending``): WARaft's are not linearizable;
* a single-member cluster with pre-vote enabled elects itself (``candidate.start_pre_vote``);
* a stalled replica accepts a snapshot at its own applied index (``admin.install_transfer``);
* a leader that is the only full member replicates to witnesses (``replication``);
* a transferred snapshot inside our log keeps the entries after it (``snapshot.adopt_snapshot``);
* an append response keeps a pending batch timeout (``replication.maybe_heartbeat``);
* an append response tops a lagging peer up, bounded by ``raft_max_inflight_appends``
  (``replication.catch_up``; 0 restores WARaft's one message per round);
* a peer's unacknowledged entries are bounded in estimated bytes too
  (``raft_max_bytes_in_flight``): past it the peer gets only empty append_entries;
* a ``disable`` while disabled persists the new reason; replies follow the state change they
  belong to, so nothing is acknowledged before it is durable;
* an idle partition may quiesce: no heartbeats, no election timers (``quiesce``, issue 13).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from waraft.core import (
    candidate,
    commit,
    disabled,
    follower,
    handover,
    leader,
    quiesce,
    stalled,
    status,
    term_recovery,
    terms,
    witness,
)
from waraft.core.effects import (
    Effect,
    StateChanged,
)
from waraft.core.errors import RaftCoreError
from waraft.core.events import Event
from waraft.core.replica import Replica
from waraft.core.rpc import Payload, RaftRpc
from waraft.core.types import (
    LEASE_IN_PROGRESS,
    LEASE_PENDING_RECONFIRMATION,
    LEASE_UNAFFECTED,
    Identity,
    State,
)

logger = logging.getLogger(__name__)


class _StateModule(Protocol):
    """What each state module provides (``stalled``, ``follower``, ...)."""

    def enter(self, core: Replica, old: State) -> None: ...

    def handle_rpc(self, core: Replica, sender: Identity, payload: Payload) -> None: ...

    def handle_event(self, core: Replica, event: Event) -> None: ...


_STATE_MODULES: dict[State, _StateModule] = {
    State.STALLED: stalled,
    State.FOLLOWER: follower,
    State.CANDIDATE: candidate,
    State.LEADER: leader,
    State.WITNESS: witness,
    State.DISABLED: disabled,
}


class RaftCore(Replica):
    """One replica's Raft state machine. Deterministic given its inputs (see CORE_API.md)."""

    # -- public entry points -------------------------------------------------------------------

    def start(self, now: int, peer_nodes: Iterable[str] = ()) -> list[Effect]:
        """Enter the initial state (digest §2.2); call once, before any ``handle``.

        With quiescence on, the replica then announces its start to the replicas of its
        config, or, when it knows no config (it lost its data), to those on ``peer_nodes``
        (the nodes it may share the partition with, as far as the runner knows; see
        ``quiesce.announce``)."""
        if self._started:
            raise RaftCoreError("RaftCore.start called twice")
        self._started = True
        self._begin(now)
        initial = self._initial_state()
        logger.info("%s starts as %s at term %d", self._tag(), initial.value, self.current_term)
        self.state = initial
        self._fx.append(StateChanged(None, initial))
        if self.metrics is not None:
            self.count(f"{initial.value}.enter")
        _STATE_MODULES[initial].enter(self, initial)
        quiesce.announce(self, peer_nodes)
        return self._finish()

    def handle(self, event: Event, now: int) -> list[Effect]:
        """Process one event at monotonic time ``now`` (ms); returns the effects to run."""
        if not self._started:
            raise RaftCoreError("RaftCore.handle called before start")
        self._begin(now)
        self.dispatch(event)
        return self._finish()

    def terminate_effects(self) -> list[Effect]:
        """What WARaft's ``terminate`` does: cancel pending and queued commits and reads.

        Pending commits answer ``not_leader``, or ``("notify_redirect", peer)`` while a
        handover runs; appended ones ``cancelled`` (they may commit without this replica).
        The core must not be used afterwards.
        """
        self._fx = []
        reason: Any = "not_leader"
        if self.handover is not None:
            reason = ("notify_redirect", self.handover[0])
        commit.cancel_pending_and_queued(self, reason)
        return self._finish()

    def status(self, now: int) -> dict[str, Any]:
        """WARaft's status fields that the core knows (digest §2.14)."""
        return status.status(self, now)

    def status_flags(self, now: int) -> tuple[bool, bool, bool]:
        """``(live, lagging, stale)`` as WARaft publishes them (digest §2.17)."""
        return status.status_flags(self, now)

    def handover_candidates(self) -> list[str]:
        """Node ids a handover could go to now (leader only; empty otherwise)."""
        if self.state is not State.LEADER:
            return []
        return handover.candidates(self, leader.unresponsive(self))

    # -- engine --------------------------------------------------------------------------------

    def _begin(self, now: int) -> None:
        self.now = now
        self._fx = []
        self.log.begin_step()

    def _finish(self) -> list[Effect]:
        mailbox = self._mailbox
        while mailbox:
            self.dispatch(mailbox.popleft())
        fx = self._fx
        self._fx = []
        return fx

    def dispatch(self, event: Event) -> None:
        """Handle one event in the current state (RPCs go through term pre-processing)."""
        if not quiesce.before_event(self, event):
            return
        if type(event) is RaftRpc:
            if self.term_lost:
                term_recovery.heard(self, event)
            else:
                terms.handle_rpc(self, event)
        else:
            _STATE_MODULES[self.state].handle_event(self, event)

    def dispatch_procedure(self, sender: Identity, payload: Payload) -> None:
        """Hand a pre-processed RPC to the current state's handler."""
        _STATE_MODULES[self.state].handle_rpc(self, sender, payload)

    def goto(self, new: State) -> None:
        """Transition to ``new`` (a repeat when equal) and run its enter function."""
        old = self.state
        quiesce.reset(self)
        if old is not new:
            logger.info("%s becomes %s from %s", self._tag(), new.value, old.value)
        self.state = new
        self._fx.append(StateChanged(old, new))
        if self.metrics is not None:
            self.count(f"{new.value}.enter")
        _STATE_MODULES[new].enter(self, old)

    def leader_timeout(self) -> None:
        quiesce.arm_leader_timer(self)

    def _initial_state(self) -> State:
        if self.disable_reason is not None:
            return State.DISABLED
        if self.term_lost or not self.holds_data():
            return State.STALLED
        return self.state_with_data()


__all__ = [
    "LEASE_IN_PROGRESS",
    "LEASE_PENDING_RECONFIRMATION",
    "LEASE_UNAFFECTED",
    "RaftCore",
    "RaftCoreError",
]
