"""LmdbStorage beyond the shared contract: durability across close and ``kill -9``, atomicity,
map growth, long keys, snapshot installs interrupted at every step, one user per partition."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lmdb")

from waraft.core.types import LogPos
from waraft.storage import lmdb as lmdb_storage
from waraft.storage.lmdb import (
    CHECKSUM_FILE,
    ENV_DIR,
    SNAPSHOT_FILE,
    LmdbStorage,
    StorageLockedError,
)
from waraft.storage.provider import (
    BAD_POSITION,
    StorageError,
    StorageOptions,
    UnknownCommandError,
)

from .helpers import A, B, make_config

OPTIONS = StorageOptions(table="t", partition=1, identity=A, name="raft_storage_t_1")
REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 20.0

# The header of every child process: the options and imports the tests' children share.
CHILD_HEADER = """
import os, signal, sys
from waraft.core.types import Identity, LogPos
from waraft.storage.lmdb import ENV_DIR, LmdbStorage, StorageLockedError
from waraft.storage.provider import StorageOptions
OPTIONS = StorageOptions("t", 1, Identity("raft_server_t_1", "a@host"))
"""


def pos(index: int, term: int = 1) -> LogPos:
    return LogPos(index, term)


def opts(**extra: Any) -> StorageOptions:
    return StorageOptions(OPTIONS.table, OPTIONS.partition, OPTIONS.identity, extra=extra)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[LmdbStorage]:
    provider = LmdbStorage.open(OPTIONS, tmp_path / "part")
    yield provider
    provider.close()


def get(storage: LmdbStorage, key: Any) -> Any:
    return storage.read(("read", "t", key), storage.position())


def child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_HEADER + textwrap.dedent(script), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_child(script: str, *args: str) -> tuple[int, str, str]:
    proc = child(script, *args)
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


# -- reopen, values, keys -------------------------------------------------------------------------


def test_reopen_keeps_data_and_metadata(tmp_path: Path) -> None:
    storage = LmdbStorage.open(OPTIONS, tmp_path)
    config = make_config(A, B)
    storage.apply_config(config, pos(1))
    storage.apply_batch([(("write", "t", k, k * 2), pos(k + 2), k) for k in range(100)])
    storage.apply_many([("write", "t", "cfg", config), ("write", "t", "none", None)], pos(102))
    storage.apply("noop_omitted", pos(103))
    storage.close()
    storage.close()  # idempotent
    assert sorted(os.listdir(tmp_path)) == [ENV_DIR, "storage.lmdb.lock"]
    storage = LmdbStorage.open(OPTIONS, tmp_path)
    assert storage.position() == pos(103)
    assert storage.config() == (pos(1), config)
    assert storage.label() == 99
    assert storage.incomplete()
    assert get(storage, 42) == ("ok", 84)
    assert get(storage, "cfg") == ("ok", config)  # a Config value survives (waraft.codec)
    assert get(storage, "none") == ("ok", None)  # a stored nil is not "not_found"
    status = storage.status()
    assert status["entries"] == 102
    assert status["position"] == pos(103)
    assert 0 < status["map_used_bytes"] <= status["map_size"]
    storage.close()


def test_long_keys_round_trip(storage: LmdbStorage, tmp_path: Path) -> None:
    long_a = "a" * 600
    long_b = ("b" * 700, 1)
    storage.apply_many(
        [("write", "t", long_a, 1), ("write", "t", long_b, 2), ("write", "t", "x" * 505, 3)],
        pos(1),
    )
    storage.apply(("write", "t", long_a + "!", 4), pos(2))
    assert get(storage, long_a) == ("ok", 1)
    assert get(storage, long_b) == ("ok", 2)
    assert get(storage, "x" * 505) == ("ok", 3)
    assert get(storage, long_a + "!") == ("ok", 4)
    assert get(storage, "c" * 600) == "not_found"
    storage.apply_batch([(("delete", "t", long_a), pos(3), None)])
    assert get(storage, long_a) == "not_found"
    assert get(storage, long_b) == ("ok", 2)
    snapshot = tmp_path / "snap"
    assert storage.create_snapshot(snapshot) == "ok"
    other = LmdbStorage.open(OPTIONS, tmp_path / "other")
    assert other.open_snapshot(snapshot, pos(3)) == "ok"
    assert get(other, long_b) == ("ok", 2)
    assert get(other, long_a) == "not_found"
    other.close()


def test_apply_many_keeps_command_order(storage: LmdbStorage) -> None:
    commands = [
        ("write", "t", "k", 1),
        ("delete", "t", "k"),
        ("write", "t", "j", 1),
        ("write", "t", "j", 2),
        ("delete", "t", "gone"),
        ("write", "t", "k", 3),
        ("delete", "t", "j"),
    ]
    assert storage.apply_many(commands, pos(5, 2), label="L") == ["ok"] * 7
    assert storage.position() == pos(5, 2)
    assert storage.label() == "L"
    assert get(storage, "k") == ("ok", 3)
    assert get(storage, "j") == "not_found"
    # Unlabelled: the label stays; an empty $batch still advances the position.
    assert storage.apply_many([], pos(6, 2)) == []
    assert storage.position() == pos(6, 2)
    assert storage.label() == "L"


def test_apply_many_with_other_commands_is_one_transaction(storage: LmdbStorage) -> None:
    storage.apply(("write", "t", "k", 0), pos(1))
    assert (
        storage.apply_many([("write", "t", "k", 1), "noop", "noop_omitted"], pos(2)) == ["ok"] * 3
    )
    assert storage.incomplete()
    assert get(storage, "k") == ("ok", 1)
    with pytest.raises(UnknownCommandError):
        storage.apply_many([("write", "t", "k", 2), ("delete", "t", "k"), ("bad",)], pos(3))
    assert storage.position() == pos(2)
    assert get(storage, "k") == ("ok", 1)


@pytest.mark.parametrize("kind", ["lmdb", "node_lmdb"])
def test_apply_batch_of_plain_writes_matches_the_general_path(tmp_path: Path, kind: str) -> None:
    """``apply_batch`` takes a fast path when every command is a plain write or delete; its
    results (data, position, label, config) must be those of the general loop, which a
    ``noop`` anywhere in the batch forces."""
    from waraft.storage.node_lmdb import NodeLmdbStorage

    cls = LmdbStorage if kind == "lmdb" else NodeLmdbStorage
    config = make_config(A, B)
    long_key = "L" * 600

    def items(first: int, noop: bool) -> list[tuple[Any, LogPos, Any]]:
        batch: list[tuple[Any, LogPos, Any]] = [
            (("write", "t", "k", 1), pos(first), None),
            (("write", "t", "j", 1), pos(first + 1), "label-a"),
            (("delete", "t", "k"), pos(first + 2), None),
            (("write", "t", long_key, "long"), pos(first + 3), None),
            (("write", "t", "k", 3), pos(first + 4), "label-b"),
            (("delete", "t", "j"), pos(first + 5), None),
            (("write", "t", "n", None), pos(first + 6, 2), None),
        ]
        if noop:
            batch.insert(4, ("noop", pos(first + 3), None))
        return batch

    stores = []
    for name, noop in (("fast", False), ("general", True)):
        storage = cls.open(OPTIONS, tmp_path / name)
        storage.apply_config(config, pos(1))
        size = 8 if noop else 7
        assert storage.apply_batch(items(2, noop)) == ["ok"] * size
        assert storage.position() == pos(8, 2)
        assert storage.label() == "label-b"
        assert storage.apply_batch(items(9, noop)) == ["ok"] * size
        # A value the plain packer cannot carry (a Config: waraft.codec) in a plain batch.
        batch = [(("write", "t", "cfg", config), pos(16, 2), None)]
        assert storage.apply_batch([*batch, (("write", "t", "z", 0), pos(17, 2), None)]) == [
            "ok",
            "ok",
        ]
        stores.append(storage)
    for storage in stores:
        assert storage.position() == pos(17, 2)
        assert storage.label() == "label-b"
        assert storage.config() == (pos(1), config)
        assert get(storage, "k") == ("ok", 3)
        assert get(storage, "j") == "not_found"
        assert get(storage, long_key) == ("ok", "long")
        assert get(storage, "cfg") == ("ok", config)
        assert get(storage, "n") == ("ok", None)
        assert get(storage, "z") == ("ok", 0)
    for storage in stores:
        storage.close()
    reopened = cls.open(OPTIONS, tmp_path / "fast")
    assert reopened.position() == pos(17, 2)
    assert reopened.label() == "label-b"
    assert get(reopened, "k") == ("ok", 3)
    reopened.close()


@pytest.mark.parametrize("kind", ["lmdb", "node_lmdb"])
def test_apply_batch_with_an_unencodable_value_applies_nothing(tmp_path: Path, kind: str) -> None:
    from waraft.storage.node_lmdb import NodeLmdbStorage

    cls = LmdbStorage if kind == "lmdb" else NodeLmdbStorage
    storage = cls.open(OPTIONS, tmp_path / "part")
    storage.apply(("write", "t", "k", 1), pos(1))
    with pytest.raises(ValueError):
        storage.apply_batch(
            [(("write", "t", "k", 2), pos(2), None), (("write", "t", "j", object()), pos(3), None)]
        )
    assert storage.position() == pos(1)
    assert get(storage, "k") == ("ok", 1)
    assert storage.apply_batch([(("write", "t", "k", 3), pos(2), "x")]) == ["ok"]
    assert get(storage, "k") == ("ok", 3)
    assert storage.label() == "x"
    storage.close()


# -- atomicity ------------------------------------------------------------------------------------


def test_failure_inside_the_transaction_applies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception after the data went into the transaction, before the commit: all aborted."""
    storage = LmdbStorage.open(OPTIONS, tmp_path)
    storage.apply_many([("write", "t", i, i) for i in range(10)], pos(1), label="l1")
    real = lmdb_storage._meta_items

    def failing(*args: Any) -> Any:
        items = real(*args)

        def rows() -> Iterator[tuple[bytes, bytes]]:
            yield items[0]  # the position is written...
            raise OSError("simulated crash before the rest of the metadata")

        return rows()

    monkeypatch.setattr(lmdb_storage, "_meta_items", failing)
    for apply in (
        lambda: storage.apply_many([("write", "t", i, -i) for i in range(20)], pos(2), "l2"),
        lambda: storage.apply_batch([(("delete", "t", 3), pos(2), None), ("noop", pos(3), "l3")]),
        lambda: storage.apply_config(make_config(A), pos(2)),
    ):
        with pytest.raises(OSError, match="simulated"):
            apply()
    monkeypatch.undo()

    def unchanged(check: LmdbStorage) -> None:
        assert check.position() == pos(1)
        assert check.label() == "l1"
        assert check.config() is None
        assert get(check, 3) == ("ok", 3)
        assert get(check, 15) == "not_found"
        assert check.status()["entries"] == 10

    unchanged(storage)
    storage.close()
    storage = LmdbStorage.open(OPTIONS, tmp_path)  # and on disk
    unchanged(storage)
    storage.close()


