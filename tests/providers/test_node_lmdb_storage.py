"""The node-wide LMDB provider: one environment for many partitions, per-value checksums,
quarantine of a damaged partition and its repair by snapshot (issue 14).

The shared provider contract runs in ``test_storage.py``; these are its own properties.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from waraft import otp
from waraft.core.settings import Settings
from waraft.core.types import LogPos
from waraft.services.codec import CodecError
from waraft.storage import node_lmdb
from waraft.storage.lmdb import LmdbStorage, StorageLockedError
from waraft.storage.node_lmdb import NODE_DIR, QUARANTINED, NodeEnv, NodeLmdbStorage, _Write
from waraft.storage.provider import (
    StorageCorruptionError,
    StorageError,
    StorageOptions,
    UnknownCommandError,
)

from .helpers import A, B, C, make_config

CONFIG = make_config(A, B, C)
SECRET = b"precious-value-0123456789"
REPO = Path(__file__).resolve().parents[2]


def opts(partition: int, **extra: Any) -> StorageOptions:
    """Options of a partition; unless told otherwise, without the write-back buffer (every
    apply queues its own write: most tests here are about the node's group commit)."""
    extra.setdefault("lmdb_flush_interval_ms", 0)
    return StorageOptions(
        table="t", partition=partition, identity=A, name=f"raft_storage_t_{partition}", extra=extra
    )


def open_part(root: Path, partition: int) -> NodeLmdbStorage:
    return NodeLmdbStorage.open(opts(partition), root / f"t.{partition}")


def seed(storage: NodeLmdbStorage, value: Any, index: int = 3) -> None:
    storage.apply_config(CONFIG, LogPos(1, 1))
    storage.apply(("write", "t", "k", value), LogPos(2, 1))
    storage.apply(("write", "t", "other", 7), LogPos(index, 1))


def flip_all(path: Path, needle: bytes) -> int:
    """Flip one byte in the middle of every copy of ``needle`` in the file (LMDB copies pages
    on write, so old copies may be there too); the number of copies."""
    data = bytearray(path.read_bytes())
    count = 0
    at = data.find(needle)
    while at >= 0:
        data[at + len(needle) // 2] ^= 0x20
        count += 1
        at = data.find(needle, at + 1)
    with open(path, "r+b") as f:
        f.write(bytes(data))
        f.flush()
        os.fsync(f.fileno())
    return count


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "db"


def test_many_partitions_share_one_environment_and_a_fixed_number_of_fds(root: Path) -> None:
    first = open_part(root, 0)
    fds = len(os.listdir("/proc/self/fd"))
    parts = [first] + [open_part(root, p) for p in range(1, 60)]
    try:
        for p, storage in enumerate(parts):
            storage.apply(("write", "t", "k", p), LogPos(1, 1))
        assert len(os.listdir("/proc/self/fd")) == fds
        assert sorted(os.listdir(root / NODE_DIR)) == ["LOCK", "data.mdb", "lock.mdb"]
        assert [s.read(("read", "t", "k"), s.position()) for s in parts] == [
            ("ok", p) for p in range(60)
        ]
        assert parts[5].status()["node_partitions"] == 60
    finally:
        for storage in parts:
            storage.close()
    again = open_part(root, 42)
    try:
        assert again.position() == LogPos(1, 1)
        assert again.read(("read", "t", "k"), again.position()) == ("ok", 42)
    finally:
        again.close()


def test_one_user_per_partition(root: Path) -> None:
    storage = open_part(root, 1)
    try:
        with pytest.raises(StorageLockedError):
            open_part(root, 1)
        open_part(root, 2).close()
    finally:
        storage.close()


def test_snapshot_install_and_wiped_directory_touch_only_their_partition(
    root: Path, tmp_path: Path
) -> None:
    one, two = open_part(root, 1), open_part(root, 2)
    try:
        seed(one, "one")
        seed(two, "two", index=5)
        assert one.create_snapshot(tmp_path / "snap") == "ok"
        assert two.open_snapshot(tmp_path / "snap", LogPos(3, 1)) == "ok"
        assert two.position() == LogPos(3, 1) and two.config() == (LogPos(1, 1), CONFIG)
        assert two.read(("read", "t", "k"), two.position()) == ("ok", "one")
        assert one.read(("read", "t", "k"), one.position()) == ("ok", "one")
    finally:
        one.close()
        two.close()
    # A partition directory moved away is a new partition; its neighbour keeps its data.
    (root / "t.2").rename(tmp_path / "moved")
    two = open_part(root, 2)
    one = open_part(root, 1)
    try:
        assert two.position() == LogPos(0, 0)
        assert two.read(("read", "t", "k"), two.position()) == "not_found"
        assert one.read(("read", "t", "k"), one.position()) == ("ok", "one")
    finally:
        one.close()
        two.close()


def test_a_flipped_byte_quarantines_the_partition_until_a_snapshot_repairs_it(
    root: Path, tmp_path: Path
) -> None:
    healthy_root = tmp_path / "healthy"
    victim, neighbour, healthy = open_part(root, 1), open_part(root, 2), open_part(healthy_root, 1)
    for storage in (victim, healthy):
        seed(storage, SECRET)
    seed(neighbour, "untouched")
    victim.close()
    neighbour.close()
    assert flip_all(root / NODE_DIR / "data.mdb", SECRET) >= 1

    victim, neighbour = open_part(root, 1), open_part(root, 2)
    try:
        # Emptied and marked: a fresh-looking replica (its server comes up stalled).
        assert victim.position() == LogPos(0, 0) and victim.config() is None
        reason = victim.status()["quarantine"]
        assert reason is not None and "checksum mismatch" in reason
        assert victim.read(("read", "t", "k"), victim.position()) == QUARANTINED
        assert neighbour.status()["quarantine"] is None
        assert neighbour.read(("read", "t", "k"), neighbour.position()) == ("ok", "untouched")
        # The quarantine survives a restart until the repair.
        victim.close()
        victim = open_part(root, 1)
        assert victim.status()["quarantine"] == reason
        assert healthy.create_snapshot(tmp_path / "snap") == "ok"
        assert victim.open_snapshot(tmp_path / "snap", LogPos(3, 1)) == "ok"
        assert victim.status()["quarantine"] is None
        assert victim.read(("read", "t", "k"), victim.position()) == ("ok", SECRET)
        victim.close()
        victim = open_part(root, 1)
        assert victim.position() == LogPos(3, 1)
        assert victim.read(("read", "t", "k"), victim.position()) == ("ok", SECRET)
    finally:
        for storage in (victim, neighbour, healthy):
            storage.close()


def test_damage_while_open_is_never_returned(root: Path, tmp_path: Path) -> None:
    storage = open_part(root, 1)
    try:
        seed(storage, SECRET)
        storage.env.sync(True)
        # LMDB reads through a shared mapping of the file: a write to the file shows at once.
        assert flip_all(root / NODE_DIR / "data.mdb", SECRET) >= 1
        with pytest.raises(StorageCorruptionError, match="checksum mismatch"):
            storage.read(("read", "t", "k"), storage.position())
        with pytest.raises(StorageCorruptionError):
            storage.create_snapshot(tmp_path / "snap")
        assert storage.read(("read", "t", "other"), storage.position()) == ("ok", 7)
    finally:
        storage.close()


def test_a_value_moved_to_another_key_fails_its_check(root: Path) -> None:
    storage = open_part(root, 1)
    try:
        seed(storage, "v")
        db, env = storage._db, storage.env
        with env.begin(write=True) as txn:
            stored = txn.get(storage._encode("k"), db=db)
            txn.put(storage._encode("other"), stored, db=db)
        with pytest.raises(StorageCorruptionError):
            storage.read(("read", "t", "other"), storage.position())
    finally:
        storage.close()


def test_concurrent_partitions_share_group_commits(root: Path) -> None:
    parts = [open_part(root, p) for p in range(8)]
    node = parts[0]._node
    assert node is not None
    try:

        def work(storage: NodeLmdbStorage) -> None:
            for index in range(1, 41):
                storage.apply(("write", "t", "k", index), LogPos(index, 1))

        threads = [threading.Thread(target=work, args=(s,)) for s in parts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for storage in parts:
            assert storage.position() == LogPos(40, 1)
            assert storage.read(("read", "t", "k"), storage.position()) == ("ok", 40)
            storage._drain()  # its last write committed (a read takes the row from it)
        assert node.writes == 8 * 40
        assert node.commits < node.writes  # some transactions carried several partitions
    finally:
        for storage in parts:
            storage.close()


class _Applier(otp.Process):
    """A scheduled stand-in for a storage actor: applies one write per call."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        storage, index = request
        storage.apply(("write", "t", "k", index), LogPos(index, 1))
        return "ok"


def test_scheduled_writers_wait_without_holding_io_threads(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage actors are scheduled and commit through the node's I/O threads: a writer
    waiting for another's group commit must not hold one of them, or a group can carry at most
    as many partitions as there are I/O threads (here 1: one partition per transaction)."""
    parts = [open_part(root, p) for p in range(8)]
    node = parts[0]._node
    assert node is not None
    real = type(node)._transaction
    first = threading.Event()

    def slow_first(self: Any, group: list[_Write]) -> None:
        if not first.is_set():
            first.set()
            threading.Event().wait(0.3)  # the others queue meanwhile
        real(self, group)

    monkeypatch.setattr(type(node), "_transaction", slow_first)
    otp_node = otp.Node("lmdbsched@t", schedulers=1, io_threads=1, process_type=otp.SCHEDULED)
    try:
        appliers = [_Applier.start(node=otp_node) for _ in parts]
        before = node.commits
        handles = [otp.send_request(a, (s, 1)) for a, s in zip(appliers, parts, strict=True)]
        assert [otp.wait_response(h, 20) for h in handles] == ["ok"] * len(parts)
        assert node.commits - before <= 3  # the first alone, then the rest in one or two
        for storage in parts:
            assert storage.read(("read", "t", "k"), storage.position()) == ("ok", 1)
    finally:
        otp_node.stop()
        for storage in parts:
            storage.close()


def test_a_failing_write_fails_only_its_own_partition(root: Path) -> None:
    one, two = open_part(root, 1), open_part(root, 2)
    node = one._node
    assert node is not None
    try:
        good = _Write(one._db, one._seed, [[(b"\xa1a", b"\x01")]], [], "one")
        bad = _Write(two._db, two._seed, [[(b"x" * 600, b"\x01")]], [], "two")  # key too long
        also = _Write(one._db, one._seed, [[(b"\xa1b", b"\x02")]], [], "one")
        node._commit_group([good, bad, also])
        assert good.error is None and also.error is None
        assert isinstance(bad.error, lmdb.Error)
        assert one.read(("read", "t", "a"), one.position()) == ("ok", 1)
        assert one.read(("read", "t", "b"), one.position()) == ("ok", 2)
    finally:
        one.close()
        two.close()


def test_state_of_a_per_partition_lmdb_storage_is_imported(root: Path) -> None:
    from waraft.storage.lmdb import LmdbStorage

    old = LmdbStorage.open(opts(1), root / "t.1")
    seed(old, "kept")
    old.close()
    storage = open_part(root, 1)
    try:
        assert storage.position() == LogPos(3, 1)
        assert storage.config() == (LogPos(1, 1), CONFIG)
        assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "kept")
        storage.apply(("write", "t", "k", "new"), LogPos(4, 1))
    finally:
        storage.close()
    storage = open_part(root, 1)  # imported once: the marker is there now
    try:
        assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "new")
    finally:
        storage.close()


GROUP_WRITER = """
import sys, threading
from pathlib import Path
from waraft.core.types import Identity, LogPos
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import StorageOptions

root = Path(sys.argv[1])
out = threading.Lock()


def run(partition):
    options = StorageOptions(
        "t", partition, Identity("raft_server_t_1", "a@host"), extra={"lmdb_flush_interval_ms": 0}
    )
    storage = NodeLmdbStorage.open(options, root / f"t.{partition}")
    index = storage.position().index
    while True:
        index += 1
        storage.apply_many(
            [("write", "t", ("k", index), index), ("write", "t", "last", index)],
            LogPos(index, 1),
        )
        # With lazy sync an apply returns once it is queued and the partition's previous
        # apply is committed (the WAL, not LMDB, is what makes an entry durable): acknowledged
        # here is thus the previous index.
        with out:
            print(partition, index - 1, flush=True)


threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def test_kill_9_during_group_commits_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    root = tmp_path / "db"
    acknowledged = dict.fromkeys(range(4), 0)
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", GROUP_WRITER, str(root)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watchdog = threading.Timer(30.0, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for _ in range(150 + 100 * round_):
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else "writer died"
                partition, index = map(int, line.split())
                acknowledged[partition] = index
            os.kill(proc.pid, signal.SIGKILL)  # most likely inside a group's transaction
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for partition in range(4):
            storage = open_part(root, partition)
            try:
                assert storage.status()["quarantine"] is None
                index = storage.position().index
                assert index >= acknowledged[partition], (partition, index, acknowledged)
                assert storage.read(("read", "t", "last"), storage.position()) == ("ok", index)
                assert storage.read(("read", "t", ("k", index)), storage.position()) == (
                    "ok",
                    index,
                )
            finally:
                storage.close()


def _break_next_group_commit(node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's committer raises ``committer bug`` for its next group, then works again."""
    real = type(node)._commit_group
    broken = threading.Event()
    broken.set()

    def breaks_once(self: Any, group: list[_Write]) -> bool:
        if broken.is_set():
            broken.clear()
            raise RuntimeError("committer bug")
        return real(self, group)

    monkeypatch.setattr(type(node), "_commit_group", breaks_once)


def test_a_group_commit_that_breaks_fails_its_writes_and_the_committer_goes_on(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lmdb_sync: each apply waits for its own commit (lazy sync: the next test).
    storage = open_lazy(root, 1, lmdb_sync=True)
    node = storage._node
    assert node is not None
    _break_next_group_commit(node, monkeypatch)
    try:
        with pytest.raises(RuntimeError, match="committer bug"):
            storage.apply(("write", "t", "k", 1), LogPos(3, 1))  # never reported as done
        storage.apply(("write", "t", "k", 2), LogPos(3, 1))  # the committer is still there
        assert storage.read(("read", "t", "k"), storage.position()) == ("ok", 2)
    finally:
        storage.close()


# -- lazy sync: applies do not wait for their own commit ----------------------------------------


def test_lazy_sync_a_failed_write_fails_every_later_call_and_a_reopen_goes_back(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_part(root, 1)
    node = storage._node
    assert node is not None
    seed(storage, "v")
    assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "v")
    storage._drain()  # the seed's last write committed before the committer breaks
    _break_next_group_commit(node, monkeypatch)
    writes = node.writes
    try:
        storage.apply(("write", "t", "k", 1), LogPos(4, 1))  # queued: its failure comes later
        with pytest.raises(RuntimeError, match="committer bug"):
            storage.apply(("write", "t", "k", 2), LogPos(5, 1))
        assert node.writes == writes  # nothing after the failed write was queued
        with pytest.raises(RuntimeError, match="committer bug"):  # for good, reads too
            storage.read(("read", "t", "k"), storage.position())
    finally:
        storage.close()
    storage = open_part(root, 1)  # what a restarted storage actor does
    try:
        assert storage.position() == LogPos(3, 1)
        assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "v")
    finally:
        storage.close()


@pytest.mark.parametrize("sync", [False, True])
def test_lazy_sync_apply_returns_before_its_commit_and_reads_see_it_meanwhile(
    root: Path, monkeypatch: pytest.MonkeyPatch, sync: bool
) -> None:
    storage = open_lazy(root, 1, lmdb_sync=sync)
    node = storage._node
    assert node is not None
    seed(storage, "v")
    assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "v")
    storage._drain()  # the seed's last write committed before the commits are held
    node.flush()
    real = type(node)._transaction
    gate = threading.Event()

    def held(self: Any, group: list[_Write]) -> None:
        assert gate.wait(10)
        real(self, group)

    monkeypatch.setattr(type(node), "_transaction", held)
    results: list[Any] = []

    def apply_then_read() -> None:
        storage.apply(("write", "t", "k", "new"), LogPos(4, 1))
        results.append("applied")
        results.append(storage.read(("read", "t", "k"), storage.position()))

    worker = threading.Thread(target=apply_then_read)
    try:
        worker.start()
        time.sleep(0.3)
        # Lazy sync: the apply returned with its commit held, and the read after it takes
        # the row from the held write. lmdb_sync: the apply itself waits for its commit.
        assert results == ([] if sync else ["applied", ("ok", "new")])
        if not sync:
            assert storage.position() == LogPos(4, 1)
            assert storage.durable_position() == LogPos(3, 1)  # not counted before its commit
        gate.set()
        worker.join(10)
        assert results == ["applied", ("ok", "new")]
    finally:
        gate.set()
        worker.join(10)
        storage.close()


