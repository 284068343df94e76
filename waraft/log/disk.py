"""Durable Raft log in segment files (``<partition dir>/log/<first index>.wal``).

File format
-----------
A segment starts with a 16-byte header (magic ``WRAFTLG1``, first index as u64 little-endian)
followed by records. A record is ``length:u32le | crc32(payload):u32le | payload`` where the
payload is the msgpack array ``(index, term, key, command, label)``. A record's *size* (used by
size-capped reads) is its length on disk, header included.

Durability
----------
``append`` writes each batch with one ``os.write`` per segment touched and never syncs;
``sync`` issues one ``fdatasync`` for the active segment (plus one directory fsync when a
segment file was created since the previous sync): the group-commit point. Rare structural
changes are made durable at once, in an order that keeps every crash state a valid log:

* rotation fsyncs the full segment before creating the next, so only the last segment can have
  a torn tail;
* opening fsyncs the last segment before reading it as the log, so appends a kill -9 left in
  the page cache unsynced are durable before they are counted (and acknowledged to a leader);
* ``truncate`` unlinks later segments and fsyncs the directory before cutting the kept one;
* ``reset`` writes the new base segment to ``reset.tmp`` and fsyncs it, unlinks the old
  segments (fsync), then renames it into place (fsync);
* ``trim`` unlinks segments lowest first, fsyncing the directory after each, so a crash leaves a
  suffix of the log.

Opening verifies every record (CRC, index sequence, non-decreasing terms). A bad record in the
last segment not followed by valid records running to the end of the segment is a torn tail: it
is cut (with a warning). Any other bad record raises ``LogCorruptionError`` naming the file and
offset; nothing is skipped.
A write error rolls the batch back (the file is cut to its previous length) and raises
``LogWriteError``; a failed fsync (a ``sync``'s, or rotation's sealing a segment) makes the log
refuse further writes until it is reopened (the kernel may have dropped the dirty pages, so
retrying could lie), and cuts off what was written since the last successful ``sync``: the
page cache still holds it and a reopen's own fsync would succeed, so it would be read back as
durable. A cut that fails too is made by the next open, which refuses while it cannot
(``waraft.log.unsynced``).

Full disk
---------
A write that fails for want of space (ENOSPC, EDQUOT) is not an error but a *stall*, as in the
node's WAL (``waraft.log.wal``): the batch is rolled back on disk and kept in memory, unwritten
(the decoded entries stay in the cache, so reads see them), later appends queue behind it,
``can_append`` refuses (new commits get ``commit_stalled``) and ``sync_within`` retries the
write with a backoff (0.1 s doubling to 2 s) and answers False until the unwritten bytes are
on disk and synced. Nothing unwritten is ever reported durable, so nothing is acknowledged
before it is; the partition keeps running and resumes by itself when space returns. ``sync``
retries once and raises ``LogWriteError`` (the log stays usable) if the disk is still full.

Memory
------
Per entry only a u32 file offset is kept (``array('I')``); terms are kept as runs (one item per
term change) and config entries in a short per-segment list, so ``config()`` never scans. The
last ``cache_entries`` to ``2 * cache_entries`` appended entries are also kept decoded, so a
leader replicating the tail never reads the disk.

Ownership
---------
An open DiskLog holds an exclusive ``flock`` on ``log/LOCK``; a second open of the same directory
(in any process) waits up to ``lock_timeout`` seconds and then raises ``LogError``. The kernel
drops the lock when a process dies, so kill -9 needs no cleanup; inside one process the previous
owner must ``close()`` first (the partition's terminate path).

Concurrency
-----------
As ``waraft.log.provider`` says: one writer thread, plus ``trim`` from any thread. Segment
objects sit in an immutable tuple that is replaced (under ``_lock``) when segments are added or
removed; readers take no lock. File descriptors are only opened and closed by the writer thread:
``trim`` hands the descriptors of the segments it removes to the writer, which closes them at its
next write, so a read never uses a descriptor that was closed under it.
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
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any, Final, Self

from waraft.core.settings import Settings
from waraft.core.types import Config, Entry, LogPos, Priority
from waraft.log import unsynced
from waraft.log.provider import (
    FSYNC_METRIC,
    A,
    FoldFn,
    LogCorruptionError,
    LogError,
    LogMissingError,
    LogPositionError,
    LogProvider,
    LogWriteError,
    make_marker,
)
from waraft.services import metrics
from waraft.services.codec import CodecError, packb, unpackb

logger = logging.getLogger(__name__)

MAGIC: Final = b"WRAFTLG1"
SEGMENT_HEADER: Final = struct.Struct("<8sQ")
RECORD_HEADER: Final = struct.Struct("<II")
SUFFIX: Final = ".wal"
MARKER: Final = "disk-log"
"""In the partition directory once its log was created here (see ``DiskLog.open``)."""
RESET_TEMP: Final = "reset.tmp"
LOCK_FILE: Final = "LOCK"
MIN_PAYLOAD: Final = 6  # a 5-element array of the smallest values
MAX_PAYLOAD: Final = 1 << 30
ARRAY5: Final = 0x95  # msgpack fixarray of 5: every payload starts with it

DEFAULT_MAX_BYTES_PER_FILE: Final = 64 * 1024 * 1024
DEFAULT_CACHE_ENTRIES: Final = 8192
DEFAULT_MAX_UNSYNCED_BYTES: Final = 64 * 1024 * 1024
_OFFSET_LIMIT: Final = (1 << 32) - 1 - MAX_PAYLOAD  # offsets are u32
_SPACE_ERRORS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
STALL_BACKOFF_MIN: Final = 0.1
STALL_BACKOFF_MAX: Final = 2.0


class _Segment:
    """One segment file: where its records start, their term runs and its config entries."""

    __slots__ = (
        "configs",
        "fd",
        "first",
        "offsets",
        "path",
        "run_starts",
        "run_terms",
        "size",
        "synced",
    )

    def __init__(self, first: int, path: str, fd: int) -> None:
        self.first = first
        self.path = path
        self.fd = fd
        self.size = SEGMENT_HEADER.size
        # The size the last successful sync made durable (what a failed sync cuts back to);
        # ``unsynced.REMOVE`` for a segment created since.
        self.synced = unsynced.REMOVE
        self.offsets = array("I")
        self.run_starts: list[int] = []
        self.run_terms: list[int] = []
        self.configs: list[tuple[int, Config]] = []

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1

    def end_of(self, offset: int) -> int:
        """File position just past the record at ``offset`` (relative record number)."""
        offsets = self.offsets
        return offsets[offset + 1] if offset + 1 < len(offsets) else self.size

    def term_at(self, index: int) -> int:
        return self.run_terms[bisect_right(self.run_starts, index) - 1]

    def note(self, index: int, term: int, command: Any) -> None:
        """Record the term run and config index of a record being added (writer only)."""
        if not self.run_terms or self.run_terms[-1] != term:
            self.run_starts.append(index)
            self.run_terms.append(term)
        if (
            type(command) is tuple
            and len(command) == 2
            and command[0] == "config"
            and isinstance(command[1], Config)
        ):
            self.configs.append((index, command[1]))

    def cut(self, index: int) -> None:
        """Forget the records at ``index`` and above (the file is cut by the caller)."""
        keep = index - self.first
        if keep < len(self.offsets):
            self.size = self.offsets[keep]
            del self.offsets[keep:]
        while self.run_starts and self.run_starts[-1] >= index:
            self.run_starts.pop()
            self.run_terms.pop()
        while self.configs and self.configs[-1][0] >= index:
            self.configs.pop()


def _segment_name(first: int) -> str:
    return f"{first:020d}{SUFFIX}"


def _has_segments(directory: str) -> bool:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return False
    # A reset cut short between removing the old segments and renaming its new one leaves
    # only RESET_TEMP, which opening completes (``_load``).
    return RESET_TEMP in names or any(
        n.endswith(SUFFIX) and n[: -len(SUFFIX)].isdigit() for n in names
    )


def _encode(index: int, entry: Entry) -> bytes:
    payload = packb((index, entry.term, entry.key, entry.command, entry.label))
    if len(payload) > MAX_PAYLOAD:
        raise LogError(f"log entry {index} encodes to {len(payload)} bytes (limit {MAX_PAYLOAD})")
    return RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes | memoryview) -> tuple[int, Entry]:
    record = unpackb(payload)
    if type(record) is not tuple or len(record) != 5:
        raise CodecError("log record is not a 5-element array")
    index, term, key, command, label = record
    if type(index) is not int or type(term) is not int:
        raise CodecError("log record index or term is not an integer")
    return index, Entry(term, key, command, label)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def _fsync_dir(dir_fd: int) -> None:
    os.fsync(dir_fd)


def _valid_record_after(data: bytes, start: int) -> int | None:
    """The offset of the first record at or after ``start`` from which CRC-valid records run
    to the end of ``data``, if there is one (records written after a bad one: damage, not a
    torn tail). A chain to the end, not one valid record: a client chooses the bytes of its
    values, so a value can hold a CRC-valid record, and the crash that tears the record
    carrying it would otherwise read as corruption and refuse to open the log."""
    pos = data.find(bytes((ARRAY5,)), start + RECORD_HEADER.size)
    while pos != -1:
        header = pos - RECORD_HEADER.size
        if _chains_to_end(data, header):
            return header
        pos = data.find(bytes((ARRAY5,)), pos + 1)
    return None


def _chains_to_end(data: bytes, pos: int) -> bool:
    """Whether CRC-valid records follow each other from ``pos`` (the first one included) to
    exactly the end of data."""
    end = len(data)
    while pos < end:
        if end - pos < RECORD_HEADER.size:
            return False
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        body = pos + RECORD_HEADER.size
        if not MIN_PAYLOAD <= length <= end - body or zlib.crc32(data[body : body + length]) != crc:
            return False
        pos = body + length
    return True


class DiskLog(LogProvider):
    """The durable segment-file log (see the module docstring)."""

    def __init__(
        self,
        directory: str,
        *,
        max_records_per_file: int = 200_000,
        max_bytes_per_file: int = DEFAULT_MAX_BYTES_PER_FILE,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        max_unsynced_bytes: int = DEFAULT_MAX_UNSYNCED_BYTES,
        lock: bool = True,
        lock_timeout: float = 1.0,
    ) -> None:
        """Open the log kept in ``directory`` (created if missing). Prefer ``DiskLog.open``."""
        if max_records_per_file < 1 or max_bytes_per_file < 1:
            raise ValueError("segment limits must be positive")
        self._dir = os.fspath(directory)
        self._max_records = max_records_per_file
        self._max_bytes = min(max_bytes_per_file, _OFFSET_LIMIT)
        self._cache_cap = max(1, cache_entries)
        self._max_unsynced = max_unsynced_bytes
        self._lock = threading.Lock()
        self._segments: tuple[_Segment, ...] = ()
        self._retired: list[_Segment] = []  # removed by trim; the writer closes their fds
        self._dirty: list[_Segment] = []  # segments written since the last sync
        self._dir_dirty = False
        self._last = -1
        self._cache: list[Entry] = []
        self._cache_first = 0
        self._unsynced_bytes = 0
        self._broken: str | None = None
        # A full disk (see "Full disk"): bytes of records that belong at the end of the active
        # segment but are not written yet, the first index they hold, why, and when to retry.
        self._unwritten = bytearray()
        self._unwritten_first = 0
        self.stalled: str | None = None
        self._retry_at = 0.0
        self._backoff = STALL_BACKOFF_MIN
        self._closed = False
        self.fsyncs = 0  # fdatasync/fsync calls made by sync() (exposed for status/benchmarks)
        self._fsync_latency = metrics.histogram(FSYNC_METRIC, os.path.abspath(self._dir))
        os.makedirs(self._dir, exist_ok=True)
        self._lock_fd = self._take_lock(lock_timeout) if lock else -1
        self._dir_fd = os.open(self._dir, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # Records whose fsync failed in this process and could not be cut off then.
            unsynced.settle(self._dir)
            self._load()
        except BaseException:
            self._close_fds()
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None,
        settings: Settings | None = None,
        **options: Any,
    ) -> Self:
        """Open the log of the partition directory ``path`` (files in ``<path>/log``).

        ``settings.raft_max_log_records_per_file`` and ``raft_max_log_bytes_per_file`` set when
        a segment is full unless the options ``max_records_per_file`` / ``max_bytes_per_file``
        override them; other options are the constructor's.
        """
        if path is None:
            raise ValueError("DiskLog needs a partition directory")
        if settings is not None:
            options.setdefault("max_records_per_file", settings.raft_max_log_records_per_file)
            options.setdefault("max_bytes_per_file", settings.raft_max_log_bytes_per_file)
        directory = os.path.join(os.fspath(path), "log")
        marker = os.path.join(os.fspath(path), MARKER)
        written = os.path.exists(marker)
        if written and not _has_segments(directory):
            # As WalLog.open: a log that was written here and is gone lost entries the
            # replica may have acknowledged; opening it empty would let it vote without them.
            raise LogMissingError(
                directory,
                "the partition's log was written here but its segment files are gone; move "
                "the partition's directory away to have it rebuilt from a healthy replica",
            )
        log = cls(directory, **options)
        if not written:
            try:
                log.sync()
                make_marker(os.fspath(path), MARKER)
            except BaseException:
                log.close()
                raise
        return log

    # -- opening ------------------------------------------------------------------------------

    def _take_lock(self, timeout: float) -> int:
        """Hold ``LOCK`` (flock) so that two live DiskLogs never share a directory; waits up
        to ``timeout`` seconds for a previous owner (an exiting process, a partition being
        restarted) to let go."""
        fd = os.open(os.path.join(self._dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LogError(
                        f"log directory {self._dir} is in use by another open DiskLog "
                        "(in this process: close the previous instance first)"
                    ) from None
                time.sleep(0.01)

    def _segment_files(self) -> list[tuple[int, str]]:
        found = []
        for name in os.listdir(self._dir):
            stem = name[: -len(SUFFIX)]
            if name.endswith(SUFFIX) and stem.isdigit():
                found.append((int(stem), os.path.join(self._dir, name)))
        return sorted(found)

    def _load(self) -> None:
        files = self._segment_files()
        temp = os.path.join(self._dir, RESET_TEMP)
        if os.path.exists(temp):
            first = None if files else self._complete_temp_first(temp)
            if first is None:
                # Either the reset never got as far as removing the old log (so it did not
                # happen), or a brand-new log's creation was cut short.
                os.unlink(temp)
            else:
                os.rename(temp, os.path.join(self._dir, _segment_name(first)))
                _fsync_dir(self._dir_fd)
                files = self._segment_files()
        if not files:
            self._install_base(LogPos(0, 0))
            return
        segments: list[_Segment] = []
        for number, (first, path) in enumerate(files):
            segment = self._load_segment(first, path, number == len(files) - 1, segments)
            if segment is not None:
                segments.append(segment)
        if not segments:
            raise LogCorruptionError(files[-1][1], 0, "the log's only segment holds no record")
        # The last segment is the active one: reopen it for appending.
        active = segments[-1]
        fd = os.open(active.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        os.close(active.fd)
        active.fd = fd
        for segment in segments:
            segment.synced = segment.size  # the last one was fsynced as it was read
        self._segments = tuple(segments)
        self._last = active.last
        self._cache_first = self._last + 1

    def _complete_temp_first(self, temp: str) -> int | None:
        """The first index of a reset segment left in ``reset.tmp`` if it is complete."""
        with open(temp, "rb") as f:
            data = f.read()
        if len(data) < SEGMENT_HEADER.size + RECORD_HEADER.size or data[:8] != MAGIC:
            return None
        first = int(SEGMENT_HEADER.unpack_from(data)[1])
        length, crc = RECORD_HEADER.unpack_from(data, SEGMENT_HEADER.size)
        payload = data[SEGMENT_HEADER.size + RECORD_HEADER.size :]
        if len(payload) != length or zlib.crc32(payload) != crc:
            return None
        return first

    def _load_segment(
        self, first: int, path: str, is_last: bool, previous: list[_Segment]
    ) -> _Segment | None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            segment = self._parse_segment(first, path, fd, is_last, previous)
        except BaseException:
            os.close(fd)
            raise
        if segment is None:
            os.close(fd)
        return segment

    def _parse_segment(
        self, first: int, path: str, fd: int, is_last: bool, previous: list[_Segment]
    ) -> _Segment | None:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
        if len(data) != size:
            raise LogCorruptionError(path, len(data), "short read")
        if is_last:
            # After a kill -9 the page cache can hold appends whose fdatasync never ran:
            # made durable before they count as the log (rotation synced the others).
            os.fsync(fd)
        expected_first = previous[-1].last + 1 if previous else first
        prev_term = previous[-1].run_terms[-1] if previous else -1
        segment = _Segment(first, path, fd)
        header_ok = (
            len(data) >= SEGMENT_HEADER.size
            and data[:8] == MAGIC
            and SEGMENT_HEADER.unpack_from(data)[1] == first
        )
        if header_ok and first != expected_first:
            raise LogCorruptionError(
                path, 0, f"segment starts at index {first}, expected {expected_first}"
            )
        if header_ok:
            bad_at, reason = self._scan_records(segment, data, prev_term)
        else:
            bad_at, reason = 0, "bad segment header"
        if bad_at >= 0:
            if not is_last or _valid_record_after(data, bad_at + 1) is not None:
                raise LogCorruptionError(path, bad_at, reason)
            logger.warning(
                "cutting the torn tail of log segment %s at byte %d (%s; %d bytes dropped)",
                path,
                bad_at,
                reason,
                len(data) - bad_at,
            )
            if segment.offsets:
                os.truncate(path, bad_at)
                os.fsync(fd)
        if segment.offsets:
            return segment
        if not is_last:
            raise LogCorruptionError(path, SEGMENT_HEADER.size, "segment holds no record")
        if previous:
            # A segment created by rotation whose first records never reached the disk.
            os.unlink(path)
            _fsync_dir(self._dir_fd)
        return None

    def _scan_records(self, segment: _Segment, data: bytes, prev_term: int) -> tuple[int, str]:
        """Index every record of ``data``; returns (offset, reason) of the first bad one, or
        (-1, "") when all are good. ``segment.size`` ends up just past the last good record."""
        pos = SEGMENT_HEADER.size
        end = len(data)
        index = segment.first
        offsets = segment.offsets
        view = memoryview(data)
        unpack_header = RECORD_HEADER.unpack_from
        bad_at, reason = -1, ""
        while pos < end:
            if end - pos < RECORD_HEADER.size:
                bad_at, reason = pos, "truncated record header"
                break
            length, crc = unpack_header(data, pos)
            body = pos + RECORD_HEADER.size
            if length < MIN_PAYLOAD or length > MAX_PAYLOAD:
                bad_at, reason = pos, f"impossible record length {length}"
                break
            if body + length > end:
                bad_at, reason = pos, "record runs past the end of the file"
                break
            payload = view[body : body + length]
            if zlib.crc32(payload) != crc:
                bad_at, reason = pos, "CRC mismatch"
                break
            try:
                found, entry = _decode(payload)
            except CodecError as exc:
                bad_at, reason = pos, f"undecodable record ({exc})"
                break
            if found != index:
                bad_at, reason = pos, f"record holds index {found}, expected {index}"
                break
            if entry.term < prev_term:
                bad_at, reason = pos, f"term {entry.term} at index {index} after {prev_term}"
                break
            prev_term = entry.term
            offsets.append(pos)
            segment.note(index, entry.term, entry.command)
            pos = body + length
            index += 1
        segment.size = pos
        return bad_at, reason

    def _new_segment_file(self, first: int, path: str) -> int:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, SEGMENT_HEADER.pack(MAGIC, first))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return fd

    def _install_base(self, position: LogPos) -> None:
        """Durably replace every segment by one holding the base entry at ``position``."""
        temp = os.path.join(self._dir, RESET_TEMP)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        fd = self._new_segment_file(position.index, temp)
        try:
            base = Entry(position.term)
            _write_all(fd, _encode(position.index, base))
            os.fsync(fd)
            old = self._segments
            for segment in old:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(segment.path)
            _fsync_dir(self._dir_fd)
            path = os.path.join(self._dir, _segment_name(position.index))
            os.rename(temp, path)
            _fsync_dir(self._dir_fd)
        except BaseException:
            os.close(fd)
            raise
        segment = _Segment(position.index, path, fd)
        segment.offsets.append(SEGMENT_HEADER.size)
        segment.size = segment.synced = os.fstat(fd).st_size
        segment.note(position.index, position.term, None)
        self._segments = (segment,)
        for stale in old:
            os.close(stale.fd)
        self._dirty = []
        self._dir_dirty = False
        self._unsynced_bytes = 0
        self._last = position.index
        self._cache = [base]
        self._cache_first = position.index

    # -- reads --------------------------------------------------------------------------------

    def first_index(self) -> int:
        return self._segments[0].first

    def last_index(self) -> int:
        return self._last

    @staticmethod
    def _find(segments: tuple[_Segment, ...], index: int) -> _Segment:
        last = segments[-1]
        if index >= last.first:
            return last
        return segments[bisect_right(segments, index, key=lambda s: s.first) - 1]

    def term(self, index: int) -> int | None:
        segments = self._segments
        if index > self._last or index < segments[0].first:
            return None
        if index >= self._cache_first:
            return self._cache[index - self._cache_first].term
        return self._find(segments, index).term_at(index)

    def get(self, index: int) -> Entry | None:
        segments = self._segments
        if index > self._last or index < segments[0].first:
            return None
        return self._read(segments, index, index)[0]

    def _count(self, segments: tuple[_Segment, ...], start: int, hi: int, max_bytes: int) -> int:
        """How many entries from ``start`` (to ``hi`` at most) fit in ``max_bytes``."""
        count = 0
        used = 0
        index = start
        position = segments.index(self._find(segments, start))
        while index <= hi:
            segment = segments[position]
            lo = index - segment.first
            top = min(hi, segment.last) - segment.first
            offsets = segment.offsets
            base = offsets[lo]
            taken = bisect_left(offsets, base + (max_bytes - used), lo, top + 1) - lo
            if taken == 0 and count == 0:
                taken = 1
            count += taken
            if taken < top - lo + 1:
                return count
            used += segment.end_of(top) - base
            if used >= max_bytes:
                return count
            index = segment.first + top + 1
            position += 1
        return count

    def retained_from(self, index: int, max_bytes: int) -> int:
        """``LogView.retained_from`` from the record offsets (sizes on disk), walking the
        segments back from ``index``'s: one bisect in the segment where the budget ends."""
        segments = self._segments
        first = segments[0].first
        index = min(index, self._last)
        if index <= first:
            return first
        position = segments.index(self._find(segments, index))
        segment = segments[position]
        end = segment.end_of(index - segment.first)
        remaining = max_bytes
        while True:
            offsets = segment.offsets
            used = end - offsets[0]
            if used > remaining:
                at = bisect_left(offsets, end - remaining)
                return min(index, segment.first + at)
            remaining -= used
            if position == 0:
                return first
            position -= 1
            segment = segments[position]
            end = segment.size

    def _read(self, segments: tuple[_Segment, ...], start: int, hi: int) -> list[Entry]:
        """Entries ``start..hi`` (all in the log): the cache for the tail, the disk before it."""
        cache_first = self._cache_first
        if start >= cache_first:
            return self._cache[start - cache_first : hi - cache_first + 1]
        out: list[Entry] = []
        index = start
        disk_hi = min(hi, cache_first - 1)
        while index <= disk_hi:
            segment = self._find(segments, index)
            top = min(disk_hi, segment.last)
            out.extend(self._read_disk(segment, index, top))
            index = top + 1
        if hi >= cache_first:
            out.extend(self._cache[: hi - cache_first + 1])
        return out

    def _read_disk(self, segment: _Segment, start: int, hi: int) -> list[Entry]:
        lo = start - segment.first
        begin = segment.offsets[lo]
        end = segment.end_of(hi - segment.first)
        try:
            data = os.pread(segment.fd, end - begin, begin)
        except OSError as exc:
            raise LogError(f"cannot read log segment {segment.path}: {exc}") from exc
        if len(data) != end - begin:
            raise LogCorruptionError(segment.path, begin + len(data), "short read")
        out = []
        view = memoryview(data)
        pos = 0
        for index in range(start, hi + 1):
            length, crc = RECORD_HEADER.unpack_from(data, pos)
            body = pos + RECORD_HEADER.size
            payload = view[body : body + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise LogCorruptionError(segment.path, begin + pos, "CRC mismatch on read")
            try:
                found, entry = _decode(payload)
            except CodecError as exc:
                raise LogCorruptionError(segment.path, begin + pos, str(exc)) from exc
            if found != index:
                raise LogCorruptionError(
                    segment.path, begin + pos, f"record holds index {found}, expected {index}"
                )
            out.append(entry)
            pos = body + length
        return out

    def entries(self, start: int, end: int, max_count: int, max_bytes: int) -> list[Entry]:
        segments = self._segments
        last = self._last
        if start < segments[0].first or start > last or max_count <= 0 or end < start:
            return []
        hi = min(end, last, start + max_count - 1)
        count = self._count(segments, start, hi, max_bytes)
        return self._read(segments, start, start + count - 1)

    def fold(self, start: int, end: int, size_limit: int, fn: FoldFn[A], acc: A) -> A:
        segments = self._segments
        if start < segments[0].first or start > self._last or end < start:
            return acc
        hi = min(end, self._last)
        count = self._count(segments, start, hi, size_limit)
        entries = self._read(segments, start, start + count - 1)
        for index, entry in enumerate(entries, start):
            segment = self._find(segments, index)
            offset = index - segment.first
            acc = fn(index, segment.end_of(offset) - segment.offsets[offset], entry, acc)
        return acc

    def config(self) -> tuple[int, Config] | None:
        for segment in reversed(self._segments):
            if segment.configs:
                return segment.configs[-1]
        return None

    def can_append(self, count: int, priority: Priority) -> bool:
        """False when the unsynced backlog is at ``max_unsynced_bytes`` (half of it for LOW
        priority, so low-priority commits stall first), or the log refuses writes."""
        if self._broken is not None or self._unwritten:
            return False
        limit = self._max_unsynced if priority is Priority.HIGH else self._max_unsynced // 2
        return self._unsynced_bytes < limit

    # -- writes -------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise LogError(f"log {self._dir} is closed")
        if self._broken is not None:
            raise LogWriteError(
                errno.EIO, f"log {self._dir} refuses writes until reopened: {self._broken}"
            )
        if self._retired:
            self._close_retired()

    def _close_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for segment in retired:
            with contextlib.suppress(OSError):
                os.close(segment.fd)

    def append(self, first_index: int, entries: Sequence[Entry]) -> None:
        self._check_writable()
        if not entries:
            return
        if first_index != self._last + 1:
            raise LogPositionError(
                f"append at {first_index} but the next index is {self._last + 1} (never overwrites)"
            )
        batch = [e if type(e) is Entry else Entry(*e) for e in entries]
        records = [_encode(index, e) for index, e in enumerate(batch, first_index)]
        if self._unwritten:
            self._keep_unwritten(first_index, batch, records)  # behind what already waits
        else:
            try:
                self._write_records(first_index, batch, records)
            except LogWriteError:
                raise  # a failed fsync (rotation): the log broke and was cut back already
            except OSError as exc:
                self._roll_back(first_index, exc)
                if exc.errno not in _SPACE_ERRORS or self._broken is not None:
                    raise LogWriteError(
                        exc.errno or errno.EIO,
                        f"appending {len(batch)} entries at {first_index} to {self._dir} "
                        f"failed: {exc}",
                    ) from exc
                self._stall(exc)
                self._keep_unwritten(first_index, batch, records)
        cache = self._cache
        cache.extend(batch)
        if len(cache) > 2 * self._cache_cap:
            drop = len(cache) - self._cache_cap
            if self._unwritten:  # unwritten entries can only be read from the cache
                drop = min(drop, self._unwritten_first - self._cache_first)
            del cache[:drop]
            self._cache_first += drop

    def _keep_unwritten(self, first_index: int, batch: list[Entry], records: list[bytes]) -> None:
        """Account ``records`` at the end of the active segment without writing them (the
        disk is full): the offsets, terms and configs are noted as for a write, the bytes wait
        in ``_unwritten`` for ``_write_unwritten``. No rotation while stalled."""
        segment = self._segments[-1]
        size = sum(len(r) for r in records)
        if segment.size + size > _OFFSET_LIMIT:
            raise LogWriteError(
                errno.ENOSPC,
                f"log {self._dir} is stalled ({self.stalled}) and cannot hold more unwritten "
                "records",
            )
        if not self._unwritten:
            self._unwritten_first = first_index
        self._commit_chunk(segment, first_index, batch, records)
        self._unwritten += b"".join(records)

    def _stall(self, cause: OSError) -> None:
        first = self.stalled is None
        self.stalled = f"write failed: {cause}"
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(STALL_BACKOFF_MAX, self._backoff * 2)
        if first:
            logger.warning(
                "log %s: writes stalled (%s); keeping them in memory and retrying, every %.1f s "
                "at most",
                self._dir, self.stalled, STALL_BACKOFF_MAX,
            )  # fmt: skip

    def _write_unwritten(self) -> bool:
        """Try to write the records a full disk held back; True once they are all written.
        A failed attempt leaves the file as it was (a partial write is cut off again)."""
        segment = self._segments[-1]
        on_disk = segment.size - len(self._unwritten)
        try:
            _write_all(segment.fd, bytes(self._unwritten))
        except OSError as exc:
            try:
                os.ftruncate(segment.fd, on_disk)
            except OSError as cut:
                self._broken = f"cutting a partial write after {exc} failed: {cut}"
                logger.error("log %s: %s", self._dir, self._broken)
                raise LogWriteError(cut.errno or errno.EIO, self._broken) from cut
            if exc.errno not in _SPACE_ERRORS:
                self._broken = f"writing held-back records failed: {exc}"
                logger.error("log %s: %s", self._dir, self._broken)
                raise LogWriteError(exc.errno or errno.EIO, self._broken) from exc
            self._stall(exc)
            return False
        logger.warning("log %s: writes resumed after: %s", self._dir, self.stalled)
        self._unwritten = bytearray()
        self.stalled = None
        self._backoff = STALL_BACKOFF_MIN
        return True

    def _write_records(self, first_index: int, batch: list[Entry], records: list[bytes]) -> None:
        done = 0
        total = len(records)
        while done < total:
            segment = self._segments[-1]
            if len(segment.offsets) >= self._max_records or segment.size >= self._max_bytes:
                segment = self._rotate(first_index + done)
            room = self._max_records - len(segment.offsets)
            # Take records while the segment stays under its byte limit (at least one).
            size = segment.size
            take = 0
            while done + take < total and take < room:
                if take and size >= self._max_bytes:
                    break
                size += len(records[done + take])
                take += 1
            chunk = records[done : done + take]
            _write_all(segment.fd, b"".join(chunk))
            self._commit_chunk(segment, first_index + done, batch[done : done + take], chunk)
            done += take

    def _commit_chunk(
        self, segment: _Segment, first: int, entries: list[Entry], chunk: list[bytes]
    ) -> None:
        offsets = segment.offsets
        pos = segment.size
        note = segment.note
        for index, (entry, record) in enumerate(zip(entries, chunk, strict=True), first):
            offsets.append(pos)
            pos += len(record)
            note(index, entry.term, entry.command)
        self._unsynced_bytes += pos - segment.size
        segment.size = pos
        self._last = first + len(entries) - 1
        if not self._dirty or self._dirty[-1] is not segment:
            self._dirty.append(segment)

    def _rotate(self, first: int) -> _Segment:
        """Seal the active segment (durably) and start a new one at ``first``."""
        old = self._segments[-1]
        try:
            os.fdatasync(old.fd)
        except OSError as exc:
            raise self._sync_failed("sealing a segment failed", exc) from exc
        self.fsyncs += 1
        if self._dirty and self._dirty[-1] is old:
            self._dirty.pop()
        path = os.path.join(self._dir, _segment_name(first))
        fd = self._new_segment_file(first, path)
        segment = _Segment(first, path, fd)
        with self._lock:
            self._segments = (*self._segments, segment)
        self._dir_dirty = True
        self._dirty.append(segment)
        return segment

    def _roll_back(self, first_index: int, cause: BaseException) -> None:
        """Undo a failed append so that the log ends at ``first_index - 1`` again."""
        try:
            active = self._segments[-1]
            os.ftruncate(active.fd, active.size)
            self._cut(first_index)
        except OSError as exc:
            self._broken = f"rollback after a failed append ({cause}) failed: {exc}"
            logger.error("log %s: %s", self._dir, self._broken)

    def truncate(self, index: int) -> None:
        self._check_writable()
        if index <= self.first_index():
            raise LogPositionError(
                f"truncate at {index} would empty the log (first index {self.first_index()})"
            )
        if index > self._last:
            return
        try:
            self._cut(index)
        except OSError as exc:
            self._broken = f"truncate at {index} failed: {exc}"
            raise LogWriteError(exc.errno or errno.EIO, self._broken) from exc

    def _cut(self, index: int) -> None:
        """Delete records at ``index`` and above, and segments that start there or later."""
        with self._lock:
            segments = self._segments
            keep = tuple(s for s in segments if s.first < index)
            drop = [s for s in segments if s.first >= index]
            self._segments = keep
        for segment in reversed(drop):
            os.unlink(segment.path)
            os.close(segment.fd)
            if segment in self._dirty:
                self._dirty.remove(segment)
        if drop:
            # Durable before the kept segment is cut: a crash must not resurrect them.
            _fsync_dir(self._dir_fd)
        tail = keep[-1]
        if drop:
            # The kept segment becomes the active one again: reopen it for appending.
            fd = os.open(tail.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            os.close(tail.fd)
            tail.fd = fd
        on_disk = tail.size - (0 if drop else len(self._unwritten))
        tail.cut(index)
        # Records appended after the cut are not durable until a sync, whatever was before.
        tail.synced = min(tail.synced, tail.size)
        if drop or tail.size <= on_disk:
            self._unwritten = bytearray()  # every unwritten record was at or above index
            os.ftruncate(tail.fd, tail.size)
        else:
            del self._unwritten[tail.size - on_disk :]
        if tail not in self._dirty:
            self._dirty.append(tail)
        self._last = index - 1
        if index <= self._cache_first:
            self._cache = []
            self._cache_first = index
        else:
            del self._cache[index - self._cache_first :]

    def reset(self, position: LogPos) -> None:
        self._check_writable()
        if position.index < 0 or position.term < 0:
            raise LogPositionError(f"invalid reset position {position}")
        self._unwritten = bytearray()  # every entry is replaced, the unwritten ones too
        try:
            with self._lock:
                self._install_base(position)
        except OSError as exc:
            self._broken = f"reset to {position} failed: {exc}"
            raise LogWriteError(exc.errno or errno.EIO, self._broken) from exc

    def trim(self, index: int) -> None:
        """Delete whole segments that lie entirely below ``index`` (any thread)."""
        with self._lock:
            if self._closed:
                return
            segments = self._segments
            count = 0
            while count + 1 < len(segments) and segments[count + 1].first <= index:
                count += 1
            if count == 0:
                return
            removed = segments[:count]
            self._segments = segments[count:]
            self._retired.extend(removed)
        try:
            for segment in removed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(segment.path)
                # One at a time, so that a crash always leaves a suffix of the log.
                _fsync_dir(self._dir_fd)
        except OSError as exc:
            logger.warning("log %s: trimming below %d failed: %s", self._dir, index, exc)

    def sync_within(self, stalled_timeout: float) -> bool:
        """``sync``; while a full disk holds writes back, one write attempt when the backoff
        allows it (never a wait: the caller retries) and False until they are written."""
        if self._unwritten:
            self._check_writable()
            if time.monotonic() < self._retry_at or not self._write_unwritten():
                return False
        self.sync()
        return True

    def sync(self) -> None:
        self._check_writable()
        if self._unwritten and not self._write_unwritten():
            raise LogWriteError(errno.ENOSPC, f"log {self._dir} is stalled: {self.stalled}")
        started = time.perf_counter()
        try:
            for segment in self._dirty:
                os.fdatasync(segment.fd)
                self.fsyncs += 1
            if self._dir_dirty:
                _fsync_dir(self._dir_fd)
                self.fsyncs += 1
        except OSError as exc:
            raise self._sync_failed("sync failed", exc) from exc
        if self._dirty or self._dir_dirty:
            self._fsync_latency.observe(time.perf_counter() - started)
        self._dirty = []
        self._dir_dirty = False
        self._unsynced_bytes = 0
        # What changed since the last sync is a suffix of the segments (appends go to the
        # last, rotation adds after it, a truncate cuts the last kept one).
        for segment in reversed(self._segments):
            if segment.synced == segment.size:
                break
            segment.synced = segment.size

    def _sync_failed(self, what: str, exc: OSError) -> LogWriteError:
        """A failed fsync: the log refuses further writes until reopened, and is cut back to
        what the last successful sync made durable (the error to raise)."""
        self._broken = f"{what}: {exc}"
        logger.error("log %s: %s", self._dir, self._broken)
        self._drop_unsynced()
        return LogWriteError(exc.errno or errno.EIO, self._broken)

    def _drop_unsynced(self) -> None:
        """Cut the records written since the last successful sync off the files: the page
        cache still holds them and a reopen's own fsync would succeed, so they would be
        read back as durable. If the cut fails, the next open makes it (``unsynced``)."""
        segments = self._segments
        for segment in segments:
            if segment.synced < segment.size:
                unsynced.remember(self._dir, segment.path, segment.synced)
        index = self._durable_last() + 1
        if index > self._last:
            return
        try:
            if index > self.first_index():
                self._cut(index)
                os.fdatasync(self._segments[-1].fd)
            else:
                return  # nothing of the log is durable in this state: the next open decides
        except OSError as exc:
            logger.error("log %s: cutting unsynced records off failed (%s)", self._dir, exc)
            return
        unsynced.forget(self._dir)

    def _durable_last(self) -> int:
        """The last index the last successful sync made durable."""
        for segment in self._segments:
            if segment.synced < segment.size:
                if segment.synced == unsynced.REMOVE:
                    return segment.first - 1
                return segment.first + bisect_left(segment.offsets, segment.synced) - 1
        return self._last

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        metrics.drop_histogram(FSYNC_METRIC, os.path.abspath(self._dir))
        self._close_fds()

    def _close_fds(self) -> None:
        for segment in (*self._segments, *self._retired):
            with contextlib.suppress(OSError):
                os.close(segment.fd)
        self._retired = []
        for fd in (self._dir_fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._dir_fd = self._lock_fd = -1

    def status(self) -> dict[str, Any]:
        status = super().status()
        segments = self._segments
        status.update(
            directory=self._dir,
            segments=len(segments),
            bytes=sum(s.size for s in segments),
            unsynced_bytes=self._unsynced_bytes,
            cached_entries=len(self._cache),
            fsyncs=self.fsyncs,
            broken=self._broken,
            stalled=self.stalled,
            unwritten_bytes=len(self._unwritten),
        )
        return status


PROVIDER = DiskLog
"""The provider this module stands for when a setting names the module."""

__all__ = ["DiskLog", "LogCorruptionError", "LogWriteError"]
