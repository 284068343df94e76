"""Exactly-once sessions through a real partition's storage actor: a retried non-idempotent
command applies once (plain and inside ``$batch``), and the table survives a restart of a
durable partition and travels in snapshots."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from tests.partition.helpers import addr, ident, start_node, state, wait_until
from tests.providers.test_storage import AddingStorage
from waraft import otp, storage
from waraft.core.sessions import (
    BATCH_OWNER,
    EXPIRED,
    INDEX_VERSION,
    MAX_SESSIONS,
    MAX_SESSIONS_PER_OWNER,
    SessionTable,
    call_command,
    close_command,
    register_command,
)
from waraft.core.types import LogPos
from waraft.distribution import inline as dist_inline
from waraft.partition import acceptor, server
from waraft.services import codec
from waraft.storage import DERIVED_AFTER_OPAQUE
from waraft.storage.memory import MemoryStorage
from waraft.storage.provider import OK, StorageProvider
from waraft.storage.sqlite import SqliteStorage

SQLITE = "waraft.storage.sqlite:SqliteStorage"
LMDB = "waraft.storage.lmdb:LmdbStorage"
NODE_LMDB = "waraft.storage.node_lmdb:NodeLmdbStorage"
DISK = "waraft.log.disk:DiskLog"


class CountingStorage(MemoryStorage):
    """Memory storage plus ``("bump", table, key)``: a non-idempotent counter."""

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        if type(command) is tuple and command[:1] == ("bump",):
            value = self._data.get(command[2], 0) + 1
            self._data[command[2]] = value
            self._position = position
            return ("ok", value)
        return super().apply(command, position, label)

    def apply_many(self, commands: Any, position: LogPos, label: Any = None) -> list[Any]:
        return [self.apply(command, position, label) for command in commands]

    def apply_batch(self, items: Any) -> list[Any]:
        for command, _, _ in items:
            if not (type(command) is tuple and command[:1] == ("bump",)):
                self._check(command)  # all or nothing, like the real providers
        return [self.apply(c, p, label) for c, p, label in items]


class SetStorage(CountingStorage):
    """``CountingStorage`` whose ``("members", table, key)`` answers a set (msgpack has none)
    and whose results are not declared encodable, as a user's provider's are not."""

    results_encode = False

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        if type(command) is tuple and command[:1] == ("members",):
            self._position = position
            return ("ok", {1, 2})
        return super().apply(command, position, label)

    def apply_batch(self, items: Any) -> list[Any]:
        return [self.apply(c, p, label) for c, p, label in items]

    def read(self, command: Any, position: LogPos) -> Any:
        if type(command) is tuple and command[:1] == ("members",):
            return ("ok", {3})
        return super().read(command, position)


class LoopingStorage(CountingStorage):
    """``CountingStorage`` with the provider's default ``apply_batch`` and ``apply_many``: a
    loop over ``apply``, not one transaction (a user's provider built on ``MemoryStorage``)."""

    apply_batch = StorageProvider.apply_batch
    apply_many = StorageProvider.apply_many


def _single(tmp_path: Path, **spec: Any) -> otp.Node:
    node = start_node(tmp_path, "n1", [1], **spec)
    config = server.make_config([ident(node)])
    assert server.bootstrap(addr("server", node), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node) == "leader")
    return node


def test_a_retried_bump_applies_once_plain_and_packed(tmp_path: Path) -> None:
    node = _single(tmp_path, storage_module=CountingStorage)
    acc = addr("acceptor", node)
    status, sid = acceptor.commit(acc, ("r", register_command(1000)))
    assert status == "ok"
    bump = ("bump", "t", "c")
    assert acceptor.commit(acc, ("a", call_command(sid, 1, 1, bump))) == ("ok", 1)
    assert acceptor.commit(acc, ("b", call_command(sid, 1, 1, bump))) == ("ok", 1)
    # Inside one $batch: the retry of seq 2 next to seq 2 itself, and a retry of seq 1.
    packed = [call_command(sid, 2, 1, bump), call_command(sid, 2, 1, bump)]
    packed.append(call_command(sid, 1, 1, bump))
    assert acceptor.commit(acc, ("c", ("$batch", codec.packb(packed)))) == [("ok", 2)] * 2 + [
        ("ok", 1)
    ]
    # Plain entries committed back to back land in one storage chunk: dedup there too.
    assert acceptor.commit(acc, ("d", call_command(sid, 3, 1, bump))) == ("ok", 3)
    assert acceptor.commit(acc, ("e", bump)) == ("ok", 4)  # sessionless: applied each time
    assert acceptor.read(acc, ("read", "t", "c")) == ("ok", 4)
    assert acceptor.commit(acc, ("f", call_command(sid + 99, 1, 1, bump))) == EXPIRED


