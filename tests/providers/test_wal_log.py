"""The node-wide write-ahead log (``waraft.log.wal``): sharing, group commit, recovery."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from waraft import otp
from waraft.core.settings import Settings
from waraft.core.types import Entry, LogPos, Priority
from waraft.log import unsynced
from waraft.log import wal as wal_module
from waraft.log.provider import LogCorruptionError, LogError, LogMissingError, LogWriteError
from waraft.log.wal import (
    FILE_HEADER,
    MAGIC,
    MAGIC_V1,
    RECORD_HEADER,
    WalLog,
    WalWriter,
    _append_payload,
    _append_prefix,
    _frame,
    _raw,
    _record,
    _replay,
    _scan,
)
from waraft.services.codec import packb

from .helpers import stop_wal_writers


def _entries(start: int, count: int, term: int = 1) -> list[Entry]:
    return [Entry(term, f"k{i}", ("write", "t", f"k{i}", i)) for i in range(start, start + count)]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stop_wal_writers(tmp_path)


def _crash(log: WalLog) -> None:
    """kill -9 after the last fsync: the writer goes away, no partition is closed."""
    writer = log._writer
    with WalWriter._registry_lock:
        WalWriter._registry.pop(writer.directory, None)
    writer.stop()


def _crashed_with_ten_entries(root: Path) -> str:
    """Partition kv.1 with entries 1..10 synced, then a kill -9; the newest WAL file's path."""
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 10))
    log.sync()
    path = log._writer._path
    _crash(log)
    return path


def _append(path: str, data: bytes) -> None:
    """Write ``data`` where the writer's next batch would have gone: right after the file's
    last record, over the zeros ahead of it."""
    raw = Path(path).read_bytes()
    end = _scan(raw, FILE_HEADER.size)[1]
    with open(path, "r+b") as f:
        f.seek(len(raw) if end < 0 else end)
        f.write(data)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_partitions_share_one_writer_and_the_fds_do_not_grow(root: Path) -> None:
    before = _open_fds()
    logs = [WalLog.open(root / f"kv.{p}") for p in range(1, 51)]
    assert len({id(log._writer) for log in logs}) == 1
    assert _open_fds() - before <= 4  # active file, directory, lock (+ nothing per partition)
    for log in logs:
        log.close()
    assert _open_fds() <= before


def test_group_commit_one_fsync_covers_many_partitions(root: Path) -> None:
    logs = [WalLog.open(root / f"kv.{p}") for p in range(1, 17)]
    writer = logs[0]._writer
    barrier = threading.Barrier(len(logs))

    def work(log: WalLog) -> None:
        barrier.wait()
        for i in range(1, 21):
            log.append(i, _entries(i, 1))
            log.sync()

    threads = [threading.Thread(target=work, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # 16 partitions x 20 synced appends: batching must share fsyncs between partitions.
    assert writer.fsyncs < 16 * 20
    _crash(logs[0])
    for p in range(1, 17):
        log = WalLog.open(root / f"kv.{p}")
        assert log.entries(1, 20, 100, 1 << 30) == [e for i in range(1, 21) for e in _entries(i, 1)]


def test_sync_returns_only_after_the_fsync_covering_the_append(root: Path) -> None:
    log = WalLog.open(root / "kv.1")
    writer = log._writer
    gate = threading.Event()
    real = os.fdatasync
    calls: list[int] = []

    def slow_fdatasync(fd: int) -> None:
        gate.wait(10)
        calls.append(fd)
        real(fd)

    done = threading.Event()
    os.fdatasync = slow_fdatasync  # type: ignore[assignment]
    try:
        log.append(1, _entries(1, 3))
        t = threading.Thread(target=lambda: (log.sync(), done.set()))
        t.start()
        assert not done.wait(0.3)  # no fsync yet: not acknowledged
        gate.set()
        assert done.wait(10)
        t.join()
    finally:
        os.fdatasync = real
    assert calls and writer.fsyncs >= 1


def test_torn_tail_is_cut_and_the_synced_prefix_survives(root: Path) -> None:
    path = _crashed_with_ten_entries(root)
    _append(path, b"\x40\x00\x00\x00\x12\x34")  # a record header cut short by the crash
    log = WalLog.open(root / "kv.1")
    assert (log.first_index(), log.last_index()) == (0, 10)
    log.append(11, _entries(11, 1))  # and it keeps working
    log.sync()


def test_a_record_hidden_in_a_torn_tails_value_does_not_make_it_corruption(root: Path) -> None:
    """A client controls the bytes of the values it writes, so a value can hold a CRC-valid
    WAL record. When a crash tears the record carrying it, that embedded record must not be
    taken for a real one after the tear (which would refuse the node's start as corruption):
    only a chain of valid records running to the end of the file is."""
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 10))
    log.sync()
    path = log._writer._path
    hidden = _record(("a", "kv.1", 11, _raw([Entry(1, "x", ("write", "t", "k", "forged"))])))
    log.append(11, [Entry(1, "y", ("write", "t", "k", hidden + b"tail of the value"))])
    log.sync()
    _crash(log)
    data = Path(path).read_bytes()
    at = data.rfind(hidden)
    assert at > 0
    # Torn: the tail of the last record (from the hidden record on) reached the disk, a page
    # before it did not (zeros), so that record fails its CRC.
    torn = bytearray(data)
    torn[at - 8 : at] = b"\x00" * 8
    Path(path).write_bytes(bytes(torn))
    log = WalLog.open(root / "kv.1")
    assert (log.first_index(), log.last_index()) == (0, 10)  # the forged entry 11 is not there


def test_a_corrupt_record_before_the_tail_is_reported_not_skipped(root: Path) -> None:
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 10))
    log.sync()
    log.append(11, _entries(11, 10))
    log.sync()
    path = log._writer._path
    _crash(log)
    data = bytearray(Path(path).read_bytes())
    data[40] ^= 0xFF  # inside the first append record; the second one is intact
    Path(path).write_bytes(bytes(data))
    with pytest.raises(LogCorruptionError):
        WalLog.open(root / "kv.1")


