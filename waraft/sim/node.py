"""``SimNode``: one simulated replica: a ``RaftCore`` plus everything its shell would own.

The node runs the core's effects following ``waraft.core.effects``' contract:

* effects run in list order, or — with ``batch_effects`` — the node may hold back the outward
  effects (sends, replies, applies, reads, snapshot requests) of every event handled in one
  simulated step until the end of the step, after all of their persistence (the licence the
  contract gives: persistence first, never the other way round);
* log effects are applied to the ``MemoryLog`` before the next ``handle`` call;
* ``StateChanged`` cancels the armed state timeout, ``SetTimeout`` replaces it;
* ``CommitCancelled`` / ``ReadCancelled`` answer and release the caller's admission slot;
* ``Apply`` goes to the simulated storage, which answers each item's caller itself.

It also plays the acceptor (admission counters: ``commit_queue_full``, ``read_queue_full``,
``apply_queue_full``) and keeps what survives a crash: the last ``PersistState``, the log (when
durable) and storage (when durable).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from waraft.core.effects import (
    AppendLog,
    Apply,
    CancelReads,
    CancelTimeout,
    CommitCancelled,
    InstallSnapshot,
    PersistState,
    ReadCancelled,
    ReadNow,
    Reply,
    RequestSnapshot,
    ResetLog,
    Send,
    SetTimeout,
    StateChanged,
    SubmitRead,
    TrimLog,
    TruncateLog,
)
from waraft.core.events import (
    CommitBatch,
    Event,
    NotifyComplete,
    ReadBatch,
    SnapshotOpened,
    StorageIncomplete,
    Timeout,
)
from waraft.core.replica import BOOTSTRAP_TERM
from waraft.core.rpc import Vote
from waraft.core.sessions import is_register, owned_register
from waraft.core.settings import Settings
from waraft.core.types import DurableState, Entry, Identity, LogPos, Priority, State, TimeoutKind
from waraft.sim.clock import Scheduled
from waraft.sim.invariants import InvariantViolation
from waraft.sim.log import MemoryLog
from waraft.sim.storage import SimStorage

if TYPE_CHECKING:
    from waraft.sim.simulation import Simulation

logger = logging.getLogger(__name__)

# effects that leave the node (held back in batch mode until the step's persistence is done)
_OUTWARD = (
    Send,
    Reply,
    CommitCancelled,
    ReadCancelled,
    Apply,
    SubmitRead,
    ReadNow,
    CancelReads,
    RequestSnapshot,
    InstallSnapshot,
)


class CoreCrash(Exception):
    """The core raised while handling an event (WARaft would restart the partition)."""

    def __init__(self, node: str, event: Any, error: BaseException) -> None:
        super().__init__(f"{node} crashed handling {event!r}: {error!r}")
        self.node = node
        self.event = event
        self.error = error


class EffectContractError(AssertionError):
    """The core emitted effects that break ``waraft.core.effects``' contract."""


