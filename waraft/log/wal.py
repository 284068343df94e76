"""A write-ahead log per node shared by every partition (``WalLog``), with group commit.

Design (the idea of rabbitmq/ra's shared WAL, written from scratch)
--------------------------------------------------------------------
Every partition of a node whose data directories share a parent (``<raft_database>``) writes its
log records into one ``WalWriter`` kept in ``<raft_database>/wal``. The writer owns one I/O
thread and one open file: it takes every record queued by every partition since its last batch,
frames each (length, CRC: on this thread, not the partitions'), writes them with one
``os.write`` and makes them durable with one ``fdatasync`` — one fsync per
batch for the whole node, whatever the number of partitions. ``WalLog.sync`` returns only once
an fsync covering every record the partition queued before the call has completed, so nothing
is acknowledged before it is on disk. A partition's contiguous appends between two syncs are
held and queued as one append record at the sync (or before any other record of it). Open
file descriptors per node: the active WAL file, the directory and a lock file, independent of
the number of partitions.

Each partition keeps its live entries in memory (``MemoryLog``); memory is bounded by log
rotation (``trim``), as with the in-memory provider, per partition and node-wide (the
partitions share one ``waraft.log.budget.RetentionPool``).

File format
-----------
``<seq:020d>.wal``: a 16-byte header (magic ``WRAFTWL2``, sequence number u64le), then records
``length:u32le | crc32(payload):u32le | payload``; the payload is a msgpack array whose first
two items are the operation and the partition key (the partition directory's base name). The
file is filled with zeros ahead of its records (``preallocate_bytes``, 1 MiB by default), so
that a batch's ``fdatasync`` overwrites blocks that exist and commits no new file size: the
zeros after the last record are the file's end. Each batch begins with a marker record. The
operations:

* ``("a", key, first, [(term, key, command, label), ...])`` append (replay cuts the log at
  ``first`` first, so replay is exact even after truncates);
* ``("t", key, index)`` truncate; ``("r", key, index, term)`` reset;
* ``("m", key, index)`` trim; ``("c", key, first, entries)`` checkpoint (the whole live log);
* ``("c", key, first, entries, parts)`` a checkpoint too large for one record, split in
  ``parts`` records: this one, then ``parts - 1`` ``"a"`` records of the same partition with
  the rest (queued together, so in one batch). Replay holds the parts aside and replaces the
  log only once the last one is read: a checkpoint a crash cut short at the end of the newest
  file is dropped (the older files, deleted only once a checkpoint is durable, still hold
  the log); one left unfinished in any other file is corruption;
* ``("b", "", number)`` the start of a batch (replay skips it).

Files with the magic ``WRAFTWL1`` (written before preallocation: appended, no markers) are
still read, with the append-only rule below. The part count was added to ``WRAFTWL2`` files
without a new magic: a checkpoint without it is one record, as before; a reader older than
it ignores the extra item and reads a complete split checkpoint alike (an unfinished one as
that reader always did: its first part replaces the log).

Recovery, rotation, retention
-----------------------------
Opening the writer replays every file in order and rebuilds each partition's log; a partition's
``WalLog.open`` takes its recovered log. Each file is fsynced before it is replayed (a kill -9
can leave a batch in the page cache whose ``fdatasync`` never ran). A newest file shorter than
a header, or a header's worth of zeros, never had its header written, and is removed; any
other bad header is corruption. Zeros from a record boundary to the end of a file are its
unwritten part. A bad record in the last file is a torn tail, cut with a warning, unless valid
records follow it to the end that show the damage is older than the crash: in an append-only
file any such records, in a zero-filled one records holding a batch marker (the blocks of the
batch in flight at a power loss reach the disk in any order; see ``_damaged``). Any other bad
record is corruption: every ``WalLog.open`` of that node raises ``LogCorruptionError`` (the
log actor quarantines the replica and the node keeps running). After recovery the writer
starts a new file.

When the active file reaches ``max_file_bytes`` the writer starts the next one. A partition
*needs* a closed file while its first live index is at or below the highest index it appended
into it. The newest ``keep_files`` (default 1) closed files are kept as they are, and deleted
as soon as no partition needs them or any older file (busy partitions trim past them within
about one file of appends; the files on disk always stay a suffix of the sequence). A file
older than that is expired: every partition that still needs it is *checkpointed* (its whole
live log is written as one record into the new file, queued under the partition's lock so
record order is kept), and once that is durable the file is unlinked. Retention on disk is
thus at most about ``(keep_files + 2) * (max_file_bytes + preallocate_bytes)`` plus the live
logs of the partitions that stopped trimming.

Failures
--------
A write that fails for want of room (``ENOSPC``, ``EDQUOT``, ``EFBIG``, also when starting the
next file) is a stall: the batch is cut off the file, kept queued and retried with a backoff
(``can_append`` says no meanwhile). Any other failed write (``EIO``: the device failed) or
fsync fails the writer for good: it refuses further writes (``LogWriteError`` from ``sync``
and ``append``), as after a failed fsync the kernel may have dropped the dirty pages and a
retry could lie. The failed batch is cut off the file at once, or, if that fails too, by the
next open before it replays anything (or the open refuses, ``waraft.log.unsynced``): the page
cache still holds it and recovery's own fsync would succeed, so replayed it would count as
durable. The failed writer is then replaced once (``WalWriter._replace``): it is retired
(out of the registry, its files closed), the partitions with records not durable in it are
restarted (their logs in memory may be ahead of the disk), the directory is opened again from
disk, and the other partitions' logs move to the new writer as they are. A disk that keeps
failing is reopened with a growing delay (``REOPEN_BACKOFF_MIN``), never in a loop. A
directory is opened (its lock taken, its files read and recovered) outside the lock of the
process-wide registry of writers, by one caller at a time (``WalWriter._claim``): a disk that
hangs holds up its own node's WAL, not the other nodes' of the process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, Self

from waraft.core.settings import Settings
from waraft.core.types import Entry, LogPos, Priority
from waraft.log import unsynced
from waraft.log.budget import RetentionPool
from waraft.log.memory import MemoryLog, _Run
from waraft.log.provider import (
    FSYNC_METRIC,
    LogCorruptionError,
    LogError,
    LogMissingError,
    LogWriteError,
    is_config_entry,
    make_marker,
)
from waraft.otp.messaging import self_pid, send
from waraft.otp.sched import Event, blocking, park, resume_all, scheduled_caller
from waraft.otp.sched import sleep as otp_sleep
from waraft.otp.threadname import set_os_name
from waraft.services import metrics
from waraft.services.codec import CodecError, array_header, packb, unpackb

if TYPE_CHECKING:
    from waraft.otp.process import Process

logger = logging.getLogger(__name__)

MAGIC: Final = b"WRAFTWL2"
"""The header of the files this version writes: zero-filled ahead, a marker record per batch."""
MAGIC_V1: Final = b"WRAFTWL1"
"""The header of files written before preallocation (append-only, no batch markers): still read,
with their own recovery rule, and continued as they are on a full disk."""
FILE_HEADER: Final = struct.Struct("<8sQ")
RECORD_HEADER: Final = struct.Struct("<II")
SUFFIX: Final = ".wal"
WAL_DIR: Final = "wal"
MARKER: Final = "wal-log"
"""An empty file in the partition directory: the WAL holds this directory's log."""
MAX_PAYLOAD: Final = 1 << 30
DEFAULT_MAX_FILE_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_BATCH_BYTES: Final = 8 * 1024 * 1024
"""The most of a batch joined into one string for one ``os.write`` (still one fsync a batch)."""
DEFAULT_PREALLOCATE_BYTES: Final = 1024 * 1024
"""How far ahead of the write position the active file is filled with zeros (0: not at all).
An ``fdatasync`` after an append that grows the file must also commit the filesystem's journal
(the new size); one after an overwrite of blocks already written flushes only the data: a third
less ``fdatasync`` time and a quarter less I/O-thread CPU per group commit here
(``benchmarks/wal_sync_bench.py``, ``benchmarks/SCALE.md``). Only the batch that extends the
zeroed area pays the journal commit."""
PAGE: Final = 4096
_ZEROS: Final = bytes(PAGE * 64)  # written a slice at a time: no 1 MiB buffer per extension
_NO_ROOM: Final = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a size limit
DEFAULT_KEEP_FILES: Final = 1
"""Closed WAL files rotation keeps without checkpointing the partitions that still need them
(see ``WalWriter._rotate``); older files are checkpointed away and deleted."""
HELD_APPEND_MAX_BYTES: Final = 1024 * 1024
"""A partition's contiguous appends are held and queued as ONE append record at its next sync
(or before any other record of it), up to this many bytes of entries; a larger append is
queued at once, as before."""

FRESH_OPEN_STALL_WAIT: Final = 2.0
"""Seconds ``WalLog.open`` of a new partition waits for its reset to be durable while the WAL
is stalled (a full disk) before it fails (its log actor retries): not without limit."""

STALL_BACKOFF_MIN: Final = 0.1
STALL_BACKOFF_MAX: Final = 2.0
"""Seconds between attempts to write a batch that failed (a full disk), doubling."""

REOPEN_BACKOFF_MIN: Final = 0.1
REOPEN_BACKOFF_MAX: Final = 10.0
"""Seconds before a node's failed WAL (EIO) is opened again: at once after a first failure,
then doubling from the minimum to the maximum while failures (of a writer or of an open)
follow each other; a failure more than twice the maximum after the last one starts over. A
disk that keeps failing is reopened (every file read and fsynced) at most that often."""

REOPEN_OPEN_WAIT: Final = 2.0
"""Seconds ``WalLog.open`` waits for its WAL's next reopen before it fails (its log actor is
restarted and opens again): the restarts of a partition stay far below its supervisor's
limit however long the disk fails."""

OPEN_ATTEMPTS: Final = 3
"""Times ``WalLog.open`` acquires its WAL's writer when the one acquired failed before the
log was registered on it (each acquire waits at most ``REOPEN_OPEN_WAIT``)."""

_Logs = dict[str, tuple[int, list[Entry]]]