@pytest.mark.parametrize("provider", [SQLITE, LMDB, NODE_LMDB])
def test_the_session_table_survives_a_restart_of_a_durable_partition(
    tmp_path: Path, provider: str
) -> None:
    if provider in (LMDB, NODE_LMDB):
        pytest.importorskip("lmdb")
    node = _single(tmp_path, log_module=DISK, storage_module=provider)
    acc = addr("acceptor", node)
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    first = ("write", "t", "k", "A")
    assert acceptor.commit(acc, ("a", call_command(sid, 1, 1, first))) == OK
    node_id = node.id
    node.stop()
    node = start_node(
        tmp_path, "n1", [1], node_id=node_id, log_module=DISK, storage_module=provider
    )
    wait_until(lambda: state(node) == "leader")
    acc = addr("acceptor", node)
    # The same (session, seq) with another payload is recognised as the retry it claims to be.
    second = ("write", "t", "k", "B")
    assert acceptor.commit(acc, ("b", call_command(sid, 1, 1, second))) == OK
    assert acceptor.read(acc, ("read", "t", "k")) == ("ok", "A")
    # A snapshot carries the table: an index of ids and a row per session, under reserved keys.
    found = storage.read(
        addr("storage", node), ("read", storage.SESSIONS_TABLE, storage.SESSIONS_KEY)
    )
    assert found == ("ok", (INDEX_VERSION, (sid,)))
    row = storage.read(
        addr("storage", node), ("read", storage.SESSIONS_TABLE, storage.session_key(sid))
    )
    assert row[0] == "ok" and row[1][3] == ((1, OK),)  # seq 1's recorded result
    node.stop()


