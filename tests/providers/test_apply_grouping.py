"""A replica's data and every answer it records are a function of the committed log alone.

The storage actor gets committed entries in apply messages whose boundaries differ from
replica to replica (a leader, a follower and a replica replaying its log group the same
entries differently), and groups them again into provider batches. Nothing it stores or
answers may depend on either grouping. These tests apply one log to a provider in one apply
message, entry by entry and in random groups, and compare what each replica answered for
every entry and the data and session rows it ended with.

Two reviews found it broken: an ``incr`` looked for an earlier write of its key in the same
batch with Python's ``==`` (``True == 1 == 1.0``, ``[1] != (1,)``) while the providers store
rows under the key's msgpack encoding; and a provider's own command inside a ``$batch`` merged
into the batch (``merge_batches``) did not stop a later ``incr`` from joining it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from waraft import storage
from waraft.core.effects import ApplyItem
from waraft.core.sessions import SessionTable, call_command, register_command
from waraft.core.types import NOOP, Entry, LogPos, Priority
from waraft.storage.memory import MemoryStorage
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import (
    StorageOptions,
    StorageProvider,
    UnknownCommandError,
    refused_at,
)
from waraft.storage.sqlite import SqliteStorage

from .helpers import A, ApplyQueues

# -- providers with a command of their own, and a write they refuse ------------------------------

POISON = "poison"
"""A value the custom providers refuse to store (``UnknownCommandError``, index given)."""


def _own(command: Any) -> Any:
    """``("set10", table, key)`` as the write it stands for; a write of ``POISON`` refused."""
    if type(command) is tuple and len(command) == 3 and command[0] == "set10":
        return ("write", command[1], command[2], 10)
    if (
        type(command) is tuple
        and len(command) == 4
        and command[0] == "write"
        and command[3] == POISON
    ):
        raise UnknownCommandError("poisoned value")
    return command


def _own_items(items: Sequence[tuple[Any, LogPos, Any]]) -> list[tuple[Any, LogPos, Any]]:
    out = []
    for number, (command, position, label) in enumerate(items):
        try:
            out.append((_own(command), position, label))
        except UnknownCommandError as exc:
            raise refused_at(exc, number) from None
    return out


class OwnMemory(MemoryStorage):
    """Not one transaction: a refusal after applied items is a ``PartialApplyError``."""

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        return super().apply(_own(command), position, label)

    apply_many = StorageProvider.apply_many  # no inline path around apply()


class OwnSqlite(SqliteStorage):
    answers_ok: ClassVar[bool] = True

    def apply_batch(self, items: Sequence[tuple[Any, LogPos, Any]]) -> list[Any]:
        return super().apply_batch(_own_items(items))


class OwnNodeLmdb(NodeLmdbStorage):
    answers_ok: ClassVar[bool] = True

    def apply_batch(self, items: Sequence[tuple[Any, LogPos, Any]]) -> list[Any]:
        return super().apply_batch(_own_items(items))

    def apply_many(self, commands: Sequence[Any], position: LogPos, label: Any = None) -> list[Any]:
        return self.apply_batch([(command, position, label) for command in commands])


PROVIDERS: dict[str, tuple[type[StorageProvider], type[StorageProvider], dict[str, Any]]] = {
    "memory": (MemoryStorage, OwnMemory, {}),
    "sqlite": (SqliteStorage, OwnSqlite, {}),
    "node_lmdb": (NodeLmdbStorage, OwnNodeLmdb, {}),  # lazy sync: the write-back buffer
    "node_lmdb_sync": (NodeLmdbStorage, OwnNodeLmdb, {"lmdb_sync": True}),  # merges batches
}


# -- a storage actor without its process ---------------------------------------------------------


class _Reply:
    def __init__(self, answers: dict[int, Any], index: int) -> None:
        self.answers, self.index = answers, index

    def reply(self, value: Any) -> None:
        assert self.index not in self.answers, f"entry {self.index} answered twice"
        self.answers[self.index] = value


class Replica:
    """One replica's storage actor state over a provider, applying apply messages."""

    def __init__(self, provider: StorageProvider, merge: bool) -> None:
        actor = object.__new__(storage.StorageServer)
        actor.provider = provider
        actor.position = provider.position()
        actor.name = "raft_storage_t_1"
        actor.queues = ApplyQueues()
        actor.witness = False
        actor._merge_batches = merge
        actor._check_results = False
        actor._notify_complete = False
        actor.sessions = SessionTable()
        actor._serve_reads = lambda: None  # type: ignore[method-assign]
        self.actor = actor
        self.answers: dict[int, Any] = {}

    def apply(self, log: Sequence[Any], groups: Sequence[int]) -> None:
        """Apply ``log`` (entry 1 first) in apply messages of ``groups`` entries each."""
        index = 1
        for size in groups:
            items = [
                ApplyItem(i, Entry(1, f"l{i}", log[i - 1]), _Reply(self.answers, i), Priority.HIGH)
                for i in range(index, index + size)
            ]
            self.actor._apply(items, 0)
            index += size
        assert index == len(log) + 1

    def outcome(self) -> dict[str, Any]:
        """Everything a client could see: the answer of each entry, the data at every key
        of the pool, the stored session rows, the position."""
        provider, position = self.actor.provider, self.actor.position
        return {
            "position": position,
            "answers": self.answers,
            "data": [_read(provider, key, position) for key in KEYS],
            "sessions": [
                _read(provider, key, position)
                for key in [storage.SESSIONS_KEY, *(storage.session_key(s) for s in SESSIONS)]
            ],
        }