# -- lazy sync: the durable position ----------------------------------------------------------


def open_lazy(root: Path, partition: int, **extra: Any) -> NodeLmdbStorage:
    return NodeLmdbStorage.open(opts(partition, **extra), root / f"t.{partition}")


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_lazy_sync_durable_position_trails_until_a_flush_covers_it(root: Path) -> None:
    # An hour between background flushes: only the explicit flush below moves it.
    storage = open_lazy(root, 1, lmdb_sync_interval_ms=3_600_000)
    node = storage._node
    assert node is not None and not node.sync
    try:
        seed(storage, "v")
        assert storage.position() == LogPos(3, 1)
        assert storage.durable_position() == LogPos(0, 0)  # nothing flushed since open
        storage._drain()  # the last apply's commit
        node.flush()
        assert storage.durable_position() == LogPos(3, 1)
        storage.apply(("write", "t", "k", 2), LogPos(4, 1))
        storage.apply(("write", "t", "k", 3), LogPos(5, 1))
        assert storage.durable_position() == LogPos(3, 1)  # committed, not yet flushed
        storage._drain()  # 5's commit
        # (status does not wait for an in-flight write: it answers during a full-disk stall)
        assert storage.status()["durable_position"] == LogPos(3, 1)
        node.flush()
        assert storage.durable_position() == LogPos(5, 1)
        assert len(storage._unsynced) == 0
    finally:
        storage.close()


def test_lazy_sync_flushes_in_the_background_within_its_interval(root: Path) -> None:
    one = open_lazy(root, 1, lmdb_sync_interval_ms=50)
    two = open_lazy(root, 2)  # the node's options come from the first partition
    node = one._node
    assert node is not None
    try:
        seed(one, "one")
        seed(two, "two", index=7)
        assert wait_for(lambda: one.durable_position() == LogPos(3, 1))
        assert wait_for(lambda: two.durable_position() == LogPos(7, 1))
        assert node.syncs >= 1
        syncs = node.syncs
        time.sleep(0.3)
        assert node.syncs == syncs  # idle: no commit, no flush
    finally:
        one.close()
        two.close()


def test_lazy_sync_flushes_early_once_its_byte_bound_is_written(root: Path) -> None:
    storage = open_lazy(root, 1, lmdb_sync_interval_ms=3_600_000, lmdb_sync_bytes=4096)
    try:
        seed(storage, "v")
        storage.apply(("write", "t", "big", b"x" * 8192), LogPos(4, 1))
        assert wait_for(lambda: storage.durable_position() == LogPos(4, 1))
    finally:
        storage.close()


def test_fsync_per_commit_is_durable_as_soon_as_it_returns(root: Path) -> None:
    storage = open_lazy(root, 1, lmdb_sync=True)
    try:
        seed(storage, "v")
        assert storage.durable_position() == LogPos(3, 1)
        assert storage._node is not None and storage._node._syncer is None
    finally:
        storage.close()


