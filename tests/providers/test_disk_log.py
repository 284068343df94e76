"""DiskLog specifics: reopening, crashes, torn tails, corruption, rotation, write errors."""

from __future__ import annotations

import errno
import os
import random
import shutil
import threading
import tracemalloc
from pathlib import Path

import pytest

from waraft.core.types import Entry, LogPos, Priority
from waraft.log import unsynced
from waraft.log.disk import RESET_TEMP, SEGMENT_HEADER, DiskLog
from waraft.log.provider import LogCorruptionError, LogError, LogMissingError, LogWriteError

from .helpers import A, make_config, writes


def open_disk(path: Path, **options: object) -> DiskLog:
    return DiskLog.open(path, **options)  # type: ignore[arg-type]


def crash(log: DiskLog) -> None:
    """What kill -9 does to an open log: descriptors closed, nothing flushed or synced."""
    log._close_fds()


def segment_files(path: Path) -> list[Path]:
    return sorted((path / "log").glob("*.wal"))


def build(path: Path, count: int, **options: object) -> list[Entry]:
    log = open_disk(path, **options)
    entries = writes(1, count)
    for start in range(0, count, 7):
        chunk = entries[start : start + 7]
        log.append(start + 1, chunk)
    log.sync()
    log.close()
    return entries


def read_all(log: DiskLog) -> list[Entry]:
    return log.entries(max(1, log.first_index()), log.last_index(), 1 << 30, 1 << 60)


def test_reopen_after_close(tmp_path: Path) -> None:
    log = open_disk(tmp_path, max_records_per_file=16)
    entries = writes(1, 50, term=2)
    log.append(1, entries[:20])
    log.append(21, [Entry(3, "c", ("config", make_config(A)), "lab")])
    log.append(22, writes(22, 10, term=3))
    log.sync()
    log.close()
    log = open_disk(tmp_path, max_records_per_file=16)
    assert (log.first_index(), log.last_index()) == (0, 31)
    assert log.config() == (21, make_config(A))
    assert log.get(21) == Entry(3, "c", ("config", make_config(A)), "lab")
    assert read_all(log)[:20] == entries[:20]
    assert [log.term(i) for i in (0, 1, 20, 21, 31)] == [0, 2, 2, 3, 3]
    log.append(32, writes(32, 1, term=3))
    log.close()


def test_crash_without_close_keeps_written_entries(tmp_path: Path) -> None:
    log = open_disk(tmp_path)
    synced = writes(1, 10)
    log.append(1, synced)
    log.sync()
    unsynced = writes(11, 5)
    log.append(11, unsynced)
    crash(log)  # the kernel still has the unsynced writes, as after kill -9
    log = open_disk(tmp_path)
    assert read_all(log) == synced + unsynced
    log.close()