def _read(provider: StorageProvider, key: Any, position: LogPos) -> Any:
    try:
        return provider.read(("read", "t", key), position)
    except UnknownCommandError as exc:
        return ("refused", str(exc))


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[[str, bool, bool], Replica]]:
    """A factory of replicas, each on a provider of its own (closed at the end)."""
    opened: list[StorageProvider] = []

    def make(kind: str, custom: bool, merge: bool) -> Replica:
        plain, own, extra = PROVIDERS[kind]
        number = len(opened) + 1
        options = StorageOptions("t", number, A, f"raft_storage_t_{number}", extra=dict(extra))
        provider = (own if custom else plain).open(options, tmp_path / f"t.{number}")
        opened.append(provider)
        return Replica(provider, merge)

    yield make
    for provider in opened:
        provider.close()


# -- the logs ------------------------------------------------------------------------------------

KEYS: tuple[Any, ...] = (True, 1, 1.0, False, 0, -0.0, (1,), [1], "a", b"a")
"""Keys Python's ``==`` confuses and msgpack does not (``[1]`` and ``(1,)`` the other way)."""
SESSIONS = (1, 2)  # the entries registering them
VALUES: tuple[Any, ...] = (0, 1, 5, -3, "x", (1, 2))


def _command(rng: random.Random, custom: bool, plain: bool = False) -> Any:
    """A command a ``$batch`` may hold (``plain``: only what a merged ``$batch`` holds)."""
    key = rng.choice(KEYS)
    roll = rng.random()
    if custom and roll < 0.15:
        return ("set10", "t", key) if rng.random() < 0.7 else ("write", "t", key, POISON)
    if plain or roll < 0.45:
        if rng.random() < 0.75:
            return ("write", "t", key, rng.choice(VALUES))
        return ("delete", "t", key)
    if roll < 0.8:
        return ("incr", "t", key, rng.choice((1, 2, -1)))
    return ("append", "t", key, rng.choice(VALUES))


def random_log(seed: int, custom: bool, length: int = 30) -> list[Any]:
    """Writes, deletes, ``incr``/``append``, ``$batch`` entries (merged or not) and session
    calls (duplicates too), with the custom provider's own command and refused write when
    ``custom``."""
    rng = random.Random(seed)
    log: list[Any] = [register_command(1000) for _ in SESSIONS]
    seqs = dict.fromkeys(SESSIONS, 0)
    while len(log) < length:
        roll = rng.random()
        if roll < 0.45:
            log.append(_command(rng, custom))
        elif roll < 0.65:
            plain = rng.random() < 0.5
            log.append(("$batch", [_command(rng, custom, plain) for _ in range(rng.randint(1, 4))]))
        elif roll < 0.95:
            session = rng.choice(SESSIONS)
            if seqs[session] and rng.random() < 0.2:
                seq = rng.randint(1, seqs[session])  # a retry: answered from the table
            else:
                seqs[session] = seq = seqs[session] + 1
            command = call_command(session, seq, max(1, seq - 2), _command(rng, custom))
            log.append(("$batch", [command]) if rng.random() < 0.2 else command)
        else:
            log.append(NOOP)
    return log