class SimNode:
    """One replica. ``core`` is ``None`` while the node is down."""

    def __init__(self, sim: Simulation, node_id: str, identity: Identity, settings: Settings):
        self.sim = sim
        self.id = node_id
        self.identity = identity
        self.settings = settings
        self.log = MemoryLog()
        self.storage = SimStorage(
            identity,
            sim.config.machine,
            self,
            lambda: self.settings.raft_max_pending_applies,
            lambda: self.settings.raft_max_pending_apply_bytes,
        )
        self.durable: DurableState | None = None
        self.core: Any = None
        self.up = False
        self.incarnation = 0  # of the core: every start, a partition restart's too
        # of the node (its process): what the failure detector sees restart; a partition
        # restart (``restart_partition``) keeps it
        self.host_incarnation = 0
        self.rng = random.Random(sim.rng.getrandbits(64))
        self._timer: Scheduled | None = None
        self.timer_kind: TimeoutKind | None = None
        self.timeouts_fired = 0  # state timeouts handled, over every incarnation
        self._storage_tick: Scheduled | None = None
        self.admitted: dict[Any, Any] = {}  # reply handle -> Priority (commit) or "read"
        self.pending: dict[Any, int] = {Priority.HIGH: 0, Priority.LOW: 0, "read": 0}
        self._role: State | None = None  # the state as the effects being run say it is
        self._deferred: list[Any] = []
        # SIGSTOP: the node is up (sockets open) but handles nothing until resumed
        self.paused = False
        self.paused_backlog: list[Event] = []
        self.drop_persistence = False  # a mutation hook: forget PersistState (tests only)
        self.state_changes = 0
        self.accounting_errors: list[str] = []
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            PersistState: self._persist,
            AppendLog: self._append,
            TruncateLog: self._truncate,
            ResetLog: self._reset,
            TrimLog: self._trim,
            Send: self._send,
            Reply: self._reply,
            CommitCancelled: self._commit_cancelled,
            ReadCancelled: self._read_cancelled,
            Apply: self._apply,
            SubmitRead: self._submit_read,
            ReadNow: self._read_now,
            CancelReads: self._cancel_reads,
            SetTimeout: self._set_timeout,
            CancelTimeout: self._cancel_timeout,
            StateChanged: self._state_changed,
            RequestSnapshot: self._request_snapshot,
            InstallSnapshot: self._install_snapshot,
        }

    def __repr__(self) -> str:
        if not self.up:
            return f"<{self.id} down>"
        core = self.core
        return (
            f"<{self.id} {core.state.value} t{core.current_term} commit={core.commit_index} "
            f"applied={self.storage.position.index} "
            f"log={self.log.first_index()}..{self.log.last_index()}>"
        )

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.sim.clock.now

    def start(self, same_host: bool = False) -> None:
        """Start (or restart) the core from what survived: durable state, log, storage.

        ``same_host``: only the partition restarted, its node stayed up (the failure detector
        sees nothing, see ``restart_partition``)."""
        if self.up:
            raise RuntimeError(f"{self.id} is already up")
        sim = self.sim
        self.incarnation += 1
        if not same_host:
            self.host_incarnation += 1
        self.up = True
        position = self.storage.position
        self.log.node_share = self.settings.raft_node_max_retained_bytes
        self.log.open(position)
        try:
            self.core = sim.config.core_factory(
                self_id=self.identity,
                table=sim.config.table,
                partition=sim.config.partition,
                settings=self.settings,
                log=self.log,
                queues=self.storage,
                storage_position=position,
                storage_config=self.storage.config,
                durable=self.durable,
                rand=self.rng.random,
                now=self.now,
                label_fn=sim.config.label_fn,
                storage_label=self.storage.label,
            )
        except Exception as exc:
            raise CoreCrash(self.id, "construction", exc) from exc
        sim.invariants.on_restart(self.id, self.core.current_term, self.core.commit_index)
        sim.touched[self.id] = None
        self._role = None
        try:
            # The server passes the nodes its local partitions named since its process
            # started (``member_nodes``): none on a node's start, every node here on a
            # partition restart.
            peers = [n for n in sim.node_ids if n != self.id] if same_host else []
            effects = self.core.start(self.now, peer_nodes=peers)
        except Exception as exc:
            raise CoreCrash(self.id, "start", exc) from exc
        self.run_effects(effects)

    def crash(self) -> None:
        """Stop abruptly: keep the durable state, the log if durable, storage if durable."""
        if not self.up:
            return
        config = self.sim.config
        self.up = False
        self.core = None
        self._cancel_timer()
        if self._storage_tick is not None:
            self._storage_tick.cancel()
            self._storage_tick = None
        self._deferred.clear()
        self.paused = False
        self.paused_backlog.clear()
        self.admitted.clear()
        self.pending = dict.fromkeys(self.pending, 0)
        if config.durable_storage:
            self.storage.lose_volatile()
        else:
            self.storage.wipe()
        if not config.durable_log:
            self.log.reset(LogPos(0, 0))
        self.sim.invariants.on_down(self.id)
        self.sim.touched.pop(self.id, None)

    def lose_state(self) -> None:
        """The node is down and its durable state file (term, vote, disable reason) is deleted;
        its log and storage stay. It will start as the shell starts it
        (``waraft.partition.server._missing_state``): a log or storage holding an entry of a
        term, bootstrap's included, says the term and vote were lost, so it starts ``disabled`` with
        ``durable_state_missing`` until an operator enables it; otherwise as a new replica
        (no state)."""
        if self.up:
            raise RuntimeError(f"{self.id} must be down to lose its state file")
        held = max(self.log.term(self.log.last_index()) or 0, self.storage.position.term)
        if held < BOOTSTRAP_TERM:
            self.durable = None
        else:
            reason = f"no state file, but the log or storage holds an entry of term {held}"
            self.durable = DurableState(0, None, ("durable_state_missing", reason))
        self.sim.invariants.on_state_lost(self.id)

    # -- events in -------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Hand one event to the core and run its effects (the node must be up)."""
        core = self.core
        if core is None:
            return
        if self.paused:
            self.paused_backlog.append(event)
            return
        self._role = core.state
        try:
            effects = core.handle(event, self.now)
        except Exception as exc:
            raise CoreCrash(self.id, event, exc) from exc
        self.sim.touched[self.id] = None
        self.run_effects(effects)

    def accept_commit(
        self, handle: Any, key: Any, command: Any, priority: Priority, origin: str | None = None
    ) -> bool:
        """The acceptor's commit path: admission, then a one-item ``CommitBatch``. A session
        register is stamped with ``origin`` as its owner, as the client gateway stamps it with
        the sender's authenticated identity (``owned_register``).

        Returns ``False`` (after answering ``handle``) when the commit was refused.
        """
        settings = self.settings
        if is_register(command):
            command = owned_register(command, origin if settings.raft_session_owners else None)
        limit = (
            settings.raft_max_pending_high_priority_commits
            if priority is Priority.HIGH
            else settings.raft_max_pending_low_priority_commits
        )
        if self.pending[priority] >= limit:
            self.sim.reply(handle, ("error", "commit_queue_full"))
            return False
        if self.storage.apply_queue_full():
            self.sim.reply(handle, ("error", "apply_queue_full"))
            return False
        self.admitted[handle] = priority
        self.pending[priority] += 1
        self.handle(CommitBatch([(handle, (key, command))], priority))
        return True

    def accept_read(self, handle: Any, command: Any, min_index: int | None = None) -> bool:
        """The acceptor's strong read path: admission, then a one-item ``ReadBatch``."""
        if self.pending["read"] >= self.settings.raft_max_pending_reads:
            self.sim.reply(handle, ("error", "read_queue_full"))
            return False
        if self.storage.apply_count >= self.settings.raft_max_pending_applies:
            self.sim.reply(handle, ("error", "apply_queue_full"))
            return False
        self.admitted[handle] = "read"
        self.pending["read"] += 1
        self.handle(ReadBatch([(handle, command, min_index)]))
        return True

    def _release(self, handle: Any, kind: Any) -> None:
        if handle is None:
            return
        held = self.admitted.pop(handle, None)
        if held is None:
            # answered twice, or never admitted through the acceptor: note it, don't crash
            if handle not in self.sim.unadmitted_ok:
                self.accounting_errors.append(f"t={self.now} release of unknown {handle!r}")
        else:
            self.pending[held] -= 1
            if held != kind:
                self.accounting_errors.append(
                    f"t={self.now} {handle!r} held {held} released {kind}"
                )

    def held_slots(self) -> list[str]:
        """Each admission slot still held, with where its request waits: in the core
        (pending, appended at an index, a held read), in storage (a read or an apply), or
        ``untracked`` when nothing left would answer it: only that is a leak; the others
        are released when their entry is applied, truncated or covered by a snapshot."""
        waits: dict[Any, str] = {}
        core = self.core
        if core is not None:
            for from_, _ in (*core.pending_high, *core.pending_low):
                waits[from_] = "pending"
            for index, (from_, _) in core.queued.items():
                waits[from_] = f"appended at {index}"
            for from_, _, _ in core.held_reads:
                waits[from_] = "held read"
        storage = self.storage
        for read_index, from_ in storage.waiting_reads():
            waits[from_] = f"storage read at {read_index}"
        for task in storage.tasks:
            if task[0] == "apply":
                waits[task[1].reply_to] = f"storage apply of {task[1].index}"
            elif task[0] == "read_now":
                waits[task[1]] = "storage read"
        return [f"{handle!r} ({waits.get(handle, 'untracked')})" for handle in self.admitted]

    # -- the effects interpreter -----------------------------------------------------------------

    def run_effects(self, effects: list[Any]) -> None:
        dispatch = self._dispatch
        if self.sim.config.batch_effects:
            deferred = self._deferred
            votes = []
            for effect in effects:
                if isinstance(effect, _OUTWARD):
                    deferred.append(effect)
                    if type(effect) is Send:
                        votes.append(effect)
                else:
                    dispatch[type(effect)](effect)
            # the licence moves persistence before sends, so a granted vote must be durable
            # once this event's persistence is done (later events may move the term on)
            for effect in votes:
                self._check_vote_durable(effect)
        else:
            for effect in effects:
                dispatch[type(effect)](effect)

    def flush(self) -> None:
        """End of step: run the held-back outward effects, in order."""
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            dispatch = self._dispatch
            for effect in deferred:
                dispatch[type(effect)](effect)

    # persistence

    def _persist(self, effect: PersistState) -> None:
        self.sim.invariants.on_persist(self.id, effect.state)
        if not self.drop_persistence:
            self.durable = effect.state

    def _append(self, effect: AppendLog) -> None:
        log = self.log
        prev_term = log.term(effect.first_index - 1)
        self.sim.invariants.on_append(self.id, effect.first_index, effect.entries, prev_term)
        log.append(effect.first_index, effect.entries)
        keys = self.sim.appended_keys
        for entry in effect.entries:
            key = entry.key
            if type(key) is tuple and key and key[0] == "c":
                keys.add(key)

    def _truncate(self, effect: TruncateLog) -> None:
        self.sim.invariants.on_truncate(self.id, effect.index, self._role is State.LEADER)
        self.log.truncate(effect.index)

    def _reset(self, effect: ResetLog) -> None:
        self.sim.invariants.on_reset(self.id, effect.position, self._role is State.LEADER)
        self.log.reset(effect.position)

    def _trim(self, effect: TrimLog) -> None:
        config = self.sim.config
        if config.trim_probability < 1.0 and self.rng.random() >= config.trim_probability:
            return  # best effort: this one is skipped
        # never trim past what storage holds: a restart must find storage's position in the log
        index = min(effect.index, self.storage.position.index)
        if index < effect.index:
            self.sim.stats["trim_clamped"] += 1
        self.log.trim(index, strip=config.strip_on_trim)

    # outward

    def _check_vote_durable(self, effect: Send) -> None:
        """A granted vote may leave only once it is durable (term and vote persisted)."""
        rpc = effect.rpc
        payload = rpc.payload
        if type(payload) is Vote and payload.vote and not self.drop_persistence:
            durable = self.durable
            if (
                durable is None
                or durable.current_term != rpc.term
                or durable.voted_for != effect.to.node
            ):
                raise InvariantViolation(
                    "vote_durability",
                    f"{self.id} granted a vote to {effect.to.node} in term {rpc.term} "
                    f"with persisted state {durable}",
                )

    def _send(self, effect: Send) -> None:
        if not self.sim.config.batch_effects:
            self._check_vote_durable(effect)  # in list order: what was persisted so far
        payload = effect.rpc.payload
        if type(payload) is Vote and payload.vote:
            self.sim.invariants.on_vote(self.id, self.incarnation, effect.rpc.term, effect.to.node)
        self.sim.send(self.id, effect.to.node, effect.rpc)

    def _reply(self, effect: Reply) -> None:
        self.sim.reply(effect.to, effect.value)

    def _commit_cancelled(self, effect: CommitCancelled) -> None:
        self._release(effect.to, effect.priority)
        self.sim.reply(effect.to, ("error", effect.reason))

    def _read_cancelled(self, effect: ReadCancelled) -> None:
        self._release(effect.to, "read")
        self.sim.reply(effect.to, ("error", effect.reason))

    def _apply(self, effect: Apply) -> None:
        core = self.core
        commit_index = core.commit_index if core is not None else None
        log = self.log
        for item in effect.items:
            if commit_index is not None and item.index > commit_index:
                raise EffectContractError(
                    f"{self.id} applies {item.index} beyond its commit index {commit_index}"
                )
            mine = log.get(item.index)
            if mine is not None and mine != item.entry and mine.command is not None:
                raise EffectContractError(
                    f"{self.id} applies {item.entry} at {item.index} but its log has {mine}"
                )
        self.storage.enqueue_apply(effect.items)
        self._kick_storage()

    def _submit_read(self, effect: SubmitRead) -> None:
        self.storage.submit_read(effect.read_index, effect.from_, effect.command)

    def _read_now(self, effect: ReadNow) -> None:
        self.storage.enqueue_read_now(effect.from_, effect.command)
        self._kick_storage()

    def _cancel_reads(self, effect: CancelReads) -> None:
        self.storage.cancel_reads(effect.reason)

    def _request_snapshot(self, effect: RequestSnapshot) -> None:
        self.sim.catchup.request(self.id, effect.peer.node, effect.witness)

    def _install_snapshot(self, effect: InstallSnapshot) -> None:
        self.storage.enqueue(("install", effect))
        self._kick_storage()

    # timers

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.timer_kind = None

    def _set_timeout(self, effect: SetTimeout) -> None:
        self._cancel_timer()
        if effect.ms < 0:
            raise EffectContractError(f"{self.id} armed a negative timeout {effect}")
        self.timer_kind = effect.kind
        self._timer = self.sim.clock.schedule(
            effect.ms,
            self._fire_timer,
            self.incarnation,
            effect.kind,
            target=self.id,
            label=f"timeout {effect.kind.value}",
        )

    def _cancel_timeout(self, effect: CancelTimeout) -> None:
        self._cancel_timer()

    def pause(self) -> None:
        """SIGSTOP: keep everything, handle nothing (events wait for ``resume``)."""
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: handle what arrived while paused, in order."""
        self.paused = False
        backlog, self.paused_backlog = self.paused_backlog, []
        for event in backlog:
            self.handle(event)

    def _fire_timer(self, incarnation: int, kind: TimeoutKind) -> None:
        if incarnation != self.incarnation or not self.up:
            return
        self._timer = None
        self.timer_kind = None
        self.timeouts_fired += 1
        self.handle(Timeout(kind))

    def _state_changed(self, effect: StateChanged) -> None:
        self._cancel_timer()
        self._role = effect.new
        self.state_changes += 1
        self.sim.on_state_changed(self, effect)

    # -- storage ---------------------------------------------------------------------------------

    def _kick_storage(self) -> None:
        if self._storage_tick is None and self.up:
            low, high = self.sim.slow_storage.get(self.id, self.sim.config.apply_delay_ms)
            delay = low if low >= high else self.rng.randint(low, high)
            self._storage_tick = self.sim.clock.schedule(
                delay, self._storage_run, self.incarnation, target=self.id, label="storage"
            )

    def _storage_run(self, incarnation: int) -> None:
        if incarnation != self.incarnation or not self.up:
            return
        self._storage_tick = None
        storage = self.storage
        tasks = storage.tasks
        budget = self.sim.config.apply_batch
        applied = False
        while tasks and budget > 0:
            budget -= 1
            task = tasks.popleft()
            kind = task[0]
            if kind == "apply":
                storage.apply_item(task[1], task[2])
                applied = True
            elif kind == "read_now":
                storage.read_now(task[1], task[2])
            elif kind == "install":
                self._do_install(task[1])
            else:
                raise AssertionError(f"unknown storage task {kind}")
        if tasks:
            self._kick_storage()
        elif (
            applied
            and storage.apply_count == 0
            and self.settings.raft_storage_notify_complete
            and self.core is not None
        ):
            self.sim.clock.schedule(
                0, self._notify_complete, self.incarnation, target=self.id, label="notify_complete"
            )
        self.sim.touched[self.id] = None

    def _notify_complete(self, incarnation: int) -> None:
        if incarnation == self.incarnation and self.up:
            self.handle(NotifyComplete())

    def _do_install(self, effect: InstallSnapshot) -> None:
        storage = self.storage
        error: Any = None
        if effect.purpose == "transfer":
            snapshot = self.sim.catchup.snapshots.get(effect.root or "")
            error = (
                "not_found"
                if snapshot is None
                else storage.open_snapshot(snapshot, effect.position)
            )
        else:
            snapshot = storage.make_empty_snapshot(effect.position, effect.config, effect.data)
            error = storage.open_snapshot(snapshot, effect.position)
        if error is None and storage.is_data_replica():
            # recomputed from what was loaded: a lossy restore shows, a copied digest hid it
            self.sim.invariants.on_state(self.id, storage.position.index, storage.state_digest())
        opened = SnapshotOpened(
            from_=effect.from_,
            purpose=effect.purpose,
            position=effect.position,
            error=error,
            config=storage.config if error is None else None,
            label=storage.label if error is None else None,
        )
        self.sim.clock.schedule(
            0,
            self._snapshot_opened,
            self.incarnation,
            opened,
            target=self.id,
            label="snapshot_opened",
        )

    def _snapshot_opened(self, incarnation: int, event: SnapshotOpened) -> None:
        if incarnation == self.incarnation and self.up:
            self.handle(event)

    # StorageHost

    def storage_reply(self, to: Any, value: Any, *, commit: Priority | None, read: bool) -> None:
        if to is None:
            return
        if read:
            self._release(to, "read")
        elif commit is not None:
            self._release(to, commit)
        self.sim.reply(to, value)

    def storage_incomplete(self, reason: str) -> None:
        self.sim.clock.schedule(
            0,
            self._storage_incomplete,
            self.incarnation,
            reason,
            target=self.id,
            label="storage_incomplete",
        )

    def _storage_incomplete(self, incarnation: int, reason: str) -> None:
        if incarnation == self.incarnation and self.up:
            self.handle(StorageIncomplete(reason))

    def storage_applied(self, index: int, entry: Entry, witness: bool) -> None:
        storage = self.storage
        # after every entry: a divergence can heal within a few (the key written over)
        digest = storage.state_digest() if storage.is_data_replica() else None
        self.sim.invariants.on_apply(self.id, index, entry, digest)