@pytest.mark.parametrize("disk", ["room", "full"])
def test_a_corrupt_wal_is_reported_at_every_start_and_gets_no_new_file(
    root: Path, disk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corrupt WAL refuses every open and is never written. Each start used to open a new
    file anyway: header-only files piled up on a quarantined node, and on a full disk the new
    file's ENOSPC was what every open raised, which hid the corruption."""
    path = Path(_crashed_with_ten_entries(root))
    data = bytearray(path.read_bytes())
    data[FILE_HEADER.size + 30] ^= 0xFF  # inside the first batch's append record
    path.write_bytes(bytes(data))
    _append(str(path), _record(("b", "", 99)))  # a later batch began: damage, not a torn tail
    if disk == "full":

        def full(self: WalWriter, seq: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(WalWriter, "_open_file", full)
    files = _wal_files(root)
    for _ in range(3):  # three starts of the node
        with pytest.raises(LogCorruptionError):
            WalLog.open(root / "kv.1")
        stop_wal_writers(root)
    assert _wal_files(root) == files


def _offsets(data: bytes) -> list[tuple[int, tuple[Any, ...]]]:
    """``(offset, op)`` of every record of a WAL file's image, up to its first bad one."""
    pos, found = FILE_HEADER.size, []
    for op in _scan(data, FILE_HEADER.size)[0]:
        found.append((pos, op))
        pos += RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, pos)[0]
    return found


def _flip_inside(path: Path, at: int) -> None:
    """Damage the record at offset ``at`` of the file at ``path``: one byte of its payload."""
    data = bytearray(path.read_bytes())
    data[at + RECORD_HEADER.size + 3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_power_loss_inside_a_batch_is_a_torn_tail_whatever_pages_reached_the_disk(
    root: Path,
) -> None:
    """The WAL overwrites zeros in place, so after a power loss the pages of the batch being
    written can have reached the disk in any order: valid records can follow a page that did
    not (still zeros). Whatever pages arrived, the node starts with every acknowledged entry,
    and each partition's unacknowledged append is whole or absent; damage to a batch made
    durable before is still corruption."""
    crashed, keys = root / "crashed", [f"kv.{p}" for p in range(6)]
    logs = [WalLog.open(crashed / key) for key in keys]
    for log in logs:
        log.append(1, _entries(1, 5))
    for log in logs:
        log.sync()
    writer = logs[0]._writer
    path, synced = Path(writer._path), writer._size
    before = path.read_bytes()
    # The batch in flight: one append of about 2 KiB per partition, its records in 3-4 pages.
    flying = [Entry(1, f"b{p}", ("write", "t", "b", bytes([65 + p]) * 2000)) for p in range(6)]
    ops = [("a", key, 6, _raw([entry])) for key, entry in zip(keys, flying, strict=True)]
    writer._write([wal_module._payload(op) for op in ops], [])
    after = path.read_bytes()
    _crash(logs[0])
    assert after[:synced] == before[:synced] and len(before) == len(after)
    first = synced // wal_module.PAGE * wal_module.PAGE
    pages = -(-(writer._size - first) // wal_module.PAGE)
    assert pages >= 3
    arrived = 0
    for k, mask in enumerate(itertools.product((False, True), repeat=pages)):
        image = bytearray(after)
        for i, new in enumerate(mask):
            if not new:  # this page kept its old bytes (zeros after the synced records)
                lo = first + i * wal_module.PAGE
                image[lo : lo + wal_module.PAGE] = before[lo : lo + wal_module.PAGE]
        trial = root / f"trial{k}"
        shutil.copytree(crashed, trial)
        (trial / "wal" / path.name).write_bytes(bytes(image))
        opened = [WalLog.open(trial / key) for key in keys]
        for log, entry in zip(opened, flying, strict=True):
            assert [log.get(i) for i in range(1, 6)] == _entries(1, 5), mask
            assert log.last_index() in (5, 6), mask
            if log.last_index() == 6:
                assert log.get(6) == entry, mask
                arrived += 1
        _crash(opened[0])
    assert arrived > 0  # some trials kept records of the batch in flight
    # Damage to a durable batch, the batch after it whole: corruption, not a torn tail.
    damaged = root / "damaged"
    shutil.copytree(crashed, damaged)
    (damaged / "wal" / path.name).write_bytes(after)
    at = next(at for at, op in _offsets(after) if op[0] == "a" and op[1] == "kv.0")
    _flip_inside(damaged / "wal" / path.name, at)
    with pytest.raises(LogCorruptionError):
        WalLog.open(damaged / "kv.0")


def test_zeros_after_the_records_end_every_file_but_damage_before_them_is_corruption(
    root: Path,
) -> None:
    crashed = root / "crashed"
    log = WalLog.open(crashed / "kv.1", max_file_bytes=2000)
    for i in range(1, 150, 3):
        log.append(i, _entries(i, 3))
        log.sync()
    closed = crashed / "wal" / _wal_files(crashed)[-2]
    _crash(log)
    data = closed.read_bytes()
    end = _scan(data, FILE_HEADER.size)[1]
    assert 0 < end < len(data) and data[end:] == bytes(len(data) - end)  # zeros after records
    shutil.copytree(crashed, root / "damaged")
    log = WalLog.open(crashed / "kv.1")
    assert [log.get(i) for i in range(1, 151)] == _entries(1, 150)
    _crash(log)
    damaged, offset = root / "damaged" / "wal" / closed.name, _offsets(data)[-1][0]
    _flip_inside(damaged, offset)
    with pytest.raises(LogCorruptionError) as error:
        WalLog.open(root / "damaged" / "kv.1")
    # Reported as the damage it is (a bad record in an older file, never a torn tail to cut),
    # not only through the gap the next file's records would show after such a cut.
    assert (error.value.path, error.value.offset) == (str(damaged), offset)


def test_damage_to_the_last_record_of_an_older_file_is_corruption_even_with_no_gap_after(
    root: Path,
) -> None:
    """Only the newest file can have a torn tail: every older one was complete and synced
    before the writer moved on. A bad record there is corruption, even when it is the older
    file's last record and no later record of its partition shows a gap; cut as a torn tail,
    it would silently drop synced (acknowledged) entries."""
    log1 = WalLog.open(root / "kv.1", max_file_bytes=2000)
    log2 = WalLog.open(root / "kv.2", max_file_bytes=2000)
    log2.append(1, _entries(1, 3))
    log2.sync()
    i = 1
    while log1._writer._size + 1000 < 2000:
        log1.append(i, _entries(i, 3))
        log1.sync()
        i += 3
    log2.append(4, _entries(4, 60))  # crosses the file size: the file's last record
    log2.sync()
    log1.append(i, _entries(i, 3))  # goes to a new file; kv.2 writes nothing after entry 63
    log1.sync()
    _crash(log1)
    files = _wal_files(root)
    assert len(files) == 2, files
    older = root / "wal" / files[0]
    offset, op = _offsets(older.read_bytes())[-1]
    assert op[:3] == ("a", "kv.2", 4), op[:3]
    _flip_inside(older, offset)
    with pytest.raises(LogCorruptionError) as error:
        reopened = WalLog.open(root / "kv.2")
        pytest.fail(f"opened silently: kv.2 ends at {reopened.last_index()} (synced: 63)")
    assert (error.value.path, error.value.offset) == (str(older), offset)


def test_a_file_of_the_append_only_format_keeps_its_own_recovery_rule(root: Path) -> None:
    """Files written before preallocation (``MAGIC_V1``: appended, no batch markers) are read;
    a bad record followed by valid ones to the end is corruption there (no marker needed), and
    a torn end is cut. The node then writes new files in the zero-filled format."""
    path = Path(_crashed_with_ten_entries(root))
    data = path.read_bytes()
    seq = FILE_HEADER.unpack_from(data)[1]
    records = [_record(op) for op in _scan(data, FILE_HEADER.size)[0] if op[0] != "b"]
    later = _record(("a", "kv.1", 11, _raw(_entries(11, 2))))
    v1 = FILE_HEADER.pack(MAGIC_V1, seq) + b"".join(records)
    shutil.copytree(root, root / "damaged")
    path.write_bytes(v1 + later + b"\x40\x00\x00")  # a torn end after entry 12
    log = WalLog.open(root / "kv.1")
    assert [log.get(i) for i in range(1, 13)] == _entries(1, 12)
    assert Path(log._writer._path).read_bytes()[:8] == MAGIC
    _crash(log)
    damaged = root / "damaged" / "wal" / path.name
    damaged.write_bytes(v1 + later)
    _flip_inside(damaged, _offsets(v1)[-1][0])  # entries 1-10; entries 11-12 follow intact
    with pytest.raises(LogCorruptionError):
        WalLog.open(root / "damaged" / "kv.1")


@pytest.mark.parametrize("ahead", [0, 8192])
def test_the_zeros_ahead_of_the_records_follow_the_setting(root: Path, ahead: int) -> None:
    settings = Settings().with_overrides(raft_wal_preallocate_bytes=ahead)
    log = WalLog.open(root / "kv.1", settings)
    log.append(1, _entries(1, 10))
    log.sync()
    writer = log._writer
    zeros = os.path.getsize(writer._path) - writer._size
    assert zeros == 0 if ahead == 0 else 0 < zeros <= ahead + wal_module.PAGE
    _crash(log)
    log = WalLog.open(root / "kv.1", settings)
    assert [log.get(i) for i in range(1, 11)] == _entries(1, 10)


def test_rotation_deletes_old_files_and_keeps_every_partitions_live_log(root: Path) -> None:
    idle = WalLog.open(root / "kv.2", max_file_bytes=2000)
    idle.append(1, _entries(1, 5))
    idle.sync()
    busy = WalLog.open(root / "kv.1")
    for i in range(1, 400):
        busy.append(i, _entries(i, 1))
        busy.sync()
        if i % 50 == 0:
            busy.trim(i - 10)
    files = [n for n in os.listdir(root / "wal") if n.endswith(".wal")]
    assert len(files) <= 2
    _crash(busy)
    idle = WalLog.open(root / "kv.2")
    assert idle.entries(1, 5, 100, 1 << 30) == _entries(1, 5)
    busy = WalLog.open(root / "kv.1")
    assert busy.last_index() == 399 and busy.first_index() <= 390


def _wal_files(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root / "wal") if n.endswith(".wal"))


def _checkpoints_of(log: WalLog) -> list[int]:
    """Record the sizes of the checkpoints rotation makes ``log`` write (0: not needed)."""
    sizes: list[int] = []
    real = log.checkpoint_if_needed

    def spy(pin: int) -> tuple[int, int]:
        ticket, size = real(pin)
        sizes.append(size)
        return ticket, size

    log.checkpoint_if_needed = spy  # type: ignore[method-assign]
    return sizes


@pytest.mark.parametrize("keep_files", [0, 1, 2])
def test_rotation_keeps_recent_files_instead_of_rewriting_busy_live_logs(
    root: Path, keep_files: int
) -> None:
    """A busy partition that trims as it goes has left a closed file behind within a file
    or two of appends: rotation keeps the newest ``keep_files`` closed files instead of
    checkpointing it (a rewrite of its whole live log per rotation), deletes them once
    nobody needs them, and checkpoints only the idle partition, whose entries would
    otherwise pin an old file forever. Nothing is lost across a crash either way."""
    idle = WalLog.open(root / "kv.2", max_file_bytes=2000, keep_files=keep_files)
    idle.append(1, _entries(1, 5))
    idle.sync()
    busy = WalLog.open(root / "kv.1")
    busy_checkpoints = _checkpoints_of(busy)
    idle_checkpoints = _checkpoints_of(idle)
    most_files = 0
    for i in range(1, 600):
        busy.append(i, _entries(i, 1))
        busy.sync()
        if i % 5 == 0:
            busy.trim(i - 3)  # a live log of a few entries: far less than a file
        most_files = max(most_files, len(_wal_files(root)))
    writer = busy._writer
    assert writer.status()["wal_checkpointed_bytes"] > 0
    assert any(idle_checkpoints)  # the idle partition's file expired: carried forward
    if keep_files == 0:
        assert sum(1 for size in busy_checkpoints if size) >= 10
    else:
        assert not any(busy_checkpoints)
    # The active file, the kept ones, and an expired one until its deletion is durable.
    assert most_files <= keep_files + 2
    _crash(busy)
    idle = WalLog.open(root / "kv.2")
    assert idle.entries(1, 5, 100, 1 << 30) == _entries(1, 5)
    busy = WalLog.open(root / "kv.1")
    assert busy.last_index() == 599 and busy.first_index() <= 596
    assert busy.entries(596, 599, 100, 1 << 30) == _entries(596, 4)


def test_a_kept_file_a_lagging_partition_still_needs_is_checkpointed_once_it_expires(
    root: Path,
) -> None:
    """A partition that keeps a long live log (a lagging follower's entries) still needs the
    kept file after the grace: it is checkpointed then, and survives a crash."""
    slow = WalLog.open(root / "kv.2", max_file_bytes=1500, keep_files=1)
    slow_checkpoints = _checkpoints_of(slow)
    busy = WalLog.open(root / "kv.1")
    slow_next = 1
    for i in range(1, 300):
        busy.append(i, _entries(i, 1))
        busy.sync()
        busy.trim(i)
        if i % 20 == 0:  # never trimmed: its whole log stays live
            slow.append(slow_next, _entries(slow_next, 2))
            slow.sync()
            slow_next += 2
    assert sum(1 for size in slow_checkpoints if size) >= 2
    assert len(_wal_files(root)) <= 3
    _crash(busy)
    slow = WalLog.open(root / "kv.2")
    assert slow.entries(1, slow_next - 1, 1000, 1 << 30) == _entries(1, slow_next - 1)


def test_a_kept_file_no_partition_needs_is_deleted_before_it_expires(root: Path) -> None:
    """With two kept files, the older one is usually no longer needed by the time the next
    rotation looks at it (the busy partition trimmed past it): it goes then, not a rotation
    later, so the directory settles at the active file and the one its live log reaches."""
    busy = WalLog.open(root / "kv.1", max_file_bytes=2000, keep_files=2)
    for i in range(1, 400):
        busy.append(i, _entries(i, 1))
        busy.sync()
        busy.trim(i - 2)
    # The writer deletes after the fsync that makes the rotation durable, on its own thread:
    # wait for the directory to settle (kept until expiry it would stay at three files).
    deadline = time.monotonic() + 5.0
    while len(_wal_files(root)) > 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_wal_files(root)) <= 2


def test_rotation_deletes_only_a_prefix_of_the_closed_files(root: Path) -> None:
    """A kept file nobody needs is not deleted while an older one stays: a newer file can
    hold a partition's truncate or trim record (which pins nothing) that replaying the older
    file without it would undo."""
    log = WalLog.open(root / "kv.1", keep_files=2)
    log.append(1, _entries(1, 5))
    log.sync()
    writer = log._writer
    paths = [str(root / "wal" / f"old{n}.wal") for n in (1, 2, 3)]
    for path in paths:
        Path(path).write_bytes(b"")
    # kv.1 (first index 1) needs the first two files; nobody still open needs the third.
    writer._old = [(paths[0], {"kv.1": 2}), (paths[1], {"kv.1": 5}), (paths[2], {"gone": 9})]
    writer._rotate()
    assert writer._pending_delete is not None
    assert writer._pending_delete[1] == [paths[0]]
    assert [path for path, _ in writer._old] == paths[1:]
    log.append(6, _entries(6, 1))
    log.sync()  # the checkpoint of kv.1 is durable: the expired file goes
    deadline = time.monotonic() + 5.0
    while os.path.exists(paths[0]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(paths[0]) and os.path.exists(paths[2])


def test_a_closed_partitions_log_is_carried_forward_only_while_it_needs_an_expiring_file(
    root: Path,
) -> None:
    """A closed partition's log stays in the writer; rotation rewrites it into the new file
    only when a file it still needs expires (its first index at or below the file's pin),
    as it does for an open partition."""
    log = WalLog.open(root / "kv.1", keep_files=0)
    closed = WalLog.open(root / "kv.9")
    closed.append(1, _entries(1, 5))
    closed.sync()
    closed.trim(4)
    closed.close()  # carried in the writer: (4, entries 4..5)
    writer = log._writer
    path = str(root / "wal" / "old1.wal")
    Path(path).write_bytes(b"")
    writer._old = [(path, {"kv.9": 3})]  # kv.9 trimmed past what it wrote there
    writer._rotate()
    assert writer.checkpointed_bytes == 0
    writer._old = [(path, {"kv.9": 4})]  # still holds an entry it wrote there
    writer._rotate()
    assert writer.checkpointed_bytes > 0
    log.sync()
    _crash(log)
    reopened = WalLog.open(root / "kv.9")
    assert reopened.entries(4, 5, 100, 1 << 30) == _entries(4, 2)


def test_keep_files_must_not_be_negative(root: Path) -> None:
    with pytest.raises(ValueError, match="keep_files"):
        WalWriter(str(root / "wal"), keep_files=-1)


def test_a_failed_write_refuses_further_writes(root: Path) -> None:
    log = WalLog.open(root / "kv.1")
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(28, "No space left on device")

    os.fdatasync = failing  # type: ignore[assignment]
    try:
        log.append(1, _entries(1, 1))
        with pytest.raises(LogWriteError):
            log.sync()
    finally:
        os.fdatasync = real
    with pytest.raises(LogWriteError):
        log.append(2, _entries(2, 1))
    assert not log.can_append(1, Priority.HIGH)


def test_restarts_compact_the_wal_into_one_file(root: Path) -> None:
    for _ in range(5):
        log = WalLog.open(root / "kv.1")
        start = log.last_index() + 1
        log.append(start, _entries(start, 3))
        log.sync()
        _crash(log)
    files = [n for n in os.listdir(root / "wal") if n.endswith(".wal")]
    assert len(files) == 1
    log = WalLog.open(root / "kv.1")
    assert log.last_index() == 15 and log.entries(1, 15, 100, 1 << 30) == _entries(1, 15)


def test_a_wiped_partition_directory_drops_its_log_in_the_wal(root: Path) -> None:
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 3))
    log.sync()
    other = WalLog.open(root / "kv.2")
    other.append(1, _entries(1, 2))
    other.sync()
    _crash(log)
    (root / "kv.1" / "wal-log").unlink()  # the directory was moved away and recreated
    log = WalLog.open(root / "kv.1")
    assert (log.first_index(), log.last_index()) == (0, 0)
    other = WalLog.open(root / "kv.2")
    assert other.last_index() == 2