class _Reopen:
    """When a directory's failed WAL may be opened again (``REOPEN_BACKOFF_MIN``)."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.not_before = 0.0
        self.last = -float("inf")
        self.reason = ""

    def failed(self, reason: str) -> float:
        """Note a failure; the seconds until the next open."""
        now = time.monotonic()
        if now - self.last > 2 * REOPEN_BACKOFF_MAX:
            self.delay = 0.0
        else:
            self.delay = min(REOPEN_BACKOFF_MAX, max(REOPEN_BACKOFF_MIN, self.delay * 2))
        self.last, self.reason = now, reason
        self.not_before = now + self.delay
        return self.delay

    def wait(self) -> float:
        """Seconds until the directory may be opened again (0: now)."""
        return max(0.0, self.not_before - time.monotonic())


class _Pending(NamedTuple):
    """``WalWriter.try_acquire`` of a WAL that cannot be had now: a failed one not to be
    opened again yet, or one another caller is opening (``opening``)."""

    seconds: float  # until its next reopen
    reason: str  # its failure
    opening: Event | None = None  # set once another caller's open of it ended


class _OutOfService(LogWriteError):
    """``WalWriter.attach`` to a writer that failed after it was acquired: acquire again."""


class _WriteFailed(Exception):
    """A batch could not be written for want of room and the file was cut back: retry later."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _raw(entries: Sequence[Entry]) -> list[tuple[Any, ...]]:
    return [(e.term, e.key, e.command, e.label) for e in entries]


def _record(op: tuple[Any, ...]) -> bytes:
    return _frame(_payload(op))


def _frame(data: bytes) -> bytes:
    """The record of a checked payload: length, CRC, payload (``WalWriter._write`` frames its
    batches the same way, without the concatenation)."""
    return RECORD_HEADER.pack(len(data), zlib.crc32(data)) + data


def _payload(op: tuple[Any, ...]) -> bytes:
    """The payload of the record of ``op`` (what ``WalWriter.submit`` takes)."""
    return _checked(packb(op))


def _checkpoint_payloads(key: str, first: int, entries: Sequence[Entry]) -> list[bytes]:
    """The payloads that rebuild ``key``'s log ``entries`` from ``first``: one ``"c"`` record,
    or, when the log does not fit in one record (a log that could not trim for long can
    outgrow ``MAX_PAYLOAD``; one record would fail every rotation and restart), a ``"c"``
    record that names the number of parts followed by ``"a"`` records for the rest, applied
    only once all of them are read (``_Replay``). Only an entry larger than a record on its
    own raises ``LogError``."""
    data = packb(("c", key, first, _raw(entries)))
    if len(data) <= MAX_PAYLOAD or len(entries) <= 1:
        return [_checked(data)]
    parts = _checkpoint_parts(key, first, entries)
    (at, raw), rest = parts[0], parts[1:]
    payloads = [_checked(packb(("c", key, at, raw, len(parts))))]
    payloads += [_checked(packb(("a", key, at, raw))) for at, raw in rest]
    return payloads


def _checkpoint_parts(
    key: str, first: int, entries: Sequence[Entry]
) -> list[tuple[int, list[tuple[Any, ...]]]]:
    """``entries`` (from ``first``) cut in halves until each part's record fits in
    ``MAX_PAYLOAD``, in order: ``(first index, raw entries)`` per part. A part is measured as
    the largest record it can become (the ``"c"`` record with a part count of
    ``len(entries)``), so that whichever becomes the first part fits."""
    parts: list[tuple[int, list[tuple[Any, ...]]]] = []
    pending = [(first, entries)]
    while pending:
        at, part = pending.pop()
        raw = _raw(part)
        if len(packb(("c", key, at, raw, len(entries)))) > MAX_PAYLOAD and len(part) > 1:
            half = len(part) // 2  # the first half goes first: pushed last
            pending += [(at + half, part[half:]), (at, part[:half])]
            continue
        parts.append((at, raw))
    return parts


def _checked(data: bytes) -> bytes:
    """``data`` if it fits in one record (else ``LogError``, raised to the submitter)."""
    if len(data) > MAX_PAYLOAD:
        raise LogError(f"WAL record of {len(data)} bytes exceeds {MAX_PAYLOAD}")
    return data


def _append_prefix(key: str) -> bytes:
    """The start of every append record of partition ``key``: a 4-item array, "a", ``key``."""
    return array_header(4) + packb("a") + packb(key)


def _append_payload(prefix: bytes, first: int, packed: Sequence[bytes]) -> bytes:
    """The payload of the record ``("a", key, first, _raw(entries))``, byte for byte, built
    from the entries' own encodings (``packed[i] == packb(entries[i])``: an ``Entry`` packs as
    the array its ``_raw`` tuple packs as), so that an append encodes each entry once."""
    return _checked(b"".join([prefix, packb(first), array_header(len(packed)), *packed]))


class _Replay:
    """Replays decoded records into the recovered logs (``logs``), a split checkpoint all at
    once: its ``"c"`` record names how many records it has (``_checkpoint_payloads``), and its
    parts, the partition's next records, are held aside in ``partial`` until the last one is
    read. The first part alone replacing the log (the older files still held all of it) lost
    the rest when a crash cut the checkpoint short."""

    def __init__(self) -> None:
        self.logs: _Logs = {}
        self.partial: dict[str, tuple[int, list[Entry], int]] = {}  # key -> first, run, parts

    def apply(self, op: tuple[Any, ...]) -> None:
        """Apply one decoded record (raises on a malformed record)."""
        kind, key = op[0], op[1]
        held = self.partial.get(key)
        if held is not None:
            self._add_part(key, held, op)
        elif kind == "c" and len(op) > 4 and int(op[4]) > 1:
            self.partial[key] = (int(op[2]), [Entry(*r) for r in op[3]], int(op[4]) - 1)
        else:
            _replay(self.logs, op)

    def _add_part(self, key: str, held: tuple[int, list[Entry], int], op: tuple[Any, ...]) -> None:
        first, run, missing = held
        if op[0] != "a" or int(op[2]) != first + len(run):
            raise CodecError(f"a {op[0]!r} record at {op[2]} inside a split checkpoint of {key}")
        run.extend(Entry(*r) for r in op[3])
        if missing > 1:
            self.partial[key] = (first, run, missing - 1)
        else:
            del self.partial[key]
            self.logs[key] = (first, run)

    def drop_unfinished(self, path: str) -> None:
        """Forget the checkpoints a crash cut short at the end of the newest file ``path``:
        the files before it, deleted only once a checkpoint is durable, still hold those
        logs."""
        for key, (_, _, missing) in self.partial.items():
            logger.warning(
                "WAL file %s ends inside a checkpoint of %s (%d records missing): "
                "the log is kept as the earlier records have it",
                path, key, missing,
            )  # fmt: skip
        self.partial = {}


def _replay(logs: _Logs, op: tuple[Any, ...]) -> None:
    """Apply one decoded record to the recovered logs (raises on a malformed record)."""
    kind, key = op[0], op[1]
    if kind in ("a", "c"):
        first, raw = int(op[2]), op[3]
        entries = [Entry(*r) for r in raw]
        current = logs.get(key)
        if kind == "c" or current is None or first <= current[0]:
            logs[key] = (first, entries)
        else:
            start, run = current
            del run[first - start :]
            if first != start + len(run):
                raise CodecError(f"append at {first} leaves a gap after {start + len(run) - 1}")
            run.extend(entries)
    elif kind == "r":
        logs[key] = (int(op[2]), [Entry(int(op[3]))])
    elif kind == "b":
        return  # a batch's marker (see ``_damaged``)
    elif kind in ("t", "m"):
        current = logs.get(key)
        if current is None:
            return
        start, run = current
        index = int(op[2])
        if kind == "t":
            del run[max(1, index - start) :]
        else:
            cut = min(index, start + len(run) - 1) - start
            if cut > 0:
                logs[key] = (start + cut, run[cut:])
    else:
        raise CodecError(f"unknown WAL operation {kind!r}")


def _scan(data: bytes, start: int) -> tuple[list[tuple[Any, ...]], int, str]:
    """Decode records from ``start``; returns (ops, offset of the first bad record or -1, why)."""
    ops: list[tuple[Any, ...]] = []
    pos, end = start, len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < RECORD_HEADER.size:
            return ops, pos, "truncated record header"
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        body = pos + RECORD_HEADER.size
        if length == 0 or length > MAX_PAYLOAD or body + length > end:
            return ops, pos, f"impossible record length {length}"
        payload = view[body : body + length]
        if zlib.crc32(payload) != crc:
            return ops, pos, "CRC mismatch"
        try:
            op = unpackb(payload)
        except CodecError as exc:
            return ops, pos, f"undecodable record ({exc})"
        if type(op) is not tuple or len(op) < 3 or type(op[1]) is not str:
            return ops, pos, "malformed record"
        ops.append(op)
        pos = body + length
    return ops, -1, ""


def _zeros_from(data: bytes, start: int) -> bool:
    """True when ``data`` holds nothing but zero bytes from ``start`` on."""
    return data.count(0, start) == len(data) - start


def _chain_after(
    data: bytes, start: int, zero_filled: bool = False
) -> list[tuple[Any, ...]] | None:
    """The records of the first chain of valid records that starts after ``start`` and runs to
    the end of ``data`` (to its trailing zeros when ``zero_filled``), or None if there is none.

    A chain to the end, not one CRC-valid record: a client chooses the bytes of its values, so
    a value can hold a CRC-valid record, and a crash that tears the record carrying it would
    otherwise read as corruption and refuse the node's start. The records written after a real
    damage do chain to the end of the file; a record hidden in a value is followed by the rest
    of its value."""
    end = len(data)
    # No record starts in the trailing zeros (its length would be 0): not searched, so that a
    # zero-filled file costs no Python loop over its unwritten part.
    limit = len(data.rstrip(b"\0")) if zero_filled else end
    for pos in range(start + 1, min(limit, end - RECORD_HEADER.size)):
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        body = pos + RECORD_HEADER.size
        if 3 <= length <= end - body and zlib.crc32(data[body : body + length]) == crc:
            ops, bad_at, _ = _scan(data, pos)
            if bad_at < 0 or (zero_filled and _zeros_from(data, bad_at)):
                return ops
    return None


def _never_written(data: bytes) -> bool:
    """Whether a newest file whose header is bad is one whose header never reached the disk.

    ``_open_file`` makes the header durable (one write, then an fsync) before the file gets any
    zeros or records, so such a file is shorter than a header (the write never happened) or a
    header's worth of zeros (its size reached the disk, its bytes did not). Anything else is
    damage, zeros over records included, or a format this version does not know (a newer
    one): the node refuses to start rather than delete a file that may hold acknowledged
    records."""
    size = len(data)
    return size < FILE_HEADER.size or (size == FILE_HEADER.size and _zeros_from(data, 0))


