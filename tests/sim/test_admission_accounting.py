"""The sweep's admission accounting (``waraft.sim.sweep._accounting``): a slot still held
once the run converged is a warning only when nothing left would release it."""

from __future__ import annotations

from tests.sim.helpers import check_one_leader, one, write
from waraft.core.types import Priority
from waraft.sim import Simulation, fast_settings
from waraft.sim.simulation import Call
from waraft.sim.sweep import SeedResult, _accounting


def _deposed_leader_catching_up_by_snapshot() -> tuple[Simulation, str]:
    """A leader cut off with two appended commits, deposed, then caught up by a snapshot of
    the new leader's trimmed log; returned at the step storage opened that snapshot, before
    the core handled it (as sweep seeds 104758, 100975 and 7700950 end)."""
    settings = fast_settings(
        raft_max_log_records_per_file=10, raft_max_log_records=20, raft_max_retained_entries=30
    )
    sim = Simulation(nodes=3, seed=5, settings=settings)
    sim.bootstrap()
    deposed = check_one_leader(sim, sim.node_ids)
    sim.isolate(deposed)
    calls = [sim.submit(deposed, write(f"lost{i}")) for i in range(2)]
    sim.run_for(10)
    node = sim.nodes[deposed]
    assert len(node.core.queued) == 2  # appended, waiting for a quorum it cannot reach
    others = [n for n in sim.node_ids if n != deposed]
    check_one_leader(sim, others)
    for i in range(60):
        one(sim, write(i, key=f"k{i % 7}"), 2)
    sim.heal()
    last = node.log.last_index()
    assert sim.run_until(lambda: node.storage.position.index > last, 10_000), sim.describe()
    assert len(node.admitted) == 2 and not any(call.done for call in calls)
    assert node.core.last_applied < node.storage.position.index  # the core not told yet
    return sim, deposed


def test_a_slot_released_by_work_still_scheduled_is_not_reported() -> None:
    sim, deposed = _deposed_leader_catching_up_by_snapshot()
    result = SeedResult(0)
    _accounting(sim, result)
    assert result.warnings == []
    assert not sim.nodes[deposed].admitted


def test_a_slot_nothing_will_release_is_reported_as_untracked() -> None:
    sim = Simulation(nodes=3, seed=5)
    sim.bootstrap()
    leader = check_one_leader(sim, sim.node_ids)
    node = sim.nodes[leader]
    leaked = Call("leaked")
    node.admitted[leaked] = Priority.HIGH  # admitted, but never handed to the core
    node.pending[Priority.HIGH] += 1
    result = SeedResult(0)
    _accounting(sim, result)
    assert len(result.warnings) == 1
    assert f"{leader}: 1 admission slots still held" in result.warnings[0]
    assert "untracked" in result.warnings[0]