def test_a_partition_whose_log_is_gone_from_the_wal_is_refused_not_opened_empty(
    root: Path,
) -> None:
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 3))
    log.sync()
    _crash(log)
    shutil.rmtree(root / "wal")  # an operator removed (or replaced) the node's WAL
    with pytest.raises(LogMissingError, match=r"kv\.1 was written to this WAL"):
        WalLog.open(root / "kv.1")
    # A new partition opens in the same WAL; moving the lost one's directory away lets it be
    # rebuilt as a fresh replica.
    assert WalLog.open(root / "kv.2").last_index() == 0
    shutil.move(root / "kv.1", root / "kv.1.lost")
    assert WalLog.open(root / "kv.1").last_index() == 0


def test_a_full_disk_stalls_writes_and_they_resume_by_themselves(root: Path) -> None:
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 2))
    log.sync()
    real = os.write
    full = threading.Event()
    full.set()

    def write(fd: int, data: Any) -> int:
        if full.is_set() and fd == log._writer._fd:
            real(fd, bytes(data)[:5])  # a partial write, then no room
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    os.write = write  # type: ignore[assignment]
    try:
        log.append(3, _entries(3, 2))
        done = threading.Event()
        t = threading.Thread(target=lambda: (log.sync(), done.set()))
        t.start()
        assert not done.wait(0.5)  # not acknowledged while there is no room
        assert log._writer.stalled is not None and not log.can_append(1, Priority.HIGH)
        full.clear()  # room again
        assert done.wait(10)
        t.join()
    finally:
        os.write = real
    assert log.can_append(1, Priority.HIGH)
    _crash(log)
    log = WalLog.open(root / "kv.1")  # the partial write was cut back: no corruption
    assert log.entries(1, 4, 100, 1 << 30) == _entries(1, 2) + _entries(3, 2)


def test_group_commits_are_timed_into_the_fsync_histogram(root: Path) -> None:
    from waraft.log.provider import FSYNC_METRIC
    from waraft.services import metrics

    log = WalLog.open(root / "kv.1")
    directory = log._writer.directory
    for i in range(1, 4):
        log.append(i, _entries(i, 1))
        log.sync()
    snap = metrics.histograms(FSYNC_METRIC)[directory]
    assert snap["count"] == log._writer.fsyncs >= 3 and snap["sum"] > 0
    assert log.status()["bytes"] > 0  # the partition's entries, encoded
    log.close()
    assert directory not in metrics.histograms(FSYNC_METRIC)  # released with the writer


def test_sync_within_gives_up_on_a_stalled_wal_and_completes_later(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 2))
    assert log.sync_within(0.0)  # not stalled: an ordinary sync
    full = threading.Event()
    full.set()

    def fault(directory: str) -> OSError | None:
        return OSError(errno.ENOSPC, "No space left on device") if full.is_set() else None

    monkeypatch.setattr(WalWriter, "fault", fault)
    log.append(3, _entries(3, 2))
    started = time.monotonic()
    assert not log.sync_within(0.2)  # stalled: gives up instead of blocking
    assert time.monotonic() - started < 5.0
    assert not log.sync_within(0.0)
    full.clear()
    deadline = time.monotonic() + 10
    while not log.sync_within(0.0):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _crash(log)
    log = WalLog.open(root / "kv.1")
    assert log.entries(1, 4, 100, 1 << 30) == _entries(1, 2) + _entries(3, 2)


def test_truncate_and_reset_do_not_wait_for_a_stalled_wal(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower's truncate (or a snapshot's reset) returned only after its fsync: on a full
    disk that blocked the partition's server for as long as the disk stayed full, so it served
    no read. They queue their record like an append; the next sync makes them durable."""
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 6))
    log.sync()
    other = WalLog.open(root / "kv.2")
    other.append(1, _entries(1, 3))
    other.sync()
    full = threading.Event()
    full.set()

    def fault(directory: str) -> OSError | None:
        return OSError(errno.ENOSPC, "No space left on device") if full.is_set() else None

    monkeypatch.setattr(WalWriter, "fault", fault)

    def changes() -> None:
        log.truncate(5)
        log.append(5, _entries(5, 1, term=2))
        other.reset(LogPos(10, 3))

    worker = threading.Thread(target=changes, daemon=True)
    worker.start()
    worker.join(5.0)
    assert not worker.is_alive(), "truncate or reset waited for the full disk"
    assert not log.sync_within(0.2)  # stalled: nothing acknowledged yet
    assert (log.last_index(), log.term(5)) == (5, 2)
    full.clear()
    deadline = time.monotonic() + 10
    while not (log.sync_within(0.0) and other.sync_within(0.0)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _crash(log)
    log = WalLog.open(root / "kv.1")
    assert log.entries(1, 5, 100, 1 << 30) == _entries(1, 4) + _entries(5, 1, term=2)
    other = WalLog.open(root / "kv.2")
    assert (other.first_index(), other.last_index(), other.term(10)) == (10, 10, 3)


class _Syncer(otp.Process):
    """Appends to a WAL log and waits for its fsync, like a partition server does."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        log, index = request
        log.append(index, _entries(index, 1))
        return log.sync_within(5.0)


