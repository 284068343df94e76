"""Leader-side snapshot catch-up (WARaft's ``wa_raft_snapshot_catchup``).

The core decides *when* a follower needs a snapshot (digest §2.16: its log is empty, or the
entries it needs were trimmed, or it lags more than ``raft_snapshot_catchup_threshold`` in
applying) and emits ``RequestSnapshot``; the server shell calls ``catchup``. This node-wide
actor, registered ``wa_raft_snapshot_catchup``, decides *whether* to send one now:

* requests are deduplicated per target ``(name, node)`` before they reach the mailbox;
* at most ``raft_max_snapshot_catchup`` (5) transports at once, one per target;
* a node that refused for overload (or whose precheck said so) is left alone for
  ``raft_snapshot_catchup_overloaded_backoff_ms`` (10 s);
* a target whose transport ended waits ``raft_snapshot_catchup_completed_backoff_ms`` (20 s)
  after a completed one and ``raft_snapshot_catchup_failed_backoff_ms`` (10 s) after a failed,
  timed-out or cancelled one before it gets another;
* with ``raft_snapshot_catchup_precheck`` the target's manager is asked first
  (``may_accept``, ``raft_snapshot_catchup_precheck_timeout_ms`` 1 s), before any snapshot is
  made.

Then it asks the partition's storage for a snapshot at its current position (a witness
snapshot for a witness; a request answered by message, with no deadline, one at a time per
partition, while the coordinator serves everyone else), starts the transport, and counts the
transports using each snapshot; every 500 ms it looks at their statuses, and deletes a snapshot
once no transport uses it. When it stops, it cancels its transports and deletes its snapshots.

Divergence: it names the partition's snapshots in use when it asks for a new one (and again
every scan while it sends them), and the storage remembers them: its retention (one older
snapshot) spares them whoever asks for a snapshot, this coordinator or an operator. WARaft's
storage deletes all but the newest older snapshot, so a third catch-up at a new position (or
an operator's second snapshot) deletes the one a transport to another target is still
sending, and that catch-up fails.

Divergence: when the transport cannot start for a reason other than overload, or the snapshot
cannot be made, WARaft keeps no state (and leaves the snapshot behind); we delete the unused
snapshot and apply the failed backoff to the target, so that a broken peer is not sent a new
snapshot on every heartbeat.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from waraft import otp, storage, transport
from waraft.core.types import Identity, LogPos
from waraft.services import env, metrics
from waraft.services import options as partition_options

logger = logging.getLogger(__name__)

NAME: Final = "wa_raft_snapshot_catchup"
SCAN_EVERY_MS: Final = 500

Key = tuple[str, str]  # the target (server name, node)
SnapshotKey = tuple[str, int, LogPos, bool]  # (table, partition, position, witness)

# Pending targets per node (WARaft's public ETS table): present only while the actor runs, so
# that requests made while it is down are dropped, not remembered forever.
_pending_lock = threading.Lock()
_pending: dict[str, set[Key]] = {}


def catchup(options: Any, peer: Identity, witness: bool) -> None:
    """Ask for ``peer`` to be sent a snapshot of ``options``' partition (never blocks).

    Called by the server shell on the leader's node for every ``RequestSnapshot``; a request for
    a target that already has one queued is dropped here.
    """
    node = otp.node.current().id
    key = (str(peer[0]), str(peer[1]))
    with _pending_lock:
        pending = _pending.get(node)
        if pending is None or key in pending:
            return
        pending.add(key)
    request = ("catchup", options.application, key[0], key[1], options.table, options.partition)
    otp.cast(NAME, (*request, bool(witness)))


def which_transports(catchup_server: otp.Target = NAME) -> list[int]:
    """The IDs of the transports the coordinator is running."""
    result: list[int] = otp.call(catchup_server, ("which_transports",))
    return result


def state(catchup_server: otp.Target = NAME) -> dict[str, Any]:
    """The coordinator's bookkeeping (transports, snapshot use counts, backoffs), for tests
    and status pages."""
    result: dict[str, Any] = otp.call(catchup_server, ("state",))
    return result


@dataclass(frozen=True, slots=True)
class _Transport:
    application: str
    table: str
    partition: int
    id: int
    position: LogPos
    witness: bool

    @property
    def snapshot(self) -> SnapshotKey:
        return (self.table, self.partition, self.position, self.witness)


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _setting(application: str, table: str, name: str) -> Any:
    return env.table_setting(application, table, name)


def _count(table: str, name: str) -> None:
    metrics.get().count(metrics.key(table, name))


def snapshot_name(position: LogPos, witness: bool) -> str:
    """``snapshot.<index>.<term>`` (``.witness`` for a witness snapshot)."""
    return storage.snapshot_name(position, witness)


class SnapshotCatchup(otp.Process):
    """The coordinator (one per node)."""

    trap_exit = True

    def init(self) -> None:
        self.transports: dict[Key, _Transport] = {}
        self.creating: dict[Key, _Creating] = {}  # snapshots asked of a storage, per target
        self.snapshots: dict[SnapshotKey, int] = {}
        self.overload_backoffs: dict[str, int] = {}
        self.retry_backoffs: dict[Key, int] = {}
        with _pending_lock:
            _pending[self.node.id] = set()
        self._timer = otp.send_after(SCAN_EVERY_MS, self.pid, "scan")

    def terminate(self, reason: Any) -> None:
        otp.cancel_timer(self._timer)
        with _pending_lock:
            _pending.pop(self.node.id, None)
        for entry in self.transports.values():
            transport.cancel(entry.id, "terminating")
        for table, partition, position, witness in list(self.snapshots):
            _delete_snapshot(table, partition, position, witness)
        self.transports.clear()
        self.snapshots.clear()

    # -- messages --------------------------------------------------------------------------

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == ("which_transports",):
            return [entry.id for entry in self.transports.values()]
        if request == ("state",):
            return {
                "transports": {k: e.id for k, e in self.transports.items()},
                "creating": {k: (e.table, e.partition) for k, e in self.creating.items()},
                "snapshots": dict(self.snapshots),
                "overload_backoffs": dict(self.overload_backoffs),
                "retry_backoffs": dict(self.retry_backoffs),
            }
        logger.warning("snapshot catch-up got an unknown call %r", request)
        return ("error", "unsupported")

    def handle_cast(self, msg: Any) -> None:
        if isinstance(msg, tuple) and len(msg) == 7 and msg[0] == "catchup":
            self._catchup(*msg[1:])
        elif type(msg) is _Made:  # never from the wire: no codec builds one
            self._snapshot_made(msg)
        else:
            logger.warning("snapshot catch-up got an unknown cast %r", msg)

    def handle_info(self, msg: Any) -> None:
        if msg == "scan":
            self._scan()
            self._timer = otp.send_after(SCAN_EVERY_MS, self.pid, "scan")
        elif not (isinstance(msg, tuple) and msg and msg[0] == "EXIT"):
            logger.debug("snapshot catch-up dropped %r", msg)

    # -- a request -------------------------------------------------------------------------

    def _catchup(
        self, app: str, name: str, node: str, table: str, partition: int, witness: bool
    ) -> None:
        key = (name, node)
        with _pending_lock:
            # Cleared first, as WARaft does: a few duplicates may still sit in the mailbox.
            _pending.get(self.node.id, set()).discard(key)
        now = _now_ms()
        if not self._allowed(now, key) or self._making(table, partition):
            return
        if not self._precheck(app, node, table, witness):
            self.overload_backoffs[node] = now + int(
                _setting(app, table, "raft_snapshot_catchup_overloaded_backoff_ms")
            )
            return
        self._create_snapshot(_Creating(app, table, partition, witness, key, otp.make_ref()))

    def _snapshot_made(self, msg: _Made) -> None:
        """The storage answered (or failed) the snapshot ``_create_snapshot`` asked for:
        start the transport, or apply the failed backoff."""
        creating = self.creating.get(msg.key)
        if creating is None or creating.token is not msg.token:
            return  # a request of a coordinator that stopped sending to that target since
        del self.creating[msg.key]
        now = _now_ms()
        made = _made_snapshot(creating, msg)
        if made is None:
            self._failed(creating.application, creating.table, msg.key, now)
        else:
            self._start_transport(creating, made[0], made[1], now)
        self._drop_unused(creating.table, creating.partition)

    def _start_transport(self, creating: _Creating, position: LogPos, path: str, now: int) -> None:
        app, key = creating.application, creating.key
        table, partition, witness = creating.table, creating.partition, creating.witness
        node = key[1]
        snapshot = (table, partition, position, witness)
        result = transport.start_snapshot_transfer(
            node, table, partition, position, path, witness, None
        )
        if result[0] == "ok":
            logger.info(
                "sending snapshot %s of %s/%s to %s over transport %s",
                position,
                table,
                partition,
                key,
                result[1],
            )
            metrics.count_partition(table, partition, "snapshot_catchup.start")
            self.transports[key] = _Transport(app, table, partition, result[1], position, witness)
            self.snapshots[snapshot] = self.snapshots.get(snapshot, 0) + 1
            return
        reason = result[1]
        if snapshot not in self.snapshots:
            _delete_snapshot(*snapshot)
        if reason in ("receiver_overloaded", "receiver_disk_full"):
            logger.info("%s refused a snapshot of %s/%s: %s; later", node, table, partition, reason)
            _count(table, f"snapshot_catchup.{reason}")
            backoff = int(_setting(app, table, "raft_snapshot_catchup_overloaded_backoff_ms"))
            self.overload_backoffs[node] = now + backoff
            return
        logger.warning("snapshot of %s/%s to %s could not start: %r", table, partition, key, reason)
        self._failed(app, table, key, now)

    def _allowed(self, now: int, key: Key) -> bool:
        limit = int(env.raft_config("raft_max_snapshot_catchup"))
        limited = len(self.transports) + len(self.creating) >= limit
        exists = key in self.transports or key in self.creating
        overloaded = self.overload_backoffs.get(key[1], now) > now
        blocked = self.retry_backoffs.get(key, now) > now
        if not overloaded:
            self.overload_backoffs.pop(key[1], None)
        if not blocked:
            self.retry_backoffs.pop(key, None)
        return not (limited or exists or overloaded or blocked)

    def _precheck(self, app: str, node: str, table: str, witness: bool) -> bool:
        if not _setting(app, table, "raft_snapshot_catchup_precheck"):
            return True
        timeout = float(_setting(app, table, "raft_snapshot_catchup_precheck_timeout_ms")) / 1000
        if transport.may_accept(node, witness, timeout) == ("error", "receiver_overloaded"):
            _count(table, "snapshot_catchup.precheck.rejected")
            logger.info("%s declined a snapshot before it was made (overloaded)", node)
            return False
        return True  # peers that cannot answer are asked again by the handshake itself

    def _create_snapshot(self, creating: _Creating) -> None:
        """Ask the partition's storage for a snapshot at its current position; the answer
        comes as a message (``_snapshot_made``).

        Not a call: a snapshot copies the whole partition (about 18 us a row with the node's
        LMDB), and a call's 60 s deadline gave up on partitions of a few million rows for
        good: every retry made a new snapshot that took as long. Waiting also held this
        coordinator, and every other partition's catch-up on the node, for the whole copy.
        The target counts as sending meanwhile (``_allowed``); the storage answers or dies."""
        options = partition_options.options(creating.table, creating.partition)
        if options is None:
            logger.warning(
                "no partition %s/%s here to make a snapshot of", creating.table, creating.partition
            )
            self._failed(creating.application, creating.table, creating.key, _now_ms())
            return
        self.creating[creating.key] = creating
        storage.request_snapshot(
            options.storage_name,
            creating.witness,
            self._in_use(creating.table, creating.partition),
            otp.CastReply(self.pid, partial(_Made, creating.key, creating.token)),
        )

    def _making(self, table: str, partition: int) -> bool:
        """Whether a snapshot of the partition is being made. One at a time per partition:
        the ``in_use`` a request names (and every reminder) must cover all the partition's
        snapshots the coordinator sends or is about to, and one being made has no name yet.
        Another target's request is dropped meanwhile; its leader asks again."""
        return any(c.table == table and c.partition == partition for c in self.creating.values())

    def _in_use(self, table: str, partition: int) -> list[str]:
        """The partition's snapshots a transport still sends: the storage must not delete
        them to make room for the new one (at most ``raft_max_snapshot_catchup``)."""
        return [
            snapshot_name(position, witness)
            for (t, p, position, witness) in self.snapshots
            if t == table and p == partition
        ]

    def _failed(self, app: str, table: str, key: Key, now: int) -> None:
        _count(table, "snapshot_catchup.error")
        backoff = int(_setting(app, table, "raft_snapshot_catchup_failed_backoff_ms"))
        self.retry_backoffs[key] = now + backoff

    # -- the scan --------------------------------------------------------------------------

    def _scan(self) -> None:
        for key, entry in list(self.transports.items()):
            status = transport.transport_info(entry.id, "status")
            if status in transport.ACTIVE:
                continue
            name = (
                "raft_snapshot_catchup_completed_backoff_ms"
                if status == transport.COMPLETED
                else "raft_snapshot_catchup_failed_backoff_ms"
            )
            outcome = f"snapshot_catchup.{status or 'lost'}"
            metrics.count_partition(entry.table, entry.partition, outcome)
            logger.info("snapshot transport %s to %s ended: %s", entry.id, key, status)
            self._finish(key, entry, int(_setting(entry.application, entry.table, name)))
        self._remind_storages()

    def _remind_storages(self) -> None:
        # A storage forgets what is in use when it restarts (its partition restarts with it),
        # while the node-wide transport keeps sending: told again here, it spares them from
        # the next create_snapshot within one scan. After the transfers ended above, so that
        # the reminder never names a snapshot this scan deleted.
        # Not while a snapshot of the partition is being made: the storage adds it to its list
        # when made, and a reminder sent before its answer is read here would drop it.
        for table, partition in {(t, p) for (t, p, _, _) in self.snapshots}:
            if self._making(table, partition):
                continue
            storage.snapshots_in_use(
                _storage_name(table, partition), self._in_use(table, partition)
            )

    def _finish(self, key: Key, entry: _Transport, backoff: int) -> None:
        del self.transports[key]
        snapshot = entry.snapshot
        users = self.snapshots.get(snapshot)
        if users == 1 and self._making(entry.table, entry.partition):
            # Kept with no user until the storage answers: at an unchanged position it
            # answers the request under way with this very directory, and a delete cast
            # now, queued behind that request, removed it under the transport about to
            # start (which failed and backed off). ``_drop_unused`` decides after the answer.
            self.snapshots[snapshot] = 0
        elif users == 1:
            del self.snapshots[snapshot]
            _delete_snapshot(*snapshot)
        elif users is not None:
            self.snapshots[snapshot] = users - 1
        self.retry_backoffs[key] = _now_ms() + backoff

    def _drop_unused(self, table: str, partition: int) -> None:
        """Delete the partition's snapshots that ``_finish`` kept with no user while one was
        being made (and that the new transport does not use)."""
        for snapshot, users in list(self.snapshots.items()):
            if users == 0 and snapshot[0] == table and snapshot[1] == partition:
                del self.snapshots[snapshot]
                _delete_snapshot(*snapshot)


