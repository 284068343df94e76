"""Commits that arrive while a round is unanswered ride on the round its answer starts
(``raft_commit_await_round``, issue 12): under a stream of commits one round per round trip,
not one per command; no commit waits forever when answers are lost; still linearizable."""

from __future__ import annotations

from typing import Any

from waraft.sim import Simulation
from waraft.sim.network import NetConfig
from waraft.sim.simulation import fast_settings

from .helpers import assert_linearizable, check_one_leader, write


def _stream(await_round: bool, net: NetConfig, seed: int = 5) -> tuple[Simulation, int, int]:
    """40 writes submitted 5 ms apart to the leader of a cluster with ~20 ms round trips;
    returns the sim, the messages the leader sent for them, and the time from the last
    submission until every write was answered."""
    settings = fast_settings(raft_commit_await_round=await_round)
    sim = Simulation(nodes=3, seed=seed, settings=settings, net=net)
    sim.bootstrap()
    leader = check_one_leader(sim, sim.node_ids)
    sim.run_for(500)
    before = sim.network.sent[leader]
    calls: list[tuple[Any, int]] = []
    for i in range(40):
        calls.append((sim.submit(leader, write(i, key=f"k{i % 4}")), sim.now))
        sim.run_for(5)
    last = sim.now
    assert sim.run_until(lambda: all(c.done for c, _ in calls), 10_000), sim.describe()
    done = sim.now
    sim.run_for(100)
    return sim, sim.network.sent[leader] - before, done - last


def test_a_stream_of_commits_costs_one_round_per_round_trip() -> None:
    net = NetConfig(min_delay_ms=9, max_delay_ms=11)
    off_sim, off_rounds, off_latency = _stream(False, net)
    on_sim, on_rounds, on_latency = _stream(True, net)
    # ~40 rounds (a 2 ms batch each) without; ~200 ms of writes / ~20 ms round trips with.
    assert on_rounds * 2 <= off_rounds, (on_rounds, off_rounds)
    assert on_latency <= off_latency + 25, (on_latency, off_latency)  # one round trip more
    assert_linearizable(off_sim)
    assert_linearizable(on_sim)


def test_lost_answers_delay_commits_by_at_most_the_heartbeat_timer() -> None:
    for seed in range(6):
        net = NetConfig(min_delay_ms=1, max_delay_ms=12, loss=0.2)
        sim, _, _ = _stream(True, net, seed)  # every write answered (asserted in _stream)
        assert_linearizable(sim)


def _burst(size: int, seed: int = 7) -> tuple[Simulation, int]:
    """One write, then ``size`` more at the same instant while its round is on its way
    (~10 ms each way): the leader's messages before any answer can have come back."""
    net = NetConfig(min_delay_ms=9, max_delay_ms=11)
    sim = Simulation(nodes=3, seed=seed, settings=fast_settings(raft_commit_await_round=True),
                     net=net)  # fmt: skip
    sim.bootstrap()
    leader = check_one_leader(sim, sim.node_ids)
    sim.run_for(500)
    calls = [sim.submit(leader, write(0))]
    sim.run_for(3)  # the first round left
    before = sim.network.sent[leader]
    calls += [sim.submit(leader, write(i, key=f"k{i % 4}")) for i in range(1, size + 1)]
    sim.run_for(4)  # still well inside the round trip
    sent = sim.network.sent[leader] - before
    assert sim.run_until(lambda: all(c.done for c in calls), 10_000), sim.describe()
    assert_linearizable(sim)
    return sim, sent


def test_more_than_a_batch_of_pending_commits_does_not_wait_for_the_round() -> None:
    batch_max = fast_settings().raft_commit_batch_max
    _, small = _burst(batch_max // 2)
    _, large = _burst(batch_max + 5)
    assert small == 0, small  # a few commits ride on the next round
    assert large >= 2, large  # a batch worth a round goes to both followers at once
