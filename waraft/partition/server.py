"""A partition's Raft server: the actor around the pure core, and its public API
(WARaft's ``wa_raft_server``).

The protocol lives in ``waraft.core`` (``RaftCore``: events in, effects out). This module is the
thin shell that feeds it events — RPCs from peers, commands from the acceptor, admin calls, state
timeouts — and runs its effects:

* **Persistence first.** Log writes go straight to the log provider (appends) or through the log
  actor (truncate, reset, trim), term/vote/disable-reason changes are written and fsynced before
  anything after them. Sends, replies, applies and read submissions wait in an outbox.
* **Group commit.** The shell keeps handling queued mailbox messages before it flushes; a flush
  does one ``sync()`` of the log (one fsync for a durable log) and then empties the outbox. So a
  burst of commits or AppendEntries costs one fsync, and nothing that depends on those writes
  leaves the process before they are durable.
* **One message per batch.** A commit batch becomes one ``AppendLog``, one message per peer (RPCs
  to the same peer in a flush travel together) and one apply message to storage.

Every API function takes the server as a registered name (``raft_server_<table>_<partition>``), a
pid or a ``(name, node)`` address.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from waraft import distribution as dist
from waraft import otp, storage
from waraft.core import config as core_config
from waraft.core import events
from waraft.core.effects import (
    AppendLog,
    Apply,
    ApplyItem,
    CancelReads,
    CancelTimeout,
    CommitCancelled,
    Effect,
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
from waraft.core.replica import BOOTSTRAP_TERM
from waraft.core.rpc import RaftRpc, RpcDecodeError, from_wire, short_repr, to_wire
from waraft.core.server import RaftCore
from waraft.core.types import (
    Config,
    DurableState,
    Identity,
    LogPos,
    Priority,
    State,
    is_config_command,
)
from waraft.distribution import nodeid, policy
from waraft.partition import durable_state, heartbeats
from waraft.services import codec, env, info, metrics
from waraft.services.label import label_function
from waraft.services.logthrottle import LogThrottle
from waraft.services.options import RaftOptions
from waraft.services.queues import command_bytes

logger = logging.getLogger(__name__)

# What a peer sends that no server can use (a malformed RPC, an unknown cast or call) is
# dropped and logged at most once a second across the node's servers: a peer with a bug
# (or a hostile one) could otherwise send a log line per message.
_UNEXPECTED_CAST_LOG = LogThrottle()
_UNKNOWN_CALL_LOG = LogThrottle()
_MALFORMED_RPC_LOG = LogThrottle()

DEFAULT_TIMEOUT = 10.0  # raft_rpc_call_timeout, seconds
STORAGE_TIMEOUT = 60.0  # raft_storage_call_timeout, seconds
FLUSH_EVERY = 64  # events handled before a flush even when the mailbox never empties
SETTINGS_REFRESH_MS = 1000  # WARaft reads settings live; we re-resolve them this often
ENTRY_SIZE_ESTIMATE = 64  # the least apply-queue bytes counted for an entry

make_config = core_config.make_config

# Nodes named in any local partition's config, per local node id: the nodes whose liveness
# the servers need (``member_nodes``). Grow-only and replaced whole on a change, so readers
# (the distribution's liveness thread) take no lock.
_member_nodes: dict[str, frozenset[str]] = {}
_member_nodes_lock = threading.Lock()


# The nodes the distribution last reported down, per local node id, whether or not a local
# config named them then (``note_liveness``; the oldest dropped past ``MAX_DOWN_NODES``, as
# every departed CLI or client node stays in it). Reports are transitions, and they reach only
# the servers whose config named the node at the time: a server that names a node for the
# first time (it starts, or a config change adds it) reads the node's last report here.
_down_nodes: dict[str, dict[str, None]] = {}
MAX_DOWN_NODES: Final = 1024


def note_liveness(local_node: str, node: str, up: bool) -> None:
    """Record a liveness report of ``node`` on ``local_node`` (the distribution's liveness
    thread, before the report is fanned out to the servers)."""
    with _member_nodes_lock:
        down = _down_nodes.setdefault(local_node, {})
        down.pop(node, None)
        if not up:
            down[node] = None
            if len(down) > MAX_DOWN_NODES:
                del down[next(iter(down))]


def reported_down(local_node: str, nodes: frozenset[str]) -> list[str]:
    """Those of ``nodes`` whose last report on ``local_node`` said down."""
    down = _down_nodes.get(local_node)
    if not down:
        return []
    return [node for node in nodes if node in down]


_SYNC_LIVENESS: Final = ("sync_liveness",)


def _config_nodes(cfg: Config) -> frozenset[str]:
    """Every node a config names (participants, members, witnesses)."""
    return frozenset(p.node for p in cfg.participants + cfg.membership + cfg.witness)


def member_nodes(local_node: str) -> frozenset[str]:
    """Every node that has been a participant of a partition config on ``local_node`` since
    it started (never shrinks: a node that left one config may still be in another's).

    A node outside it (a CLI or client node that connected and went away) concerns none of
    the local servers: ``waraft.partition.app`` sends its up/down reports to nobody instead
    of waking every server (at 10,000 partitions per node one ``waraft status`` cost each
    node 20,000 server steps: one for its client node coming up, one for it going down)."""
    return _member_nodes.get(local_node, frozenset())


def _note_member_nodes(local_node: str, nodes: frozenset[str]) -> None:
    known = _member_nodes.get(local_node, frozenset())
    if nodes <= known:
        return
    with _member_nodes_lock:
        _member_nodes[local_node] = _member_nodes.get(local_node, frozenset()) | nodes


def _missing_state(name: str, log_last: LogPos, applied: LogPos) -> DurableState | None:
    """``None`` for a new replica; a disabled state when the term and vote are gone.

    A replica holding any entry stored its term (and any vote) before that entry reached its
    log or storage (bootstrap too stores its term before its data lands), so with no state
    file the file was deleted: starting with term 0 and no vote could let it vote twice in a
    term it already voted in (``waraft.core.term_recovery``)."""
    term = max(log_last.term, applied.term)
    if term < BOOTSTRAP_TERM:
        return None
    reason = (
        f"no state file, but the log or storage holds an entry of term {term}: the term and "
        "vote were lost (the file was deleted)"
    )
    logger.error("%s: durable state missing, starting disabled: %s", name, reason)
    return DurableState(0, None, ("durable_state_missing", reason))


@dataclass(frozen=True, slots=True)
class _PendingInstall:
    """The install storage is running for the core (``RaftServer._install_snapshot``)."""

    token: otp.Ref
    effect: InstallSnapshot
    temp_dir: str | None  # bootstrap's empty snapshot, removed once storage answered


@dataclass(frozen=True, slots=True)
class _Installed:
    """Storage's answer to an install, as the server receives it: ``ok`` False when the
    request failed (``value`` is then the exit reason), else ``value`` is storage's answer."""

    token: otp.Ref
    ok: bool
    value: Any


def _opened_failed(effect: InstallSnapshot, result: Any) -> events.SnapshotOpened:
    """The ``SnapshotOpened`` of an install that storage refused with ``result``."""
    error = result[1] if isinstance(result, tuple) and len(result) == 2 else result
    return events.SnapshotOpened(effect.from_, effect.purpose, effect.position, error)


def _bootstrap_dir(database: str, position: LogPos) -> str:
    """A fresh directory under ``database`` for bootstrap's empty snapshot (file work: run
    through ``otp.blocking``, off the schedulers)."""
    os.makedirs(database, exist_ok=True)
    return tempfile.mkdtemp(prefix=storage.bootstrap_prefix(position), dir=database)


NAME_PREFIX: Final = "raft_server_"


def default_name(table: str, partition: int) -> str:
    """``raft_server_<table>_<partition>``."""
    return f"{NAME_PREFIX}{table}_{partition}"


def _coalesce_settings(application: Any) -> int:
    """The coalescing window in ms, or 0 when heartbeats are not coalesced."""
    if not env.app_setting(application, "raft_coalesced_heartbeats"):
        return 0
    return max(1, int(env.app_setting(application, "raft_coalesced_heartbeat_window_ms")))


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _entry_size(entry: Any) -> int:
    """Apply-queue bytes of an entry: its command's estimated payload (strings and bytes
    inside tuples count, so ``raft_max_pending_apply_bytes`` bounds real writes) plus 16."""
    return _apply_bytes(command_bytes(entry.command))


def _apply_bytes(command_estimate: int) -> int:
    """``_entry_size`` from the command's ``command_bytes`` (when the caller has it already)."""
    return max(ENTRY_SIZE_ESTIMATE, 16 + command_estimate)


STALLED_SYNC_WAIT = 0.05
"""Seconds a flush waits on a log whose writes are stalled (a full disk) before it holds the
flush back and lets the server go on handling messages."""
STALLED_RETRY_MS = 100
"""How often a held-back flush retries the log's sync."""

# Effects that never depend on the log writes of their flush: they may leave while the log's
# sync is stalled. Errors (cancelled commits and reads) carry no claim about the log; ReadNow
# reads storage as it is (a write whose apply is held back was acknowledged to nobody); a
# SubmitRead waits in storage until it has applied far enough.
_NOT_AFTER_SYNC = (CommitCancelled, ReadCancelled, CancelReads, ReadNow, SubmitRead)


class RaftServer(otp.StateMachine):
    """The actor that runs one partition's ``RaftCore``."""

    trap_exit = True

    # -- lifecycle ------------------------------------------------------------------------------

    def init(self, options: RaftOptions) -> None:
        self.options = options
        self.name = options.server_name
        self.table = options.table
        self.partition = options.partition
        self.self_id = options.self_id
        self.queues = options.queues
        self._settings_at = _now_ms()
        settings = env.settings_for(options.application, options.table)
        self.queues.settings = settings
        self._local_nodes = otp.node.local_nodes
        self._outbox: list[Effect] = []
        self._events_since_flush = 0
        self._log_dirty = False
        self._log_stalled = False  # the last flush found the log's writes stalled
        self._sync_retry_armed = False
        # Term, vote or disable reason the core moved to that a full disk kept off disk:
        # nothing that depends on it leaves until it is stored (see ``_persist_state``).
        self._state_pending: DurableState | None = None
        self._state_retry_at = 0.0
        self._internal: deque[Any] = deque()
        self._install: _PendingInstall | None = None  # see _install_snapshot
        # A state timeout an event set whose timer is armed at the next flush (its deadline
        # and event are already the state machine's: ``defer_state_timeout``).
        self._timeout_unarmed = False
        self._published: tuple[Any, ...] | None = None
        self._published_flags: tuple[Any, ...] | None = None
        self._participants: tuple[Identity, ...] | None = None  # last noted in member_nodes
        self._metrics = metrics.get()
        self._coalesce = _coalesce_settings(options.application)
        self.dropped_nonmember = 0
        allow_remote(self.name)

        position: LogPos = otp.call(options.storage_name, ("open",), STORAGE_TIMEOUT)
        self.log, log_corruption = otp.call(options.log_name, ("open", position), None)
        storage_config = otp.call(options.storage_name, ("config",), STORAGE_TIMEOUT)
        label = otp.call(options.storage_name, ("label",), STORAGE_TIMEOUT)
        # A provider that found its data damaged emptied it (position 0, no config): the core
        # starts stalled, takes no part, and a snapshot from the leader repairs it.
        self.storage_quarantine: str | None = otp.call(
            options.storage_name, ("quarantine",), STORAGE_TIMEOUT
        )
        if self.storage_quarantine is not None:
            logger.error(
                "%s: storage quarantined, stalled until a snapshot repairs it: %s",
                self.name,
                self.storage_quarantine,
            )
        durable = self._load_durable_state()
        if durable is None:
            durable = _missing_state(self.name, self.log.last_position(), position)
        if log_corruption is not None:
            # The log actor quarantined a corrupt log: never serve or vote on it (not persisted,
            # so the reason disappears once the data directory is replaced).
            term = 0 if durable is None else durable.current_term
            voted = None if durable is None else durable.voted_for
            durable = DurableState(term, voted, ("log_corruption", log_corruption))
        label_fn = label_function(options.label_module)
        self.core = RaftCore(
            self.self_id,
            self.table,
            self.partition,
            settings,
            self.log,
            self.queues,
            position,
            None if storage_config is None else (storage_config[0].index, storage_config[1]),
            durable,
            random.Random().random,
            _now_ms(),
            label_fn=label_fn,
            storage_label=label,
            metrics=self._metrics,
        )
        # A replica that lost its config announces its start to the nodes the local
        # partitions name (kept across partition restarts): see ``quiesce.announce``.
        self._run(self.core.start(_now_ms(), member_nodes(self.self_id.node)))
        # The first flush syncs, whatever the core did: a log reopened after its previous
        # actor closed it on a stalled disk holds entries that are not durable yet, and
        # nothing may be acknowledged on their account before they are.
        self._log_dirty = True
        self._flush()

    def _load_durable_state(self) -> DurableState | None:
        try:
            # A file read: on the node's I/O threads, as ``store`` and ``sync`` are.
            loaded: DurableState | None = otp.blocking(durable_state.load, self.options.database)
            return loaded
        except durable_state.DurableStateError as exc:
            # A replica that cannot trust its term and vote must not vote or lead: come up
            # disabled with the reason (the corrupt file stays for inspection; ``enable``
            # starts afresh as a stalled replica).
            logger.error("%s: durable state not trusted, starting disabled: %s", self.name, exc)
            return DurableState(0, None, ("durable_state_error", str(exc)))

    def terminate(self, reason: Any) -> None:
        super().terminate(reason)
        core = getattr(self, "core", None)
        if core is not None:
            try:
                self._run(core.terminate_effects())
                self._flush()
            except Exception:
                logger.exception("%s: cancelling pending requests failed", self.name)
            try:
                # Belt and braces only: every store was fsynced. A failure is not retried
                # and trusted: ``sync`` marks the state for storing again at the next load.
                otp.blocking(durable_state.sync, self.options.database)
            except OSError as exc:
                logger.warning("%s: fsync of the durable state failed: %s", self.name, exc)
        info.clear(self.table, self.partition, self.name)
        logger.info("%s terminating: %r", self.name, reason)

    # -- mailbox --------------------------------------------------------------------------------

    def handle_cast(self, msg: Any) -> None:
        cls = type(msg)
        if cls is RaftRpc or cls in _CAST_EVENTS:
            self._step(msg)
        elif cls is events.AdjustConfig:  # the acceptor's
            self._adjust_config(msg)
        elif (
            cls is tuple
            and len(msg) == 2
            and msg[0] == "rpcs"
            and isinstance(msg[1], (list, tuple))
        ):
            members = core_config.participants(self.core.current_config())
            for wire in msg[1]:
                rpc = self._decode_rpc(wire)
                if rpc is not None and self._from_member(rpc, members):
                    self._step(rpc)
        elif msg == _SYNC_LIVENESS:
            self._sync_liveness()
        elif cls is _Installed:  # never from the wire: no codec builds one
            self._snapshot_installed(msg)
        elif cls is tuple and msg and msg[0] == "notify_complete":
            self._step(events.NotifyComplete())
        elif cls is tuple and len(msg) == 2 and msg[0] == "storage_incomplete":
            self._step(events.StorageIncomplete(str(msg[1])))
        elif cls is tuple and len(msg) == 2 and msg[0] == "storage_failed":
            # Storage cannot apply a committed entry (see StorageServer._apply_failed).
            self._step(events.Disable(None, ("storage_failed", str(msg[1]))))
        elif cls is tuple and msg and msg[0] == "handover" and _peer_arg(msg):
            self._step(events.HandoverRequest(None, msg[1] if len(msg) > 1 else None))
        else:
            if count := _UNEXPECTED_CAST_LOG.ready():
                logger.warning(
                    "dropped %d unexpected cast(s) (latest: %s, %s)",
                    count,
                    self.name,
                    short_repr(msg),
                )
        self._maybe_flush()

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        kind = request[0] if isinstance(request, tuple) and request else request
        handler = _CALLS.get(kind)
        if handler is None:
            if count := _UNKNOWN_CALL_LOG.ready():
                logger.warning(
                    "refused %d unknown command(s) (latest: %s, %s)",
                    count,
                    self.name,
                    short_repr(request),
                )
            return ("error", "unknown_command")
        result = handler(self, request, from_)
        self._maybe_flush()
        return result

    def handle_state_timeout(self, event: Any) -> None:
        self._refresh_settings()
        self._step(events.Timeout(event))
        self._maybe_flush()

    def _dispatch_info(self, msg: Any) -> None:
        super()._dispatch_info(msg)
        # The state machine drops a state timeout that was cancelled after it was queued
        # without calling any handler here. When it is the last message behind one whose
        # flush was deferred (more messages were waiting), that flush must still happen: the
        # outbox (a vote, an append response) and the timer would otherwise wait for the
        # next message, which can be an election timeout away. Found at 1000 partitions:
        # one election in six waited 5-7 s for a vote sent at once.
        self._maybe_flush()

    def handle_info(self, msg: Any) -> None:
        if msg == ("log_sync_retry",):
            self._sync_retry_armed = False  # _maybe_flush retries: the log is still dirty
        elif not (isinstance(msg, tuple) and msg and msg[0] == "EXIT"):
            # Linked helpers' exits are the supervisor's business; anything else is noise.
            logger.debug("%s dropped message %s", self.name, short_repr(msg))
        self._maybe_flush()

    def _from_member(self, rpc: RaftRpc, members: tuple[Identity, ...]) -> bool:
        """Whether a wire RPC may reach the core: its sender must take part in the effective
        config (``members`` are its participants: the voting members and the non-voting ones,
        whose answers to the leader's ``append_entries`` were dropped here, so a participant
        added over the wire was never caught up; the core still ignores a non-member's vote
        requests). A replica that knows no config yet (stalled, waiting to be added) takes
        RPCs from anyone: that is how the leader that adds it first reaches it. Dropped RPCs
        are counted (``rpc_dropped_nonmember`` in the status and in the metrics), so a forged
        ``request_vote`` or ``append_entries`` from outside the cluster changes nothing."""
        if not members or rpc.sender in members:
            return True
        self.dropped_nonmember += 1
        self._metrics.count(("raft", "rpc_dropped_nonmember"))
        if self.dropped_nonmember & (self.dropped_nonmember - 1) == 0:  # 1, 2, 4, 8, ... logged
            logger.warning(
                "%s dropped %d RPC(s) from non-members (last: %s from %s)",
                self.name,
                self.dropped_nonmember,
                type(rpc.payload).__name__,
                short_repr(rpc.sender),
            )
        return False

    def _decode_rpc(self, wire: Any) -> RaftRpc | None:
        try:
            return from_wire(wire, self.name)
        except RpcDecodeError as exc:
            if count := _MALFORMED_RPC_LOG.ready():
                logger.warning(
                    "dropped %d malformed RPC(s) (latest: %s, %s)", count, self.name, exc
                )
            return None

    # -- stepping the core ----------------------------------------------------------------------

    def _step(self, event: Any) -> None:
        """Hand ``event`` to the core and run its effects."""
        self._run(self.core.handle(event, _now_ms()))
        while self._internal:
            self._run(self.core.handle(self._internal.popleft(), _now_ms()))
        self._events_since_flush += 1

    def _maybe_flush(self) -> None:
        """Run at the end of every handler. Group commit: while more messages wait, keep
        taking them before paying for a sync and the sends (at most ``FLUSH_EVERY`` events)."""
        if (
            self._outbox
            or self._log_dirty
            or self._timeout_unarmed
            or self._state_pending is not None
        ):
            if self._events_since_flush >= FLUSH_EVERY or self.actor_inbox.empty():
                self._flush()
        elif self.actor_inbox.empty():
            self._publish_status()

    def _run(self, effects: list[Effect]) -> None:
        """Persistence and timers now; everything that leaves the actor waits in the outbox."""
        immediate = _IMMEDIATE
        outbox = self._outbox
        for effect in effects:
            handler = immediate.get(type(effect))
            if handler is None:
                outbox.append(effect)
            else:
                handler(self, effect)

    # Effects run at once (``_IMMEDIATE``): the log, the durable state, timers, snapshots.

    def _append_log(self, effect: AppendLog) -> None:
        self.log.append(effect.first_index, effect.entries)
        self._log_dirty = True

    def _truncate_log(self, effect: TruncateLog) -> None:
        otp.call(self.options.log_name, ("truncate", effect.index), None)
        self._log_dirty = True

    def _reset_log(self, effect: ResetLog) -> None:
        otp.call(self.options.log_name, ("reset", effect.position), None)
        self._log_dirty = True

    def _trim_log(self, effect: TrimLog) -> None:
        otp.cast(self.options.log_name, ("trim", effect.index))

    def _persist_state(self, effect: PersistState) -> None:
        """Store the core's new term, vote or disable reason before anything leaves.

        On a full disk the store fails and the old state stays on disk: the server then
        holds back everything that might depend on the new state (a vote, an answer at the
        new term: the whole outbox but errors and reads, as for a stalled log) and retries
        every ``STALLED_RETRY_MS`` until it is stored; a later state replaces a pending one
        (the file holds one state). Any other write error fails the server, as before."""
        if self._state_pending is not None:
            self._state_pending = effect.state
            return
        self._store_state(effect.state)

    def _store_state(self, state: DurableState) -> bool:
        """Write + fsync (twice): on a scheduled server this runs on the node's I/O threads,
        which measured 250-500 ms stalls of a whole scheduler at 1000 partitions per node
        when done in place. The server handles nothing else until it is durable. False when
        the disk is full (``state`` is then pending)."""
        try:
            otp.blocking(durable_state.store, self.options.database, state)
        except durable_state.DurableStateError as exc:
            if not exc.disk_full:
                raise
            if self._state_pending is None:
                logger.warning(
                    "%s: cannot store its term and vote (%s); holding back sends, "
                    "retrying every %d ms",
                    self.name, exc, STALLED_RETRY_MS,
                )  # fmt: skip
                self._metrics.count(("raft", "durable_state_stalled"))
            self._state_pending = state
            self._state_retry_at = time.monotonic() + STALLED_RETRY_MS / 1000
            return False
        if self._state_pending is not None:
            self._state_pending = None
            logger.warning("%s: term and vote stored; sending what was held back", self.name)
        return True

    def _state_stored(self) -> bool:
        """Whether no state is pending, retrying a pending one when its backoff allows."""
        pending = self._state_pending
        if pending is None:
            return True
        if time.monotonic() < self._state_retry_at:
            return False
        return self._store_state(pending)

    def _set_timeout(self, effect: SetTimeout) -> None:
        # The deadline counts from this event at once; the timer is armed at the flush (a
        # burst of commits re-arms the batch timeout once per event, and only the last
        # arming can ever fire). A firing queued while the server was busy (a slow WAL sync)
        # that comes before this deadline is armed again for the rest, so a follower that
        # handled a heartbeat never times out right after it for the timer set before it.
        self.defer_state_timeout(effect.ms, effect.kind)
        self._timeout_unarmed = True

    def _cancel_timeout(self, effect: CancelTimeout) -> None:
        # Quiescent: no timer at all until an event wakes the core.
        self.cancel_state_timeout()
        self._timeout_unarmed = False

    def _state_changed(self, effect: StateChanged) -> None:
        self.cancel_state_timeout()
        self._timeout_unarmed = False
        self._published = None  # publish the new state at the next flush

    def _flush(self) -> None:
        self._events_since_flush = 0
        if self._timeout_unarmed:
            self._timeout_unarmed = False
            self.arm_state_timeout()
        if not self._state_stored():
            self._hold_back()
            return
        if self._log_dirty:
            if not self.log.sync_within(0.0 if self._log_stalled else STALLED_SYNC_WAIT):
                if not self._log_stalled:
                    self._log_stalled = True
                    logger.warning(
                        "%s: log writes stalled; holding back sends and applies, refusing "
                        "writes, serving reads",
                        self.name,
                    )
                    self._metrics.count(("raft", "log_sync_stalled"))
                self._hold_back()
                return
            if self._log_stalled:
                self._log_stalled = False
                logger.warning("%s: log writes resumed; sending what was held back", self.name)
            self._log_dirty = False
        outbox = self._outbox
        if outbox:
            self._outbox = []
            self._send_outbox(outbox)
        self._publish_status()

    def _hold_back(self) -> None:
        """The log cannot sync (its writes are stalled: a full disk, retried by the
        provider), or the durable state cannot be stored. Everything that depends on the
        unsynced writes — sends (acknowledgements, votes, replication), applies, replies —
        stays in the outbox, in order, until a later flush syncs; errors and reads go out now,
        so the partition keeps answering: new commits get ``commit_stalled`` (the provider
        refuses appends), reads that need no append are served. The server keeps handling
        messages and retries every ``STALLED_RETRY_MS``."""
        outbox = self._outbox
        free: list[Effect] = [e for e in outbox if isinstance(e, _NOT_AFTER_SYNC)]
        if free:
            self._outbox = [e for e in outbox if not isinstance(e, _NOT_AFTER_SYNC)]
            self._send_outbox(free)
        if not self._sync_retry_armed:
            self._sync_retry_armed = True
            otp.send_after(STALLED_RETRY_MS, self.pid, ("log_sync_retry",))
        self._publish_status()

    def _send_outbox(self, outbox: list[Effect]) -> None:
        """After the sync: replies, reads, one apply message, one message per peer."""
        sends: dict[Identity, list[RaftRpc]] = {}
        applies: list[ApplyItem] = []
        queues = self.queues
        for effect in outbox:
            if isinstance(effect, Send):
                sends.setdefault(effect.to, []).append(effect.rpc)
            elif isinstance(effect, Apply):
                applies.extend(effect.items)
            elif isinstance(effect, Reply):
                if effect.to is not None:
                    effect.to.reply(effect.value)
            elif isinstance(effect, CommitCancelled):
                queues.commits_finished(1, effect.priority)
                queues.commit_bytes_released(1, effect.size)
                if effect.to is not None:
                    effect.to.reply(("error", effect.reason))
            elif isinstance(effect, ReadCancelled):
                queues.release_reads(1)
                if effect.to is not None:
                    effect.to.reply(("error", effect.reason))
            elif isinstance(effect, SubmitRead):
                queues.submit_read(effect.read_index, effect.from_, effect.command)
            elif isinstance(effect, ReadNow):
                request = storage.ReadNowRequest(effect.from_, effect.command)
                otp.cast(self.options.storage_name, request)
            elif isinstance(effect, CancelReads):
                error = ("error", effect.reason)
                for handle in queues.take_all_reads():
                    if handle is not None:
                        handle.reply(error)
        if applies:
            # One estimate per entry serves both budgets (it walks the whole command).
            size, handed, handed_bytes = 0, 0, 0
            for item in applies:
                command = item.entry.command
                estimate = command_bytes(command)
                size += _apply_bytes(estimate)
                # The admitted commits move from the commit queue's byte budget to the apply
                # queue's (membership changes were admitted with no bytes).
                if item.reply_to is not None:
                    handed += 1
                    if not is_config_command(command):
                        handed_bytes += estimate
            queues.reserve_apply(len(applies), size)
            if handed:
                queues.commit_bytes_released(handed, handed_bytes)
            otp.cast(self.options.storage_name, storage.ApplyRequest(applies, size))
        for peer, rpcs in sends.items():
            self._send_rpcs(peer, rpcs)

    def _send_rpcs(self, peer: Identity, rpcs: list[RaftRpc]) -> None:
        address = (peer.name, peer.node)
        if peer.node in self._local_nodes():
            for rpc in rpcs:  # same Python process: hand the objects over as they are
                otp.cast(address, rpc)
        elif self._coalesce and all(heartbeats.is_heartbeat(rpc) for rpc in rpcs):
            # Heartbeat-only batch: one frame per peer node with every other partition's.
            coalescer = heartbeats.coalescer(self._coalesce)
            coalescer.add(peer.node, peer.name, [to_wire(rpc) for rpc in rpcs])
        else:
            wires = [to_wire(rpc) for rpc in rpcs]
            # One frame per peer node for what this scheduler's servers send in a turn.
            if not (self._coalesce and heartbeats.send_at_turn_end(peer.node, peer.name, wires)):
                otp.cast(address, ("rpcs", wires))

    # -- snapshots ------------------------------------------------------------------------------

    def _install_snapshot(self, effect: InstallSnapshot) -> None:
        """Start a snapshot installation in storage; the core hears of it (``SnapshotOpened``)
        when storage has answered (``_snapshot_installed``), however long that takes.

        Never with a deadline: storage keeps loading a snapshot after its caller stops
        waiting, so a timed-out install, reported failed, left storage at the snapshot's
        position and the core at its old one, stalled for good (each retry from the
        leader timed out the same way). The core holds its ``pending_install`` meanwhile
        and handles every other event. Storage answers, or dies, and the partition with it."""
        position = effect.position
        temp_dir: str | None = None
        if effect.purpose == "transfer":
            assert effect.root is not None
            root = effect.root
        else:
            # An empty snapshot, made in a fresh directory: storage's position does not move,
            # so a timed-out make is a failed one.
            temp_dir = otp.blocking(_bootstrap_dir, self.options.database, position)
            made = self._make_empty_snapshot(effect, temp_dir)
            if made != "ok":
                otp.blocking(shutil.rmtree, temp_dir, ignore_errors=True)
                self._internal.append(_opened_failed(effect, made))
                return
            root = temp_dir
        token = otp.make_ref()
        self._install = _PendingInstall(token, effect, temp_dir)
        request = ("open_snapshot", root, position)
        reply = otp.CastReply(self.pid, lambda ok, value: _Installed(token, ok, value))
        otp.send_request(self.options.storage_name, request, reply)

    def _make_empty_snapshot(self, effect: InstallSnapshot, temp_dir: str) -> Any:
        request = ("make_empty_snapshot", temp_dir, effect.position, effect.config, effect.data)
        try:
            return otp.call(self.options.storage_name, request, STORAGE_TIMEOUT)
        except otp.ExitError as exc:
            return ("error", exc.reason)

    def _snapshot_installed(self, msg: _Installed) -> None:
        """Storage answered the install started by ``_install_snapshot``: tell the core.

        A failed delivery (storage died or was never there) says nothing of where storage
        now sits: the server fails, and the partition restarts from storage's position."""
        pending = self._install
        if pending is None or msg.token is not pending.token:
            logger.warning("%s dropped a stale install answer %s", self.name, short_repr(msg))
            return
        self._install = None
        effect = pending.effect
        if pending.temp_dir is not None:
            otp.blocking(shutil.rmtree, pending.temp_dir, ignore_errors=True)
        if not msg.ok:
            raise RuntimeError(
                f"{self.name}: storage gave no answer to the install of {effect.position} "
                f"({msg.value!r}); restarting from what storage holds"
            )
        if msg.value != "ok":
            self._step(_opened_failed(effect, msg.value))
            return
        storage = self.options.storage_name
        config = otp.call(storage, ("config",), STORAGE_TIMEOUT)
        label = otp.call(storage, ("label",), STORAGE_TIMEOUT)
        index_config = None if config is None else (config[0].index, config[1])
        self._step(
            events.SnapshotOpened(
                effect.from_, effect.purpose, effect.position, None, index_config, label
            )
        )

    def _request_snapshot(self, effect: RequestSnapshot) -> None:
        from waraft.transport import snapshot_catchup

        snapshot_catchup.catchup(self.options, effect.peer, effect.witness)

    # -- status ---------------------------------------------------------------------------------

    def _refresh_settings(self) -> None:
        now = _now_ms()
        if now - self._settings_at >= SETTINGS_REFRESH_MS:
            self._settings_at = now
            settings = env.settings_for(self.options.application, self.table)
            self.core.settings = settings
            self.queues.settings = settings
            self._coalesce = _coalesce_settings(self.options.application)

    def _sync_liveness(self) -> None:
        """Tell the core which nodes of its config were last reported down and that it does
        not know of (reports it missed: see ``note_liveness``). Read when handled, not when
        sent, so that a report of the node coming back, cast meanwhile, comes after it."""
        core = self.core
        nodes = _config_nodes(core.current_config())
        for node in reported_down(core.node, nodes):
            if node not in core.down_nodes and node != core.node:
                self._step(events.NodeLiveness(node, False))

    def _publish_status(self) -> None:
        core = self.core
        cfg = core.current_config()
        participants = cfg.participants
        if participants is not self._participants and participants != self._participants:
            # Before any NodeLiveness about a new participant can matter (run at every flush;
            # the identity test keeps it to one comparison while the config stays the same).
            self._participants = participants
            nodes = _config_nodes(cfg)
            _note_member_nodes(core.node, nodes)
            # Noted first, read second; the liveness thread records a report first and
            # filters on member_nodes second: a report racing this is seen by one or both.
            if reported_down(core.node, nodes):
                otp.cast(self.pid, _SYNC_LIVENESS)
        leader = core.leader
        key = (core.state, core.current_term, leader)
        if key != self._published:
            self._published = key
            candidate = core.voted_for if core.state is State.CANDIDATE else None
            info.set_current_term_info(
                self.table,
                self.partition,
                core.current_term,
                None if leader is None else leader.node,
                candidate,
            )
        self._publish_flags()

    def _publish_flags(self) -> None:
        """Publish the state and its flags (``info.set_status``) when either changed.

        Taken at the time of the event just handled (``core.now``: no clock read), at every
        flush and idle handler end: a follower that catches up stops being ``lagging`` with
        the apply that caught it up. The flags also change with time alone, and nothing runs
        on an idle partition to see it; it takes no timer of its own, as every awake replica
        handles an event at least once per heartbeat or election timeout (a leader whose
        followers are gone keeps heartbeating: it stops being ``live`` at most one heartbeat
        after ``raft_max_heartbeat_age_msecs``), and a quiescent replica's flags do not age
        (``status_flags``). ``status()`` computes them fresh for ``waraft status``."""
        core = self.core
        flags = (core.state.value, *core.status_flags(core.now))
        if flags != self._published_flags:
            self._published_flags = flags
            info.set_status(self.table, self.partition, *flags)

    def status(self) -> dict[str, Any]:
        """The core's status plus what only the shell knows, with plain values."""
        status = self.core.status(_now_ms())
        status["partition_path"] = self.options.database
        status["log_module"] = _module_name(self.options.log_module)
        status["storage_module"] = _module_name(self.options.storage_module)
        status["log_status"] = self.log.status()
        status["commit_queue_high"] = self.queues.commit_queue_size()
        status["read_queue"] = self.queues.read_queue_size()
        status["commits_admitted"] = self.queues.commits_admitted
        status["commits_applied"] = self.queues.commits_applied
        status["reads_admitted"] = self.queues.reads_admitted
        status["name"] = self.name
        status["rpc_dropped_nonmember"] = self.dropped_nonmember
        if self.storage_quarantine is not None and self.core.state is not State.STALLED:
            self.storage_quarantine = None  # a snapshot was installed: repaired
        status["storage_quarantine"] = self.storage_quarantine
        return status

    # -- admin commands -------------------------------------------------------------------------

    def _call_status(self, request: Any, from_: otp.ReplyTo) -> Any:
        return self.status()

    def _call_current_config(self, request: Any, from_: otp.ReplyTo) -> Any:
        return self.core.current_config()

    def _call_handover_candidates(self, request: Any, from_: otp.ReplyTo) -> Any:
        return self.core.handover_candidates()

    def _call_event(self, request: Any, from_: otp.ReplyTo) -> Any:
        """Admin commands the core answers (through a Reply effect)."""
        kind, *args = request
        try:
            event = _EVENT_BUILDERS[kind](from_, *args)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            # Calls may come over the wire: a malformed one is answered, not a crash of the
            # server (which would restart the whole partition, over and over if repeated).
            return ("error", ("badarg", f"{kind}: {exc}"))
        self._refresh_settings()
        if type(event) is events.AdjustConfig:
            self._adjust_config(event)
        else:
            self._step(event)
        return otp.NOREPLY

    def _adjust_config(self, event: events.AdjustConfig) -> None:
        """Every membership change reaches the core through here: the admin call and the
        acceptor's cast (``reply_on_apply``). A peer it adds that cannot be this partition's
        replica (``_new_peer_refusal``) is refused first; the acceptor's path skipped the
        check and committed such peers. A refused change the acceptor admitted gives its
        commit slot back, as the core's own refusals of it do (``CommitCancelled``)."""
        refusal = _new_peer_refusal(event.action, self.self_id, self.core.current_config())
        if refusal is None:
            self._step(event)
            return
        reason = ("invalid_peer", refusal)
        if event.reply_on_apply:
            self._run([CommitCancelled(event.from_, reason, Priority.HIGH, 0)])
        else:
            self._run([Reply(event.from_, ("error", reason))])


_ADDING_VERBS = frozenset({"add", "add_witness", "add_participant", "add_witness_participant"})
_NODE_ID = re.compile(r"[^@\s]+@[^@\s]+")
"""What an in-process node's id must look like (``otp.Node`` ids have no address)."""


def _new_peer_refusal(action: Any, self_id: Identity, config: Config) -> str | None:
    """Why a peer that ``action`` adds cannot be this partition's replica (``None``: it can).

    Each was answered ``ok`` and appended: a node id that is no node id (a member nobody can
    reach, which may cost the partition its quorum), another partition's server (whose
    replica then took this partition's term and leader), or a second spelling of a node
    already taking part (a phantom member that never answers)."""
    if not (isinstance(action, (tuple, list)) and len(action) == 2):
        return None
    if not isinstance(action[0], str) or action[0] not in _ADDING_VERBS:
        return None  # (an unhashable verb from the wire must not raise here)
    peer = action[1]
    if isinstance(peer, (tuple, list)) and len(peer) == 2:
        name, node = peer
    else:
        return None  # the core answers a malformed peer
    if name != self_id.name:
        return f"{name!r} is not this partition's server ({self_id.name!r})"
    refusal = _node_id_refusal(node, self_id.node)
    if refusal is not None:
        return refusal
    node_name = node.partition("@")[0]
    for other in core_config.participants(config):
        if other.node != node and other.node.partition("@")[0] == node_name:
            return f"node {node_name} already takes part as {other.node}"
    return None


def _node_id_refusal(node: Any, self_node: str) -> str | None:
    """Why ``node`` cannot be a peer of the replica on ``self_node`` (``None``: it can).

    A replica whose node id is an address (``name@host:port``, any node on the distribution)
    can only reach peers at one: the distribution's parser judges the peer's, and port 0
    (which a node binds to learn a free port, and nobody can dial) is refused too. An
    ``n9@127.0.0.1`` with no port, or port 99999, was committed as a voting member nobody
    could reach, which cost a three-node partition its fault tolerance for good (removing it
    would lose quorum). A replica on an in-process node (an id with no address, as tests
    run) can only have such peers, which must still be one ``name@host``."""
    if not isinstance(node, str):
        return f"{node!r} is not a node id (name@host:port)"
    if not nodeid.is_node_id(self_node):
        return None if _NODE_ID.fullmatch(node) else f"{node!r} is not a node id (name@host)"
    try:
        address = nodeid.parse(node)
    except nodeid.NodeIdError as exc:
        return str(exc)
    if address.port == 0:
        return f"port 0 in node id {node!r}: a peer is named by the port it listens on"
    return None


def _peer_arg(msg: tuple[Any, ...]) -> bool:
    return len(msg) == 1 or (len(msg) == 2 and (msg[1] is None or isinstance(msg[1], str)))


def _module_name(module: Any) -> str:
    if isinstance(module, type):
        return f"{module.__module__}.{module.__qualname__}"
    return str(module)


_IMMEDIATE: dict[type[Any], Callable[[RaftServer, Any], None]] = {
    AppendLog: RaftServer._append_log,
    TruncateLog: RaftServer._truncate_log,
    ResetLog: RaftServer._reset_log,
    TrimLog: RaftServer._trim_log,
    PersistState: RaftServer._persist_state,
    SetTimeout: RaftServer._set_timeout,
    CancelTimeout: RaftServer._cancel_timeout,
    StateChanged: RaftServer._state_changed,
    InstallSnapshot: RaftServer._install_snapshot,
    RequestSnapshot: RaftServer._request_snapshot,
}

_CAST_EVENTS = frozenset({events.CommitBatch, events.ReadBatch, events.NodeLiveness})

_EVENT_BUILDERS: dict[str, Callable[..., Any]] = {
    # Arguments may have crossed the wire (plain tuples): rebuild the typed values.
    "bootstrap": lambda from_, pos, config, data=None: events.Bootstrap(
        from_, _check_position(pos), _check_config(config), data
    ),
    "promote": lambda from_, term, force=False, config=None: events.Promote(
        from_, _term_or_offset(term), bool(force), None if config is None else _check_config(config)
    ),
    "trigger_election": lambda from_, term="current": events.TriggerElection(
        from_, _term_or_offset(term)
    ),
    "resign": events.Resign,
    "handover": events.HandoverRequest,
    "is_peer_ready": lambda from_, peer: events.IsPeerReady(from_, Identity(*peer)),
    "disable": lambda from_, reason: events.Disable(from_, _check_disable_reason(reason)),
    "enable": events.Enable,
    "snapshot_available": lambda from_, root, pos, source=None: events.SnapshotAvailable(
        from_, root, _check_position(pos), _check_source(source)
    ),
    "adjust_config": lambda from_, action, index=None: events.AdjustConfig(from_, action, index),
}

_CALLS: dict[str, Callable[[RaftServer, Any, otp.ReplyTo], Any]] = {
    "status": RaftServer._call_status,
    "current_config": RaftServer._call_current_config,
    "handover_candidates": RaftServer._call_handover_candidates,
    **{kind: RaftServer._call_event for kind in _EVENT_BUILDERS},
}


def _rpcs_from_sender(sender: policy.Sender, msg: Any) -> bool:
    """Every RPC of an ``("rpcs", [...])`` batch names the connection's own node as its
    sender."""
    return heartbeats.wires_from_node(sender.node_id, msg[1] if len(msg) == 2 else None)


_ADMIN_CALL = policy.Rule(policy.ADMIN, limited=True)
_READ_CALL = policy.Rule(policy.CLIENT, limited=True)


_ADMIN_VERBS: Final = (
    "bootstrap",
    "promote",
    "trigger_election",
    "resign",
    "handover",
    "disable",
    "enable",
    "adjust_config",
)


def _remote_calls() -> dict[str, policy.Rule]:
    """The calls other nodes may make to a server: read-only ones for clients, the admin
    verbs for admins."""
    return {
        "status": _READ_CALL,
        "current_config": _READ_CALL,
        "handover_candidates": _READ_CALL,
        "is_peer_ready": _READ_CALL,
        **{verb: _ADMIN_CALL for verb in _ADMIN_VERBS},
    }


def allow_remote(name: str) -> None:
    """What other nodes may send the server registered as ``name`` (see
    ``waraft.distribution.policy``): members' Raft RPCs, read-only status for clients, the
    admin verbs for admins. ``snapshot_available`` (it names a directory) and the casts that
    only local processes send are not reachable from the wire."""
    policy.allow(
        name,
        casts={
            "rpcs": policy.Rule(policy.MEMBER, guard=_rpcs_from_sender),
            "handover": _ADMIN_CALL,
        },
        calls=_remote_calls(),
    )


def answer_unserved_calls() -> None:
    """Have this node answer a call to a partition's server it does not run as a local call
    is answered, when the caller has the right the call needs (before, it was refused: a
    name without rules, so a missing partition read as a permission problem): to a
    partition that is restarting here (only this node can know it), an admin verb or
    ``is_peer_ready`` gets ``PARTITION_RESTARTING`` and a call answering data (``status``,
    ``current_config``, ``handover_candidates``) fails ``RESTARTING``; any other such call
    fails ``noproc`` (``call_verb`` answers ``NO_SUCH_PARTITION`` for it). A caller without
    the right is still refused. Idempotent."""
    policy.allow_prefix(NAME_PREFIX, calls=_remote_calls())
    dist.set_unserved_call_handler(NAME_PREFIX, _unserved_call)


_VERB_CALLS: Final = frozenset((*_ADMIN_VERBS, "is_peer_ready"))
"""The calls answered ``"ok"`` / ``("error", reason)`` (``call_verb``): the only ones a
``PARTITION_RESTARTING`` answer fits."""

_DATA_CALLS: Final = frozenset(("status", "current_config", "handover_candidates"))
"""The remote calls answering data (a status dict, a config, a list): no answer of those
types says "restarting", so they fail ``RESTARTING`` instead (``_data_call``)."""


def _unserved_call(name: str, request: Any, node: otp.Node) -> Any:
    """The receive thread's answer to ``request``, a call to server ``name``, which no
    process on ``node`` has, for a partition restarting there: ``PARTITION_RESTARTING`` for
    a verb, failed ``RESTARTING`` for a data call. Else None (failed ``noproc``)."""
    if not isinstance(request, (tuple, list)) or not request or not isinstance(request[0], str):
        return None
    verb = request[0] in _VERB_CALLS
    if not (verb or request[0] in _DATA_CALLS) or not is_restarting(name, node):
        return None
    return PARTITION_RESTARTING if verb else dist.FailCall(RESTARTING)


def is_restarting(name: str, node: otp.Node) -> bool:
    """Whether server ``name`` belongs to a partition started on ``node`` that is being
    brought back there: its supervisor runs (its one_for_all restart, or its first start,
    has not brought the server up yet), or it gave up and the supervisor that started it
    (``waraft.sup``) is starting it again (``part_sup.is_restarted_by_parent``). A
    partition stopped since (``waraft.sup.stop_partition``), or whose parent gave up too,
    is not: nothing will bring it back. Only looks ``name`` up (registries, no calls): the
    receive thread asks."""
    named = env.partition_named(name, NAME_PREFIX) if isinstance(name, str) else None
    if named is None or not env.is_partition_registered(*named, node=node.id):
        return False
    table, partition = named
    from waraft.partition import part_sup  # (part_sup imports this module's importers)

    if otp.whereis(part_sup.default_name(table, partition), node=node) is not None:
        return True
    return part_sup.is_restarted_by_parent(table, partition, node.id)


def start_link(options: RaftOptions) -> otp.Pid:
    """Start the server registered as ``options.server_name``. It appends to and syncs the log
    provider itself, so it gets a thread of its own when that provider blocks (the disk log)."""
    blocking = getattr(options.log_module, "blocking_io", True)
    pid: otp.Pid = RaftServer.start_link(
        options, name=options.server_name, process_type=otp.THREAD if blocking else None
    )
    return pid


def child_spec(options: RaftOptions) -> dict[str, Any]:
    """WARaft's child spec: transient, 30 s shutdown."""
    return {
        "id": "wa_raft_server",
        "start": (start_link, (options,)),
        "restart": "transient",
        "shutdown": 30000,
    }


# -- the API ------------------------------------------------------------------------------------


NO_SUCH_PARTITION: Final = ("error", "no_such_partition")
"""The answer of the API calls whose answers are ``"ok"`` / ``("error", reason)`` (the admin
verbs, ``is_peer_ready``) when the node runs no server of that name and the partition is not
restarting there (never started, or stopped): the client's answer for a partition a node
does not serve (``waraft.acceptor.NO_SUCH_PARTITION``)."""

RESTARTING: Final = "partition_restarting"
"""The ``otp.ExitError`` reason of the calls answering data (``status``,
``get_current_config``, ``membership``, ``handover_candidates``) to a partition the node
runs whose server is not up right now (see ``PARTITION_RESTARTING``), locally and from
other nodes; for a partition the node does not run they fail ``noproc``, as before."""

PARTITION_RESTARTING: Final = ("error", RESTARTING)
"""The answer of the same calls when the node runs the partition but its server is not up
right now: its supervisor is restarting it (one_for_all: every child of the partition), or
still starting it, or gave up and its own supervisor is starting it again. Nothing was done;
the same call is worth retrying in a moment (the client drops its requests to such a
partition and retries them, see ``waraft.acceptor``)."""


def unserved_answer(server: otp.Target) -> Any:
    """What ``call_verb`` answers for ``server`` when no process has its name:
    ``PARTITION_RESTARTING`` if it names a partition restarting on a node of this Python
    process (``is_restarting``), else ``NO_SUCH_PARTITION`` (another node answers
    ``PARTITION_RESTARTING`` itself: ``answer_unserved_calls``)."""
    here = otp.node.current()
    node: otp.Node | None
    if isinstance(server, str):
        name, node = server, here
    elif isinstance(server, tuple) and len(server) == 2 and isinstance(server[1], str):
        name = server[0]
        node = here if server[1] == here.id else otp.node.get(server[1])
    else:
        return NO_SUCH_PARTITION  # a pid names an incarnation, not a partition
    if node is not None and is_restarting(name, node):
        return PARTITION_RESTARTING
    return NO_SUCH_PARTITION


def call_verb(server: otp.Target, request: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
    """``request`` to ``server``, whose answer is ``"ok"`` / ``("error", reason)``:
    ``NO_SUCH_PARTITION`` if no process has the name there (a partition the node does not
    run, remote calls included once the node answers them: ``answer_unserved_calls``),
    ``PARTITION_RESTARTING`` if the node runs the partition but its server is not up right
    now (retry). Other failures raise ``otp.ExitError`` as before: a node that cannot be
    reached, a timeout, a caller without the right (``refused``), a server that exited while
    answering."""
    try:
        return otp.call(server, request, timeout)
    except otp.ExitError as exc:
        if exc.reason == "noproc":
            return unserved_answer(server)
        raise


def _data_call(server: otp.Target, request: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
    """``request`` to ``server``, whose answer is data: raises ``otp.ExitError(RESTARTING)``
    if no process has the name but the node runs the partition and is bringing it back
    (other nodes fail such a call so themselves: ``answer_unserved_calls``), ``noproc`` if
    the node does not run it, and the other failures as ``otp.call`` does."""
    try:
        return otp.call(server, request, timeout)
    except otp.ExitError as exc:
        if exc.reason == "noproc" and unserved_answer(server) == PARTITION_RESTARTING:
            raise otp.ExitError(RESTARTING) from None
        raise


def status(server: otp.Target, timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The server's status (WARaft's fields: state, current_term, commit_index, ...).
    Raises ``otp.ExitError``: ``RESTARTING`` for a partition restarting there, ``noproc``
    for one the node does not run (see ``_data_call``)."""
    result: dict[str, Any] = _data_call(server, ("status",), timeout)
    return result


def membership(server: otp.Target) -> list[Identity]:
    """The voting members of the effective config (fails as ``get_current_config``)."""
    return list(get_current_config(server).membership)


def get_current_config(server: otp.Target) -> Config:
    """The effective config (the newest appended config entry, or storage's). Raises
    ``otp.ExitError`` as ``status`` does."""
    result: Config = _data_call(server, ("current_config",))
    return result


def _check_position(position: Any) -> LogPos:
    if (
        not isinstance(position, tuple)
        or len(position) != 2
        or not all(isinstance(v, int) and v >= 0 for v in position)
    ):
        raise ValueError(
            f"a log position is LogPos(index, term) of non-negative ints: {position!r}"
        )
    return LogPos(*position)


def _check_disable_reason(reason: Any) -> Any:
    """A disable reason is persisted with the term and vote: one the state file cannot
    encode (a set, a datetime) failed the store and restarted the partition, not disabled."""
    try:
        codec.packb(reason)
    except codec.CodecError as exc:
        raise ValueError(f"a disable reason must encode as msgpack: {exc}") from None
    return reason


def _check_source(source: Any) -> str | None:
    if source is not None and not isinstance(source, str):
        raise ValueError(f"a snapshot's source is a node id or None: {source!r}")
    return source


def _term_or_offset(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


_CONFIG_REFUSALS: Final = {
    "no_members": "a first config needs voting members (nobody could ever be elected)",
    "no_data_member": "a first config needs a member that is not a witness "
    "(witnesses never stand for election)",
}


def _check_config(config: Any) -> Config:
    """``config`` as a ``Config`` a replica can start from; raises ``ValueError`` if it is
    malformed or can never work (no members, only witnesses). A bootstrapped replica refuses
    every later bootstrap, so such a config must not reach it. (The replica itself also
    refuses one that does not name it: only it knows its identity.)"""
    if isinstance(config, dict):
        config = core_config.normalize_config(config)
    if not isinstance(config, Config):
        raise ValueError(f"a config is built with waraft.server.make_config(...), got {config!r}")
    reason = core_config.bootstrap_refusal(config)
    if reason is not None:
        raise ValueError(f"{_CONFIG_REFUSALS[reason]}: {config!r}")
    return config


def bootstrap(server: otp.Target, position: LogPos, config: Config, data: Any = None) -> Any:
    """Make a brand-new replica part of a cluster: ``"ok"`` or ``("error", reason)``."""
    request = ("bootstrap", _check_position(position), _check_config(config), data)
    return call_verb(server, request, STORAGE_TIMEOUT)


def bootstrap_request(
    server: otp.Target, position: LogPos, config: Config, data: Any = None
) -> otp.ReplyTo:
    """``bootstrap`` without waiting (``gen_server:send_request``): the answer, ``"ok"`` or
    ``("error", reason)``, completes the returned handle; wait on it with
    ``otp.wait_response(handle, STORAGE_TIMEOUT)``. A bootstrap is mostly waiting for the
    disk (an empty snapshot written and read back, the term persisted), so a caller that
    bootstraps many local partitions keeps several in flight instead of paying each one's
    waits in a row. Raises ``ValueError`` on a malformed position or config, as ``bootstrap``."""
    request = ("bootstrap", _check_position(position), _check_config(config), data)
    return otp.send_request(server, request)


def trigger_election_request(server: otp.Target, term_or_offset: Any = "current") -> otp.ReplyTo:
    """``trigger_election`` without waiting; the answer completes the returned handle."""
    return otp.send_request(server, ("trigger_election", term_or_offset))


def promote(
    server: otp.Target,
    term_or_offset: Any = "current",
    force: bool = False,
    config: Config | None = None,
) -> Any:
    """Make the replica leader of ``term_or_offset``: with ``force``, WARaft's override
    (leader without votes; it can lose data if the replica is behind); without, a forced
    election, answered ``"ok"`` once won, else ``("error", "election_lost" | "not_elected")``.

    The older README's form ``promote(name, term, force, config)`` bootstraps a stalled, empty
    replica with ``config`` first.
    """
    checked = None if config is None else _check_config(config)
    return call_verb(server, ("promote", term_or_offset, bool(force), checked), STORAGE_TIMEOUT)


def trigger_election(server: otp.Target, term_or_offset: Any = "current") -> Any:
    """Start an election now."""
    return call_verb(server, ("trigger_election", term_or_offset))


def resign(server: otp.Target) -> Any:
    """A leader steps down."""
    return call_verb(server, ("resign",))


def handover(server: otp.Target, peer: str | None = None) -> Any:
    """Transfer leadership to ``peer`` (a node id) or to a random ready peer: ``("ok", node)``
    once the handover RPC is sent, or ``("error", reason)``: WARaft's ``not_leader``,
    ``invalid_peer`` (no voting member), ``duplicate``, ``peer_lagging``, ``oversize``,
    ``no_valid_peer``, and ``("cannot_lead", why)`` for a target the leader knows cannot take
    over (``witness``, ``down``, ``unresponsive``)."""
    return call_verb(server, ("handover", peer))


def handover_async(server: otp.Target, peer: str | None = None) -> None:
    """``handover`` without waiting for the answer (WARaft's ``handover/1`` cast)."""
    otp.cast(server, ("handover", peer))


def handover_candidates(server: otp.Target) -> list[str]:
    """Peers a handover could go to now. Raises ``otp.ExitError`` as ``status`` does."""
    result: list[str] = _data_call(server, ("handover_candidates",))
    return result


def is_peer_ready(server: otp.Target, peer: Identity) -> Any:
    """``"ok"`` or ``("error", not_a_participant | not_ready | not_leader)``."""
    return call_verb(server, ("is_peer_ready", Identity(*peer)))


def disable(server: otp.Target, reason: Any) -> Any:
    """Take the replica out of the protocol; ``reason`` is persisted (one msgpack cannot
    encode is answered ``("error", ("badarg", text))``)."""
    return call_verb(server, ("disable", reason))


def enable(server: otp.Target) -> Any:
    """Bring a disabled replica back (as stalled)."""
    return call_verb(server, ("enable",))


def adjust_config(server: otp.Target, action: Any, index: int | None = None) -> Any:
    """Change the membership; answered ``("ok", LogPos)`` as soon as the entry is appended,
    ``("error", reason)`` if refused (``not_leader``, ``would_lose_quorum``,
    ``("notify_redirect", successor)`` during a handover, ...),
    ``NO_SUCH_PARTITION`` by a node that does not run the partition and
    ``PARTITION_RESTARTING`` by one whose partition is restarting."""
    return call_verb(server, ("adjust_config", action, index))


def refresh_config(server: otp.Target) -> Any:
    """Re-append the current config."""
    return adjust_config(server, "refresh")


def snapshot_available(server: otp.Target, root: str, position: LogPos) -> Any:
    """Tell the server a snapshot at ``position`` waits in directory ``root``."""
    return otp.call(
        server, ("snapshot_available", root, _check_position(position)), STORAGE_TIMEOUT
    )


def notify_complete(server: otp.Target) -> None:
    """Storage drained its apply queue (a cast)."""
    otp.cast(server, ("notify_complete",))


__all__ = [
    "NAME_PREFIX",
    "NO_SUCH_PARTITION",
    "PARTITION_RESTARTING",
    "RESTARTING",
    "RaftServer",
    "adjust_config",
    "answer_unserved_calls",
    "bootstrap",
    "bootstrap_request",
    "call_verb",
    "child_spec",
    "default_name",
    "disable",
    "enable",
    "get_current_config",
    "handover",
    "handover_async",
    "handover_candidates",
    "is_peer_ready",
    "is_restarting",
    "make_config",
    "member_nodes",
    "membership",
    "notify_complete",
    "promote",
    "refresh_config",
    "resign",
    "snapshot_available",
    "start_link",
    "status",
    "trigger_election",
    "trigger_election_request",
    "unserved_answer",
]
