"""The partition's replicated state machine (WARaft's ``wa_raft_storage``): the storage actor and
the provider interface.

The providers are ``waraft.storage.memory.MemoryStorage`` (WARaft's ETS storage, the default),
``waraft.storage.node_lmdb.NodeLmdbStorage`` (durable, one LMDB environment per node with
checksummed values: what ``waraft node`` uses), ``waraft.storage.lmdb.LmdbStorage`` (durable,
an environment per partition) and
``waraft.storage.sqlite.SqliteStorage`` (durable, standard library only), behind
``waraft.storage.provider``. Provider-specific options come from the application setting
``raft_storage_options`` (a dict, handed to the provider as ``StorageOptions.extra``).

The storage actor applies committed entries strictly in log order, answers each committing
caller's reply handle itself (the reply never goes back through the server), answers the strong
reads whose read index it has reached, and tells the server when its apply queue drains so that
more committed entries are sent (WARaft's ``notify_complete``). An entry out of order is a broken
invariant: the actor crashes and the partition restarts, as WARaft's does. A witness skips the
data of commands (advancing its position) and applies a ``noop_omitted`` every
``raft_storage_witness_apply_interval`` skipped entries.

Damaged data: a provider that finds stored data failing its check raises
``StorageCorruptionError`` instead of returning it; the actor answers that read with
``("error", "storage_corruption")`` and crashes, so the partition restarts and the provider
(``NodeLmdbStorage``) quarantines the replica when it opens: emptied, ``stalled`` and reporting
``storage_quarantine`` until the leader's snapshot repairs it.

Exactly-once sessions (``waraft.core.sessions``) live here, so they work with every provider:
each ``("$session", ...)`` command, plain or inside a ``$batch``, goes through the replicated
dedup table before the provider sees it (a duplicate reaches the provider as a ``noop`` and is
answered with the recorded result). What changed in the table is written by
``apply_batch_then`` in the same transaction as the entries whose results it records, so it is
in every snapshot and survives restarts: a row per session under the reserved key
``session_key(id)`` and, when a session came or went, the index of session ids under
``SESSIONS_KEY``. A batch touching one session writes one row, however many sessions there are
(the table was written whole before: 338 KB and 22 ms of CPU a batch at the 10,000-session
cap with 4 results each, ``benchmarks/session_table_bench.py``); a table stored whole by an
older build is read and rewritten as rows at its next change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from _thread import allocate_lock
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from waraft import otp
from waraft.core.effects import ApplyItem as CoreApplyItem
from waraft.core.log import approx_command_size
from waraft.core.rpc import clipped_repr
from waraft.core.sessions import (
    INDEX_VERSION,
    SESSION,
    Apply,
    Done,
    Pending,
    SessionTable,
    is_session_command,
)
from waraft.core.types import (
    CONFIG,
    NOOP,
    NOOP_OMITTED,
    Config,
    LogPos,
    Priority,
    is_config_command,
    is_internal_command,
)
from waraft.distribution import policy
from waraft.distribution.reply import RemoteReplyTo
from waraft.services import codec, env
from waraft.services.codec import CodecError
from waraft.services.logthrottle import LogThrottle
from waraft.services.queues import READ_QUEUE_BYTES_FULL, oversized_read, read_count
from waraft.services.replies import coalesced_replies
from waraft.storage.provider import (
    BAD_POSITION,
    NOT_FOUND,
    NOT_SUPPORTED,
    OK,
    ApplyItem,
    InvalidIncompleteReplica,
    PartialApplyError,
    SessionStoreError,
    StorageCorruptionError,
    StorageError,
    StorageOptions,
    StorageProvider,
    UnknownCommandError,
    applied_before,
    fsync_directory,
    is_data_replica,
)

logger = logging.getLogger(__name__)

WITNESS_APPLY_INTERVAL_KEY = "raft_storage_witness_apply_interval"
DEFAULT_WITNESS_APPLY_INTERVAL = 5000
MAX_RETAINED_SNAPSHOT = 1
_SNAPSHOT_RE = re.compile(r"^snapshot\.(\d+)\.(\d+)(\.witness)?$")
# What a crash can leave in a partition directory: a snapshot being written (partial_name) and
# bootstrap's empty snapshot (bootstrap_prefix). Only the storage's own snapshot names: a
# partial of a caller-chosen name is removed on failure, never guessed at on open.
_LEFTOVER_RE = re.compile(
    r"^(\.snapshot\.\d+\.\d+(\.witness)?\.partial|snapshot\.\d+\.\d+\.bootstrap\.\w+)$"
)
SESSIONS_TABLE: Final = "$waraft"
SESSIONS_KEY: Final = ("$waraft", "sessions")
"""The reserved key holding the index of the session table's ids in every provider (an older
build stored the whole ``SessionTable.dump()`` here)."""
RESERVED: Final = "$waraft"
"""First element of every reserved key: a key that is a tuple (or list) starting with it is
the storage's own (``touches_reserved_key``)."""
RESERVED_KEY_ERROR: Final = ("error", "reserved_key")
READ_BYTES_FULL_ERROR: Final = ("error", READ_QUEUE_BYTES_FULL)
UNENCODABLE_RESULT: Final = ("error", "unencodable_result")
"""The answer in place of a provider's result that msgpack cannot carry (it was applied)."""
_UNENCODABLE_LOG = LogThrottle(10.0)
_REFUSED_LOG = LogThrottle(10.0)
_UNNAMED_LOG = LogThrottle(600.0)
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1
"""The integers msgpack encodes (an ``incr`` beyond them is answered ``integer_overflow``)."""
INTERNAL_COMMAND_ERROR: Final = ("error", "reserved_command")
"""Answer to a config change or noop nested in a ``$batch`` or a session call."""
"""The answer to a client command or read naming a reserved key: the providers share one key
space across tables, so without it a client could overwrite (or read) every session's record."""


def session_key(session: int) -> tuple[str, str, int]:
    """The reserved key of one session's row."""
    return (RESERVED, "session", session)


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    """The server's batch of committed entries (``apply`` in WARaft).

    Internal messages are objects, not tuples, so that nothing arriving from another node
    (msgpack gives tuples, never these) can impersonate the server.
    """

    items: Sequence[CoreApplyItem]
    size: int


@dataclass(frozen=True, slots=True)
class ReadNowRequest:
    """Answer a read at the current position (``apply_read`` in WARaft)."""

    from_: Any
    command: Any


BATCH: Final = "$batch"


def is_batch_command(command: Any) -> bool:
    """``("$batch", commands)``: many commands applied (or read) as one log entry.

    ``commands`` is a sequence of commands or their msgpack encoding (``bytes``, as the client
    library ships them so that the leader never decodes them). The result is the list of the
    commands' results, in order. This is how ``waraft.client`` packs the commands that pile up
    while a frame is in flight: one log entry, one reply, for many writes.
    """
    return type(command) is tuple and len(command) == 2 and command[0] == BATCH


def batch_commands(command: Any) -> Sequence[Any]:
    """The commands of a ``$batch`` command (decoding them if they travel as bytes)."""
    payload = command[1]
    if isinstance(payload, (bytes, bytearray, memoryview)):
        # A client's bytes, decoded by every replica at apply (and again at every replay):
        # decoded as untrusted, so a map of colliding keys fails this entry alone instead of
        # holding every replica's storage actor for as long as a quadratic dict build takes.
        payload = codec.unpackb(payload, untrusted=True)
    if not isinstance(payload, (list, tuple)):
        raise UnknownCommandError(
            f"a {BATCH} command holds a list of commands, not {clipped_repr(payload)}"
        )
    return payload


DERIVED: Final = frozenset({"append", "incr"})


def is_derived_command(command: Any) -> bool:
    """A read-modify-write command every provider gets as a plain ``write``:

    * ``("incr", table, key, n)``: add the int ``n`` to the int at ``key`` (missing: 0);
      answers ``("ok", new_value)``, or ``("error", "not_an_integer")`` changing nothing;
    * ``("append", table, key, value)``: append ``value`` to the list at ``key`` (missing:
      empty; stored and read back as a tuple); answers ``"ok"``, or ``("error", "not_a_list")``.

    The storage actor turns them into writes from the state it has applied, the same on every
    replica, so no provider needs to know them. Neither is idempotent: retried by a client
    they apply again unless sent through a session (``waraft.core.sessions``).
    """
    return type(command) is tuple and len(command) == 4 and command[0] in DERIVED


_SEQUENCES: Final = (tuple, list)


def touches_reserved_key(command: Any) -> bool:
    """Whether a client's command or read (``(kind, table, key, ...)``) names a reserved key:
    a tuple or list whose first element is ``RESERVED`` (``SESSIONS_KEY``, ``session_key``).
    Lists count: the durable providers encode a list key and a tuple key alike."""
    if type(command) is not tuple or len(command) < 3:
        return False
    key = command[2]
    kind = type(key)
    return (kind is tuple or kind is list) and len(key) > 0 and key[0] == RESERVED