@dataclass(frozen=True, slots=True)
class _Creating:
    """A snapshot asked of a partition's storage for ``key`` (``_create_snapshot``)."""

    application: str
    table: str
    partition: int
    witness: bool
    key: Key
    token: otp.Ref


@dataclass(frozen=True, slots=True)
class _Made:
    """The storage's answer to a ``_Creating`` (``ok`` False: the request failed, ``value``
    is the exit reason)."""

    key: Key
    token: otp.Ref
    ok: bool
    value: Any


def _made_snapshot(creating: _Creating, msg: _Made) -> tuple[LogPos, str] | None:
    """The snapshot's position and path from the storage's answer, or None (logged)."""
    result = msg.value if msg.ok else ("error", msg.value)
    options = partition_options.options(creating.table, creating.partition)
    if options is None or not (isinstance(result, tuple) and result and result[0] == "ok"):
        logger.warning(
            "storage of %s/%s made no snapshot: %r", creating.table, creating.partition, result
        )
        return None
    position = LogPos(*result[1])
    path = os.path.join(options.database, snapshot_name(position, creating.witness))
    return position, path


def _storage_name(table: str, partition: int) -> str:
    options = partition_options.options(table, partition)
    name: str = (
        options.storage_name if options is not None else storage.default_name(table, partition)
    )
    return name


def _delete_snapshot(table: str, partition: int, position: LogPos, witness: bool) -> None:
    storage.delete_snapshot(_storage_name(table, partition), snapshot_name(position, witness))


def start_link() -> otp.Pid:
    """Start this node's coordinator, registered ``wa_raft_snapshot_catchup``."""
    pid: otp.Pid = SnapshotCatchup.start_link(name=NAME)
    return pid


def child_spec() -> dict[str, Any]:
    """WARaft's child spec: permanent, 30 s shutdown."""
    return {
        "id": "wa_raft_snapshot_catchup",
        "start": (start_link, ()),
        "restart": "permanent",
        "shutdown": 30000,
    }


__all__ = [
    "NAME",
    "SnapshotCatchup",
    "catchup",
    "child_spec",
    "snapshot_name",
    "start_link",
    "state",
    "which_transports",
]
