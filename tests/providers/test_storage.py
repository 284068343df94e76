"""StorageProvider semantics for the memory, SQLite and LMDB providers, snapshots, SQLite atomicity.

LMDB-specific tests are in ``test_lmdb_storage.py``; the LMDB provider is left out of the shared
contract when the ``lmdb`` package is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waraft.core.types import LogPos
from waraft.storage.memory import MemoryStorage
from waraft.storage.provider import (
    BAD_POSITION,
    CHECKSUM_FILE,
    InvalidIncompleteReplica,
    PartialApplyError,
    SessionResultsError,
    SessionStoreError,
    StorageOptions,
    StorageProvider,
    UnknownCommandError,
    read_metadata,
)
from waraft.storage.sqlite import SqliteStorage

from .helpers import A, B, C, make_config

OPTIONS = StorageOptions(table="t", partition=1, identity=A, name="raft_storage_t_1")
PROVIDERS: dict[str, type[StorageProvider]] = {"memory": MemoryStorage, "sqlite": SqliteStorage}
try:
    from waraft.storage.lmdb import LmdbStorage
except ImportError:  # the lmdb package is an optional dependency until pyproject lists it
    pass
else:
    from waraft.storage.node_lmdb import NodeLmdbStorage

    PROVIDERS["lmdb"] = LmdbStorage
    PROVIDERS["node_lmdb"] = NodeLmdbStorage


@pytest.fixture(params=sorted(PROVIDERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(kind: str, tmp_path: Path) -> Iterator[StorageProvider]:
    provider = PROVIDERS[kind].open(OPTIONS, tmp_path / "part")
    yield provider
    provider.close()


def pos(index: int, term: int = 1) -> LogPos:
    return LogPos(index, term)


def test_fresh_storage(storage: StorageProvider) -> None:
    assert storage.position() == LogPos(0, 0)
    assert storage.config() is None
    assert storage.label() is None
    assert not storage.incomplete()
    assert storage.read(("read", "t", "k"), storage.position()) == "not_found"
    assert storage.read("noop", storage.position()) == "ok"


def test_command_semantics(storage: StorageProvider) -> None:
    assert storage.apply("noop", pos(1)) == "ok"
    assert storage.apply(("write", "t", "k", 1000), pos(2)) == "ok"
    assert storage.read(("read", "t", "k"), pos(2)) == ("ok", 1000)
    # The table element is ignored: one key space per partition, as in WARaft.
    assert storage.read(("read", "other", "k"), pos(2)) == ("ok", 1000)
    assert storage.apply(("write", "t", ("tuple", 1), {"a": (1, 2)}), pos(3)) == "ok"
    assert storage.read(("read", "t", ("tuple", 1)), pos(3)) == ("ok", {"a": (1, 2)})
    assert storage.apply(("delete", "t", "k"), pos(4)) == "ok"
    assert storage.apply(("delete", "t", "never-there"), pos(5)) == "ok"
    assert storage.read(("read", "t", "k"), pos(5)) == "not_found"
    assert storage.position() == pos(5)


@pytest.mark.parametrize(
    "command", [("frobnicate", "t"), ("write", "t", "k"), ("noop",), 42, None, "noop_please"]
)
def test_unknown_commands_raise(storage: StorageProvider, command: Any) -> None:
    storage.apply(("write", "t", "k", 1), pos(1))
    with pytest.raises(UnknownCommandError):
        storage.apply(command, pos(2))
    assert storage.position() == pos(1)
    with pytest.raises(UnknownCommandError):
        storage.read(("get", "t", "k"), pos(1))


def test_an_unknown_command_with_a_large_value_gets_a_short_error(
    storage: StorageProvider,
) -> None:
    # The error echoed the whole command: a bad write of a 1 MB value was answered (and
    # logged) with a 1 MB message.
    big = b"v" * 1_000_000
    for call in (
        lambda: storage.apply(("write", "t", "k", big, "extra"), pos(1)),
        lambda: storage.read(("get", "t", big), pos(0)),
    ):
        with pytest.raises(UnknownCommandError) as caught:
            call()
        assert len(str(caught.value)) < 300


def test_labels_are_stored(storage: StorageProvider) -> None:
    storage.apply(("write", "t", "k", 1), pos(1), label=7)
    assert storage.label() == 7
    storage.apply(("write", "t", "k", 2), pos(2))  # unlabelled: the label stays
    assert storage.label() == 7
    storage.apply("noop", pos(3), label=(8, "x"))
    assert storage.label() == (8, "x")


def test_config_apply_and_incomplete_witness(storage: StorageProvider) -> None:
    config = make_config(A, B)
    assert storage.apply_config(config, pos(4, 2)) == "ok"
    assert storage.config() == (pos(4, 2), config)
    assert storage.position() == pos(4, 2)
    storage.apply("noop_omitted", pos(5, 2))
    assert storage.incomplete()
    # A is a data replica of this config: an incomplete storage must refuse it.
    with pytest.raises(InvalidIncompleteReplica):
        storage.apply_config(make_config(A, B, C), pos(6, 2))
    assert storage.config() == (pos(4, 2), config)
    assert storage.position() == pos(5, 2)
    # As a witness it is fine.
    witness_config = make_config(B, C, witness=(A,))
    assert storage.apply_config(witness_config, pos(6, 2)) == "ok"
    assert storage.config() == (pos(6, 2), witness_config)


def test_config_command_through_apply(storage: StorageProvider) -> None:
    config = make_config(A)
    assert storage.apply(("config", config), pos(2)) == "ok"
    assert storage.config() == (pos(2), config)
    assert storage.position() == pos(2)


def test_apply_batch(storage: StorageProvider) -> None:
    config = make_config(A)
    results = storage.apply_batch(
        [
            (("write", "t", "a", 1), pos(1), None),
            (("write", "t", "b", 2), pos(2), "l2"),
            (("delete", "t", "a"), pos(3), None),
            (("config", config), pos(4), None),
            ("noop", pos(5), None),
            (("write", "t", "a", 3), pos(6), None),
        ]
    )
    assert results == ["ok"] * 6
    assert storage.position() == pos(6)
    assert storage.config() == (pos(4), config)
    assert storage.label() == "l2"
    assert storage.read(("read", "t", "a"), pos(6)) == ("ok", 3)
    assert storage.read(("read", "t", "b"), pos(6)) == ("ok", 2)


@pytest.mark.parametrize("bad", [("frob",), 42, ("write", "t", "k")])
@pytest.mark.parametrize("at", [0, 2])
def test_a_refused_command_is_named_by_its_place_in_the_call(
    storage: StorageProvider, bad: Any, at: int
) -> None:
    """``UnknownCommandError.index``: the storage actor answers that command with the error
    and applies the others again in one transaction; without it, it cannot tell which of a
    ``$batch`` entry's commands to refuse."""
    commands: list[Any] = [("write", "t", "a", 1), ("write", "t", "b", 2), ("write", "t", "c", 3)]
    commands.insert(at, bad)
    with pytest.raises(UnknownCommandError) as caught:
        storage.apply_batch([(c, pos(i + 1), None) for i, c in enumerate(commands)])
    assert caught.value.index == at
    if isinstance(caught.value, PartialApplyError):  # a loop: the items before it are applied
        assert caught.value.applied == ["ok"] * at
    else:  # one transaction: nothing is
        assert storage.position() == LogPos(0, 0)
        assert storage.read(("read", "t", "a"), pos(0)) == "not_found"
    with pytest.raises(UnknownCommandError) as caught:
        storage.apply_many(commands, pos(9))
    assert caught.value.index == at


