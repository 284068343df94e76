"""Durable storage in ONE LMDB environment per node, a named database per partition, with a
checksum on every stored value (``NodeLmdbStorage``).

Layout: every partition whose data directory sits in ``<raft_database>`` keeps its state in the
environment ``<raft_database>/storage-lmdb/`` (or the option ``extra["lmdb_node_dir"]``): one
named database per partition, named after the partition directory's base name. The database
holds the partition's KV rows (keys encoded exactly as ``waraft.storage.lmdb`` encodes them) and
its metadata rows (position, config, label, incomplete mark, quarantine reason) under keys
``0xc1`` + ``meta:`` + name, which no encoded key can equal: a msgpack encoding never starts with
``0xc1``, and a long key's ``0xc1`` + 32-byte digest is 33 bytes long, never a metadata key's
length. Open file descriptors per node: LMDB's data and lock files and this module's lock file,
whatever the number of partitions. The partition directory gets an empty marker file
``lmdb-node``: a directory without it is new or was wiped (moved away to be rebuilt by a
snapshot), and its database is emptied when it opens, as the node's WAL drops the log of a
wiped directory — unless it holds a ``waraft.storage.lmdb`` environment (``storage.lmdb/``, a
node that ran with that provider): its state is then imported.

Atomicity: as in ``waraft.storage.lmdb`` (whose command handling this class inherits), every
apply commits data, position, config, label and incomplete mark all or nothing. LMDB serialises
the write transactions of an environment, so the node commits in groups (``NodeEnv.commit``):
the writes of every partition queued while a transaction commits go into the next one. Without
grouping, 1000 partitions per node timed out most first writes (two fsyncs per partition write,
one after another); see ``benchmarks/SCALE.md``.

Durability: lazy sync by default (``lmdb_sync`` False), as ra and etcd do it: the Raft log is
what makes an entry durable (the node's WAL fsyncs it before it is acknowledged or applied), and
the state machine is synced in the background. A group commit fsyncs its data pages but not
its meta page (LMDB's ``MDB_NOMETASYNC``), so that a power loss leaves the environment as of
one of its commits, never torn. The node's syncer thread makes the latest commits durable too
(``env.sync(True)``) once ``lmdb_sync_interval_ms`` (default 1000) have passed since the first
unsynced commit, or sooner once ``lmdb_sync_bytes`` (default 64 MiB) of values were written.
Each partition tracks its *durable position* (``durable_position()``): its applied position as
of the last completed sync. The log actor never trims the log above it
(``waraft.log.LogServer``), so every applied entry is in the synced environment or still in the
log, and a restart whose storage came back older (power loss) applies the log's tail again. A
lazy-sync apply does not even wait for its group commit: it queues the write and returns, and
the partition's next write, snapshot or whole-environment read waits for it first
(``NodeLmdbStorage._write``), while a read of one key takes the write's row from it
(``_lookup``: on a full disk the write waits for room, and reads must still be served); it
counts towards the durable position once committed.
Nor is every apply its own write: applied rows go into the partition's *write-back buffer*
(stored key -> last value, or deleted), which the next apply queues as one write once
``lmdb_flush_interval_ms`` (default 2000) passed since its first row or ``lmdb_flush_bytes``
(default 256 KiB) of values were applied, and the storage actor's timer within
``IDLE_FLUSH_FACTOR`` intervals once the partition stops applying; a snapshot, a close and
anything reading the whole environment flush it first, and a read of one key looks in it first.
A key written many times in between is checksummed and put once. ``lmdb_flush_interval_ms`` 0
queues every apply's write as it is applied (no buffer). On a full disk a flush waits in the
committer for room, and no apply waits for it (``_caught_up``): the buffer takes applies up to
``BEHIND_FACTOR`` times its byte bound, beyond which the storage actor holds its apply messages
(``applies_held``); the partition has new commits refused with ``commit_stalled`` meanwhile
(``write_stalled``), reads are served (from the buffer, the waiting flush and LMDB), and the
committer wakes the storage actor once the flush lands (``wake_when_written``). What each
failure costs:

* process crash (``kill -9``): nothing the log does not hold (an apply still queued or in the
  write-back buffer is re-applied from it). A commit's pages are in the kernel's page cache
  when it returns, and LMDB never overwrites the pages of the last two commits.
* power loss or kernel crash: the commits since the last sync can be lost (re-applied from the
  log). Each commit's data pages are on disk before its meta page is written, and LMDB never
  overwrites the pages of the last two commits, so the environment comes back as of one of its
  commits at or after the last sync. (Without the data fsync, pages reach the disk in no
  order, and a review built post-power-loss images that opened without any error but with
  data older or newer than their position row: stale pages pass their checksums.) A
  partition damaged some other way is caught by the checksums, the check at open and the
  quarantine with snapshot repair (below), at the cost of a snapshot transfer.
* a failed sync (``EIO``): the kernel may have dropped the pages it could not write, so a later
  sync that succeeds proves nothing about them. The node's durable positions stop moving
  (``NodeEnv.sync_failure``, in every partition's status): the log keeps every entry applied
  since the last good sync, and the node logs an error: the environment no longer matches the
  disk, and should be rebuilt (the partitions' directories moved away, to be restored by
  snapshots from healthy replicas).

``lmdb_sync=True`` fsyncs every group commit before any of its writes returns (data, then meta
page): nothing of the environment is ever lost or torn, at the price of LMDB's copy-on-write
pages written and flushed at every group commit (25-98 KiB of disk writes per client write at
64 busy partitions, ``benchmarks/SCALE.md``). Each apply waits for its own write, except on
a full disk: there the write waits for room in the committer and the apply does not
(``NodeLmdbStorage._write_synced``), and the partition behaves as with lazy sync: the
storage actor holds the applies that follow (a later write of the same apply message takes
the stalled one back and carries its ops before its own, so it waits on nothing either),
new commits are refused (``commit_stalled``),
reads are served (the stalled write's rows from it), and it resumes by itself once the write
lands. The durable position stays at the last committed write meanwhile, so the log keeps
the stalled entries (an apply acknowledged before its write landed is in the log, and a
restart applies it again). Whatever installs or replaces a partition's
state wholesale (a snapshot, a quarantine, a wiped directory) is synced before it returns either
way: the log is reset to the snapshot's position right after.

Checksums: every stored value is ``crc32 | value``, the CRC-32 (u32 little-endian) of the
partition name, the key and the value together, so a value damaged on disk, or moved to another
key or partition, fails the check. Values are checked on every read (``read``, the reads of
derived commands, snapshots) and, for the whole partition, when it opens. A damaged value is
never returned: a read raises ``StorageCorruptionError`` (the storage actor answers the caller
with an error and crashes, so the partition restarts). A partition found damaged when it opens is
*quarantined*: in one transaction its database is emptied and the reason stored; it then opens at
position 0 with no config, so its server comes up ``stalled`` — it neither serves reads nor
votes nor leads — and reports the reason (``status()["quarantine"]``) until the leader's snapshot
replaces the whole database (``open_snapshot``), which repairs it. The other partitions of the
node are not touched. A replica that is the only one holding some data must therefore not be
quarantined blindly: Raft never needs it to, as a committed entry is on a majority.

Snapshots are in ``waraft.storage.lmdb``'s format (a compacted ``data.mdb`` with ``kv`` and
``meta`` databases, its size and CRC-32, the ``metadata`` file), so either provider can install
the other's. ``open_snapshot`` checks the file first, then empties the partition's database and
copies the snapshot in, in one transaction: a crash leaves the old or the new state. That
transaction is not a group commit but is fenced as one (``NodeEnv.replace``): an install left
running by a killed storage actor never commits once the restarted one took the partition
over, and the take-over waits for one that is committing.

Map size: the environment is opened once at ``extra["lmdb_map_size"]`` (default 64 GiB of
address space; without writemap the file only grows as pages are used) and never grown, since
LMDB can only resize a map while no transaction of the process is open, and every partition has
them. A full map fails the transaction (the storage actor crashes); raise the option.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, Self

import lmdb

from waraft import otp
from waraft.core.types import Config, LogPos
from waraft.services.codec import CodecError, packb, unpackb
from waraft.storage.lmdb import (
    _KV,
    _MAX_DBS,
    _MAX_RAW_KEY,
    _META,
    _MIB,
    DEFAULT_MAP_SIZE,
    ENV_DIR,
    SNAPSHOT_FILE,
    LmdbStorage,
    Ops,
    StorageLockedError,
    _label_row,
    _long_entry,
    _new_packer,
    _position_row,
    _recover_swap,
    _stored_key,
)
from waraft.storage.provider import (
    DISK_FULL_ERRNOS,
    OK,
    ApplyItem,
    StorageCorruptionError,
    StorageError,
    StorageOptions,
    build_file_durably,
    command_kind,
    fsync_directory,
    write_metadata,
    write_snapshot_checksum,
)

logger = logging.getLogger(__name__)

NODE_DIR: Final = "storage-lmdb"
MARKER: Final = "lmdb-node"
"""An empty file in the partition directory: the node's environment holds this partition."""
DEFAULT_MAX_PARTITIONS: Final = 4096
DEFAULT_MAX_READERS: Final = 1024  # one reader slot per concurrent read transaction
DEFAULT_SYNC_INTERVAL_MS: Final = 1000
"""Lazy sync: the longest an unsynced commit waits for the node's background sync."""
DEFAULT_SYNC_BYTES: Final = 64 * 1024 * 1024
"""Lazy sync: values written (keys and values, bytes) that start a background sync early."""
DEFAULT_FLUSH_INTERVAL_MS: Final = 2000
"""Lazy sync: a partition's apply finding its write-back buffer older than this queues it for
a group commit (``NodeLmdbStorage._commit``). The longer the buffer, the more rewrites of a key
it absorbs (at 64 busy partitions a key is written about 16 times in 2 s) and the fewer
transactions: 2000 against 500 took 0.3 us of CPU per command and replica off the flushes and
15-30 % off the disk writes per op (``benchmarks/SCALE.md``). What it costs is replay: the log
keeps, and a restart applies again, up to this much more of the partition's tail."""
IDLE_FLUSH_FACTOR: Final = 2
"""A partition that stops applying has its buffer written out by the storage actor's timer
this many flush intervals after its first row (``write_back_due``): a timer per flush, at
1000 partitions applying a few commands a second each, cost more than the writes it saved
(an apply pushes the timer back, so a partition that keeps applying never sees it fire)."""
DEFAULT_FLUSH_BYTES: Final = 256 * 1024
"""Lazy sync: value bytes applied (overwrites counted each time) that flush a partition's
write-back buffer early: what bounds its memory."""
BEHIND_FACTOR: Final = 8
"""A write-back buffer due while the partition's previous flush waits for room on a full disk
is not flushed behind it (that waited, and the storage actor served nothing until there was
room): it takes applies up to this many times ``lmdb_flush_bytes``, and beyond that the
storage actor holds its applies until the flush is done (``applies_held``). Room for what a
leader had committed when its disk filled up (new commits are then refused): applied, it
answers the strong reads queued behind it."""

