"""The invariant checker on hand-made states: every property bites, and legal runs pass."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sim.helpers import check_one_leader, one, wait_applied, write
from waraft.core.types import NOOP_OMITTED, DurableState, Entry, LogPos, State
from waraft.sim import KVStateMachine, Simulation, StateMachine, fast_settings
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


def test_election_safety_across_a_restart_that_lost_the_term() -> None:
    # A leader whose state file was lost may come back at an old term: leading that term
    # again is a second leader of it (its new log need not match the one it led with).
    checker, _ = _checker("a")
    checker.on_restart("a", 0, 0)
    checker.after_step("a", State.LEADER, 3, 0)
    checker.on_down("a")
    checker.on_state_lost("a")
    checker.on_restart("a", 0, 0)
    with _violation("election_safety"):
        checker.after_step("a", State.LEADER, 3, 0)


def test_vote_once_across_incarnations() -> None:
    checker, _ = _checker("a")
    checker.on_vote("a", 1, 3, "b")
    checker.on_vote("a", 2, 3, "b")  # the same vote again, after a restart
    with _violation("vote_once"):
        checker.on_vote("a", 3, 3, "c")
    checker.on_vote("a", 3, 4, "a")  # its own candidacy in term 4 ...
    checker.on_vote("a", 4, 4, "b")  # ... forgotten in a later life: it can win nothing
    with _violation("vote_once"):
        checker.on_vote("a", 4, 4, "c")


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


def _figure_8(leader_has_own_term_entry_on_b: bool) -> tuple[InvariantChecker, int]:
    """Figure 8 (c) of the Raft paper by hand. a led term 2 and wrote A at index 2, then c
    led term 3 and wrote its own entry there; neither reached anyone. a leads again in term 4
    (its noop at 3) and has replicated A to b. Returns the checker and the index the leader
    may claim committed: 2 by counting replicas, or 3 when b also holds the noop of term 4."""
    checker, logs = _checker("a", "b", "c")
    checker.voters_of = lambda node: ["a", "b", "c"]
    _append(checker, logs, "a", _e(2, 1))
    _append(checker, logs, "c", _e(3, 2))
    _append(checker, logs, "a", _e(4, 3))
    _append(checker, logs, "b", _e(2, 1))
    if leader_has_own_term_entry_on_b:
        _append(checker, logs, "b", _e(4, 3))
    checker.after_step("a", State.LEADER, 4, 1)
    return checker, 3 if leader_has_own_term_entry_on_b else 2


def test_commit_protected_reports_a_commit_a_later_leader_could_overwrite() -> None:
    """Counting replicas commits A (term 2) on a and b, yet c (its log ends at term 3) would
    get its own and b's votes and overwrite it: reported at the commit, before any schedule
    has to elect c (leader completeness would only see it then)."""
    checker, index = _figure_8(leader_has_own_term_entry_on_b=False)
    with _violation("commit_protected"):
        checker.after_step("a", State.LEADER, 4, index)


def test_commit_protected_accepts_raft_s_commit_of_the_leader_s_own_term() -> None:
    # §5.4.2: once the noop of term 4 is on b too, c's log is behind b's: c cannot win
    checker, index = _figure_8(leader_has_own_term_entry_on_b=True)
    checker.after_step("a", State.LEADER, 4, index)
    assert checker.committed[2][0] == _e(2, 1)


def test_state_machine_safety() -> None:
    checker, _ = _checker("a", "b", "w")
    checker.on_apply("a", 2, _e(1, 1), digest=11)
    checker.on_apply("w", 2, _e(1, 1)._replace(command=NOOP_OMITTED), digest=None)
    with _violation("state_machine_safety"):
        checker.on_apply("b", 2, _e(1, 2), digest=11)
    with _violation("state_machine_safety"):
        checker.on_apply("b", 2, _e(1, 1), digest=12)  # same entry, different resulting state


class _Divergent(KVStateMachine):
    """A replica whose state diverges: it stores every written value with a ``!``."""

    def apply(self, command: Any, index: int, term: int) -> Any:
        if isinstance(command, tuple) and command[:1] == ("write",):
            command = (*command[:3], f"{command[3]}!")
        return super().apply(command, index, term)


def test_a_replica_whose_machine_diverges_is_caught() -> None:
    """Every replica applies the same entries, so a digest of the commands applied (what the
    checker used to compare) agrees; the states do not."""
    made: list[StateMachine] = []

    def machine() -> StateMachine:
        made.append(_Divergent() if not made else KVStateMachine())
        return made[-1]

    sim = Simulation(nodes=3, seed=1, machine=machine)
    sim.bootstrap()
    sim.await_leader()
    with pytest.raises(InvariantViolation) as caught:
        for i in range(6):
            one(sim, write(i, key=f"k{i % 3}"), 3)
    assert caught.value.invariant == "state_machine_safety"


def test_a_lossy_snapshot_restore_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lagging follower is restored from a snapshot that loses a key on load: its state is
    recomputed after the install (a digest copied from the sender hid it) and differs."""
    settings = fast_settings(
        raft_max_log_records_per_file=10, raft_max_log_records=20, raft_max_retained_entries=30
    )
    sim = Simulation(nodes=3, seed=5, settings=settings)
    sim.bootstrap()
    leader = check_one_leader(sim, sim.node_ids)
    lagging = next(n for n in sim.node_ids if n != leader)
    sim.crash(lagging)
    for i in range(60):
        one(sim, write(i, key=f"k{i % 7}"), 2)
    restore = KVStateMachine.restore

    def lossy(self: KVStateMachine, data: Any) -> None:
        restore(self, data)
        if self is sim.nodes[lagging].storage.machine:
            self.data.pop("k3", None)

    monkeypatch.setattr(KVStateMachine, "restore", lossy)
    sim.restart(lagging)
    with pytest.raises(InvariantViolation) as caught:
        one(sim, write("done"), 3)
        sim.run_for(2000)
    assert caught.value.invariant == "state_machine_safety"
    assert caught.value.message.startswith(f"{lagging}'s state after applying")
    assert sim.catchup.started >= 1


def test_replicas_are_compared_when_the_run_ends() -> None:
    """A state changed outside of the applies is found by ``check_replicas`` at the end."""
    sim = Simulation(nodes=3, seed=2)
    sim.bootstrap()
    sim.await_leader()
    index = one(sim, write("a"), 3)
    wait_applied(sim, index, sim.node_ids)
    sim.check_replicas()
    sim.nodes["n2"].storage.machine.data["x"] = "b"  # type: ignore[attr-defined]
    with pytest.raises(InvariantViolation, match="state_machine_safety"):
        sim.check_replicas()