def test_entries_a_crash_left_unsynced_are_made_durable_when_the_log_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unsynced appends above are read back from the page cache; counted as the log (and
    acknowledged to a leader) without a sync, a power loss could still drop them. Opening syncs
    the last segment, the only one rotation did not."""
    log = open_disk(tmp_path, max_records_per_file=4)
    log.append(1, writes(1, 10))
    log.sync()
    log.append(11, writes(11, 1))
    crash(log)
    last = str(segment_files(tmp_path)[-1])
    synced: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def traced(fd: int, real: object = real) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)  # type: ignore[operator]

        monkeypatch.setattr(os, name, traced)
    log = open_disk(tmp_path, max_records_per_file=4)
    monkeypatch.undo()
    assert last in synced and log.last_index() == 11
    log.close()


def test_second_open_of_a_live_log_is_refused(tmp_path: Path) -> None:
    log = open_disk(tmp_path)
    with pytest.raises(LogError, match="in use"):
        open_disk(tmp_path, lock_timeout=0.05)
    log.close()
    open_disk(tmp_path).close()


def test_open_waits_for_the_previous_owner(tmp_path: Path) -> None:
    log = open_disk(tmp_path)
    closer = threading.Timer(0.05, log.close)  # the previous owner terminating
    closer.start()
    try:
        reopened = open_disk(tmp_path, lock_timeout=10)
    finally:
        closer.join(timeout=10)
    assert reopened.last_index() == 0
    reopened.close()


def test_torn_tail_is_cut_at_every_offset(tmp_path: Path) -> None:
    original = tmp_path / "original"
    entries = build(original, 30, max_records_per_file=20)
    last_segment = segment_files(original)[-1]
    size = last_segment.stat().st_size
    rng = random.Random(7)
    # Every offset inside the last three records, plus random ones across the segment.
    offsets = set(range(size - 120, size)) | {rng.randrange(size) for _ in range(40)}
    for offset in sorted(offsets):
        work = tmp_path / f"cut{offset}"
        shutil.copytree(original, work)
        os.truncate(work / "log" / last_segment.name, offset)
        log = open_disk(work, max_records_per_file=20)
        got = read_all(log)
        assert got == entries[: len(got)], offset
        assert log.last_index() >= 19  # the first, full segment (0..19) is untouched
        log.append(log.last_index() + 1, writes(log.last_index() + 1, 2))
        log.sync()
        log.close()
        reopened = open_disk(work, max_records_per_file=20)
        assert read_all(reopened)[: len(got)] == got
        reopened.close()
        shutil.rmtree(work)


def test_garbage_after_the_last_record_is_cut(tmp_path: Path) -> None:
    entries = build(tmp_path, 10)
    with open(segment_files(tmp_path)[-1], "ab") as f:
        f.write(os.urandom(37))
    log = open_disk(tmp_path)
    assert read_all(log) == entries
    log.close()


def record_offsets(path: Path) -> list[int]:
    log = open_disk(path)
    offsets = list(log._segments[-1].offsets)
    log.close()
    return offsets


@pytest.mark.parametrize("where", ["length", "crc", "payload"])
def test_flipped_byte_before_the_tail_is_reported(tmp_path: Path, where: str) -> None:
    build(tmp_path, 40)
    offsets = record_offsets(tmp_path)
    segment = segment_files(tmp_path)[-1]
    rng = random.Random(where)
    for victim in rng.sample(range(len(offsets) - 2), 5):  # never the last record
        work = tmp_path.parent / f"{tmp_path.name}-{where}-{victim}"
        shutil.copytree(tmp_path, work)
        position = offsets[victim] + {"length": 1, "crc": 5, "payload": 12}[where]
        target = work / "log" / segment.name
        data = bytearray(target.read_bytes())
        data[position] ^= 0x40
        target.write_bytes(bytes(data))
        with pytest.raises(LogCorruptionError) as info:
            open_disk(work)
        assert info.value.path == str(target)
        assert info.value.offset == offsets[victim]
        shutil.rmtree(work)


def test_corruption_in_an_earlier_segment_is_reported(tmp_path: Path) -> None:
    build(tmp_path, 30, max_records_per_file=10)
    first = segment_files(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[-3] ^= 0x01  # the LAST record of a sealed segment is not a tail
    first.write_bytes(bytes(data))
    with pytest.raises(LogCorruptionError, match="CRC"):
        open_disk(tmp_path, max_records_per_file=10)


def test_missing_middle_segment_is_reported(tmp_path: Path) -> None:
    build(tmp_path, 30, max_records_per_file=10)
    segment_files(tmp_path)[1].unlink()
    with pytest.raises(LogCorruptionError, match="expected"):
        open_disk(tmp_path, max_records_per_file=10)


def test_corruption_found_on_read_is_never_returned(tmp_path: Path) -> None:
    build(tmp_path, 40)
    log = open_disk(tmp_path, cache_entries=1)
    segment = log._segments[-1]
    position = segment.offsets[5] + 12
    with open(segment.path, "r+b") as f:  # the disk rots under an open log
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x10]))
    assert log.get(4) is not None  # offsets[i] is index i's record (index 0 is the base)
    with pytest.raises(LogCorruptionError):
        log.get(5)
    with pytest.raises(LogCorruptionError):
        log.entries(1, 40, 100, 1 << 30)
    log.close()


def test_segment_rotation_by_records_and_bytes(tmp_path: Path) -> None:
    log = open_disk(tmp_path / "records", max_records_per_file=10)
    log.append(1, writes(1, 45))
    log.sync()
    files = segment_files(tmp_path / "records")
    # Index 0 (the base) plus 9 entries, then 10 per file.
    assert [int(f.stem) for f in files] == [0, 10, 20, 30, 40]
    log.close()
    log = open_disk(tmp_path / "bytes", max_bytes_per_file=300)
    log.append(1, writes(1, 45))
    log.sync()
    files = segment_files(tmp_path / "bytes")
    assert len(files) > 3
    assert all(f.stat().st_size < 300 + 64 for f in files)
    assert read_all(log) == writes(1, 45)
    log.close()


def test_trim_deletes_whole_segments(tmp_path: Path) -> None:
    log = open_disk(tmp_path, max_records_per_file=10)
    entries = writes(1, 45)
    log.append(1, entries)
    log.sync()
    log.trim(25)
    assert [int(f.stem) for f in segment_files(tmp_path)] == [20, 30, 40]
    assert log.first_index() == 20
    log.append(46, writes(46, 1))  # the writer closes the trimmed segments' descriptors
    assert read_all(log) == entries[19:] + writes(46, 1)
    log.close()
    log = open_disk(tmp_path, max_records_per_file=10)
    assert (log.first_index(), log.last_index()) == (20, 46)
    log.close()


def test_truncate_across_segments_survives_reopen(tmp_path: Path) -> None:
    log = open_disk(tmp_path, max_records_per_file=10)
    entries = writes(1, 45)
    log.append(1, entries)
    log.sync()
    log.truncate(15)
    assert [int(f.stem) for f in segment_files(tmp_path)] == [0, 10]
    replacement = writes(15, 12, term=2)
    log.append(15, replacement)
    log.sync()
    crash(log)
    log = open_disk(tmp_path, max_records_per_file=10)
    assert read_all(log) == entries[:14] + replacement
    assert log.term(26) == 2
    log.close()


def test_reset_survives_reopen_and_leftover_temp_files(tmp_path: Path) -> None:
    log = open_disk(tmp_path, max_records_per_file=10)
    log.append(1, writes(1, 25))
    log.reset(LogPos(500, 9))
    crash(log)
    log = open_disk(tmp_path)
    assert (log.first_index(), log.last_index(), log.term(500)) == (500, 500, 9)
    log.append(501, writes(501, 3, term=9))
    log.sync()
    log.close()
    # A reset that crashed before removing the old log never happened...
    temp = tmp_path / "log" / RESET_TEMP
    temp.write_bytes(b"partial")
    log = open_disk(tmp_path)
    assert (log.first_index(), log.last_index()) == (500, 503) and not temp.exists()
    log.close()
    # ...and one that removed it but crashed before the rename is completed.
    segment = segment_files(tmp_path)[0]
    probe = open_disk(tmp_path / "probe")
    probe.reset(LogPos(700, 11))
    probe.close()
    shutil.copy(segment_files(tmp_path / "probe")[0], temp)
    segment.unlink()
    log = open_disk(tmp_path)
    assert (log.first_index(), log.last_index(), log.term(700)) == (700, 700, 11)
    log.close()


def failing_write(
    monkeypatch: pytest.MonkeyPatch, after_bytes: int, code: int = errno.ENOSPC
) -> None:
    """Make os.write accept ``after_bytes`` more bytes, then fail with ``code``."""
    real_write = os.write
    budget = [after_bytes]

    def write(fd: int, data: bytes | memoryview) -> int:
        if budget[0] <= 0:
            raise OSError(code, os.strerror(code))
        part = bytes(data)[: budget[0]]
        budget[0] -= len(part)
        return real_write(fd, part)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("after_bytes", [0, 5, *range(40, 520, 23)])
def test_a_write_error_rolls_the_batch_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after_bytes: int
) -> None:
    log = open_disk(tmp_path, max_records_per_file=10)
    kept = writes(1, 15)
    log.append(1, kept)
    log.sync()
    failing_write(monkeypatch, after_bytes, errno.EIO)  # the batch crosses two boundaries
    with pytest.raises(LogWriteError) as info:
        log.append(16, writes(16, 20))
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert log.last_index() == 15
    assert read_all(log) == kept
    assert log.term(16) is None
    # The log still works, and what reaches the disk is consistent.
    more = writes(16, 3, term=2)
    log.append(16, more)
    log.sync()
    log.close()
    log = open_disk(tmp_path, max_records_per_file=10)
    assert read_all(log) == kept + more
    log.close()


@pytest.mark.parametrize("after_bytes", [0, 5, *range(40, 520, 23)])
def test_a_full_disk_stalls_the_writes_and_they_complete_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after_bytes: int
) -> None:
    log = open_disk(tmp_path, max_records_per_file=10, cache_entries=4)
    kept = writes(1, 15)
    log.append(1, kept)
    log.sync()
    failing_write(monkeypatch, after_bytes)  # the batch would cross two segment boundaries
    held = writes(16, 20)
    log.append(16, held)  # no error: kept in memory, readable, not durable
    assert log.stalled is not None and "No space left" in log.stalled
    assert not log.can_append(1, Priority.HIGH)
    assert log.sync_within(0.0) is False
    with pytest.raises(LogWriteError, match="stalled"):
        log.sync()
    later = writes(36, 30, term=2)  # a follower's appends queue behind (beyond the cache)
    log.append(36, later)
    log.truncate(60)  # and a truncation inside the held-back records
    assert log.last_index() == 59
    assert read_all(log) == kept + held + later[:24]
    assert log.term(40) == 2 and log.get(17) == held[1]
    assert log.status()["unwritten_bytes"] > 0
    monkeypatch.undo()  # space returns
    log._retry_at = 0.0  # (skip the backoff)
    assert log.sync_within(0.0) is True
    assert log.stalled is None and log.can_append(1, Priority.HIGH)
    log.append(60, writes(60, 2, term=3))
    log.sync()
    log.close()
    log = open_disk(tmp_path, max_records_per_file=10)
    assert read_all(log) == kept + held + later[:24] + writes(60, 2, term=3)
    log.close()


def test_a_crash_while_stalled_keeps_what_was_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_disk(tmp_path)
    kept = writes(1, 5)
    log.append(1, kept)
    log.sync()
    failing_write(monkeypatch, 7)
    log.append(6, writes(6, 5))
    log.truncate(8)  # cuts the held-back records only: the file must not grow
    size = segment_files(tmp_path)[0].stat().st_size
    crash(log)
    monkeypatch.undo()
    assert segment_files(tmp_path)[0].stat().st_size == size
    log = open_disk(tmp_path)
    assert read_all(log) == kept
    log.close()


def test_the_backoff_spaces_the_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_disk(tmp_path)
    attempts = [0]
    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        attempts[0] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)
    log.append(1, writes(1, 1))
    for _ in range(50):
        assert log.sync_within(0.0) is False
    assert attempts[0] == 1  # the next attempt waits for the backoff
    log._retry_at = 0.0
    assert log.sync_within(0.0) is False
    assert attempts[0] == 2
    monkeypatch.setattr(os, "write", real_write)
    log._retry_at = 0.0
    assert log.sync_within(0.0) is True
    log.close()


def test_failed_sync_makes_the_log_refuse_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_disk(tmp_path)
    log.append(1, writes(1, 3))

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(LogWriteError):
        log.sync()
    monkeypatch.undo()
    with pytest.raises(LogWriteError, match="until reopened"):
        log.append(4, writes(4, 1))
    assert not log.can_append(1, Priority.HIGH)
    log.close()
    log = open_disk(tmp_path)
    assert log.last_index() == 0  # 1..3 never synced: not read back as durable
    log.close()


def _eio(*args: object) -> None:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("records_per_file", [1000, 4])
def test_records_whose_fsync_failed_are_not_read_back_as_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records_per_file: int
) -> None:
    """The failed records stayed in the segment (and in segments created since the last
    sync): reopened in the same process, the log read them back from the page cache and its
    own fsync succeeded, so entries refused to the caller came back as durable. They are cut
    off when the sync fails; across segments too (4 records a file)."""
    log = open_disk(tmp_path, max_records_per_file=records_per_file)
    log.append(1, writes(1, 5))
    log.sync()
    log.append(6, writes(6, 5))
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", _eio)
        with pytest.raises(LogWriteError):
            log.sync()
    log.close()
    log = open_disk(tmp_path, max_records_per_file=records_per_file)
    assert (log.last_index(), read_all(log)) == (5, writes(1, 5))
    log.close()


def test_records_appended_after_a_truncate_are_cut_when_their_fsync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncate cuts under what was synced: the records written after it are not durable
    although they sit below the old synced size."""
    log = open_disk(tmp_path)
    log.append(1, writes(1, 10))
    log.sync()
    log.truncate(6)
    log.append(6, writes(60, 2, term=2))
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", _eio)
        with pytest.raises(LogWriteError):
            log.sync()
    log.close()
    log = open_disk(tmp_path)
    assert read_all(log) == writes(1, 5)
    log.close()