def _read_durably(path: str) -> bytes:
    """The bytes of ``path``, made durable before recovery trusts them.

    After a kill -9 the page cache can hold a batch whose ``fdatasync`` never ran. Replayed
    without a sync, its entries would count as durable (a follower would report them as
    matched), and a later power loss could drop them, or tear them under a later batch that
    did reach the disk and so read as corruption (``_damaged`` assumes each batch was durable
    before the next was written)."""
    with open(path, "rb") as f:
        data = f.read()
        os.fsync(f.fileno())
    return data


def _truncate_durably(path: str, size: int) -> None:
    """Cut ``path`` to ``size`` bytes and make the cut durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _damaged(data: bytes, bad_at: int, zero_filled: bool) -> bool:
    """Whether the bad record at ``bad_at`` of the newest file is damage, not a torn tail.

    An append-only file (``MAGIC_V1``): any valid chain after it to the end means damage, since
    a crash only tears the end of a file that grows. A zero-filled file is overwritten in place,
    and after a power loss the blocks of the batch being written when it struck can have reached
    the disk in any order: valid records of that batch can follow a block that did not (zeros).
    The writer writes a batch only after the previous one is durable, and each batch begins
    with a marker record: so a chain after the bad record that holds a marker means a later
    batch was written after the damaged one was durable (damage); one without a marker is the
    rest of the batch in flight (a torn tail). Damage inside the newest batch reads as a torn
    tail, as damage to the newest record of an append-only file does."""
    chain = _chain_after(data, bad_at, zero_filled)
    return chain is not None and (not zero_filled or any(op[0] == "b" for op in chain))


class WalWriter:
    """The node-wide WAL: one file, one I/O thread, one fsync per batch (see module docstring).

    Obtain it with ``WalWriter.acquire(directory)`` and give it back with ``release``.
    """

    _registry: ClassVar[dict[str, WalWriter]] = {}
    fault: ClassVar[Callable[[str], OSError | None] | None] = None
    """A fault hook for tests: called with the directory before each batch is written; an
    ``OSError`` it returns is raised as if ``os.write`` had failed (an injected ENOSPC)."""
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()
    _reopens: ClassVar[dict[str, _Reopen]] = {}  # directory -> its reopen backoff (registry lock)
    # directory -> set once the open a caller claimed (``_claim``) ended (registry lock)
    _opening: ClassVar[dict[str, Event]] = {}

    def __init__(
        self,
        directory: str,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        keep_files: int = DEFAULT_KEEP_FILES,
        preallocate_bytes: int = DEFAULT_PREALLOCATE_BYTES,
    ) -> None:
        if keep_files < 0:
            raise ValueError(f"keep_files must be 0 or more, not {keep_files!r}")
        if preallocate_bytes < 0:
            raise ValueError(f"preallocate_bytes must be 0 or more, not {preallocate_bytes!r}")
        self.directory = directory
        self._options: dict[str, Any] = {
            "max_file_bytes": max_file_bytes,
            "keep_files": keep_files,
            "preallocate_bytes": preallocate_bytes,
        }
        self.retired = False  # failed and out of service (``_retire``)
        self._fds_lock = threading.Lock()  # the fds are closed once, by ``_retire`` or ``stop``
        self.max_file_bytes = max_file_bytes
        self.keep_files = keep_files
        self.preallocate_bytes = preallocate_bytes
        self.checkpointed_bytes = 0  # record bytes rotation has rewritten (status)
        self.refs = 0
        self.taken_over = 0  # logs closed for a holder that died (``take_over_dead``)
        self.fsyncs = 0
        self.batches = 0
        self.fsync_latency = metrics.histogram(FSYNC_METRIC, os.path.abspath(directory))
        self.corruption: LogCorruptionError | None = None
        self.broken: str | None = None
        self.stalled: str | None = None  # a write failed (full disk); retried with backoff
        self._backoff = STALL_BACKOFF_MIN
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[bytes] = []
        self._queue_pins: list[tuple[str, int]] = []  # (key, max appended index) per record
        self._queued = 0  # ticket of the newest queued record
        self._synced = 0  # ticket of the newest durable record
        # Scheduled processes waiting for a ticket (see ``wait``), woken by the I/O thread:
        # parked ones (suspended, resumed in one batch per scheduler) and, while the writer
        # is stalled, ones on an ``Event`` with a timeout.
        self._parked: list[tuple[int, Process]] = []
        self._events: list[tuple[int, Event]] = []
        self._stopping = False
        self._recovered: _Logs = {}
        self._logs: dict[str, WalLog] = {}  # open partitions (under _registry_lock)
        self._old: list[tuple[str, dict[str, int]]] = []  # closed files and their pins
        self._pins: dict[str, int] = {}  # key -> highest index appended into the active file
        self._pending_delete: tuple[int, list[str]] | None = None
        os.makedirs(directory, exist_ok=True)
        self._lock_fd = os.open(
            os.path.join(directory, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        )
        deadline = time.monotonic() + 5.0  # a writer of this process may still be stopping
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._lock_fd)
                    raise LogError(f"WAL directory {directory} is in use") from None
                time.sleep(0.01)
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        self._fd = -1
        self._size = 0  # bytes of records in the active file (its write position)
        self._zero_filled = True  # the active file is of the zero-filled format (MAGIC)
        self._zeroed_to = 0  # the active file's bytes exist (records or zeros) up to here
        self._ends: dict[str, int] = {}  # recovered file -> end of its records
        self._carried = 0  # bytes of checkpoints carried into the active file
        self._path = ""
        try:
            # A batch whose fsync failed in this process and could not be cut off then.
            unsynced.settle(directory)
            seq = self._recover()
            # A corrupt WAL refuses every open (``attach``) and is never written: no new file.
            # One per start piled up header-only files on a quarantined node, and on a full
            # disk the new file's ENOSPC hid the corruption from every open.
            if self.corruption is None:
                self._start_writing(seq + 1)
        except BaseException:
            self._close_fds()
            raise
        self._thread = threading.Thread(target=self._run, name=f"wal-{directory}", daemon=True)
        self._thread.start()

    def _start_writing(self, seq: int) -> None:
        """After a clean recovery: open file ``seq`` and compact the recovered logs into it,
        or, on a full disk, go on in the newest recovered file."""
        try:
            self._open_file(seq)
        except OSError as exc:
            if exc.errno not in _NO_ROOM or not self._old:
                raise
            self._continue_in_newest_file(exc)  # a full disk: no new file, no compaction
            return
        try:
            self._compact_recovered()
        except OSError as exc:
            # No room (a full disk): keep the old files, which still hold every log; the
            # active file goes back to its header.
            logger.warning("WAL %s: not compacted at start: %s", self.directory, exc)
            self._cut_back(FILE_HEADER.size)
            self._carried, self._pins = 0, {}
        else:
            self._drop_old_files()

    # -- registry -------------------------------------------------------------------------------

    @classmethod
    def acquire(cls, directory: str, **options: Any) -> WalWriter:
        """The directory's writer in service, with a reference taken: the registered one, or
        one opened now (recovery) when there is none or the registered one failed (it is
        retired, ``_retire``: a partition never attaches to a writer that refuses writes).
        While a failed WAL waits for its next reopen (``REOPEN_BACKOFF_MIN``) this waits for
        it, or for ``REOPEN_OPEN_WAIT`` s and then raises ``LogWriteError``; a failed open
        raises.

        Each attempt (``try_acquire``: the lock, the recovery) runs on the node's I/O threads
        (``otp.blocking``); the waits between them do not (``otp.sleep``: a scheduled caller
        yields its scheduler, a thread sleeps). Waiting on an I/O thread, a few partitions
        reopening at once held every one of them for the whole failure, and every other
        blocking call of the node (term and vote stores, storage opens, closes) queued
        behind. So this must not itself be called on an I/O thread. While another caller
        opens the directory this waits for that open to end, also without a thread."""
        directory = os.path.abspath(directory)
        deadline = time.monotonic() + REOPEN_OPEN_WAIT
        while True:
            got = cls._try_acquire_blocking(directory, options)
            if isinstance(got, WalWriter):
                return got
            if got.opening is not None:
                # Another caller opens the directory: its outcome, however long the disk
                # work takes (as long as this caller's own open would), then claim again.
                got.opening.wait()
                continue
            remaining = deadline - time.monotonic()
            if got.seconds > remaining:
                # Not at once: a log actor that failed at once would be restarted at once,
                # up to its supervisors' limits (the cascade a failed WAL must not start).
                otp_sleep(max(0.0, remaining))
                raise LogWriteError(
                    errno.EIO,
                    f"WAL {directory} failed ({got.reason}); it is opened again in "
                    f"{got.seconds - remaining:.1f} s",
                )
            otp_sleep(got.seconds)

    @classmethod
    def _try_acquire_blocking(cls, directory: str, options: dict[str, Any]) -> WalWriter | _Pending:
        """``try_acquire`` on the node's I/O threads (``otp.blocking``). A caller killed while
        it runs (resumed only once it is done, then raising its exit) gives back the reference
        taken for it: kept, the writer would never stop, holding the WAL's files and lock."""
        taken: list[WalWriter] = []

        def attempt() -> WalWriter | _Pending:
            got = cls.try_acquire(directory, **options)
            if isinstance(got, WalWriter):
                taken.append(got)
            return got

        try:
            got: WalWriter | _Pending = blocking(attempt)
            return got
        except BaseException:
            if taken:
                blocking(taken[0].release)
            raise

    @classmethod
    def try_acquire(cls, directory: str, **options: Any) -> WalWriter | _Pending:
        """``acquire`` without waiting: the writer in service with a reference taken, or,
        while a failed WAL waits for its next reopen or another caller opens it, a
        ``_Pending`` (nothing taken). It may open the directory (lock, recovery), outside the
        registry lock: call it off the schedulers."""
        directory = os.path.abspath(directory)
        with cls._registry_lock:
            got = cls._claim(directory)
            if isinstance(got, WalWriter):
                got.refs += 1
            if not isinstance(got, Event):
                return got
        return cls._open(directory, options, got, refs=1)

    @classmethod
    def _reopen_wait(cls, directory: str) -> float:
        """Under the registry lock: seconds until ``directory``'s writer may be opened (0 when
        one is in service: it is used as it is)."""
        writer = cls._registry.get(directory)
        reopen = cls._reopens.get(directory)
        if reopen is None or (writer is not None and writer.broken is None):
            return 0.0
        return reopen.wait()

    @classmethod
    def _claim(cls, directory: str) -> WalWriter | _Pending | Event:
        """Under the registry lock: the directory's writer in service (no reference taken);
        or a ``_Pending`` while its writer may not be opened (a reopen backoff, or another
        caller's open: wait for its ``opening``, then claim again); or else an ``Event``: the
        caller now owns the directory's open and must call ``_open`` with it, outside this
        lock. A failed writer still registered is retired first.

        One claim at a time per directory: no two writers are opened on one directory (the
        second would wait up to 5 s for the first's file lock and fail), and the registry
        lock is held for no disk work, so a disk that hangs in an open holds up the registry
        work of no other directory (every node and partition of the process shares it)."""
        opening = cls._opening.get(directory)
        if opening is not None:
            return _Pending(0.0, "being opened", opening)
        pause = cls._reopen_wait(directory)
        if pause > 0:
            return _Pending(pause, cls._reopens[directory].reason)
        writer = cls._registry.get(directory)
        if writer is not None and writer.broken is None:
            return writer
        if writer is not None:
            writer._retire()
        opening = cls._opening[directory] = Event()
        return opening

    @classmethod
    def _open(cls, directory: str, options: dict[str, Any], opening: Event, refs: int) -> WalWriter:
        """Open the directory claimed with ``opening`` (``_claim``), outside the registry lock,
        and register the writer with ``refs`` references taken; a failed open delays the
        next one (``_Reopen``) and raises. Either way the claim ends and its waiters go on."""
        writer: WalWriter | None = None
        try:
            writer = cls(directory, **options)
            return writer
        except Exception as exc:
            with cls._registry_lock:
                delay = cls._reopens.setdefault(directory, _Reopen()).failed(str(exc))
            logger.error(
                "WAL %s cannot be opened: %s; next attempt in %.1f s at the earliest",
                directory, exc, delay,
            )  # fmt: skip
            raise
        finally:
            with cls._registry_lock:
                del cls._opening[directory]
                if writer is not None:
                    writer.refs += refs
                    cls._registry[directory] = writer
            opening.set()

    def release(self) -> None:
        """Give back a reference taken by ``acquire``; the last one stops the writer. Only
        the registry's entry for this writer is removed: a stopped writer's late release must
        not take a newer writer of the same directory out of the registry."""
        with WalWriter._registry_lock:
            if self.refs <= 0:
                logger.error("WAL %s: released more often than acquired", self.directory)
                return
            self.refs -= 1
            if self.refs > 0:
                return
            if WalWriter._registry.get(self.directory) is self:
                del WalWriter._registry[self.directory]
                metrics.drop_histogram(FSYNC_METRIC, self.directory)
        self.stop()

    # -- failure: retire and replace ----------------------------------------------------------

    def _retire(self) -> None:
        """Under the registry lock: take a failed writer out of service for good. It leaves the
        registry (the next ``acquire`` opens the directory afresh, from disk, after the failed
        batch was cut off or by ``unsynced.settle``) and closes its files and lock, so that
        the new writer can open at once; its I/O thread, which ended at the failure, touches
        them no more. Logs still attached keep refusing writes and waits on it."""
        if self.retired:
            return
        self.retired = True
        if WalWriter._registry.get(self.directory) is self:
            del WalWriter._registry[self.directory]
            metrics.drop_histogram(FSYNC_METRIC, self.directory)
        self._close_fds()

    def _start_replacing(self) -> None:
        """After the I/O thread ended on a failure: replace this writer, on a thread of its
        own (``_replace``), unless the writer is being stopped."""
        with self._cond:
            if self.broken is None or self._stopping:
                return
        name = f"wal-reopen-{self.directory}"
        threading.Thread(target=self._replace, name=name, daemon=True).start()

    def _replace(self) -> None:
        """Replace a failed writer once, without waiting for its partitions to close it.

        The writer is retired at once. The partitions whose log may be ahead of the disk
        (records queued after its last durable batch: ``WalLog._durable_on``) are told to
        restart (``("wal_failed", reason)`` to the log actor holding the log): they reopen
        from disk through a new writer. The others, whose every record is durable, are moved
        to the new writer as they are (``WalLog._move_to``), so one failed batch restarts only
        the partitions that had records in it or after it. While opening the directory fails
        (the disk still fails) the attempts back off (``REOPEN_BACKOFF_MIN``); the moved-to-be
        partitions refuse writes meanwhile (``can_append``), and their status shows why."""
        set_os_name("wal:reopen")
        reason = self.broken or "failed"
        with WalWriter._registry_lock:
            self._retire()
            delay = WalWriter._reopens.setdefault(self.directory, _Reopen()).failed(reason)
            ahead = [log for log in self._logs.values() if not log._durable_on(self)]
        logger.error(
            "WAL %s failed (%s): retired; reopening from disk in %.1f s; restarting the "
            "partitions with records not durable: %s",
            self.directory, reason, delay, sorted(log._key for log in ahead) or "none",
        )  # fmt: skip
        _tell_restart(ahead, reason)
        left = self._move_durable_logs(reason)
        if left:
            logger.error(
                "WAL %s: the logs of %s do not match the reopened WAL; restarting them",
                self.directory, sorted(log._key for log in left),
            )  # fmt: skip
            _tell_restart(left, reason)
        with WalWriter._registry_lock:
            unused = self.refs == 0
        if unused:
            self.stop()

    def _durable_logs(self) -> list[WalLog]:
        """Under the registry lock: the logs of this writer whose records are all durable."""
        return [log for log in self._logs.values() if log._durable_on(self)]

    def _move_durable_logs(self, reason: str) -> list[WalLog]:
        """Move this retired writer's durable logs to the writer in service, opened from disk
        (outside the registry lock: ``_claim``) as soon as the directory may be opened again;
        the logs that could not be moved. Nothing (and no open) once none is left: closed
        meanwhile (a node stopping).

        The hand-over holds a reference on the writer while it works, and gives it back at
        the end: a writer it moved no log to (every log closed while the directory was
        opened, or none matched) is stopped and unregistered like any other writer whose last
        reference goes, instead of staying registered with none, its files and lock held
        until the process exits."""
        while True:
            with WalWriter._registry_lock:
                if not self._durable_logs():
                    return []
                got = WalWriter._claim(self.directory)
                if isinstance(got, WalWriter):
                    got.refs += 1  # the hand-over's own, given back below
            if isinstance(got, _Pending) and got.opening is not None:
                got.opening.wait()  # a partition's open: then its writer, or its failure
                continue
            successor = self._successor(got)
            if successor is not None:
                try:
                    left = self._hand_over(successor, reason)
                finally:
                    successor.release()
                if left is not None:
                    return left
            with WalWriter._registry_lock:
                pause = WalWriter._reopen_wait(self.directory)
            time.sleep(max(pause, REOPEN_BACKOFF_MIN / 10))

    def _successor(self, got: WalWriter | _Pending | Event) -> WalWriter | None:
        """The writer in service from a claim (``_claim``), with the hand-over's reference:
        the registered one (taken by the caller), or one opened now when the claim is this
        caller's; None while the directory may not be opened, or when the open failed
        (logged, and the next attempt delayed, by ``_open``)."""
        if isinstance(got, WalWriter):
            return got
        if isinstance(got, _Pending):
            return None
        try:
            return WalWriter._open(self.directory, self._options, got, refs=1)
        except Exception:
            return None

    def _hand_over(self, successor: WalWriter, reason: str) -> list[WalLog] | None:
        """Move the logs of this retired writer whose records are all durable to
        ``successor``, the writer in service, opened from disk; the ones that could not be
        moved, or None when ``successor`` failed meanwhile (a later attempt follows). The
        logs are chosen here, under the registry lock, and each is checked again under its
        own lock (``_move_to``): the directory was opened without the registry lock, and
        meanwhile logs may have closed."""
        with WalWriter._registry_lock:
            if successor.retired or successor.broken is not None:
                return None
            moved: list[WalLog] = []
            left: list[WalLog] = []
            for log in self._durable_logs():
                (moved if log._move_to(self, successor) else left).append(log)
        logger.warning(
            "WAL %s reopened after: %s; moved %s to the new writer",
            self.directory, reason, sorted(log._key for log in moved) or "no partition",
        )  # fmt: skip
        return left

    # -- recovery -------------------------------------------------------------------------------

    def _files(self) -> list[tuple[int, str]]:
        found = []
        for name in os.listdir(self.directory):
            stem = name[: -len(SUFFIX)]
            if name.endswith(SUFFIX) and stem.isdigit():
                found.append((int(stem), os.path.join(self.directory, name)))
        return sorted(found)

    def _recover(self) -> int:
        files = self._files()
        replay = _Replay()
        for number, (_seq, path) in enumerate(files):
            data = _read_durably(path)
            last = number == len(files) - 1
            header_ok = len(data) >= FILE_HEADER.size and data[:8] in (MAGIC, MAGIC_V1)
            zero_filled = header_ok and data[:8] == MAGIC
            if not data or (last and not header_ok and _never_written(data)):
                # Created but its header never written (a kill -9 or a power loss inside
                # _open_file, which makes the header durable before any zeros or records):
                # it holds nothing. Removed, not cut to 0 bytes and kept: were it kept and this
                # start not get as far as deleting the old files (a kill -9, a full disk), it
                # would sit in the middle at the next start and read as a bad header.
                logger.warning(
                    "removing WAL file %s: no complete header (%d bytes)", path, len(data)
                )
                os.unlink(path)
                os.fsync(self._dir_fd)
                continue
            if header_ok:
                ops, bad_at, reason = _scan(data, FILE_HEADER.size)
            else:
                ops, bad_at, reason = [], 0, "bad file header"
            end = len(data)
            if bad_at >= 0 and zero_filled and _zeros_from(data, bad_at):
                end, bad_at = bad_at, -1  # the zero-filled part never written
            if bad_at >= 0:
                if not last or not header_ok or _damaged(data, bad_at, zero_filled):
                    self.corruption = LogCorruptionError(path, bad_at, reason)
                    logger.error("WAL %s", self.corruption)
                    return files[-1][0]
                logger.warning(
                    "cutting the torn tail of WAL file %s at byte %d (%s; %d bytes dropped)",
                    path, bad_at, reason, len(data) - bad_at,
                )  # fmt: skip
                _truncate_durably(path, bad_at)
                end = bad_at
            self._ends[path] = end
            pins = self._replay_file(replay, path, ops)
            if pins is None:
                return files[-1][0]
            if replay.partial and last:
                replay.drop_unfinished(path)
            elif replay.partial:
                # Every part of a checkpoint is queued at once, so written in one batch of
                # one file: only the newest file's crash can cut one short.
                self.corruption = LogCorruptionError(
                    path, end, f"split checkpoint of {sorted(replay.partial)} left unfinished"
                )
                logger.error("WAL %s", self.corruption)
                return files[-1][0]
            self._old.append((path, pins))
        self._recovered = replay.logs
        return files[-1][0] if files else 0

    def _replay_file(
        self, replay: _Replay, path: str, ops: list[tuple[Any, ...]]
    ) -> dict[str, int] | None:
        """Replay one file's records; the highest index each partition appended into it, or
        None when a record is malformed (then ``corruption`` is set)."""
        pins: dict[str, int] = {}
        for op in ops:
            try:
                replay.apply(op)
                if op[0] in ("a", "c"):
                    pins[op[1]] = max(pins.get(op[1], -1), int(op[2]) + len(op[3]) - 1)
                elif op[0] == "r":
                    pins[op[1]] = max(pins.get(op[1], -1), int(op[2]))
            except Exception as exc:
                # A CRC-valid record of the wrong shape (too few items, wrong types): the
                # file is damaged, which quarantines; any exception here would instead
                # crash every start of the log actors.
                self.corruption = LogCorruptionError(
                    path, 0, f"bad WAL record {op[:2]!r}: {type(exc).__name__}: {exc}"
                )
                logger.error("WAL %s", self.corruption)
                return None
        return pins

    def _continue_in_newest_file(self, exc: OSError) -> None:
        """Start on a full disk: the new file cannot even get its header, so the writer
        appends to the newest recovered file (its torn tail already cut) and keeps every old
        file, which hold every log. Writes then stall until there is room (``_stall``), reads
        are served: the partitions open instead of failing every start of their log actors."""
        path, pins = self._old.pop()
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        size = os.fstat(fd).st_size
        end = self._ends.get(path, size)
        os.lseek(fd, end, os.SEEK_SET)
        self._fd, self._path, self._size = fd, path, end
        # A file of the older format is continued as it was written: appended, no markers.
        self._zero_filled = os.pread(fd, len(MAGIC), 0) == MAGIC
        self._zeroed_to = size if self._zero_filled else end
        self._seq = int(os.path.basename(path)[: -len(SUFFIX)])
        self._pins, self._carried = dict(pins), 0
        logger.warning(
            "WAL %s: no room for a new file (%s); continuing in %s, writes wait for room",
            self.directory, exc, path,
        )  # fmt: skip

    def _compact_recovered(self) -> None:
        """Start from one file: write every recovered log into the new file as a checkpoint,
        make it durable, then delete the older files (so restarts do not pile up files)."""
        records = [
            _frame(payload)
            for key, (first, entries) in self._recovered.items()
            for payload in _checkpoint_payloads(key, first, entries)
        ]
        data = b"".join(records)
        # No zeros ahead here: a start on a nearly full disk compacts if the records fit.
        self._write_all(data)
        os.fdatasync(self._fd)
        self._size += len(data)
        self._zeroed_to = max(self._zeroed_to, self._size)
        self._carried = len(data)
        for key, (first, entries) in self._recovered.items():
            self._pins[key] = first + len(entries) - 1

    def _drop_old_files(self) -> None:
        """Delete the files made redundant by ``_compact_recovered`` (after its fsync)."""
        old, self._old = self._old, []
        for path, _ in old:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.fsync(self._dir_fd)

    def attach(self, key: str, log: WalLog, fresh: bool = False) -> None:
        """Hand ``key``'s recovered log (if any) to ``log`` and register it, atomically with
        respect to rotation (which must see the log either here or in ``log``); raises the
        node's corruption if there is one, and ``LogWriteError`` (``_OutOfService``: acquire
        again) if this writer failed."""
        if self.corruption is not None:
            raise self.corruption
        with WalWriter._registry_lock:
            if self.retired or self.broken is not None:
                # Failed since it was acquired. Registered now, the log would be on a writer
                # that refuses it for good, and in none of the lists by which ``_replace``
                # restarts or moves its partitions (they were made under this lock).
                raise _OutOfService(
                    errno.EIO, f"WAL {self.directory} failed ({self.broken or 'retired'})"
                )
            if key in self._logs:
                raise LogError(f"partition {key} already has an open WalLog")
            recovered = self._recovered.pop(key, None)
            # A log closed in this process may have left records queued and not yet durable
            # (closed while the disk was full: ``LogServer.terminate``); they are part of what
            # is handed over below, so the new log's first sync covers them too.
            log._ticket = log._content_ticket = self._queued
            if recovered is not None and fresh:
                logger.warning(
                    "WAL %s: dropping the log of %s (its directory is new)", self.directory, key
                )
                recovered = None
            if recovered is None and not fresh:
                # The partition's marker says its log was written here, and every log written
                # here stays in the WAL's files while it is open or carried (a checkpoint
                # moves it before a file goes). So the WAL was removed or replaced: opening a
                # brand-new log would let the replica vote without entries it acknowledged.
                raise LogMissingError(
                    self.directory,
                    f"partition {key} was written to this WAL but its files hold nothing of "
                    "it (the WAL directory was removed or replaced); move the partition's "
                    "directory away to have it rebuilt from a healthy replica",
                )
            if recovered is not None:
                log.load(*recovered)
            else:
                # A brand-new log: its base entry Entry(0) at 0 must replay too.
                log.load(0, [Entry(0)])
                log._submit(("r", key, 0, 0), 0)
            self._logs[key] = log

    def take_over_dead(self, key: str) -> None:
        """Close ``key``'s log on behalf of a holder that died without closing it.

        A log actor blocked past its shutdown time is killed and abandoned (Python cannot
        stop its thread) with its ``WalLog`` still registered: every later open of the
        partition then failed ("already has an open WalLog") and the restarts escalated to
        the node's supervisors. The log is closed as its holder would have (its held appends
        queued, its live log kept for the next open, its reference on the writer given
        back); a closed log queues nothing more, so the abandoned thread, should it ever run
        on, cannot put a record among the new holder's. A live holder keeps its log."""
        with WalWriter._registry_lock:
            existing = self._logs.get(key)
        if existing is None:
            return
        owner = existing.owner
        if owner is None or owner.is_alive():
            return
        logger.warning(
            "WAL %s: partition %s was left open by %s, which is gone; taking it over",
            self.directory, key, owner,
        )  # fmt: skip
        existing.close()
        self.taken_over += 1

    def unregister(self, key: str, state: tuple[int, list[Entry]]) -> None:
        """A closed partition's log stays in the writer so that rotation carries it forward."""
        with WalWriter._registry_lock:
            if self._logs.get(key) is not None:
                del self._logs[key]
                self._recovered[key] = state

    # -- writing --------------------------------------------------------------------------------

    def _open_file(self, seq: int) -> None:
        path = os.path.join(self.directory, f"{seq:020d}{SUFFIX}")
        # Not O_APPEND: records overwrite the zeros ahead of them (at the fd's offset).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            header = FILE_HEADER.pack(MAGIC, seq)
            if os.write(fd, header) != len(header):  # not O_APPEND: the offset must be right
                raise OSError(errno.ENOSPC, f"short write of the header of {path}")
            os.fdatasync(fd)
            os.fsync(self._dir_fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)  # so that a retry can create it again
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._path, self._size, self._seq = fd, path, FILE_HEADER.size, seq
        self._zero_filled, self._zeroed_to = True, FILE_HEADER.size
        self._carried = 0

    def submit(self, payload: bytes, key: str, pin: int) -> int:
        """Queue the record of ``payload`` of partition ``key`` (``pin``: highest index it
        appends, or -1); returns its ticket for ``wait``. Callers hold the partition's lock,
        so each partition's records are queued in the order of its operations. The I/O
        thread frames it (length and CRC): ``zlib.crc32`` lets go of the GIL on more than
        5 KiB, and a scheduler thread that let go of it waited to get it back (measured:
        a fifth of the scheduler threads' wall-clock samples at 64 partitions once a flush's
        appends went into one record)."""
        with self._cond:
            if self.broken is not None:
                raise LogWriteError(
                    errno.EIO, f"WAL {self.directory} refuses writes: {self.broken}"
                )
            queue = self._queue
            queue.append(payload)
            self._queue_pins.append((key, pin))
            self._queued += 1
            if len(queue) == 1:
                # The I/O thread sleeps only on an empty queue: a record joining a non-empty
                # one is taken with it, so only the first needs the wake-up (a futex call).
                self._cond.notify_all()
            return self._queued

    def wait(self, ticket: int, stalled_timeout: float | None = None) -> bool:
        """Block until the record with ``ticket`` (and every earlier one) is durable; True.

        With ``stalled_timeout``, give up (False) once the writer has been stalled for that
        long within this call; without it, wait however long the stall lasts.

        A scheduled process (a partition server on a scheduler thread: ``WalLog`` does no
        blocking I/O of its own) is suspended rather than blocking its thread: a blocked
        scheduler thread stalled every other partition on it for a whole fsync, so a node's
        partitions synced one after another instead of sharing group commits."""
        if scheduled_caller() is not None:
            return self._wait_scheduled(ticket, stalled_timeout)
        with self._cond:
            deadline: float | None = None
            while True:
                done, pause, deadline = self._check_wait(ticket, stalled_timeout, deadline)
                if done is not None:
                    return done
                self._cond.wait(pause)

    def _wait_scheduled(self, ticket: int, stalled_timeout: float | None) -> bool:
        """``wait`` for a scheduled process: same contract.

        Unbounded turns (the writer is not stalled: the usual case, once per partition flush)
        park the process: it registers itself in ``_parked`` and suspends, and the I/O thread
        resumes every process a batch made durable with one run-queue put per scheduler
        (``otp.sched.resume_all``); no ``Event``, waker or lock per wait. Bounded turns (a
        stall) wait on an ``otp.Event`` with the timeout, as the timeout needs a waker's
        exactly-once claim."""
        proc = scheduled_caller()
        assert proc is not None
        deadline: float | None = None
        while True:
            with self._cond:
                done, pause, deadline = self._check_wait(ticket, stalled_timeout, deadline)
                if done is not None:
                    return done
                if pause is None:
                    # Resumed exactly once: by the ``_wake`` that takes this entry out of
                    # ``_parked`` (under ``_cond``). If that happens before the suspend below,
                    # the process is queued but runs only once it has suspended (its
                    # scheduler is busy running it until then).
                    self._parked.append((ticket, proc))
                    event = None
                else:
                    event = Event()
                    self._events.append((ticket, event))
            if event is None:
                park(proc)  # a killed server unwinds here, not at its next otp wait
            else:
                event.wait(pause)

    def _check_wait(
        self, ticket: int, stalled_timeout: float | None, deadline: float | None
    ) -> tuple[bool | None, float | None, float | None]:
        """Under ``_cond``, one turn of ``wait``'s loop: ``(True, ..)`` once ``ticket`` is
        durable, ``(False, ..)`` once stalled past ``stalled_timeout`` (counted from the first
        turn that saw the stall: the returned deadline), else ``(None, pause, deadline)``:
        wait at most ``pause`` seconds (None: until woken) and check again. Raises if the
        writer broke.

        No bound while the writer is not stalled: every change a waiter must see wakes them
        all (a durable batch its ticket's waiters; a stall, a failure and a stop everyone), and
        a bound cost every scheduled wait a timer set and cancelled, once per partition and
        per round."""
        if self._synced >= ticket:
            return True, 0.0, deadline
        if self.broken is not None:
            raise LogWriteError(errno.EIO, f"WAL {self.directory}: {self.broken}")
        pause: float | None = None
        if self.stalled is not None:
            pause = 1.0  # a re-check bound while stalled: the stall may end or time out
        if stalled_timeout is not None and self.stalled is not None:
            now = time.monotonic()
            if deadline is None:
                deadline = now + stalled_timeout
            if now >= deadline:
                return False, 0.0, deadline
            pause = deadline - now
        return None, pause, deadline

    def _wake(self, synced: int | None = None) -> None:
        """Under ``_cond``: wake the scheduled waiters whose ticket is durable (``synced``), or
        all of them (a stall, a failure or a stop: each re-checks the writer's state)."""
        parked = self._parked
        if parked:
            if synced is None:
                resumed, self._parked = parked, []
            else:
                resumed, self._parked = [], []
                for item in parked:
                    (resumed if item[0] <= synced else self._parked).append(item)
            if resumed:
                resume_all([proc for _, proc in resumed])
        events = self._events
        if not events:
            return
        if synced is None:
            woken, self._events = events, []
        else:
            woken = [e for e in events if e[0] <= synced]
            self._events = [e for e in events if e[0] > synced]
        for _, event in woken:
            event.set()

    def _run(self) -> None:
        """The I/O thread. Whatever kills it breaks the WAL (``broken``) and wakes every
        waiter: a thread that died silently left every partition waiting in ``sync``
        forever while ``can_append`` still said yes."""
        set_os_name("wal:io")  # for per-thread CPU and switches (benchmarks.thread_cpu)
        try:
            self._loop()
        except BaseException as exc:
            with self._cond:
                if self.broken is None:
                    self.broken = f"WAL I/O thread failed: {type(exc).__name__}: {exc}"
                self._cond.notify_all()
                self._wake()
            logger.exception("WAL %s: %s", self.directory, self.broken)
        self._start_replacing()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue and self._stopping:
                    return
                batch, self._queue = self._queue, []
                pins, self._queue_pins = self._queue_pins, []
                ticket = self._queued
            try:
                self._write(batch, pins)
            except _WriteFailed as failed:
                # Nothing of the batch is in the file (it was cut back): keep the records,
                # refuse new appends (can_append), and retry after a pause — a full disk
                # resumes by itself once there is room, and nothing acknowledged is lost.
                self._stall(batch, pins, failed.cause)
                continue
            except OSError as exc:
                with self._cond:
                    self.broken = f"write or fsync failed: {exc}"
                    self._cond.notify_all()
                    self._wake()
                logger.error("WAL %s: %s", self.directory, self.broken)
                return
            if self.stalled is not None:
                logger.warning("WAL %s: writes resumed after: %s", self.directory, self.stalled)
                self._backoff = STALL_BACKOFF_MIN
            with self._cond:
                self.stalled = None
                self._synced = ticket
                self._cond.notify_all()
                self._wake(ticket)
            self._after_sync(ticket)

    def _stall(self, batch: list[bytes], pins: list[tuple[str, int]], cause: OSError) -> None:
        """Put ``batch`` back at the head of the queue and wait before the next attempt."""
        with self._cond:
            first = self.stalled is None
            self.stalled = f"write failed: {cause}"
            self._queue[:0] = batch
            self._queue_pins[:0] = pins
            self._cond.notify_all()
            self._wake()
        if first:
            logger.error(
                "WAL %s: %s; refusing new writes, retrying every %.1f s at most",
                self.directory, self.stalled, STALL_BACKOFF_MAX,
            )  # fmt: skip
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, self._backoff)
            if self._stopping:
                # Stopping while stalled: what is queued was never acknowledged.
                self._queue, self._queue_pins = [], []
                self.broken = self.stalled
                self._cond.notify_all()
                self._wake()
        self._backoff = min(STALL_BACKOFF_MAX, self._backoff * 2)

    def _write(self, batch: list[bytes], pins: list[tuple[str, int]]) -> None:
        """Frame the payloads of ``batch`` as records, write them and fsync (one batch)."""
        # Carried-forward checkpoints do not count, so that live logs larger than a file do
        # not make every batch rotate.
        if self._size - self._carried >= self.max_file_bytes:
            previous = (self._path, self._pins)
            try:
                self._open_file(self._seq + 1)
            except OSError as exc:
                if exc.errno not in _NO_ROOM:
                    raise  # not a full disk: the writer breaks (nothing was written)
                raise _WriteFailed(exc) from exc
            self._old.append(previous)
            self._rotate()
        total = 0
        try:
            fault = WalWriter.fault
            if fault is not None:
                injected = fault(self.directory)
                if injected is not None:
                    raise injected
            # Joined and written a few MiB at a time, not as one string: a rotation queues the
            # checkpoint of every partition's live log (up to the node's retained-bytes budget)
            # and one join would hold a second copy of all of it at once (an RSS peak).
            chunk: list[bytes] = []
            size = 0
            if self._zero_filled:
                # Every batch begins with a marker: recovery's way to tell a batch torn by a
                # power loss from damage to one made durable before it (``_damaged``).
                marker = _record(("b", "", self.batches))
                chunk.append(marker)
                size = len(marker)
            header, crc32, overhead = RECORD_HEADER.pack, zlib.crc32, RECORD_HEADER.size
            for payload in batch:
                chunk.append(header(len(payload), crc32(payload)))
                chunk.append(payload)
                size += overhead + len(payload)
                if size >= DEFAULT_MAX_BATCH_BYTES:
                    self._write_out(b"".join(chunk), self._size + total)
                    total += size
                    chunk, size = [], 0
            if chunk:
                self._write_out(b"".join(chunk), self._size + total)
                total += size
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                # Not a full disk (EIO: the device failed, the kernel may have dropped pages
                # of earlier writes too): not retried, the writer breaks, as on a failed fsync.
                self._drop_unsynced()
                raise
            try:
                self._cut_back(self._size)
            except OSError:
                self._drop_unsynced()
                raise exc from None  # cannot cut back: the writer is broken
            raise _WriteFailed(exc) from exc
        started = time.perf_counter()
        try:
            os.fdatasync(self._fd)
        except OSError:
            self._drop_unsynced()
            raise  # the writer breaks: a retry could report lost pages as durable
        self.fsync_latency.observe(time.perf_counter() - started)
        self._size += total
        self.fsyncs += 1
        self.batches += 1
        table = self._pins
        for key, pin in pins:
            if pin >= 0 and pin > table.get(key, -1):
                table[key] = pin

    def _write_out(self, data: bytes, at: int) -> None:
        """Write ``data`` at the fd's offset, ``at``; the zeros ahead of it are extended first
        when ``data`` would pass them."""
        end = at + len(data)
        if self._zero_filled and self.preallocate_bytes:
            self._zero_fill(end)
        self._write_all(data)
        if end > self._zeroed_to:
            # Written past the zeros (no room for them): the next fill starts after these
            # records, not over them.
            self._zeroed_to = end

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _zero_fill(self, end: int) -> None:
        """Make the active file's bytes exist up to ``end`` and ``preallocate_bytes`` beyond
        (at most ``max_file_bytes``; page-aligned), writing zeros; the batch's ``fdatasync``
        makes them durable, once.

        Best effort: on a disk with room for the records but not for the zeros ahead of them
        (``ENOSPC``, ``EDQUOT``, ``EFBIG``) the zeros written so far stay and the records are
        written past them, growing the file as without preallocation; only a failure of the
        records' own write stalls the writer. An all-or-nothing fill stalled every write
        while less than ``preallocate_bytes`` was free."""
        if end <= self._zeroed_to:
            return
        ahead = min(self.preallocate_bytes, self.max_file_bytes)  # small files, small zeros
        target = -(-(end + ahead) // PAGE) * PAGE
        at = self._zeroed_to
        try:
            while at < target:
                at += os.pwrite(self._fd, memoryview(_ZEROS)[: target - at], at)
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
        finally:
            self._zeroed_to = at

    def _drop_unsynced(self) -> None:
        """After a failed write or fsync (the writer breaks): cut the active file back to its
        last durable batch, so that a reopen in this process (whose own fsync would succeed)
        does not replay the batch as durable from the page cache. If the cut fails, the next
        open of the WAL makes it before replaying (``waraft.log.unsynced``), or refuses."""
        unsynced.remember(self.directory, self._path, self._size)
        try:
            self._cut_back(self._size)
            os.fdatasync(self._fd)
        except OSError as exc:
            logger.error(
                "WAL %s: cutting the failed batch off %s failed (%s); the next open cuts it",
                self.directory, self._path, exc,
            )  # fmt: skip
        else:
            unsynced.forget(self.directory)

    def _cut_back(self, size: int) -> None:
        """Cut the active file back to ``size`` bytes of records (a failed write leaves
        nothing of itself), zeros ahead included: they are written again when needed."""
        os.ftruncate(self._fd, size)
        os.lseek(self._fd, size, os.SEEK_SET)
        self._size, self._zeroed_to = size, size

    def _rotate(self) -> None:
        """Called once the next file is open (``_old`` holds the previous ones, oldest
        first): the newest ``keep_files`` closed files stay as they are; older ones are
        expired: the partitions that still need one are checkpointed into the new file, and
        the expired files, with the kept files no partition needs any more up to the first
        one still needed, are deleted once every record queued so far is durable.

        Why keep files rather than checkpoint at once: a busy partition's live log is about
        the newest ``raft_node_max_retained_bytes`` of the node's appends (memory-counted,
        more than their WAL bytes), so by the time a file is ``keep_files`` rotations old
        its entries have been trimmed from almost every live log, and only the partitions
        that stopped trimming (idle ones) pay a checkpoint. Checkpointing at the first
        rotation rewrote nearly every live log each time: about one file's worth of extra
        writes per file (``benchmarks/SCALE.md``)."""
        self._pins = {}
        cut = max(0, len(self._old) - self.keep_files)
        expired, kept = self._old[:cut], self._old[cut:]
        needed: dict[str, int] = {}
        for _, pins in expired:
            for key, pin in pins.items():
                needed[key] = max(needed.get(key, -1), pin)
        last = self._queued
        still: list[tuple[str, dict[str, int]]] = []
        unneeded: list[str] = []
        with WalWriter._registry_lock:
            for key, pin in needed.items():
                ticket, size = self._checkpoint(key, pin)
                last = max(last, ticket)
                self._carried += size
                self.checkpointed_bytes += size
            # Only a prefix of the files goes: the files on disk stay a suffix of the
            # sequence, as replay assumes (a newer file's truncate or trim record pins
            # nothing, yet an older file kept without it would bring the dropped entries
            # back).
            for path, pins in kept:
                if still or any(self._still_needs(key, pin) for key, pin in pins.items()):
                    still.append((path, pins))
                else:
                    unneeded.append(path)
            # Trim records a partition queued before its check above are covered too.
            last = max(last, self._queued)
        doomed = [path for path, _ in expired] + unneeded
        if doomed:
            earlier = self._pending_delete[1] if self._pending_delete else []
            self._pending_delete = (last, [*earlier, *doomed])
        self._old = still

    def _checkpoint(self, key: str, pin: int) -> tuple[int, int]:
        """Under the registry lock: write partition ``key``'s log (open or carried) into the
        active file if it still holds entries at or below ``pin``; the record's ticket and
        size, ``(0, 0)`` when nothing was needed."""
        log = self._logs.get(key)
        if log is not None:
            return log.checkpoint_if_needed(pin)
        recovered = self._recovered.get(key)
        if recovered is None or recovered[0] > pin:
            return 0, 0
        first, entries = recovered
        payloads = _checkpoint_payloads(key, first, entries)
        ticket = 0
        for payload in payloads:
            ticket = self.submit(payload, key, -1)
        self._pins[key] = first + len(entries) - 1
        return ticket, sum([RECORD_HEADER.size + len(p) for p in payloads])

    def _still_needs(self, key: str, pin: int) -> bool:
        """Under the registry lock: whether partition ``key``'s log (open or carried) still
        holds entries at or below ``pin``, i.e. needs the file that pinned it."""
        log = self._logs.get(key)
        if log is not None:
            return log.needs_through(pin)
        recovered = self._recovered.get(key)
        return recovered is not None and recovered[0] <= pin

    def note_checkpoint(self, key: str, last_index: int) -> None:
        self._pins[key] = max(self._pins.get(key, -1), last_index)

    def _after_sync(self, ticket: int) -> None:
        pending = self._pending_delete
        if pending is None or ticket < pending[0]:
            return
        self._pending_delete = None
        for path in pending[1]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # The file only costs disk: the next start replays it and compacts it away.
                # Not a reason to stop every partition's writes (the I/O thread would end).
                logger.error("WAL %s: could not delete %s: %s", self.directory, path, exc)
        with contextlib.suppress(OSError):
            os.fsync(self._dir_fd)

    def stop(self) -> None:
        """Write what is queued, end the I/O thread and close the files. Afterwards the
        writer refuses records, and a wait for one that was never written fails with
        ``LogWriteError`` instead of waiting for a thread that is gone."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._wake()
        self._thread.join(30.0)
        with self._cond:
            if self.broken is None and not self._thread.is_alive():
                self.broken = "stopped"
            self._cond.notify_all()
            self._wake()
        self._close_fds()

    def _close_fds(self) -> None:
        # Once: a second close of a number the new writer of the directory reuses would
        # close its file.
        with self._fds_lock:
            for fd in (self._fd, self._dir_fd, self._lock_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fd = self._dir_fd = self._lock_fd = -1

    def status(self) -> dict[str, Any]:
        """The writer's figures; a retired writer's also say why the WAL is not open again
        yet and when it is tried next (``wal_reopen_error``, ``wal_reopen_in`` seconds)."""
        status = self._figures()
        reopen = WalWriter._reopens.get(self.directory) if self.retired else None
        if reopen is not None:
            status["wal_reopen_error"] = reopen.reason
            status["wal_reopen_in"] = round(reopen.wait(), 3)
        return status

    def _figures(self) -> dict[str, Any]:
        return {
            "wal_directory": self.directory,
            "wal_file": self._path,
            "wal_bytes": self._size,
            "wal_fsyncs": self.fsyncs,
            "wal_batches": self.batches,
            "wal_files": len(self._old) + 1,
            "wal_checkpointed_bytes": self.checkpointed_bytes,
            "wal_partitions": len(self._logs),
            "wal_taken_over": self.taken_over,
            "wal_broken": self.broken,
            "wal_retired": self.retired,
            "wal_stalled": self.stalled,
        }


def _tell_restart(logs: list[WalLog], reason: str) -> None:
    """Ask the log actors holding ``logs`` (left on a failed writer) to stop, so that their
    partitions restart and reopen their logs from disk (``waraft.log.LogServer``)."""
    for log in logs:
        owner = log.owner
        if owner is not None:
            send(owner, ("wal_failed", reason))


def _acquire(directory: str, marker: str, options: dict[str, Any]) -> tuple[WalWriter, bool]:
    """``WalWriter.acquire(directory, **options)`` and whether the partition is new (no
    ``marker``), the file work off the schedulers: the first acquire of a node's WAL takes its
    lock (retried for up to 5 s while a writer of this process stops), reads and fsyncs every
    file and writes the compacted one; a scheduled log actor doing that itself stalled every
    process on its scheduler (``otp.blocking``; a plain call in a thread).

    A caller killed while it waits (``otp.blocking`` resumes it only once the call is done,
    and then raises its exit) gives back the reference taken for it: kept, the writer would
    never stop, holding the WAL's files and lock for the life of the OS process."""
    writer = WalWriter.acquire(directory, **options)
    try:
        fresh = not blocking(os.path.exists, marker)
    except BaseException:
        blocking(writer.release)
        raise
    return writer, fresh


class WalLog(MemoryLog):
    """A partition's log kept in memory and made durable through the node's ``WalWriter``."""

    def __init__(self, writer: WalWriter, key: str, fresh: bool = False) -> None:
        super().__init__()
        self._lock = threading.RLock()  # type: ignore[assignment]
        self._writer = writer
        self._key = key
        self._ticket = 0
        # The ticket of the newest record that changed the log's entries (append, truncate,
        # reset; not a trim or a checkpoint): once the writer made it durable, the disk holds
        # this log as it is in memory (see ``_durable_on``).
        self._content_ticket = 0
        self._closed = False
        self.owner = self_pid()  # the process holding the log (``WalWriter.take_over_dead``)
        self._prefix = _append_prefix(key)
        # Appends not yet queued: entries ``_held_first ..`` as encoded (see ``append``).
        self._held: list[bytes] = []
        self._held_first = 0
        self._held_bytes = 0
        writer.attach(key, self, fresh)

    def load(self, first: int, entries: list[Entry]) -> None:
        """Install the recovered log (called by the writer from ``attach``)."""
        self._run = _Run(first, entries, [len(packb(e)) for e in entries])
        self._configs = [first + i for i, e in enumerate(entries) if is_config_entry(e)]
        with self._lock:
            self._report()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> Self:
        """Open the log of partition directory ``path`` in the WAL of its parent directory
        (``<parent>/wal``, or the option ``wal_dir``); ``max_file_bytes`` (default: the
        setting ``raft_max_log_bytes_per_file``) sets rotation, ``preallocate_bytes`` (default:
        ``raft_wal_preallocate_bytes``) the zeros written ahead.

        A new partition's log is durable (its reset record) before its marker is made: while
        the WAL is stalled (a full disk) that open fails with ``LogWriteError`` after
        ``FRESH_OPEN_STALL_WAIT`` seconds (its log actor retries); existing logs open at once.
        A failed open leaves nothing registered and the writer's count as it was.

        Called from a scheduled process (the log actor), the file work (the WAL's lock and
        recovery, a new partition's directory and marker, the writer's stop when a failed open
        held its last reference) runs on the node's I/O threads (``otp.blocking``)."""
        if path is None:
            raise ValueError("WalLog needs a partition directory")
        path = os.path.abspath(os.fspath(path))
        if settings is not None:
            # Node-wide: the first partition to open the WAL sets its file size.
            options.setdefault("max_file_bytes", settings.raft_max_log_bytes_per_file)
            options.setdefault("preallocate_bytes", settings.raft_wal_preallocate_bytes)
        directory = options.pop("wal_dir", None) or os.path.join(os.path.dirname(path), WAL_DIR)
        log, fresh = cls._attached(directory, path, options)
        writer = log._writer
        try:
            if settings is not None:
                # The node-wide retained-bytes budget: shared with every partition whose
                # directory has the same parent (the WAL's node), whatever their provider.
                pool = RetentionPool.for_root(os.path.dirname(path))
                log.join_pool(pool, settings.raft_node_max_retained_bytes)
            if fresh:
                # The partition directory is new or was wiped (moved away to be rebuilt by a
                # snapshot): the WAL's log of it, if any, is reset; then the marker is made.
                blocking(os.makedirs, path, exist_ok=True)
                if not log.sync_within(FRESH_OPEN_STALL_WAIT):
                    raise LogWriteError(
                        errno.ENOSPC,
                        f"WAL {writer.directory} is stalled ({writer.stalled}): partition "
                        f"{log._key} not created, its log actor retries",
                    )
                make_marker(path, MARKER)
            return log
        except BaseException:
            # Registered by ``cls``: closed (unregistered, its reference given back) rather
            # than only released, which left it registered, and its takeover by the next
            # open released the writer a second time, stopping it under other partitions.
            blocking(log.close)
            raise

    @classmethod
    def _attached(cls, directory: str, path: str, options: dict[str, Any]) -> tuple[Self, bool]:
        """The log of partition directory ``path`` registered on the WAL's writer in service
        (a reference on it taken), and whether the partition is new.

        The WAL may fail between the acquire and the attach; its failed writer, retired and
        replaced meanwhile (``WalWriter._replace``), refuses the attach, and the open acquires
        again: the new writer, or a bounded wait for it (``WalWriter.acquire``). Up to
        ``OPEN_ATTEMPTS`` times, then a ``LogWriteError`` (EIO) that says so (its log actor is
        restarted)."""
        key = os.path.basename(path)
        attempts = 1
        while True:
            writer, fresh = _acquire(directory, os.path.join(path, MARKER), options)
            try:
                writer.take_over_dead(key)
                return cls(writer, key, fresh), fresh
            except _OutOfService as exc:
                blocking(writer.release)
                if attempts >= OPEN_ATTEMPTS:
                    # Not the private retry signal itself: it says neither the partition nor
                    # that the open gave up, and it is not the open's to raise.
                    raise LogWriteError(
                        errno.EIO,
                        f"WAL {directory}: partition {key} not opened: each of the "
                        f"{OPEN_ATTEMPTS} times it was acquired, the writer failed before the "
                        f"log could be attached (last: {exc.strerror})",
                    ) from exc
                attempts += 1
                logger.warning("WAL %s: %s acquires it again: %s", directory, key, exc)
            except BaseException:
                blocking(writer.release)  # the last reference stops the writer: joins, closes
                raise

    def _submit(self, op: tuple[Any, ...], pin: int, content: bool = True) -> None:
        self._release_held()  # a partition's records are queued in the order of its operations
        self._queue_record(pin, _payload, op)
        if content:
            self._content_ticket = self._ticket

    def _release_held(self) -> None:
        """Under the lock: queue the held appends as one append record (nothing if none). If
        that fails they stay held, so a later sync fails too and never acknowledges them."""
        held = self._held
        if held:
            self._submit_append(self._held_first, held)
            self._held = []
            self._held_bytes = 0

    def _submit_append(self, first_index: int, packed: list[bytes]) -> None:
        """``_submit`` of the append record of the entries encoded as ``packed``."""
        pin = first_index + len(packed) - 1
        self._queue_record(pin, _append_payload, self._prefix, first_index, packed)
        self._content_ticket = self._ticket

    def _queue_record(self, pin: int, build: Callable[..., bytes], *args: Any) -> None:
        """Queue the record of payload ``build(*args)``; a failure to build or queue it that is not
        already a ``LogError`` becomes a ``LogWriteError``."""
        if self._closed:
            # Closed (possibly taken over from a dead holder): nothing more of this log may
            # reach the WAL, where it would land among the next holder's records.
            raise LogError(f"log {self._key} is closed")
        try:
            self._ticket = self._writer.submit(build(*args), self._key, pin)
        except LogError:
            raise
        except Exception as exc:
            raise LogWriteError(errno.EIO, f"WAL record for {self._key}: {exc}") from exc

    def append(self, first_index: int, entries: Sequence[Entry]) -> None:
        if self._closed:
            raise LogError(f"log {self._key} is closed")
        if not entries:
            return
        batch = [e if type(e) is Entry else Entry(*e) for e in entries]
        # Each entry encoded once: its length sizes the in-memory log, its bytes go into the
        # WAL record (encoding them twice was most of the append's CPU).
        packed = [packb(e) for e in batch]
        sizes = [len(p) for p in packed]
        size = sum(sizes)
        with self._lock:
            if self._writer.broken is not None:
                raise LogWriteError(errno.EIO, f"WAL refuses writes: {self._writer.broken}")
            # A partition server appends about six times per flush at 64 partitions (the
            # leader per client batch, a follower per append_entries) and syncs once: the
            # appends are held and queued as one record at the sync, which saves the framing
            # and queueing of the others. Only contiguous appends are merged; anything else
            # (an overwrite, a truncate, reset, trim or checkpoint) queues the held ones first.
            held = self._held
            if held and (
                first_index != self._held_first + len(held)
                or self._held_bytes + size > HELD_APPEND_MAX_BYTES
            ):
                self._release_held()  # raises before this append changed anything
                held = self._held
            self._extend(first_index, batch, sizes)
            if size > HELD_APPEND_MAX_BYTES:
                try:
                    self._submit_append(first_index, packed)
                except LogError:
                    if first_index > self._run.first:  # undo: the log is as before the call
                        super().truncate(first_index)
                    raise
                return
            if not held:
                self._held_first = first_index
            held.extend(packed)
            self._held_bytes += size

    # ``truncate`` and ``reset`` queue their record and return: like an append, the change is
    # durable once a later ``sync`` returns (the server syncs before it acknowledges anything
    # that follows it, and a partition's records are written in order). Waiting here instead
    # blocked the partition's server, unbounded, for as long as a full disk stalled the WAL.

    def truncate(self, index: int) -> None:
        with self._lock:
            before = self.last_index()
            super().truncate(index)
            if index <= before:
                self._submit(("t", self._key, index), -1)

    def reset(self, position: LogPos) -> None:
        with self._lock:
            super().reset(position)
            self._submit(("r", self._key, position.index, position.term), position.index)

    def trim(self, index: int) -> None:
        with self._lock:
            if self._closed:
                return
            first = self.first_index()
            super().trim(index)
            if self.first_index() > first and self._writer.broken is None:
                with contextlib.suppress(LogError):
                    self._submit(("m", self._key, self.first_index()), -1, content=False)

    def checkpoint_if_needed(self, pin: int) -> tuple[int, int]:
        """Called by the writer while rotating: if this log still needs entries written into
        an old file (its first index is at or below ``pin``), queue the whole live log as one
        record. Returns the ticket to wait for before deleting old files (0: none needed) and
        the record's size."""
        with self._lock:
            run = self._run
            if run.first > pin:
                return 0, 0
            self._release_held()  # before the checkpoint, as the appends came first
            payloads = _checkpoint_payloads(self._key, run.first, run.entries)
            for payload in payloads:
                self._ticket = self._writer.submit(payload, self._key, -1)
            self._writer.note_checkpoint(self._key, self.last_index())
            return self._ticket, sum([RECORD_HEADER.size + len(p) for p in payloads])

    def needs_through(self, pin: int) -> bool:
        """Whether this log still holds entries at or below index ``pin`` (rotation: a WAL
        file where this partition appended up to ``pin`` is still needed)."""
        with self._lock:
            return self._run.first <= pin

    def can_append(self, count: int, priority: Priority) -> bool:
        """False while the node's WAL cannot write (a full disk: it retries by itself) or has
        failed for good; the leader then answers ``commit_stalled``."""
        writer = self._writer
        return writer.broken is None and writer.stalled is None

    def sync(self) -> None:
        writer, ticket = self._to_wait()
        writer.wait(ticket)

    def sync_within(self, stalled_timeout: float) -> bool:
        """False when the node's WAL is stalled (a full disk) for ``stalled_timeout`` s."""
        writer, ticket = self._to_wait()
        return writer.wait(ticket, stalled_timeout)

    def _to_wait(self) -> tuple[WalWriter, int]:
        """The writer and ticket a sync waits for, the held appends queued first: read
        together, as a move to a new writer (``_move_to``) changes both."""
        with self._lock:
            if self._held:
                self._release_held()
            return self._writer, self._ticket

    def _durable_on(self, writer: WalWriter) -> bool:
        """Whether this open log is on ``writer`` and every change to its entries is durable
        there: the disk holds the log as it is in memory (a lost trim or checkpoint record
        only leaves more on disk, which the old files still hold)."""
        with self._lock:
            return (
                not self._closed
                and self._writer is writer
                and not self._held
                and self._content_ticket <= writer._synced
            )

    def _move_to(self, old: WalWriter, new: WalWriter) -> bool:
        """Under the registry lock: move this log from the failed writer ``old`` to ``new``,
        which was opened from disk, if its log there is the one in memory (then the partition
        goes on without a restart); False if not (it must restart). The reference on the
        writer moves with it."""
        key = self._key
        with self._lock:
            recovered = new._recovered.get(key)
            if (
                not self._durable_on(old)
                or recovered is None
                or key in new._logs
                or not self._same_as(*recovered)
            ):
                return False
            del new._recovered[key]
            old._logs.pop(key, None)
            new._logs[key] = self
            # Tickets are the new writer's from here: nothing of this log is pending there.
            self._ticket = self._content_ticket = 0
            self._writer = new
        old.refs -= 1
        new.refs += 1
        return True

    def _same_as(self, first: int, entries: list[Entry]) -> bool:
        """Whether a recovered log (``first``, ``entries``) ends where this one does, with the
        same term (it may begin earlier: a trim not yet durable)."""
        last = first + len(entries) - 1
        return bool(entries) and last == self.last_index() and entries[-1].term == self.term(last)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            run = self._run
            if self._held:
                # Queued, not waited for (never acknowledged): the WAL keeps the same log as
                # the one handed to the writer below for rotation.
                with contextlib.suppress(LogError):
                    self._release_held()
            self._closed = True
        self._leave_pool()
        # Outside our lock: rotation takes the registry lock, then a log's lock.
        self._writer.unregister(self._key, (run.first, list(run.entries)))
        self._writer.release()

    def status(self) -> dict[str, Any]:
        status = super().status()
        status.update(self._writer.status())
        return status


PROVIDER = WalLog
"""The provider this module stands for when a setting names the module."""

__all__ = ["WalLog", "WalWriter"]
