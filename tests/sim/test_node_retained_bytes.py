"""The node-wide retained-bytes budget (``raft_node_max_retained_bytes``, issue 14) in the
simulator: with no per-partition byte bound, the node's share alone trims the log, a follower cut
off past what is retained is caught up by a snapshot, and the history stays linearizable."""

from __future__ import annotations

from tests.sim.helpers import assert_linearizable, settle_clients, write
from waraft.sim import Simulation, fast_settings
from waraft.sim.client import KVWorkload
from waraft.sim.log import approx_size

SHARE = 3000


def _run(share: int) -> tuple[int, int, bool]:
    """Cut a follower off, write a backlog, heal. Returns (the most any replica's log held in
    bytes of applied entries, snapshots sent to the follower, whether it caught up)."""
    settings = fast_settings(
        raft_max_retained_bytes=0,  # only the node-wide share bounds the log
        raft_node_max_retained_bytes=share,
        raft_commit_batch_interval_ms=0,
        raft_election_pre_vote=True,
    )
    sim = Simulation(nodes=3, seed=5, settings=settings)
    sim.bootstrap()
    leader = sim.await_leader()
    lagging = next(n for n in sim.node_ids if n != leader)
    snapshots = {"count": 0}
    request = sim.catchup.request

    def counting(src: str, dst: str, witness: bool) -> None:
        if dst == lagging:
            snapshots["count"] += 1
        request(src, dst, witness)

    sim.catchup.request = counting  # type: ignore[method-assign]
    sim.add_clients(2, KVWorkload(keys=3, write=0.8, delete=0.0))
    sim.block(leader, lagging)
    peak = 0
    for i in range(30):
        for j in range(10):
            sim.submit(leader, write("v" * 100 + f"{i}.{j}"))
        sim.run_for(100)
        for node in sim.node_ids:
            log = sim.nodes[node].log
            applied = min(sim.applied_index(node), log.last_index())
            held = log.entries(log.first_index(), applied, applied + 1, 1 << 62)
            peak = max(peak, sum(approx_size(e) for e in held))
    sim.heal()
    last = sim.nodes[leader].log.last_index()
    caught_up = sim.run_until(lambda: sim.nodes[lagging].log.last_index() >= last, 20_000)
    settle_clients(sim)
    assert_linearizable(sim)
    return peak, snapshots["count"], caught_up


def test_the_node_share_alone_bounds_the_log_and_a_cut_off_follower_gets_a_snapshot() -> None:
    peak, snapshots, caught_up = _run(SHARE)
    # An apply batch lands between rotations: the log may hold one batch beyond the share
    # (the batches here are up to ten ~130-byte writes).
    assert peak <= SHARE + 2000
    assert snapshots >= 1  # the entries it missed were trimmed: only a snapshot catches it up
    assert caught_up


def test_without_a_node_budget_nothing_is_trimmed_by_bytes() -> None:
    peak, snapshots, caught_up = _run(0)
    assert peak > 10 * SHARE
    assert snapshots == 0
    assert caught_up
