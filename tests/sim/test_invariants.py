"""The invariant checker on hand-made states: every property bites, and legal runs pass."""

from __future__ import annotations

import pytest

from waraft.core.types import NOOP_OMITTED, DurableState, Entry, LogPos, State
from waraft.sim.invariants import InvariantChecker, InvariantViolation, same_entry
from waraft.sim.log import MemoryLog


def _e(term: int, n: int) -> Entry:
    return Entry(term, ("k", n), ("write", "t", "x", n))


def _checker(*nodes: str) -> tuple[InvariantChecker, dict[str, MemoryLog]]:
    checker = InvariantChecker()
    logs = {n: MemoryLog(LogPos(1, 1)) for n in nodes}
    for n, log in logs.items():
        checker.register(n, log)
    return checker, logs


def _append(checker: InvariantChecker, logs: dict[str, MemoryLog], node: str, *entries: Entry):
    log = logs[node]
    first = log.last_index() + 1
    checker.on_append(node, first, entries, log.term(first - 1))
    log.append(first, entries)


def _violation(name: str) -> pytest.RaisesContext[InvariantViolation]:
    return pytest.raises(InvariantViolation, match=f"^{name}")


def test_same_entry_accepts_witness_stubs_only() -> None:
    real = _e(2, 1)
    assert same_entry(real, real)
    assert same_entry(real, real._replace(command=NOOP_OMITTED))
    assert not same_entry(real, real._replace(key="other", command=NOOP_OMITTED))
    assert not same_entry(real, _e(2, 2))
    assert same_entry(Entry(2), real)  # a base entry stands for whatever was there


def test_election_safety() -> None:
    checker, _ = _checker("a", "b")
    checker.after_step("a", State.LEADER, 3, 0)
    checker.after_step("a", State.LEADER, 3, 0)
    checker.after_step("b", State.FOLLOWER, 3, 0)
    checker.after_step("b", State.LEADER, 4, 0)
    with _violation("election_safety"):
        checker.after_step("a", State.LEADER, 4, 0)


def test_monotonic_term_in_memory_on_disk_and_across_restarts() -> None:
    checker, _ = _checker("a")
    checker.after_step("a", State.FOLLOWER, 5, 0)
    with _violation("monotonic_term"):
        checker.after_step("a", State.FOLLOWER, 4, 0)
    checker2, _ = _checker("a")
    checker2.on_persist("a", DurableState(3, "a"))
    with _violation("monotonic_term"):
        checker2.on_persist("a", DurableState(2, None))
    checker3, _ = _checker("a")
    checker3.after_step("a", State.CANDIDATE, 7, 0)
    with _violation("monotonic_term"):
        checker3.on_restart("a", 6, 0)  # the vote's term was not persisted


def test_leader_append_only() -> None:
    checker, _ = _checker("a")
    checker.on_truncate("a", 5, leader=False)
    with _violation("leader_append_only"):
        checker.on_truncate("a", 5, leader=True)
    with _violation("leader_append_only"):
        checker.on_reset("a", LogPos(9, 2), leader=True)


def test_log_matching_same_index_and_term_means_same_entry_and_prefix() -> None:
    checker, logs = _checker("a", "b", "c")
    _append(checker, logs, "a", _e(1, 1), _e(2, 2))
    _append(checker, logs, "b", _e(1, 1), _e(2, 2))  # identical: fine
    _append(checker, logs, "c", _e(1, 1))
    with _violation("log_matching"):
        _append(checker, logs, "c", _e(2, 99))  # (3, 2) with another command
    checker2, logs2 = _checker("a", "b")
    _append(checker2, logs2, "a", _e(1, 1), _e(3, 2))
    _append(checker2, logs2, "b", _e(2, 7))
    with _violation("log_matching"):
        _append(checker2, logs2, "b", _e(3, 2))  # same entry at (3, 3) after another prefix


def test_witness_stubs_pass_log_matching() -> None:
    checker, logs = _checker("a", "w")
    real = _e(1, 1)
    _append(checker, logs, "a", real)
    _append(checker, logs, "w", real._replace(command=NOOP_OMITTED))


def test_commit_safety_and_monotonic_commit() -> None:
    checker, logs = _checker("a", "b")
    _append(checker, logs, "a", _e(1, 1), _e(1, 2))
    checker.after_step("a", State.LEADER, 1, 3)
    with _violation("monotonic_commit"):
        checker.after_step("a", State.LEADER, 1, 2)
    checker2, logs2 = _checker("a", "b")
    _append(checker2, logs2, "a", _e(1, 1))
    checker2.after_step("a", State.FOLLOWER, 1, 2)
    logs2["b"].append(2, [_e(1, 5)])  # bypasses log matching on purpose
    with _violation("commit_safety"):
        checker2.after_step("b", State.FOLLOWER, 1, 2)
    checker3, _ = _checker("a")
    with _violation("commit_safety"):
        checker3.after_step("a", State.FOLLOWER, 1, 9)  # beyond the log


def test_a_snapshot_reset_must_not_lower_the_commit_index_unless_relaxed() -> None:
    for strict in (True, False):
        checker, logs = _checker("a")
        checker.strict_commit = strict
        _append(checker, logs, "a", _e(1, 1), _e(1, 2))
        checker.after_step("a", State.FOLLOWER, 1, 3)
        checker.on_reset("a", LogPos(2, 1), leader=False)
        logs["a"].reset(LogPos(2, 1))
        if strict:  # since CORE-4's fix an install keeps the commit index
            with _violation("monotonic_commit"):
                checker.after_step("a", State.FOLLOWER, 1, 2)
        else:
            checker.after_step("a", State.FOLLOWER, 1, 2)


def test_leader_completeness_at_election_and_at_commit() -> None:
    checker, logs = _checker("a", "b", "c")
    _append(checker, logs, "a", _e(1, 1))
    _append(checker, logs, "b", _e(1, 1))
    checker.after_step("a", State.LEADER, 1, 2)  # index 2 committed in term 1
    with _violation("leader_completeness"):
        checker.after_step("c", State.LEADER, 2, 1)  # c lacks it
    checker2, logs2 = _checker("a", "b")
    _append(checker2, logs2, "a", _e(1, 1))
    checker2.after_step("b", State.LEADER, 5, 1)  # b leads term 5 without index 2
    with _violation("leader_completeness"):
        checker2.after_step("a", State.FOLLOWER, 1, 2)  # then index 2 is seen committed in 1


def test_state_machine_safety() -> None:
    checker, _ = _checker("a", "b", "w")
    checker.on_apply("a", 2, _e(1, 1), digest=11)
    checker.on_apply("w", 2, _e(1, 1)._replace(command=NOOP_OMITTED), digest=None)
    with _violation("state_machine_safety"):
        checker.on_apply("b", 2, _e(1, 2), digest=11)
    with _violation("state_machine_safety"):
        checker.on_apply("b", 2, _e(1, 1), digest=12)  # same entry, different resulting state
