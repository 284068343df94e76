"""Mutation checks: break the core on purpose at runtime and show that the simulator's
invariants or its linearizability checker catch it — and that the same scenario passes on the
real core (so the catch is the mutation's doing, not the scenario's)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sim.helpers import check_one_leader, one, write
from waraft.core import config, reads, replication, sessions
from waraft.core.types import State
from waraft.sim import InvariantViolation, Simulation, fast_settings


def _commit_by_counting_any_term(core: Any) -> None:
    """The classic bug: commit whatever a majority holds, of any term (no §5.4.2 check)."""
    values = dict(core.match_indices)
    values[core.node] = core.log.last_index()
    quorum = config.compute_member_quorum(values, core.current_config())
    if quorum is not None and quorum > core.commit_index:
        core.commit_index = quorum


def _figure8(seed: int, disabled: frozenset[str] = frozenset()) -> None:
    """Figure 8 of the Raft paper, scripted. Only n1 and n5 may campaign (election weight 0
    elsewhere); one-way cuts decide who receives what; one entry per AppendEntries so that an
    old entry and the new leader's noop travel separately."""
    # One entry per message and no response-driven top-ups (raft_max_inflight_appends=0), so
    # the script controls exactly which entry reaches which node, as in the paper's figure.
    settings = fast_settings(
        raft_max_log_entries_per_heartbeat=1,
        raft_commit_batch_interval_ms=0,
        raft_max_inflight_appends=0,
    )
    quiet = settings.with_overrides(raft_election_weight=0)
    sim = Simulation(
        nodes=5,
        seed=seed,
        settings=settings,
        node_settings=dict.fromkeys(("n2", "n3", "n4"), quiet),
        disabled_invariants=disabled,
    )
    sim.bootstrap()
    leader = sim.await_leader()
    if leader != "n1":
        assert sim.handover(leader, "n1")[0] == "ok"
        assert sim.run_until(lambda: sim.leader() == "n1", 3000)
    one(sim, write("B"), 5)
    # (a) n1 appends A at index i in its term; only n2 receives it
    for peer in ("n3", "n4", "n5"):
        sim.block("n1", peer)
    sim.submit("n1", write("A"))
    assert sim.run_until(
        lambda: any(e.command == write("A") for _, e in sim.nodes["n2"].log.all_entries()), 1000
    )
    i = next(ix for ix, e in sim.nodes["n1"].log.all_entries() if e.command == write("A"))
    term_a = sim.term("n1")
    # (b) n1 crashes; n5 wins with n3 and n4 and writes its own entry at i, then crashes
    sim.crash("n1")
    sim.heal()
    sim.isolate("n2")
    assert sim.run_until(lambda: sim.state("n5") is State.LEADER, 10_000), sim.describe()
    for peer in sim.node_ids:
        sim.block("n5", peer)
    entry = sim.nodes["n5"].log.get(i)
    assert entry is not None and entry.term > term_a
    sim.run_for(10)
    sim.crash("n5")
    # (c) n1 returns, wins with n2 and n3 and replicates A to n3 (n4 stays without it)
    sim.heal()
    sim.block("n1", "n4")
    sim.restart("n1")
    assert sim.run_until(lambda: sim.state("n1") is State.LEADER, 10_000), sim.describe()
    assert sim.run_until(lambda: sim.core("n1").commit_index >= i, 5000), sim.describe()
    # (d) n1 crashes as soon as it counts index i committed; n5 returns
    sim.crash("n1")
    sim.restart("n5")
    sim.run_for(5000)