STALL_BACKOFF_MIN: Final = 0.1
STALL_BACKOFF_MAX: Final = 2.0
"""Seconds between attempts to commit on a full disk, doubling (as the WAL's)."""
STALL_CHECK: Final = 0.05
"""Seconds between two looks at the node's stall while an apply waits for its partition's
last flush (``NodeLmdbStorage._caught_up``): a flush the committer finds the disk full for
is waited for no longer than this after."""
LOW_SPACE_BYTES: Final = 64 * 1024 * 1024
"""Free bytes under which a commit's ``EIO`` (LMDB's word for a short write) means a full
disk (see ``_disk_full``)."""
LAZY_COMMIT_DELAY: Final = 0.05
"""Seconds a write-back flush (``NodeEnv.submit(lazy=True)``) may wait in the committer's queue
for company: at 1000 partitions each applying a command or two a second, nearly every apply
flushed its buffer, and waking the committer thread for each such write cost more CPU than
the write itself. Nobody waits on such a write (whoever does calls ``NodeEnv.hurry``)."""
DIRECT_WAIT_WARNING: Final = 10.0
"""Seconds an open waits for a replace of the partition's previous holder before it logs
that it does (the replace checks the lease every ``FENCE_CHECK_ROWS`` rows, so it ends
soon after the open fenced it)."""
FENCE_CHECK_ROWS: Final = 4096
"""Rows a replace copies between two checks of its lease."""
WITHDRAW_TRIES: Final = 40
"""Attempts (5 ms apart) a close makes to withdraw its write from a committer stalled on a
full disk before it waits for the write instead."""

_CRC: Final = struct.Struct("<I")
_META_PREFIX: Final = b"\xc1meta:"
_META_NAMES: Final = (b"position", b"config", b"label", b"incomplete", b"quarantine")
_LONG_KEY_LENGTH: Final = 33
QUARANTINED: Final = ("error", "storage_quarantined")


def _disk_full(exc: BaseException, directory: str) -> bool:
    """Whether a failed LMDB commit found the disk full (py-lmdb's errors carry the errno as
    ``code``; an injected ``OSError`` its ``errno``).

    LMDB reports a *short* write as ``EIO`` ("short write, filesystem full?"), and a write
    that fills the disk is often short rather than refused: an ``EIO`` while the disk has
    less than ``LOW_SPACE_BYTES`` free counts as full. (Failing it instead left the
    partition's write failed for good: every later call, a snapshot install included,
    raised it until the node restarted.)"""
    code = getattr(exc, "code", None)
    if code is None and isinstance(exc, OSError):
        code = exc.errno
    if code in DISK_FULL_ERRNOS:
        return True
    if code != errno.EIO:
        return False
    try:
        return shutil.disk_usage(directory).free < LOW_SPACE_BYTES
    except OSError:
        return False


def _meta_key(name: bytes) -> bytes:
    return _META_PREFIX + name


def _is_meta(key: bytes) -> bool:
    return key.startswith(_META_PREFIX) and len(key) != _LONG_KEY_LENGTH


def _seal(seed: int, key: bytes, value: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(value, zlib.crc32(key, seed))) + value


def _open_sealed(seed: int, key: bytes, stored: bytes, where: str) -> bytes:
    """The value inside ``stored``; ``StorageCorruptionError`` if its checksum fails."""
    if len(stored) >= _CRC.size:
        value = stored[_CRC.size :]
        if _CRC.unpack_from(stored)[0] == zlib.crc32(value, zlib.crc32(key, seed)):
            return value
    raise StorageCorruptionError(
        f"checksum mismatch in {where} at key {key[:64]!r} ({len(stored)} bytes stored)"
    )


Lease = tuple[str, int]
"""A partition's name and the number of its ``NodeEnv.open_partition``: its holder's writes
carry it, and a write whose lease is no longer the partition's is dropped (a fencing token)."""


class _Write:
    """One partition's write transaction, waiting for a group commit."""

    __slots__ = (
        "db",
        "done",
        "error",
        "event",
        "generation",
        "lease",
        "meta",
        "notify",
        "ops",
        "seed",
        "where",
    )

    def __init__(
        self,
        db: Any,
        seed: int,
        ops: Ops,
        meta: list[tuple[bytes, bytes]],
        where: str,
        lease: Lease | None = None,
    ) -> None:
        self.db = db
        self.seed = seed
        self.ops = ops
        self.meta = meta
        self.where = where
        self.lease = lease  # None: not fenced (a barrier, a test)
        self.done = False
        self.error: BaseException | None = None
        self.generation = 0  # the node's commit generation that carried it (NodeEnv)
        self.event = otp.Event()  # set once the write is done
        # Called by the committer once the write is done (after ``event``): how a storage
        # actor that never waits for the write learns it may go on (``wake_when_written``).
        self.notify: Callable[[], None] | None = None

    def put(self, txn: lmdb.Transaction) -> int:
        """Put the write into ``txn``; the bytes of keys and values it wrote."""
        db, seed = self.db, self.seed
        pack, crc32 = _CRC.pack, zlib.crc32  # _seal inlined: this is the write hot path
        cursor = txn.cursor(db)
        size = 0
        for op in self.ops:
            if type(op) is list:
                rows = [(k, pack(crc32(v, crc32(k, seed))) + v) for k, v in op]
                cursor.putmulti(rows)
                size += sum([len(k) + len(v) for k, v in rows])
            else:
                txn.delete(op, db=db)  # type: ignore[arg-type]
        for name, value in self.meta:
            key = _meta_key(name)
            txn.put(key, _seal(seed, key, value), db=db)
            size += len(key) + len(value)
        return size


def _finish(write: _Write) -> None:
    """Mark ``write`` done: wake its waiter, then whoever asked to be told (``notify``; a
    failing callback must not stop the committer, whose writes it would leave undone)."""
    write.done = True
    write.event.set()
    notify = write.notify
    if notify is not None:
        write.notify = None
        try:
            notify()
        except Exception:
            logger.exception("LMDB node storage %s: a write's notification failed", write.where)


_DELETED = object()  # a key deleted, in NodeLmdbStorage._raw


def _unencoded(commands: Sequence[Any]) -> int | None:
    """The value bytes of ``commands`` when every one is a plain write or delete whose key
    and value can wait to be encoded: bytes, or ASCII text (always encodable, so the flush
    cannot fail on it, and never equal to a key of the other type, as 1 == True would be);
    else None."""
    size = 0
    for command in commands:
        if type(command) is not tuple:
            return None
        length = len(command)
        if length == 4 and command[0] == "write":
            value = command[3]
            kind = type(value)
            if not (kind is bytes or (kind is str and value.isascii())):
                return None
            size += len(value)
        elif length == 3 and command[0] == "delete":
            size += 1
        else:
            return None
        key = command[2]
        kind = type(key)
        if not (kind is bytes or (kind is str and key.isascii())):
            return None
    return size


def _fenced_rows(
    rows: Iterable[tuple[bytes, bytes]], node: NodeEnv, lease: Lease, where: str
) -> Iterator[tuple[bytes, bytes]]:
    """``rows``, raising ``StorageError`` once ``lease`` is no longer its partition's (checked
    every ``FENCE_CHECK_ROWS`` rows): a replace fenced in the middle of a large snapshot ends
    soon, and the open that fenced it waits for it (``NodeEnv._wait_direct``)."""
    count = 0
    for row in rows:
        count += 1
        if count == FENCE_CHECK_ROWS:
            count = 0
            node.check_lease(lease, where)
        yield row