def test_a_replica_caught_up_by_a_snapshot_applies_later_session_calls_as_the_leader_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Installing a snapshot replaces the storage actor's session table with the one the
    snapshot carries (``_open_snapshot`` reloads it). Kept from before the install (empty for
    a new replica), a later call of a session in the snapshot would answer ``session_expired``
    there and not be applied while the leader applies it: the replicas' data would differ,
    and a retry after a failover could apply twice."""
    caplog.set_level(logging.INFO, logger="waraft.transport.manager")
    spec = {"log_module": DISK, "storage_module": SQLITE}
    n1 = _single(tmp_path, **spec)
    n2 = start_node(tmp_path, "n2", [1], **spec)  # empty: only a snapshot can catch it up
    try:
        acc = addr("acceptor", n1)
        _, sid = acceptor.commit(acc, ("r", register_command(1000)))
        assert acceptor.commit(acc, ("a", call_command(sid, 1, 1, ("write", "t", "k1", 1)))) == OK
        result = server.adjust_config(addr("server", n1), ("add_participant", ident(n2)))
        assert result[0] == "ok", result
        wait_until(lambda: "raft_server_test_1 installed the snapshot" in caplog.text, timeout=20)
        on_n2 = addr("storage", n2)
        wait_until(lambda: storage.read(on_n2, ("read", "t", "k1")) == ("ok", 1))
        later = call_command(sid, 2, 2, ("write", "t", "k2", 2))
        assert acceptor.commit(acc, ("b", later)) == OK  # applied on the leader
        wait_until(lambda: storage.read(on_n2, ("read", "t", "k2")) == ("ok", 2), timeout=10)
    finally:
        n1.stop()
        n2.stop()


@pytest.mark.parametrize("provider", ["memory", SQLITE])
def test_append_and_incr_are_derived_writes_for_any_provider(tmp_path: Path, provider: str) -> None:
    spec = {} if provider == "memory" else {"log_module": DISK, "storage_module": provider}
    node = _single(tmp_path, **spec)
    acc = addr("acceptor", node)
    assert acceptor.commit(acc, ("a", ("incr", "t", "n", 2))) == ("ok", 2)
    assert acceptor.commit(acc, ("b", ("incr", "t", "n", 3))) == ("ok", 5)
    assert acceptor.commit(acc, ("c", ("append", "t", "l", "x"))) == OK
    # In one $batch: each command sees the ones before it, writes and deletes included.
    packed = [
        ("append", "t", "l", "y"),
        ("incr", "t", "n", 1),
        ("delete", "t", "n"),
        ("incr", "t", "n", 10),
        ("write", "t", "s", "text"),
        ("incr", "t", "s", 1),
        ("append", "t", "s", 1),
    ]
    results = acceptor.commit(acc, ("d", ("$batch", codec.packb(packed))))
    assert results == [
        OK,
        ("ok", 6),
        OK,
        ("ok", 10),
        OK,
        ("error", "not_an_integer"),
        ("error", "not_a_list"),
    ]
    assert acceptor.read(acc, ("read", "t", "l")) == ("ok", ("x", "y"))
    assert acceptor.read(acc, ("read", "t", "n")) == ("ok", 10)
    assert acceptor.read(acc, ("read", "t", "s")) == ("ok", "text")
    # Through a session, the retried append is recorded and not applied again.
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    tagged = call_command(sid, 1, 1, ("append", "t", "l", "z"))
    assert acceptor.commit(acc, ("e", tagged)) == OK
    assert acceptor.commit(acc, ("f", tagged)) == OK
    assert acceptor.commit(acc, ("g", call_command(sid, 2, 1, ("incr", "t", "n", 1)))) == ("ok", 11)
    assert acceptor.commit(acc, ("h", call_command(sid, 2, 1, ("incr", "t", "n", 1)))) == ("ok", 11)
    assert acceptor.read(acc, ("read", "t", "l")) == ("ok", ("x", "y", "z"))
    assert acceptor.read(acc, ("read", "t", "n")) == ("ok", 11)


@pytest.mark.parametrize("provider", ["memory", SQLITE])
def test_an_incr_beyond_what_msgpack_encodes_is_answered_not_applied(
    tmp_path: Path, provider: str
) -> None:
    # Found by a review: 2**63 + 2**63 could not be stored, and the committed entry crashed
    # the storage actor at every replay; the partition never served again.
    spec = {} if provider == "memory" else {"log_module": DISK, "storage_module": provider}
    node = _single(tmp_path, **spec)
    acc = addr("acceptor", node)
    assert acceptor.commit(acc, ("a", ("incr", "t", "n", 2**63))) == ("ok", 2**63)
    assert acceptor.commit(acc, ("b", ("incr", "t", "n", 2**63))) == ("error", "integer_overflow")
    assert acceptor.commit(acc, ("c", ("incr", "t", "n", 2**63 - 1))) == ("ok", 2**64 - 1)
    assert acceptor.commit(acc, ("d", ("incr", "t", "m", -(2**63)))) == ("ok", -(2**63))
    packed = [("incr", "t", "m", -1), ("incr", "t", "m", 1)]
    results = acceptor.commit(acc, ("e", ("$batch", codec.packb(packed))))
    assert results == [("error", "integer_overflow"), ("ok", -(2**63) + 1)]
    assert acceptor.commit(acc, ("f", ("write", "t", "w", 1))) == OK  # still serving
    assert acceptor.read(acc, ("read", "t", "n")) == ("ok", 2**64 - 1)
    assert acceptor.read(acc, ("read", "t", "m")) == ("ok", -(2**63) + 1)


def test_a_key_that_is_a_map_is_answered_with_an_error_and_changes_nothing(
    tmp_path: Path,
) -> None:
    # Found by a review: on the memory providers (the quick start's) a map as a key raised
    # TypeError in the storage actor; the partition restarted empty, acknowledged data lost.
    # (The durable providers store keys encoded, so a map is a key like any other there.)
    node = _single(tmp_path)
    acc = addr("acceptor", node)
    assert acceptor.commit(acc, ("a", ("write", "t", "k", 1))) == OK
    bad = {"m": 1}
    for n, command in enumerate(
        [("write", "t", bad, 2), ("delete", "t", bad), ("incr", "t", bad, 1)]
    ):
        result = acceptor.commit(acc, (f"b{n}", command))
        assert result[0] == "error" and result[1][0] == "unknown_command", (command, result)
    assert acceptor.read(acc, ("read", "t", bad))[1][0] == "unknown_command"
    packed = [("write", "t", "x", 1), ("write", "t", bad, 2), ("write", "t", "y", 3)]
    results = acceptor.commit(acc, ("c", ("$batch", codec.packb(packed))))
    assert results[0] == OK and results[1][0] == "error" and results[2] == OK, results
    assert [acceptor.read(acc, ("read", "t", k)) for k in ("k", "x", "y")] == [
        ("ok", 1),
        ("ok", 1),
        ("ok", 3),
    ]
    assert acceptor.commit(acc, ("d", ("write", "t", "k", 4))) == OK  # still serving


def test_a_result_msgpack_cannot_carry_is_answered_with_an_error_the_others_as_usual(
    tmp_path: Path,
) -> None:
    # A review: a provider's set in one reply frame made the frame unencodable, and every
    # other request answered in it timed out although it was applied.
    node = _single(tmp_path, storage_module=SetStorage)
    acc = addr("acceptor", node)
    handles = [otp.LocalReplyTo() for _ in range(3)]
    ops = [("a", ("bump", "t", "n")), ("b", ("members", "t", "s")), ("c", ("bump", "t", "n"))]
    acceptor.commit_batch(acc, list(zip(handles, ops, strict=True)))
    answers = [otp.wait_response(h, 5.0) for h in handles]
    assert answers == [("ok", 1), storage.UNENCODABLE_RESULT, ("ok", 2)]
    assert acceptor.read(acc, ("members", "t", "s")) == storage.UNENCODABLE_RESULT
    assert acceptor.read(acc, ("read", "t", "n")) == ("ok", 2)


def test_a_sessions_result_msgpack_cannot_carry_is_recorded_as_the_error_it_was_answered(
    tmp_path: Path,
) -> None:
    # A review: the raw set went into the session table, which is the provider's data, and
    # every snapshot of the partition failed to encode until the client acknowledged the seq.
    node = _single(tmp_path, storage_module=SetStorage)
    acc = addr("acceptor", node)
    st = addr("storage", node)
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    members = call_command(sid, 1, 1, ("members", "t", "s"))
    assert acceptor.commit(acc, ("a", members)) == storage.UNENCODABLE_RESULT
    assert acceptor.commit(acc, ("b", members)) == storage.UNENCODABLE_RESULT  # the retry
    assert storage.create_snapshot(st)[0] == "ok"


def test_a_batch_with_an_unknown_tagged_command_records_its_error_durably(tmp_path: Path) -> None:
    node = _single(tmp_path, log_module=DISK, storage_module=SQLITE)
    acc = addr("acceptor", node)
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    packed = [call_command(sid, 1, 1, ("frob",)), call_command(sid, 2, 1, ("write", "t", "q", 1))]
    bad, good = acceptor.commit(acc, ("a", ("$batch", codec.packb(packed))))
    assert bad[1][0] == "unknown_command" and good == OK
    node_id = node.id
    node.stop()
    node = start_node(tmp_path, "n1", [1], node_id=node_id, log_module=DISK, storage_module=SQLITE)
    wait_until(lambda: state(node) == "leader")
    acc = addr("acceptor", node)
    # seq 1 keeps its recorded error: a retry with a valid payload is not applied.
    retry = call_command(sid, 1, 1, ("write", "t", "q", 2))
    assert acceptor.commit(acc, ("b", retry))[1][0] == "unknown_command"
    assert acceptor.read(acc, ("read", "t", "q")) == ("ok", 1)
    node.stop()


def test_clients_cannot_touch_the_reserved_session_key(tmp_path: Path) -> None:
    node = _single(tmp_path)
    acc = addr("acceptor", node)
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    assert acceptor.commit(acc, ("a", call_command(sid, 1, 1, ("write", "t", "k", 1)))) == OK
    key = storage.SESSIONS_KEY
    refused = storage.RESERVED_KEY_ERROR
    # plain, derived, sessioned, and inside a $batch (with an ordinary write next to it)
    assert acceptor.commit(acc, ("b", ("write", "t", key, "forged"))) == refused
    assert acceptor.commit(acc, ("c", ("append", "t", key, "x"))) == refused
    assert acceptor.commit(acc, ("d", ("delete", "t", key))) == refused
    assert acceptor.commit(acc, ("e", call_command(sid, 2, 1, ("write", "t", key, 0)))) == refused
    packed = codec.packb([("write", "t", key, "forged"), ("write", "t", "k2", 2)])
    assert acceptor.commit(acc, ("f", ("$batch", packed))) == [refused, OK]
    assert acceptor.read(acc, ("read", "t", key)) == refused
    # The table is intact: the retry of seq 1 is still recognised, seq 2 recorded its refusal.
    assert acceptor.commit(acc, ("g", call_command(sid, 1, 1, ("write", "t", "k", 9)))) == OK
    assert acceptor.read(acc, ("read", "t", "k")) == ("ok", 1)
    assert acceptor.commit(acc, ("h", call_command(sid, 2, 1, ("write", "t", "k", 9)))) == refused
    assert acceptor.read(acc, ("read", "t", "k2")) == ("ok", 2)


def test_what_a_looping_provider_applied_before_an_unknown_command_is_not_applied_again(
    tmp_path: Path,
) -> None:
    node = _single(tmp_path, storage_module=LoopingStorage)
    acc = addr("acceptor", node)
    bump = ("bump", "t", "c")
    # Separate entries in one apply chunk: the loop applied the bump, then met ("frob",).
    handles = [otp.LocalReplyTo() for _ in range(2)]
    acceptor.commit_batch(acc, [(handles[0], ("a", bump)), (handles[1], ("b", ("frob",)))])
    first, second = (h.wait(5) for h in handles)
    assert first == ("ok", 1) and second[0] == "error"
    assert acceptor.read(acc, ("read", "t", "c")) == ("ok", 1)
    # A tagged bump and a bad command in one $batch: applied once, its result recorded.
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    packed = [call_command(sid, 1, 1, bump), ("frob",)]
    results = acceptor.commit(acc, ("c", ("$batch", codec.packb(packed))))
    assert results[0] == ("ok", 2) and results[1][0] == "error"
    assert acceptor.commit(acc, ("d", call_command(sid, 1, 1, bump))) == ("ok", 2)
    assert acceptor.read(acc, ("read", "t", "c")) == ("ok", 2)


def test_incr_after_a_providers_own_command_reads_what_that_command_left(tmp_path: Path) -> None:
    node = _single(tmp_path, storage_module=CountingStorage)
    acc = addr("acceptor", node)
    # Separate entries in one apply chunk: the incr reads the bump's result.
    handles = [otp.LocalReplyTo() for _ in range(2)]
    bump, incr = ("bump", "t", "c"), ("incr", "t", "c", 10)
    acceptor.commit_batch(acc, [(handles[0], ("a", bump)), (handles[1], ("b", incr))])
    assert [h.wait(5) for h in handles] == [("ok", 1), ("ok", 11)]
    # Inside one $batch entry (one transaction) it cannot: refused, the bump still applied.
    packed = codec.packb([bump, incr])
    assert acceptor.commit(acc, ("c", ("$batch", packed))) == [("ok", 12), DERIVED_AFTER_OPAQUE]
    assert acceptor.read(acc, ("read", "t", "c")) == ("ok", 12)


def test_a_storage_restart_that_fails_after_opening_its_provider_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``terminate`` does not run when ``init`` fails: the node LMDB's slot of the partition
    stayed taken and every later restart failed with StorageLockedError."""
    pytest.importorskip("lmdb")
    node = _single(tmp_path, log_module=DISK, storage_module=NODE_LMDB)
    acc = addr("acceptor", node)
    assert acceptor.commit(acc, ("a", ("write", "t", "k", 1))) == OK
    failures = [RuntimeError("a damaged session table")]
    real = storage.StorageServer._load_sessions

    def load(self: storage.StorageServer) -> Any:
        if failures:
            raise failures.pop()
        return real(self)

    real_cast = storage.StorageServer.handle_cast

    def handle_cast(self: storage.StorageServer, msg: Any) -> None:
        if msg == ("crash",):
            raise RuntimeError("a crash of the storage actor")
        real_cast(self, msg)

    monkeypatch.setattr(storage.StorageServer, "_load_sessions", load)
    monkeypatch.setattr(storage.StorageServer, "handle_cast", handle_cast)
    otp.cast(addr("storage", node), ("crash",))  # the partition restarts: the first storage
    # start fails after opening its provider, the supervisor's next one must succeed
    # (``state`` may still show the leader of before the crash: wait for a commit to go in)
    write = ("b", ("write", "t", "k", 2))
    wait_until(lambda: not failures and acceptor.commit(addr("acceptor", node), write) == OK, 20)
    assert acceptor.read(addr("acceptor", node), ("read", "t", "k")) == ("ok", 2)
    node.stop()


