"""A replica whose durable state file (term, vote) is lost, log and storage kept
(``Simulation.lose_state``, the nemesis' ``lose_state``): it comes back ``disabled`` with
``durable_state_missing``, as the shell starts it, and once enabled recovers a term from the
voters (``waraft.core.term_recovery``). With the recovery bypassed it votes a second time in a
term it voted in, and the ``vote_once`` and ``election_safety`` invariants catch it."""

from __future__ import annotations

import pytest

from waraft.core import replica
from waraft.core.types import State
from waraft.sim import InvariantViolation, Simulation, fast_settings
from waraft.sim.sweep import run_seed

SEEDS = (1, 2, 3, 4)


def _vote_lost(seed: int, disabled: frozenset[str] = frozenset()) -> Simulation:
    """n2 votes for n1 in a new term, loses its state file, is enabled, and is asked by n3 for
    its vote in that same term while n1's answers cannot reach it. Only n1 campaigns on its own
    (n3 when told to: its own timeouts would move the terms past the one at stake)."""
    quiet = fast_settings(raft_election_weight=0)
    sim = Simulation(
        nodes=3, seed=seed, node_settings=dict.fromkeys(("n2", "n3"), quiet),
        disabled_invariants=disabled,
    )  # fmt: skip
    sim.bootstrap()
    sim.await_leader()
    sim.run_for(500)
    for src, dst in (("n1", "n3"), ("n3", "n1"), ("n3", "n2"), ("n2", "n3")):
        sim.block(src, dst)
    term = max(sim.term(n) for n in sim.node_ids)
    assert sim.trigger_election("n1", term + 1) == "ok"
    assert sim.run_until(lambda: sim.state("n1") is State.LEADER, 2000), sim.describe()
    won = sim.term("n1")  # (a first try may have failed: n2 still heard the old leader)
    sim.block("n1", "n2")  # n1's entries of the new term never reach n2
    sim.lose_state("n2")
    sim.restart("n2")
    assert sim.state("n2") is State.DISABLED
    assert sim.core("n2").disable_reason[0] == "durable_state_missing"
    assert sim.enable("n2") == "ok"
    sim.heal()
    for src, dst in (("n1", "n3"), ("n3", "n1"), ("n1", "n2")):
        sim.block(src, dst)
    # No leader reaches n2: bypassed, it goes on at term 0 with no vote once its stalled wait
    # (an election timeout, long at election weight 0) runs out.
    sim.run_for(12_000)
    assert sim.trigger_election("n3", won - 1) == "ok"  # campaigns in ``won``
    sim.run_for(2000)
    return sim


@pytest.mark.parametrize("seed", SEEDS)
def test_a_replica_that_lost_its_state_file_votes_once_per_term(seed: int) -> None:
    sim = _vote_lost(seed)
    # n1 won the term; n2 never heard n1's term, so it is still recovering and refused n3
    assert sim.invariants.leaders[max(sim.invariants.leaders)] == "n1"
    assert sim.state("n2") is State.STALLED and sim.core("n2").term_lost
    assert sim.state("n3") is not State.LEADER
    # once n1 can answer, n2 recovers past n1's term, counted as voted
    sim.heal()
    assert sim.run_until(lambda: not sim.core("n2").term_lost, 5000), sim.describe()
    assert sim.core("n2").current_term >= sim.term("n1")


@pytest.mark.parametrize("seed", SEEDS)
def test_bypassing_term_recovery_is_caught(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "term_lost", lambda *args: False)
    with pytest.raises(InvariantViolation) as caught:
        _vote_lost(seed)
    assert caught.value.invariant == "vote_once"
    assert "n2 granted its vote" in caught.value.message
    # without it, the older invariants see what the second vote did
    with pytest.raises(InvariantViolation) as caught:
        _vote_lost(seed, frozenset({"vote_once"}))
    assert caught.value.invariant == "log_matching"  # two noops at one (index, term)
    with pytest.raises(InvariantViolation) as caught:
        _vote_lost(seed, frozenset({"vote_once", "log_matching"}))
    assert caught.value.invariant == "election_safety"  # n1 and n3 lead one term


def test_a_lost_state_file_with_nothing_past_bootstrap_starts_a_new_replica() -> None:
    # As the shell: no entry of a term past bootstrap's, so nothing tells a lost file from a
    # replica that never stored one.
    sim = Simulation(nodes=3, seed=1)
    sim.crash("n1")
    sim.lose_state("n1")
    assert sim.nodes["n1"].durable is None
    sim.restart("n1")
    assert sim.state("n1") is State.STALLED and not sim.core("n1").term_lost


def test_the_sweep_loses_state_files_and_the_replicas_recover() -> None:
    # A sweep run ends by writing to every enabled data replica: one still recovering its
    # term (stalled) would fail it as a liveness violation.
    disabled = 0
    for seed in range(25):
        result = run_seed(seed)
        assert not result.failed, result.violation
        disabled += result.stats.get("lose_state_disabled", 0)
    assert disabled >= 3  # came back disabled, were enabled, recovered a term


BYPASS_SEED = 69298
"""A sweep seed (found by sweeping 69000.. with ``term_lost`` patched to False) in which n2
votes for n1 in term 2, loses its state file, is enabled and wins term 2 itself with n3."""


def test_a_sweep_seed_catches_bypassed_term_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_seed(BYPASS_SEED)
    assert not result.failed, result.violation
    assert result.stats.get("lose_state_disabled", 0) >= 1
    monkeypatch.setattr(replica, "term_lost", lambda *args: False)
    result = run_seed(BYPASS_SEED)
    # n2 appends its noop in the step it wins, before its held-back self-vote goes out
    assert result.invariant == "log_matching", result.violation


BOOTSTRAP_TERM_SEED = 75199
"""A sweep seed (from 73000..) in which n2, whose log held only bootstrap's entry, voted for n4
in term 3, lost its state file and, taken for a new replica, voted for n1 in term 3."""


def test_a_replica_holding_only_bootstraps_entry_is_not_taken_for_a_new_one() -> None:
    result = run_seed(BOOTSTRAP_TERM_SEED)
    assert not result.failed, result.violation  # was vote_once
    assert result.stats.get("lose_state_disabled", 0) >= 1