def test_snapshot_round_trip_with_position_check(kind: str, tmp_path: Path) -> None:
    cls = PROVIDERS[kind]
    source = cls.open(OPTIONS, tmp_path / "source")
    config = make_config(A, B)
    source.apply_config(config, pos(1))
    for i in range(2, 50):
        source.apply(("write", "t", f"k{i}", i), pos(i), label=i)
    snapshot = tmp_path / "source" / "snapshot.49.1"
    assert source.create_snapshot(snapshot) == "ok"
    source.apply(("write", "t", "later", 1), pos(50))
    assert read_metadata(str(snapshot))["position"] == pos(49)

    target = cls.open(OPTIONS, tmp_path / "target")
    target.apply(("write", "t", "old", 1), pos(3, 1))
    assert target.open_snapshot(snapshot, pos(48)) == BAD_POSITION
    assert target.open_snapshot(tmp_path / "nowhere", pos(49))[0] == "error"
    # A failed open leaves the state as it was.
    assert target.position() == pos(3, 1)
    assert target.read(("read", "t", "old"), pos(3)) == ("ok", 1)
    assert target.open_snapshot(snapshot, pos(49)) == "ok"
    assert target.position() == pos(49)
    assert target.config() == (pos(1), config)
    assert target.label() == 49
    assert target.read(("read", "t", "k17"), pos(49)) == ("ok", 17)
    assert target.read(("read", "t", "old"), pos(49)) == "not_found"
    assert target.read(("read", "t", "later"), pos(49)) == "not_found"
    target.apply(("write", "t", "after", 2), pos(50))
    assert target.read(("read", "t", "after"), pos(50)) == ("ok", 2)
    source.close()
    target.close()