class RecordingStorage(MemoryStorage):
    """Memory storage that keeps what each transaction wrote for the session table."""

    table_writes: ClassVar[list[list[Any]]] = []

    def apply_batch_then(self, items: Any, finalize: Any) -> list[Any]:
        def spy(results: list[Any]) -> Any:
            extra = list(finalize(results))
            RecordingStorage.table_writes.append(extra)
            return extra

        return super().apply_batch_then(items, spy)


def test_a_call_writes_its_sessions_row_not_the_whole_table(tmp_path: Path) -> None:
    node = _single(tmp_path, storage_module=RecordingStorage)
    acc = addr("acceptor", node)
    handles = [otp.LocalReplyTo() for _ in range(300)]
    acceptor.commit_batch(
        acc, [(h, (f"r{i}", register_command(100_000))) for i, h in enumerate(handles)]
    )
    sids = [h.wait(10)[1] for h in handles]
    RecordingStorage.table_writes.clear()
    sid = sids[150]
    assert acceptor.commit(acc, ("a", call_command(sid, 1, 1, ("write", "t", "k", 1)))) == OK
    (written,) = RecordingStorage.table_writes
    assert written == [("write", storage.SESSIONS_TABLE, storage.session_key(sid), ANY_ROW)]
    RecordingStorage.table_writes.clear()
    assert acceptor.commit(acc, ("b", close_command(sids[0]))) == OK
    (written,) = RecordingStorage.table_writes
    assert written == [
        ("delete", storage.SESSIONS_TABLE, storage.session_key(sids[0])),
        ("write", storage.SESSIONS_TABLE, storage.SESSIONS_KEY, (INDEX_VERSION, tuple(sids[1:]))),
    ]
    # Still deduplicated from the row, and the rows are reserved keys.
    assert acceptor.commit(acc, ("c", call_command(sid, 1, 1, ("write", "t", "k", 2)))) == OK
    assert acceptor.read(acc, ("read", "t", "k")) == ("ok", 1)
    row_key = storage.session_key(sid)
    assert acceptor.commit(acc, ("d", ("write", "t", row_key, 0))) == storage.RESERVED_KEY_ERROR
    assert acceptor.commit(acc, ("e", ("write", "t", list(row_key), 0))) == (
        storage.RESERVED_KEY_ERROR
    )
    assert acceptor.read(acc, ("read", "t", row_key)) == storage.RESERVED_KEY_ERROR
    node.stop()


