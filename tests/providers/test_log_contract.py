"""The LogProvider contract, run against every log provider (memory and disk)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from waraft.core.types import Entry, LogPos, Priority
from waraft.log.memory import ENTRY_MEMORY_OVERHEAD, MemoryLog
from waraft.log.provider import LogPositionError, LogProvider

from .helpers import A, B, C, LogFactory, make_config, writes


def fill(log: LogProvider, count: int, term: int = 1) -> list[Entry]:
    entries = writes(log.last_index() + 1, count, term)
    log.append(log.last_index() + 1, entries)
    log.sync()
    return entries


def check_contiguous(log: LogProvider) -> None:
    first, last = log.first_index(), log.last_index()
    got = log.entries(first, last, last - first + 1, 1 << 60)
    assert len(got) == last - first + 1
    for index, entry in enumerate(got, first):
        assert log.term(index) == entry.term
        assert log.get(index) == entry


def test_fresh_log_holds_the_base_entry(open_log: LogFactory) -> None:
    log = open_log()
    assert (log.first_index(), log.last_index()) == (0, 0)
    assert log.term(0) == 0
    assert log.get(0) == Entry(0)
    assert log.term(1) is None and log.term(-1) is None and log.get(1) is None
    assert log.config() is None
    assert log.last_position() == LogPos(0, 0)
    assert log.can_append(1, Priority.HIGH) and log.can_append(1, Priority.LOW)


def test_append_and_read_back(open_log: LogFactory) -> None:
    log = open_log()
    entries = fill(log, 10, term=3)
    assert log.last_index() == 10
    assert log.entries(1, 10, 100, 1 << 30) == entries
    assert log.entries(0, 0, 1, 1 << 30) == [Entry(0)]
    assert [log.term(i) for i in range(11)] == [0] + [3] * 10
    assert log.get(4) == entries[3]
    # Commands come back as tuples equal to what was appended.
    fourth = log.get(4)
    assert fourth is not None and fourth.command == ("write", "t", 4, 40)
    assert log.last_position() == LogPos(10, 3)


def test_entries_caps(open_log: LogFactory) -> None:
    log = open_log()
    entries = fill(log, 20)
    assert log.entries(5, 100, 3, 1 << 30) == entries[4:7]
    assert log.entries(5, 8, 100, 1 << 30) == entries[4:8]
    assert log.entries(18, 100, 100, 1 << 30) == entries[17:]
    # A byte limit smaller than one entry still returns one entry.
    assert log.entries(5, 20, 100, 1) == entries[4:5]
    assert log.entries(5, 20, 100, 0) == entries[4:5]
    assert log.entries(21, 30, 100, 1 << 30) == []
    assert log.entries(-1, 3, 100, 1 << 30) == []
    assert log.entries(5, 4, 100, 1 << 30) == []
    assert log.entries(5, 10, 0, 1 << 30) == []


def test_byte_limit_follows_the_fold_rule(open_log: LogFactory) -> None:
    """An entry is taken while the bytes taken before it are below the limit."""
    log = open_log()
    fill(log, 30)
    no_ints: list[int] = []
    sizes = log.fold(1, 30, 1 << 60, lambda i, size, e, acc: [*acc, size], no_ints)
    assert len(sizes) == 30 and all(s > 0 for s in sizes)
    for limit in (1, sizes[0], sizes[0] + 1, sum(sizes[:5]), sum(sizes[:5]) + 1, 1 << 40):
        expected = 0
        taken = 0
        while expected < 30 and taken < limit:
            taken += sizes[expected]
            expected += 1
        assert len(log.entries(1, 30, 1000, limit)) == expected
        folded = log.fold(1, 30, limit, lambda i, size, e, acc: [*acc, i], no_ints)
        assert folded == list(range(1, expected + 1))


def test_append_never_overwrites(open_log: LogFactory) -> None:
    log = open_log()
    entries = fill(log, 5)
    with pytest.raises(LogPositionError):
        log.append(7, writes(7, 1))  # gap
    with pytest.raises(LogPositionError):
        log.append(5, writes(5, 1))  # overlap
    assert log.last_index() == 5
    assert log.entries(1, 5, 10, 1 << 30) == entries
    log.append(6, [])  # empty appends are no-ops anywhere sensible
    assert log.last_index() == 5


def test_config_is_indexed_with_and_without_label(open_log: LogFactory) -> None:
    log = open_log()
    first = make_config(A)
    second = make_config(A, B)
    third = make_config(A, B, C)
    fill(log, 3)
    log.append(4, [Entry(1, "k1", ("config", first))])
    assert log.config() == (4, first)
    fill(log, 2)
    log.append(7, [Entry(2, "k2", ("config", second), "label-7")])  # WARaft's labelled shape
    assert log.config() == (7, second)
    log.append(8, [Entry(2, "k3", ("config", third), None), *writes(9, 2, term=2)])
    assert log.config() == (8, third)
    log.truncate(8)
    assert log.config() == (7, second)
    log.truncate(5)
    assert log.config() == (4, first)
    log.truncate(4)
    assert log.config() is None


def test_truncate(open_log: LogFactory) -> None:
    log = open_log()
    entries = fill(log, 10)
    log.truncate(11)  # beyond the end: nothing to do
    assert log.last_index() == 10
    log.truncate(6)
    assert log.last_index() == 5
    assert log.term(6) is None and log.get(6) is None
    assert log.entries(1, 10, 100, 1 << 30) == entries[:5]
    with pytest.raises(LogPositionError):
        log.truncate(0)  # would empty the log
    replacement = writes(6, 3, term=2)
    log.append(6, replacement)
    log.sync()
    assert log.entries(1, 10, 100, 1 << 30) == entries[:5] + replacement
    assert log.term(8) == 2


def test_reset(open_log: LogFactory) -> None:
    log = open_log()
    fill(log, 10)
    log.append(11, [Entry(1, "c", ("config", make_config(A)))])
    log.reset(LogPos(100, 7))
    assert (log.first_index(), log.last_index()) == (100, 100)
    assert log.get(100) == Entry(7)
    assert log.term(100) == 7 and log.term(5) is None
    assert log.config() is None
    log.append(101, writes(101, 2, term=7))
    log.sync()
    assert log.last_position() == LogPos(102, 7)
    with pytest.raises(LogPositionError):
        log.append(1, writes(1, 1))
    # Reset backwards works too (a snapshot at a lower position).
    log.reset(LogPos(3, 2))
    assert (log.first_index(), log.last_index(), log.term(3)) == (3, 3, 2)


def test_open_at_resets_only_when_needed(open_log: LogFactory) -> None:
    log = open_log()
    fill(log, 5, term=2)
    assert log.open_at(LogPos(3, 2)) is False
    assert log.last_index() == 5
    assert log.open_at(LogPos(3, 1)) is True  # term mismatch
    assert (log.first_index(), log.last_index(), log.term(3)) == (3, 3, 1)
    assert log.open_at(LogPos(50, 4)) is True  # missing index
    assert (log.first_index(), log.term(50)) == (50, 4)


def test_trim_keeps_the_log_contiguous(open_log: LogFactory) -> None:
    log = open_log(max_records_per_file=10)
    entries = fill(log, 95)
    log.trim(42)
    first = log.first_index()
    assert 0 < first <= 42
    assert log.last_index() == 95
    assert log.entries(first, 95, 1000, 1 << 40) == entries[first - 1 :]
    check_contiguous(log)
    log.trim(10_000)  # never deletes the last entry
    assert log.last_index() == 95 and log.first_index() <= 95
    assert log.get(95) == entries[-1]
    log.append(96, writes(96, 3))
    log.sync()
    check_contiguous(log)


def test_fold_terms_and_status(open_log: LogFactory) -> None:
    log = open_log()
    fill(log, 3, term=1)
    fill(log, 2, term=4)
    no_pairs: list[tuple[int, int]] = []
    terms = log.fold_terms(0, 100, lambda i, t, acc: [*acc, (i, t)], no_pairs)
    assert terms == [(0, 0), (1, 1), (2, 1), (3, 1), (4, 4), (5, 4)]
    status = log.status()
    assert status["first_index"] == 0 and status["last_index"] == 5


def test_values_of_every_msgpack_shape_round_trip(open_log: LogFactory) -> None:
    log = open_log()
    commands: list[Any] = [
        "noop",
        ("write", "t", ("tuple", "key", 1), {"map": (1, 2), 3: b"bytes"}),
        ("delete", "t", 2**40),
        ("write", "t", "k", None),
        ("write", "t", "f", 1.5),
    ]
    entries = [Entry(1, ("$noop", i), c, None) for i, c in enumerate(commands)]
    log.append(1, entries)
    log.sync()
    assert log.entries(1, 5, 10, 1 << 30) == entries


def test_concurrent_trim_while_appending(open_log: LogFactory) -> None:
    """One writer appends and reads, another thread trims: nothing is lost or garbled."""
    log = open_log(max_records_per_file=64, cache_entries=32)
    total = 6000
    batch = 50
    stop = threading.Event()
    errors: list[BaseException] = []

    def trimmer() -> None:
        try:
            while not stop.wait(0.0005):  # pacing only: a spinning thread would hog the GIL
                log.trim(log.last_index() - 300)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=trimmer, daemon=True)
    thread.start()
    try:
        while log.last_index() < total:
            start = log.last_index() + 1
            log.append(start, writes(start, batch))
            log.sync()
            # Reads on the writer thread stay consistent while trims run.
            low = max(log.first_index(), start - 200, 1)
            got = log.entries(low, start + batch, 400, 1 << 40)
            assert got and all(e.key == e.command[2] for e in got)
            assert [e.key for e in got] == list(range(low, low + len(got)))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive() and not errors
    assert log.first_index() > 1000
    check_contiguous(log)


def test_retained_from_counts_bytes_back_from_an_index(open_log: LogFactory) -> None:
    """``retained_from(index, max_bytes)``: the lowest index whose entries up to ``index`` fit
    (the memory-holding providers add their per-entry overhead to the sizes ``fold`` gives)."""
    log = open_log(max_records_per_file=7)  # several segments for the disk log
    fill(log, 40)
    log.trim(3)
    first = log.first_index()
    overhead = ENTRY_MEMORY_OVERHEAD if isinstance(log, MemoryLog) else 0
    no_ints: list[int] = []
    sizes = log.fold(first, 40, 1 << 60, lambda i, size, e, acc: [*acc, size + overhead], no_ints)

    def expected(index: int, budget: int) -> int:
        total = 0
        for at in range(index, first - 1, -1):
            total += sizes[at - first]
            if total > budget:
                return min(index, at + 1)
        return first

    for index in (first, first + 1, 20, 39, 40, 99):
        for budget in (0, 1, sizes[-1], sum(sizes[-5:]), sum(sizes[-5:]) + 1, 1 << 40):
            assert log.retained_from(index, budget) == expected(min(index, 40), budget)