def test_lmdb_error_inside_the_transaction_aborts_it(
    storage: LmdbStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.apply(("write", "t", "k", 1), pos(1))
    # A metadata row LMDB itself refuses (a key over its limit), after the data rows.
    real = lmdb_storage._meta_items
    monkeypatch.setattr(lmdb_storage, "_meta_items", lambda *a: [*real(*a), (b"x" * 600, b"")])
    with pytest.raises(lmdb_storage.lmdb.Error):
        storage.apply_many([("write", "t", "k", 2), ("write", "t", "j", 2)], pos(2))
    monkeypatch.undo()
    assert storage.position() == pos(1)
    assert get(storage, "k") == ("ok", 1)
    assert get(storage, "j") == "not_found"
    assert storage.apply(("write", "t", "j", 3), pos(2)) == "ok"  # and it carries on
    assert get(storage, "j") == ("ok", 3)


def test_unencodable_value_applies_nothing(storage: LmdbStorage) -> None:
    storage.apply(("write", "t", "k", 1), pos(1))
    with pytest.raises(ValueError):
        storage.apply_many([("write", "t", "k", 2), ("write", "t", "j", object())], pos(2))
    assert storage.position() == pos(1)
    assert get(storage, "k") == ("ok", 1)
    assert storage.apply_many([("write", "t", "k", 3)], pos(2)) == ["ok"]


# -- map growth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("writemap", [True, False])
def test_map_grows_when_full(tmp_path: Path, writemap: bool) -> None:
    options = opts(lmdb_map_size=256 * 1024, lmdb_writemap=writemap)
    storage = LmdbStorage.open(options, tmp_path)
    value = b"v" * 100
    for batch in range(30):  # ~3.6 MB of entries into a 256 KiB map
        commands = [("write", "t", (batch, i), value) for i in range(1000)]
        assert storage.apply_many(commands, pos(batch + 1)) == ["ok"] * 1000
    # One batch far larger than twice the map: grown to fit, still one transaction.
    big = [("write", "t", ("big", i), b"w" * 1000) for i in range(20_000)]
    assert storage.apply_many(big, pos(31)) == ["ok"] * len(big)
    status = storage.status()
    assert status["map_size"] > 20 * 1000 * 1000
    assert status["entries"] == 50_000
    storage.close()
    storage = LmdbStorage.open(options, tmp_path)  # reopened with the small configured size
    assert storage.position() == pos(31)
    assert get(storage, (29, 999)) == ("ok", value)
    assert get(storage, ("big", 19_999)) == ("ok", b"w" * 1000)
    assert storage.apply(("write", "t", "after", 1), pos(32)) == "ok"
    storage.close()


# -- kill -9 --------------------------------------------------------------------------------------

WRITER = """
storage = LmdbStorage.open(OPTIONS, sys.argv[1])
index = storage.position().index
while True:
    index += 1
    batch = [("write", "t", k, index) for k in range(200)]
    batch.append(("write", "t", ("b", index), b"x" * 100))
    if index % 7 == 0:
        batch.append(("delete", "t", ("b", index - 1)))
    storage.apply_many(batch, LogPos(index, 1), label=index)
    sys.stdout.write(f"{index}\\n")
    sys.stdout.flush()
"""


def test_kill_9_keeps_every_committed_batch(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    last = 0
    for _ in range(4):
        proc = child(WRITER, str(tmp_path))
        watchdog = threading.Timer(CHILD_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            target = rng.randint(1, 400)
            for _ in range(target):
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else "writer died"
                last = int(line)
            # Killed at a random moment, most likely in the middle of a transaction.
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        storage = LmdbStorage.open(OPTIONS, tmp_path)
        index = storage.position().index
        assert index >= last, (index, last)
        assert storage.label() == index
        for key in (0, 57, 199):
            assert get(storage, key) == ("ok", index)
        assert get(storage, ("b", index)) == ("ok", b"x" * 100)
        assert get(storage, ("b", index + 1)) == "not_found"
        expected = 200 + sum(1 for i in range(1, index + 1) if i % 7 != 6 or i == index)
        assert storage.status()["entries"] == expected
        storage.close()
        last = index


# -- snapshots ------------------------------------------------------------------------------------


def two_states(tmp_path: Path) -> tuple[LmdbStorage, Path]:
    """A storage at position 3 (key ``old``) and a snapshot at position 9 (key ``new``)."""
    source = LmdbStorage.open(OPTIONS, tmp_path / "source")
    source.apply_config(make_config(A, B), pos(1))
    source.apply_many([("write", "t", "new", i) for i in range(5)], pos(9), label="n")
    snapshot = tmp_path / "snapshot.9.1"
    assert source.create_snapshot(snapshot) == "ok"
    source.close()
    target = LmdbStorage.open(OPTIONS, tmp_path / "part")
    target.apply_many([("write", "t", "old", 1)], pos(3), label="o")
    return target, snapshot


def assert_old(storage: LmdbStorage) -> None:
    assert storage.position() == pos(3)
    assert storage.label() == "o"
    assert storage.config() is None
    assert get(storage, "old") == ("ok", 1)
    assert get(storage, "new") == "not_found"


def assert_new(storage: LmdbStorage) -> None:
    assert storage.position() == pos(9)
    assert storage.label() == "n"
    assert storage.config() == (pos(1), make_config(A, B))
    assert get(storage, "old") == "not_found"
    assert get(storage, "new") == ("ok", 4)


def test_snapshot_files_and_position_check(tmp_path: Path) -> None:
    target, snapshot = two_states(tmp_path)
    assert sorted(os.listdir(snapshot)) == sorted([SNAPSHOT_FILE, CHECKSUM_FILE, "metadata"])
    assert target.open_snapshot(snapshot, pos(8)) == BAD_POSITION
    assert target.open_snapshot(snapshot, pos(9, 2)) == BAD_POSITION
    assert_old(target)
    assert sorted(os.listdir(tmp_path / "part")) == [ENV_DIR, "storage.lmdb.lock"]
    assert target.open_snapshot(snapshot, pos(9)) == "ok"
    assert_new(target)
    assert sorted(os.listdir(tmp_path / "part")) == [ENV_DIR, "storage.lmdb.lock"]
    target.apply(("write", "t", "after", 1), pos(10))
    target.close()
    target = LmdbStorage.open(OPTIONS, tmp_path / "part")
    assert target.position() == pos(10)
    assert get(target, "after") == ("ok", 1)
    # The snapshot was copied, not linked: writing the live state left it as it was.
    assert target.open_snapshot(snapshot, pos(9)) == "ok"
    assert_new(target)
    target.close()


def test_damaged_snapshot_is_refused_before_anything_changes(tmp_path: Path) -> None:
    target, snapshot = two_states(tmp_path)
    data = snapshot / SNAPSHOT_FILE
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one flipped byte: only the checksum sees it
    data.write_bytes(bytes(raw))
    result = target.open_snapshot(snapshot, pos(9))
    assert result[0] == "error" and "checksum" in result[1]
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    (snapshot / CHECKSUM_FILE).unlink()
    assert target.open_snapshot(snapshot, pos(9))[0] == "error"
    assert_old(target)
    target.close()


def test_failed_swap_restores_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, snapshot = two_states(tmp_path)
    real = os.rename
    calls: list[str] = []

    def rename(src: Any, dst: Any) -> None:
        calls.append(os.path.basename(src))
        if len(calls) == 2:  # the staged environment cannot be moved into place
            raise OSError("simulated rename failure")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    result = target.open_snapshot(snapshot, pos(9))
    monkeypatch.undo()
    assert result[0] == "error"
    assert calls[:2] == [ENV_DIR, ENV_DIR + ".new"]
    assert_old(target)
    assert sorted(os.listdir(tmp_path / "part")) == [ENV_DIR, "storage.lmdb.lock"]
    assert target.apply(("write", "t", "old", 2), pos(4)) == "ok"
    assert target.open_snapshot(snapshot, pos(9)) == "ok"
    assert_new(target)
    target.close()


def _fail_partition_fsyncs(
    monkeypatch: pytest.MonkeyPatch, directory: Path, failing: set[int]
) -> list[str]:
    """Make the ``failing`` (1-based) fsyncs of ``directory`` raise EIO; the fsyncs seen."""
    real = lmdb_storage.fsync_directory
    seen: list[str] = []

    def fsync_directory(path: str) -> None:
        if os.path.abspath(path) == str(directory):
            seen.append(path)
            if len(seen) in failing:
                raise OSError(errno.EIO, "Input/output error (injected)")
        real(path)

    monkeypatch.setattr(lmdb_storage, "fsync_directory", fsync_directory)
    return seen


def test_a_failed_fsync_past_the_commit_point_raises_and_the_reopen_is_at_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fsync right after rename(new, live) failing was answered ("error", ...) with the
    # snapshot's data already live and the old state deleted: the storage actor and the core
    # kept the old position over the snapshot's data.
    target, snapshot = two_states(tmp_path)
    seen = _fail_partition_fsyncs(monkeypatch, tmp_path / "part", {2})
    with pytest.raises(StorageError, match="not durably"):
        target.open_snapshot(snapshot, pos(9))
    assert len(seen) == 2
    # Both states kept until the rename is known durable (the storage actor's terminate).
    assert sorted(os.listdir(tmp_path / "part")) == sorted(
        [ENV_DIR, ENV_DIR + ".old", "storage.lmdb.lock"]
    )
    target.close()
    monkeypatch.undo()
    reopened = LmdbStorage.open(OPTIONS, tmp_path / "part")  # the actor's restart
    assert_new(reopened)
    assert sorted(os.listdir(tmp_path / "part")) == [ENV_DIR, "storage.lmdb.lock"]
    reopened.close()


def test_an_open_after_the_commit_point_fsyncs_before_removing_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Removing .old before the rename into place is durable: a power loss could keep the
    # removal and lose the rename, leaving only .new, which the next open discards.
    target, snapshot = two_states(tmp_path)
    _fail_partition_fsyncs(monkeypatch, tmp_path / "part", {2})
    with pytest.raises(StorageError):
        target.open_snapshot(snapshot, pos(9))
    target.close()
    seen = _fail_partition_fsyncs(monkeypatch, tmp_path / "part", {1})
    with pytest.raises(OSError):
        LmdbStorage.open(OPTIONS, tmp_path / "part")
    assert seen
    assert (tmp_path / "part" / (ENV_DIR + ".old")).is_dir()  # kept: nothing is durable yet
    monkeypatch.undo()
    reopened = LmdbStorage.open(OPTIONS, tmp_path / "part")
    assert_new(reopened)
    reopened.close()


INSTALLER = """
storage = LmdbStorage.open(OPTIONS, sys.argv[1])
kill_after = int(sys.argv[3])
real_rename = os.rename
renames = []

def rename(src, dst):
    real_rename(src, dst)
    renames.append(src)
    if len(renames) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

os.rename = rename
print(storage.open_snapshot(sys.argv[2], LogPos(9, 1)), flush=True)
"""


@pytest.mark.parametrize(
    ("kill_after", "state"), [(1, "old"), (2, "new"), (0, "new")], ids=["between", "after", "none"]
)
def test_kill_9_during_snapshot_install(tmp_path: Path, kill_after: int, state: str) -> None:
    """A process killed between the renames comes back old; after the second, new."""
    target, snapshot = two_states(tmp_path)
    target.close()
    code, out, err = run_child(INSTALLER, str(tmp_path / "part"), str(snapshot), str(kill_after))
    if kill_after:
        assert code == -signal.SIGKILL, err
        assert out == ""
    else:
        assert code == 0 and out.strip() == "ok", err
    leftovers = sorted(os.listdir(tmp_path / "part"))
    if kill_after == 1:
        assert ENV_DIR not in leftovers  # the moment with no live environment at all
    storage = LmdbStorage.open(OPTIONS, tmp_path / "part")
    (assert_old if state == "old" else assert_new)(storage)
    assert sorted(os.listdir(tmp_path / "part")) == [ENV_DIR, "storage.lmdb.lock"]
    storage.close()


def test_interrupted_staging_is_discarded(tmp_path: Path) -> None:
    target, _ = two_states(tmp_path)
    target.close()
    staged = tmp_path / "part" / (ENV_DIR + ".new")
    staged.mkdir()
    (staged / "data.mdb").write_bytes(b"half a copy")
    storage = LmdbStorage.open(OPTIONS, tmp_path / "part")
    assert_old(storage)
    assert not staged.exists()
    storage.close()


# -- durability options, locking ------------------------------------------------------------------


def test_sync_is_the_default_and_no_sync_reopens(tmp_path: Path) -> None:
    storage = LmdbStorage.open(OPTIONS, tmp_path)
    assert storage.status()["sync"] is True
    assert storage.env.flags()["sync"] and storage.env.flags()["metasync"]
    storage.apply_many([("write", "t", i, i) for i in range(100)], pos(1))
    storage.close()
    storage = LmdbStorage.open(opts(lmdb_sync=False), tmp_path)
    assert not storage.env.flags()["sync"]
    assert storage.position() == pos(1)
    assert get(storage, 99) == ("ok", 99)
    storage.close()


OPENER = """
try:
    storage = LmdbStorage.open(OPTIONS, sys.argv[1])
except StorageLockedError as exc:
    print("locked:", exc, flush=True)
    sys.exit(3)
print("opened", storage.position().index, flush=True)
storage.close()
"""


def test_one_user_per_partition(tmp_path: Path) -> None:
    storage = LmdbStorage.open(OPTIONS, tmp_path)
    storage.apply(("write", "t", "k", 1), pos(1))
    with pytest.raises(StorageLockedError, match=str(os.getpid())):
        LmdbStorage.open(OPTIONS, tmp_path)
    code, out, err = run_child(OPENER, str(tmp_path))
    assert code == 3, err
    assert out.startswith("locked:") and f"pid {os.getpid()}" in out
    assert storage.apply(("write", "t", "k", 2), pos(2)) == "ok"  # the holder is unaffected
    storage.close()
    code, out, err = run_child(OPENER, str(tmp_path))
    assert (code, out.strip()) == (0, "opened 2"), err
    storage = LmdbStorage.open(OPTIONS, tmp_path)
    assert get(storage, "k") == ("ok", 2)
    storage.close()