class _AnyRow:
    def __eq__(self, other: object) -> bool:
        return type(other) is tuple and len(other) == 4

    __hash__ = None  # type: ignore[assignment]


ANY_ROW: Any = _AnyRow()


def _bare_storage(provider: MemoryStorage) -> storage.StorageServer:
    """A storage actor's state without its actor: enough for its session table methods."""
    server = object.__new__(storage.StorageServer)
    server.provider = provider
    server.position = LogPos(1, 9)
    server.name = "raft_storage_t_1"
    return server


def test_a_session_table_stored_whole_is_read_and_rewritten_as_rows() -> None:
    old = SessionTable()
    for index in (1, 2, 3):
        old.begin(register_command(1000), index)
    old.begin(call_command(2, 1, 1, "x"), 4)
    old.finish(2, 1, ("ok", 4))
    provider = MemoryStorage(cast(Any, None))
    provider.apply(
        ("write", storage.SESSIONS_TABLE, storage.SESSIONS_KEY, old.dump()), LogPos(1, 9)
    )
    server = _bare_storage(provider)
    server.sessions = loaded = server._load_sessions()
    assert loaded == old and loaded.changed  # to be rewritten at its next change
    writes = server._sessions_write()
    provider.apply_batch([(w, LogPos(1, 9), None) for w in writes])
    loaded.saved()
    assert provider.read(("read", "$waraft", storage.SESSIONS_KEY), LogPos(1, 9)) == (
        "ok",
        (INDEX_VERSION, (1, 2, 3)),
    )
    again = server._load_sessions()
    assert again == old and not again.changed
    # A row missing from under its index is a damaged table: a clear error, not a guess.
    provider.apply(("delete", "$waraft", storage.session_key(2)), LogPos(1, 9))
    with pytest.raises(ValueError, match="session 2 has no row"):
        server._load_sessions()