def random_groups(rng: random.Random, length: int) -> list[int]:
    groups = []
    while length:
        size = min(length, rng.randint(1, 6))
        groups.append(size)
        length -= size
    return groups


def _outcomes(
    make: Callable[[str, bool, bool], Replica],
    kind: str,
    custom: bool,
    merge: bool,
    log: Sequence[Any],
    groupings: Sequence[Sequence[int]],
) -> list[dict[str, Any]]:
    outcomes = []
    for groups in groupings:
        replica = make(kind, custom, merge)
        replica.apply(log, groups)
        outcomes.append(replica.outcome())
    return outcomes


# -- the tests -----------------------------------------------------------------------------------

SEEDS = 6


@pytest.mark.parametrize("custom", [False, True], ids=["builtin", "own_commands"])
@pytest.mark.parametrize("merge", [False, True], ids=["apply_many", "merge_batches"])
@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_a_log_gives_the_same_answers_and_data_however_its_entries_are_grouped(
    replicas: Callable[[str, bool, bool], Replica], kind: str, merge: bool, custom: bool
) -> None:
    for seed in range(SEEDS):
        log = random_log(seed, custom)
        rng = random.Random(seed)
        groupings = [[1] * len(log), [len(log)], random_groups(rng, len(log))]
        one_by_one, *others = _outcomes(replicas, kind, custom, merge, log, groupings)
        assert sorted(one_by_one["answers"]) == list(range(1, len(log) + 1))
        for groups, outcome in zip(groupings[1:], others, strict=True):
            assert outcome == one_by_one, f"seed {seed}: apply messages of {groups} entries"


# The cases the reviews found, each alone.
CASES: dict[str, tuple[bool, bool, list[Any]]] = {
    # A write of key True, then an incr of key 1: two keys in every provider.
    "incr_after_a_write_of_an_equal_key": (
        False,
        False,
        [
            register_command(1000),
            register_command(1000),
            ("write", "t", True, 5),
            call_command(1, 1, 1, ("incr", "t", 1, 1)),
        ],
    ),
    # A write of key [1], then an append to key (1,): one key in every provider.
    "append_after_a_write_of_the_same_key_as_a_list": (
        False,
        False,
        [
            register_command(1000),
            register_command(1000),
            ("write", "t", [1], (7,)),
            call_command(1, 1, 1, ("append", "t", (1,), 8)),
        ],
    ),
    # A merged $batch holding the provider's own command, then an incr of the key it wrote.
    "incr_after_a_merged_batch_of_an_own_command": (
        True,
        True,
        [
            register_command(1000),
            register_command(1000),
            ("write", "t", "a", 1),
            ("$batch", [("set10", "t", "a")]),
            call_command(1, 1, 1, ("incr", "t", "a", 1)),
        ],
    ),
    # A write the provider refuses, then an incr of its key: built on nothing.
    "incr_after_a_refused_write": (
        True,
        False,
        [
            register_command(1000),
            register_command(1000),
            ("write", "t", "a", 1),
            ("write", "t", "a", POISON),
            call_command(1, 1, 1, ("incr", "t", "a", 1)),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_the_found_cases_answer_alike_in_one_apply_message_and_entry_by_entry(
    replicas: Callable[[str, bool, bool], Replica], kind: str, case: str
) -> None:
    custom, merge, log = CASES[case]
    one_by_one, together = _outcomes(
        replicas, kind, custom, merge, log, [[1] * len(log), [2, len(log) - 2]]
    )
    assert together == one_by_one


def test_the_found_cases_answer_what_the_keys_hold(
    replicas: Callable[[str, bool, bool], Replica],
) -> None:
    """And what they answer is right: the rows the provider has (the durable ones key them
    by the msgpack encoding, the memory one by Python's ``==``, where a list is no key)."""
    for kind in sorted(PROVIDERS):
        answers = {}
        for case, (custom, merge, log) in CASES.items():
            replica = replicas(kind, custom, merge)
            replica.apply(log, [2, len(log) - 2])
            answers[case] = replica.answers[len(log)]
        memory = kind == "memory"
        assert answers == {
            "incr_after_a_write_of_an_equal_key": ("ok", 6) if memory else ("ok", 1),
            "append_after_a_write_of_the_same_key_as_a_list": "ok",
            "incr_after_a_merged_batch_of_an_own_command": ("ok", 11),
            "incr_after_a_refused_write": ("ok", 2),
        }, kind
