"""``MemoryLog`` honours the ``LogView`` contract and the log effects' contract."""

from __future__ import annotations

import pytest

from waraft.core.types import Config, Entry, Identity, LogPos, Priority
from waraft.sim.log import LogContractError, MemoryLog

CONFIG_A = Config(membership=(Identity("s", "a"),), participants=(Identity("s", "a"),))
CONFIG_B = Config(membership=(Identity("s", "b"),), participants=(Identity("s", "b"),))


def _entries(term: int, count: int, start: int = 0) -> list[Entry]:
    return [Entry(term, ("k", start + i), ("write", "t", "x", start + i)) for i in range(count)]


def test_fresh_log_holds_the_base_entry() -> None:
    log = MemoryLog()
    assert (log.first_index(), log.last_index()) == (0, 0)
    assert log.term(0) == 0 and log.term(1) is None and log.term(-1) is None
    assert log.get(0) == Entry(0)
    assert log.config() is None
    assert log.can_append(10, Priority.HIGH)


def test_append_must_be_contiguous_and_never_overwrite() -> None:
    log = MemoryLog()
    log.append(1, _entries(1, 3))
    assert log.last_index() == 3 and log.term(3) == 1
    with pytest.raises(LogContractError):
        log.append(3, _entries(2, 1))
    with pytest.raises(LogContractError):
        log.append(5, _entries(2, 1))
    with pytest.raises(LogContractError):
        log.append(4, [Entry(2)])  # only a reset may create a term-only entry


def test_entries_respect_range_count_and_bytes() -> None:
    log = MemoryLog()
    log.append(1, _entries(1, 10))
    assert [e.key[1] for e in log.entries(2, 5, 100, 10**9)] == [1, 2, 3, 4]
    assert len(log.entries(1, 10, 3, 10**9)) == 3
    assert len(log.entries(1, 10, 100, 1)) == 1  # at least one entry when in range
    size = len(log.entries(1, 10, 100, 10**9))
    assert size == 10
    assert log.entries(11, 20, 5, 100) == []
    assert log.entries(-1, 3, 5, 100) == []
    one = log._sizes[1]
    # stops once the cumulative size reaches the limit: the entry that reaches it is included
    assert len(log.entries(1, 10, 100, one * 2)) == 2
    assert len(log.entries(1, 10, 100, one * 2 + 1)) == 3


def test_config_is_the_newest_config_entry_in_the_log() -> None:
    log = MemoryLog()
    log.append(1, [Entry(1, "c1", ("config", CONFIG_A))])
    log.append(2, _entries(1, 2))
    log.append(4, [Entry(1, "c2", ("config", CONFIG_B), "label")])
    assert log.config() == (4, CONFIG_B)
    log.truncate(4)
    assert log.config() == (1, CONFIG_A)
    log.trim(2)
    assert log.config() is None  # older than the first index: hidden
    log.reset(LogPos(10, 3))
    assert log.config() is None


def test_truncate_rules() -> None:
    log = MemoryLog(LogPos(5, 2))
    log.append(6, _entries(2, 4))
    with pytest.raises(LogContractError):
        log.truncate(5)  # would delete the first index
    log.truncate(8)
    assert log.last_index() == 7
    log.truncate(20)  # past the end: nothing to do
    assert log.last_index() == 7


def test_reset_and_open() -> None:
    log = MemoryLog()
    log.append(1, _entries(1, 5))
    with pytest.raises(LogContractError):
        log.reset(LogPos(0, 3))
    log.reset(LogPos(10, 4))
    assert (log.first_index(), log.last_index(), log.term(10)) == (10, 10, 4)
    assert log.get(10) == Entry(4)
    log.append(11, _entries(4, 2))
    assert log.open(LogPos(11, 4)) is False and log.last_index() == 12
    assert log.open(LogPos(11, 5)) is True  # the term differs: reset there
    assert (log.first_index(), log.last_index(), log.term(11)) == (11, 11, 5)
    assert log.open(LogPos(30, 6)) is True and log.last_index() == 30


def test_trim_keeps_the_log_contiguous_and_non_empty() -> None:
    log = MemoryLog()
    log.append(1, _entries(1, 5))
    assert log.trim(3) == 3 and log.first_index() == 3 and log.get(3) is not None
    assert log.get(3).command is not None  # type: ignore[union-attr]
    assert log.trim(99) == 5 and log.last_index() == 5  # clamped: never empty
    log2 = MemoryLog()
    log2.append(1, _entries(1, 5))
    log2.trim(2, strip=True)
    assert log2.get(2) == Entry(1)  # the op stripped, the term kept


def test_refuse_append_hook() -> None:
    log = MemoryLog()
    log.refuse_append = lambda count, priority: priority is Priority.LOW
    assert log.can_append(1, Priority.HIGH) and not log.can_append(1, Priority.LOW)