KEYS_APART: list[Any] = [True, 1, 1.0, False, 0, 0.0, -0.0, "1", b"1", (1,), {"m": 1}, 2**64 - 1]
"""Keys whose msgpack encodings differ, though Python's ``==`` confuses some."""


def test_a_durable_providers_keys_are_told_apart_by_their_msgpack_encoding(tmp_path: Path) -> None:
    """The durable providers key rows by the key's msgpack encoding: ``True``, ``1`` and
    ``1.0`` are three keys, a list and a tuple of the same items one (read back as a tuple),
    through ``apply``, ``apply_many`` and a snapshot; ``key_identity`` says the same (the
    storage actor's ``incr`` relies on it)."""
    cls = SqliteStorage
    source = cls.open(OPTIONS, tmp_path / "source")
    source.apply_config(make_config(A, B), pos(1))
    half = len(KEYS_APART) // 2
    for number, key in enumerate(KEYS_APART[:half]):
        assert source.apply(("write", "t", key, number), pos(2)) == "ok"
    writes = [("write", "t", key, half + n) for n, key in enumerate(KEYS_APART[half:])]
    assert source.apply_many([*writes, ("write", "t", [2], "list")], pos(3)) == ["ok"] * (
        len(writes) + 1
    )
    snapshot = tmp_path / "source" / "snapshot.3.1"
    assert source.create_snapshot(snapshot) == "ok"
    target = cls.open(OPTIONS, tmp_path / "target")
    assert target.open_snapshot(snapshot, pos(3)) == "ok"
    for provider in (source, target):
        for number, key in enumerate(KEYS_APART):
            assert provider.read(("read", "t", key), pos(3)) == ("ok", number), key
        assert provider.read(("read", "t", (2,)), pos(3)) == ("ok", "list")
        assert provider.read(("read", "t", [2]), pos(3)) == ("ok", "list")
    identities = {cls.key_identity(key) for key in KEYS_APART}
    assert len(identities) == len(KEYS_APART)
    assert cls.key_identity([2]) == cls.key_identity((2,)) not in identities
    with pytest.raises(UnknownCommandError):
        cls.key_identity({1, 2})  # no row: msgpack cannot encode a set
    source.close()
    target.close()


def test_the_memory_providers_keys_are_its_dicts_and_key_identity_says_so(tmp_path: Path) -> None:
    """The memory provider keys rows by the keys themselves (Python's equality: ``True`` and
    ``1`` are one key), and its ``key_identity`` agrees, so the storage actor's ``incr`` finds
    the row it would; a map is no key there, refused by both."""
    provider = MemoryStorage.open(OPTIONS, tmp_path / "memory")
    provider.apply_config(make_config(A, B), pos(1))
    assert provider.apply(("write", "t", True, "x"), pos(2)) == "ok"
    assert provider.read(("read", "t", 1), pos(2)) == ("ok", "x")
    assert MemoryStorage.key_identity(True) == MemoryStorage.key_identity(1)
    assert MemoryStorage.key_identity("1") != MemoryStorage.key_identity(1)
    with pytest.raises(UnknownCommandError):
        MemoryStorage.key_identity({"m": 1})
    with pytest.raises(UnknownCommandError):
        provider.apply(("write", "t", {"m": 1}, "y"), pos(3))
    provider.close()


