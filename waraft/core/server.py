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
* a ``disable`` while disabled persists the new reason; replies follow the state change they
  belong to, so nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from waraft.core import (
    candidate,
    commit,
    config,
    disabled,
    follower,
    handover,
    leader,
    stalled,
    status,
    terms,
    witness,
)
from waraft.core.effects import (
    CommitCancelled,
    Effect,
    ReadCancelled,
    Reply,
    Send,
    SetTimeout,
    StateChanged,
)
from waraft.core.errors import RaftCoreError
from waraft.core.events import Event
from waraft.core.handover import (
    LEASE_IN_PROGRESS,
    LEASE_PENDING_RECONFIRMATION,
    LEASE_UNAFFECTED,
)
from waraft.core.log import LogOverlay
from waraft.core.log_view import LogView, QueueView
from waraft.core.metrics import Metrics
from waraft.core.rpc import Payload, RaftRpc
from waraft.core.settings import ELECTION_MAX_WEIGHT, Settings
from waraft.core.types import (
    Config,
    DurableState,
    ElectionType,
    Identity,
    LogPos,
    Priority,
    State,
    TimeoutKind,
)

logger = logging.getLogger(__name__)


class _StateModule(Protocol):
    """What each state module provides (``stalled``, ``follower``, ...)."""

    def enter(self, core: RaftCore, old: State) -> None: ...

    def handle_rpc(self, core: RaftCore, sender: Identity, payload: Payload) -> None: ...

    def handle_event(self, core: RaftCore, event: Event) -> None: ...


_STATE_MODULES: dict[State, _StateModule] = {
    State.STALLED: stalled,
    State.FOLLOWER: follower,
    State.CANDIDATE: candidate,
    State.LEADER: leader,
    State.WITNESS: witness,
    State.DISABLED: disabled,
}


