"""A command the provider refuses (``UnknownCommandError``) next to others: each entry, and
each apply chunk, stays one transaction, so a crash or an I/O error while storage answers the
refusal never leaves a replica whose stored position or session records claim more than it
applied (review findings F1 and F2: the fallback applied the items one at a time, the first
transaction stored the results recorded for items not applied yet, and a ``$batch`` entry's
position was committed with its first command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.partition.helpers import addr, cluster, leader_of, wait_until
from tests.partition.test_sessions import DISK, _single
from waraft import otp, storage
from waraft.core.sessions import call_command, register_command
from waraft.partition import acceptor
from waraft.services import codec
from waraft.storage.provider import OK, UnknownCommandError
from waraft.storage.sqlite import SqliteStorage

try:
    from waraft.storage.node_lmdb import NodeLmdbStorage
except ImportError:  # the lmdb package is optional
    NodeLmdbStorage = None  # type: ignore[assignment,misc]

FROB = ("frob",)  # a command no provider knows


def _unknown(result: Any) -> bool:
    return type(result) is tuple and result[0] == "error" and result[1][0] == "unknown_command"


class FailingOnce(SqliteStorage):
    """SQLite whose first transaction holding ``trigger`` without ``FROB`` fails with a full
    disk: in the fallback after ``FROB`` was refused (before it, that transaction held
    ``FROB`` too), as a crash or an I/O error would."""

    trigger: ClassVar[list[Any]] = []  # the command (at most one), removed once it fires
    fired: ClassVar[list[Any]] = []
    answers_ok = True  # raises or passes through

    def apply_batch(self, items: Any) -> list[Any]:
        _fail_once(items)
        return super().apply_batch(items)


def _fail_once(items: Any) -> None:
    commands = [command for command, _, _ in items]
    trigger = FailingOnce.trigger
    if trigger and trigger[0] in commands and FROB not in commands:
        FailingOnce.fired.append(trigger.pop())
        raise OSError(28, "No space left on device (injected)")


def _arm(command: Any) -> None:
    FailingOnce.trigger[:] = [command]
    FailingOnce.fired.clear()


_TRANSIENT = [("error", reason) for reason in ("unreachable", "not_leader", "timeout", "cancelled")]


def _crashed() -> None:
    """Wait for the armed failure to fire. The handles of the ops it hit are never answered
    (the storage actor crashed), so waiting on them would only run out their timeouts."""
    wait_until(lambda: FailingOnce.fired, timeout=30, interval=0.01)


def _restarted(node: otp.Node, op: tuple[str, Any]) -> Any:
    """The answer to committing ``op`` once the partition is back from the storage crash
    (the same op is asked again meanwhile: a session call is answered once, a write is a
    write)."""
    found: list[Any] = []

    def answered() -> bool:
        try:
            answer = acceptor.commit(addr("acceptor", node), op, timeout=2)
        except otp.ExitError:
            return False
        found[:] = [answer]
        return answer not in _TRANSIENT

    wait_until(answered, timeout=30, interval=0.1)
    return found[0]


def _read(node: otp.Node, key: str) -> Any:
    return storage.read(addr("storage", node), ("read", "t", key))


def test_a_crash_after_a_refusal_in_a_chunk_never_leaves_a_result_recorded_ahead(
    tmp_path: Path,
) -> None:
    node = _single(tmp_path, log_module=DISK, storage_module=FailingOnce)
    acc = addr("acceptor", node)
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    k3 = ("write", "t", "k3", 3)
    _arm(k3)
    # Separate entries, one apply chunk: one of them holds the refused command.
    calls = [
        call_command(sid, 1, 1, ("write", "t", "k1", 1)),
        call_command(sid, 2, 1, FROB),
        call_command(sid, 3, 1, k3),
    ]
    handles = [otp.LocalReplyTo() for _ in calls]
    ops = [(h, (f"c{i}", c)) for i, (h, c) in enumerate(zip(handles, calls, strict=True))]
    acceptor.commit_batch(acc, ops)
    _crashed()
    assert FailingOnce.fired == [k3]
    # Replayed after the restart: each seq applied once, its retry answered what it did.
    assert _restarted(node, ("d", calls[2])) == OK
    assert _read(node, "k3") == ("ok", 3)  # was not_found: seq 3 answered ok, never applied
    assert _unknown(acceptor.commit(acc, ("e", calls[1])))
    assert acceptor.commit(acc, ("f", calls[0])) == OK
    assert _read(node, "k1") == ("ok", 1)
    node.stop()


def test_a_crash_after_a_refusal_in_a_batch_entry_never_loses_the_rest_of_the_entry(
    tmp_path: Path,
) -> None:
    node = _single(tmp_path, log_module=DISK, storage_module=FailingOnce)
    acc = addr("acceptor", node)
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    k6 = ("write", "t", "k6", 6)
    _arm(k6)
    packed = [
        call_command(sid, 4, 1, ("write", "t", "k4", 4)),
        call_command(sid, 5, 1, FROB),
        call_command(sid, 6, 1, k6),
    ]
    # Unanswered: the storage actor crashes.
    acceptor.commit_async(acc, otp.LocalReplyTo(), ("b", ("$batch", codec.packb(packed))))
    _crashed()
    assert FailingOnce.fired == [k6]
    assert _restarted(node, ("e", packed[2])) == OK
    assert _read(node, "k6") == ("ok", 6)  # was not_found: the entry's position was stored
    assert _read(node, "k4") == ("ok", 4)
    node.stop()


def test_a_crash_after_a_refusal_in_a_plain_batch_entry_never_loses_the_rest(
    tmp_path: Path,
) -> None:
    node = _single(tmp_path, log_module=DISK, storage_module=FailingOnce)
    k9 = ("write", "t", "k9", 9)
    _arm(k9)
    packed = [("write", "t", "k7", 7), FROB, k9]
    acceptor.commit_async(
        addr("acceptor", node), otp.LocalReplyTo(), ("b", ("$batch", codec.packb(packed)))
    )
    _crashed()
    assert FailingOnce.fired == [k9]
    assert _restarted(node, ("c", ("write", "t", "k8", 8))) == OK  # entries after it apply
    assert _read(node, "k7") == ("ok", 7)
    assert _read(node, "k9") == ("ok", 9)  # was not_found
    node.stop()


def test_a_crash_after_a_refusal_in_a_merged_batch_entry_never_loses_the_rest(
    tmp_path: Path,
) -> None:
    """The node LMDB with ``lmdb_sync`` takes plain ``$batch`` entries into the apply chunk
    (``merge_batches``): the entry's commands sit among other entries' items."""
    if NodeLmdbStorage is None:
        pytest.skip("lmdb is not installed")

    class FailingOnceNodeLmdb(NodeLmdbStorage):  # type: ignore[misc,valid-type]
        answers_ok = True

        def apply_batch(self, items: Any) -> list[Any]:
            _fail_once(items)
            return list(super().apply_batch(items))

    settings = {"raft_storage_options": {"lmdb_sync": True}}
    node = _single(tmp_path, settings=settings, log_module=DISK, storage_module=FailingOnceNodeLmdb)
    acc = addr("acceptor", node)
    assert acceptor.commit(acc, ("w", ("write", "t", "k0", 0))) == OK
    k3 = ("write", "t", "k3", 3)
    _arm(k3)
    packed = codec.packb([("write", "t", "k2", 2), FROB, k3])
    ops = [
        ("a", ("write", "t", "k1", 1)),
        ("b", ("$batch", packed)),
        ("c", ("write", "t", "k4", 4)),
    ]
    handles = [otp.LocalReplyTo() for _ in ops]
    acceptor.commit_batch(acc, list(zip(handles, ops, strict=True)))
    _crashed()
    assert FailingOnce.fired == [k3]
    assert _restarted(node, ("d", ("write", "t", "k5", 5))) == OK
    for key, value in (("k1", 1), ("k2", 2), ("k3", 3), ("k4", 4)):
        assert _read(node, key) == ("ok", value), key  # k3 was not_found
    node.stop()


def test_replicas_agree_after_one_fails_while_answering_a_refusal(tmp_path: Path) -> None:
    with cluster(tmp_path, size=3, log_module=DISK, storage_module=FailingOnce) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        acc = addr("acceptor", leader)
        _, sid = acceptor.commit(acc, ("r", register_command(1000)))
        k3 = ("write", "t", "k3", 3)
        _arm(k3)  # fires on whichever replica gets there first
        commands = [call_command(sid, 1, 1, ("write", "t", "k1", 1)), FROB]
        commands.append(call_command(sid, 3, 1, k3))
        handles = [otp.LocalReplyTo() for _ in commands]
        ops = [(h, (f"c{i}", c)) for i, (h, c) in enumerate(zip(handles, commands, strict=True))]
        acceptor.commit_batch(acc, ops)
        _crashed()

        def applied_everywhere() -> bool:
            try:  # the register's id is its log index: the three entries follow it
                return all(storage.position(addr("storage", n)).index >= sid + 3 for n in nodes)
            except otp.ExitError:
                return False  # a storage actor restarting

        wait_until(applied_everywhere, timeout=30, interval=0.1)
        assert FailingOnce.fired == [k3]
        # Was not_found on the replica that failed, ("ok", 3) on the others.
        assert [_read(n, "k3") for n in nodes] == [("ok", 3)] * 3
        rows = [
            storage.read(
                addr("storage", n), ("read", storage.SESSIONS_TABLE, storage.session_key(sid))
            )[1][3]
            for n in nodes
        ]
        assert rows == [((1, OK), (3, OK))] * 3


class UnnamingStorage(FailingOnce):
    """A user's transactional provider that refuses a command without saying which
    (``UnknownCommandError.index`` None)."""

    answers_ok = True

    def apply_batch(self, items: Any) -> list[Any]:
        try:
            return super().apply_batch(items)
        except UnknownCommandError as exc:
            raise UnknownCommandError(str(exc)) from None


def test_a_provider_that_does_not_name_the_refused_command_gets_an_entry_at_a_time(
    tmp_path: Path,
) -> None:
    node = _single(tmp_path, log_module=DISK, storage_module=UnnamingStorage)
    acc = addr("acceptor", node)
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    FailingOnce.trigger.clear()  # nothing fails (yet)
    # Entries of one chunk: only the refused one is answered with the error, and the session
    # decisions are taken again entry by entry (a seq begun twice would answer nothing).
    calls = [
        call_command(sid, 1, 1, ("write", "t", "a", 1)),
        call_command(sid, 2, 1, FROB),
        ("write", "t", "b", 2),
        call_command(sid, 3, 3, ("incr", "t", "n", 5)),
        call_command(sid, 3, 3, ("incr", "t", "n", 5)),  # a copy of seq 3
    ]
    handles = [otp.LocalReplyTo() for _ in calls]
    ops = [(h, (f"c{i}", c)) for i, (h, c) in enumerate(zip(handles, calls, strict=True))]
    acceptor.commit_batch(acc, ops)
    answers = [h.wait(10) for h in handles]
    assert answers[0] == OK and _unknown(answers[1]) and answers[2] == OK
    assert answers[3:] == [("ok", 5), ("ok", 5)]
    assert _read(node, "n") == ("ok", 5)
    # A $batch entry whose refused command the provider does not name is refused whole: one
    # transaction, so nothing of it is applied.
    packed = [call_command(sid, 4, 4, ("write", "t", "c", 3)), FROB, ("write", "t", "d", 4)]
    results = acceptor.commit(acc, ("b", ("$batch", codec.packb(packed))))
    assert len(results) == 3 and all(_unknown(r) for r in results), results
    assert _read(node, "c") == _read(node, "d") == "not_found"
    assert _unknown(acceptor.commit(acc, ("e", packed[0])))  # its seq recorded the refusal
    # A failure between those entries' transactions: replayed from the last one stored.
    k5 = ("write", "t", "k5", 5)
    _arm(k5)
    calls = [call_command(sid, 5, 5, ("write", "t", "k4", 4)), FROB, call_command(sid, 6, 5, k5)]
    handles = [otp.LocalReplyTo() for _ in calls]
    ops = [(h, (f"f{i}", c)) for i, (h, c) in enumerate(zip(handles, calls, strict=True))]
    acceptor.commit_batch(acc, ops)
    _crashed()
    assert FailingOnce.fired == [k5]
    assert _restarted(node, ("g", calls[2])) == OK
    assert _read(node, "k5") == ("ok", 5)
    assert acceptor.commit(addr("acceptor", node), ("h", calls[0])) == OK
    node.stop()


def test_refusals_answer_the_same_in_one_chunk_as_entry_by_entry(tmp_path: Path) -> None:
    """Several refused commands among a chunk's session calls and plain writes: the answers
    and the stored state are those of applying the entries one by one."""
    node = _single(tmp_path, log_module=DISK, storage_module=SqliteStorage)
    acc = addr("acceptor", node)
    _, sid = acceptor.commit(acc, ("r", register_command(1000)))
    calls: list[Any] = [FROB, ("write", "t", "x", 1), call_command(sid, 1, 1, FROB)]
    calls += [call_command(sid, 2, 1, ("incr", "t", "n", 2)), ("frob", 2)]
    calls += [call_command(sid, 3, 1, ("incr", "t", "n", 3)), call_command(sid, 2, 1, FROB)]
    handles = [otp.LocalReplyTo() for _ in calls]
    ops = [(h, (f"c{i}", c)) for i, (h, c) in enumerate(zip(handles, calls, strict=True))]
    acceptor.commit_batch(acc, ops)
    answers = [h.wait(10) for h in handles]
    assert [_unknown(a) for a in answers] == [True, False, True, False, True, False, False]
    assert answers[1] == OK and answers[3] == ("ok", 2) and answers[5] == ("ok", 5)
    assert answers[6] == ("ok", 2)  # a copy of seq 2 (whatever its payload)
    assert _read(node, "x") == ("ok", 1) and _read(node, "n") == ("ok", 5)
    assert _unknown(acceptor.commit(acc, ("d", call_command(sid, 1, 1, ("write", "t", "x", 9)))))
    assert _read(node, "x") == ("ok", 1)
    node.stop()
