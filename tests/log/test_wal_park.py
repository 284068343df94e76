"""The WAL's scheduled wait: partition servers park on a group commit and are resumed in one
batch per scheduler (``WalWriter._wait_scheduled``, ``otp.sched.resume_all``)."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.providers.helpers import stop_wal_writers
from waraft import otp
from waraft.core.types import Entry
from waraft.log import wal
from waraft.log.wal import WalLog, WalWriter
from waraft.otp import sched


def _entries(start: int, count: int) -> list[Entry]:
    return [Entry(1, f"k{i}", ("write", "t", f"k{i}", i)) for i in range(start, start + count)]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stop_wal_writers(tmp_path)


class _Syncer(otp.Process):
    """Appends one entry to its WAL log and waits for the fsync, as a partition server does."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        log, index = request
        log.append(index, _entries(index, 1))
        return log.sync_within(5.0)


def _wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_group_commit_resumes_its_parked_servers_in_one_batch_per_scheduler(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight servers on two schedulers wait for one fsync: they park without an ``Event``,
    and the fsync resumes all of them with one run-queue put per scheduler (a ``_Resume`` of
    four each), not one wake per server; none returns before the fsync."""
    logs = [WalLog.open(root / f"kv.{p}") for p in range(8)]
    gate = threading.Event()
    real_fdatasync = os.fdatasync
    puts: list[tuple[int, Any]] = []
    real_resume_all = sched.resume_all

    def slow_fdatasync(fd: int) -> None:
        gate.wait(10)
        real_fdatasync(fd)

    def no_event() -> Any:
        raise AssertionError("a wait on a writer that is not stalled made an Event")

    def recording_resume_all(procs: list[Any]) -> None:
        puts.append((len(procs), {p._sched for p in procs}))
        real_resume_all(procs)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    monkeypatch.setattr(wal, "Event", no_event)
    monkeypatch.setattr(wal, "resume_all", recording_resume_all)
    node = otp.Node("walpark@t", schedulers=2, process_type=otp.SCHEDULED)
    try:
        syncers = [_Syncer.start(node=node) for _ in logs]
        assert len({s._actor._sched for s in syncers}) == 2  # type: ignore[union-attr]
        writer = logs[0]._writer
        handles = [otp.send_request(s, (log, 1)) for s, log in zip(syncers, logs, strict=True)]
        _wait_until(lambda: len(writer._parked) == 8)  # none returned: the fsync is held
        gate.set()
        assert [otp.wait_response(h, 10) for h in handles] == [True] * 8
        # The first batch may hold only the first partitions' records (the rest queued while
        # it waited at the gate): count the parked servers each resume took, and the puts.
        assert sum(n for n, _ in puts) == 8
        assert len(puts) <= 2  # one resume per group commit that covered parked servers
        assert writer._parked == []
    finally:
        gate.set()
        node.stop()
    for log in logs:
        log.close()


def test_a_stalled_wal_still_gives_up_a_scheduled_wait_on_its_timeout(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the WAL is stalled (a full disk) a scheduled ``sync_within`` waits with its
    timeout on an ``Event`` (a park has no timeout) and returns False; it completes once
    the disk has room again."""
    log = WalLog.open(root / "kv.1")
    full = threading.Event()
    full.set()

    def fault(directory: str) -> OSError | None:
        return OSError(errno.ENOSPC, "No space left on device") if full.is_set() else None

    class _Timed(otp.Process):
        def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
            index, timeout = request
            if index:
                log.append(index, _entries(index, 1))
            return log.sync_within(timeout)

    monkeypatch.setattr(WalWriter, "fault", fault)
    node = otp.Node("walstall@t", schedulers=1, process_type=otp.SCHEDULED)
    try:
        proc = _Timed.start(node=node)
        # Parked first (the writer is not stalled yet), then the stall wakes it and it
        # waits on the timeout: it must come back with False, not wait for the disk.
        assert otp.call(proc, (1, 0.3), timeout=10) is False
        assert log._writer._parked == []
        full.clear()
        _wait_until(lambda: otp.call(proc, (0, 0.0), timeout=10))
    finally:
        full.clear()
        node.stop()
    log.close()


def test_a_stopping_writer_resumes_parked_servers_with_an_error(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that stops with waits parked on a batch it never wrote resumes them, and
    their sync fails (``LogWriteError``) instead of acknowledging or hanging."""
    log = WalLog.open(root / "kv.1")
    gate = threading.Event()
    real_fdatasync = os.fdatasync

    def failing_fdatasync(fd: int) -> None:
        gate.wait(10)
        raise OSError(errno.EIO, "injected")

    class _Catching(otp.Process):
        def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
            log.append(1, _entries(1, 1))
            try:
                return log.sync_within(5.0)
            except wal.LogWriteError as exc:
                return ("error", str(exc))

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    node = otp.Node("walbroken@t", schedulers=1, process_type=otp.SCHEDULED)
    try:
        proc = _Catching.start(node=node)
        handle = otp.send_request(proc, None)
        _wait_until(lambda: len(log._writer._parked) == 1)
        gate.set()
        answer = otp.wait_response(handle, 10)
        assert answer[0] == "error" and "injected" in answer[1]
    finally:
        gate.set()
        monkeypatch.setattr(os, "fdatasync", real_fdatasync)
        node.stop()
    log.close()
