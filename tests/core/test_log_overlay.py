"""The in-step overlay: reads see the step's own appends, truncations, resets and trims."""

from __future__ import annotations

import msgpack
import pytest

from waraft.core.config import make_config
from waraft.core.log import LogOverlay, approx_command_size, approx_size
from waraft.core.types import CONFIG, Entry, LogPos

from .fakes import BASE, FakeLog, entries_of, ident


def overlay(terms: list[int], base: LogPos = BASE) -> tuple[FakeLog, LogOverlay]:
    log = FakeLog(base, entries_of(terms, first_index=base.index + 1))
    return log, LogOverlay(log)


def test_reads_pass_through_to_the_view() -> None:
    log, ov = overlay([1, 2, 2])
    assert (ov.first_index(), ov.last_index()) == (1, 4)
    assert [ov.term(i) for i in range(0, 6)] == [None, 1, 1, 2, 2, None]
    assert ov.get(3) == log.get(3)
    assert ov.entries(2, 4, 10, 1 << 20) == log.entries(2, 4, 10, 1 << 20)


def test_appends_are_visible_in_the_same_step_and_forgotten_after() -> None:
    log, ov = overlay([1])
    new = [Entry(3, "a", "x"), Entry(3, "b", "y")]
    assert ov.append(new) == 3
    assert ov.last_index() == 4
    assert ov.term(4) == 3 and ov.get(3) == new[0]
    assert ov.entries(2, 9, 10, 1 << 20) == [log.get(2), *new]
    assert ov.entries(3, 9, 1, 1 << 20) == [new[0]]
    # The shell applies the effect; the next step reads the view.
    log.items.extend(new)
    ov.begin_step()
    assert ov.last_index() == 4 and ov.get(4) == new[1]


def test_entries_byte_cap_returns_at_least_one() -> None:
    _, ov = overlay([])
    big = [Entry(1, "k", "x" * 100) for _ in range(5)]
    ov.append(big)
    one = approx_size(big[0])
    assert len(ov.entries(2, 6, 10, 1)) == 1
    assert len(ov.entries(2, 6, 10, one * 2)) == 2
    assert len(ov.entries(2, 6, 10, one * 2 + 1)) == 3
    assert len(ov.entries(4, 6, 10, 1 << 20)) == 3
    assert ov.entries(7, 9, 10, 1 << 20) == []
    assert ov.entries(2, 6, 0, 1 << 20) == []


def test_entries_cross_the_view_and_the_appends() -> None:
    log, ov = overlay([1, 1])
    ov.append([Entry(2, "a", "x")])
    got = ov.entries(2, 4, 10, 1 << 20)
    assert [e.term for e in got] == [1, 1, 2]
    assert ov.entries(1, 1, 10, 1 << 20) == [log.get(1)]


def test_truncate_hides_view_entries_and_later_appends() -> None:
    _, ov = overlay([1, 1, 1])
    ov.truncate(3, scan_floor=1)
    assert ov.last_index() == 2 and ov.term(3) is None
    ov.append([Entry(5, "n", "x")])
    assert ov.term(3) == 5 and ov.last_index() == 3
    ov.append([Entry(5, "m", "y")])
    ov.truncate(4, scan_floor=1)
    assert ov.last_index() == 3


def test_config_tracks_appends_and_truncation() -> None:
    c1 = make_config([ident(1)])
    c2 = make_config([ident(1), ident(2)])
    log = FakeLog(LogPos(1, 1), [Entry(1, "c", (CONFIG, c1)), Entry(1, "x", "x")])
    ov = LogOverlay(log)
    assert ov.config() == (2, c1)
    ov.append([Entry(2, "c2", (CONFIG, c2)), Entry(2, "y", "y")])
    assert ov.config() == (4, c2)
    ov.truncate(4, scan_floor=0)
    assert ov.config() == (2, c1)
    # nothing above the floor: fall back to "no newer log config"
    ov.append([Entry(2, "c2", (CONFIG, c2))])
    ov.truncate(4, scan_floor=2)
    assert ov.config() is None


