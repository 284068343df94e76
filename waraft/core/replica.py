"""``Replica``: one replica's Raft variables and the helpers every state handler uses.

The state modules (``stalled``, ``follower``, ``candidate``, ``leader``, ``witness``,
``disabled``) and the shared rule modules (``terms``, ``replication``, ``commit``, ...) see a
replica through this class only. The engine that owns the state table and drives events
through it is :class:`waraft.core.server.RaftCore`, a subclass; keeping the table out of here
means no state module imports the module that imports every state.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from waraft.core import config
from waraft.core.effects import (
    CommitCancelled,
    Effect,
    ReadCancelled,
    Reply,
    Send,
    SetTimeout,
)
from waraft.core.errors import RaftCoreError
from waraft.core.events import Event
from waraft.core.log import LogOverlay
from waraft.core.log_view import LogView, QueueView
from waraft.core.metrics import Metrics
from waraft.core.rpc import Payload, RaftRpc
from waraft.core.settings import ELECTION_MAX_WEIGHT, Settings
from waraft.core.types import (
    LEASE_UNAFFECTED,
    Config,
    DurableState,
    ElectionType,
    Identity,
    LogPos,
    Priority,
    State,
    TimeoutKind,
)

logger = logging.getLogger("waraft.core.server")

BOOTSTRAP_TERM = 1
"""Bootstrap's term, which a replica stores before bootstrap's data lands (``admin.bootstrap``):
so any entry, of this term or later, held without a durable term at least as high proves the
term was lost. (Builds before that stored it after the data, so data at this term with no
state file was taken for a crash during bootstrap; a replica that voted in a later term
before any entry of it came, then lost its file, looked new and could vote again.)"""


def term_lost(durable_term: int | None, last_log: LogPos, storage: LogPos) -> bool:
    """Whether a replica starting with ``durable_term`` (None: no durable state given) over a
    log ending at ``last_log`` and storage at ``storage`` has lost its term and vote: its
    term is persisted before any entry of it lands (see ``term_recovery``)."""
    held = max(last_log.term, storage.term)
    return durable_term is not None and held >= BOOTSTRAP_TERM and durable_term < held


class Replica:
    """One replica's Raft state; the engine (``RaftCore``) supplies the three dispatch hooks."""

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
        # The caller of a promote without force, answered when its election ends.
        self.promotion: Any = None
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
        # Read lease (``replication.credit_lease``): per peer, the append_entries sent and not
        # yet answered as (prev index, sent at), and the send time of the latest one answered.
        self.lease_sends: dict[str, deque[tuple[int, int]]] = {}
        self.lease_acks: dict[str, int] = {}
        self.inflight: dict[str, int] = {}  # append_entries sent per peer, not yet answered
        # Entries sent per peer and not yet acknowledged: (last index of a message, its
        # estimated bytes) in send order, and their total (raft_max_bytes_in_flight).
        self.inflight_sent: dict[str, deque[tuple[int, int]]] = {}
        self.inflight_bytes: dict[str, int] = {}
        # ((prev index, count, last term, witness), bytes) of the entries last sent: the
        # next peer of the round is usually sent the same ones (replication._sent_size).
        self.sent_size_memo: tuple[tuple[int, int, int, bool], int] | None = None
        self.first_current_term_log_index = 0
        # When the armed batch timeout is due (None: no commits waiting for one).
        self.batch_deadline: int | None = None
        self.handover: tuple[str, int, int] | None = None  # (peer node, ref, deadline ms)
        self.handover_lease_state: str = LEASE_UNAFFECTED
        # an InstallSnapshot we are waiting on: (purpose, position, extra)
        self.pending_install: tuple[str, LogPos, Any] | None = None
        # ``stalled`` entered by ``enable`` with data: it may leave when no leader comes.
        self.reenabled_wait = False
        # Its term and vote were lost: it takes no part until every voter told its term
        # (``term_recovery``), the terms heard so far by node.
        last = log.last_index()
        self.term_lost = term_lost(
            None if durable is None else durable.current_term,
            LogPos(last, log.term(last) or 0),
            storage_position,
        )
        self.terms_heard: dict[str, int] = {}
        # quiescence (see ``quiesce``): nodes the failure detector reports down, whether this
        # replica is quiescent, the leader's last non-idle moment and its quiesce-round acks
        self.down_nodes: set[str] = set()
        self.quiescent = False
        # Candidacies since this replica started (status, ``waraft_partition_elections_total``).
        self.elections_started = 0
        self.quiet_since = now
        self.quiesce_acks: set[str] = set()
        self.quiesce_woken_ts: int | None = None  # a leader's last wake (check-quorum grace)
        # a follower woken only by its leader's node going down (undone if it comes back)
        self.woken_by_leader_down = False

        self._fx: list[Effect] = []
        self._mailbox: deque[Event] = deque()
        self._started = False

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

    # -- engine hooks (RaftCore implements them) ------------------------------------------------

    def dispatch(self, event: Event) -> None:
        """Handle one event in the current state (RPCs go through term pre-processing)."""
        raise NotImplementedError

    def dispatch_procedure(self, sender: Identity, payload: Payload) -> None:
        """Hand a pre-processed RPC to the current state's handler."""
        raise NotImplementedError

    def goto(self, new: State) -> None:
        """Transition to ``new`` (a repeat when equal) and run its enter function."""
        raise NotImplementedError

    def follower_or_witness(self) -> State:
        return State.WITNESS if self.is_self_witness() else State.FOLLOWER

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

    def cancel_commit(
        self, to: Any, reason: Any, priority: Priority, size: int | None = None
    ) -> None:
        """Answer a commit ``("error", reason)``; ``size``: see ``CommitCancelled``."""
        self._fx.append(CommitCancelled(to, reason, priority, size))

    def cancel_read(self, to: Any, reason: Any) -> None:
        self._fx.append(ReadCancelled(to, reason))

    def set_timeout(self, kind: TimeoutKind, ms: int) -> None:
        self._fx.append(SetTimeout(kind, ms))

    def election_timeout(self, timeout: int | None = None) -> None:
        """Arm a randomized election timeout scaled by the election weight (Raft §5.2);
        ``timeout``: an unscaled value chosen by the caller instead of the random draw."""
        settings = self.settings
        low = settings.raft_election_timeout_ms
        high = settings.raft_election_timeout_ms_max
        if timeout is None:
            timeout = low + 1 + int(self.rand() * (high - low)) if high > low else low
        weight = settings.raft_election_weight
        if 0 < weight <= ELECTION_MAX_WEIGHT:
            timeout = timeout * ELECTION_MAX_WEIGHT // weight
        else:
            timeout = timeout * ELECTION_MAX_WEIGHT
        self._fx.append(SetTimeout(TimeoutKind.ELECTION, timeout))

    def heartbeat_timeout(self) -> None:
        self._fx.append(SetTimeout(TimeoutKind.HEARTBEAT, self.settings.raft_heartbeat_interval_ms))

    def leader_timeout(self) -> None:
        """Arm a leader's heartbeat timer after a round or an answer: at the normal interval,
        or the slow one when quiescence's rules would hold a round back then anyway
        (``waraft.core.quiesce.arm_leader_timer``, which the engine supplies)."""
        raise NotImplementedError

    def next_ref(self) -> int:
        self._ref_counter += 1
        return self._ref_counter

    # -- shared predicates ---------------------------------------------------------------------

    def is_self_member(self) -> bool:
        return self.self_id in self.current_config().membership

    def is_self_witness(self) -> bool:
        return self.self_id in self.current_config().witness

    def holds_data(self) -> bool:
        """Whether this replica has applied data and a config: what lets it start as a
        follower (or a single member's candidate) rather than ``stalled``, after a restart or
        a re-enable that no leader answers."""
        return self.last_applied > 0 and self.cached_config is not None

    def state_with_data(self) -> State:
        """Where a replica that ``holds_data`` starts: a single member elects itself, the
        others follow (or witness)."""
        return State.CANDIDATE if self.is_single_member() else self.follower_or_witness()

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

    def log_debug(self, message: str, *args: Any) -> None:
        """For events as frequent as the traffic (quiescence), not worth an INFO line each."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s " + message, self._tag(), self.state.value, *args)

    def count(self, name: Any) -> None:
        if self.metrics is not None:
            self.metrics.count(("raft", self.table, name))

    def gather(self, name: Any, value: float) -> None:
        if self.metrics is not None:
            self.metrics.gather(("raft", self.table, name), value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node} {self.state.value} term={self.current_term}>"


__all__ = ["Replica"]