def test_a_snapshot_install_is_flushed_before_it_returns(root: Path, tmp_path: Path) -> None:
    one = open_lazy(root, 1, lmdb_sync_interval_ms=3_600_000)
    two = open_lazy(root, 2)
    try:
        seed(one, "one")
        seed(two, "two", index=9)
        assert one.create_snapshot(tmp_path / "snap") == "ok"
        assert two.open_snapshot(tmp_path / "snap", LogPos(3, 1)) == "ok"
        # The log is reset to the snapshot's position next: it must not wait for a flush.
        assert two.durable_position() == LogPos(3, 1)
        assert one.durable_position() == LogPos(3, 1)  # the same flush covered one's writes
    finally:
        one.close()
        two.close()


def test_a_reopened_partition_counts_as_durable_only_once_flushed(root: Path) -> None:
    keeper = open_lazy(root, 1, lmdb_sync_interval_ms=3_600_000)  # keeps the environment open
    try:
        storage = open_lazy(root, 2)
        seed(storage, "v")
        storage.close()  # the storage actor restarted, the process (and page cache) did not
        storage = open_lazy(root, 2)
        try:
            assert storage.position() == LogPos(3, 1)
            assert storage.durable_position() == LogPos(0, 0)
            assert keeper._node is not None
            keeper._node.flush()
            assert storage.durable_position() == LogPos(3, 1)
        finally:
            storage.close()
    finally:
        keeper.close()


# -- the storage actor: one transaction per apply message --------------------------------------


class _Queues:
    settings = Settings()

    def fulfill_apply(self, count: int, size: int) -> None:
        pass

    def commits_finished(self, count: int, priority: Any, applied: bool = False) -> None:
        pass

    def take_reads(self, index: int, limit: int | None = None) -> list[Any]:
        return []

    def reads_ready(self, index: int) -> bool:
        return False

    def apply_queue_size(self) -> int:
        return 0


class _Reply:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers

    def reply(self, result: Any) -> None:
        self.answers.append(result)


def _storage_actor(provider: Any) -> Any:
    """A storage actor's apply path around ``provider``, without its process."""
    from waraft.core.sessions import SessionTable
    from waraft.storage import StorageServer

    actor = StorageServer.__new__(StorageServer)
    actor.name, actor.provider, actor.queues = "s", provider, _Queues()
    actor.position, actor.witness, actor.sessions = provider.position(), False, SessionTable()
    actor._notify_complete = False
    actor._reads_served = actor._more_reads = False
    actor._merge_batches = bool(getattr(provider, "merge_batches", False))
    actor._check_results = not getattr(provider, "results_encode", False)
    return actor


def test_the_batches_of_an_apply_message_commit_in_one_transaction(root: Path) -> None:
    """Each ``$batch`` entry used to be an ``apply_many`` of its own: a group-commit round
    trip (a hand-off to the committer thread and a wake-up back) per entry. (With
    ``lmdb_sync``: with lazy sync an apply only fills the write-back buffer.)"""
    from waraft.core.types import Entry, Priority
    from waraft.services.codec import packb

    storage = open_lazy(root, 1, lmdb_sync=True)
    assert storage.merge_batches
    node = storage._node
    assert node is not None
    storage.apply_config(CONFIG, LogPos(1, 1))
    actor = _storage_actor(storage)
    answers: list[Any] = []
    reply = _Reply(answers)
    batch = lambda *cs: ("$batch", packb(list(cs)))  # noqa: E731
    items = [
        (
            2,
            Entry(1, "a", batch(("write", "t", "x", 1), ("write", "t", "y", 2))),
            reply,
            Priority.HIGH,
        ),
        (3, Entry(1, "b", ("write", "t", "z", 3)), reply, Priority.HIGH),
        (
            4,
            Entry(
                1,
                "c",
                batch(
                    ("delete", "t", "x"),
                ),
            ),
            reply,
            Priority.HIGH,
        ),
        (5, Entry(1, "d", batch(("write", "t", "w", 4), ("bogus",))), reply, Priority.HIGH),
    ]
    try:
        before = node.commits
        actor._apply(items[:3], 0)
        assert node.commits - before == 1  # three entries, one transaction
        assert answers == [["ok", "ok"], "ok", ["ok"]]
        assert storage.position() == actor.position == LogPos(4, 1)
        assert storage.read(("read", "t", "x"), storage.position()) == "not_found"
        assert storage.read(("read", "t", "y"), storage.position()) == ("ok", 2)
        # A command the provider rejects fails the merged chunk; its commands are then applied
        # one by one, each answered as apply_many's fallback answers it.
        answers.clear()
        actor._apply(items[3:], 0)
        assert answers[0][0] == "ok" and answers[0][1][0] == "error"
        assert storage.read(("read", "t", "w"), storage.position()) == ("ok", 4)
        assert storage.position() == LogPos(5, 1)
    finally:
        storage.close()


