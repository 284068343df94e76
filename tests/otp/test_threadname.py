"""OS thread names of the runtime's threads (what ``top -H`` and ``/proc`` show)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.providers.helpers import stop_wal_writers
from waraft import otp
from waraft.core.types import Entry, Identity, LogPos
from waraft.log.wal import WalLog
from waraft.otp import threadname
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import StorageOptions

from .helpers import wait_until

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names")


@pytest.fixture(autouse=True)
def _once(process_type: str) -> Iterator[None]:
    # The nodes here choose their process type themselves; one run is enough.
    if process_type != otp.SCHEDULED:
        pytest.skip("thread names: run once, under the scheduled parameter")
    yield


def _os_names() -> set[str]:
    names = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.add(f.read().strip())
        except OSError:  # the thread ended while we looked
            pass
    return names


def test_names_are_cut_to_what_the_kernel_keeps_without_splitting_a_character() -> None:
    assert threadname.os_name("otp:sched:0") == b"otp:sched:0"
    assert threadname.os_name("x" * 20) == b"x" * 15
    cut = threadname.os_name("x" * 14 + "é")  # é is two bytes: it does not fit whole
    assert cut == b"x" * 14
    assert len(threadname.os_name("é" * 10)) <= threadname.MAX_BYTES


@linux_only
def test_a_thread_names_itself_for_the_os() -> None:
    seen: list[str] = []

    def body() -> None:
        assert otp.set_os_name("g12f-probe-thread-long")
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            seen.append(f.read().strip())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == ["g12f-probe-thre"]


@linux_only
def test_schedulers_and_the_timer_thread_carry_their_names() -> None:
    node = otp.Node("names@t", process_type=otp.SCHEDULED, schedulers=2)
    try:
        fired = threading.Event()
        ref = otp.timer.call_later(0.01, fired.set)  # starts the timer thread if not yet
        assert fired.wait(5.0) and not ref.active

        class Idle(otp.Process):
            pass

        with node.activate():
            Idle.start()
        wait_until(lambda: {"otp:sched:0", "otp:sched:1", "otp:timer"} <= _os_names())
    finally:
        node.stop()


@linux_only
def test_the_wal_and_node_lmdb_threads_carry_their_names(tmp_path: Path) -> None:
    """Started from a scheduler or an I/O thread, they would otherwise carry its name (Linux
    copies the creator's), and their CPU would be counted as that thread's."""
    log = WalLog.open(tmp_path / "wal-part" / "kv.0")
    # No write-back buffer (the apply goes to the committer at once); lazy sync (a syncer).
    extra = {"lmdb_sync_interval_ms": 50, "lmdb_flush_interval_ms": 0}
    options = StorageOptions("t", 1, Identity("s", "n@h"), extra=extra)
    storage = NodeLmdbStorage.open(options, tmp_path / "lmdb-part" / "t.1")
    try:
        log.append(1, [Entry(1, "k", ("write", "t", "k", 1))])
        log.sync()
        storage.apply(("write", "t", "k", 1), LogPos(1, 1))
        wait_until(lambda: {"wal:io", "lmdb:commit", "lmdb:sync"} <= _os_names())
    finally:
        storage.close()
        log.close()
        stop_wal_writers(tmp_path / "wal-part")