@pytest.mark.parametrize("seed", [1, 2])
def test_commit_rule_mutation_is_caught_at_the_commit_and_at_the_overwrite(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _figure8(seed)  # the real rule: A commits only with n1's own-term noop; n5 cannot win
    monkeypatch.setattr(replication, "advance_commit_index", _commit_by_counting_any_term)
    # commit_protected reports the commit of A itself, while n5 could still be elected
    with pytest.raises(InvariantViolation) as caught:
        _figure8(seed)
    assert caught.value.invariant == "commit_protected"
    # without it, leader completeness reports n5 once it won without A
    with pytest.raises(InvariantViolation) as caught:
        _figure8(seed, frozenset({"commit_protected"}))
    assert caught.value.invariant == "leader_completeness"
    assert caught.value.seed == seed and caught.value.trace


def _double_vote(disabled: frozenset[str], drop: bool) -> Simulation:
    """n2 votes for n1, restarts having persisted nothing, then votes for n3 in the same term.
    Only n1 and n3 may campaign."""
    quiet = fast_settings(raft_election_weight=0)
    sim = Simulation(nodes=3, seed=7, node_settings={"n2": quiet}, disabled_invariants=disabled)
    sim.bootstrap()
    sim.await_leader()
    sim.run_for(500)
    for node in sim.nodes.values():
        node.drop_persistence = drop
    sim.block("n1", "n3")
    sim.block("n3", "n1")
    sim.block("n3", "n2")
    sim.block("n2", "n3")
    term = max(sim.term(n) for n in sim.node_ids)
    assert sim.trigger_election("n1", term + 1) == "ok"
    assert sim.run_until(lambda: sim.state("n1") is State.LEADER, 2000), sim.describe()
    sim.block("n1", "n2")  # n1's entries never reach n2
    sim.crash("n2")
    sim.restart("n2")
    sim.heal()
    sim.block("n1", "n3")
    sim.block("n3", "n1")
    sim.block("n1", "n2")
    sim.run_for(2000)  # n2 no longer hears a leader: stickiness lets it vote again
    sim.trigger_election("n3", term + 1)
    sim.run_for(2000)
    return sim


def test_skipping_vote_persistence_is_caught() -> None:
    sim = _double_vote(frozenset(), drop=False)  # persisted: n2 refuses n3 in n1's term
    n1_terms = [t for t, n in sim.invariants.leaders.items() if n == "n1"]
    assert n1_terms and sim.invariants.leaders.get(max(n1_terms)) == "n1"
    with pytest.raises(InvariantViolation) as caught:
        _double_vote(frozenset(), drop=True)
    assert caught.value.invariant == "monotonic_term"  # n2 came back in an older term
    with pytest.raises(InvariantViolation) as caught:
        _double_vote(frozenset({"monotonic_term"}), drop=True)
    assert caught.value.invariant == "vote_once"  # n2 granted n1's term to n3 too
    with pytest.raises(InvariantViolation) as caught:
        _double_vote(frozenset({"monotonic_term", "vote_once"}), drop=True)
    assert caught.value.invariant == "log_matching"  # two noops at one (index, term)
    with pytest.raises(InvariantViolation) as caught:
        _double_vote(frozenset({"monotonic_term", "vote_once", "log_matching"}), drop=True)
    assert caught.value.invariant == "election_safety"  # two leaders of one term


def _stale_read_scenario() -> Simulation:
    sim = Simulation(nodes=3, seed=3)
    sim.bootstrap()
    old = check_one_leader(sim, sim.node_ids)
    call = sim.submit(old, write("v1", key="k"), record=True)
    sim.run_until(lambda: call.done, 2000)
    sim.disconnect(old)
    others = [n for n in sim.node_ids if n != old]
    new = check_one_leader(sim, others)
    call = sim.submit(new, write("v2", key="k"), record=True)
    sim.run_until(lambda: call.done, 2000)
    sim.run_for(5)  # the read starts strictly after v2 completed
    read = sim.read(old, ("read", "t", "k"), record=True)
    sim.run_for(1000)
    sim.connect(old)
    sim.run_until(lambda: read.done, 5000)
    return sim


def test_unconfirmed_reads_mutation_is_caught_by_the_linearizability_checker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _stale_read_scenario().check_linearizable().ok is True
    # the mutation: every leader believes its lease is valid, so it reads locally at once
    monkeypatch.setattr(reads, "lease_miss", lambda core, read_index: None)
    result = _stale_read_scenario().check_linearizable()
    assert result.ok is False
    assert result.failures[0].key == "k"


def test_acknowledged_commits_are_checked_against_the_committed_log() -> None:
    sim = Simulation(nodes=3, seed=8)
    sim.bootstrap()
    leader = check_one_leader(sim, sim.node_ids)
    call = sim.submit(leader, write("real"), record=True)
    assert sim.run_until(lambda: call.done, 2000) and call.result == "ok"
    assert sim.check_acknowledged() == []
    real = sim.history.ops[-1]
    lost = sim.history.invoke(9, "commit", write("lost"), sim.now, key=("c", 9, 0, 1))
    sim.history.ok(lost, "ok", sim.now)  # a client told "ok" for an entry that never committed
    ghost = sim.history.invoke(9, "commit", write("ghost"), sim.now, key=real.key)
    sim.history.fail(ghost, ("error", "not_leader"), sim.now)  # "failed", yet it is there
    problems = sim.check_acknowledged()
    assert len(problems) == 2
    assert "acknowledged but never committed" in problems[0]
    assert "failed but committed" in problems[1]


def _submit(sim: Simulation, command: Any) -> Any:
    leader = check_one_leader(sim, sim.node_ids)
    call = sim.submit(leader, command)
    assert sim.run_until(lambda: call.done, 3000), sim.describe()
    return call.result


def _retry_after_a_newer_write(sim: Simulation) -> None:
    """A session writes x=1, a plain write sets x=2, the session's write is retried (answered
    from the session table, x stays 2)."""
    session = _submit(sim, sessions.register_command())[1]
    tagged = sessions.call_command(session, 1, 1, write(1))
    assert _submit(sim, tagged) == "ok"
    assert _submit(sim, write(2)) == "ok"
    assert _submit(sim, tagged) == "ok"  # the retry
    one(sim, write(0, key="other"), 3)  # every replica has applied the retry


@pytest.mark.parametrize("mutated", [False, True])
def test_a_replica_that_applies_a_retry_again_is_caught_by_state_machine_safety(
    monkeypatch: pytest.MonkeyPatch, mutated: bool
) -> None:
    """n1's session table forgets a retry was applied and applies it again: its x is 1,
    everybody else's 2. The same entries are applied everywhere, so only a digest of the
    state (not of the commands applied) tells the replicas apart."""
    sim = Simulation(nodes=3, seed=3)
    if mutated:
        begin = sessions.SessionTable.begin

        def forgetful(self: Any, command: Any, index: int, nested: bool = False) -> Any:
            decision = begin(self, command, index, nested)
            n1 = self is sim.nodes["n1"].storage.sessions
            if n1 and isinstance(decision, sessions.Done) and sessions.is_call(command):
                return sessions.Apply(command[5], None, None)
            return decision

        monkeypatch.setattr(sessions.SessionTable, "begin", forgetful)
    sim.bootstrap()
    sim.await_leader()
    if not mutated:
        _retry_after_a_newer_write(sim)
        sim.check_replicas()
        return
    with pytest.raises(InvariantViolation) as caught:
        _retry_after_a_newer_write(sim)
    assert caught.value.invariant == "state_machine_safety"