class _Holder(otp.Process):
    """A stand-in for a storage actor: opens a partition in its own process on request."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        kind, root, partition = request
        assert kind == "open"
        try:
            return open_part(root, partition)
        except StorageLockedError as exc:
            return ("locked", str(exc))
        except StorageError as exc:
            return ("error", str(exc))

    def handle_cast(self, msg: Any) -> None:
        kind, storage, path, position = msg
        assert kind == "install"
        storage.open_snapshot(path, position)  # on an I/O thread, as the storage actor's


def _opened_by_a_killed_holder(otp_node: otp.Node, root: Path) -> NodeLmdbStorage:
    """Partition 1, seeded, opened by a process that was then killed (never closed)."""
    holder = _Holder.start(node=otp_node)
    opened: NodeLmdbStorage = otp.call(holder, ("open", root, 1), 20)
    seed(opened, "before")
    # With lazy sync the last apply is only queued; waited for here, so that the holder
    # dies with its seed in LMDB (a queued write of a killed holder is fenced off, and the
    # log would replay it: the CI saw position 2 here instead of 3).
    assert opened.read(("read", "t", "other"), opened.position()) == ("ok", 7)
    opened._drain()
    with otp_node.activate():
        otp.kill(holder)
        otp.wait_exit(holder, 10)
    return opened


def test_a_partition_whose_holder_was_killed_is_taken_over_and_its_writes_fenced(
    root: Path,
) -> None:
    """A storage actor killed untrappably never closes its partition: the next open (the
    restarted actor's) takes it over instead of failing with ``StorageLockedError`` forever,
    drops every later write of the dead holder, and the node's reference count stays right."""
    otp_node = otp.Node("lmdbholder@t", process_type=otp.SCHEDULED)
    try:
        with otp_node.activate():
            held: NodeLmdbStorage = otp.call(_Holder.start(), ("open", root, 2), 20)
            # A live holder keeps its partition.
            refused = otp.call(_Holder.start(), ("open", root, 2), 20)
            assert refused[0] == "locked" and "already open" in refused[1]
        old = _opened_by_a_killed_holder(otp_node, root)
        new: NodeLmdbStorage = otp.call(_Holder.start(node=otp_node), ("open", root, 1), 20)
        node = new._node
        assert node is not None and node.reclaimed == 1
        assert new.position() == LogPos(3, 1)
        assert new.read(("read", "t", "k"), new.position()) == ("ok", "before")
        # What the dead holder still sends (a job it left on an I/O thread) is dropped.
        late = _Write(old._db, old._seed, [[(b"\xa1k", b"\xa5stale")]], [], "old", old._lease)
        with pytest.raises(Exception, match="taken over"):
            node.commit(late)
        assert new.read(("read", "t", "k"), new.position()) == ("ok", "before")
        new.apply(("write", "t", "k", "after"), LogPos(4, 1))
        assert new.read(("read", "t", "k"), new.position()) == ("ok", "after")
        old.close()  # a close that runs late after all changes nothing
        assert new.read(("read", "t", "k"), new.position()) == ("ok", "after")
        new.close()
        held.close()
        # Every reference went back: the environment is closed and its lock released.

        assert str(root / NODE_DIR) not in NodeEnv._registry
    finally:
        otp_node.stop()


@pytest.mark.parametrize("held", ["before_its_transaction", "inside_its_transaction"])
def test_a_snapshot_install_left_running_by_a_killed_holder_never_lands_under_its_successor(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    """A storage actor killed while its snapshot install runs on an I/O thread (a partition
    restart whose shutdown timed out on a large install) leaves the job running. Its write
    transaction used to bypass the lease fence: it committed after the restarted actor had
    read the partition's old position, which then served the snapshot's data at that position
    (acknowledged writes gone) and applied entries twice. The install must fail instead,
    whether the take-over comes before its transaction starts or while it copies rows."""
    otp_node = otp.Node("lmdbinstall@t", process_type=otp.SCHEDULED)
    snapshot = tmp_path / "snap"
    assert (
        NodeLmdbStorage.make_empty_snapshot(
            opts(1), snapshot, LogPos(500, 1), CONFIG, {"k": "snap"}
        )
        == "ok"
    )
    entered, go, ended = threading.Event(), threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []
    real = NodeLmdbStorage._replace

    def held_rows(rows: Any) -> Iterator[Any]:
        entered.set()  # iterated inside the replace's write transaction
        assert go.wait(20)
        yield from rows

    def replace(self: NodeLmdbStorage, rows: Any, meta: Any, **kwargs: Any) -> None:
        try:
            if held == "before_its_transaction":
                entered.set()
                assert go.wait(20)
            else:
                rows = held_rows(rows)
            real(self, rows, meta, **kwargs)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
            raise
        finally:
            ended.set()

    try:
        holder = _Holder.start(node=otp_node)
        old: NodeLmdbStorage = otp.call(holder, ("open", root, 1), 20)
        seed(old, "before")
        old._drain()
        node = old._node
        assert node is not None and old._lease is not None
        monkeypatch.setattr(NodeLmdbStorage, "_replace", replace)
        with otp_node.activate():
            otp.cast(holder, ("install", old, snapshot, LogPos(500, 1)))
            assert entered.wait(10)
            otp.kill(holder)
            otp.wait_exit(holder, 10)
        opened: list[Any] = []
        successor = _Holder.start(node=otp_node)
        opening = threading.Thread(
            target=lambda: opened.append(otp.call(successor, ("open", root, 1), 30))
        )
        opening.start()
        # The install goes on only once the take-over fenced the dead holder (a take-over
        # that comes while it copies rows waits for it: the writer lock is its).
        assert wait_for(lambda: node._leases.get("t.1") != old._lease[1])
        go.set()
        opening.join(30)
        assert ended.wait(20)
        new = opened[0]
        assert isinstance(new, NodeLmdbStorage)
        assert new.read(("read", "t", "k"), new.position()) == ("ok", "before")
        assert new.position() == LogPos(3, 1)
        assert outcome and outcome[0] is not None and "taken over" in str(outcome[0])
        new.apply(("write", "t", "k", "after"), LogPos(4, 1))
        new.close()
        again: NodeLmdbStorage = otp.call(_Holder.start(node=otp_node), ("open", root, 1), 20)
        assert again.position() == LogPos(4, 1)
        assert again.read(("read", "t", "k"), again.position()) == ("ok", "after")
        again.close()
        assert str(root / NODE_DIR) not in NodeEnv._registry  # every reference went back
    finally:
        go.set()
        otp_node.stop()


def test_a_take_over_whose_barrier_fails_leaves_the_partition_to_the_next_open(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    otp_node = otp.Node("lmdbbarrier@t", process_type=otp.SCHEDULED)
    try:
        _opened_by_a_killed_holder(otp_node, root)
        real = NodeEnv.commit
        failures = [StorageError("the disk is gone for a moment")]

        def commit(self: NodeEnv, write: _Write) -> None:
            if failures:
                raise failures.pop()
            real(self, write)

        monkeypatch.setattr(NodeEnv, "commit", commit)
        failed = otp.call(_Holder.start(node=otp_node), ("open", root, 1), 20)
        assert failed[0] == "error" and "gone" in failed[1]
        new: NodeLmdbStorage = otp.call(_Holder.start(node=otp_node), ("open", root, 1), 20)
        assert new.read(("read", "t", "k"), new.position()) == ("ok", "before")
        new.close()
        assert str(root / NODE_DIR) not in NodeEnv._registry  # every reference went back
    finally:
        otp_node.stop()


def test_a_full_disk_holds_commits_back_until_there_is_room(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that finds the disk full (ENOSPC) used to fail its write, and the storage
    actor crashed on it: its partition restarted every few seconds for as long as the disk
    stayed full. Now nothing of the group is done: it is retried with a backoff and lands,
    in order, once there is room; stopping on a full disk fails the writes, never hangs."""
    storage, node, full = _failing_commits(root, monkeypatch, errno.ENOSPC, "No space left")
    storage.apply(("write", "t", "k", "new"), LogPos(4, 1))  # lazy: queued, not waited for
    assert wait_for(lambda: full["attempts"] >= 2)
    assert node.stalled is not None and "disk full" in node.stalled and node.stalls == 1
    assert storage.status()["node_stalled"] == node.stalled  # what an operator sees
    inflight = storage._inflight
    assert inflight is not None and not inflight[0].done
    time.sleep(0.3)
    assert full["attempts"] < 8  # backing off, not spinning
    full["now"] = False
    assert wait_for(lambda: inflight[0].done)
    assert inflight[0].error is None and node.stalled is None
    assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "new")
    # Closing while the disk is full withdraws the queued write (never committed: the log
    # still holds its entry) instead of waiting for room; the next open re-applies from 4.
    full["now"] = True
    storage.apply(("write", "t", "k", "lost"), LogPos(5, 1))
    assert wait_for(lambda: node.stalled is not None)
    queued = storage._inflight
    assert queued is not None
    storage.close()
    assert queued[0].done and isinstance(queued[0].error, StorageError)
    full["now"] = False
    reopened = open_lazy(root, 1)
    try:
        assert reopened.position() == LogPos(4, 1)
        assert reopened.read(("read", "t", "k"), reopened.position()) == ("ok", "new")
    finally:
        reopened.close()


def _failing_commits(
    root: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str, **extra: Any
) -> tuple[NodeLmdbStorage, NodeEnv, dict[str, Any]]:
    """Partition 1 seeded and flushed, then every commit of its node failing as py-lmdb
    fails them (``DiskError``, the errno in ``code``) while ``state["now"]`` (counted in
    ``state["attempts"]``)."""
    storage = open_lazy(root, 1, **extra)
    node = storage._node
    assert node is not None
    seed(storage, "v")
    storage.write_back()
    storage._drain()
    node.flush()
    real = type(node)._transaction
    state: dict[str, Any] = {"now": True, "attempts": 0}

    def transaction(self: Any, group: list[_Write]) -> None:
        if state["now"]:
            state["attempts"] += 1
            exc = lmdb.DiskError(f"mdb_txn_commit: {reason}")
            exc.code = code  # type: ignore[attr-defined]
            raise exc
        real(self, group)

    monkeypatch.setattr(type(node), "_transaction", transaction)
    return storage, node, state


@pytest.mark.parametrize(("free", "stalls"), [(1 << 20, True), (1 << 40, False)])
def test_a_short_write_on_a_nearly_full_disk_is_a_full_disk(
    root: Path, monkeypatch: pytest.MonkeyPatch, free: int, stalls: bool
) -> None:
    """LMDB reports a short write as EIO, and a write that fills the disk is often short:
    counted as a failure, it left the partition's write failed for good (every later call,
    snapshot installs included, raised it until the node restarted: make full-disk-drill).
    With little room left it is a full disk, waited out; with room, EIO is a failure."""
    storage, node, broken = _failing_commits(root, monkeypatch, errno.EIO, "Input/output error")
    usage = shutil.disk_usage(root)
    monkeypatch.setattr(node_lmdb.shutil, "disk_usage", lambda _: usage._replace(free=free))
    storage.apply(("write", "t", "k", "new"), LogPos(4, 1))
    inflight = storage._inflight
    assert inflight is not None
    if stalls:
        assert wait_for(lambda: node.stalled is not None)
        assert not inflight[0].done
        broken["now"] = False
        assert wait_for(lambda: inflight[0].done) and inflight[0].error is None
        assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "new")
    else:
        assert wait_for(lambda: inflight[0].done)
        assert isinstance(inflight[0].error, lmdb.Error) and node.stalled is None
    storage.close()


# -- lazy sync: the write-back buffer -----------------------------------------------------------


def _stored_keys(storage: NodeLmdbStorage) -> set[bytes]:
    """The data keys in LMDB itself (not the buffer), checked."""
    with storage._committed_env().begin(db=storage._db) as txn:
        return {bytes(key) for key, _ in txn.cursor() if not bytes(key).startswith(b"\xc1meta:")}


def test_the_write_back_buffer_serves_reads_and_stores_each_key_once(root: Path) -> None:
    from waraft.services.codec import packb

    storage = open_lazy(root, 1, lmdb_flush_interval_ms=3_600_000, lmdb_flush_bytes=1 << 30)
    node = storage._node
    assert node is not None
    long_key = "L" * 600  # stored under its digest
    try:
        storage.apply_config(CONFIG, LogPos(1, 1))
        storage.write_back()
        storage._drain()
        writes, flushed = node.writes, storage.durable_position()
        commands = [("write", "t", f"k{i % 5}", i) for i in range(100)]
        commands += [("delete", "t", "k4"), ("write", "t", long_key, "long")]
        assert storage.apply_many(commands, LogPos(2, 1), "lbl") == ["ok"] * len(commands)
        storage.apply(("write", "t", "k0", "last"), LogPos(3, 1))
        storage.apply(("delete", "t", "k1"), LogPos(4, 1))
        assert node.writes == writes  # nothing queued yet: all in the buffer
        assert storage.status()["pending_rows"] == 6
        assert storage.position() == LogPos(4, 1) and storage.label() == "lbl"
        # Reads see the buffer; LMDB does not have any of it, and it is not durable.
        assert storage.read(("read", "t", "k0"), storage.position()) == ("ok", "last")
        assert storage.read(("read", "t", "k1"), storage.position()) == "not_found"
        assert storage.read(("read", "t", "k3"), storage.position()) == ("ok", 98)
        assert storage.read(("read", "t", "k4"), storage.position()) == "not_found"
        assert storage.read(("read", "t", long_key), storage.position()) == ("ok", "long")
        assert _stored_keys(storage) == set()
        assert storage.durable_position() == flushed
        assert storage.write_back_due() is not None
        storage.write_back()
        assert storage.write_back_due() is None
        storage._drain()  # the write is queued, not waited for
        assert node.writes == writes + 1  # one write for all of it, each key once
        assert _stored_keys(storage) == {packb("k0"), packb("k2"), packb("k3")} | {
            k for k in _stored_keys(storage) if k.startswith(b"\xc1") and len(k) == 33
        }
        assert len(_stored_keys(storage)) == 4
        assert storage.read(("read", "t", "k3"), storage.position()) == ("ok", 98)
        node.flush()
        assert storage.durable_position() == LogPos(4, 1)
    finally:
        storage.close()
    reopened = open_lazy(root, 1)  # metadata went with the rows
    try:
        assert reopened.position() == LogPos(4, 1) and reopened.label() == "lbl"
        assert reopened.read(("read", "t", "k0"), reopened.position()) == ("ok", "last")
    finally:
        reopened.close()


def test_the_write_back_buffer_keeps_the_newest_value_whichever_path_applied_it(
    root: Path,
) -> None:
    """Plain rows of bytes and ASCII text wait in the buffer unencoded; rows applied by the
    general path or with other values are encoded at once. A key written both ways reads
    (and is stored with) its newest value; the position and label rows still reach LMDB."""
    storage = open_lazy(root, 1, lmdb_flush_interval_ms=3_600_000, lmdb_flush_bytes=1 << 30)
    long_key = "L" * 600  # stored under its digest
    expected = {
        "a": ("ok", b"newest"),
        b"a": ("ok", b"bytes-key"),  # not the text key "a"
        "c": ("ok", "\u00e9"),
        "d": "not_found",
        long_key: ("ok", b"long"),
    }

    def check(reader: NodeLmdbStorage) -> None:
        for key, answer in expected.items():
            assert reader.read(("read", "t", key), reader.position()) == answer, key

    try:
        storage.apply_config(CONFIG, LogPos(1, 1))
        plain = [("write", "t", "a", b"raw1"), ("write", "t", b"a", b"bytes-key")]
        plain += [("write", "t", "d", b"gone"), ("write", "t", long_key, b"long")]
        assert storage.apply_many(plain, LogPos(2, 1)) == ["ok"] * 4
        storage.apply(("write", "t", "a", 7), LogPos(3, 1))  # general path, after the above
        assert storage.read(("read", "t", "a"), storage.position()) == ("ok", 7)
        storage.apply_many([("write", "t", "c", b"c1")], LogPos(4, 1))
        storage.apply_many([("write", "t", "c", "\u00e9")], LogPos(5, 1))  # encoded at once
        later = [("delete", "t", "d"), ("write", "t", "a", b"newest")]
        assert storage.apply_many(later, LogPos(6, 1), "l2") == ["ok"] * 2
        check(storage)
        assert storage.status()["pending_rows"] == 5
    finally:
        storage.close()  # writes the buffer back
    reopened = open_lazy(root, 1)
    try:
        assert reopened.position() == LogPos(6, 1) and reopened.label() == "l2"
        check(reopened)
    finally:
        reopened.close()


def test_the_write_back_buffer_is_flushed_by_its_byte_bound_and_its_interval(root: Path) -> None:
    storage = open_lazy(root, 1, lmdb_flush_interval_ms=200, lmdb_flush_bytes=2000)
    node = storage._node
    assert node is not None
    try:
        storage.apply_config(CONFIG, LogPos(1, 1))
        writes = node.writes
        storage.apply(("write", "t", "a", b"x" * 100), LogPos(2, 1))
        assert node.writes == writes
        due = storage.write_back_due()
        assert due is not None and 0.2 < due <= 0.4  # idle: 2 intervals
        storage.apply(("write", "t", "b", b"x" * 3000), LogPos(3, 1))  # past the bytes
        assert storage.write_back_due() is None
        storage._drain()
        assert node.writes == writes + 1
        storage.apply(("write", "t", "c", 1), LogPos(4, 1))
        time.sleep(0.25)
        storage.apply(("write", "t", "d", 2), LogPos(5, 1))  # older than the interval
        storage._drain()
        assert node.writes == writes + 2
        assert storage.read(("read", "t", "c"), storage.position()) == ("ok", 1)
    finally:
        storage.close()


def test_a_close_writes_the_buffer_back_and_a_crash_leaves_it_to_the_log(root: Path) -> None:
    storage = open_lazy(root, 1, lmdb_flush_interval_ms=3_600_000)
    storage.apply_config(CONFIG, LogPos(1, 1))
    storage.apply(("write", "t", "k", "kept"), LogPos(2, 1))
    storage.close()
    storage = open_lazy(root, 1)
    try:
        assert storage.position() == LogPos(2, 1)
        assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "kept")
        storage.apply(("write", "t", "k", "lost"), LogPos(3, 1))
        storage._pending.clear()  # what a crash loses: never counted as durable
        storage._pending_position = None
        node = storage._node
        assert node is not None
        node.flush()
        assert storage.durable_position() == LogPos(2, 1)  # the log keeps entry 3
    finally:
        storage.close()


def test_apply_many_takes_the_general_path_for_anything_but_plain_writes(root: Path) -> None:
    storage = open_lazy(root, 1, lmdb_flush_interval_ms=3_600_000)
    try:
        storage.apply_config(CONFIG, LogPos(1, 1))
        with pytest.raises(UnknownCommandError):
            storage.apply_many([("write", "t", "a", 1), ("bogus",)], LogPos(2, 1))
        # Plain rows with a label that cannot be stored: nothing buffered either.
        with pytest.raises(CodecError):
            storage.apply_many([("write", "t", "a", b"x")], LogPos(2, 1), label=object())
        assert storage.position() == LogPos(1, 1)
        assert storage.read(("read", "t", "a"), storage.position()) == "not_found"
        assert storage.status()["pending_rows"] == 0
        # A value msgpack alone cannot encode (a Config): waraft.codec's encoding, same reads.
        assert storage.apply_many([("write", "t", "cfg", CONFIG)], LogPos(2, 1)) == ["ok"]
        assert storage.read(("read", "t", "cfg"), storage.position()) == ("ok", CONFIG)
        assert storage.apply_many([("write", "t", "a", 1)], LogPos(3, 1)) == ["ok"]
        assert storage.read(("read", "t", "a"), storage.position()) == ("ok", 1)
    finally:
        storage.close()


def test_a_chunk_of_plain_commands_waits_in_the_buffer_and_ends_as_the_general_path_does(
    root: Path,
) -> None:
    """``apply_batch`` of plain writes and deletes (one command per entry, as a partition with
    few commands per round applies them) takes ``apply_many``'s buffer path: nothing is queued,
    and the reads, position and label, before and after a reopen, are the general path's
    (``LmdbStorage.apply_batch`` on another partition of the same node)."""
    long_key = "L" * 600
    items: list[tuple[Any, LogPos, Any]] = [
        (("write", "t", "a", b"a1"), LogPos(2, 1), None),
        (("write", "t", b"a", "bytes-key"), LogPos(3, 1), "l1"),
        (("write", "t", "d", b"gone"), LogPos(4, 1), None),
        (("write", "t", long_key, b"long"), LogPos(5, 1), "l2"),
        (("delete", "t", "d"), LogPos(6, 1), None),
        (("write", "t", "a", b"a2"), LogPos(7, 2), None),
    ]
    keys = ["a", b"a", "d", long_key, "missing"]
    fast = open_lazy(root, 1, lmdb_flush_interval_ms=3_600_000, lmdb_flush_bytes=1 << 30)
    general = open_lazy(root, 2, lmdb_flush_interval_ms=3_600_000, lmdb_flush_bytes=1 << 30)
    node = fast._node
    assert node is not None

    def state(storage: NodeLmdbStorage) -> tuple[Any, ...]:
        reads = [storage.read(("read", "t", k), storage.position()) for k in keys]
        return storage.position(), storage.label(), reads

    try:
        for storage in (fast, general):
            storage.apply_config(CONFIG, LogPos(1, 1))
            storage.write_back()
            storage._drain()
        writes = node.writes
        assert fast.apply_batch(items[:3]) == ["ok"] * 3
        assert fast.apply_batch(items[3:]) == ["ok"] * 3
        assert node.writes == writes  # all in the buffer, nothing queued
        assert len(fast._raw) == 4  # kept as applied, to be encoded at the flush, once a key
        assert LmdbStorage.apply_batch(general, items[:3]) == ["ok"] * 3
        assert LmdbStorage.apply_batch(general, items[3:]) == ["ok"] * 3
        assert state(fast) == state(general)
        assert state(fast)[:2] == (LogPos(7, 2), "l2")
        # A label msgpack cannot carry fails the chunk before anything is buffered.
        with pytest.raises(CodecError):
            fast.apply_batch([(("write", "t", "a", b"no"), LogPos(8, 2), object())])
        assert state(fast) == state(general)
        # Other values take the general path.
        assert fast.apply_batch([(("write", "t", "n", 5), LogPos(8, 2), None)]) == ["ok"]
        assert fast.read(("read", "t", "n"), fast.position()) == ("ok", 5)
        assert fast.read(("read", "t", "a"), fast.position()) == ("ok", b"a2")
        assert LmdbStorage.apply_batch(general, [(("write", "t", "n", 5), LogPos(8, 2), None)])
    finally:
        fast.close()
        general.close()
    # A closed partition refuses the chunk, as the general path does (and apply_many).
    for apply in (fast.apply_batch, LmdbStorage.apply_batch.__get__(general)):
        with pytest.raises(StorageError, match="closed"):
            apply([(("write", "t", "z", b"z"), LogPos(9, 2), None)])
    with pytest.raises(StorageError, match="closed"):
        fast.apply_many([("write", "t", "z", b"z")], LogPos(9, 2))
    with pytest.raises(StorageError, match="closed"):  # encoded at once (not ASCII): buffered too
        fast.apply_many([("write", "t", "z", "\u00e9")], LogPos(9, 2))
    fast, general = open_lazy(root, 1), open_lazy(root, 2)
    try:
        assert state(fast) == state(general)
        assert state(fast)[:2] == (LogPos(8, 2), "l2")
    finally:
        fast.close()
        general.close()


def test_bad_write_back_options_are_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="lmdb_flush"):
        open_lazy(root, 1, lmdb_flush_interval_ms=-1)


def test_a_close_whose_write_back_is_the_first_to_find_the_disk_full_does_not_wait(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The close's own write-back flush can be the first commit since the disk filled up: the
    # committer was not stalled yet when the close looked, so it waited for room.
    storage, node, full = _failing_commits(
        root, monkeypatch, errno.ENOSPC, "No space left", lmdb_flush_interval_ms=3_600_000
    )
    storage.apply(("write", "t", "k", "buffered"), LogPos(4, 1))
    assert node.stalled is None and storage.status()["pending_rows"] == 1
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (storage.close(), closed.set()), daemon=True)
    closer.start()
    try:
        assert closed.wait(5.0), "the close waited for room on a full disk"
        assert node.stalled is not None
    finally:
        full["now"] = False
        closer.join(10)
    reopened = open_lazy(root, 1)  # the log holds entry 4: applied again from it
    try:
        assert reopened.position() == LogPos(3, 1)
    finally:
        reopened.close()


def test_write_back_flushes_share_one_wake_up_and_transaction_until_someone_waits(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 1000 partitions each applying a command or two a second, nearly every apply flushed
    # its buffer, and each flush woke the committer thread: flushes now wait for company.
    monkeypatch.setattr(node_lmdb, "LAZY_COMMIT_DELAY", 0.3)
    parts = [open_lazy(root, p, lmdb_flush_interval_ms=3_600_000) for p in range(1, 5)]
    node = parts[0]._node
    assert node is not None
    try:
        for storage in parts:
            storage.apply_config(CONFIG, LogPos(1, 1))
            storage.write_back()
        commits, writes = node.commits, node.writes
        started = time.monotonic()
        for storage in parts[1:]:
            storage._drain()  # waits: hurries the queue
        assert node.writes - writes == 4 and node.commits - commits == 1
        assert time.monotonic() - started < 0.25  # the waiters did not wait for the delay
        # Nobody waits: committed together once the delay is over, not before.
        for at, storage in enumerate(parts, start=2):
            storage.apply(("write", "t", "k", at), LogPos(at, 1))
            storage.write_back()
        time.sleep(0.1)
        assert node.writes - writes == 4  # still queued
        assert wait_for(lambda: node.writes - writes == 8, 5.0)
        assert node.commits - commits == 2
        for at, storage in enumerate(parts, start=2):
            assert storage.read(("read", "t", "k"), storage.position()) == ("ok", at)
    finally:
        for storage in parts:
            storage.close()


def test_a_lazy_write_joins_the_next_urgent_commit(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_lmdb, "LAZY_COMMIT_DELAY", 3600.0)
    lazy = open_lazy(root, 1, lmdb_flush_interval_ms=3_600_000)
    other = open_lazy(root, 2)
    node = lazy._node
    assert node is not None
    try:
        lazy.apply_config(CONFIG, LogPos(1, 1))
        lazy.write_back()
        commits, writes = node.commits, node.writes
        time.sleep(0.05)
        assert node.writes == writes  # an hour's delay: only company commits it
        node.commit(_Write(other._db, other._seed, [[(b"\xa1u", b"\x01")]], [], "urgent"))
        assert node.commits == commits + 1 and node.writes == writes + 2
        assert lazy._inflight is not None and lazy._inflight[0].done
    finally:
        lazy.close()
        other.close()


def test_a_file_short_only_by_free_pages_is_whole_and_one_short_of_a_page_in_use_is_not(
    tmp_path: Path,
) -> None:
    """LMDB may leave data.mdb short of its last page number: pages allocated at the end and
    freed in the same transaction are never written, only listed as free (a cleanly stopped
    node was refused at its next start for it). Such a file opens, and LMDB goes on using it
    (in a child process: a wrong call would kill it with SIGBUS); a file one page shorter,
    missing a page in use, is still refused."""
    directory = tmp_path / "env"
    env = lmdb.open(str(directory), subdir=True, max_dbs=8)
    with env.begin(write=True) as txn:
        for i in range(64):
            txn.put(b"key%03d" % i, b"x" * 1000)
    with env.begin(write=True) as txn:  # 50 overflow pages at the end ...
        txn.put(b"big", b"y" * 200_000)
    with env.begin(write=True) as txn:  # ... freed again
        txn.delete(b"big")
    for _ in range(3):  # later transactions reuse low free pages, the end stays free
        with env.begin(write=True) as txn:
            txn.put(b"key000", b"z" * 1000)
    pages = env.info()["last_pgno"] + 1
    env.close()
    path = directory / "data.mdb"
    free = node_lmdb._free_pages(str(path), 4096)
    assert free is not None
    cut = pages
    while cut - 1 in free:
        cut -= 1
    assert cut < pages - 10  # the construction left a free tail to cut

    os.truncate(path, cut * 4096)
    env = lmdb.open(str(directory), subdir=True, max_dbs=8)
    node_lmdb._check_not_truncated(env, str(directory))  # no error
    env.close()
    use = (
        "import lmdb, sys\n"
        "env = lmdb.open(sys.argv[1], subdir=True, max_dbs=8)\n"
        "for i in range(40):\n"
        "    with env.begin(write=True) as txn:\n"
        "        txn.put(b'n%d' % i, b'q' * 3000)\n"
        "with env.begin() as txn:\n"
        "    rows = dict(txn.cursor())\n"
        "assert len(rows) == 104 and rows[b'key001'] == b'x' * 1000, len(rows)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", use, str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])

    shutil.rmtree(directory)
    env = lmdb.open(str(directory), subdir=True, max_dbs=8)
    with env.begin(write=True) as txn:
        for i in range(64):
            txn.put(b"key%03d" % i, b"x" * 1000)
    pages = env.info()["last_pgno"] + 1
    env.close()
    os.truncate(directory / "data.mdb", (pages - 1) * 4096)
    env = lmdb.open(str(directory), subdir=True, max_dbs=8)
    with pytest.raises(StorageCorruptionError, match="is truncated"):
        node_lmdb._check_not_truncated(env, str(directory))


# -- power loss, failed syncs, mixed options, reads on a full disk ----------------------------

PAGE = 4096


def _state_at(history: list[tuple[int, str, str]], index: int) -> dict[str, str]:
    return {key: value for at, key, value in history if at <= index}


def _probe_image(where: Path, history: list[tuple[int, str, str]], keys: list[str]) -> str:
    """Open the partition copied to ``where`` in a forked child (LMDB may abort on a damaged
    environment); "consistent", "quarantined", "aborted", "refused: .." or "inconsistent"
    (it opened, unquarantined, with values other than the state at its position)."""
    out = where / "outcome"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        outcome = "refused"
        try:
            opened = NodeLmdbStorage(
                opts(1, lmdb_flush_interval_ms=0, lmdb_sync_interval_ms=3_600_000),
                str(where / "t.1"),
            )
            try:
                if opened.quarantine is not None:
                    outcome = "quarantined"
                else:
                    position = opened.position()
                    expected = _state_at(history, position.index)
                    wrong = [
                        key
                        for key in keys
                        if opened.read(("read", "t", key), position)
                        != (("ok", expected[key]) if key in expected else "not_found")
                    ]
                    outcome = f"inconsistent at {position.index}: {wrong[:3]}" if wrong else "ok"
            finally:
                opened.close()
        except BaseException as exc:
            outcome = f"refused: {type(exc).__name__}"
        finally:
            out.write_text(outcome)
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return "aborted" if os.WIFSIGNALED(status) else out.read_text()


def test_a_power_loss_leaves_the_environment_as_of_one_of_its_commits(root: Path) -> None:
    """What a power loss can leave of ``data.mdb`` follows from the fsyncs LMDB does, which
    follow from the flags the node opens it with. Without a data fsync per commit the pages
    written since the last ``env.sync`` reach the disk in any order, and LMDB reuses the
    synced tree's pages two commits later: a review built such images (the synced file plus
    any one page written since, or everything but one page) and most opened without an error
    but with data older or newer than their position row (stale pages pass the checksums).
    With a data fsync per commit, only the commit in flight is torn: every such image must
    open at a position whose data it holds, or be quarantined."""
    storage = NodeLmdbStorage(
        opts(1, lmdb_flush_interval_ms=0, lmdb_sync_interval_ms=3_600_000), str(root / "t.1")
    )
    node = storage._node
    assert node is not None
    flags = node.env.flags()
    keys = [f"key{i:04d}" for i in range(400)]
    history: list[tuple[int, str, str]] = []
    storage.apply_config(CONFIG, LogPos(1, 1))
    for i, key in enumerate(keys):  # several leaves: data and position rows on other pages
        history.append((2 + i, key, f"old-{i}-" + "x" * 150))
        storage.apply(("write", "t", key, history[-1][2]), LogPos(2 + i, 1))
    storage._drain()
    node.flush()
    data = root / NODE_DIR / "data.mdb"
    synced = data.read_bytes()
    images = [synced, synced, synced]  # the file after each of the last three commits
    at = storage.position().index
    for round_ in range(3):
        for i in range(0, len(keys), 7):
            at += 1
            history.append((at, keys[i], f"new{round_}-{i}-" + "y" * 150))
            storage.apply(("write", "t", keys[i], history[-1][2]), LogPos(at, 1))
            storage._drain()  # each apply its own commit
            images = [*images[1:], data.read_bytes()]
    storage.close()
    if flags["sync"]:
        # Commits before the last are on disk whole (the last one's fsync covered the meta
        # page of the one before); the last one fsynced its data pages before writing its
        # meta page: what is in flight is its data pages and the previous meta page.
        before = images[0][: 2 * PAGE] + images[1][2 * PAGE :]
        after = images[1][: 2 * PAGE] + images[2][2 * PAGE :]
    else:
        before, after = synced, images[2]  # everything since the sync, in any order
    dirty = [
        p
        for p in range(len(after) // PAGE)
        if p * PAGE < len(before)
        and before[p * PAGE : (p + 1) * PAGE] != after[p * PAGE : (p + 1) * PAGE]
    ]
    assert dirty
    outcomes: dict[str, list[str]] = {}
    for p in dirty:
        page = slice(p * PAGE, (p + 1) * PAGE)
        one_landed = bytearray(before + after[len(before) :])
        one_landed[page] = after[page]
        one_lost = bytearray(after)
        one_lost[page] = before[page]
        for name, image in ((f"only {p}", one_landed), (f"all but {p}", one_lost)):
            where = root.parent / "images" / name.replace(" ", "_")
            shutil.copytree(root / "t.1", where / "t.1")
            (where / NODE_DIR).mkdir()
            (where / NODE_DIR / "data.mdb").write_bytes(bytes(image))
            outcome = _probe_image(where, history, keys)
            outcomes.setdefault(outcome.split(":")[0], []).append(f"{name}: {outcome}")
    assert set(outcomes) <= {"ok", "quarantined"}, outcomes


class _FailingSync:
    """The node's environment, with its next ``sync`` failing as a writeback error does."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.fail = False

    def sync(self, force: bool = False) -> None:
        if self.fail:
            self.fail = False
            raise lmdb.Error("mdb_env_sync: Input/output error")
        self.env.sync(force)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def test_after_a_failed_sync_no_later_sync_makes_anything_durable(root: Path) -> None:
    """A sync that fails may have left pages marked clean that never reached the disk; the
    next sync succeeds without writing them. Counting the commits before it as durable let
    the log trim entries the disk may not hold."""
    storage = open_lazy(root, 1, lmdb_sync_interval_ms=50)
    node = storage._node
    assert node is not None
    failing = _FailingSync(node.env)
    node.env = failing
    try:
        storage.apply_config(CONFIG, LogPos(1, 1))
        storage._drain()
        assert wait_for(lambda: storage.durable_position() == LogPos(1, 1))
        failing.fail = True  # the next background sync fails
        storage.apply(("write", "t", "k", "acknowledged"), LogPos(2, 1))
        storage._drain()
        assert wait_for(lambda: not failing.fail)
        syncs = node.syncs
        assert wait_for(lambda: node.syncs > syncs)  # later syncs succeed...
        with pytest.raises(lmdb.Error):
            failing.fail = True
            node.flush()
        node.flush()
        assert storage.durable_position() == LogPos(1, 1)  # ...and prove nothing
        assert node.sync_failure is not None and "Input/output error" in node.sync_failure
        assert storage.status()["node_sync_failure"] == node.sync_failure
    finally:
        node.env = failing.env
        storage.close()


def test_a_snapshot_install_whose_flush_fails_after_the_commit_is_ok_at_the_snapshot(
    root: Path, tmp_path: Path
) -> None:
    """The replace committed, then the flush failed (EIO): answered as "cannot install",
    the cached position stayed the old one over the snapshot's rows (and so did the storage
    actor's and the core's), reads serving new values at the old position."""
    one = open_lazy(root, 1, lmdb_sync_interval_ms=3_600_000)
    two = open_lazy(root, 2, lmdb_sync_interval_ms=3_600_000)
    node = two._node
    assert node is not None
    failing = _FailingSync(node.env)
    try:
        seed(one, "new", index=9)
        seed(two, "old", index=5)
        assert one.create_snapshot(tmp_path / "snap") == "ok"
        node.env = failing
        failing.fail = True
        assert two.open_snapshot(tmp_path / "snap", LogPos(9, 1)) == "ok"
        assert not failing.fail  # the flush after the commit did fail
        assert node.sync_failure is not None
        assert two.position() == LogPos(9, 1)
        assert two.read(("read", "t", "k"), two.position()) == ("ok", "new")
        assert two.config() == one.config()
        assert two.durable_position() < LogPos(9, 1)  # not counted durable: never flushed
    finally:
        node.env = failing.env
        one.close()
        two.close()


def test_a_partitions_lmdb_sync_follows_the_environment_it_joins(root: Path) -> None:
    """The environment is opened once per node, by its first partition: a later partition
    asking for ``lmdb_sync`` must not report its commits durable while nothing fsyncs them
    (nor a lazy one in a synced environment wait for syncs that never come)."""
    lazy = open_lazy(root, 1, lmdb_sync_interval_ms=3_600_000)
    strict = open_lazy(root, 2, lmdb_sync=True)
    node = strict._node
    assert node is not None and not node.sync
    try:
        strict.apply_config(CONFIG, LogPos(1, 1))
        strict.apply(("write", "t", "k", "v"), LogPos(2, 1))
        strict._drain()
        assert strict.durable_position() == LogPos(0, 0)  # nothing flushed it yet
        assert strict.status()["sync"] is False
        node.flush()
        assert strict.durable_position() == LogPos(2, 1)
    finally:
        strict.close()
        lazy.close()


def test_reads_are_served_while_a_flush_waits_for_room_on_a_full_disk(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the partition's last flush waits for room in the committer. Reads used to
    wait for it (a key outside the write-back buffer drained it), and so did the next due
    flush: the storage actor served nothing for as long as the disk stayed full. Now a read
    takes the flush's rows from it and any other key from LMDB, and a due flush waits
    (buffered) until the stalled one is done (a full buffer too: see
    ``test_a_full_buffer_behind_a_stalled_flush_never_waits_for_room``)."""
    storage, node, full = _failing_commits(
        root, monkeypatch, errno.ENOSPC, "No space left", lmdb_flush_interval_ms=50
    )
    try:
        storage.apply(("write", "t", "k", "new"), LogPos(4, 1))
        time.sleep(0.06)
        storage.apply(("write", "t", "b", "in flight"), LogPos(5, 1))  # due: flushed
        assert wait_for(lambda: node.stalled is not None)
        stalled = storage._inflight
        assert stalled is not None and not stalled[0].done
        answers: list[Any] = []

        def reads() -> None:
            position = storage.position()
            for key in ("other", "k", "b"):
                answers.append(storage.read(("read", "t", key), position))
            storage.apply(("write", "t", "c", "buffered"), LogPos(6, 1))
            time.sleep(0.06)
            storage.apply(("write", "t", "d", "due"), LogPos(7, 1))  # due, stays buffered
            answers.append(storage.read(("read", "t", "c"), storage.position()))
            answers.append(storage.read(("read", "t", "d"), storage.position()))
            time.sleep(0.11)  # idle for two intervals: the timer's flush is due
            answers.append(storage.write_back_due())
            storage.write_back()

        reader = threading.Thread(target=reads, daemon=True)
        reader.start()
        reader.join(3.0)
        assert not reader.is_alive(), "a read waited for room on the full disk"
        assert answers[:5] == [
            ("ok", 7),
            ("ok", "new"),
            ("ok", "in flight"),
            ("ok", "buffered"),
            ("ok", "due"),
        ]
        assert answers[5] == node_lmdb.STALL_BACKOFF_MAX  # the idle timer looks again later
        assert storage._inflight is stalled  # no second flush behind the stalled one
        full["now"] = False
        assert wait_for(lambda: stalled[0].done and node.stalled is None)
        storage.write_back()
        storage._drain()
        assert storage._pending_position is None
    finally:
        full["now"] = False
        storage.close()
    reopened = open_lazy(root, 1)
    try:
        assert reopened.position() == LogPos(7, 1)
        for key, value in (("k", "new"), ("b", "in flight"), ("c", "buffered"), ("d", "due")):
            assert reopened.read(("read", "t", key), reopened.position()) == ("ok", value)
    finally:
        reopened.close()


class _FailingCommit:
    """The node's environment, with the next write transaction's commit failing with
    ``code`` as py-lmdb reports it (the transaction aborted, nothing committed)."""

    def __init__(self, env: Any, code: int) -> None:
        self.env = env
        self.code = code
        self.fail = True

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        txn = self.env.begin(*args, **kwargs)
        if not kwargs.get("write") or not self.fail:
            return txn
        self.fail = False
        return _CommitFails(txn, self.code)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


class _CommitFails:
    def __init__(self, txn: Any, code: int) -> None:
        self.txn = txn
        self.code = code

    def commit(self) -> None:
        self.txn.abort()
        exc = lmdb.Error(f"mdb_txn_commit: {os.strerror(self.code)}")
        exc.code = self.code  # type: ignore[attr-defined]
        raise exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.txn, name)


@pytest.mark.parametrize(("code", "sync_fails"), [(errno.EIO, True), (errno.EFBIG, False)])
def test_a_commit_whose_fsync_fails_stops_the_durable_positions_too(
    root: Path, code: int, sync_fails: bool
) -> None:
    """Each commit fsyncs its data pages, and with them the previous commit's meta page: an
    I/O error there is a failed sync like any other. A file-size limit (or a full disk) only
    refuses the commit's own writes: nothing committed before is in doubt."""
    storage = open_lazy(root, 1, lmdb_sync_interval_ms=3_600_000)
    node = storage._node
    assert node is not None
    storage.apply_config(CONFIG, LogPos(1, 1))
    storage._drain()
    node.flush()
    failing = _FailingCommit(node.env, code)
    node.env = failing
    try:
        storage.apply(("write", "t", "k", "v"), LogPos(2, 1))
        with pytest.raises(lmdb.Error):
            storage._drain()
        assert (node.sync_failure is not None) is sync_fails
        other = open_lazy(root, 2)  # a partition of the same node, after the failure
        try:
            other.apply_config(CONFIG, LogPos(1, 1))
            other._drain()
            node.flush()
            assert other.durable_position() == (LogPos(0, 0) if sync_fails else LogPos(1, 1))
        finally:
            other.close()
    finally:
        node.env = failing.env
        storage.close()


def test_a_full_buffer_behind_a_stalled_flush_never_waits_for_room(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review L, bug 1: the apply that filled the write-back buffer while its last flush
    waited for room on a full disk waited for that flush, and the storage actor with it: no
    read (a strong read of a single-replica leader included) was answered until there was
    room. Now the apply returns, the buffer grows past its byte bound up to ``BEHIND_FACTOR``
    times it (then ``applies_held``: the actor holds its applies), the partition reports its
    writes stalled (new commits are refused), reads are served from buffer, stalled flush and
    LMDB, and once there is room the partition is woken and everything applied lands."""
    storage, node, full = _failing_commits(
        root,
        monkeypatch,
        errno.ENOSPC,
        "No space left",
        lmdb_flush_bytes=1024,
        lmdb_flush_interval_ms=3_600_000,
    )
    big = "x" * 1024
    try:
        storage.apply(("write", "t", "b4", big), LogPos(4, 1))  # over the bound: flushed
        assert wait_for(lambda: node.stalled is not None)
        stalled = storage._inflight
        assert stalled is not None and not stalled[0].done
        seen: list[Any] = []

        last = 12  # 8 applies of 1 KiB: BEHIND_FACTOR (8) times the byte bound

        def fill_then_read() -> None:
            for index in range(5, last + 1):
                storage.apply(("write", "t", f"b{index}", big), LogPos(index, 1))
            for key in ("k", "other", "b4", f"b{last}"):
                seen.append(storage.read(("read", "t", key), storage.position()))

        worker = threading.Thread(target=fill_then_read, daemon=True)
        worker.start()
        worker.join(2.0)
        assert not worker.is_alive(), "an apply waited for room on the full disk"
        assert seen == [("ok", "v"), ("ok", 7), ("ok", big), ("ok", big)]
        stall = storage.write_stalled()
        assert stall is not None and "disk full" in stall
        # Bounded: the storage actor holds its applies from here; no second flush.
        assert storage.applies_held()
        assert storage._pending_bytes < (node_lmdb.BEHIND_FACTOR + 1) * 1024
        assert storage._inflight is stalled
        woken = threading.Event()
        assert storage.wake_when_written(woken.set)
        full["now"] = False
        assert woken.wait(10) and stalled[0].done and stalled[0].error is None
        assert not storage.applies_held() and storage.write_stalled() is None
        assert storage.write_back_due() == 0  # left past its bound: written out at once
        storage.write_back()
        storage._drain()
        assert storage._pending_position is None
    finally:
        full["now"] = False
        storage.close()
    reopened = open_lazy(root, 1)
    try:
        assert reopened.position() == LogPos(last, 1)
        for index in range(4, last + 1):
            assert reopened.read(("read", "t", f"b{index}"), reopened.position()) == ("ok", big)
    finally:
        reopened.close()


class _Closer(otp.Process):
    """A stand-in for a storage actor's terminate: closes the partition it is handed."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        request.close()
        return "closed"


def test_the_last_close_after_the_node_stopped_its_io_threads_closes_the_environment(
    root: Path,
) -> None:
    """Node shutdown stops the I/O threads once every process had its time to stop; a storage
    actor whose terminate comes after that (stopped late, or by hand) used to queue the
    environment's close for I/O threads that were gone: it never returned and the exiting
    process kept the environment open (a reopen in the same process failed as in use). The
    close now runs on the caller when the I/O threads are stopped."""
    otp_node = otp.Node("lmdbiostop@t", schedulers=1, io_threads=1, process_type=otp.SCHEDULED)
    storage = open_part(root, 1)
    node = storage._node
    assert node is not None
    seed(storage, "before")
    try:
        closer = _Closer.start(node=otp_node)
        pool = otp_node._io_pool()
        assert pool is not None
        pool.stop(time.monotonic() + 5.0)  # the node's shutdown order
        assert otp.call(closer, storage, 10) == "closed"
    finally:
        otp_node.stop()
    assert node.refs == 0 and str(root / NODE_DIR) not in NodeEnv._registry
    with pytest.raises(lmdb.Error):
        node.env.info()  # closed
    reopened = open_part(root, 1)  # the environment's lock was let go
    try:
        assert reopened.read(("read", "t", "k"), reopened.position()) == ("ok", "before")
    finally:
        reopened.close()


def test_lmdb_sync_an_apply_on_a_full_disk_returns_and_reads_are_served_until_room_returns(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lmdb_sync``: each apply waits for its own commit, and on a full disk that wait lasted
    as long as the disk stayed full: the storage actor answered no read meanwhile. Now the
    apply returns once the committer finds the disk full, its write left waiting for room as
    a lazy flush is: reads take its row from it, the next applies are held, the partition is
    stalled (new commits refused), and the durable position stays at the last committed
    write until it lands (the log keeps the entry: a close meanwhile loses nothing)."""
    storage, node, full = _failing_commits(
        root, monkeypatch, errno.ENOSPC, "No space", lmdb_sync=True
    )
    assert storage.durable_position() == LogPos(3, 1)
    returned = threading.Event()

    def apply() -> None:
        storage.apply(("write", "t", "k", "new"), LogPos(4, 1))
        returned.set()

    worker = threading.Thread(target=apply, daemon=True)
    worker.start()
    try:
        assert returned.wait(3.0), "the apply waited for room on the full disk"
        assert node.stalled is not None
        assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "new")
        assert storage.read(("read", "t", "other"), storage.position()) == ("ok", 7)
        assert storage.position() == LogPos(4, 1)
        assert storage.durable_position() == LogPos(3, 1)  # not yet in LMDB
        assert storage.applies_held()
        assert storage.write_stalled() == node.stalled
        woken = threading.Event()
        assert storage.wake_when_written(woken.set)
        full["now"] = False  # room returns
        assert woken.wait(10)
        assert not storage.applies_held() and storage.write_stalled() is None
        assert storage.durable_position() == LogPos(4, 1)
        storage.apply(("write", "t", "k", "after"), LogPos(5, 1))  # waits for its commit again
        assert storage.durable_position() == LogPos(5, 1)
        # Closed while a write waits for room: withdrawn, never committed; reopened at the
        # last committed write (the log holds the rest).
        full["now"] = True
        storage.apply(("write", "t", "k", "stalled"), LogPos(6, 1))
        assert storage.durable_position() == LogPos(5, 1)
    finally:
        worker.join(10)
        storage.close()
        full["now"] = False
    reopened = open_lazy(root, 1, lmdb_sync=True)
    try:
        assert reopened.position() == LogPos(5, 1)
        assert reopened.read(("read", "t", "k"), reopened.position()) == ("ok", "after")
    finally:
        reopened.close()


def test_lmdb_sync_a_second_write_of_one_apply_message_does_not_wait_on_the_stalled_first(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review V, bug 1: the storage actor holds applies behind a stalled write only between
    apply messages, and one message may need several provider writes (a config entry after
    a write, a ``$batch`` with session or derived commands). With ``lmdb_sync`` the second
    write waited on the first, stalled one until there was room: the storage actor answered
    nothing for as long as the disk stayed full. Now it takes the stalled write back and
    carries its ops with its own: one write in flight, at the newest position, durable only
    once it lands, all or nothing (a close meanwhile reopens at the last committed write)."""
    storage, node, full = _failing_commits(
        root, monkeypatch, errno.ENOSPC, "No space", lmdb_sync=True
    )
    returned = threading.Event()

    def one_message() -> None:
        storage.apply(("write", "t", "k", "new"), LogPos(4, 1))  # stalls: left in flight
        storage.apply_config(CONFIG, LogPos(5, 1))
        storage.apply(("delete", "t", "other"), LogPos(6, 1))
        storage.apply(("write", "t", "k2", "v2"), LogPos(7, 1))
        returned.set()

    worker = threading.Thread(target=one_message, daemon=True)
    worker.start()
    try:
        assert returned.wait(3.0), "a later write of the message waited for room on the full disk"
        assert node.stalled is not None
        inflight = storage._inflight
        assert inflight is not None and inflight[1] == LogPos(7, 1)
        assert storage.position() == LogPos(7, 1)
        assert storage.durable_position() == LogPos(3, 1)  # none of it in LMDB yet
        assert storage.read(("read", "t", "k"), storage.position()) == ("ok", "new")
        assert storage.read(("read", "t", "other"), storage.position()) == "not_found"
        assert storage.read(("read", "t", "k2"), storage.position()) == ("ok", "v2")
        assert storage.applies_held() and storage.write_stalled() == node.stalled
        woken = threading.Event()
        assert storage.wake_when_written(woken.set)
        full["now"] = False  # room returns: the one write lands, all of it
        assert woken.wait(10)
        assert not storage.applies_held()
        assert storage.durable_position() == LogPos(7, 1)
        # Stalled again, then closed: the combined write is withdrawn whole.
        full["now"] = True
        storage.apply(("write", "t", "k", "lost"), LogPos(8, 1))
        storage.apply(("write", "t", "k2", "lost"), LogPos(9, 1))
        assert storage.durable_position() == LogPos(7, 1)
    finally:
        full["now"] = False
        worker.join(10)
        storage.close()
    reopened = open_lazy(root, 1, lmdb_sync=True)
    try:
        assert reopened.position() == LogPos(7, 1)
        assert reopened.config() == (LogPos(5, 1), CONFIG)
        at = reopened.position()
        got = [reopened.read(("read", "t", key), at) for key in ("k", "other", "k2")]
        assert got == [("ok", "new"), "not_found", ("ok", "v2")]
    finally:
        reopened.close()


def test_lmdb_sync_a_failed_write_never_counts_as_durable(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review V: with ``lmdb_sync``, a write left in flight on a full disk that then failed
    for good raised at the next call, but every later ``durable_position`` returned the
    applied position, the failed apply included (the log could have trimmed it). It stays
    at the last committed write."""
    storage, node, full = _failing_commits(
        root, monkeypatch, errno.ENOSPC, "No space", lmdb_sync=True
    )
    try:
        storage.apply(("write", "t", "k", "new"), LogPos(4, 1))  # left in flight
        storage.apply_config(CONFIG, LogPos(5, 1))  # the same write carries it on
        inflight = storage._inflight
        assert inflight is not None and node.stalled is not None

        def broken(self: Any, group: list[_Write]) -> None:
            raise lmdb.Error("mdb_txn_commit: Permission denied")

        monkeypatch.setattr(NodeEnv, "_transaction", broken)
        assert inflight[0].event.wait(10)  # the committer's retry fails it
        with pytest.raises(lmdb.Error):
            storage.durable_position()
        assert storage.durable_position() == LogPos(3, 1)
        assert storage.position() == LogPos(5, 1)
        with pytest.raises(lmdb.Error):  # failed for good: the applies it carried returned
            storage.read(("read", "t", "k"), storage.position())
    finally:
        full["now"] = False
        storage.close()