class NoBootstrapStorage(MemoryStorage):
    """A provider that leaves ``make_empty_snapshot`` to the base class."""

    make_empty_snapshot = StorageProvider.make_empty_snapshot


def test_a_provider_that_cannot_make_the_first_snapshot_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(tmp_path, "n1", [1], storage_module=NoBootstrapStorage)
    config = server.make_config([ident(node)])
    result = server.bootstrap(addr("server", node), LogPos(1, 1), config)
    assert result == ("error", "not_supported")
    assert "NoBootstrapStorage does not implement make_empty_snapshot" in caplog.text
    node.stop()


class RaisingStorage(SqliteStorage):
    """A user's durable provider whose apply raises for ``("boom", ...)``, as input
    validation might."""

    answers_ok = True  # raises for boom, passes the rest through

    def apply_batch(self, items: Any) -> list[Any]:
        if any(type(c) is tuple and c[:1] == ("boom",) for c, _, _ in items):
            raise TypeError("boom needs an int")
        return super().apply_batch(items)


def test_an_entry_whose_apply_always_raises_disables_its_replica_not_the_app(
    tmp_path: Path,
) -> None:
    # A review: a provider raising for one committed command restarted its partition for
    # ever, and the restarts went over the app supervisor's limit, so every other partition
    # of the app restarted too.
    node = start_node(tmp_path, "n1", [1, 2], log_module=DISK, storage_module=RaisingStorage)
    for p in (1, 2):
        config = server.make_config([ident(node, p)])
        assert server.bootstrap(addr("server", node, p), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node, 1) == "leader" and state(node, 2) == "leader")
    other = addr("acceptor", node, 2)
    assert acceptor.commit(other, ("a", ("incr", "t", "n", 1))) == ("ok", 1)
    term_of_other = server.status(addr("server", node, 2))["current_term"]
    result = acceptor.commit(addr("acceptor", node, 1), ("b", ("boom", "t", "x")), timeout=10)
    assert result[0] == "error", result
    wait_until(lambda: state(node, 1) == "disabled", timeout=20)
    status = server.status(addr("server", node, 1))
    reason = str(status["disable_reason"])
    assert "storage_failed" in reason and "TypeError: boom needs an int" in reason, reason
    time.sleep(1.0)  # no more restarts: it stays disabled, and the other partition is untouched
    assert state(node, 1) == "disabled"
    assert server.status(addr("server", node, 2))["current_term"] == term_of_other
    assert acceptor.commit(other, ("c", ("incr", "t", "n", 1))) == ("ok", 2)
    node.stop()