def _plain_write(command: Any) -> bool:
    """``("write", table, key, value)`` with a key that is neither a tuple nor a list: not a
    config, ``$batch``, derived, session or reserved-key command (``touches_reserved_key``
    looks only at tuple and list keys), so storage hands it to the provider as it is."""
    if type(command) is not tuple or len(command) != 4 or command[0] != "write":
        return False
    key_kind = type(command[2])
    return key_kind is not tuple and key_kind is not list


def _inner(command: Any) -> Any:
    """The command a session ``call`` carries, else ``command`` itself."""
    if type(command) is tuple and 6 <= len(command) <= 7 and command[0] == SESSION:
        return command[5]  # a call, with or without its session's token
    return command


def _opaque(command: Any) -> bool:
    """True for a command whose effect on keys the storage actor cannot know without applying
    it (a provider's own command): a derived command after it must read the state the provider
    has once it is applied, not the state before."""
    command = _inner(command)
    if type(command) is not tuple:
        return bool(command != NOOP)
    size = len(command)
    if (size == 4 and command[0] == "write") or (size == 3 and command[0] == "delete"):
        return False
    return not (is_derived_command(command) or is_session_command(command))


DERIVED_AFTER_OPAQUE: Final = ("error", "derived_after_custom_command")
"""Answer to an ``incr``/``append`` that follows a provider's own command inside one ``$batch``
entry: the entry applies in one transaction, so the state it would read does not exist yet."""


def _all_plain(commands: Sequence[Any]) -> bool:
    """True when none of ``commands`` is a session command (``is_session_command``), a
    derived one (``is_derived_command``), names a reserved key (``touches_reserved_key``) or
    is one only the protocol writes (``is_internal_command``): the tests inlined, as every
    command of every ``$batch`` entry passes here on every replica (a call per test and
    command was most of this check's cost)."""
    for command in commands:
        if type(command) is tuple:
            size = len(command)
            if size >= 2:
                kind = command[0]
                if kind == SESSION or (size == 4 and kind in DERIVED):
                    return False
                if size == 2 and kind == CONFIG:
                    return False
                # A str key (the usual) is ruled out by the first test alone.
                if size >= 3 and type(command[2]) is not str:
                    key = command[2]
                    if type(key) in _SEQUENCES and key and key[0] == RESERVED:
                        return False
        elif command in (NOOP, NOOP_OMITTED):
            return False
    return True


def _is_error(result: Any) -> bool:
    return type(result) is tuple and len(result) == 2 and result[0] == "error"


POISON_AFTER: Final = 3
"""Crashes at the same committed entry, for a reason other than the environment, after which
the storage disables its replica rather than crash again (``StorageServer._apply_failed``)."""
_apply_failures: dict[tuple[str, str], tuple[int, int]] = {}
"""(node id, storage name) -> (entry index, crashes there): kept across the actor's restarts."""


def _environmental(exc: BaseException) -> bool:
    """Whether ``exc`` comes from this replica's surroundings (I/O, memory, a database
    library, damaged data) rather than from what the entry is: those may pass on a retry."""
    if isinstance(exc, UnknownCommandError):
        return False  # escaped the per-command answers (a session row the provider refuses)
    if isinstance(exc, (OSError, MemoryError, StorageError, OutOfOrderApply)):
        return True
    return type(exc).__module__.partition(".")[0] in ("lmdb", "sqlite3")


class OutOfOrderApply(RuntimeError):
    """Storage was handed an entry that does not follow its position."""


def default_name(table: str, partition: int) -> str:
    """``raft_storage_<table>_<partition>``."""
    return f"raft_storage_{table}_{partition}"


def snapshot_name(position: LogPos, witness: bool = False) -> str:
    """WARaft's ``snapshot.<index>.<term>`` (``.witness`` for witness snapshots)."""
    name = f"snapshot.{position.index}.{position.term}"
    return name + ".witness" if witness else name


def partial_name(name: str) -> str:
    """The hidden directory a snapshot ``name`` is written into before it is renamed."""
    return f".{name}.partial"


def bootstrap_prefix(position: LogPos) -> str:
    """The name prefix (a random suffix follows) of the directory bootstrap writes its empty
    snapshot at ``position`` into, inside the partition directory; the server removes it once
    opened, the storage when it next opens if a crash left it."""
    return f"snapshot.{position.index}.{position.term}.bootstrap."


def remove_leftovers(path: str) -> list[str]:
    """Remove from the partition directory ``path`` the temporary snapshot directories a crash
    left (a ``partial_name`` of a snapshot, a ``bootstrap_prefix`` directory); returns their
    names. Complete snapshots and anything else are left alone.

    Only while no actor of the partition writes there: the storage calls it when it opens,
    and its ``one_for_all`` supervisor starts it before the server (the bootstrap directory's
    writer) and only after stopping every child of an earlier start.
    """
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        full = os.path.join(path, name)
        if _LEFTOVER_RE.match(name) and os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
            removed.append(name)
    return removed


