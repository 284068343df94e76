"""Bytes in flight per follower (issue 14): a leader whose follower stopped answering sends it
at most ``raft_max_bytes_in_flight`` of entries, keeps it informed with empty heartbeats, and
catches it up once it answers again — checked on the wire, not on the core's own accounting."""

from __future__ import annotations

from typing import Any

from tests.sim.helpers import write
from waraft.core.log import approx_size
from waraft.core.rpc import AppendEntries
from waraft.sim import Simulation, fast_settings

LIMIT = 2000


def _run(limit: int) -> tuple[int, int, bool]:
    """Block every message to one follower, write a backlog, count the entry bytes sent to it;
    then heal and report whether it caught up."""
    # Pre-vote keeps the cut-off follower from moving the term: a new term resets the
    # leader's accounting (by design), which would blur what one leader sent.
    settings = fast_settings(
        raft_max_bytes_in_flight=limit,
        raft_commit_batch_interval_ms=0,
        raft_election_pre_vote=True,
    )
    sim = Simulation(nodes=3, seed=3, settings=settings)
    sim.bootstrap()
    leader = sim.await_leader()
    lagging = next(n for n in sim.node_ids if n != leader)
    sent: dict[str, int] = {"bytes": 0, "empty": 0}
    original = sim.network.send

    def send(src: str, dst: str, message: Any, label: str = "msg") -> None:
        payload = getattr(message, "payload", None)
        if src == leader and dst == lagging and isinstance(payload, AppendEntries):
            if payload.entries:
                sent["bytes"] += sum(approx_size(e) for e in payload.entries)
            else:
                sent["empty"] += 1
        original(src, dst, message, label)

    sim.network.send = send  # type: ignore[method-assign]
    sim.block(leader, lagging)
    for i in range(200):
        sim.submit(leader, write("v" * 100 + str(i)))
    term = sim.term(leader)
    sim.run_for(3000)
    assert sim.nodes[leader].core.commit_index >= 200  # the other follower keeps commits going
    assert sim.leader() == leader and sim.term(leader) == term
    while_silent = dict(sent)  # what follows the heal is catch-up, not the bound
    sim.heal()
    last = sim.nodes[leader].log.last_index()
    caught_up = sim.run_until(lambda: sim.nodes[lagging].log.last_index() >= last, 10_000)
    return while_silent["bytes"], while_silent["empty"], caught_up


def test_a_silent_follower_gets_at_most_the_budget_then_heartbeats() -> None:
    sent, empty, caught_up = _run(LIMIT)
    assert sent <= LIMIT + 200  # one ~130-byte entry may cross the budget
    assert empty >= 10  # it still hears from its leader every round
    assert caught_up


def test_without_a_budget_the_whole_backlog_goes_to_a_silent_follower() -> None:
    sent, _, caught_up = _run(0)
    assert sent > 10 * LIMIT
    assert caught_up