class _Answerer(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return "pong"


@pytest.fixture
def fsync_gate(monkeypatch: pytest.MonkeyPatch) -> Callable[[], threading.Event]:
    """Once the returned function is called, every ``fdatasync`` waits (at most 10 s) until the
    event it returns is set. Called after the log is open: opening syncs too (the recovery's
    compaction), and a gate held there cost each test 10 s per sync for nothing."""
    gate = threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        gate.wait(10)
        real(fd)

    def hold() -> threading.Event:
        monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
        return gate

    return hold


def test_a_scheduled_process_waiting_for_an_fsync_yields_its_scheduler(
    root: Path, fsync_gate: Callable[[], threading.Event]
) -> None:
    """A partition server is scheduled (``WalLog`` does no blocking I/O itself): while its
    sync waits for the WAL's fsync, the other processes of its scheduler thread must run —
    blocking the thread made a node's partitions sync one after another."""
    log = WalLog.open(root / "kv.1")
    gate = fsync_gate()
    node = otp.Node("walsched@t", schedulers=1, process_type=otp.SCHEDULED)
    try:
        syncer = _Syncer.start(node=node)
        other = _Answerer.start(node=node)
        handle = otp.send_request(syncer, (log, 1))
        time.sleep(0.1)  # the syncer is waiting for the fsync the gate holds
        assert otp.call(other, "ping", timeout=2.0) == "pong"
        gate.set()
        assert otp.wait_response(handle, 10) is True
        assert otp.call(syncer, (log, 2), timeout=10) is True  # and again, once synced
    finally:
        gate.set()
        node.stop()
    _crash(log)
    log = WalLog.open(root / "kv.1")
    assert log.entries(1, 2, 100, 1 << 30) == _entries(1, 1) + _entries(2, 1)


class _RecordingSyncer(otp.Process):
    """Appends, waits for the fsync, then records that its handler ran on."""

    def handle_cast(self, msg: Any) -> None:
        log, index, events = msg
        log.append(index, _entries(index, 1))
        events.append("parked")
        log.sync()
        events.append("ran on")


def test_a_server_killed_while_parked_on_an_fsync_stops_there(
    root: Path, fsync_gate: Callable[[], threading.Event]
) -> None:
    """A partition server killed (its supervisor gave up waiting for it) while parked on the
    group commit must not run on when the commit resumes it: its EXIT went out and its next
    incarnation may already be answering in its place. It ran on to its next otp wait."""
    log = WalLog.open(root / "kv.1")
    gate = fsync_gate()
    node = otp.Node("walkilled@t", schedulers=1, process_type=otp.SCHEDULED)
    events: list[str] = []
    try:
        pid = _RecordingSyncer.start(node=node)
        otp.cast(pid, (log, 1, events))
        deadline = time.monotonic() + 10
        while not (events and log._writer._parked):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        otp.kill(pid)
        gate.set()  # the commit completes and resumes it
        assert otp.sched.wait_loop_end(pid, 10)
        assert events == ["parked"]
        assert log.sync_within(5.0)  # the batch itself is durable all the same
    finally:
        gate.set()
        node.stop()
    log.close()


def test_a_scheduled_wait_for_an_fsync_sets_no_timer_unless_stalled(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every partition waits for the WAL once a round: a timeout there cost a timer set and
    cancelled each time, for nothing, since every change a waiter must see wakes it."""
    from waraft.otp import sched, timer

    log = WalLog.open(root / "kv.1")
    real_fdatasync, real_call_later = os.fdatasync, timer.call_later
    timed_waits: list[float] = []

    def slow_fdatasync(fd: int) -> None:
        time.sleep(0.02)  # so that each sync below really waits
        real_fdatasync(fd)

    def counting_call_later(delay: float, fn: Any, *args: Any) -> Any:
        if isinstance(getattr(fn, "__self__", None), sched._GreenWaker):
            timed_waits.append(delay)
        return real_call_later(delay, fn, *args)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    monkeypatch.setattr(timer, "call_later", counting_call_later)
    node = otp.Node("walnotimer@t", schedulers=1, process_type=otp.SCHEDULED)
    try:
        syncer = _Syncer.start(node=node)
        for index in range(1, 6):
            assert otp.call(syncer, (log, index), timeout=10) is True
        assert log._writer.fsyncs >= 5
        assert timed_waits == []
    finally:
        node.stop()
    log.close()


def test_a_large_batch_is_written_without_a_second_copy_of_it(root: Path) -> None:
    """A rotation queues every partition's checkpoint at once; writing that batch must not
    join it into one string (a second copy of the node's whole retained log in memory)."""
    import tracemalloc

    from waraft.log import wal

    writer = WalWriter.acquire(str(root / "wal"))
    try:
        value = b"x" * (1 << 20)
        ops = [("c", f"p{i}", 1, [(1, None, value, None)]) for i in range(32)]
        batch = [wal._payload(op) for op in ops]  # the queue holds payloads; _write frames them
        records = [wal._record(("b", "", writer.batches))] + [wal._record(op) for op in ops]
        size = writer._size
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            writer._write(batch, [])
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert writer._size == size + sum(len(r) for r in records)
        assert peak < wal.DEFAULT_MAX_BATCH_BYTES + (2 << 20)  # a chunk, not the 32 MiB batch
        with open(writer._path, "rb") as f:
            data = f.read()
        assert data[size : writer._size] == b"".join(records)  # the batch's marker first
        assert data[writer._size :] == bytes(len(data) - writer._size)  # then zeros
    finally:
        writer.release()


@pytest.mark.parametrize("count", [1, 15, 16, 17, 65535, 65536])
def test_an_append_record_built_from_packed_entries_is_the_plain_record(count: int) -> None:
    """An append encodes each entry once and builds its record from those bytes: the record
    must be the one ``_record`` writes (recovery decodes both alike), whatever the count (the
    msgpack array header changes size at 16 and 65536 items)."""
    entries = [
        Entry(3, f"k{i}", ("write", "t", f"k{i}", "v" * (i % 7)), None if i % 2 else ("l", i))
        for i in range(count)
    ]
    built = _frame(_append_payload(_append_prefix("kv.7"), 1 << 33, [packb(e) for e in entries]))
    assert built == _record(("a", "kv.7", 1 << 33, _raw(entries)))
    ops, bad_at, _ = _scan(built, 0)
    assert bad_at == -1
    logs: dict[str, tuple[int, list[Entry]]] = {}
    _replay(logs, ops[0])
    assert logs == {"kv.7": (1 << 33, entries)}


def test_a_stopped_writer_fails_later_records_instead_of_waiting_forever(root: Path) -> None:
    """What was queued before the stop is written; a record submitted afterwards is refused,
    and a wait for a ticket the stopped thread never wrote raises (no thread is left to
    make it durable, so waiting would never end)."""
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 3))
    log.sync()
    writer = log._writer
    ticket = writer._queued + 1  # the next record's ticket: it will never be written
    _crash(log)
    with pytest.raises(LogWriteError):
        writer.submit(b"x", "kv.1", -1)
    outcome: list[object] = []

    def waiter() -> None:
        try:
            outcome.append(writer.wait(ticket))
        except LogWriteError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    thread.join(5.0)
    assert not thread.is_alive(), "a wait on a stopped writer never returned"
    assert isinstance(outcome[0], LogWriteError)
    reopened = WalLog.open(root / "kv.1")  # the queued records were written
    assert reopened.last_index() == 3
    reopened.close()


def test_appends_between_syncs_are_queued_as_one_record_in_order(root: Path) -> None:
    """A partition's contiguous appends are held and queued as one record at its sync; a
    truncate queues the held ones first, so replay rebuilds the same log."""
    log = WalLog.open(root / "kv.1")
    writer = log._writer
    log.sync()
    before = writer._queued
    for i in range(1, 7):
        log.append(i, _entries(i, 1))
    assert writer._queued == before  # held: nothing queued before the sync
    log.sync()
    assert writer._queued == before + 1  # six appends, one record
    log.append(7, _entries(7, 2))
    log.append(9, _entries(9, 1))
    assert writer._queued == before + 1
    log.truncate(8)  # queues the held 7-9 as one record, then the truncate; syncs
    assert writer._queued == before + 3
    log.append(8, _entries(8, 1, term=2))
    log.append(9, _entries(9, 1, term=3))
    log.sync()
    assert writer._queued == before + 4
    expected = _entries(1, 6) + _entries(7, 1) + _entries(8, 1, term=2) + _entries(9, 1, term=3)
    assert log.entries(1, 9, 100, 1 << 30) == expected
    _crash(log)
    log = WalLog.open(root / "kv.1")
    assert log.last_index() == 9 and log.entries(1, 9, 100, 1 << 30) == expected


def test_held_appends_are_not_acknowledged_by_a_broken_writer(root: Path) -> None:
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 1))
    log.sync()
    log.append(2, _entries(2, 1))  # held
    log._writer.broken = "injected"
    with pytest.raises(LogWriteError):
        log.sync()
    with pytest.raises(LogWriteError):
        log.sync_within(0.0)
    log._writer.broken = None  # let the fixture stop it cleanly


def test_held_appends_survive_a_rotation_that_checkpoints_their_partition(root: Path) -> None:
    """Rotation checkpoints a partition that appended into an old file; its held appends are
    queued before that checkpoint (they came first), and both survive a crash after the sync."""
    held = WalLog.open(root / "kv.2", max_file_bytes=2000)
    held.append(1, _entries(1, 5))
    held.sync()
    held.append(6, _entries(6, 2))  # held while the other partition rotates the WAL
    busy = WalLog.open(root / "kv.1")
    for i in range(1, 200):
        busy.append(i, _entries(i, 1))
        busy.sync()
    files = [n for n in os.listdir(root / "wal") if n.endswith(".wal")]
    assert len(files) <= 2
    held.append(8, _entries(8, 1))
    held.sync()
    _crash(busy)
    held = WalLog.open(root / "kv.2")
    assert held.entries(1, 8, 100, 1 << 30) == _entries(1, 8)


def test_held_appends_are_queued_before_a_reset_or_a_trim(root: Path) -> None:
    """Replay takes an append record that starts at or below a partition's first index as its
    whole log, so held appends queued after a reset (or a trim) would bring back the entries
    the reset dropped: they are queued first."""
    log = WalLog.open(root / "kv.1")
    log.append(1, _entries(1, 3))
    log.append(4, _entries(4, 3))  # held
    log.trim(3)
    log.append(7, _entries(7, 1))  # held
    log.reset(LogPos(20, 5))  # syncs
    assert (log.first_index(), log.last_index()) == (20, 20)
    _crash(log)
    log = WalLog.open(root / "kv.1")
    assert (log.first_index(), log.last_index()) == (20, 20)
    assert log.term(20) == 5


def test_held_appends_of_a_closed_log_reach_the_disk(root: Path) -> None:
    """Closing a log queues its held appends: the writer carries the closed log forward (a
    reopen in the same process gets it from there), so the disk must hold the same entries,
    or a crash after the next fsync would lose what a reopened log still showed."""
    log = WalLog.open(root / "kv.1")
    other = WalLog.open(root / "kv.2")  # keeps the node's writer open after the close
    log.append(1, _entries(1, 2))
    log.sync()
    log.append(3, _entries(3, 2))  # held: no sync before the close
    log.close()
    other.append(1, _entries(1, 1))
    other.sync()  # a later fsync of the node
    _crash(other)
    reopened = WalLog.open(root / "kv.1")
    assert reopened.entries(1, 4, 100, 1 << 30) == _entries(1, 4)
    reopened.close()