class RaftCore:
    """One replica's Raft state machine. Deterministic given its inputs (see CORE_API.md)."""

    def __init__(
        self,
        self_id: Identity,
        table: str,
        partition: int,
        settings: Settings,
        log: LogView,
        queues: QueueView,
        storage_position: LogPos,
        storage_config: tuple[int, Config] | None,
        durable: DurableState | None,
        rand: Callable[[], float],
        now: int,
        label_fn: Callable[[Any, Any], Any] | None = None,
        storage_label: Any = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.self_id = self_id
        self.node = self_id.node
        self.table = table
        self.partition = partition
        self.settings = settings
        self.log = LogOverlay(log)
        self.queues = queues
        self.rand = rand
        self.label_fn = label_fn
        self.metrics = metrics
        self.now = now
        # Refs (pre-vote rounds, handovers, keys of entries we make) come from one counter.
        self._ref_counter = int(rand() * (1 << 40))

        self.commit_index = storage_position.index
        self.last_applied = storage_position.index
        self.cached_config: tuple[int, Config] | None = (
            None
            if storage_config is None
            else (storage_config[0], config.normalize_config(storage_config[1]))
        )
        self.storage_label: Any = storage_label
        self.last_label: Any = None
        if durable is None:
            self.current_term = storage_position.term
            self.voted_for: str | None = None
            self.disable_reason: Any = None
        else:
            self.current_term = durable.current_term
            self.voted_for = durable.voted_for
            self.disable_reason = durable.disable_reason

        self.state: State = State.STALLED
        self.leader: Identity | None = None
        self.state_start_ts = now
        self.last_quorum_ts: int | None = None
        self.leader_commit_index: int | None = None
        # candidate
        self.votes: dict[str, bool] = {}
        self.pre_vote_ref: int | None = None
        self.pre_votes: dict[str, bool] = {}
        self.next_election_type = ElectionType.NORMAL
        # leader (pending lists are kept in arrival order)
        self.pending_high: list[tuple[Any, tuple[Any, Any]]] = []
        self.pending_low: list[tuple[Any, tuple[Any, Any]]] = []
        self.pending_read = False  # a read waits for an entry to be appended for it
        # Leader reads not yet handed to storage: released at the next append (see reads).
        self.held_reads: list[tuple[Any, Any, int | None]] = []
        # Highest read index handed to storage in this role; reads may wait there unanswered.
        self.read_index_high = 0
        self.queued: dict[int, tuple[Any, Priority]] = {}
        self.next_indices: dict[str, int] = {}
        self.match_indices: dict[str, int] = {}
        self.last_applied_indices: dict[str, int] = {}
        self.heartbeat_send_ts: dict[str, int] = {}
        self.heartbeat_reply_ts: dict[str, int] = {}
        self.inflight: dict[str, int] = {}  # append_entries sent per peer, not yet answered
        self.first_current_term_log_index = 0
        # When the armed batch timeout is due (None: no commits waiting for one).
        self.batch_deadline: int | None = None
        self.handover: tuple[str, int, int] | None = None  # (peer node, ref, deadline ms)
        self.handover_lease_state: str = LEASE_UNAFFECTED
        # an InstallSnapshot we are waiting on: (purpose, position, extra)
        self.pending_install: tuple[str, LogPos, Any] | None = None

        self._fx: list[Effect] = []
        self._mailbox: deque[Event] = deque()
        self._started = False

    # -- public entry points -------------------------------------------------------------------

    def start(self, now: int) -> list[Effect]:
        """Enter the initial state (digest §2.2); call once, before any ``handle``."""
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

        The reason is ``not_leader``, or ``("notify_redirect", peer)`` while a handover runs.
        The core must not be used afterwards.
        """
        self._fx = []
        reason: Any = "not_leader"
        if self.handover is not None:
            reason = ("notify_redirect", self.handover[0])
        commit.cancel_pending_and_queued(self, reason)
        return self._finish()

    # -- read-only queries ---------------------------------------------------------------------

    def current_config(self) -> Config:
        """The effective config: the log's newest config if newer than storage's, else storage's."""
        found = self.log.config()
        cached = self.cached_config
        if cached is None:
            return config.make_config() if found is None else found[1]
        if found is not None and found[0] > cached[0]:
            return found[1]
        return cached[1]

    def config_index(self) -> int:
        found = self.log.config()
        cached = self.cached_config
        if cached is None:
            return 0 if found is None else found[0]
        return cached[0] if found is None else max(found[0], cached[0])

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
        return handover.candidates(self)

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
        if type(event) is RaftRpc:
            terms.handle_rpc(self, event)
        else:
            _STATE_MODULES[self.state].handle_event(self, event)

    def dispatch_procedure(self, sender: Identity, payload: Payload) -> None:
        """Hand a pre-processed RPC to the current state's handler."""
        _STATE_MODULES[self.state].handle_rpc(self, sender, payload)

    def goto(self, new: State) -> None:
        """Transition to ``new`` (a repeat when equal) and run its enter function."""
        old = self.state
        if old is not new:
            logger.info("%s becomes %s from %s", self._tag(), new.value, old.value)
        self.state = new
        self._fx.append(StateChanged(old, new))
        if self.metrics is not None:
            self.count(f"{new.value}.enter")
        _STATE_MODULES[new].enter(self, old)

    def follower_or_witness(self) -> State:
        return State.WITNESS if self.is_self_witness() else State.FOLLOWER

    def _initial_state(self) -> State:
        if self.disable_reason is not None:
            return State.DISABLED
        if self.last_applied == 0 or self.cached_config is None:
            return State.STALLED
        if self.is_single_member():
            return State.CANDIDATE
        return self.follower_or_witness()

    # -- effect helpers ------------------------------------------------------------------------

    def emit(self, effect: Effect) -> None:
        self._fx.append(effect)

    def send(self, to: Identity, payload: Payload, term: int | None = None) -> None:
        """Cast an RPC; a cast to ourselves is queued behind the current event instead."""
        rpc = RaftRpc(self.current_term if term is None else term, self.self_id, payload)
        if to == self.self_id:
            self._mailbox.append(rpc)
        else:
            self._fx.append(Send(to, rpc))

    def reply(self, to: Any, value: Any) -> None:
        """Answer a caller; ``None`` means nobody waits (a cast)."""
        if to is not None:
            self._fx.append(Reply(to, value))

    def cancel_commit(self, to: Any, reason: Any, priority: Priority) -> None:
        self._fx.append(CommitCancelled(to, reason, priority))

    def cancel_read(self, to: Any, reason: Any) -> None:
        self._fx.append(ReadCancelled(to, reason))

    def set_timeout(self, kind: TimeoutKind, ms: int) -> None:
        self._fx.append(SetTimeout(kind, ms))

    def election_timeout(self) -> None:
        """Arm a randomized election timeout scaled by the election weight (Raft §5.2)."""
        settings = self.settings
        low = settings.raft_election_timeout_ms
        high = settings.raft_election_timeout_ms_max
        timeout = low + 1 + int(self.rand() * (high - low)) if high > low else low
        weight = settings.raft_election_weight
        if 0 < weight <= ELECTION_MAX_WEIGHT:
            timeout = timeout * ELECTION_MAX_WEIGHT // weight
        else:
            timeout = timeout * ELECTION_MAX_WEIGHT
        self._fx.append(SetTimeout(TimeoutKind.ELECTION, timeout))

    def heartbeat_timeout(self) -> None:
        self._fx.append(SetTimeout(TimeoutKind.HEARTBEAT, self.settings.raft_heartbeat_interval_ms))

    def next_ref(self) -> int:
        self._ref_counter += 1
        return self._ref_counter

    # -- shared predicates ---------------------------------------------------------------------

    def is_self_member(self) -> bool:
        return self.self_id in self.current_config().membership

    def is_self_witness(self) -> bool:
        return self.self_id in self.current_config().witness

    def is_single_member(self) -> bool:
        return config.is_single_member(self.self_id, self.current_config())

    def last_log_pos(self) -> LogPos:
        log = self.log
        last = log.last_index()
        term = log.term(last)
        if term is None:
            raise RaftCoreError(f"log has no term at its last index {last}")
        return LogPos(last, term)

    def candidate_eligible(self) -> bool:
        """May this replica start elections (eligible, a member, non-zero weight)?"""
        settings = self.settings
        return (
            settings.raft_leader_eligible
            and settings.raft_election_weight != 0
            and self.is_self_member()
        )

    # -- logging and metrics -------------------------------------------------------------------

    def _tag(self) -> str:
        return f"Server[{self.table}.{self.partition}@{self.node}, term {self.current_term}]"

    def log_notice(self, message: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s %s " + message, self._tag(), self.state.value, *args)

    def count(self, name: Any) -> None:
        if self.metrics is not None:
            self.metrics.count(("raft", self.table, name))

    def gather(self, name: Any, value: float) -> None:
        if self.metrics is not None:
            self.metrics.gather(("raft", self.table, name), value)

    def __repr__(self) -> str:
        return f"<RaftCore {self.node} {self.state.value} term={self.current_term}>"


__all__ = [
    "LEASE_IN_PROGRESS",
    "LEASE_PENDING_RECONFIRMATION",
    "LEASE_UNAFFECTED",
    "RaftCore",
    "RaftCoreError",
]