def test_corrupt_snapshot_is_an_error_not_a_crash(kind: str, tmp_path: Path) -> None:
    cls = PROVIDERS[kind]
    source = cls.open(OPTIONS, tmp_path / "source")
    source.apply(("write", "t", "k", 1), pos(1))
    snapshot = tmp_path / "snap"
    assert source.create_snapshot(snapshot) == "ok"
    data_file = next(p for p in snapshot.iterdir() if p.name != "metadata")
    raw = bytearray(data_file.read_bytes())
    del raw[len(raw) // 2 :]
    data_file.write_bytes(bytes(raw))
    target = cls.open(OPTIONS, tmp_path / "target")
    result = target.open_snapshot(snapshot, pos(1))
    assert result[0] == "error"
    assert target.position() == LogPos(0, 0)
    source.close()
    target.close()


DURABLE = sorted(set(PROVIDERS) - {"memory"})


@pytest.mark.parametrize("durable", DURABLE)
def test_a_snapshot_with_a_flipped_byte_or_no_checksum_is_refused(
    durable: str, tmp_path: Path
) -> None:
    """A byte of a value flipped on disk or in transit (the file transport only checks
    sizes) must not be installed and then served: SQLite opened such a file without a word
    and the replica answered 9000000 for 1000000. A snapshot without its checksum file
    (written before the format had one) is refused too."""
    cls = PROVIDERS[durable]
    source = cls.open(OPTIONS, tmp_path / "source")
    source.apply_config(make_config(A), pos(1))
    source.apply(("write", "t", "balance", "1000000"), pos(2))
    snapshot = tmp_path / "snap"
    assert source.create_snapshot(snapshot) == "ok"
    source.close()
    data_file = next(p for p in snapshot.iterdir() if p.name.startswith("data."))
    raw = data_file.read_bytes()
    assert b"1000000" in raw
    data_file.write_bytes(raw.replace(b"1000000", b"9000000"))
    target = cls.open(OPTIONS, tmp_path / "target")
    try:
        target.apply(("write", "t", "balance", "old"), pos(1))
        result = target.open_snapshot(snapshot, pos(2))
        assert result[0] == "error" and "checksum" in result[1]
        data_file.write_bytes(raw)
        (snapshot / CHECKSUM_FILE).unlink()
        result = target.open_snapshot(snapshot, pos(2))
        assert result[0] == "error" and CHECKSUM_FILE in result[1]
        assert target.position() == pos(1)
        assert target.read(("read", "t", "balance"), pos(1)) == ("ok", "old")
    finally:
        target.close()


def test_empty_snapshot_for_bootstrap(kind: str, tmp_path: Path) -> None:
    cls = PROVIDERS[kind]
    config = make_config(A)
    path = tmp_path / "snapshot.1.1.bootstrap.tmp"
    assert cls.make_empty_snapshot(OPTIONS, path, pos(1), config, {"seed": 5}) == "ok"
    storage = cls.open(OPTIONS, tmp_path / "part")
    assert storage.open_snapshot(path, pos(1)) == "ok"
    assert storage.position() == pos(1)
    assert storage.config() == (pos(1), config)
    assert storage.read(("read", "t", "seed"), pos(1)) == ("ok", 5)
    storage.close()


def test_witness_snapshot_holds_metadata_only(kind: str, tmp_path: Path) -> None:
    cls = PROVIDERS[kind]
    source = cls.open(OPTIONS, tmp_path / "source")
    assert source.create_witness_snapshot(tmp_path / "none")[0] == "error"  # no config yet
    config = make_config(A, B, witness=(C,))
    source.apply_config(config, pos(2))
    source.apply(("write", "t", "k", 1), pos(3))
    snapshot = tmp_path / "snapshot.3.1.witness"
    assert source.create_witness_snapshot(snapshot) == "ok"
    witness = cls.open(StorageOptions(table="t", partition=1, identity=C), tmp_path / "witness")
    assert witness.open_snapshot(snapshot, pos(3)) == "ok"
    assert witness.position() == pos(3)
    assert witness.config() == (pos(2), config)
    assert witness.read(("read", "t", "k"), pos(3)) == "not_found"
    source.close()
    witness.close()


def test_incomplete_snapshot_cannot_make_a_data_replica(kind: str, tmp_path: Path) -> None:
    cls = PROVIDERS[kind]
    witness_options = StorageOptions("t", 1, C)
    source = cls.open(witness_options, tmp_path / "source")  # C is the witness
    source.apply_config(make_config(A, B, witness=(C,)), pos(1))
    source.apply("noop_omitted", pos(2))
    snapshot = tmp_path / "snap"
    assert source.create_snapshot(snapshot) == "ok"
    target = cls.open(witness_options, tmp_path / "target")
    assert target.open_snapshot(snapshot, pos(2)) == "ok"
    assert target.incomplete()
    data_replica = cls.open(StorageOptions("t", 1, B), tmp_path / "other")
    with pytest.raises(InvalidIncompleteReplica):
        data_replica.open_snapshot(snapshot, pos(2))
    assert data_replica.position() == LogPos(0, 0)
    assert not data_replica.incomplete()
    for s in (source, target, data_replica):
        s.close()


# -- SQLite durability --------------------------------------------------------------------------


def test_sqlite_reopen_keeps_everything(tmp_path: Path) -> None:
    storage = SqliteStorage.open(OPTIONS, tmp_path)
    config = make_config(A, B)
    storage.apply_config(config, pos(1))
    storage.apply_batch([(("write", "t", k, k * 2), pos(k + 2), k) for k in range(100)])
    storage.apply("noop_omitted", pos(102))
    storage.close()
    storage = SqliteStorage.open(OPTIONS, tmp_path)
    assert storage.position() == pos(102)
    assert storage.config() == (pos(1), config)
    assert storage.label() == 99
    assert storage.incomplete()
    assert storage.read(("read", "t", 42), pos(102)) == ("ok", 84)
    storage.close()


def test_sqlite_batch_is_atomic(tmp_path: Path) -> None:
    storage = SqliteStorage.open(OPTIONS, tmp_path)
    storage.apply_batch([(("write", "t", "k", 1), pos(1), "l1")])
    batch = [
        (("write", "t", "k", 2), pos(2), "l2"),
        (("config", make_config(A)), pos(3), None),
        (("delete", "t", "k"), pos(4), None),
        (("explode",), pos(5), None),  # raises mid-batch: the storage actor would crash
    ]
    with pytest.raises(UnknownCommandError):
        storage.apply_batch(batch)
    assert storage.position() == pos(1)
    assert storage.read(("read", "t", "k"), pos(1)) == ("ok", 1)
    assert storage.config() is None and storage.label() == "l1"
    storage.close()
    # And what is on disk agrees after a restart.
    storage = SqliteStorage.open(OPTIONS, tmp_path)
    assert storage.position() == pos(1)
    assert storage.read(("read", "t", "k"), pos(1)) == ("ok", 1)
    assert storage.config() is None and storage.label() == "l1"
    storage.close()


def test_sqlite_crash_in_the_middle_of_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while writing (an I/O error, a crash) never separates data and position."""
    storage = SqliteStorage.open(OPTIONS, tmp_path)
    storage.apply_batch([(("write", "t", i, i), pos(i + 1), None) for i in range(10)])
    calls = [0]
    real = storage._conn

    class FailingConnection:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def executemany(self, sql: str, rows: Any) -> Any:
            calls[0] += 1
            if "meta" in sql:  # data written, position not yet
                raise OSError("simulated crash before the position update")
            return real.executemany(sql, rows)

    monkeypatch.setattr(storage, "_conn", FailingConnection())
    with pytest.raises(OSError):
        storage.apply_batch([(("write", "t", i, -i), pos(i + 1), None) for i in range(10, 20)])
    assert calls[0] >= 2
    monkeypatch.undo()
    assert storage.position() == pos(10)
    assert storage.read(("read", "t", 15), pos(10)) == "not_found"
    storage.close()
    storage = SqliteStorage.open(OPTIONS, tmp_path)
    assert storage.position() == pos(10)
    assert storage.read(("read", "t", 15), pos(10)) == "not_found"
    assert storage.read(("read", "t", 9), pos(10)) == ("ok", 9)
    storage.close()


def test_memory_storage_forgets_on_reopen(tmp_path: Path) -> None:
    storage = MemoryStorage.open(OPTIONS, tmp_path)
    storage.apply(("write", "t", "k", 1), pos(1))
    storage.close()
    storage = MemoryStorage.open(OPTIONS, tmp_path)
    assert storage.position() == LogPos(0, 0)
    assert storage.status()["keys"] == 0


def test_apply_batch_then_stores_the_extra_commands_with_the_batch(
    kind: str, tmp_path: Path
) -> None:
    provider = PROVIDERS[kind].open(OPTIONS, tmp_path / "part")
    seen: list[list[Any]] = []

    def finalize(results: list[Any]) -> list[Any]:
        seen.append(results)
        return [("write", "t", "extra", len(results))]

    items = [(("write", "t", "a", 1), pos(1), None), (("write", "t", "b", 2), pos(2), None)]
    assert provider.apply_batch_then(items, finalize) == ["ok", "ok"]
    assert seen == [["ok", "ok"]]
    assert provider.read(("read", "t", "extra"), pos(2)) == ("ok", 2)
    assert provider.position() == pos(2)
    provider.close()


@pytest.mark.parametrize("durable", sorted(set(PROVIDERS) - {"memory"}))
def test_apply_batch_then_is_one_transaction_in_durable_providers(
    durable: str, tmp_path: Path
) -> None:
    provider = PROVIDERS[durable].open(OPTIONS, tmp_path / "part")
    items = [(("write", "t", "a", 1), pos(1), None)]
    # A refused extra command (a session row) is no unknown command among ``items``: the
    # storage actor must not answer one of them with an error and apply the rest again.
    with pytest.raises(SessionStoreError):
        provider.apply_batch_then(items, lambda results: [("bogus",)])
    assert provider.read(("read", "t", "a"), provider.position()) == "not_found"
    assert provider.position() == LogPos(0, 0)
    provider.close()
    reopened = PROVIDERS[durable].open(OPTIONS, tmp_path / "part")
    assert reopened.position() == LogPos(0, 0)
    reopened.close()


def test_the_inlined_plain_batch_check_agrees_with_the_four_predicates() -> None:
    """The storage actor merges a ``$batch`` into its chunk only when ``_all_plain`` holds; it
    inlines ``is_session_command``, ``is_derived_command``, ``touches_reserved_key`` and
    ``is_internal_command`` and must agree with them on every shape (a session command left
    in would skip the session table and apply a retried command twice; a config one would
    change storage's membership)."""
    from waraft.core.sessions import is_session_command
    from waraft.core.types import is_internal_command
    from waraft.storage import (
        SESSIONS_KEY,
        _all_plain,
        is_derived_command,
        touches_reserved_key,
    )

    shapes: list[Any] = [
        ("write", "t", "k", 1),
        ("delete", "t", "k"),
        ("read", "t", "k"),
        ("incr", "t", "k", 1),
        ("incr", "t", "k"),
        ("append", "t", "k", [1]),
        ("append", "t", "k", [1], "extra"),
        ("$session", "call", 1, 2, 0, ("write", "t", "k", 1)),
        ("$session", "open"),
        ("$session",),
        ("write", "t", SESSIONS_KEY, 1),
        ("delete", "t", SESSIONS_KEY),
        ("write", "t", ("$waraft", "other"), 1),
        ("write", "t", list(SESSIONS_KEY), 1),
        ("write", "t", ("$waraft", "session", 3), 1),
        ("read", "t", ["$waraft"]),
        ("write", "t", (), 1),
        ("write", "t", ("other", "$waraft"), 1),
        ("noop",),
        (),
        "noop",
        "noop_omitted",
        "config",
        ("config", {}),
        ("config", "x", "y"),
        ["$session", "call"],
        ["incr", "t", "k", 1],
        b"\x94",
        None,
        ("write",),
    ]

    def reference(commands: list[Any]) -> bool:
        return not any(
            is_session_command(c)
            or is_derived_command(c)
            or touches_reserved_key(c)
            or is_internal_command(c)
            for c in commands
        )

    for shape in shapes:
        for commands in ([shape], [("write", "t", "a", 1), shape], [shape, ("delete", "t", "b")]):
            assert _all_plain(commands) == reference(commands), commands
    assert _all_plain([])


def test_a_batch_payload_with_colliding_map_keys_is_one_malformed_command() -> None:
    """A ``$batch`` travels as the client's bytes and is decoded by every replica at apply
    (and at every replay): a map keyed by tuples of -1 and -2 (one hash) made that decode
    quadratic on every replica. It is decoded as untrusted: the entry answers an error."""
    import msgpack

    from tests.distribution.helpers import colliding_map
    from waraft.services.codec import CodecError
    from waraft.storage import StorageServer, batch_commands

    write = msgpack.packb(("write", "t", "k"))  # a fixarray of 3: make it 4 and add the map
    payload = b"\x91" + bytes([write[0] + 1]) + write[1:] + colliding_map(20_000, 16)
    with pytest.raises(CodecError, match="share a hash"):
        batch_commands(("$batch", payload))
    (malformed,) = StorageServer._commands_of(("$batch", payload))
    assert malformed[0] == "$malformed_batch"
    plain = msgpack.packb([("write", "t", "k", {-1: 1, -2: 2})])
    assert batch_commands(("$batch", plain)) == (("write", "t", "k", {-1: 1, -2: 2}),)


def test_a_batch_payload_of_too_many_values_is_one_malformed_command() -> None:
    """A ``$batch`` is one bytes value at admission, so only its decode at apply sees what it
    holds: a few MB of nested empty arrays held every replica's storage actor for seconds.
    Past ``MAX_UNTRUSTED_OBJECTS`` values the entry answers an error, alike everywhere."""
    import msgpack

    from waraft.services.codec import MAX_UNTRUSTED_OBJECTS, CodecError
    from waraft.storage import StorageServer, batch_commands

    payload = msgpack.packb([("write", "t", "k", [[[]]] * (MAX_UNTRUSTED_OBJECTS // 2))])
    with pytest.raises(CodecError, match="values"):
        batch_commands(("$batch", payload))
    (malformed,) = StorageServer._commands_of(("$batch", payload))
    assert malformed[0] == "$malformed_batch"


class AddingStorage(MemoryStorage):
    """A user's state machine as the README shows it: ``MemoryStorage`` with only ``apply``
    and ``read`` overridden (no ``apply_many``/``apply_batch`` of its own), for
    ``("add", table, key, n)`` (answers the new value) and ``("get", table, key)``."""

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        if type(command) is tuple and command[:1] == ("add",) and len(command) == 4:
            value = self._data.get(command[2], 0) + command[3]
            self._data[command[2]] = value
            self._position = position
            return ("ok", value)
        return super().apply(command, position, label)

    def read(self, command: Any, position: LogPos) -> Any:
        if type(command) is tuple and command[:1] == ("get",) and len(command) == 3:
            return ("ok", self._data.get(command[2], 0))
        return super().read(command, position)


def test_a_memory_subclass_own_command_is_applied_in_a_packed_batch() -> None:
    """A review: ``apply_many`` (every packed ``$batch`` entry) checked commands against the
    built-in ones only, so the subclass's first command of each packed batch was refused."""
    storage = AddingStorage(OPTIONS)
    add = ("add", "t", "n", 2)
    assert storage.apply_many([add, ("write", "t", "w", 1), add], pos(3)) == [
        ("ok", 2),
        "ok",
        ("ok", 4),
    ]
    assert storage.position() == pos(3)
    # A command neither knows is still named by its place; the ones before it are applied.
    with pytest.raises(UnknownCommandError) as caught:
        storage.apply_many([add, ("frob",), add], pos(4))
    assert caught.value.index == 1
    assert isinstance(caught.value, PartialApplyError) and caught.value.applied == [("ok", 6)]


def test_a_memory_batch_of_built_in_commands_stays_all_or_nothing() -> None:
    storage = MemoryStorage(OPTIONS)
    with pytest.raises(UnknownCommandError) as caught:
        storage.apply_many([("write", "t", "a", 1), "noop", ("frob",)], pos(1))
    assert caught.value.index == 2 and not isinstance(caught.value, PartialApplyError)
    assert storage.read(("read", "t", "a"), pos(1)) == "not_found"
    assert storage.position() == LogPos(0, 0)


@pytest.mark.parametrize("kind", sorted(set(PROVIDERS) - {"memory"}))
def test_a_transactional_subclass_that_overrides_only_apply_is_refused(kind: str) -> None:
    """Its ``apply_batch`` (the only way the storage actor applies) never calls ``apply``:
    the subclass's commands would all be refused at run time; say so when it is defined."""
    base = PROVIDERS[kind]
    with pytest.raises(TypeError, match="overrides apply\\(\\) but not apply_batch\\(\\)"):
        type("Counter", (base,), {"apply": AddingStorage.apply})

    def apply_batch(self: Any, items: Any) -> list[Any]:
        return list(base.apply_batch(self, items))

    own = {"apply": AddingStorage.apply, "apply_batch": apply_batch, "answers_ok": True}
    type("Counter", (base,), own)


def _passing_through(base: type[StorageProvider]) -> Any:
    def apply_batch(self: Any, items: Any) -> list[Any]:
        return list(base.apply_batch(self, items))

    return apply_batch


@pytest.mark.parametrize("kind", sorted(set(PROVIDERS) - {"memory"}))
def test_a_transactional_subclass_must_say_what_its_apply_batch_answers(kind: str) -> None:
    """``TransactionalStorage.apply_batch_then`` records "ok" for every command in the
    exactly-once session table, in the batch's own transaction: a subclass whose
    ``apply_batch`` answered anything else recorded the wrong result for retried requests,
    without a word. A class that defines ``apply_batch`` now says ``answers_ok = True`` or
    overrides ``apply_batch_then``; neither is refused when the class is made."""
    base = PROVIDERS[kind]
    batch = _passing_through(base)
    with pytest.raises(TypeError, match="answers_ok"):
        type("Frobber", (base,), {"apply_batch": batch})
    with pytest.raises(TypeError, match="answers_ok"):
        type("Frobber", (base,), {"apply_batch": batch, "answers_ok": False})
    declared = type("Wrapper", (base,), {"apply_batch": batch, "answers_ok": True})
    type("Below", (declared,), {})  # inherits apply_batch and its declaration
    with pytest.raises(TypeError, match="answers_ok"):
        type("Below", (declared,), {"apply_batch": batch})  # a new apply_batch says again

    def apply_batch_then(self: Any, items: Any, finalize: Any) -> list[Any]:
        return StorageProvider.apply_batch_then(self, items, finalize)

    real = type("Real", (base,), {"apply_batch": batch, "apply_batch_then": apply_batch_then})
    type("BelowReal", (real,), {"apply_batch": batch})  # its apply_batch_then records them


@pytest.mark.parametrize("kind", sorted(set(PROVIDERS) - {"memory"}))
def test_a_transactional_subclass_answering_other_than_ok_under_answers_ok_is_caught(
    kind: str, tmp_path: Path
) -> None:
    """A class that declares ``answers_ok`` and answers something else: the session rows
    committed with the batch say "ok"; ``apply_batch_then`` raises ``SessionResultsError``
    (the storage actor disables the replica) instead of going on without a word."""
    base = PROVIDERS[kind]

    def apply_batch(self: Any, items: Any) -> list[Any]:
        results = list(base.apply_batch(self, items))
        return [("ok", "written"), *results[1:]]

    lying = type("Lying", (base,), {"apply_batch": apply_batch, "answers_ok": True})
    provider = lying.open(OPTIONS, tmp_path / "part")
    try:
        items = [(("write", "t", "k", 1), pos(1), None)]
        with pytest.raises(SessionResultsError, match=r"Lying\.apply_batch answered"):
            provider.apply_batch_then(items, lambda results: [("write", "t", "s", results)])
        honest = base.open(OPTIONS, tmp_path / "other")
        try:
            got = honest.apply_batch_then(items, lambda results: [("write", "t", "s", results)])
            assert got == ["ok"]
            assert honest.read(("read", "t", "s"), honest.position()) == ("ok", ("ok",))
        finally:
            honest.close()
    finally:
        provider.close()