def test_records_are_framed_on_the_wal_thread(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CRC of a record is computed by the WAL's I/O thread, never by the partition's
    thread: ``zlib.crc32`` lets go of the GIL on more than 5 KiB, and a scheduler thread
    that let go of it stalled until it got it back, with every process on it."""
    from waraft.log import wal

    callers: list[str] = []
    real = zlib.crc32

    class _Zlib:
        @staticmethod
        def crc32(data: bytes, value: int = 0) -> int:
            callers.append(threading.current_thread().name)
            return real(data, value)

    log = WalLog.open(root / "kv.1")
    monkeypatch.setattr(wal, "zlib", _Zlib)
    log.append(1, [Entry(1, "k", ("write", "t", "k", "v" * 8192))])
    log.append(2, _entries(2, 3))
    log.truncate(4)  # a truncate record too
    log.sync()
    assert callers and all(name.startswith("wal-") for name in callers), callers
    monkeypatch.undo()
    _crash(log)
    log = WalLog.open(root / "kv.1")
    assert log.last_index() == 3 and log.term(1) == 1


@pytest.mark.parametrize("then", ["kill9_before_old_files_are_deleted", "full_disk_at_compaction"])
def test_a_file_created_without_its_header_is_removed_not_kept(
    root: Path, then: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill -9 inside ``_open_file`` leaves a file without its header. Kept (cut to 0
    bytes), it sat in the middle once a later start kept the old files, and the start after
    that reported the whole node corrupt."""
    _crashed_with_ten_entries(root)
    newest = int(max(_wal_files(root))[: -len(".wal")])
    (root / "wal" / f"{newest + 1:020d}.wal").write_bytes(MAGIC[:5])  # a torn header
    if then == "kill9_before_old_files_are_deleted":

        def killed(self: WalWriter) -> None:
            raise KeyboardInterrupt  # stands for the kill -9 after the compaction's fsync

        monkeypatch.setattr(WalWriter, "_drop_old_files", killed)
        with pytest.raises(KeyboardInterrupt):
            WalLog.open(root / "kv.1")
    else:

        def full(self: WalWriter) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(WalWriter, "_compact_recovered", full)
        _crash(WalLog.open(root / "kv.1"))
    monkeypatch.undo()
    log = WalLog.open(root / "kv.1")
    assert log.last_index() == 10 and log.get(10) == _entries(10, 1)[0]
    assert all(os.path.getsize(root / "wal" / name) > 0 for name in _wal_files(root))


@pytest.mark.parametrize(
    "header", ["flipped", "newer format", "zeros over records", "zeros", "empty"]
)
def test_a_newest_file_whose_header_is_damaged_is_corruption_not_deleted(
    root: Path, header: str
) -> None:
    """``_open_file`` makes a file's header durable before any zeros or records go in, so only
    a header that is missing (short, or a header's worth of zeros) means nothing was ever
    written there. A damaged header, or one of a format this version does not know, over
    acknowledged records must refuse the start: the check that ran before read the zeros ahead
    of the records as the end of a torn chain and deleted the file with every record in it."""
    path = Path(_crashed_with_ten_entries(root))
    data = bytearray(path.read_bytes())
    if header == "flipped":
        data[3] ^= 0x20
    elif header == "newer format":
        data[:8] = b"WRAFTWL3"
    elif header == "zeros over records":
        data = bytearray(len(data))
    elif header == "zeros":
        data = bytearray(FILE_HEADER.size)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    if header in ("zeros", "empty"):
        # Stands for a file created at the crash: the older files hold the log (none here).
        with pytest.raises(LogMissingError):
            WalLog.open(root / "kv.1")
        assert not path.exists()
        return
    for _ in range(2):  # every open of the node's logs, and the file is left as it was
        with pytest.raises(LogCorruptionError, match="bad file header"):
            WalLog.open(root / "kv.1")
        assert path.read_bytes() == bytes(data)


def test_recovery_makes_every_file_durable_before_it_counts(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill -9 can leave a batch in the page cache that was never fsynced. Replayed as it is,
    its entries count as durable (a follower reports them as matched) though a power loss can
    still drop them; so every recovered file is synced before the new file is started."""
    log = WalLog.open(root / "kv.1", max_file_bytes=600, preallocate_bytes=0, keep_files=4)
    for first in range(1, 60, 10):
        log.append(first, _entries(first, 10))
        log.sync()
    _crash(log)
    before = {str(root / "wal" / name) for name in _wal_files(root)}
    assert len(before) > 1
    calls: list[tuple[str, str]] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def traced(fd: int, name: str = name, real: Any = real) -> None:
            calls.append((name, os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)

        monkeypatch.setattr(os, name, traced)
    log = WalLog.open(root / "kv.1")
    monkeypatch.undo()
    assert log.last_index() == 60
    new_file = next(
        i for i, (_, path) in enumerate(calls) if path not in before and path.endswith(".wal")
    )
    assert before <= {path for _, path in calls[:new_file]}


def test_a_disk_with_room_for_the_records_but_not_the_zeros_ahead_does_not_stall(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nearly full: the zeros ahead cannot be written, the records still fit. The writer goes
    on writing them past the zeros it has (as without preallocation) instead of stalling until
    ``preallocate_bytes`` are free, and the file recovers whole."""
    log = WalLog.open(root / "kv.1", preallocate_bytes=8192)
    log.append(1, _entries(1, 2))
    log.sync()
    writer = log._writer
    real = os.pwrite
    room = [3000]  # bytes the disk still has for zeros (pwrite is only the zero fill)
    refused: list[int] = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if fd != writer._fd:
            return real(fd, data, offset)
        count = min(len(data), room[0])
        if not count:
            refused.append(offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        room[0] -= count
        return real(fd, bytes(data[:count]), offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    value = "x" * 1000

    def write_batches(first: int, last: int) -> None:
        for at in range(first, last, 4):
            log.append(
                at, [Entry(1, f"k{i}", ("write", "t", f"k{i}", value)) for i in range(at, at + 4)]
            )
            assert log.sync_within(2.0)

    write_batches(3, 43)
    assert refused and writer.stalled is None and log.can_append(1, Priority.HIGH)
    assert os.path.getsize(writer._path) > 8192 + 3000  # the records went past the zeros
    room[0] = 1 << 20  # room again: the zeros ahead come back after the records, not over them
    write_batches(43, 83)
    monkeypatch.undo()
    _crash(log)
    log = WalLog.open(root / "kv.1")
    assert log.last_index() == 82
    assert log.entries(3, 82, 1 << 30, 1 << 30) == [
        Entry(1, f"k{i}", ("write", "t", f"k{i}", value)) for i in range(3, 83)
    ]


@pytest.mark.parametrize("op", [("a", "kv.1", 11), ("r", "kv.1", 11), ("c", "kv.1", 11)])
def test_a_crc_valid_record_of_the_wrong_shape_is_corruption_not_a_crash(
    root: Path, op: tuple[Any, ...]
) -> None:
    path = _crashed_with_ten_entries(root)
    _append(path, _record(op))  # one item short
    with pytest.raises(LogCorruptionError, match="bad WAL record"):
        WalLog.open(root / "kv.1")


def test_a_live_log_larger_than_one_record_is_checkpointed_in_several(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition that cannot trim for long outgrows one record: its checkpoint at rotation
    and at restart is split, instead of killing the WAL's I/O thread (every partition then
    waited in ``sync`` forever) and failing every restart."""
    limit = 20_000
    monkeypatch.setattr(wal_module, "MAX_PAYLOAD", limit)
    options = {"max_file_bytes": 30_000, "keep_files": 0}
    lagging = WalLog.open(root / "kv.1", **options)
    busy = WalLog.open(root / "kv.2", **options)
    big = [Entry(1, f"k{i}", ("write", "t", f"k{i}", "v" * 400)) for i in range(1, 161)]
    for at in range(0, 160, 10):  # each append fits a record, the whole log does not
        lagging.append(at + 1, big[at : at + 10])
        lagging.sync()
    assert lagging.byte_size() > 3 * limit
    checkpoints = _checkpoints_of(lagging)
    for at in range(0, 400, 10):  # rotations: each checkpoints the lagging log
        busy.append(at + 1, _entries(at + 1, 10))
        busy.sync()
    assert max(checkpoints) > limit and lagging._writer.broken is None
    _crash(lagging)
    lagging = WalLog.open(root / "kv.1", **options)
    assert [lagging.get(i) for i in (1, 80, 160)] == [big[0], big[79], big[159]]
    assert lagging.last_index() == 160


class _Killed(BaseException):
    """A kill -9 in the middle of a write (raised past every ``except Exception``)."""


def _big_log(
    root: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[WalLog, list[Entry]]:
    """kv.1 with 160 synced entries, three times one record's size (``MAX_PAYLOAD`` made
    small: its checkpoints are split); the log and its entries."""
    monkeypatch.setattr(wal_module, "MAX_PAYLOAD", 20_000)
    log = WalLog.open(root / "kv.1", **options)
    big = [Entry(1, f"k{i}", ("write", "t", f"k{i}", "v" * 400)) for i in range(1, 161)]
    for at in range(0, 160, 10):
        log.append(at + 1, big[at : at + 10])
        log.sync()  # acknowledged from here on
    return log, big


def test_a_split_checkpoint_cut_short_at_restart_keeps_the_log(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill -9 while the start-up compaction writes a split checkpoint, after its first
    record: the first part alone replaced the log (1..39 of 1..160), and the next start
    compacted that and deleted the older file. It is dropped; the older file has the log."""
    log, big = _big_log(root, monkeypatch)
    _crash(log)

    def dying(self: WalWriter, data: bytes) -> None:
        first = RECORD_HEADER.size + int.from_bytes(data[:4], "little")
        os.write(self._fd, data[:first])  # the "c" record only
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(WalWriter, "_write_all", dying)
        with pytest.raises(_Killed):
            WalLog.open(root / "kv.1")
    log = WalLog.open(root / "kv.1")
    _crash(log)  # this start compacted and deleted the file with the unfinished checkpoint
    log = WalLog.open(root / "kv.1")
    assert (log.first_index(), log.last_index()) == (0, 160)
    assert log.entries(1, 160, 1000, 1 << 30) == big


def test_a_split_checkpoint_cut_short_at_rotation_keeps_the_log(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The I/O thread dies (kill -9) in the batch carrying a rotation's split checkpoint,
    after its first record."""
    options = {"max_file_bytes": 30_000, "keep_files": 0}
    busy = WalLog.open(root / "kv.2", **options)
    lagging, big = _big_log(root, monkeypatch, **options)
    real = WalWriter._write_out
    killed: list[bool] = []
    replaced = _replaced(monkeypatch)

    def dying(self: WalWriter, data: bytes, at: int) -> None:
        ops, pos = _scan(data, 0)[0], 0
        for number, op in enumerate(ops):
            pos += RECORD_HEADER.size + int.from_bytes(data[pos : pos + 4], "little")
            parts = [o for o in ops[number + 1 :] if o[:2] == ("a", "kv.1")]
            if op[:2] == ("c", "kv.1") and parts:  # the first record of a split checkpoint
                real(self, data[:pos], at)
                killed.append(True)
                raise _Killed
        real(self, data, at)

    with monkeypatch.context() as patch:
        patch.setattr(WalWriter, "_write_out", dying)
        for at in range(1, 400, 10):
            busy.append(at, _entries(at, 10))
            with contextlib.suppress(LogWriteError):
                busy.sync()
            if killed:
                break
    assert killed
    # The failed writer is replaced in the background (its durable logs, lagging's among
    # them, move to a writer opened from disk): the kill -9 comes after that, or it would
    # stop one writer while the hand-over registers the other.
    assert replaced.wait(10), "the failed writer was not replaced"
    _crash(lagging)
    lagging = WalLog.open(root / "kv.1", **options)
    assert lagging.last_index() == 160
    assert lagging.entries(1, 160, 1000, 1 << 30) == big


def test_a_split_checkpoint_unfinished_before_the_newest_file_is_corruption(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a crash ends a file inside a checkpoint, and only the newest file: one left
    unfinished in an older file is damage, not something to drop silently."""
    log, big = _big_log(root, monkeypatch)
    _crash(log)
    path = WalLog.open(root / "kv.1")._writer._path
    stop_wal_writers(root)
    raw = Path(path).read_bytes()
    ops = _scan(raw, FILE_HEADER.size)[0]
    assert [op[0] for op in ops].count("c") == 1 and len(ops[0]) == 5  # split in parts
    first = FILE_HEADER.size + RECORD_HEADER.size + int.from_bytes(raw[16:20], "little")
    Path(path).write_bytes(raw[:first])  # its "c" record only
    newer = os.path.join(os.path.dirname(path), f"{int(os.path.basename(path)[:-4]) + 1:020d}.wal")
    Path(newer).write_bytes(FILE_HEADER.pack(MAGIC, 99))
    with pytest.raises(LogCorruptionError, match="split checkpoint"):
        WalLog.open(root / "kv.1")
    assert big


def test_a_checkpoint_split_without_a_part_count_is_read_as_before(root: Path) -> None:
    """Files written before the part count: a ``"c"`` record then ``"a"`` records apply one
    after the other, as they always did."""
    path = _crashed_with_ten_entries(root)
    entries = _entries(1, 14, term=2)
    _append(path, _record(("c", "kv.1", 1, _raw(entries[:6]))))
    _append(path, _record(("a", "kv.1", 7, _raw(entries[6:]))))
    log = WalLog.open(root / "kv.1")
    assert (log.first_index(), log.last_index()) == (1, 14)
    assert log.entries(1, 14, 100, 1 << 30) == entries


def _fail_a_batch(root: Path, monkeypatch: pytest.MonkeyPatch, error: str) -> None:
    """kv.1 syncs 1..5; then its 6..10 and kv.2's 1..3 go in a batch that fails (``error``:
    its ``fdatasync`` or its write gets EIO), refused to both; both partitions close (the way
    out of a broken writer)."""
    a, b = WalLog.open(root / "kv.1"), WalLog.open(root / "kv.2")
    a.append(1, _entries(1, 5))
    a.sync()

    def eio(*args: Any) -> OSError:
        return OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        if error == "fsync":
            patch.setattr(os, "fdatasync", lambda fd: (_ for _ in ()).throw(eio()))
        else:
            patch.setattr(WalWriter, "fault", staticmethod(eio))
        a.append(6, _entries(6, 5))
        b.append(1, _entries(1, 3))
        for log in (a, b):
            with pytest.raises(LogWriteError, match="Input/output error"):
                log.sync_within(5.0)  # not a stall (False): the writer is broken
    assert a._writer.broken is not None and a._writer.stalled is None
    a.close()
    b.close()


@pytest.mark.parametrize("error", ["fsync", "write"])
def test_a_batch_that_failed_is_not_replayed_as_durable_when_the_wal_is_reopened(
    root: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """The failed batch stayed in the file; reopened in the same process, recovery read it
    back from the page cache and its own fsync succeeded (the kernel reports a writeback
    error once): entries refused to every waiter came back as durable. It is cut off when
    the fsync (or the write) fails. An EIO from a write is not a full disk: the writer breaks
    instead of retrying it."""
    _fail_a_batch(root, monkeypatch, error)
    a, b = WalLog.open(root / "kv.1"), WalLog.open(root / "kv.2")
    assert (a.last_index(), b.last_index()) == (5, 0)
    assert a.entries(1, 5, 100, 1 << 30) == _entries(1, 5)


def test_a_failed_batch_that_could_not_be_cut_off_is_cut_by_the_next_open(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut fails too: the next open of the WAL makes it before replaying, or, while it
    cannot, refuses to open (the node needs a restart) rather than replay the batch."""
    with monkeypatch.context() as patch:
        patch.setattr(WalWriter, "_cut_back", lambda self, size: os.ftruncate(-1, size))
        _fail_a_batch(root, monkeypatch, "fsync")
    with monkeypatch.context() as patch:
        patch.setattr(unsynced, "_cut", lambda path, size: os.ftruncate(-1, size))
        with pytest.raises(LogWriteError, match="restart the node"):
            WalLog.open(root / "kv.1")
    a, b = WalLog.open(root / "kv.1"), WalLog.open(root / "kv.2")
    assert (a.last_index(), b.last_index()) == (5, 0)
    assert str(root / "wal") not in unsynced._pending


class _Opener(otp.Process):
    """Opens a partition's WalLog as a log actor does (its init fails with the error)."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        try:
            return WalLog.open(request)
        except Exception as exc:
            return exc


def test_a_failed_open_of_a_new_partition_gives_the_writer_back_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open failed after its log was registered (no room for the marker) and gave back
    the writer's reference but left the log registered; the next open took it over and
    closed it, giving the reference back again: a later close stopped the writer under a
    partition still using it."""
    node = otp.Node("walfresh@t", process_type=otp.SCHEDULED)
    try:
        with node.activate():
            other = otp.call(_Opener.start(), root / "kv.2", 20)
            assert isinstance(other, WalLog)
            writer = other._writer
            with monkeypatch.context() as patch:
                patch.setattr(wal_module, "make_marker", _no_room)
                failed = _Opener.start()
                assert isinstance(otp.call(failed, root / "kv.1", 20), OSError)
                otp.kill(failed)  # the log actor whose init failed is gone
                otp.wait_exit(failed, 10)
            assert (writer.refs, sorted(writer._logs)) == (1, ["kv.2"])
            log = otp.call(_Opener.start(), root / "kv.1", 20)
            assert isinstance(log, WalLog) and writer.refs == 2
        log.close()
        other.append(1, _entries(1, 3))
        other.sync()  # kv.2 is still open: its writer still writes
        assert writer.broken is None and WalWriter._registry[writer.directory] is writer
    finally:
        node.stop()


def _no_room(*args: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_stale_writers_release_leaves_the_registry_and_its_count_alone(root: Path) -> None:
    """A release too many (a bug elsewhere) is refused loudly instead of taking the count
    below zero, and a stopped writer never takes a newer one out of the registry."""
    first = WalLog.open(root / "kv.1")
    stale = first._writer
    first.close()
    second = WalLog.open(root / "kv.1")
    stale.release()  # released more often than acquired
    assert stale.refs == 0
    assert WalWriter._registry[second._writer.directory] is second._writer
    third = WalLog.open(root / "kv.2")  # the same writer, not a second one for the directory
    assert third._writer is second._writer and second._writer.refs == 2


def test_a_new_partition_does_not_wait_without_limit_for_a_stalled_wal(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk stalled the open of a new partition for as long as it lasted, although
    logs still open on a full disk: the open fails after a bounded wait, the log actor
    retries, and the open succeeds once there is room."""
    WalLog.open(root / "kv.1")
    monkeypatch.setattr(wal_module, "FRESH_OPEN_STALL_WAIT", 0.2, raising=False)
    with monkeypatch.context() as patch:
        patch.setattr(
            WalWriter, "fault", staticmethod(lambda directory: OSError(errno.ENOSPC, "full"))
        )
        outcome: list[BaseException] = []

        def fresh() -> None:
            try:
                WalLog.open(root / "kv.2")
            except BaseException as exc:
                outcome.append(exc)

        opener = threading.Thread(target=fresh, daemon=True)
        opener.start()
        opener.join(10)
        assert not opener.is_alive(), "the open still waits for the full disk"
        assert isinstance(outcome[0], LogWriteError) and "stalled" in str(outcome[0])
    log = WalLog.open(root / "kv.2")
    log.sync()
    assert (root / "kv.2" / "wal-log").exists() and log.last_index() == 0
    assert log._writer.refs == 2


def test_an_exception_that_ends_the_io_thread_breaks_the_wal_instead_of_hanging_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = WalLog.open(root / "kv.1")

    def bug(self: WalWriter, *args: Any) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(WalWriter, "_write", bug)
    log.append(1, _entries(1, 3))
    raised: list[BaseException] = []

    def sync() -> None:
        try:
            log.sync()
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=sync, daemon=True)  # bounded: it used to wait forever
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "sync() still waits for a dead I/O thread"
    assert isinstance(raised[0], LogWriteError) and "RuntimeError" in str(raised[0])
    assert not log.can_append(1, Priority.HIGH)


def test_a_restart_on_a_full_disk_opens_the_logs_and_writes_wait_for_room(root: Path) -> None:
    """No room even for a new file's header: the writer goes on in the newest file, so the
    partitions open (their log actors used to fail every start until there was room)."""
    _crashed_with_ten_entries(root)
    before = _wal_files(root)
    real = os.write
    full = threading.Event()
    full.set()
    wal_dir = str(root / "wal")

    def write(fd: int, data: Any) -> int:
        if full.is_set() and os.readlink(f"/proc/self/fd/{fd}").startswith(wal_dir):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    os.write = write  # type: ignore[assignment]
    try:
        log = WalLog.open(root / "kv.1")
        assert log.entries(1, 10, 100, 1 << 30) == _entries(1, 10)  # reads are served
        assert _wal_files(root) == before  # nothing new, nothing compacted away
        log.append(11, _entries(11, 1))
        assert not log.sync_within(0.3)  # not acknowledged while there is no room
        full.clear()  # room again
        log.sync()
    finally:
        os.write = real
    _crash(log)
    log = WalLog.open(root / "kv.1")
    assert log.entries(1, 11, 100, 1 << 30) == _entries(1, 11)


def test_an_old_file_that_cannot_be_deleted_does_not_stop_the_writes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = WalLog.open(root / "kv.1", max_file_bytes=4096, keep_files=0)
    real = os.unlink
    refused: list[str] = []

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).endswith(".wal"):
            refused.append(str(path))
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    for at in range(1, 400, 10):  # rotations, each wanting to delete the file before
        log.append(at, _entries(at, 10))
        log.sync()
    assert refused and log._writer.broken is None and log.can_append(1, Priority.HIGH)
    monkeypatch.undo()
    _crash(log)
    log = WalLog.open(root / "kv.1")  # the files left behind replay in order
    assert log.entries(1, 400, 1000, 1 << 30) == _entries(1, 400)


class _LogHolder(otp.Process):
    """A stand-in for a log actor: opens a partition's WalLog in its own process."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        try:
            return WalLog.open(request)
        except LogError as exc:
            return ("error", str(exc))


def test_a_log_left_open_by_a_dead_holder_is_taken_over_and_fenced(root: Path) -> None:
    """A log actor blocked past its shutdown time is killed and abandoned with its WalLog
    still registered: every later open of the partition failed ("already has an open
    WalLog") until the node's supervisors gave up. The next open takes it over (its entries
    carried, held appends queued first); the dead holder's log queues nothing more; a live
    holder keeps its log."""
    otp_node = otp.Node("walholder@t", process_type=otp.SCHEDULED)
    try:
        path = root / "kv.1"
        with otp_node.activate():
            live = otp.call(_LogHolder.start(), root / "kv.2", 20)
            refused = otp.call(_LogHolder.start(), root / "kv.2", 20)
            assert refused[0] == "error" and "already has an open WalLog" in refused[1]
            holder = _LogHolder.start()
            old: WalLog = otp.call(holder, path, 20)
            old.append(1, _entries(1, 5))
            old.sync()
            old.append(6, _entries(6, 2))  # held, not yet queued
            otp.kill(holder)
            otp.wait_exit(holder, 10)
            new = otp.call(_LogHolder.start(), path, 20)
        assert isinstance(new, WalLog), new
        assert new._writer.taken_over == 1
        assert new.last_index() == 7 and new.term(7) == 1
        new.sync()  # its first sync covers what the dead holder left queued
        for late in (lambda: old.append(8, _entries(8, 1)), lambda: old.truncate(3)):
            with pytest.raises(LogError, match="closed"):
                late()
        new.append(8, _entries(8, 1, term=2))
        new.sync()
        old.close()  # a close that runs late changes nothing
        new.close()
        live.close()
        stop_wal_writers(root)
        reopened = WalLog.open(path)
        assert reopened.last_index() == 8 and reopened.term(8) == 2
        reopened.close()
    finally:
        otp_node.stop()


def _wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _fail_a_batch_of(log: WalLog, monkeypatch: pytest.MonkeyPatch, index: int) -> WalWriter:
    """Append entry ``index`` to ``log`` in a batch whose write gets EIO; the failed writer."""
    writer = log._writer
    with monkeypatch.context() as patch:
        patch.setattr(WalWriter, "fault", staticmethod(lambda d: OSError(errno.EIO, "EIO")))
        log.append(index, _entries(index, 1))
        with pytest.raises(LogWriteError):
            log.sync()
    return writer


def test_a_failed_writer_is_replaced_once_and_durable_logs_move_to_the_new_one(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed writer stayed in service until every partition had closed it: each partition
    reopened after the failure attached to it again and failed again (the supervisors'
    restart limits were the way out). It is retired at once and the WAL reopened from disk;
    a partition whose records were all durable (kv.2) goes on in the new writer without
    reopening, the one with records in the failed batch (kv.1) keeps refusing until it
    reopens, and then finds only what was durable."""
    a, b = WalLog.open(root / "kv.1"), WalLog.open(root / "kv.2")
    a.append(1, _entries(1, 2))
    b.append(1, _entries(1, 3))
    a.sync()
    b.sync()
    b.trim(2)  # a trim record in the failed batch leaves kv.2's log in memory as it is
    failed = _fail_a_batch_of(a, monkeypatch, 3)
    _wait_for(lambda: b._writer is not failed)
    assert failed.retired and WalWriter._registry[failed.directory] is b._writer
    assert b._writer.broken is None and b.can_append(1, Priority.HIGH)
    b.append(4, _entries(4, 1))
    b.sync()
    with pytest.raises(LogWriteError):
        a.append(3, _entries(3, 1))
    with pytest.raises(LogWriteError):
        a.sync()
    a.close()
    assert failed.refs == 0 and b._writer.refs == 1
    a = WalLog.open(root / "kv.1")
    assert a._writer is b._writer and a.last_index() == 2
    a.close()
    b.close()
    b = WalLog.open(root / "kv.2")
    assert b.last_index() == 4 and b.entries(2, 4, 10, 1 << 30) == _entries(2, 3)


def test_a_wal_that_keeps_failing_is_reopened_with_a_growing_delay_not_in_a_loop(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the directory cannot be read, each attempt to reopen it waits twice as long as
    the one before; the partitions waiting for it refuse writes and say why; an open in the
    meantime fails after a bounded wait; once the disk reads again the WAL is back."""
    a, b = WalLog.open(root / "kv.1"), WalLog.open(root / "kv.2")
    b.append(1, _entries(1, 1))
    b.sync()
    attempts: list[float] = []
    real = wal_module._read_durably

    def unreadable(path: str) -> bytes:
        attempts.append(time.monotonic())
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(wal_module, "_read_durably", unreadable)
        failed = _fail_a_batch_of(a, monkeypatch, 1)
        time.sleep(1.2)
        assert 2 <= len(attempts) <= 6, attempts  # 0, 0.1, 0.3, 0.7 s: not a loop
        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
        assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
        assert b._writer is failed and not b.can_append(1, Priority.HIGH)
        status = b.status()
        assert status["wal_retired"] and "Input/output error" in status["wal_reopen_error"]
        started = time.monotonic()
        with pytest.raises(OSError):
            WalLog.open(root / "kv.3")
        assert time.monotonic() - started < wal_module.REOPEN_OPEN_WAIT + 1.0
    assert wal_module._read_durably is real
    _wait_for(lambda: b._writer is not failed, timeout=wal_module.REOPEN_BACKOFF_MAX + 5)
    b.append(2, _entries(2, 1))
    b.sync()
    a.close()
    b.close()


def test_an_open_while_a_failed_wal_waits_to_reopen_fails_only_after_a_bounded_wait(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failing at once, the log actor would be restarted at once, again and again, up to its
    supervisors' limits: it waits ``REOPEN_OPEN_WAIT`` first."""
    monkeypatch.setattr(wal_module, "REOPEN_OPEN_WAIT", 0.3)
    directory = os.path.abspath(root / "wal")
    reopen = wal_module._Reopen()
    reopen.failed("Input/output error")
    reopen.not_before = time.monotonic() + 60
    monkeypatch.setitem(WalWriter._reopens, directory, reopen)
    started = time.monotonic()
    with pytest.raises(LogWriteError, match="Input/output error"):
        WalLog.open(root / "kv.1")
    assert 0.25 <= time.monotonic() - started < 5
    assert directory not in WalWriter._registry


class _CountedReopen(wal_module._Reopen):
    """A reopen backoff that counts how often an open asked how long it must wait."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def wait(self) -> float:
        self.asked += 1
        return super().wait()


class _WaitingOpener(otp.Process):
    """A log actor opening its partition: notes what the open gave and after how long."""

    def handle_cast(self, request: Any) -> None:
        path, results = request
        started = time.monotonic()
        try:
            outcome: Any = WalLog.open(path)
        except Exception as exc:
            outcome = exc
        results.append((outcome, time.monotonic() - started))


class _Blocker(otp.Process):
    """Makes one (empty) blocking call, as a term store or a storage open does."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return otp.blocking(lambda: "done")


def test_opens_waiting_for_a_failed_wal_leave_the_nodes_io_threads_free(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opens waiting for a failed WAL's next reopen slept on the node's I/O threads: as many
    restarting partitions as there are threads held all of them for the whole failure, and
    every other blocking call of the node (a healthy partition's term store, a storage open,
    a log close) waited behind. They wait without a thread, and still fail after the bound."""
    monkeypatch.setattr(wal_module, "REOPEN_OPEN_WAIT", 3.0)
    directory = os.path.abspath(root / "wal")
    reopen = _CountedReopen()
    reopen.failed("Input/output error")
    reopen.not_before = time.monotonic() + 60
    monkeypatch.setitem(WalWriter._reopens, directory, reopen)
    io_threads = 2
    node = otp.Node("walwaitio@t", process_type=otp.SCHEDULED, io_threads=io_threads)
    results: list[tuple[Any, float]] = []
    try:
        with node.activate():
            for i in range(2 * io_threads):
                otp.cast(_WaitingOpener.start(), (root / f"kv.{i}", results))
            _wait_for(lambda: reopen.asked >= io_threads)  # the opens are waiting
            # Before: queued behind the sleeping opens for REOPEN_OPEN_WAIT, past this timeout.
            assert otp.call(_Blocker.start(), "store", timeout=1.5) == "done"
            _wait_for(lambda: len(results) == 2 * io_threads, timeout=15)
    finally:
        node.stop()
    for outcome, waited in results:
        assert isinstance(outcome, LogWriteError) and "Input/output error" in str(outcome)
        assert waited >= 0.9 * wal_module.REOPEN_OPEN_WAIT  # the bounded wait is kept
    assert directory not in WalWriter._registry


def test_an_open_racing_a_wal_failure_lands_on_the_new_writer(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL failed, and its writer was retired and replaced, between an open's acquire of
    it and the attach of the log: the log was registered on the retired writer, in none of
    the lists of partitions told to restart or moved, and refused writes for good. The
    attach refuses a failed writer and the open acquires the new one."""
    a, b = WalLog.open(root / "kv.1"), WalLog.open(root / "kv.2")
    b.append(1, _entries(1, 3))
    b.sync()
    b.close()
    a.append(1, _entries(1, 2))
    a.sync()
    failed = a._writer
    real_take_over_dead = WalWriter.take_over_dead

    def failing_meanwhile(self: WalWriter, key: str) -> None:
        if self is failed:  # between the acquire and the attach: kv.1's batch gets EIO
            _fail_a_batch_of(a, monkeypatch, 3)
            _wait_for(lambda: failed.retired)
        real_take_over_dead(self, key)

    monkeypatch.setattr(WalWriter, "take_over_dead", failing_meanwhile)
    b = WalLog.open(root / "kv.2")
    assert b._writer is not failed and WalWriter._registry[failed.directory] is b._writer
    assert b.can_append(1, Priority.HIGH) and b.last_index() == 3
    b.append(4, _entries(4, 1))
    b.sync()
    assert sorted(failed._logs) == ["kv.1"] and failed.refs == 1  # kv.1: told to restart
    a.close()
    b.close()
    b = WalLog.open(root / "kv.2")
    assert b.entries(1, 4, 10, 1 << 30) == _entries(1, 4)
    b.close()


def _hung_reads(
    monkeypatch: pytest.MonkeyPatch, under: Path
) -> tuple[threading.Event, threading.Event]:
    """Make the WAL recovery's reads of the files under ``under`` wait for a gate, as on a
    disk that hangs before it fails: ``(entered, gate)``, ``entered`` set once one waits."""
    entered, gate = threading.Event(), threading.Event()
    real = wal_module._read_durably

    def hung(path: str) -> bytes:
        if path.startswith(str(under)):
            entered.set()
            gate.wait(30)
        return real(path)

    monkeypatch.setattr(wal_module, "_read_durably", hung)
    return entered, gate


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` on a thread of its own; its result (or exception) lands in the list."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _open_write_close(path: Path) -> int:
    """Open a partition's log, append an entry, sync and close it: its last index."""
    log = WalLog.open(path)
    log.append(1, _entries(1, 1))
    log.sync()
    log.close()
    return log.last_index()


def test_an_open_on_a_hung_disk_holds_up_no_other_directorys_wal(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition's open of its WAL (the first of the node: the directory's recovery) ran
    under the process-wide registry lock: a disk that hung there held up every other node's
    WAL in the process. Another directory's WAL goes on; a second open of the same one waits
    for the first's writer instead of opening one of its own."""
    one, two = root / "n1", root / "n2"
    WalLog.open(one / "kv.1").close()  # a WAL file to recover
    entered, gate = _hung_reads(monkeypatch, one / "wal")
    try:
        first, opened = _in_thread(lambda: WalLog.open(one / "kv.1"))
        assert entered.wait(10)
        second, also = _in_thread(lambda: WalLog.open(one / "kv.2"))
        other, result = _in_thread(lambda: _open_write_close(two / "kv.1"))
        other.join(10)
        assert result == [1], "another directory's WAL waited for the hung open"
        assert not opened and not also
    finally:
        gate.set()
    first.join(10)
    second.join(10)
    logs = opened + also
    assert len(logs) == 2 and all(isinstance(log, WalLog) for log in logs), logs
    assert logs[0]._writer is logs[1]._writer and logs[0]._writer.refs == 2
    for log in logs:
        log.close()


def test_a_hand_over_on_a_hung_disk_holds_up_no_other_directorys_wal(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over of a failed WAL opened its directory (reading, fsyncing and recovering
    its files) under the process-wide registry lock: while that disk hung, every acquire,
    attach and release of every other node's WAL in the process waited for it. Another
    directory's WAL opens, writes and closes meanwhile; an open of the same directory waits
    for the hand-over's writer (no second writer on it), and the hand-over completes once
    the disk answers."""
    one, two = root / "n1", root / "n2"
    a, b = WalLog.open(one / "kv.1"), WalLog.open(one / "kv.2")
    b.append(1, _entries(1, 2))
    b.sync()
    entered, gate = _hung_reads(monkeypatch, one / "wal")
    try:
        failed = _fail_a_batch_of(a, monkeypatch, 1)
        assert entered.wait(10)  # the hand-over is opening n1's WAL, and its disk hangs
        same, opened = _in_thread(lambda: WalLog.open(one / "kv.3"))
        other, result = _in_thread(lambda: _open_write_close(two / "kv.1"))
        other.join(10)
        assert result == [1], "another directory's WAL waited for the hung open"
        assert b._writer is failed and not opened  # the same directory's open waits
    finally:
        gate.set()
    same.join(10)
    assert len(opened) == 1 and isinstance(opened[0], WalLog), opened
    _wait_for(lambda: b._writer is not failed)
    assert opened[0]._writer is b._writer and WalWriter._registry[failed.directory] is b._writer
    b.append(3, _entries(3, 1))
    b.sync()
    for log in (a, b, opened[0]):
        log.close()


def _replaced(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a failed writer's replacement (``WalWriter._replace``) has ended."""
    done = threading.Event()
    real = WalWriter._replace

    def replace(self: WalWriter) -> None:
        try:
            real(self)
        finally:
            done.set()

    monkeypatch.setattr(WalWriter, "_replace", replace)
    return done


def _lock_is_free(directory: str) -> bool:
    """Whether no writer holds the WAL directory's file lock (as another process sees it)."""
    fd = os.open(os.path.join(directory, "LOCK"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # the lock, if taken, goes with it
    return True


@pytest.mark.parametrize("ending", ["closed_during_the_open", "none_matching"])
def test_a_writer_a_hand_over_moved_no_log_to_is_stopped_not_left_open(
    root: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A hand-over that opened the new writer and moved no log to it left it registered
    with no reference, its I/O thread, files and file lock held until the process exited
    (no other process could open the WAL): when the node stopped (its logs closed) while
    the directory was opened, or when no log matched the reopened WAL (told to restart)
    and the node stopped before they reopened. It is stopped and unregistered, and the
    next open of the directory opens it again."""
    a, b = WalLog.open(root / "kv.1"), WalLog.open(root / "kv.2")
    b.append(1, _entries(1, 2))
    b.sync()
    directory = b._writer.directory
    writers: list[WalWriter] = []
    real_init = WalWriter.__init__

    def recording_init(self: WalWriter, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        writers.append(self)

    monkeypatch.setattr(WalWriter, "__init__", recording_init)
    replaced = _replaced(monkeypatch)
    if ending == "none_matching":
        monkeypatch.setattr(WalLog, "_same_as", lambda self, first, entries: False)
        _fail_a_batch_of(a, monkeypatch, 1)
        assert replaced.wait(10)
        a.close()
        b.close()
    else:
        entered, gate = _hung_reads(monkeypatch, root / "wal")
        try:
            _fail_a_batch_of(a, monkeypatch, 1)
            assert entered.wait(10)  # the hand-over opens the directory
            closing, closed = _in_thread(lambda: [log.close() for log in (a, b)])
            closing.join(2)  # at once since the open holds no lock
        finally:
            gate.set()
        assert replaced.wait(10)
        closing.join(10)
        assert closed == [[None, None]]
    assert len(writers) == 1  # the hand-over's
    successor = writers[0]
    _wait_for(lambda: successor.broken == "stopped")
    assert directory not in WalWriter._registry and successor.refs == 0
    assert _lock_is_free(directory)
    b = WalLog.open(root / "kv.2")
    assert b._writer is not successor and b.last_index() == 2
    b.close()


def test_an_open_that_loses_every_attach_race_fails_after_open_attempts(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every writer the open acquires fails before the log is attached to it (a disk that
    keeps failing): the open acquires again, ``OPEN_ATTEMPTS`` times in all, each time a
    new writer, and then fails with an error that says so; it neither loops nor hangs, and
    leaves no log registered and no reference taken. On a healthy disk the next open
    works."""
    seed = WalLog.open(root / "kv.1")
    seed.append(1, _entries(1, 2))
    seed.sync()
    seed.close()
    raced: list[WalWriter] = []
    real_take_over_dead = WalWriter.take_over_dead

    def failing_meanwhile(self: WalWriter, key: str) -> None:
        raced.append(self)
        with monkeypatch.context() as patch:  # the writer's next batch gets EIO
            patch.setattr(WalWriter, "fault", staticmethod(lambda d: OSError(errno.EIO, "EIO")))
            ticket = self.submit(packb(("m", key, 0)), key, -1)
            with pytest.raises(LogWriteError):
                self.wait(ticket)
        _wait_for(lambda: self.retired)
        real_take_over_dead(self, key)

    monkeypatch.setattr(WalWriter, "take_over_dead", failing_meanwhile)
    started = time.monotonic()
    with pytest.raises(LogWriteError) as raised:
        WalLog.open(root / "kv.1")
    assert time.monotonic() - started < wal_module.OPEN_ATTEMPTS * wal_module.REOPEN_OPEN_WAIT
    assert len(raced) == len({id(w) for w in raced}) == wal_module.OPEN_ATTEMPTS
    message = str(raised.value)
    assert f"{wal_module.OPEN_ATTEMPTS} times" in message and "kv.1" in message, message
    assert type(raised.value) is LogWriteError and raised.value.errno == errno.EIO
    _wait_for(lambda: all(w.broken is not None and w._lock_fd == -1 for w in raced))
    assert all(not w._logs and w.refs == 0 for w in raced)
    assert os.path.abspath(root / "wal") not in WalWriter._registry
    monkeypatch.setattr(WalWriter, "take_over_dead", real_take_over_dead)
    log = WalLog.open(root / "kv.1")
    assert log.last_index() == 2 and log.can_append(1, Priority.HIGH)
    log.close()