def test_a_failed_fsync_sealing_a_segment_breaks_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotation fsyncs the full segment: when that failed, the append raised but the log
    went on, and the next sync's fsync succeeded over records the kernel may have lost."""
    log = open_disk(tmp_path, max_records_per_file=4)
    log.append(1, writes(1, 2))
    log.sync()
    log.append(3, writes(3, 1))
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", _eio)
        with pytest.raises(LogWriteError):
            log.append(4, writes(4, 3))  # fills the segment, then rotates
    with pytest.raises(LogWriteError, match="until reopened"):
        log.sync()
    log.close()
    log = open_disk(tmp_path, max_records_per_file=4)
    assert read_all(log) == writes(1, 2)
    log.close()


def test_records_that_could_not_be_cut_off_are_cut_by_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut fails too (the disk is failing): the next open makes it before reading the
    log, or, while it cannot, refuses to open."""
    log = open_disk(tmp_path)
    log.append(1, writes(1, 3))
    log.sync()
    log.append(4, writes(4, 3))
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", _eio)
        patch.setattr(os, "ftruncate", _eio)
        with pytest.raises(LogWriteError):
            log.sync()
    log.close()
    with monkeypatch.context() as patch:
        patch.setattr(unsynced, "_cut", _eio)
        with pytest.raises(LogWriteError, match="restart the node"):
            open_disk(tmp_path)
    log = open_disk(tmp_path)
    assert read_all(log) == writes(1, 3)
    log.close()


def test_can_append_bounds_the_unsynced_backlog(tmp_path: Path) -> None:
    log = open_disk(tmp_path, max_unsynced_bytes=2000)
    log.append(1, writes(1, 40))  # about 1000 bytes
    assert log.can_append(1, Priority.HIGH)
    assert not log.can_append(1, Priority.LOW)  # low priority stalls at half the bound
    log.append(41, writes(41, 60))
    assert not log.can_append(1, Priority.HIGH)
    log.sync()
    assert log.can_append(1, Priority.HIGH) and log.can_append(1, Priority.LOW)
    log.close()


def test_one_fsync_per_sync(tmp_path: Path) -> None:
    log = open_disk(tmp_path)
    before = log.fsyncs
    for batch in range(10):
        log.append(batch * 100 + 1, writes(batch * 100 + 1, 100))
        log.sync()
    assert log.fsyncs - before == 10
    log.close()


def test_memory_holds_offsets_not_entries(tmp_path: Path) -> None:
    log = open_disk(tmp_path, cache_entries=100, max_records_per_file=5000)
    value = "v" * 400
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for start in range(1, 20_001, 500):
            log.append(
                start, [Entry(1, k, ("write", "t", k, value)) for k in range(start, start + 500)]
            )
        log.sync()
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 20 000 entries of ~420 bytes are ~8 MB on disk; memory keeps offsets and <= 200 entries.
    assert len(log._cache) <= 200
    assert used - base < 1_000_000
    seventh = log.get(7)
    assert seventh is not None and seventh.command[3] == value
    log.close()


def test_segment_header_mismatch_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, 30, max_records_per_file=10)
    first = segment_files(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[: SEGMENT_HEADER.size] = SEGMENT_HEADER.pack(b"WRAFTLG1", 99)
    first.write_bytes(bytes(data))
    with pytest.raises(LogCorruptionError):
        open_disk(tmp_path, max_records_per_file=10)


def test_syncs_are_timed_into_the_fsync_histogram(tmp_path: Path) -> None:
    from waraft.log.provider import FSYNC_METRIC
    from waraft.services import metrics

    log = open_disk(tmp_path / "log")
    label = os.path.abspath(log._dir)
    log.sync()  # nothing written: no fsync, no sample
    assert metrics.histograms(FSYNC_METRIC)[label]["count"] == 0
    log.append(1, writes(1, 5))
    log.sync()
    snap = metrics.histograms(FSYNC_METRIC)[label]
    assert snap["count"] == 1 and snap["sum"] > 0
    assert log.status()["bytes"] > 0
    log.close()
    assert label not in metrics.histograms(FSYNC_METRIC)


def test_a_record_hidden_in_a_torn_tails_value_does_not_make_it_corruption(
    tmp_path: Path,
) -> None:
    """A value can hold a CRC-valid log record (a client chooses its bytes): when a crash
    tears the record carrying it, the hidden record is not taken for a record written after
    the tear, which would refuse to open the log."""
    from waraft.log.disk import _encode

    entries = build(tmp_path, 10)
    hidden = _encode(11, Entry(1, "x", ("write", "t", "k", "forged")))
    log = open_disk(tmp_path)
    log.append(11, [Entry(1, "y", ("write", "t", "k", hidden + b"tail of the value"))])
    log.sync()
    crash(log)
    segment = segment_files(tmp_path)[-1]
    data = bytearray(segment.read_bytes())
    at = data.rfind(hidden)
    assert at > 0
    data[at - 8 : at] = b"\x00" * 8  # a page before the hidden record never reached the disk
    segment.write_bytes(bytes(data))
    log = open_disk(tmp_path)
    assert read_all(log) == entries and log.last_index() == 10
    log.close()


def test_a_partition_whose_segments_are_gone_is_refused_not_opened_empty(tmp_path: Path) -> None:
    # Deleting the log's directory gave a brand-new log: the entries after the applied
    # position, which the replica may have acknowledged, were gone without a word.
    partition = tmp_path / "kv.1"
    log = DiskLog.open(partition)
    log.append(1, writes(1, 3))
    log.sync()
    log.close()
    shutil.rmtree(partition / "log")
    with pytest.raises(LogMissingError, match="segment files are gone"):
        DiskLog.open(partition)
    (partition / "log").mkdir()  # an emptied directory is no better
    with pytest.raises(LogMissingError):
        DiskLog.open(partition)
    shutil.move(partition, tmp_path / "kv.1.lost")  # moved away: rebuilt as a new replica
    fresh = DiskLog.open(partition)
    assert fresh.last_index() == 0
    fresh.close()
    reopened = DiskLog.open(partition)  # and the new one is known as written
    assert reopened.last_index() == 0
    reopened.close()