def test_reset_replaces_everything() -> None:
    _, ov = overlay([1, 1, 1])
    ov.reset(LogPos(10, 4))
    assert (ov.first_index(), ov.last_index()) == (10, 10)
    assert ov.term(10) == 4 and ov.term(9) is None
    assert ov.get(10) == Entry(4)
    assert ov.config() is None
    ov.append([Entry(5, "a", "x")])
    assert ov.last_index() == 11 and ov.entries(10, 11, 5, 1 << 20) == [
        Entry(4),
        Entry(5, "a", "x"),
    ]


def test_trim_is_optimistic_and_sticky() -> None:
    log, ov = overlay([1] * 10)
    ov.trim(5)
    assert ov.first_index() == 5 and ov.term(4) is None and ov.term(5) == 1
    ov.begin_step()  # the provider has not trimmed yet
    assert log.first_index() == 1
    assert ov.first_index() == 5
    assert ov.entries(3, 6, 10, 1 << 20) == []


def test_config_older_than_first_is_hidden() -> None:
    c1 = make_config([ident(1)])
    log = FakeLog(
        LogPos(1, 1), [Entry(1, "c", (CONFIG, c1)), Entry(1, "x", "x"), Entry(1, "y", "y")]
    )
    ov = LogOverlay(log)
    assert ov.config() == (2, c1)
    ov.trim(3)
    ov.begin_step()
    assert ov.config() is None


def _reference_size(command: object) -> int:
    """The estimate's definition, written plainly (one call per item, no depth limit): 56 per
    container besides its items, whose lengths count for strings and bytes, 8 otherwise."""
    if isinstance(command, bytes | str | bytearray):
        return len(command)
    if isinstance(command, memoryview):
        return command.nbytes
    if isinstance(command, tuple | list):
        return 56 + sum(_reference_size(item) for item in command)
    if isinstance(command, dict):
        return 56 + sum(_reference_size(k) + _reference_size(v) for k, v in command.items())
    return 8


def _nested(depth: int, inner: object) -> object:
    for _ in range(depth):
        inner = [inner]
    return inner


@pytest.mark.parametrize(
    "command",
    [("write", "kv", "key", b"v" * 100), ("$batch", b"x" * 4000), ["a", 1, 2.5, None, True],
     ("write", "kv", ("a", 1), {"x": [1, 2, (3, bytearray(b"zz"))]}), {"k": "v", 1: (b"ab",)},
     [[[[[[[[[["deep", b"er"]]]]]]]]]], (("s", ("t",))), 7, "plain", b"",
     ("write", "kv", "k", msgpack.ExtType(5, b"e" * 5000)),
     ("write", "kv", "k", _nested(20, {"big": b"b" * 3000})),
     ("write", "kv", "k", [Entry(1, "k", b"n" * 50), memoryview(b"m" * 40)]),
     msgpack.ExtType(7, b"x" * 10)],
)  # fmt: skip
def test_command_size_estimate_counts_containers_strings_bytes_and_a_word_per_other_item(
    command: object,
) -> None:
    """Byte budgets admit by this estimate: a 9 MB value in an unknown msgpack extension
    type, or nested deeper than 8, used to count as 8 bytes (a client filled a leader's
    memory past every budget with them)."""
    assert approx_command_size(command) == _reference_size(command)


def test_a_command_of_empty_containers_is_not_estimated_as_free() -> None:
    """An empty tuple is one byte on the wire and 56 in memory: a client's command of a
    million nested empty tuples counted 0 bytes, so byte budgets admitted any number."""
    deep: object = ()
    for _ in range(20):
        deep = (deep,)
    command = ("write", "kv", "k", (*(deep for _ in range(1000)), {}, [], ()))
    assert approx_command_size(command) >= 56 * (1000 * 20 + 3)
