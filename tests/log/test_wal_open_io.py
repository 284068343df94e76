"""``WalLog.open`` from a scheduled process (the WAL's log actor) does its file work on the
node's I/O threads, not on the scheduler (DESIGN.md: nothing blocks a scheduler): the WAL's
lock with its retry sleeps, recovery's fsyncs, the compacted file, a new partition's marker."""

from __future__ import annotations

import fcntl
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

SCHED_PREFIX = "otp:sched:"  # the scheduler threads' names (``otp.sched.Scheduler``)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stop_wal_writers(tmp_path)


class _Opener(otp.Process):
    """Opens a partition's WAL log in a handler, as the log actor does in its init."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return WalLog.open(request)


def _recording(real: Any, what: str, calls: list[tuple[str, str]]) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append((what, threading.current_thread().name))
        return real(*args, **kwargs)

    return call


class _TimeRecordingSleeps:
    """The ``time`` module as the WAL sees it, its sleeps recorded with their thread."""

    def __init__(self, calls: list[tuple[str, str]]) -> None:
        self.sleep = _recording(time.sleep, "sleep", calls)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_scheduled_open_does_its_file_work_off_the_schedulers(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh partition (the WAL created, its marker made), then a reopen that recovers the
    WAL while its lock is still held for a moment (the retry loop sleeps): every fsync,
    fdatasync, flock and retry sleep of the opens ran on an I/O thread."""
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(os, "fsync", _recording(os.fsync, "fsync", calls))
    monkeypatch.setattr(os, "fdatasync", _recording(os.fdatasync, "fdatasync", calls))
    real_flock = fcntl.flock
    busy = [0]  # how many more flocks find the WAL's lock held (a writer of ours stopping)

    def flock(fd: int, op: int) -> None:
        calls.append(("flock", threading.current_thread().name))
        if busy[0]:
            busy[0] -= 1
            raise BlockingIOError
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(wal, "time", _TimeRecordingSleeps(calls))
    node = otp.Node("walopen@t", schedulers=2, process_type=otp.SCHEDULED)
    try:
        opener = _Opener.start(node=node)
        log = otp.call(opener, root / "kv.1", timeout=10)
        assert os.path.exists(root / "kv.1" / wal.MARKER)
        log.append(1, [Entry(1, "k", ("write", "t", "k", 1))])
        log.sync()
        log.close()  # the last reference: the writer stops, the WAL's lock is free
        busy[0] = 2
        log = otp.call(opener, root / "kv.1", timeout=10)
        assert log.last_index() == 1
        log.close()
    finally:
        node.stop()
    kinds = {what for what, _ in calls}
    assert {"fsync", "fdatasync", "flock", "sleep"} <= kinds, calls
    on_schedulers = [(what, name) for what, name in calls if name.startswith(SCHED_PREFIX)]
    assert not on_schedulers, on_schedulers


def test_a_process_killed_while_it_opens_gives_its_writer_reference_back(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while its open waits on an I/O thread (held here in the WAL's recovery), the
    process is resumed only once the open's file work is done, and the writer reference
    taken for it is given back: the writer stops, its lock is free for the next open."""
    seed = WalLog.open(root / "kv.1")
    seed.close()  # a WAL file to recover
    entered, gate = threading.Event(), threading.Event()
    real_read = wal._read_durably

    def held_read(path: str) -> bytes:
        entered.set()
        gate.wait(10)
        return real_read(path)

    stopped = threading.Event()
    real_stop = WalWriter.stop

    def stop(writer: WalWriter) -> None:
        real_stop(writer)
        stopped.set()

    monkeypatch.setattr(wal, "_read_durably", held_read)
    monkeypatch.setattr(WalWriter, "stop", stop)
    node = otp.Node("walkill@t", schedulers=1, process_type=otp.SCHEDULED)
    try:
        opener = _Opener.start(node=node)
        handle = otp.send_request(opener, root / "kv.2")
        assert entered.wait(10)
        otp.kill(opener)
        assert not otp.is_alive(opener)
        with pytest.raises(otp.ExitError):
            otp.wait_response(handle, 10)
        gate.set()
        # The open went on without its process: the writer it made is stopped, not kept.
        assert stopped.wait(10)
        assert os.path.abspath(root / "wal") not in WalWriter._registry
    finally:
        gate.set()
        node.stop()
    log = WalLog.open(root / "kv.1")  # the WAL's lock was let go
    assert log._writer.refs == 1
    log.close()