class NoSessionStorage(LoopingStorage):
    """A user's provider with commands of its own only: no generic write of reserved keys."""

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        if type(command) is tuple and command[:1] in (("write",), ("delete",)):
            raise storage.UnknownCommandError(f"no generic {command[0]} here")
        return super().apply(command, position, label)


def test_a_provider_that_cannot_store_sessions_is_disabled_at_the_first_session(
    tmp_path: Path,
) -> None:
    # A review: its storage crashed at every replay (and the fallback for unknown commands
    # re-applied the batch's entries the provider had already applied).
    node = _single(tmp_path, storage_module=NoSessionStorage)
    acc = addr("acceptor", node)
    assert acceptor.commit(acc, ("a", ("bump", "t", "n"))) == ("ok", 1)
    result = acceptor.commit(acc, ("r", register_command(1000)), timeout=5)
    assert result[0] == "error", result
    wait_until(lambda: state(node) == "disabled", timeout=10)
    reason = str(server.status(addr("server", node))["disable_reason"])
    assert "NoSessionStorage cannot store exactly-once sessions" in reason, reason
    time.sleep(0.5)
    assert state(node) == "disabled"
    node.stop()


# -- owners (F3): the gateway stamps who registered; a burst costs only its own sessions ---------


def _stored_rows(node: otp.Node) -> dict[int, Any]:
    found = storage.read(
        addr("storage", node), ("read", storage.SESSIONS_TABLE, storage.SESSIONS_KEY)
    )
    if type(found) is not tuple or found[0] != "ok" or type(found[1]) is not tuple:
        return {}  # nothing stored yet
    rows = {}
    for sid in found[1][1]:
        row = storage.read(
            addr("storage", node), ("read", storage.SESSIONS_TABLE, storage.session_key(sid))
        )
        rows[sid] = row[1]
    return rows


def _owner(row: Any) -> Any:
    return row[5] if len(row) == 6 else None


def _gateway_batch(node: otp.Node, origin: str | None, commands: list[Any], reply: Any) -> None:
    """A client batch as the receive thread hands it over (``origin``: the connection's
    authenticated identity), or through the acceptor's mailbox (``origin`` None)."""
    name, _ = acc = addr("acceptor", node)
    items = [(f"k{i}", command) for i, command in enumerate(commands)]
    msg = ("client_batch", reply, 1, "commit", items, "high")
    if origin is None:
        otp.cast(acc, msg)
    else:
        handler = dist_inline.handler(name)
        assert handler is not None
        with node.activate():  # the receive thread runs as the node
            assert handler(msg, origin)
            dist_inline.run_idle_hooks()  # as the receive thread does once its socket drains