def _check_not_truncated(env: Any, directory: str) -> None:
    """Close ``env`` and raise ``StorageCorruptionError`` if its data file lacks a page in use:
    LMDB maps the file, and the first read past its end killed the process with SIGBUS (a bad
    copy, a file cut short by a full disk).

    A file shorter than the meta page's last page number is not always damaged: a page that a
    transaction allocated at the end and freed again before it committed is never written,
    only put on the free list (found after a clean stop: the node then refused to start). LMDB
    never reads a free page (it writes one before using it again), so the file is whole when
    every missing page is on the free list."""
    path = os.path.join(directory, "data.mdb")
    psize = env.stat()["psize"]
    pages = env.info()["last_pgno"] + 1
    size = os.path.getsize(path)
    if size >= pages * psize:
        return
    free = _free_pages(path, psize)
    if free is not None and free.issuperset(range(size // psize, pages)):
        logger.info(
            "LMDB file %s ends %d page(s) before its last page number; all of them are free",
            path, pages - size // psize,
        )  # fmt: skip
        return
    env.close()
    raise StorageCorruptionError(
        f"LMDB file {path} is truncated: {size} bytes, its pages end at byte {pages * psize}"
    )


_P_INVALID: Final = (1 << 64) - 1
_PAGE_HEADER: Final = 16  # pgno (8), pad (2), flags (2), lower and upper (2 + 2)
_P_BRANCH: Final = 0x01
_P_LEAF: Final = 0x02
_F_BIGDATA: Final = 0x01
_META_MAGIC: Final = 0xBEEFC0DE
# The meta page: magic, version, address, map size, the free DB's record (48 bytes, its root
# page number last), the main DB's record, the last page number, then the transaction id.
_META_FREE_ROOT: Final = _PAGE_HEADER + 64
_META_TXNID: Final = _PAGE_HEADER + 128


def _free_pages(path: str, psize: int) -> set[int] | None:
    """The page numbers on the free list of LMDB data file ``path`` (64-bit LMDB 0.9 layout),
    read from the newest meta page; None if the free list cannot be read from the file as it
    is (a page of it lies past the end, or is not a page of a free list), or on a platform
    whose LMDB files have another layout (not 64-bit little-endian)."""
    if sys.byteorder != "little" or struct.calcsize("P") != 8:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        in_file = os.fstat(fd).st_size // psize

        def page(pgno: int) -> bytes | None:
            if pgno >= in_file:
                return None
            data = os.pread(fd, psize, pgno * psize)
            return data if len(data) == psize else None

        newest: tuple[int, int] | None = None  # (txnid, free DB root)
        for meta in (page(0), page(1)):
            if meta is None or struct.unpack_from("<I", meta, _PAGE_HEADER)[0] != _META_MAGIC:
                continue
            (txnid,) = struct.unpack_from("<Q", meta, _META_TXNID)
            if newest is None or txnid > newest[0]:
                newest = (txnid, struct.unpack_from("<Q", meta, _META_FREE_ROOT)[0])
        if newest is None:
            return None
        free: set[int] = set()
        todo = [] if newest[1] == _P_INVALID else [newest[1]]
        walked = 0
        while todo:
            walked += 1
            current = page(todo.pop())
            if current is None or walked > in_file:  # past the end, or a cycle
                return None
            flags, lower = struct.unpack_from("<HH", current, 10)
            if not flags & (_P_BRANCH | _P_LEAF) or lower < _PAGE_HEADER:
                return None
            count = (lower - _PAGE_HEADER) >> 1
            for node in struct.unpack_from(f"<{count}H", current, _PAGE_HEADER):
                lo, hi, node_flags, key_size = struct.unpack_from("<HHHH", current, node)
                if flags & _P_BRANCH:
                    todo.append(lo | hi << 16 | node_flags << 32)  # the child's page number
                    continue
                at, size = node + 8 + key_size, lo | hi << 16
                if node_flags & _F_BIGDATA:  # on overflow pages: the first one's number here
                    first = struct.unpack_from("<Q", current, at)[0]
                    spans = -(-(_PAGE_HEADER + size) // psize)
                    if first + spans > in_file:
                        return None
                    data = os.pread(fd, size, first * psize + _PAGE_HEADER)
                else:
                    data = current[at : at + size]
                if len(data) < 8:
                    return None
                ids = struct.unpack_from("<Q", data)[0]  # a list of page numbers, count first
                if len(data) < 8 * (ids + 1):
                    return None
                free.update(struct.unpack_from(f"<{ids}Q", data, 8))
        return free
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)


class NodeEnv:
    """The node's LMDB environment, shared by every partition of this process that uses it.

    Obtain it with ``NodeEnv.acquire(directory, ...)``, give it back with ``release``. An
    exclusive ``flock`` on ``<directory>/LOCK`` keeps other processes out (the providers cache
    metadata, so a second writer would diverge from them).

    Every committed group transaction gets the next *generation* (``_Write.generation``).
    With ``sync`` False a syncer thread flushes the environment in the background (see the
    module docstring) and ``synced_generation`` is then the newest generation known to be on
    disk; with ``sync`` True every commit is flushed before it returns.
    """

    _registry: ClassVar[dict[str, NodeEnv]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        directory: str,
        *,
        sync: bool = True,
        writemap: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        max_partitions: int = DEFAULT_MAX_PARTITIONS,
        sync_interval_ms: float = DEFAULT_SYNC_INTERVAL_MS,
        sync_bytes: int = DEFAULT_SYNC_BYTES,
    ) -> None:
        if sync_interval_ms <= 0 or sync_bytes <= 0:
            raise ValueError(f"bad lazy sync bounds {sync_interval_ms!r} ms, {sync_bytes!r} B")
        self.directory = directory
        self.refs = 0
        self.sync = sync
        self.sync_interval = sync_interval_ms / 1000.0
        self.sync_bytes = sync_bytes
        # Lazy sync. ``generation`` is written by the committer thread only, after the commit
        # returned; ``synced_generation`` by whoever synced, after the flush returned.
        self.generation = 0
        self.started = 0  # the generation being committed (== generation between commits)
        self.synced_generation = 0
        self.syncs = 0  # background and forced flushes of the environment
        self._sync_cond = threading.Condition(threading.Lock())
        self._dirty_since: float | None = None  # monotonic time of the first unsynced commit
        self._dirty_bytes = 0
        self._syncer: threading.Thread | None = None
        self._sync_stopping = False
        self._lock = threading.Lock()  # named-database opens (LMDB wants them serialised)
        self._open: dict[str, Any] = {}  # partition name -> database handle, while in use
        self._owners: dict[str, otp.Pid | None] = {}  # partition name -> its holder's process
        # Partition name -> the number of its latest open (``Lease``): written under _lock,
        # read by the committer (a dict lookup; a write it reads late is still fenced by the
        # barrier ``open_partition`` commits after the change).
        self._leases: dict[str, int] = {}
        self.reclaimed = 0  # partitions taken over from a holder that was killed
        # Partition name -> its write transactions running outside the group commit
        # (``replace``): an open waits for them to end (``_wait_direct``).
        self._direct: dict[str, int] = {}
        self._direct_done = threading.Condition(threading.Lock())
        self.stalled: str | None = None  # why commits wait for room (a full disk), if they do
        self.stalls = 0  # times the disk was found full
        # Why the environment no longer matches the disk, once a sync or a commit's fsync
        # failed (see the module docstring): durable positions stop moving for good.
        self.sync_failure: str | None = None
        self._group = threading.Condition(threading.Lock())
        self._pending: list[_Write] = []
        # Writes in ``_pending`` someone waits for (the committer takes the queue at once),
        # and when the oldest lazy write there is due (``submit``).
        self._urgent = 0
        self._lazy_due: float | None = None
        self._committer: threading.Thread | None = None  # started by the first commit
        self._stopping = False
        self.commits = 0  # LMDB transactions committed by ``commit``
        self.writes = 0  # partition writes they carried
        self._handles: dict[str, Any] = {}  # every handle opened (LMDB keeps them for the env)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self._lock_fd = os.open(
            os.path.join(directory, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StorageLockedError(f"LMDB node storage {directory} is in use") from None
        try:
            self.env = lmdb.open(
                directory,
                map_size=map_size,
                subdir=True,
                max_dbs=max_partitions,
                max_readers=DEFAULT_MAX_READERS,
                # Lazy or not, every commit fsyncs its data pages before its meta page is
                # written (MDB_NOMETASYNC when lazy): a power loss then leaves a meta page that
                # points at pages on disk. Without it (MDB_NOSYNC) the kernel writes pages back
                # in any order, and LMDB reuses the pages of a synced tree two commits later:
                # a power loss could leave the synced meta over overwritten pages, or a new
                # meta over stale ones, whose checksums still pass (a review built such
                # images: most opened silently inconsistent with their position).
                sync=True,
                metasync=sync,
                writemap=writemap,
                lock=True,
                mode=0o644,
                max_spare_txns=4,
            )
            _check_not_truncated(self.env, directory)
            # What a killed predecessor committed may still be only in the page cache; the
            # partitions take what they find as durable, so make it so.
            self.env.sync(True)
        except BaseException:
            os.close(self._lock_fd)
            raise

    @classmethod
    def acquire(cls, directory: str, **options: Any) -> NodeEnv:
        directory = os.path.abspath(directory)
        with cls._registry_lock:
            node = cls._registry.get(directory)
            if node is None:
                node = cls._registry[directory] = cls(directory, **options)
            node.refs += 1
            return node

    def release(self) -> None:
        """Give back a reference taken by ``acquire``. The last one stops the committer and
        the syncer, syncs and closes the environment and lets go of its lock, on the node's
        I/O threads when the caller is a scheduled process (``otp.blocking``: the storage
        actor's terminate): joining the threads, the final sync and the close stalled every
        process on its scheduler. It has returned before the caller goes on, so a storage
        actor has let go of the environment before it exits and its successor reopens it.
        Called after the node began stopping its I/O threads (a terminate late in the node's
        shutdown), ``otp.blocking`` runs it on the caller: the environment is closed in any
        shutdown order, never left open in a process that is exiting."""
        with NodeEnv._registry_lock:
            self.refs -= 1
            if self.refs > 0:
                return
            NodeEnv._registry.pop(self.directory, None)
        otp.blocking(self._shut_down)

    def _shut_down(self) -> None:
        """``release`` of the last reference: commit what is queued, stop the threads, then a
        final sync, the close and the lock's release."""
        with self._group:
            self._stopping = True  # the committer commits what is queued, then exits
            self._group.notify()
            committer = self._committer
        if committer is not None:
            committer.join(30.0)
        with self._sync_cond:
            self._sync_stopping = True
            self._sync_cond.notify()
            syncer = self._syncer
        if syncer is not None:
            syncer.join(30.0)
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            logger.error("LMDB node storage %s: final sync failed: %s", self.directory, exc)
        self.env.close()
        os.close(self._lock_fd)

    def open_partition(self, name: str, owner: otp.Pid | None = None) -> tuple[Any, Lease]:
        """The database handle of partition ``name`` (created if new) and the lease its
        writes carry; one holder at a time (``StorageLockedError`` while another holds it).

        ``owner`` is the holder's process. A holder killed untrappably (its ``close`` never
        ran) does not keep the partition: the next open takes it over. That open first fences
        the dead holder (its writes still queued, or still to come from a job it left on an
        I/O thread, carry the old lease and are dropped by the committer), then waits for a
        barrier write, so whatever of the dead holder's writes the committer had already taken
        is committed before the new holder reads the partition's position: nothing it applied
        can land after that and be applied a second time. (Under the opens' lock, so that two
        opens cannot both take over; the committer does not take it.) A wholesale replace of
        the partition (``replace``: a snapshot install, a wipe, a quarantine) is fenced by the
        same lease, and the open waits until every one still running on the partition ended,
        committed or refused."""
        with self._lock:
            if name in self._open:
                holder = self._owners.get(name)
                if holder is None or holder.is_alive():
                    raise StorageLockedError(
                        f"partition {name} of LMDB node storage {self.directory} is already "
                        f"open (by {holder!r})"
                    )
                self._take_over(name, holder)
            handle = self._handles.get(name)
            if handle is None:
                # In a write transaction of our own: ``env.begin`` waits for LMDB's writer lock
                # without holding the GIL, whereas ``open_db``'s implicit transaction holds it
                # while waiting, which deadlocks against a commit in another thread.
                txn = self.env.begin(write=True)
                try:
                    handle = self.env.open_db(name.encode(), txn=txn)
                    txn.commit()
                except BaseException:
                    with contextlib.suppress(lmdb.Error):
                        txn.abort()
                    raise
                self._handles[name] = handle
            self._open[name] = handle
            self._owners[name] = owner
            lease = self._leases.get(name, 0) + 1
            self._leases[name] = lease
            self._wait_direct(name)
        return handle, (name, lease)

    def _take_over(self, name: str, holder: otp.Pid) -> None:
        """Fence the dead ``holder`` of partition ``name`` and drain its writes (see
        ``open_partition``; called under ``_lock``). If the barrier fails, it raises and the
        partition stays with the dead holder, fenced: the next open tries again."""
        self._leases[name] = self._leases.get(name, 0) + 1
        self.commit(_Write(self._open[name], 0, [], [], f"{self.directory}[{name}]"))
        with NodeEnv._registry_lock:
            self.refs -= 1  # the dead holder's reference, never released
        self.reclaimed += 1
        logger.warning(
            "LMDB node storage %s: partition %s taken over from %r, which was killed without "
            "closing it",
            self.directory,
            name,
            holder,
        )

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` is still its partition's (no later open took the partition)."""
        return self._leases.get(lease[0]) == lease[1]

    def check_lease(self, lease: Lease, where: str) -> None:
        """Raise ``StorageError`` (the write of ``where`` is dropped) unless ``holds(lease)``."""
        if not self.holds(lease):
            raise StorageError(
                f"LMDB node storage {where}: write of a holder taken over from, dropped"
            )

    def replace(
        self, db: Any, lease: Lease, fill: Callable[[lmdb.Transaction], None], where: str
    ) -> None:
        """Run ``fill`` in a write transaction of its own (not a group commit: it may be as
        large as a snapshot) and commit it only if ``lease`` is still the partition's.

        Fenced like a queued write (see ``open_partition``): the lease is checked inside the
        transaction, while this thread holds LMDB's writer lock, right before the commit. An
        open that changed the lease before the check makes the replace fail with
        ``StorageError``; one that changes it after waits for the commit (``_wait_direct``),
        so the new holder reads the partition after it either way. Without this a snapshot
        install left running by a killed storage actor committed under its successor, which
        had already read the partition's old position: acknowledged writes were lost and
        entries applied twice. ``fill`` gets the transaction and ``db`` is emptied first."""
        name = lease[0]
        with self._direct_done:
            self._direct[name] = self._direct.get(name, 0) + 1
        try:
            txn = self.env.begin(write=True)
            try:
                txn.drop(db, delete=False)
                fill(txn)
                self.check_lease(lease, where)
                txn.commit()
            except BaseException:
                with contextlib.suppress(lmdb.Error):
                    txn.abort()
                raise
        finally:
            with self._direct_done:
                left = self._direct[name] - 1
                if left:
                    self._direct[name] = left
                else:
                    del self._direct[name]
                self._direct_done.notify_all()

    def _wait_direct(self, name: str) -> None:
        """Wait until no ``replace`` of partition ``name`` runs (called under ``_lock``, after
        the partition's lease changed: each one still running fails its lease check or has
        passed it and commits; ``replace`` never takes ``_lock``)."""
        warned = False
        with self._direct_done:
            while self._direct.get(name):
                if not self._direct_done.wait(DIRECT_WAIT_WARNING) and not warned:
                    warned = True
                    logger.warning(
                        "LMDB node storage %s: opening partition %s waits for a replace of "
                        "its previous holder to end",
                        self.directory, name,
                    )  # fmt: skip

    def close_partition(self, name: str, lease: Lease | None = None) -> bool:
        """Give partition ``name`` back; False (nothing done) if ``lease`` is given and no
        longer the partition's (its holder was taken over from: see ``open_partition``)."""
        with self._lock:
            if lease is not None and self._leases.get(name) != lease[1]:
                return False
            self._open.pop(name, None)
            self._owners.pop(name, None)
            return True

    def partitions(self) -> int:
        return len(self._open)

    def commit(self, write: _Write) -> None:
        """Make ``write`` durable in a group commit; raises what failed it.

        The node's committer thread takes every write queued so far and commits them in ONE
        transaction (one pair of fsyncs for all of them); callers wait on their write's
        ``otp.Event``, so a scheduled storage actor is suspended and holds no thread. (Callers
        used to wait on the node's I/O threads, so a group carried at most as many partitions
        as there are I/O threads, 4.) A thread of its own rather than a caller taking turns as
        committer: no commit then depends on a process that may be killed while it waits. Each
        write still commits all or nothing, and a write that fails only fails its own
        partition: when the group's transaction fails, each of its writes is retried alone.
        """
        self.submit(write)
        self.wait(write)

    def submit(self, write: _Write, *, lazy: bool = False) -> None:
        """Queue ``write`` for the next group commit without waiting for it (``wait``).

        A ``lazy`` write (a write-back flush nobody waits for) may wait up to
        ``LAZY_COMMIT_DELAY`` for other writes to share its transaction and its wake-up of
        the committer thread; ``hurry`` ends that wait for whoever comes to wait on it."""
        with self._group:
            if self._stopping:
                raise StorageError(f"LMDB node storage {self.directory} is closed")
            self._pending.append(write)
            if self._committer is None:
                self._committer = threading.Thread(
                    target=self._run, name=f"lmdb-commit-{self.directory}", daemon=True
                )
                self._committer.start()
                if not self.sync:
                    self._syncer = threading.Thread(
                        target=self._sync_loop, name=f"lmdb-sync-{self.directory}", daemon=True
                    )
                    self._syncer.start()
            if lazy:
                if self._lazy_due is None:
                    self._lazy_due = time.monotonic() + LAZY_COMMIT_DELAY
                    if len(self._pending) == 1:
                        # An idle committer learns when the lazy queue is due (a second
                        # wake-up then commits it, with whatever joined it meanwhile).
                        self._group.notify()
                return
            self._urgent += 1
            if self._urgent == 1:
                # The committer waits only while nobody waits on the queue: a write joining
                # a queue that already holds an urgent one is taken with it, so only the
                # first needs the wake-up (a futex call per apply message otherwise, while
                # the committer was busy anyway).
                self._group.notify()

    def hurry(self) -> None:
        """Commit the queue now: someone waits on a lazy write in it."""
        with self._group:
            if self._pending and not self._urgent:
                self._urgent = 1
                self._group.notify()

    @staticmethod
    def wait(write: _Write) -> None:
        """Wait until the committer is done with ``write``; raise what failed it."""
        while not write.done:
            write.event.wait()  # a lazy write is ``hurry``-ed by its waiter first
        if write.error is not None:
            raise write.error

    def _fenced(self, group: list[_Write]) -> list[_Write]:
        """``group`` without the writes of holders that were taken over from (failed)."""
        live = []
        for write in group:
            lease = write.lease
            try:
                if lease is not None:
                    self.check_lease(lease, write.where)
            except StorageError as exc:
                write.error = exc
            else:
                live.append(write)
        return live

    def _run(self) -> None:
        otp.set_os_name("lmdb:commit")  # for per-thread CPU and switches (benchmarks.thread_cpu)
        backoff = STALL_BACKOFF_MIN
        while True:
            with self._group:
                while not self._stopping:
                    if not self._pending:
                        self._urgent = 0  # a withdrawn write may have been counted
                        self._lazy_due = None
                        self._group.wait()
                        continue
                    if self._urgent:
                        break
                    due = self._lazy_due
                    wait = 0.0 if due is None else due - time.monotonic()
                    if wait <= 0:
                        break
                    self._group.wait(wait)
                if not self._pending:
                    return  # stopping, and everything queued is committed
                group, self._pending = self._pending, []
                self._urgent = 0
                self._lazy_due = None
            retried: list[_Write] = []
            try:
                live = self._fenced(group)
                if live and not self._commit_group(live):
                    if self._wait_for_room(live, backoff):
                        backoff = min(backoff * 2, STALL_BACKOFF_MAX)
                        retried = live  # nothing of it is done: it is committed later
                        continue
                    for write in live:  # stopping on a full disk
                        write.error = StorageError(
                            f"LMDB node storage {write.where}: closed while {self.stalled}"
                        )
                elif self.stalled is not None:
                    logger.warning(
                        "LMDB node storage %s: commits resumed after: %s",
                        self.directory, self.stalled,
                    )  # fmt: skip
                    self.stalled = None
                    backoff = STALL_BACKOFF_MIN
            except BaseException as exc:
                # Never report a write done that may not have committed, and keep the
                # committer alive for the writes that follow.
                logger.exception("LMDB node storage %s: group commit failed", self.directory)
                for write in group:
                    if write.error is None:
                        write.error = exc
            finally:
                waiting = {id(write) for write in retried}
                for write in group:
                    if id(write) not in waiting:
                        _finish(write)

    def withdraw(self, write: _Write) -> bool:
        """Take ``write`` back if it waits for room on a full disk (not committed, and now
        never will be); False if it is not waiting so (done, or being committed)."""
        with self._group:
            if self.stalled is None or write.done:
                return False
            for at, queued in enumerate(self._pending):
                if queued is write:
                    del self._pending[at]
                    break
            else:
                return False
        write.error = StorageError(f"LMDB node storage {write.where}: withdrawn on a full disk")
        _finish(write)
        return True

    def _wait_for_room(self, group: list[_Write], backoff: float) -> bool:
        """The disk is full: put ``group`` back in front of the queue and wait ``backoff``
        seconds before the committer tries again; False (nothing put back) when stopping."""
        with self._group:
            if self._stopping:
                return False
            self._pending[:0] = group
            self._urgent += len(group)  # retried after the backoff, lazy or not
            self._group.wait(backoff)
            return True

    def _commit_group(self, group: list[_Write]) -> bool:
        """Commit ``group`` (each write alone if the group fails); False, with nothing
        committed and no write done, when the disk is full (``_run`` retries it)."""
        try:
            self._transaction(group)
        except BaseException as exc:
            if _disk_full(exc, self.directory):
                if self.stalled is None:
                    self.stalls += 1
                    logger.error(
                        "LMDB node storage %s: %s; applies wait for room, retrying every "
                        "%.1f s at most",
                        self.directory, exc, STALL_BACKOFF_MAX,
                    )  # fmt: skip
                self.stalled = f"disk full: {exc}"
                return False
            if len(group) == 1:
                group[0].error = exc
                return True
            for write in group:
                try:
                    self._transaction([write])
                except BaseException as alone:
                    write.error = alone
            return True
        self.commits += 1
        self.writes += len(group)
        return True

    def _transaction(self, group: list[_Write]) -> None:
        self.started = generation = self.generation + 1
        txn = self.env.begin(write=True)
        try:
            size = 0
            for write in group:
                size += write.put(txn)
            try:
                txn.commit()  # writes the pages and fsyncs them, then writes the meta page
            except lmdb.Error as exc:
                # EIO may come from the fsync (the pages it could not write are then dropped,
                # the previous commit's meta page among them); a full disk or a file-size
                # limit only refuses this commit's writes, which are retried or fail alone.
                if getattr(exc, "code", None) == errno.EIO and not _disk_full(exc, self.directory):
                    self._sync_failed(exc)
                raise
            # Counted only now: a flush that read this generation started after the commit's
            # pages were written, so it covers them.
            self.generation = generation
            for write in group:
                write.generation = generation
            if not self.sync:
                self._dirtied(size)
        except lmdb.MapFullError as exc:
            self.started = self.generation  # nothing committed
            with contextlib.suppress(lmdb.Error):
                txn.abort()
            raise StorageError(
                f"LMDB node storage {group[0].where}: map full at {self.env.info()['map_size']} "
                "bytes (raise lmdb_map_size)"
            ) from exc
        except BaseException:
            self.started = self.generation
            # A failed commit already released the transaction; abort is then a no-op.
            with contextlib.suppress(lmdb.Error):
                txn.abort()
            raise

    # -- lazy sync ------------------------------------------------------------------------------

    def _dirtied(self, size: int) -> None:
        with self._sync_cond:
            self._dirty_bytes += size
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()
                self._sync_cond.notify()
            elif self._dirty_bytes >= self.sync_bytes:
                self._sync_cond.notify()

    def _sync_loop(self) -> None:
        """The syncer thread: flush once the oldest unsynced commit is ``sync_interval`` old or
        ``sync_bytes`` were written since the last flush; the final flush is ``release``'s."""
        otp.set_os_name("lmdb:sync")
        while True:
            with self._sync_cond:
                while True:
                    if self._sync_stopping:
                        return
                    since = self._dirty_since
                    if since is None:
                        self._sync_cond.wait()
                        continue
                    wait = since + self.sync_interval - time.monotonic()
                    if wait <= 0 or self._dirty_bytes >= self.sync_bytes:
                        break
                    self._sync_cond.wait(wait)
                self._dirty_since = None
                self._dirty_bytes = 0
            try:
                self.flush()
            except Exception as exc:  # the syncer must outlive any failure
                # The commits stay unsynced and the log keeps their entries; try again later.
                logger.error(
                    "LMDB node storage %s: background sync failed: %s", self.directory, exc
                )
                with self._sync_cond:
                    if self._dirty_since is None:
                        self._dirty_since = time.monotonic()

    def flush(self) -> None:
        """Flush the environment to disk (on the calling thread: never a scheduler's); every
        generation committed before the call is then durable (``synced_generation``), unless
        a sync ever failed (``sync_failure``): ``synced_generation`` then never moves again."""
        generation = self.generation
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            self._sync_failed(exc)
            raise
        with self._sync_cond:  # two flushes may race: never move it back
            self.syncs += 1
            if self.sync_failure is None and generation > self.synced_generation:
                self.synced_generation = generation

    def _sync_failed(self, exc: BaseException) -> None:
        """A sync (or a commit's fsync) failed. Linux may then have marked the pages it
        could not write clean, so a later sync that succeeds does not cover them: counting
        the commits before it as durable would let the log trim entries the disk lacks."""
        with self._sync_cond:
            first = self.sync_failure is None
            if first:
                self.sync_failure = f"sync failed: {type(exc).__name__}: {exc}"
        if first:
            logger.error(
                "LMDB node storage %s: %s; durable positions no longer move (the logs keep "
                "every entry applied since the last good sync); the environment should be "
                "rebuilt: move the partitions' directories away to have them restored by "
                "snapshots from healthy replicas",
                self.directory, self.sync_failure,
            )  # fmt: skip


class NodeLmdbStorage(LmdbStorage):
    """A partition's storage in the node's shared LMDB environment (see the module docstring).

    The storage actor runs scheduled, not on a thread of its own (``blocking_io`` False):
    whatever may block on the disk (opening with its checksum scan, every commit and its
    fsync, snapshots) runs on the node's I/O threads through ``otp.blocking`` (a
    plain call outside a scheduled process); reads are lookups in LMDB's memory map. Threads,
    and the per-thread sockets a thread opens to reply over the network, do not grow with the
    number of partitions.

    Options (``options.extra``): ``lmdb_sync`` (default False: lazy sync, see the module
    docstring; True fsyncs every group commit), ``lmdb_sync_interval_ms`` (default 1000) and
    ``lmdb_sync_bytes`` (default 64 MiB), the lazy sync's bounds, ``lmdb_flush_interval_ms``
    (default 2000) and ``lmdb_flush_bytes`` (default 256 KiB), the write-back buffer's (lazy sync
    only; 0 ms: no buffer), ``lmdb_writemap`` (default
    False), ``lmdb_map_size`` (default 64 GiB), ``lmdb_max_partitions`` (named databases the
    environment can hold, default 4096), ``lmdb_node_dir`` (default
    ``<parent of the partition directory>/storage-lmdb``), ``lmdb_verify_on_open`` (check every
    value's checksum when the partition opens, default True). The environment-wide ones are
    taken from the first partition that opens it.
    """

    blocking_io: ClassVar[bool] = False
    merge_batches: bool
    """Whether the storage actor applies the plain ``$batch`` entries of an apply message with
    the commands around them in one ``apply_batch``: with ``lmdb_sync`` only, where each apply
    is a group-commit round trip (a hand-off to the committer thread and a wake-up back)."""

    def __init__(
        self, options: StorageOptions, directory: str, owner: otp.Pid | None = None
    ) -> None:
        """Open the partition ``directory``; ``owner`` is the process holding it (see
        ``NodeEnv.open_partition``: a killed holder's partition is taken over)."""
        self.options = options
        extra = getattr(options, "extra", None) or {}
        self._sync = bool(extra.get("lmdb_sync", False))
        # With lazy sync an apply only fills the write-back buffer: the per-command tuples a
        # merge builds would cost more than it saves (apply_many's fast path below).
        self.merge_batches = self._sync
        # Lazy sync: (generation, position) of this partition's commits not yet known to be
        # flushed, oldest first, and the applied position as of the last flush.
        self._unsynced: deque[tuple[int, LogPos]] = deque()
        self._durable = LogPos(0, 0)
        self._written = 0  # the generation of this partition's last group commit
        self._writing = LogPos(0, 0)  # lmdb_sync: the position the apply being written brings
        # Lazy sync: the partition's last write, queued for a group commit and not yet waited
        # for, with the position it applies (see ``_write``); what failed one, for good.
        self._inflight: tuple[_Write, LogPos] | None = None
        self._inflight_index: tuple[_Write, dict[bytes, bytes | None]] | None = None
        self._failed: BaseException | None = None
        # Lazy sync's write-back buffer: the rows applied since the last flush, by stored key
        # (None: deleted), the metadata rows they change, the position they bring the
        # partition to, and when the first of them was applied (``_commit``).
        self._pending: dict[bytes, bytes | None] = {}
        # The buffer's newest rows still as applied, not yet encoded (``_unencoded``): key ->
        # value, or _DELETED. Newer than ``_pending`` for their keys; ``_encode_raw`` moves
        # them there before anything else reads or writes ``_pending``.
        self._raw: dict[str | bytes, Any] = {}
        self._pending_meta: dict[bytes, bytes] = {}
        self._pending_position: LogPos | None = None
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._flush_interval = (
            float(extra.get("lmdb_flush_interval_ms", DEFAULT_FLUSH_INTERVAL_MS)) / 1000.0
        )
        self._flush_bytes = int(extra.get("lmdb_flush_bytes", DEFAULT_FLUSH_BYTES))
        self._buffer_max = BEHIND_FACTOR * self._flush_bytes  # see applies_held
        if self._flush_interval < 0 or self._flush_bytes < 0:
            raise ValueError(
                f"bad lmdb_flush_interval_ms / lmdb_flush_bytes "
                f"{extra.get('lmdb_flush_interval_ms')!r} / {extra.get('lmdb_flush_bytes')!r}"
            )
        self._writemap = bool(extra.get("lmdb_writemap", False))
        self._map_size = int(extra.get("lmdb_map_size", DEFAULT_MAP_SIZE))
        if self._map_size <= 0:
            raise ValueError(f"bad lmdb_map_size {self._map_size!r}")
        directory = os.path.abspath(directory)
        node_dir = extra.get("lmdb_node_dir") or os.path.join(os.path.dirname(directory), NODE_DIR)
        self._dir = directory
        self._name = os.path.basename(directory)
        self._path = f"{node_dir}[{self._name}]"  # for messages
        self._seed = zlib.crc32(self._name.encode())
        self._pack = _new_packer()
        self._env = None
        self.quarantine: str | None = None
        os.makedirs(directory, exist_ok=True)
        node = NodeEnv.acquire(
            node_dir,
            sync=self._sync,
            writemap=self._writemap,
            map_size=self._map_size,
            max_partitions=int(extra.get("lmdb_max_partitions", DEFAULT_MAX_PARTITIONS)),
            sync_interval_ms=float(extra.get("lmdb_sync_interval_ms", DEFAULT_SYNC_INTERVAL_MS)),
            sync_bytes=int(extra.get("lmdb_sync_bytes", DEFAULT_SYNC_BYTES)),
        )
        self._node: NodeEnv | None = node
        if node.sync != self._sync:
            # One environment, one way to sync it: the first partition to open it chose.
            # The durable position must follow what the environment does, not the option
            # (a partition asking for lmdb_sync in a lazily synced environment reported every
            # commit durable at once, with nothing fsyncing it).
            logger.warning(
                "LMDB node storage %s: lmdb_sync=%s ignored: the node's environment %s was "
                "opened with lmdb_sync=%s, which every partition of the node follows",
                self._path, self._sync, node_dir, node.sync,
            )  # fmt: skip
            self._sync = node.sync
            self.merge_batches = self._sync
        self._lock_fd = None
        self._lease: Lease | None = None
        try:
            self._db, self._lease = node.open_partition(self._name, owner)
            self._env = node.env
            try:
                self._prepare(bool(extra.get("lmdb_verify_on_open", True)))
            except BaseException:
                node.close_partition(self._name, self._lease)
                raise
        except BaseException:
            self._env = None
            self._node = None
            node.release()
            raise

    def _prepare(self, verify: bool) -> None:
        marker = os.path.join(self._dir, MARKER)
        if not os.path.exists(marker):
            legacy = os.path.join(self._dir, ENV_DIR)
            if os.path.isdir(legacy) or os.path.isdir(legacy + ".old"):
                self._import_legacy(legacy)
            else:
                # A new or wiped partition directory: whatever the node holds for it is stale.
                self._replace([], None)
            with open(marker, "wb") as f:
                os.fsync(f.fileno())
            fsync_directory(self._dir)
        if verify:
            try:
                rows = self._verify()
            except StorageCorruptionError as exc:
                self._quarantine(str(exc))
            else:
                logger.debug("LMDB node storage %s: %d values verified", self._path, rows)
        self._load_meta()

    def _import_legacy(self, legacy: str) -> None:
        """Copy the state a ``LmdbStorage`` kept in this partition directory (a node that ran
        with it before) into the node's environment, in one transaction; the old environment
        is left where it is. Without this a whole cluster switched to this provider at once
        would come up empty (stalled) everywhere."""
        _recover_swap(self._dir)
        source = lmdb.open(legacy, readonly=True, lock=False, max_dbs=_MAX_DBS, subdir=True)
        try:
            kv = source.open_db(_KV, create=False)
            meta_db = source.open_db(_META, create=False)
            with source.begin() as txn:
                self._replace(txn.cursor(kv), dict(txn.cursor(meta_db)))
        finally:
            source.close()
        logger.warning(
            "LMDB node storage %s: imported the partition's LmdbStorage state from %s (left "
            "in place; remove it once the node runs well)",
            self._path,
            legacy,
        )

    def _quarantine(self, reason: str) -> None:
        logger.error(
            "LMDB node storage %s is corrupt and quarantined (emptied, to be repaired by a "
            "snapshot): %s",
            self._path,
            reason,
        )
        self._replace([], {b"quarantine": packb(reason)})

    def _verify(self) -> int:
        """Check every stored value of the partition; the number checked."""
        count = 0
        for _ in self._rows():
            count += 1
        return count

    def _rows(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of the partition, checked, in one read transaction."""
        try:
            with self.env.begin(db=self._db, buffers=False) as txn:
                for key, stored in txn.cursor():
                    yield key, _open_sealed(self._seed, key, stored, self._path)
        except (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadValsizeError) as exc:
            raise StorageCorruptionError(f"LMDB reports {self._path} damaged: {exc}") from exc

    def _get(self, txn: lmdb.Transaction, key: bytes) -> bytes | None:
        try:
            stored = txn.get(key, db=self._db)
        except (lmdb.CorruptedError, lmdb.PageNotFoundError) as exc:
            raise StorageCorruptionError(f"LMDB reports {self._path} damaged: {exc}") from exc
        if stored is None:
            return None
        return _open_sealed(self._seed, key, bytes(stored), self._path)

    def _load_meta(self, synced: bool = False) -> None:
        """Cache the partition's metadata; ``synced``: the environment was flushed since the
        partition's last write (else it counts as durable once the node's next flush is)."""
        with self.env.begin(db=self._db) as txn:
            raw = {name: self._get(txn, _meta_key(name)) for name in _META_NAMES}
        position = LogPos(*unpackb(raw[b"position"])) if raw[b"position"] else LogPos(0, 0)
        config = None
        if raw[b"config"] is not None:
            at, value = unpackb(raw[b"config"])
            config = (LogPos(*at), value)
        self.quarantine = None if raw[b"quarantine"] is None else str(unpackb(raw[b"quarantine"]))
        self._set_metadata(
            position,
            config,
            None if raw[b"label"] is None else unpackb(raw[b"label"]),
            raw[b"incomplete"] is not None and bool(unpackb(raw[b"incomplete"])),
        )
        self._unsynced.clear()
        node = self._node
        if synced or node is None or node.sync:
            self._durable = position
        else:
            # What we read was committed by a generation <= node.started (a write of a killed
            # predecessor may be committing right now: visible, its generation not yet
            # counted). Durable once a flush covers that; until then nothing is here.
            self._durable = LogPos(0, 0)
            self._unsynced.append((node.started, position))
            self._settle()

    def _settle(self) -> None:
        """Move ``_durable`` up to the newest of our commits the node's flushes cover."""
        node = self._node
        if node is None:
            return
        synced = node.synced_generation
        unsynced = self._unsynced
        while unsynced and unsynced[0][0] <= synced:
            self._durable = unsynced.popleft()[1]

    def durable_position(self) -> LogPos:
        """The applied position that survives power loss: with lazy sync, the position as of
        the node's last completed flush (the log must keep every entry above it); with
        ``lmdb_sync`` every commit is flushed before it returns, so it is ``position()``, but
        while an apply's write waits for room on a full disk (``_write_synced``): the position
        before it until it lands, and for good once a write failed (its apply is counted in
        ``position()`` but never reached LMDB: the log must keep it)."""
        inflight = self._inflight
        if self._sync:
            if self._failed is not None:
                return self._durable  # the first call after the failure raised it (_drain)
            if inflight is None:
                return self._position
            if not inflight[0].done:
                return self._durable
            self._drain()  # committed already: no wait
            return self._position
        if inflight is not None and inflight[0].done:
            self._drain()  # committed already: no wait, only its generation recorded
        self._settle()
        return self._durable

    def _replace(
        self,
        rows: Iterable[tuple[bytes, bytes]],
        meta: Mapping[bytes, bytes] | None,
        *,
        flush: bool = True,
    ) -> None:
        """In ONE write transaction: empty the partition's database, then store ``rows``
        (``(key, value)`` pairs, iterated inside the transaction) and the ``meta`` rows;
        then flush the environment unless ``flush`` is False (the caller flushes).

        Fenced by the partition's lease (``NodeEnv.replace``): raises ``StorageError`` and
        changes nothing once another open took the partition over (this holder was killed
        and the job left running on an I/O thread)."""
        seed, db, where = self._seed, self._db, self._path
        node, lease = self._open_node(), self._lease
        assert lease is not None  # set by the open, before anything can replace
        if self._pending_position is not None:
            self._flush_pending()  # older than the replace: it must not land after it
        self._committed_env()  # nor the in-flight write

        def fill(txn: lmdb.Transaction) -> None:
            cursor = txn.cursor(db)
            fenced = _fenced_rows(rows, node, lease, where)
            cursor.putmulti((key, _seal(seed, key, value)) for key, value in fenced)
            for name, value in (meta or {}).items():
                key = _meta_key(name)
                txn.put(key, _seal(seed, key, value), db=db)

        node.replace(db, lease, fill, where)
        if flush and not self._sync:
            # Flushed whatever ``lmdb_sync`` says: a snapshot install is followed by a log
            # reset to its position, and a wiped or quarantined partition must not come back.
            node.flush()

    @classmethod
    def open(cls, options: StorageOptions, path: str | os.PathLike[str]) -> Self:
        """Open partition ``path``'s database in its node's environment (created if new), held
        by the calling process (the storage actor)."""
        opened: Self = otp.blocking(cls, options, os.fspath(path), otp.self_pid())
        return opened

    @classmethod
    def make_empty_snapshot(
        cls,
        options: StorageOptions,
        path: str | os.PathLike[str],
        position: LogPos,
        config: Config,
        data: Any,
        *,
        config_position: LogPos | None = None,
    ) -> Any:
        """``LmdbStorage``'s (the same format), on an I/O thread: it writes and fsyncs files."""
        make = super().make_empty_snapshot
        return otp.blocking(
            make, options, path, position, config, data, config_position=config_position
        )

    def close(self) -> None:
        """Give the partition's database and the environment back (idempotent); the last
        partition of the node to close flushes and closes the environment.

        A write still queued while the disk is full is withdrawn rather than waited for (the
        close would otherwise last as long as the disk stays full): it was never committed,
        the log still holds its entries (lazy sync keeps every entry above the durable
        position), and the next open of the partition applies them again."""
        node = self._node
        if node is not None and node.stalled is None and self._pending_position is not None:
            # Only to spare the next open a replay: the log holds every buffered entry.
            with contextlib.suppress(Exception):
                self._flush_pending()
        inflight = self._inflight
        if node is not None and inflight is not None:
            # The disk may be found full by this very write (the close's flush above may be
            # the first write since it filled up): waited for a moment, and withdrawn once
            # the committer stalls on it. Between two attempts the committer holds the write
            # for a few microseconds.
            write = inflight[0]
            node.hurry()
            for _ in range(WITHDRAW_TRIES):
                if write.done or write.event.wait(0.005):
                    break
                if node.stalled is not None and node.withdraw(write):
                    self._inflight = None
                    break
            else:
                if node.withdraw(write):
                    self._inflight = None
        with contextlib.suppress(Exception):
            self._drain()  # its failure was already raised, or the partition is going away
        self._env = None
        node, self._node = self._node, None
        if node is not None and node.close_partition(self._name, self._lease):
            # Only the node's last partition flushes, and ``release`` does that on the I/O
            # threads. (A holder taken over from has had its reference dropped already.)
            node.release()

    def status(self) -> dict[str, Any]:
        status = super(LmdbStorage, self).status()
        # Without waiting for the in-flight write (``env`` would): a status must answer while
        # the disk is full and that write waits for room. Its rows may be missing from
        # ``entries`` meanwhile.
        env = super().env
        info = env.info()
        page = env.stat()["psize"]
        with env.begin() as txn:
            entries = txn.stat(self._db)["entries"]
        node = self._node
        status.update(
            {
                "database": self._path,
                "entries": entries,
                "map_size": info["map_size"],
                "map_used_bytes": (info["last_pgno"] + 1) * page,
                "node_partitions": 0 if node is None else node.partitions(),
                "node_commits": 0 if node is None else node.commits,
                "node_writes": 0 if node is None else node.writes,
                "node_syncs": 0 if node is None else node.syncs,
                "node_stalled": None if node is None else node.stalled,
                "node_sync_failure": None if node is None else node.sync_failure,
                "durable_position": self.durable_position(),
                "pending_rows": self._pending_rows(),
                "sync": self._sync,
                "writemap": self._writemap,
                "quarantine": self.quarantine,
            }
        )
        return status

    def _pending_rows(self) -> int:
        """The rows the write-back buffer holds, each key once: rows kept as applied are
        encoded first, since one of them may stand for a key already encoded."""
        self._encode_raw()
        return len(self._pending)

    # -- applying -----------------------------------------------------------------------------

    @property
    def env(self) -> lmdb.Environment:
        """The node's environment, once this partition's in-flight write (if any) is
        committed: every read, snapshot, status and wholesale replace goes through here, so
        none of them sees the partition without its last apply (see ``_write``). The
        write-back buffer is flushed first (a lookup of one key reads the buffer instead:
        ``_lookup``)."""
        if self._pending_position is not None:
            self._flush_pending()
        return self._committed_env()

    def _committed_env(self) -> lmdb.Environment:
        """The environment once the in-flight write is committed (the buffer not flushed)."""
        if self._inflight is not None or self._failed is not None:
            self._drain()
        return super().env

    def _drain(self) -> None:
        """Wait for the in-flight write and record its generation; raise what failed it
        (and every later call too: the applied position already counts it)."""
        if self._failed is not None:
            raise self._failed
        inflight, self._inflight = self._inflight, None
        self._inflight_index = None  # up to a buffer's worth of rows: not kept past the flush
        if inflight is None:
            return
        write, position = inflight
        try:
            if not write.done and self._node is not None:
                self._node.hurry()
            NodeEnv.wait(write)
        except BaseException as exc:
            self._failed = exc
            raise
        self._written = write.generation
        self._note_unsynced(position)

    def _write(self, ops: Ops, meta: list[tuple[bytes, bytes]]) -> None:
        """Commit through the node's group commit (each transaction on one thread, as LMDB
        wants: the committer's). Not through otp.blocking: the node's committer thread runs
        the transaction and this actor is suspended meanwhile (NodeEnv.commit).

        With lazy sync the rows only go into the partition's write-back buffer: the WAL, not
        LMDB, makes the applied entries durable, so LMDB may lag the applied position as long
        as the durable position (what the log may trim to) counts only what reached it.
        ``_commit`` flushes the buffer as one write every ``lmdb_flush_interval_ms`` or
        ``lmdb_flush_bytes`` of applied values; a key written several times in between is
        checksummed and stored once (the buffer keeps its last value). Reads look in the
        buffer first (``_lookup``); everything else that reads the environment flushes it
        first (``env``)."""
        node = self._open_node()
        if self._sync:
            self._write_synced(node, ops, meta)
            return
        self._encode_raw()
        pending = self._pending
        size = 0
        for op in ops:
            if type(op) is list:
                pending.update(op)
                size += sum([len(value) for _, value in op])
            else:
                pending[op] = None  # type: ignore[index]
        self._buffer_meta(meta, size)

    def _write_synced(self, node: NodeEnv, ops: Ops, meta: list[tuple[bytes, bytes]]) -> None:
        """``lmdb_sync``: commit the apply's write and wait until it is committed (fsynced),
        raising what failed it (the apply then fails with the position unchanged).

        On a full disk it is not waited for: once the committer finds the disk full
        (``_caught_up``), the apply returns with its write left in flight, waiting for room
        in the committer, as a lazy flush is. Waiting, as before, the storage actor served
        no read for as long as the disk stayed full. The write is what the rest of a lazy
        stall goes by: reads take its rows from it (``_lookup``), the storage actor holds
        the applies that follow (``applies_held``: at most one write of a partition in
        flight), has new commits refused (``write_stalled``) and is woken once it lands
        (``wake_when_written``). Nothing acknowledged is lost meanwhile: the durable position
        stays at the last committed write (``durable_position``), so the log keeps the
        stalled entries, and a restart applies them again.

        Holding applies only works between apply messages: one message may need several
        writes (a config entry, a ``$batch`` with session or derived commands, a derived
        command after a provider's own). Such a later write never waits on a stalled one
        (which lasted as long as the disk stayed full): the stalled write is taken back from
        the committer and this write carries its ops first, then the new ones, with the
        newer metadata (``_take_back_stalled``). That keeps one write in flight, in order and
        all or nothing, at the newest position, and it counts as durable only once it
        lands."""
        stalled = self._take_back_stalled(node)
        if stalled is None:
            self._drain()  # at most one write in flight: done already, or failed (raises)
        else:
            ops = [*stalled.ops, *ops]
            meta = list({**dict(stalled.meta), **dict(meta)}.items())
        write = _Write(self._db, self._seed, ops, meta, self._path, self._lease)
        try:
            node.submit(write)
        except BaseException as exc:
            if stalled is not None:
                self._failed = exc  # the applies it carried returned: failed for good
            raise
        position = self._writing
        self._inflight = (write, position)
        if not self._caught_up():
            return  # the disk is full: left in flight (see above)
        if stalled is not None:
            # Landed or failed; a failure fails the applies that returned with the stalled
            # write too (counted in the position): recorded for good, as a lazy flush's.
            self._drain()
            return
        self._inflight = None
        NodeEnv.wait(write)  # raises what failed it: nothing applied, the apply fails
        self._written = write.generation
        self._durable = position

    def _take_back_stalled(self, node: NodeEnv) -> _Write | None:
        """``lmdb_sync``: the in-flight write, withdrawn from the committer if it waits for
        room on a full disk (it is then no longer in flight and never commits); None once it
        is done (or there is none). Waited for while the disk is not known to be full
        (``_caught_up``); while the committer is trying it again (withdraw refuses), for a
        moment at a time until it is put back in the queue or lands."""
        inflight = self._inflight
        if inflight is None or self._caught_up():
            return None
        write = inflight[0]
        while not write.done:
            if node.stalled is not None and node.withdraw(write):
                self._inflight = None  # not drained: its withdrawal is no failure of ours
                self._inflight_index = None
                return write
            write.event.wait(STALL_CHECK)
        return None

    def _buffer_meta(self, meta: list[tuple[bytes, bytes]], size: int) -> None:
        """Account for an apply whose rows (``size`` value bytes) just went into the buffer,
        and buffer its metadata rows."""
        self._pending_meta.update(meta)
        self._count_applied(size)

    def _count_applied(self, size: int) -> None:
        """Account for an apply whose rows (``size`` value bytes) just went into the buffer."""
        if not self._pending_bytes:
            self._pending_since = time.monotonic()
        self._pending_bytes += size + 1  # + 1: a delete-only apply counts too

    def _flush_pending(self) -> None:
        """Queue the write-back buffer as one write for the node's group commit, without
        waiting for it. The previous write is waited for first (at most one write of a
        partition in flight, so a failed one is never followed by a later one)."""
        position = self._pending_position
        if position is None:
            return
        node = self._open_node()
        self._encode_raw()
        # Every apply moves the position row; written once here (the fast path of
        # ``apply_many`` leaves it out).
        self._pending_meta.update([_position_row(position)])
        rows = [(key, value) for key, value in self._pending.items() if value is not None]
        ops: Ops = [rows] if rows else []
        if len(rows) != len(self._pending):
            ops.extend(key for key, value in self._pending.items() if value is None)
        write = _Write(
            self._db, self._seed, ops, list(self._pending_meta.items()), self._path, self._lease
        )
        self._drain()
        node.submit(write, lazy=True)
        self._inflight = (write, position)
        self._pending = {}
        self._pending_meta = {}
        self._pending_position = None
        self._pending_bytes = 0

    def apply_many(self, commands: Sequence[Any], position: LogPos, label: Any = None) -> list[Any]:
        """As ``LmdbStorage.apply_many``; with lazy sync, a batch of plain writes and deletes
        goes straight into the write-back buffer, all or nothing: anything else takes the
        general path. Keys and values that need no encoding to be compared (bytes, ASCII
        text) are kept as applied and encoded at the flush (``_encode_raw``), once per key
        however often it was written; the others are encoded now (``_staged``). The position
        row is written by the flush, the label row only when the label changes."""
        if self._sync:
            return super().apply_many(commands, position, label)
        self._open_node()  # both buffer paths below keep rows: not in a closed partition
        label_row = None
        if label is None:
            label = self._label
        elif label is not self._label:
            label_row = _label_row(label)  # before any row is buffered: it may raise
        size = _unencoded(commands)
        if size is not None:
            self._keep_raw(commands)
        else:
            found = self._staged(commands)
            if found is None:
                return super().apply_many(commands, position, label)
            staged, size = found
            self._encode_raw()
            self._pending.update(staged)
        self._applied_buffered(position, label, label_row, size)
        return [OK] * len(commands)

    answers_ok: ClassVar[bool] = True  # every command applied answers "ok" (TransactionalStorage)

    def apply_batch(self, items: Sequence[ApplyItem]) -> list[Any]:
        """As ``LmdbStorage.apply_batch``; with lazy sync, a chunk of plain writes and deletes
        whose keys and values need no encoding to be compared takes ``apply_many``'s fast
        path: kept as applied, encoded at the flush, the position row written by the flush.
        A partition whose clients send one command per entry (few commands per round, as at
        1000 partitions) applies its entries here rather than through ``apply_many``. Anything
        else takes the general path."""
        if self._sync or not items:
            return super().apply_batch(items)
        commands = [item[0] for item in items]
        size = _unencoded(commands)
        if size is None:
            return super().apply_batch(items)
        label = self._label
        for item in items:
            if item[2] is not None:
                label = item[2]  # the last label given wins, as in the general path
        label_row = None if label is self._label else _label_row(label)  # may raise: first
        self._open_node()
        self._keep_raw(commands)
        self._applied_buffered(items[-1][1], label, label_row, size)
        return [OK] * len(items)

    def _open_node(self) -> NodeEnv:
        """The node environment; ``StorageError`` once the partition is closed (every path
        that writes or buffers asks first: a row kept in the buffer of a closed partition
        would look applied and never be written)."""
        node = self._node
        if node is None:
            raise StorageError(f"LMDB node storage {self._path} is closed")
        return node

    def _keep_raw(self, commands: Sequence[Any]) -> None:
        """Keep ``commands`` (plain writes and deletes ``_unencoded`` accepted) as applied, for
        ``_encode_raw``."""
        raw = self._raw
        for command in commands:
            raw[command[2]] = command[3] if len(command) == 4 else _DELETED

    def _applied_buffered(
        self, position: LogPos, label: Any, label_row: tuple[bytes, bytes] | None, size: int
    ) -> None:
        """Account for rows (``size`` value bytes) just put into the write-back buffer as
        applied up to ``position`` with ``label`` (its row when it changed), and flush the
        buffer if it is due."""
        if label_row is not None:
            self._pending_meta.update([label_row])
        self._count_applied(size)
        self._set_metadata(position, self._config, label, self._incomplete)
        self._buffered(position)

    def _encode_raw(self) -> None:
        """Encode the rows ``apply_many`` kept as applied into ``_pending`` (they are newer
        than what ``_pending`` holds for their keys)."""
        raw = self._raw
        if not raw:
            return
        pack, pending = self._pack, self._pending
        for key, value in raw.items():
            stored = pack(key)
            if value is _DELETED:
                pending[_stored_key(stored)] = None
            elif len(stored) > _MAX_RAW_KEY:
                long_key, row = _long_entry(stored, pack(value))
                pending[long_key] = row
            else:
                pending[stored] = pack(value)
        self._raw = {}

    def _staged(self, commands: Sequence[Any]) -> tuple[dict[bytes, bytes | None], int] | None:
        """The buffer rows of ``commands`` and their value bytes; None unless every command
        is a plain write or delete msgpack alone can encode."""
        pack = self._pack
        staged: dict[bytes, bytes | None] = {}
        size = 0
        try:
            for command in commands:
                if type(command) is tuple:
                    length = len(command)
                    if length == 4 and command[0] == "write":
                        key = pack(command[2])
                        value = pack(command[3])
                        if len(key) > _MAX_RAW_KEY:
                            key, value = _long_entry(key, value)
                        staged[key] = value
                        size += len(value)
                        continue
                    if length == 3 and command[0] == "delete":
                        staged[_stored_key(pack(command[2]))] = None
                        size += 1
                        continue
                return None
        except Exception:
            self._pack = _new_packer()  # a value msgpack needs waraft.codec for: general path
            return None
        return staged, size

    def _buffered(self, position: LogPos) -> None:
        """The write-back buffer now reaches ``position``: flush it if it is due. The last
        flush is waited for first, but never once the disk is found full (``_caught_up``):
        on a full disk that wait lasted until there was room, and the storage actor served
        no read meanwhile. The buffer then stays, past its byte bound if need be, and the
        storage actor holds its applies once it reaches ``BEHIND_FACTOR`` times the bound
        (``applies_held``): it stays bounded in bytes."""
        self._pending_position = position
        if (
            self._pending_bytes >= self._flush_bytes
            or time.monotonic() - self._pending_since >= self._flush_interval
        ) and self._caught_up():
            self._flush_pending()

    def _caught_up(self) -> bool:
        """Whether the partition's last flush is done, waiting for it while the disk is not
        known to be full (as long as a commit takes); False, without waiting, once it is."""
        inflight, node = self._inflight, self._node
        if inflight is None or node is None:
            return True
        write = inflight[0]
        if not write.done:
            node.hurry()
            while not write.done:
                if node.stalled is not None:
                    return False
                # Woken when it is done; looks at the stall every STALL_CHECK meanwhile.
                write.event.wait(STALL_CHECK)
        return True

    def _stalled_behind(self) -> bool:
        """Whether the partition's last flush waits for room on a full disk."""
        inflight, node = self._inflight, self._node
        return (
            inflight is not None
            and not inflight[0].done
            and node is not None
            and node.stalled is not None
        )

    def _flush_due(self) -> bool:
        """Whether the buffer holds rows the next apply would flush (were the last flush
        done)."""
        return self._pending_position is not None and (
            self._pending_bytes >= self._flush_bytes
            or time.monotonic() - self._pending_since >= self._flush_interval
        )

    def write_back_due(self) -> float | None:
        if self._pending_position is None:
            return None
        if self._pending_bytes >= self._flush_bytes:
            due = 0.0  # left past its bound by a stalled flush (``_buffered``)
        else:
            due = self._pending_since + IDLE_FLUSH_FACTOR * self._flush_interval
            due -= time.monotonic()
        if due <= 0 and self._stalled_behind():
            # The storage actor is woken when the last flush is done (``wake_when_written``):
            # the timer only looks again later (never a busy timer while the disk is full).
            return STALL_BACKOFF_MAX
        return due

    def write_back(self) -> None:
        """Flush the buffer, unless the last flush waits for room (see ``_buffered``)."""
        if self._pending_position is not None and self._caught_up():
            self._flush_pending()

    def applies_held(self) -> bool:
        if self._sync:
            # Each apply is a write of its own, and only one may be in flight.
            return self._stalled_behind()
        return (
            self._pending_position is not None
            and self._pending_bytes >= self._buffer_max
            and self._stalled_behind()
        )

    def write_stalled(self) -> str | None:
        node = self._node
        return node.stalled if node is not None and self._stalled_behind() else None

    def wake_when_written(self, wake: Callable[[], None]) -> bool:
        """See ``StorageProvider.wake_when_written``: the last flush is waited for when the
        buffer is due, its applies held or its writes stalled. The committer is hurried on:
        someone waits for the flush (``LAZY_COMMIT_DELAY``)."""
        inflight, node = self._inflight, self._node
        if inflight is None or node is None:
            return False
        write = inflight[0]
        if write.done or not (node.stalled is not None or self._flush_due()):
            return False
        write.notify = wake
        if write.done:  # done meanwhile: the committer may have missed ``notify``
            write.notify = None
            return False
        node.hurry()
        return True

    def _commit(
        self,
        ops: Ops,
        position: LogPos,
        config: tuple[LogPos, Config] | None,
        label: Any,
        incomplete: bool,
    ) -> None:
        self._writing = position  # the position ``_write_synced`` commits
        super()._commit(ops, position, config, label, incomplete)
        if not self._sync:
            self._buffered(position)

    def _note_unsynced(self, position: LogPos) -> None:
        if self._sync:
            self._durable = position  # committed means fsynced (``_write_synced``)
            return
        unsynced = self._unsynced
        if unsynced and unsynced[-1][0] == self._written:
            unsynced.pop()  # one entry per generation: the newest position in it
        unsynced.append((self._written, position))
        self._settle()  # bounded by the commits of one sync interval

    def read(self, command: Any, position: LogPos) -> Any:
        """As ``LmdbStorage.read``, checking the value's checksum: a damaged value raises
        ``StorageCorruptionError`` and is never returned. A quarantined replica answers
        ``("error", "storage_quarantined")``: its emptied data would say ``not_found``."""
        if self.quarantine is not None and command_kind(command) == "read":
            return QUARANTINED
        return super().read(command, position)

    def _lookup(self, stored_key: bytes) -> bytes | None:
        if self._failed is not None:
            raise self._failed  # a failed write fails every later call, buffered reads too
        self._encode_raw()
        pending = self._pending
        if stored_key in pending:
            return pending[stored_key]  # not yet in LMDB (None: deleted)
        inflight = self._inflight
        if inflight is not None and not inflight[0].done:
            # Not waited for: on a full disk the last flush waits for room as long as the disk
            # stays full, and reads must still be served. A row it carries is read from it;
            # any other key it leaves as LMDB has it, committed or not yet.
            rows = self._inflight_rows(inflight[0])
            if stored_key in rows:
                return rows[stored_key]
            env = super().env
        else:
            env = self._committed_env()
        with env.begin(db=self._db) as txn:
            return self._get(txn, stored_key)

    def _inflight_rows(self, write: _Write) -> dict[bytes, bytes | None]:
        """The rows of the in-flight flush ``write`` by stored key (None: deleted), built
        once per flush."""
        cached = self._inflight_index
        if cached is not None and cached[0] is write:
            return cached[1]
        rows: dict[bytes, bytes | None] = {}
        for op in write.ops:
            if type(op) is list:
                rows.update(op)
            else:
                rows[op] = None  # type: ignore[index]
        self._inflight_index = (write, rows)
        return rows

    # -- snapshots ----------------------------------------------------------------------------

    def create_snapshot(self, path: str | os.PathLike[str]) -> Any:
        """A snapshot in ``waraft.storage.lmdb``'s format; every value is checked on the way
        (``StorageCorruptionError``: a damaged replica must not hand its damage on)."""
        if self._pending_position is not None:
            self._flush_pending()  # the snapshot copies the environment
        return otp.blocking(self._create_snapshot, path)

    def _create_snapshot(self, path: str | os.PathLike[str]) -> Any:
        directory = os.fspath(path)
        position, config = self._position, self._config
        env = self.env
        stat = env.stat()
        with env.begin() as txn:
            db_stat = txn.stat(self._db)
        pages = db_stat["branch_pages"] + db_stat["leaf_pages"] + db_stat["overflow_pages"]
        map_size = -(-(2 * pages * stat["psize"] + 4 * _MIB) // _MIB) * _MIB

        def fill(temp: str) -> None:
            out = lmdb.open(
                temp,
                subdir=False,
                lock=False,
                writemap=False,
                sync=False,
                metasync=False,
                max_dbs=_MAX_DBS,
                map_size=map_size,
                mode=0o644,
            )
            try:
                kv, meta = out.open_db(_KV), out.open_db(_META)
                with out.begin(write=True) as txn:
                    for key, value in self._rows():
                        if _is_meta(key):
                            name = key[len(_META_PREFIX) :]
                            if name != b"quarantine":
                                txn.put(name, value, db=meta)
                        else:
                            txn.put(key, value, db=kv)
                out.sync(True)
            finally:
                out.close()

        try:
            os.makedirs(directory, exist_ok=True)
            target = os.path.join(directory, SNAPSHOT_FILE)
            build_file_durably(target, fill)
            write_snapshot_checksum(directory, SNAPSHOT_FILE)
            write_metadata(directory, "lmdb", position, config)
        except (OSError, lmdb.Error, CodecError) as exc:
            logger.error("cannot write snapshot %s: %s", directory, exc)
            return ("error", str(exc))
        return OK

    def open_snapshot(self, path: str | os.PathLike[str], expected: LogPos) -> Any:
        """Check the snapshot, then empty the partition's database and copy the snapshot in,
        in one transaction (which also lifts a quarantine), and flush it. ``("error",
        reason)`` only when that transaction did not commit; a flush failing after the commit
        is not the install failing (see ``_flush_installed``)."""
        if self._pending_position is not None:
            # Flushed, not dropped: a snapshot refused below leaves the partition as it was.
            self._flush_pending()
        return otp.blocking(self._open_snapshot, path, expected)

    def _open_snapshot(self, path: str | os.PathLike[str], expected: LogPos) -> Any:
        directory = os.fspath(path)
        checked = self._checked_snapshot(directory, expected)
        if checked is not None:
            return checked
        data_path = os.path.join(directory, SNAPSHOT_FILE)
        source = lmdb.open(
            data_path,
            subdir=False,
            readonly=True,
            lock=False,
            max_dbs=_MAX_DBS,
            map_size=max(os.path.getsize(data_path), _MIB),
        )
        try:
            kv = source.open_db(_KV, create=False)
            meta_db = source.open_db(_META, create=False)
            with source.begin() as txn:
                rows = dict(txn.cursor(meta_db))
                self._replace(txn.cursor(kv), rows, flush=False)
        except lmdb.Error as exc:
            logger.error("cannot install snapshot %s: %s", directory, exc)
            return ("error", f"cannot install snapshot {directory}: {exc}")
        finally:
            source.close()
        was = self.quarantine
        self._load_meta(synced=self._flush_installed(directory))
        if self._position != expected:
            raise StorageError(
                f"snapshot {directory} installed at {self._position}, expected {expected}"
            )
        if was is not None:
            logger.warning(
                "LMDB node storage %s repaired by the snapshot at %s (was quarantined: %s)",
                self._path,
                expected,
                was,
            )
        return OK

    def _flush_installed(self, directory: str) -> bool:
        """Flush the committed install (the log is reset to its position next); True once it
        is durable. A failed flush still answers ``"ok"``: the database holds the snapshot, and
        an error would leave the position, config and quarantine cached here, in the storage
        actor and in the core as they were, over the snapshot's rows. Raising instead would
        restart the partition only to read the same unsynced rows from the still open node
        environment. The node's ``sync_failure`` (set by ``flush``) stops its durable
        positions and asks for the environment's rebuild, as after any other failed sync."""
        if self._sync:
            return True  # the commit was synced
        try:
            self._open_node().flush()
        except lmdb.Error as exc:
            logger.error("snapshot %s installed in %s, not flushed: %s", directory, self._path, exc)
            return False
        return True


PROVIDER = NodeLmdbStorage
"""The provider this module stands for when a setting names the module."""

__all__ = [
    "MARKER",
    "NODE_DIR",
    "QUARANTINED",
    "NodeEnv",
    "NodeLmdbStorage",
    "StorageCorruptionError",
]