def list_snapshots(path: str) -> list[tuple[LogPos, str]]:
    """The snapshot directories in a partition directory, oldest first."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _SNAPSHOT_RE.match(name)
        if match and os.path.isdir(os.path.join(path, name)):
            found.append((LogPos(int(match.group(1)), int(match.group(2))), name))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class _Many:
    """In an apply chunk: the ``count`` commands of one merged ``$batch`` entry, answered
    together (a list) to ``reply_to``."""

    reply_to: Any
    count: int


class _Chunk:
    """The committed entries ``StorageServer._apply`` gathers for one ``apply_batch``.

    ``items`` are the provider's ``(command, position, label)``; ``shapes`` the reply handle of
    each top-level item, or a ``_Many`` for the commands of a merged ``$batch`` entry;
    ``marks`` the session decision of each item, kept only once a session, derived or
    reserved-key command joined (empty before)."""

    __slots__ = ("_opaque", "_scanned", "items", "marks", "shapes")

    def __init__(self) -> None:
        self.items: list[tuple[Any, LogPos, Any]] = []
        self.shapes: list[Any] = []
        self.marks: list[Done | Apply | Pending] = []
        self._opaque = False
        self._scanned = 0  # items[:_scanned] were looked at by holds_opaque

    def holds_opaque(self) -> bool:
        """Whether an item is a provider's own command (``_opaque``), however it joined (a
        top-level entry, a merged ``$batch`` entry's command). A derived command must not join
        such a chunk: it would read the state before that command on a replica that got both
        in one apply message, and the state after it on one that got them in two. Looked at
        only when a derived command comes, over the items added since."""
        if not self._opaque:
            items = self.items
            self._opaque = any(_opaque(items[at][0]) for at in range(self._scanned, len(items)))
            self._scanned = len(items)
        return self._opaque

    def clear(self) -> None:
        self.items.clear()
        self.shapes.clear()
        self.marks.clear()
        self._opaque = False
        self._scanned = 0


class _Written:
    """The value the writes and deletes among the first items of ``items`` (``(command,
    position, label)`` in log order) leave at each key: ``("ok", value)``, ``NOT_FOUND``, or
    ``None`` at a key none of them names. Keys are told apart by ``identity`` (the provider's
    ``key_identity``), as the provider's rows are: Python's ``==`` took ``True``, ``1`` and
    ``1.0`` for one key, which the durable providers store apart. Built as far as asked, so
    an apply batch without a derived command computes no identity."""

    __slots__ = ("_identity", "_items", "_seen", "_state")

    def __init__(self, identity: Callable[[Any], Any], items: Sequence[tuple[Any, LogPos, Any]]):
        self._identity = identity
        self._items = items
        self._seen = 0
        self._state: dict[Any, Any] = {}

    def at(self, key_identity: Any, upto: int) -> Any:
        """The value at the key of that identity after ``items[:upto]`` (``upto`` never
        smaller than at an earlier call)."""
        state, items, identity = self._state, self._items, self._identity
        for at in range(self._seen, upto):
            command = items[at][0]
            if type(command) is not tuple:
                continue
            size = len(command)
            if size == 4 and command[0] == "write":
                value: Any = ("ok", command[3])
            elif size == 3 and command[0] == "delete":
                value = NOT_FOUND
            else:
                continue
            with contextlib.suppress(UnknownCommandError):  # no row: the provider refuses it
                state[identity(command[2])] = value
        self._seen = max(self._seen, upto)
        return state.get(key_identity)


class StorageServer(otp.Process):
    """Owns the partition's storage provider."""

    trap_exit = True

    def init(self, options: Any) -> None:
        self.options = options
        self.name: str = options.storage_name
        self.path: str = options.database
        self.queues = options.queues
        self.server: str = options.server_name
        # From the wire: local (non-consistent) reads and the applied position, for clients.
        # Nothing that names a path or a module (snapshots, open, config) is reachable. A
        # read from the wire passes a door (``_door``) and is admitted as a strong read is
        # (``_remote_read``).
        self._door_lock = allocate_lock()
        self._at_door = 0
        policy.allow(
            self.name,
            calls={
                "read": policy.Rule(policy.CLIENT, guard=self._door),
                "position": policy.CLIENT,
            },
        )
        self.self_id = options.self_id
        extra = env.get_env(options.application, "raft_storage_options", None) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"raft_storage_options must be a dict, got {extra!r}")
        storage_options = StorageOptions(
            options.table, options.partition, options.self_id, options.storage_name, dict(extra)
        )
        otp.blocking(os.makedirs, self.path, exist_ok=True)  # off the scheduler when scheduled
        self.provider: StorageProvider = options.storage_module.open(storage_options, self.path)
        try:
            # Once the provider is open: a provider that refuses a second holder (the node's
            # LMDB) has then shown that no other storage actor of the partition is alive.
            # Each leftover is a full copy of the data: without this, every crash while
            # making a snapshot would leak one for good.
            for leftover in otp.blocking(remove_leftovers, self.path):
                logger.warning("storage %s removed %s, left by a crash", self.name, leftover)
            # A provider whose every call is one transaction handed to a committer (the node's
            # LMDB) takes the plain $batch entries of an apply message with the plain commands
            # around them: one transaction per message instead of one per entry.
            self._merge_batches = bool(getattr(self.provider, "merge_batches", False))
            # Results leave for clients on other nodes as msgpack: a provider not known to
            # answer only encodable values has each batch's results checked (one encode).
            self._check_results = not getattr(self.provider, "results_encode", False)
            self._corruption: StorageCorruptionError | None = None
            self._awaiting_data: str | None = None  # see _await_data
            self._failed: str | None = None  # see _apply_failed
            self._failure_key = (self.node.id, self.name)
            self._write_back_timer: otp.TimerRef | None = None  # see _arm_write_back
            # See _serve_reads: a chunk of reads was served in this run of the scheduler,
            # and (a thread process) a ("serve_reads",) is on its way.
            self._reads_served = False
            self._more_reads = False
            self._sending: frozenset[str] = frozenset()  # see _create_snapshot
            # Apply messages (and the reads queued behind them) held while the provider's
            # buffer waits for its last write (``_hold``), the wake-up it promised when that
            # write is done, and why new commits are refused meanwhile (``_settle_writes``).
            self._held: deque[ApplyRequest | ReadNowRequest] = deque()
            self._wake_armed = False
            self._stalled: str | None = None
            self.queues.set_storage_stalled(None)  # a crashed predecessor's, if any
            self.position: LogPos = self.provider.position()
            self.skipped = 0
            self.sessions = self._load_sessions()
            self._refresh_config()
            self._witness_interval = int(
                env.get_table_env(
                    options.application,
                    options.table,
                    WITNESS_APPLY_INTERVAL_KEY,
                    DEFAULT_WITNESS_APPLY_INTERVAL,
                )
            )
            self._notify_complete = bool(
                env.get_table_env(
                    options.application, options.table, "raft_storage_notify_complete", True
                )
            )
        except BaseException:
            # terminate does not run when init fails: close here, or the provider's hold on
            # its files (the node LMDB's per-partition slot, a lock) fails every restart.
            with contextlib.suppress(Exception):
                self.provider.close()
            raise
        logger.info("storage %s opened at %s", self.name, self.position)

    def terminate(self, reason: Any) -> None:
        provider = getattr(self, "provider", None)
        if provider is not None:
            logger.info("storage %s terminating at %s: %r", self.name, self.position, reason)
            provider.close()

    def _load_sessions(self) -> SessionTable:
        """The session table stored in the provider (empty if none was ever written). A table
        stored whole (an older build) is loaded and marked for rewriting as rows."""
        provider, position = self.provider, self.position
        found = provider.read(("read", SESSIONS_TABLE, SESSIONS_KEY), position)
        if not (type(found) is tuple and len(found) == 2 and found[0] == "ok"):
            return SessionTable()
        stored = found[1]
        if type(stored) is tuple and stored and stored[0] == INDEX_VERSION:
            rows = []
            for sid in stored[1]:
                row = provider.read(("read", SESSIONS_TABLE, session_key(sid)), position)
                if not (type(row) is tuple and len(row) == 2 and row[0] == "ok"):
                    raise ValueError(f"storage {self.name}: session {sid} has no row ({row!r})")
                rows.append(row[1])
            return SessionTable.from_rows(stored, rows)
        table = SessionTable.load(stored)
        table.resave_all()
        logger.info("storage %s: session table stored whole, rewritten as rows", self.name)
        return table

    def _sessions_write(self) -> list[Any]:
        """The provider commands storing what changed in the table (nothing if nothing did);
        ``self.sessions.saved()`` once the transaction holding them committed."""
        if not self.sessions.changed:
            return []
        rows, index = self.sessions.changes()
        writes: list[Any] = [
            ("write", SESSIONS_TABLE, session_key(sid), row)
            if row is not None
            else ("delete", SESSIONS_TABLE, session_key(sid))
            for sid, row in rows
        ]
        if index is not None:
            writes.append(("write", SESSIONS_TABLE, SESSIONS_KEY, index))
        return writes

    def _refresh_config(self) -> None:
        found = self.provider.config()
        self.config: tuple[LogPos, Config] | None = found
        self.witness = found is not None and self.self_id in found[1].witness

    def _holds_data(self) -> bool:
        """Whether the applied config makes this replica a data replica. Such a replica must
        not apply a top-level ``noop_omitted``: that is a witness's stub of an entry whose
        data it lacks (a leader stubbed it by a config never committed), and applied it
        would leave the committed write out of this replica's data, silently. It waits for
        a snapshot instead (``_await_data``), as for a config making a witness a data
        replica."""
        found = self.config
        return found is not None and is_data_replica(self.self_id, found[1])

    # -- applying -------------------------------------------------------------------------------

    def handle_cast(self, msg: Any) -> None:
        cls = type(msg)
        if cls is ApplyRequest:
            if not self._hold(msg):
                self._handle_apply(msg)
                # Only a stall (new, or going on) leaves work here: otherwise the apply has
                # flushed a due buffer itself, and nothing is held. Every apply message of
                # every partition passes here, so the usual case costs one call.
                if self._stalled is not None or self.provider.write_stalled() is not None:
                    self._settle_writes()
        elif cls is ReadNowRequest:
            if not self._hold(msg):
                self._read_now(msg)
        elif cls is tuple and len(msg) == 2 and msg[0] == "delete_snapshot":
            self._delete_snapshot(msg[1])
        elif cls is tuple and len(msg) == 2 and msg[0] == "snapshots_in_use":
            self._sending = _snapshot_names(msg[1])
        else:
            logger.warning("storage %s dropped an unexpected cast %.200r", self.name, msg)
        if self._corruption is not None:
            raise self._corruption

    def _hold(self, msg: ApplyRequest | ReadNowRequest) -> bool:
        """Hold ``msg`` if the provider cannot take an apply without waiting for its last
        write (``applies_held``: its buffer is at its bound on a full or slow disk), or if
        earlier messages are held: True if held. Waiting inside the apply, as before, served
        nothing, not even a local read, for as long as the disk stayed full. A read for now
        (``ReadNowRequest``) is held behind held applies: the server sent it once it had
        sent them, and it must see them. Held applies keep their slots in the apply queue,
        whose bounds hold the server back."""
        held = self._held
        if not held and (type(msg) is ReadNowRequest or not self.provider.applies_held()):
            return False
        held.append(msg)
        if len(held) == 1:
            logger.warning(
                "storage %s holds its applies until its last write is done%s",
                self.name,
                "" if self._stalled is None else f" ({self._stalled})",
            )
            self._settle_writes()
        return True

    def _settle_writes(self) -> None:
        """After an apply, or when the provider's last write is done: write the buffer out if
        it is due, apply what is held for as long as the provider takes applies, have new
        commits refused while the provider's writes are stalled (``write_stalled``), and be
        woken when the last write is done if anything waits for it."""
        provider, held = self.provider, self._held
        while True:
            due = provider.write_back_due()
            if due is not None and due <= 0:
                provider.write_back()
            while held and not provider.applies_held():
                msg = held.popleft()
                if isinstance(msg, ApplyRequest):
                    self._handle_apply(msg)
                else:
                    self._read_now(msg)
                if not held:
                    logger.warning("storage %s applies again", self.name)
            if not self._wake_armed:
                self._wake_armed = provider.wake_when_written(self._wake)
            self._report_stall(provider.write_stalled())
            # Not woken, applies still held: the write was done meanwhile; go round again.
            if self._wake_armed or not held:
                return

    def _wake(self) -> None:
        """The provider's last write is done (called on the committer's thread)."""
        with self.node.activate():
            otp.send(self.pid, ("written",))

    def _report_stall(self, reason: str | None) -> None:
        """Refuse new commits (``commit_stalled``) while the provider cannot write what it
        applied, and accept them again once it can."""
        if (reason is None) == (self._stalled is None):
            return
        self._stalled = reason
        self.queues.set_storage_stalled(reason)
        if reason is not None:
            logger.warning(
                "storage %s: writes stalled (%s); refusing new commits, serving reads",
                self.name,
                reason,
            )
        else:
            logger.warning("storage %s: writes resumed; accepting commits", self.name)

    def _read_now(self, msg: ReadNowRequest) -> None:
        # Queued at the current position (its slot is held until it is taken), so that a
        # burst of them is served in turns like the reads queued behind a position.
        self.queues.submit_read(self.position.index, msg.from_, msg.command)
        self._serve_reads()

    def _handle_apply(self, msg: ApplyRequest) -> None:
        """Apply one message of committed entries (held or not)."""
        if self._failed is not None:
            # Sent before the server disabled the replica, or after it was enabled again
            # without a restart: start over from the durable position.
            raise StorageError(f"storage {self.name} cannot apply: {self._failed}")
        if self._awaiting_data is not None:
            self.queues.fulfill_apply(len(msg.items), msg.size)  # applied by the snapshot
        else:
            try:
                with coalesced_replies():
                    self._apply(msg.items, msg.size)
            except InvalidIncompleteReplica as exc:
                self._await_data(str(exc))
            except Exception as exc:
                self._apply_failed(exc)
            else:
                if _apply_failures:
                    _apply_failures.pop(self._failure_key, None)
            # Also after a failure that did not crash the actor: the rows applied before
            # it are buffered too.
            if self._write_back_timer is None:
                self._arm_write_back()
            else:
                self._postpone_write_back()

    def handle_info(self, msg: Any) -> None:
        if msg == ("write_back",):
            self._write_back_timer = None
            self._settle_writes()
            if self._write_back_timer is None:
                self._arm_write_back()
        elif msg == ("written",):
            self._wake_armed = False
            self._settle_writes()
        elif msg == ("serve_reads",):
            self._more_reads = False
            self._serve_reads()
        else:
            super().handle_info(msg)
        if self._corruption is not None:
            raise self._corruption

    def _arm_write_back(self) -> None:
        """A timer for the provider's write-back buffer, if it holds one: the rows of a
        partition that stopped applying are written out too (``write_back_due``)."""
        due = self.provider.write_back_due()
        if due is not None:
            delay = max(1, int(due * 1000) + 1)
            self._write_back_timer = otp.send_after(delay, self.pid, ("write_back",))

    def _postpone_write_back(self) -> None:
        """Push the armed timer back to the buffer's new due time. A partition that keeps
        applying writes its buffer out from its applies; a timer left at its first deadline
        fired only to be armed again, a timer delivery and a message per partition every
        few seconds (about one per committed op at 1000 busy partitions per node)."""
        timer, due = self._write_back_timer, self.provider.write_back_due()
        if timer is not None and due is not None:
            timer.postpone(time.monotonic() + due + 0.001)

    def _apply_failed(self, exc: Exception) -> None:
        """An apply raised. A fault of this replica's environment (I/O, the disk, damaged
        data) crashes the actor as always: the partition restarts and tries again. Anything
        else is the provider refusing a committed entry in a way no restart changes (a
        user's apply raising for a command, say): it crashed the partition at every replay,
        and the restarts went over the app supervisor's limit and restarted every other
        partition of the app too. After ``POISON_AFTER`` crashes at the same entry the
        replica is disabled instead (the reason names the entry and the error), applying
        nothing more until an operator enables it again."""
        if _environmental(exc):
            raise exc
        at = self.position.index + 1
        seen_at, count = _apply_failures.get(self._failure_key, (at, 0))
        count = count + 1 if seen_at == at else 1
        if isinstance(exc, SessionStoreError):
            count = max(count, POISON_AFTER)  # the provider cannot hold sessions at all
        _apply_failures[self._failure_key] = (at, count)
        if count < POISON_AFTER:
            raise exc
        reason = f"applying entry {at} failed {count} times: {type(exc).__name__}: {exc}"[:500]
        logger.error("storage %s: %s; disabling the replica", self.name, reason)
        self._failed = reason
        otp.cast(self.server, ("storage_failed", reason))

    def _await_data(self, reason: str) -> None:
        """The config to apply makes this replica, whose data is a witness's (incomplete), a
        data replica: apply nothing more and have the server go ``stalled`` until a snapshot
        brings the data (``_open_snapshot``). Raising, as before, restarted the partition,
        which applied the same entry again: a crash loop."""
        logger.error("storage %s: %s; waiting for a snapshot", self.name, reason)
        self._awaiting_data = reason
        otp.cast(self.server, ("storage_incomplete", reason))

    def _apply(self, items: Sequence[CoreApplyItem], size: int) -> None:
        queues = self.queues
        queues.fulfill_apply(len(items), size)
        replies: list[tuple[Any, Any]] = []
        done = {Priority.HIGH: 0, Priority.LOW: 0}
        # Consecutive plain commands go to the provider as one apply_batch (one transaction
        # for a durable provider); a $batch entry is one apply_many of its own, unless the
        # provider merges batches (its plain commands then join the chunk).
        chunk = _Chunk()
        chunk_items, chunk_shapes = chunk.items, chunk.shapes  # (cleared, never replaced)
        next_index = self.position.index + 1
        for index, entry, reply_to, priority in items:
            if index < next_index:
                continue  # already applied (a re-apply after a reset); reads are served below
            if index != next_index:
                raise OutOfOrderApply(f"storage {self.name} at {next_index - 1} got entry {index}")
            next_index += 1
            if reply_to is not None:  # an admitted commit (see ApplyItem)
                done[priority] += 1
            # tuple.__new__: half the NamedTuple constructor's cost, once per applied entry
            position = tuple.__new__(LogPos, (index, entry.term))
            command = entry.command
            # (``self.witness`` read each time: a config entry of this message may change it)
            if _plain_write(command) and not self.witness and not chunk.marks:
                # The usual entry, one client write, decided in one test: none of the checks
                # below (config, $batch, derived, session, reserved key) can match it.
                chunk_items.append((command, position, entry.label))
                chunk_shapes.append(reply_to)
                continue
            if command is None:
                raise OutOfOrderApply(f"storage {self.name} got the base entry at {index}")
            if command == NOOP_OMITTED and self._holds_data():
                self._apply_chunk(chunk, replies)
                raise InvalidIncompleteReplica(
                    self.self_id, f"holds a witness's stub of committed entry {index}"
                )
            if is_config_command(command) or (self.witness and command != NOOP):
                self._apply_chunk(chunk, replies)
                result = self._apply_special(command, position, entry.label)
                if reply_to is not None:
                    replies.append((reply_to, result))
                continue
            if is_batch_command(command):
                commands = self._commands_of(command)
                plain = _all_plain(commands)
                if plain and commands and self._merge_batches:
                    # Its commands join the chunk (same results as apply_many: a command the
                    # provider rejects fails the chunk, which is then applied one by one).
                    chunk.items.extend([(c, position, entry.label) for c in commands])
                    chunk.shapes.append(_Many(reply_to, len(commands)))
                    if chunk.marks:
                        chunk.marks.extend(Apply(c) for c in commands)
                    continue
                self._apply_chunk(chunk, replies)
                if not plain:
                    result = self._apply_session_items(
                        [(c, position, entry.label) for c in commands],
                        [self.sessions.begin(c, index, nested=True) for c in commands],
                        nested=True,
                    )
                else:
                    result = self._apply_many(commands, position, entry.label)
                self.position = position
                if reply_to is not None:
                    replies.append((reply_to, result))
            else:
                if is_derived_command(_inner(command)) and chunk.items and chunk.holds_opaque():
                    # Its entries before it are applied first, so it reads what they left
                    # (the same on every replica, however the apply batches fall).
                    self._apply_chunk(chunk, replies)
                chunk.items.append((command, position, entry.label))
                chunk.shapes.append(reply_to)
                marks = chunk.marks
                if (
                    marks
                    or is_session_command(command)
                    or is_derived_command(command)
                    or touches_reserved_key(command)
                ):
                    # Marks are kept only once a session command shows up in this chunk.
                    if not marks:
                        marks.extend(Apply(c) for c, _, _ in chunk.items[:-1])
                    marks.append(self.sessions.begin(command, index))
        self._apply_chunk(chunk, replies)
        for priority, count in done.items():
            if count:
                queues.commits_finished(count, priority, applied=True)
        if self._check_results and replies:
            checked = self._encodable([result for _, result in replies])
            replies = [(r, result) for (r, _), result in zip(replies, checked, strict=True)]
        for reply_to, result in replies:
            reply_to.reply(result)
        self._serve_reads()
        if self._notify_complete and queues.apply_queue_size() == 0:
            otp.cast(self.server, ("notify_complete",))

    def _apply_chunk(self, chunk: _Chunk, replies: list[tuple[Any, Any]]) -> None:
        """Apply ``chunk`` (then empty it), adding each reply to ``replies``."""
        items = chunk.items
        if not items:
            return
        if chunk.marks:
            results = self._apply_session_items(items, chunk.marks)
        else:
            try:
                results = self.provider.apply_batch(items)
            except UnknownCommandError as exc:
                results = self._after_refusal(items, items, [Apply(c) for c, _, _ in items], exc)
        self.position = items[-1][1]
        at = 0
        for shape in chunk.shapes:
            if type(shape) is _Many:
                reply_to, result = shape.reply_to, results[at : at + shape.count]
                at += shape.count
            else:
                reply_to, result = shape, results[at]
                at += 1
            if reply_to is not None:
                replies.append((reply_to, result))
        if at != len(results):
            raise ValueError(f"storage {self.name}: {len(results)} results for {at} commands")
        chunk.clear()

    def _apply_session_items(
        self,
        items: Sequence[tuple[Any, LogPos, Any]],
        marks: Sequence[Done | Apply | Pending],
        nested: bool = False,
    ) -> list[Any]:
        """Apply items whose session decisions are ``marks`` (one per item): an answered or
        pending duplicate reaches the provider as a ``noop``; the results of applied tagged
        commands are recorded, and the table written with them in one ``apply_batch_then``.

        A command only the protocol writes (``is_internal_command``) inside a session call,
        or inside a ``$batch`` entry (``nested``), is refused (``INTERNAL_COMMAND_ERROR``):
        applied, a config would change storage's membership behind the core's back, and a
        ``noop_omitted`` would mark a full replica incomplete. (Top-level ones are the core's
        own entries; the gateway refuses clients' before they reach the log.)"""
        translated: list[tuple[Any, LogPos, Any]] = []
        derived: dict[int, Any] = {}  # item number -> the result of its derived command
        rederive: list[int] = []  # the items _derive translated (redone after a refusal)
        written = _Written(self.provider.key_identity, translated)
        opaque = False
        for mark, (_, position, label) in zip(marks, items, strict=True):
            command = mark.command if type(mark) is Apply else NOOP
            if touches_reserved_key(command):
                # Refused the same way on every replica; a session records the refusal.
                command, derived[len(translated)] = NOOP, RESERVED_KEY_ERROR
            elif (
                type(mark) is Apply
                and (nested or mark.session is not None)
                and is_internal_command(command)
            ):
                command, derived[len(translated)] = NOOP, INTERNAL_COMMAND_ERROR
            elif is_derived_command(command):
                if opaque:  # only inside one $batch entry: _apply splits chunks before it
                    command, derived[len(translated)] = NOOP, DERIVED_AFTER_OPAQUE
                else:
                    rederive.append(len(translated))
                    command, derived[len(translated)] = self._derive(
                        command, written, len(translated)
                    )
            else:
                opaque = opaque or _opaque(command)
            translated.append((command, position, label))
        if derived:
            marks = [
                Apply(mark.command, mark.session, mark.seq, derived[i])
                if i in derived and type(mark) is Apply
                else mark
                for i, mark in enumerate(marks)
            ]
        try:
            results = self._apply_then(translated, marks)
        except UnknownCommandError as exc:
            return self._after_refusal(items, translated, marks, exc, rederive)
        return self._answers(marks, results)

    def _answers(self, marks: Sequence[Done | Apply | Pending], results: list[Any]) -> list[Any]:
        """What the callers of items with these session decisions get, given the provider's
        ``results`` of the commands applied for them."""
        sessions = self.sessions
        answers: list[Any] = []
        for mark, result in zip(marks, results, strict=True):
            if isinstance(mark, Pending):
                answers.append(sessions.result(mark.session, mark.seq))
            elif isinstance(mark, Done) or (mark.result is not None and not _is_error(result)):
                answers.append(mark.result)  # answered by the table, a derived command, a refusal
            else:
                answers.append(result)
        return answers

    def _after_refusal(
        self,
        items: Sequence[tuple[Any, LogPos, Any]],
        translated: Sequence[tuple[Any, LogPos, Any]],
        marks: Sequence[Done | Apply | Pending],
        exc: UnknownCommandError,
        rederive: Sequence[int] = (),
    ) -> list[Any]:
        """The answers to ``items`` (their commands as the provider gets them:
        ``translated``; their session decisions: ``marks``) once the provider refused a
        command among them (``exc``) and applied none of them (or, a provider that is not one
        transaction, those ``exc`` says).

        The derived commands among them (item numbers ``rederive``) after a refused one are
        derived again without it: one built on a write the provider refused gave another
        value (and answer) than on a replica that got that write in an apply message of its
        own, where the provider refused it before the derived command read the key.

        Each refused command is replaced by a ``noop`` answered (and, in a session, recorded)
        with its error, and the items applied again as one transaction: their data, recorded
        results and position commit together or not at all, as without a refusal. Applying
        them one at a time instead (as before) committed each item's position alone: a crash
        in that loop left the rest of a ``$batch`` entry unapplied for good below the stored
        position, and the first item's transaction stored the results recorded for items not
        yet applied, so their retries answered ``ok`` for commands no replica had applied
        (found by a review). The same commands are refused on every replica, however the
        apply batches fall: a refusal depends on the command and the state before it.

        A provider that does not say which command it refused (``UnknownCommandError.index``)
        gets its items entry by entry (``_entry_by_entry``), and a refused entry is refused
        whole: no other way tells its commands apart without applying one alone."""
        if (
            exc.index is None
            and not isinstance(exc, PartialApplyError)
            and items[0][1] != items[-1][1]
        ):
            return self._entry_by_entry(items)
        translated = list(translated)
        marks = list(marks)
        one_entry = items[0][1] == items[-1][1]
        refused_items: set[int] = set()
        results: list[Any] = []  # of the items a provider that is not one transaction applied
        looping = False  # it raised a PartialApplyError: it applies in order, one by one
        while True:
            start = len(results)
            applied = applied_before(exc)
            if applied:
                # Applied, never to be applied again: recorded now, stored with the rest.
                looping = True
                self._recorder(marks[start : start + len(applied)])(applied)
                results += applied
            error = ("error", ("unknown_command", str(exc)))
            if exc.index is not None and 0 <= exc.index < len(translated) - start:
                refused = [start + exc.index]
            elif looping:
                refused = [len(results)]  # nothing applied: the loop refused its first item
            elif one_entry:
                refused = list(range(len(results), len(translated)))
            else:
                # Named refusals, then one it does not name: the provider breaks its contract.
                raise exc
            progress = False
            for at in refused:
                command, position, label = translated[at]
                if type(command) is str and command == NOOP:
                    continue
                progress = True
                translated[at] = (NOOP, position, label)
                mark = marks[at]
                marks[at] = (
                    Apply(mark.command, mark.session, mark.seq, error)
                    if type(mark) is Apply
                    else mark
                )
            if not progress:
                raise exc  # the provider refuses a noop: nothing left to answer for it
            refused_items.update(refused)
            after = min(refused)
            self._rederive(
                translated, marks, [at for at in rederive if at > after and at not in refused_items]
            )
            held = _REFUSED_LOG.ready()  # a client may send nothing else: never a line each
            if held:
                logger.warning(
                    "storage %s rejects commands (%d times), the last at %s: %s",
                    self.name,
                    held,
                    translated[refused[0]][1],
                    exc,
                )
            try:
                results += self._apply_then(translated[len(results) :], marks[len(results) :])
            except UnknownCommandError as again:
                exc = again
                continue
            return self._answers(marks, results)

    def _entry_by_entry(self, items: Sequence[tuple[Any, LogPos, Any]]) -> list[Any]:
        """The answers to the items of a chunk (entries of the log, in order, nothing of them
        applied) applied one entry per transaction, for a provider that refuses a command
        without saying which. The session decisions ``begin`` took for the whole chunk are
        taken again entry by entry from the table as stored (as after a restart, which
        decides the same): each transaction must store only what its own entry did to the
        table."""
        if _UNNAMED_LOG.ready():
            logger.warning(
                "storage %s: %s refuses commands without saying which "
                "(UnknownCommandError.index): a $batch entry holding one is refused whole",
                self.name,
                type(self.provider).__qualname__,
            )
        if self.sessions.changed:
            self.sessions = self._load_sessions()
        answers: list[Any] = []
        at = 0
        while at < len(items):
            position = items[at][1]
            end = at + 1
            while end < len(items) and items[end][1] == position:
                end += 1  # the commands of one $batch entry a chunk took in
            entry = items[at:end]
            marks = [self.sessions.begin(command, position.index) for command, _, _ in entry]
            answers += self._apply_session_items(entry, marks)
            self.position = position
            at = end
        return answers

    def _rederive(
        self,
        translated: list[tuple[Any, LogPos, Any]],
        marks: list[Done | Apply | Pending],
        numbers: Sequence[int],
    ) -> None:
        """Derive the derived commands of items ``numbers`` (ascending; their ``marks`` hold
        the command) again from ``translated`` as it is now, in place."""
        written = _Written(self.provider.key_identity, translated)
        for at in numbers:
            mark = marks[at]
            if type(mark) is not Apply:
                continue
            command, result = self._derive(mark.command, written, at)
            _, position, label = translated[at]
            translated[at] = (command, position, label)
            marks[at] = Apply(mark.command, mark.session, mark.seq, result)

    def _derive(self, command: Any, written: _Written, upto: int) -> tuple[Any, Any]:
        """``(provider command, result)`` for a read-modify-write command, against the state
        the provider will have after the first ``upto`` items of ``written`` (this batch's
        commands before it): the value the last write or delete of its key among them left,
        else the provider's. The same on every replica, however the apply batches fall (a
        leader, a follower and a replay group the same entries differently): keys are told
        apart as the provider's rows are (``key_identity``), no derived command joins a
        batch after a provider's own command (``_Chunk.holds_opaque``), and one built on a
        command the provider then refused is derived again (``_after_refusal``)."""
        kind, table, key, argument = command
        try:
            current = written.at(self.provider.key_identity(key), upto)
        except UnknownCommandError:
            current = None  # a key no row can hold: the provider refuses the read below
        if current is None:
            try:
                current = self.provider.read(("read", table, key), self.position)
            except UnknownCommandError as exc:  # a key the provider cannot hold
                return NOOP, ("error", ("unknown_command", str(exc)))
        found = current[1] if type(current) is tuple and current[0] == "ok" else None
        if kind == "incr":
            if found is None:
                found = 0
            if type(found) is not int or type(argument) is not int:
                return NOOP, ("error", "not_an_integer")
            total = found + argument
            if not INT_MIN <= total <= INT_MAX:
                # Beyond what msgpack encodes: storing it crashed the storage actor on this
                # committed entry at every replay, and the partition never served again.
                return NOOP, ("error", "integer_overflow")
            return ("write", table, key, total), ("ok", total)
        if found is None:
            found = ()
        if not isinstance(found, (list, tuple)):
            return NOOP, ("error", "not_a_list")
        return ("write", table, key, (*found, argument)), OK

    def _apply_then(
        self,
        items: Sequence[tuple[Any, LogPos, Any]],
        marks: Sequence[Done | Apply | Pending],
    ) -> list[Any]:
        """``apply_batch_then`` with the session table's changes in the same transaction; once
        it committed they are saved. One that raised leaves the changes for the next, but for
        the results it recorded (``finalize`` may run before the items are applied): those
        are taken back, so that no later transaction stores a result for a command it does
        not apply."""
        finished: list[tuple[int, int]] = []
        try:
            results = self.provider.apply_batch_then(items, self._recorder(marks, finished))
        except BaseException:
            for session, seq in finished:
                self.sessions.reopen(session, seq)
            raise
        self.sessions.saved()
        return results

    def _recorder(
        self,
        marks: Sequence[Done | Apply | Pending],
        finished: list[tuple[int, int]] | None = None,
    ) -> Callable[[list[Any]], list[Any]]:
        """A ``finalize`` recording the results of ``marks`` (a derived command's or a
        refused one's own answer, ``Apply.result``, over the provider's) and returning the
        commands that store the table; it appends each ``(session, seq)`` it finished to
        ``finished``."""

        def record(results: list[Any]) -> list[Any]:
            sessions = self.sessions
            check = self._check_results
            for mark, result in zip(marks, results, strict=True):
                if type(mark) is Apply and mark.session is not None:
                    if mark.result is not None and not _is_error(result):
                        result = mark.result
                    if check:
                        # What the caller was told (``_encodable``), and what a retry is told:
                        # the table is the provider's data, and a value msgpack cannot carry
                        # in it made every snapshot fail until the seq was acknowledged.
                        result = _encodable_result(result)
                    if sessions.finish(mark.session, mark.seq, result) and finished is not None:
                        finished.append((mark.session, mark.seq))
            return self._sessions_write()

        return record

    def _apply_many(self, commands: Sequence[Any], position: LogPos, label: Any) -> Any:
        """A ``$batch`` entry; its commands the provider does not know get an error each, the
        others applied with the entry's position in one transaction (``_after_refusal``)."""
        try:
            return self.provider.apply_many(commands, position, label)
        except UnknownCommandError as exc:
            items = [(command, position, label) for command in commands]
            return self._after_refusal(items, items, [Apply(c) for c in commands], exc)

    def _apply_special(self, command: Any, position: LogPos, label: Any) -> Any:
        """A config change, or a command a witness skips."""
        if is_config_command(command):
            result = self.provider.apply_config(command[1], position)
            self.position = position
            self._refresh_config()
            return ("ok", position) if result == OK else result
        # A witness keeps no data: advance the position, and now and then record it. The first
        # skipped entry is recorded at once (WARaft waits for the interval): until a
        # noop_omitted is applied the provider is not marked incomplete, and a config making
        # this replica a data member would pass check_config with data missing.
        if self.skipped >= self._witness_interval or not self.provider.incomplete():
            self.skipped = 0
            result = self.provider.apply(NOOP_OMITTED, position, label)
        else:
            self.skipped += 1
            result = OK
        self.position = position
        return result

    def _serve_reads(self) -> None:
        """Answer the queued reads storage has reached, about ``raft_max_reads_per_batch``
        reads at a time (a batch is never split: it reads one position). A scheduled actor
        serves one such chunk per run of its scheduler: the reads ready after it, or queued
        by the messages it handles next in the same run (reads from the wire, say), wait
        until the scheduler has run the processes waiting for it (``otp.at_turn_end``). A
        thread process serves the rest after the messages already in its mailbox (a status
        call, an apply). Served in one turn, 50,000 reads of one frame held a scheduler for
        seconds; 20 such frames a second, and the leader grew to 3.4 GB and was deposed."""
        if self._reads_served:
            return  # _turn_over serves them
        queues = self.queues
        position = self.position.index
        reads = queues.take_reads(position, queues.settings.raft_max_reads_per_batch)
        if reads:
            budget = self._reply_budget()
            for from_, command in reads:
                from_.reply(self._read(command, budget))
        else:
            return
        if otp.at_turn_end(("serve_reads", self.pid), self._turn_over):
            self._reads_served = True
        elif queues.reads_ready(position) and not self._more_reads:
            self._more_reads = True
            otp.send(self.pid, ("serve_reads",))

    def _turn_over(self) -> None:
        """The scheduler ran the others (its thread, this actor suspended): serve on."""
        self._reads_served = False
        if self.queues.reads_ready(self.position.index):
            otp.send(self.pid, ("serve_reads",))

    def _reply_budget(self) -> _ReplyBudget | None:
        """A fresh budget of ``raft_max_read_reply_bytes`` (None: unlimited)."""
        limit = self.queues.settings.raft_max_read_reply_bytes
        return _ReplyBudget(limit) if limit else None

    def _encodable(self, results: list[Any]) -> list[Any]:
        """``results`` with each one msgpack cannot carry (a provider's set, say) replaced by
        ``UNENCODABLE_RESULT``: a reply frame that did not encode was dropped whole, and every
        other client request answered in it timed out although it was applied."""
        try:
            codec.packb(results)
        except CodecError:
            held = _UNENCODABLE_LOG.ready()
            if held:
                logger.warning(
                    "storage %s: the provider answered values msgpack cannot carry (%d times)",
                    self.name,
                    held,
                )
            return [_encodable_result(r) for r in results]
        return results

    def _read(self, command: Any, budget: _ReplyBudget | None = None) -> Any:
        """A read at the current position; a ``$batch`` of reads answers a list. A read the
        provider does not understand gets an error, never a crash. With ``budget``, reads
        past it are answered ``read_queue_bytes_full`` instead of read (see
        ``raft_max_read_reply_bytes``)."""
        read = self._read_one if budget is None else budget.reader(self._read_one)
        if is_batch_command(command):
            result: Any = [read(c) for c in self._commands_of(command)]
        else:
            result = read(command)
        if self._check_results:
            return self._encodable([result])[0]
        return result

    def _read_one(self, command: Any) -> Any:
        if touches_reserved_key(command):
            return RESERVED_KEY_ERROR
        try:
            return self.provider.read(command, self.position)
        except UnknownCommandError as exc:
            return ("error", ("unknown_command", str(exc)))
        except StorageCorruptionError as exc:
            # Never answer from damaged data. The actor crashes once the message is handled
            # (its other callers answered): the partition restarts and the provider
            # quarantines it when it opens again.
            logger.error("storage %s: damaged data, crashing: %s", self.name, exc)
            self._corruption = exc
            return ("error", "storage_corruption")

    @staticmethod
    def _commands_of(command: Any) -> Sequence[Any]:
        try:
            return batch_commands(command)
        except (UnknownCommandError, CodecError) as exc:
            # A malformed batch is one unknown command: answered, not crashed on.
            return [("$malformed_batch", str(exc))]

    # -- calls ----------------------------------------------------------------------------------

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        result = self._handle_call(request, from_)
        if self._corruption is not None:
            if result is not otp.NOREPLY:
                from_.reply(result)
            raise self._corruption
        return result

    def _handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if not isinstance(request, tuple) or not request:
            return ("error", "badarg")
        kind = request[0]
        if kind == "read" and isinstance(from_, RemoteReplyTo):
            self._through_door(request)
        if kind == "read" and len(request) != 2:
            # Reachable from the wire (distribution.policy): answered, never a crash.
            return ("error", "badarg")
        provider = self.provider
        if kind == "open" or kind == "position":
            return self.position
        if kind == "durable_position":
            # The log actor's trim bound (waraft.log.LogServer._trim). A provider that flushes
            # every commit is durable up to what this server counts as applied (a witness
            # counts skipped entries too), as the trim bound has always been.
            durable = provider.durable_position()
            return self.position if durable == provider.position() else durable
        if kind == "config":
            return self.config
        if kind == "label":
            return provider.label()
        if kind == "quarantine":
            # Why the provider emptied this replica's damaged data (None: it did not).
            return getattr(provider, "quarantine", None)
        if kind == "read":
            if isinstance(from_, RemoteReplyTo):
                return self._remote_read(request[1], from_)
            if touches_reserved_key(request[1]):
                # A caller on this node (an operator, a test) may inspect the session table.
                return provider.read(request[1], self.position)
            return self._read(request[1])
        if kind == "status":
            status = {
                "name": self.name,
                "table": self.options.table,
                "partition": self.options.partition,
                "module": type(provider).__name__,
                "last_applied": self.position.index,
                "witness": self.witness,
                "snapshots_in_use": sorted(self._sending),
                "held_applies": len(self._held),  # see _hold
                "writes_stalled": self._stalled,  # new commits refused meanwhile
            }
            status.update(provider.status())
            return status
        if kind == "open_snapshot":
            return self._open_snapshot(request[1], request[2])
        if kind == "make_empty_snapshot":
            _, path, position, config, data = request
            made = type(provider).make_empty_snapshot(
                provider.options, path, position, config, data
            )
            if made == NOT_SUPPORTED:
                logger.error(
                    "storage %s: %s does not implement make_empty_snapshot, so its partitions "
                    "cannot be bootstrapped",
                    self.name,
                    type(provider).__qualname__,
                )
            return made
        if kind in ("create_snapshot", "create_witness_snapshot"):
            name = request[1] if len(request) > 1 else None
            keep = request[2] if len(request) > 2 else ()
            in_use = request[3] if len(request) > 3 else None
            return self._create_snapshot(name, kind == "create_witness_snapshot", keep, in_use)
        logger.warning("storage %s got an unexpected call %r", self.name, request)
        return ("error", "unknown_request")

    def _door(self, sender: policy.Sender, request: Any) -> bool:
        """The guard of ``read`` calls from the wire, on the receive thread: whether one more
        may wait in this actor's mailbox. Reads that passed and are not taken yet
        (``_through_door``) are bounded by ``raft_max_pending_reads`` (a batch larger than
        the bound passes only into an empty door); past it the call is refused
        (``refused``) before it takes any memory. Admission behind it (``_remote_read``)
        bounds what this actor holds; this bounds its mailbox, which a client decoding at
        half a core filled faster than storage serves."""
        count = _door_count(request)
        with self._door_lock:
            held = self._at_door
            if held and held + count > self.queues.settings.raft_max_pending_reads:
                return False
            self._at_door = held + count
        return True

    def _through_door(self, request: Any) -> None:
        """A read call that passed ``_door`` is taken from the mailbox."""
        count = _door_count(request)
        with self._door_lock:
            self._at_door = max(0, self._at_door - count)

    def _remote_read(self, command: Any, from_: RemoteReplyTo) -> Any:
        """A client's local read from the wire (``distribution.policy``). Never the session
        rows, which hold every session's token (its capability) and recorded results. A
        ``$batch`` of at most ``raft_max_reads_per_batch`` reads, admitted as the strong reads
        are (``raft_max_pending_reads`` and ``raft_max_pending_read_bytes``, shared with
        them: refused ``read_queue_full`` / ``read_queue_bytes_full``, which the client
        retries) and served with them in turns, charged to the reply budget. Unadmitted,
        one client's frames of 50,000 reads each piled up here without bound."""
        if touches_reserved_key(command):
            return RESERVED_KEY_ERROR
        queues = self.queues
        refused = oversized_read(command, queues.settings.raft_max_reads_per_batch)
        if refused is not None:
            return refused
        admitted, reason = queues.admit_reads([(from_, command, None)])
        if not admitted:
            return ("error", reason)
        queues.submit_read(self.position.index, admitted[0][0], command)
        self._serve_reads()
        return otp.NOREPLY

    def _open_snapshot(self, path: str, position: LogPos) -> Any:
        logger.info("storage %s at %s opens snapshot %s", self.name, self.position, position)
        result = self.provider.open_snapshot(path, position)
        if result == OK:
            self._awaiting_data = None
            self.position = position
            self.skipped = 0
            self.sessions = self._load_sessions()
            self._refresh_config()
        return result

    def _create_snapshot(self, name: str | None, witness: bool, keep: Any, in_use: Any) -> Any:
        # The snapshots the catch-up coordinator's transports send are spared from every
        # caller's retention, not only the coordinator's: an operator's create_snapshot knows
        # nothing of them. The storage remembers them rather than asking the coordinator, which
        # calls the storage (a call back would deadlock). Safe because the storage is the one
        # place that deletes: it sees the coordinator's messages in the order they were sent,
        # and the coordinator's set changes only (1) by this call's own snapshot, remembered
        # here before the reply, so before any transport can use it, and (2) by a transfer
        # ending, after which the coordinator deletes it (``delete_snapshot`` forgets it). So
        # what is remembered always covers what is sent; what it covers beyond (a snapshot
        # whose transport did not start, or the transports of a coordinator that crashed
        # before it could delete them) is kept until the coordinator's next list. A caller's
        # ``keep`` only adds to it: passing none, or an empty one, never forgets a name.
        if in_use is not None:
            self._sending = _snapshot_names(in_use)
        position = self.position
        name = name or snapshot_name(position, witness)
        spared = _snapshot_names(keep) | self._sending
        # Directory and file work (rmtree, rename, fsync) off the scheduler when the actor is
        # scheduled; a plain call on a storage actor's own thread.
        result = otp.blocking(self._write_snapshot_dir, name, witness, spared)
        if in_use is not None and result == ("ok", position):
            self._sending |= {name}
        return result

    def _write_snapshot_dir(self, name: str, witness: bool, keep: frozenset[str]) -> Any:
        position = self.position
        target = os.path.join(self.path, name)
        if os.path.isdir(target):
            return ("ok", position)  # an existing snapshot of that name is reused
        self._cleanup_snapshots(keep)
        # Written under a temporary name and renamed once complete, so that a crash midway
        # never leaves a half-written directory that a later request would reuse. What a
        # crash leaves is removed when the storage next opens (remove_leftovers); what a
        # failure or an exception leaves, here: it is a full copy of the partition's data.
        partial = os.path.join(self.path, partial_name(name))
        shutil.rmtree(partial, ignore_errors=True)
        try:
            if witness:
                result = self.provider.create_witness_snapshot(partial)
            else:
                result = self.provider.create_snapshot(partial)
            if result == OK:
                result = self._publish_snapshot(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone already once renamed
        return ("ok", position) if result == OK else result

    def _publish_snapshot(self, partial: str, target: str) -> Any:
        """Rename the complete snapshot ``partial`` to ``target`` durably: ``"ok"``, or
        ``("error", reason)`` (as a provider's own snapshot I/O failure) with ``target``
        absent, so the caller (the catch-up coordinator: its failed backoff) retries rather
        than the storage actor crashing and restarting the partition (its leadership lost)."""
        try:
            os.rename(partial, target)
        except OSError as exc:  # EIO, ENOSPC: ``partial`` is still there for the caller
            logger.error("storage %s cannot rename snapshot %s: %s", self.name, target, exc)
            return ("error", f"cannot rename snapshot {target}: {exc}")
        try:
            fsync_directory(self.path)
        except OSError as exc:
            # The rename may not survive a power loss: nobody tracks a snapshot answered by an
            # error (a full copy of the data), and a retry would reuse it by name without
            # ever fsyncing the directory. Renamed back, it is ``partial`` again, which the
            # caller removes (a crash before that leaves a leftover the next open removes).
            logger.error("storage %s cannot fsync %s: %s", self.name, self.path, exc)
            try:
                os.rename(target, partial)
            except OSError:
                shutil.rmtree(target, ignore_errors=True)
            return ("error", f"cannot make snapshot {target} durable: {exc}")
        return OK

    def _cleanup_snapshots(self, keep: frozenset[str]) -> None:
        # Before making a new snapshot, keep at most MAX_RETAINED_SNAPSHOT older ones (as
        # WARaft) besides those in use: deleting a snapshot a transport still sends fails
        # that catch-up, and with three lagging peers catch-ups would keep failing each other
        # (or an operator taking snapshots would keep failing them).
        unused = [name for _, name in list_snapshots(self.path) if name not in keep]
        for name in unused[: max(0, len(unused) - MAX_RETAINED_SNAPSHOT)]:
            self._delete_snapshot(name)

    def _delete_snapshot(self, name: Any) -> None:
        if not isinstance(name, str) or not _SNAPSHOT_RE.match(name):
            logger.warning("storage %s refuses to delete %r", self.name, name)
            return
        self._sending -= {name}
        otp.blocking(shutil.rmtree, os.path.join(self.path, name), ignore_errors=True)
        logger.info("storage %s deleted snapshot %s", self.name, name)


def start_link(options: Any) -> otp.Pid:
    """Start the storage actor registered as ``options.storage_name``: scheduled for a provider
    that never blocks (memory), on a thread of its own for LMDB, SQLite or any other."""
    blocking = getattr(options.storage_module, "blocking_io", True)
    pid: otp.Pid = StorageServer.start_link(
        options, name=options.storage_name, process_type=otp.THREAD if blocking else None
    )
    return pid


def child_spec(options: Any) -> dict[str, Any]:
    """WARaft's child spec: transient, 30 s shutdown."""
    return {
        "id": "wa_raft_storage",
        "start": (start_link, (options,)),
        "restart": "transient",
        "shutdown": 30000,
    }


# -- the API ------------------------------------------------------------------------------------

STORAGE_TIMEOUT = 60.0  # raft_storage_call_timeout


def read(storage: otp.Target, command: Any) -> Any:
    """A local, non-consistent read at storage's current position."""
    return otp.call(storage, ("read", command), STORAGE_TIMEOUT)


def position(storage: otp.Target) -> LogPos:
    """Storage's last applied position."""
    result: LogPos = otp.call(storage, ("position",), STORAGE_TIMEOUT)
    return result


def status(storage: otp.Target) -> dict[str, Any]:
    """Storage facts for status output."""
    result: dict[str, Any] = otp.call(storage, ("status",), STORAGE_TIMEOUT)
    return result


def create_snapshot(
    storage: otp.Target,
    name: str | None = None,
    keep: Sequence[str] = (),
    *,
    in_use: Sequence[str] | None = None,
) -> Any:
    """``("ok", LogPos)`` once ``snapshot.<index>.<term>`` (or ``name``) exists.

    A snapshot of that name is reused. Before a new one is made, the older snapshots are
    deleted except those in use and the newest ``MAX_RETAINED_SNAPSHOT`` (1) of the rest.
    In use are those named in ``keep`` (any caller's own, which it deletes once done) and,
    whoever calls, every snapshot the node's catch-up coordinator is still sending: the
    storage remembers them from the coordinator's last ``in_use`` (see
    ``snapshots_in_use``).

    ``in_use`` is for the catch-up coordinator alone: its complete list of the partition's
    snapshots its transports still send (at most ``raft_max_snapshot_catchup``, one per
    transport), empty if none. It replaces the remembered list, and the snapshot this call
    makes or reuses joins it until the coordinator deletes it (``delete_snapshot``) or leaves
    it out of a later list. Other callers leave it ``None``.
    """
    return otp.call(
        storage, _snapshot_request("create_snapshot", name, keep, in_use), STORAGE_TIMEOUT
    )


def create_witness_snapshot(
    storage: otp.Target,
    name: str | None = None,
    keep: Sequence[str] = (),
    *,
    in_use: Sequence[str] | None = None,
) -> Any:
    """Like ``create_snapshot`` but metadata only (``snapshot.<index>.<term>.witness``)."""
    request = _snapshot_request("create_witness_snapshot", name, keep, in_use)
    return otp.call(storage, request, STORAGE_TIMEOUT)


def request_snapshot(
    storage: otp.Target, witness: bool, in_use: Sequence[str], reply_to: otp.ReplyTo
) -> None:
    """The catch-up coordinator's ``create_snapshot(storage, in_use=in_use)`` (or
    ``create_witness_snapshot``) without waiting: the answer completes ``reply_to``, however
    long the snapshot takes (a copy of the whole partition), or fails it if the storage is
    not there or dies first."""
    kind = "create_witness_snapshot" if witness else "create_snapshot"
    otp.send_request(storage, _snapshot_request(kind, None, (), in_use), reply_to)


def _snapshot_request(
    kind: str, name: str | None, keep: Sequence[str], in_use: Sequence[str] | None
) -> tuple[Any, ...]:
    return (kind, name, tuple(keep), None if in_use is None else tuple(in_use))


def snapshots_in_use(storage: otp.Target, names: Sequence[str]) -> None:
    """Tell ``storage`` (a cast) the complete list of its partition's snapshots the node's
    catch-up coordinator is still sending, as ``create_snapshot``'s ``in_use`` does: the
    coordinator repeats it while it sends, so that a storage that restarted (and forgot it)
    while a transport kept sending learns it again."""
    otp.cast(storage, ("snapshots_in_use", tuple(names)))


def delete_snapshot(storage: otp.Target, name: str) -> None:
    """Remove a snapshot directory (a cast); it is no longer in use."""
    otp.cast(storage, ("delete_snapshot", name))


class _ReplyBudget:
    """Bytes of read results one turn of storage may still build (``raft_max_read_reply_bytes``).

    Reads are admitted by count (``raft_max_pending_reads``, 5000) and by the bytes of their
    commands (``raft_max_pending_read_bytes``), not of their results, and storage answers every
    read queued behind a position at once: 5000 reads of a 1 MiB value made 5 GB of results
    in one turn, before a byte of it could leave (``benchmarks/read_replies.py``: the leader
    passed 2 GB and answered almost nothing). Past the budget a read is answered at once with
    ``read_queue_bytes_full``, which the client retries after a back-off, when the replies
    already built have left."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def reader(self, read_one: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``read_one`` charged to this budget: past it, the refusal instead of a read."""

        def read(command: Any) -> Any:
            if self.left <= 0:
                return READ_BYTES_FULL_ERROR
            result = read_one(command)
            self.left -= approx_command_size(result)
            return result

        return read


def _door_count(request: Any) -> int:
    """The reads a ``read`` call stands for at the door (``StorageServer._door``)."""
    if type(request) is tuple and len(request) == 2:
        return read_count(request[1])
    return 0


def _snapshot_names(names: Any) -> frozenset[str]:
    """The snapshot names in a message's list (anything else in it ignored)."""
    if not isinstance(names, (list, tuple, set, frozenset)):
        return frozenset()
    return frozenset(n for n in names if isinstance(n, str))


def _encodable_result(result: Any) -> Any:
    """``result``, or ``UNENCODABLE_RESULT`` if msgpack cannot carry it; a ``$batch``'s list
    of results keeps the ones that encode."""
    if _encodes(result):
        return result
    if type(result) is list:
        return [r if _encodes(r) else UNENCODABLE_RESULT for r in result]
    return UNENCODABLE_RESULT


def _encodes(value: Any) -> bool:
    try:
        codec.packb(value)
    except CodecError:
        return False
    return True


__all__ = [
    "BAD_POSITION",
    "BATCH",
    "NOT_FOUND",
    "OK",
    "RESERVED_KEY_ERROR",
    "SESSIONS_KEY",
    "SESSIONS_TABLE",
    "ApplyItem",
    "InvalidIncompleteReplica",
    "OutOfOrderApply",
    "StorageCorruptionError",
    "StorageError",
    "StorageOptions",
    "StorageProvider",
    "StorageServer",
    "UnknownCommandError",
    "batch_commands",
    "bootstrap_prefix",
    "child_spec",
    "create_snapshot",
    "create_witness_snapshot",
    "default_name",
    "delete_snapshot",
    "is_batch_command",
    "is_data_replica",
    "is_derived_command",
    "list_snapshots",
    "partial_name",
    "position",
    "read",
    "remove_leftovers",
    "request_snapshot",
    "snapshot_name",
    "snapshots_in_use",
    "start_link",
    "status",
]