def test_the_gateway_stamps_registers_with_the_authenticated_owner(tmp_path: Path) -> None:
    node = _single(tmp_path)
    token = b"t" * 16
    forged = ("$session", "register", 1000, token, "client:victim")
    # From another node (the receive thread's path): whatever the command claims, the owner
    # is who the connection authenticated as.
    _gateway_batch(node, "client:mallory", [forged, register_command(1000, token)], ("r", "x@h"))
    wait_until(lambda: len(_stored_rows(node)) == 2)
    assert {_owner(r) for r in _stored_rows(node).values()} == {"client:mallory"}
    # A caller on this node (replies to this node): no owner, a claimed one is dropped.
    _gateway_batch(node, None, [forged], ("r", node.id))
    wait_until(lambda: len(_stored_rows(node)) == 3)
    assert [_owner(r) for _, r in sorted(_stored_rows(node).items())][-1] is None
    assert acceptor.commit(addr("acceptor", node), ("f", forged))[0] == "ok"
    wait_until(lambda: len(_stored_rows(node)) == 4)
    assert [_owner(r) for _, r in sorted(_stored_rows(node).items())][-1] is None
    # A packed $batch is not opened by the gateway: a register inside it was never stamped,
    # so storage gives it the batch owner, whatever it claims.
    packed = codec.packb([forged, ("write", "t", "k", "v")])
    results = acceptor.commit(addr("acceptor", node), ("b", ("$batch", packed)))
    assert results[0][0] == "ok" and results[1] == OK
    wait_until(lambda: len(_stored_rows(node)) == 5)
    assert _owner(_stored_rows(node)[results[0][1]]) == BATCH_OWNER
    node.stop()


def test_with_session_owners_off_registers_are_appended_as_older_builds_append_them(
    tmp_path: Path,
) -> None:
    """A rolling upgrade from a build without owners: ``raft_session_owners`` False, and the
    gateway appends registers in the shapes such replicas apply (no owner, whatever the
    sender is or the command claims)."""
    node = _single(tmp_path, settings={"raft_session_owners": False})
    token = b"t" * 16
    forged = ("$session", "register", 1000, token, "client:victim")
    _gateway_batch(node, "client:mallory", [forged, register_command(1000, token)], ("r", "x@h"))
    wait_until(lambda: len(_stored_rows(node)) == 2)
    rows = _stored_rows(node)
    assert [len(row) for row in rows.values()] == [5, 5]  # expire, active, floor, results, token
    assert {_owner(row) for row in rows.values()} == {None}
    node.stop()


def test_a_register_burst_from_one_key_does_not_expire_another_keys_session(
    tmp_path: Path,
) -> None:
    """The F3 attack through a real partition's gateway and storage: one identity registers
    past ``MAX_SESSIONS``; another's session stays live and still deduplicates."""
    node = _single(tmp_path, storage_module=CountingStorage)
    acc = addr("acceptor", node)
    token = b"v" * 16
    _gateway_batch(node, "client:victim", [register_command(10**6, token)], ("r", "x@h"))
    wait_until(lambda: len(_stored_rows(node)) == 1)
    (victim,) = _stored_rows(node)
    bump = ("bump", "t", "n")
    assert acceptor.commit(acc, ("b1", call_command(victim, 1, 1, bump, token))) == ("ok", 1)
    burst = [register_command(10**6, b"m" * 16)] * 1000
    for i in range(MAX_SESSIONS // len(burst) + 1):
        _gateway_batch(node, "client:mallory", burst, ("r", "x@h"))
        # Applied in order: every register before it is too (none refused by admission).
        assert acceptor.commit(acc, (f"s{i}", ("write", "t", "k", i)), timeout=60) == OK
    rows = _stored_rows(node)
    assert max(rows) - victim > MAX_SESSIONS + len(burst)  # that many entries since: a burst
    assert victim in rows
    assert sum(_owner(r) == "client:mallory" for r in rows.values()) == MAX_SESSIONS_PER_OWNER
    # The victim's retry is still recognised: applied once.
    assert acceptor.commit(acc, ("b2", call_command(victim, 1, 1, bump, token))) == ("ok", 1)
    assert acceptor.commit(acc, ("b3", call_command(victim, 2, 2, bump, token))) == ("ok", 2)
    node.stop()


def test_a_memory_subclass_command_is_applied_inside_a_packed_batch(tmp_path: Path) -> None:
    # A review: the client packs concurrent commits into one $batch entry, and
    # MemoryStorage.apply_many refused the first subclass command of every such entry.
    node = _single(tmp_path, storage_module=AddingStorage)
    acc = addr("acceptor", node)
    add = ("add", "t", "n", 1)
    assert acceptor.commit(acc, ("a", add)) == ("ok", 1)
    packed = codec.packb([add, ("write", "t", "w", 1), add, ("frob",), add])
    result = acceptor.commit(acc, ("b", ("$batch", packed)))
    assert result[:3] == [("ok", 2), "ok", ("ok", 3)] and result[4] == ("ok", 4)
    assert result[3][0] == "error" and result[3][1][0] == "unknown_command"
    assert acceptor.read(acc, ("get", "t", "n")) == ("ok", 4)
    node.stop()
