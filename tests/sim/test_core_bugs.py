"""Minimal reproductions of core bugs found by the simulator (see /work/brief/CORE_BUGS.md).

Each test states the correct behaviour. While a bug is open its test is marked
``xfail(strict=True)`` with the bug id; once fixed the marker goes and the test stays as a
regression test.

* CORE-1 (fixed in 274be3d): strong reads answered before leadership was confirmed.
* CORE-2 (fixed in b8aa97d): a re-enabled replica deadlocked a cluster with a witness.
* CORE-3 (fixed in e854491): one data replica plus witnesses could never commit.
* CORE-4 (fixed in f03f714): installing a snapshot forgot acknowledged entries past it.
"""

from __future__ import annotations

from tests.sim.helpers import check_one_leader, one, write
from waraft.core.types import State
from waraft.sim import Simulation, fast_settings

READ_K = ("read", "t", "k")


def _three(seed: int) -> Simulation:
    sim = Simulation(nodes=3, seed=seed)
    sim.bootstrap()
    return sim


def test_strong_read_on_a_deposed_leader_is_not_stale() -> None:
    sim = _three(1)
    old = check_one_leader(sim, sim.node_ids)
    one(sim, write("v1", key="k"), 3)
    sim.disconnect(old)
    others = [n for n in sim.node_ids if n != old]
    check_one_leader(sim, others)
    one(sim, write("v2", key="k"), 2)  # committed while the old leader is cut off
    read = sim.read(old, READ_K)  # the old leader still believes it leads
    sim.run_for(300)
    assert not read.done  # it cannot confirm its leadership: no answer yet
    sim.connect(old)
    assert sim.run_until(lambda: read.done, 5000)
    # v2 was committed before the read was invoked: "v1" would be a stale read
    assert read.result != ("ok", "v1"), read.result


def test_strong_read_waits_for_a_quorum_round_even_with_lagging_storage() -> None:
    sim = _three(2)
    old = check_one_leader(sim, sim.node_ids)
    one(sim, write("v1", key="k"), 3)
    sim.slow_storage[old] = (3000, 3000)  # the old leader's storage falls behind ...
    for i in range(3):
        sim.submit(old, write(f"w{i}", key="other"))
    sim.run_for(100)  # ... those commit (majority) but are not yet applied on the old leader
    sim.disconnect(old)
    others = [n for n in sim.node_ids if n != old]
    check_one_leader(sim, others)
    one(sim, write("v2", key="k"), 2)
    read = sim.read(old, READ_K)
    sim.run_for(5000)  # storage catches up to the read index on the cut-off old leader
    assert not read.done or read.result != ("ok", "v1"), read.result


def test_re_enabled_replica_recovers_in_a_cluster_with_a_witness() -> None:
    """Two data replicas and a witness: a caught-up follower is disabled, then enabled."""
    sim = Simulation(nodes=3, seed=4)
    sim.bootstrap(witnesses=["n3"])
    leader = check_one_leader(sim, sim.node_ids)
    data = next(n for n in ("n1", "n2") if n != leader)
    one(sim, write("v1", key="k"), 3)
    assert sim.run_until(lambda: sim.applied_index(data) == sim.applied_index(leader), 2000)
    assert sim.disable(data, "maintenance") == "ok"
    assert sim.enable(data) == "ok"  # stalled, holding data up to the leader's applied index
    call = sim.submit(leader, write("v2", key="k"))
    sim.run_for(20_000)
    assert sim.state(data) is not State.STALLED, sim.describe()
    assert call.done and call.result == "ok", call


def test_removing_the_last_other_data_replica_does_not_wedge_the_cluster() -> None:
    """Members n1, n2 and witness n3; the leader removes the other data replica."""
    sim = Simulation(nodes=3, seed=5)
    sim.bootstrap(witnesses=["n3"])
    leader = check_one_leader(sim, sim.node_ids)
    other = next(n for n in ("n1", "n2") if n != leader)
    one(sim, write("v1", key="k"), 3)
    result = sim.adjust_config(leader, ("remove", sim.identity(other)))
    if result[0] == "error":
        return  # refusing the change is a fine answer too
    call = sim.submit(leader, write("v2", key="k"))
    sim.run_for(10_000)
    assert call.done and call.result == "ok", (call, sim.describe())


def test_snapshot_install_keeps_acknowledged_entries_after_the_snapshot() -> None:
    """A follower whose log runs past the leader's applied position gets a snapshot there: it
    must not forget the entries after it (they were committed with its acknowledgement)."""
    settings = fast_settings(raft_snapshot_catchup_threshold=5, raft_election_pre_vote=True)
    sim = Simulation(nodes=3, seed=1, settings=settings, apply_batch=5)
    sim.bootstrap()
    leader = check_one_leader(sim, sim.node_ids)
    follower, other = (n for n in sim.node_ids if n != leader)
    one(sim, write("base"), 3)
    sim.disconnect(other)  # commits need the follower's acknowledgement
    sim.slow_storage[leader] = (100, 100)  # the leader applies 5 entries every 100 ms
    base = sim.nodes[follower].log.last_index()
    for i in range(12):
        sim.submit(leader, write(f"w{i}"))
    assert sim.run_until(lambda: sim.nodes[follower].log.last_index() >= base + 12, 1000)
    # the follower refuses further appends: its commit index stays behind, it reports a
    # failure, and the catch-up rule (end - applied > threshold) sends it a snapshot taken at
    # the leader's applied position, below the follower's end of log
    sim.nodes[follower].log.refuse_append = lambda count, priority: True
    sim.submit(leader, write("z"))
    assert sim.run_until(lambda: sim.catchup.completed > 0, 5000)
    sim.crash(leader)
    sim.nodes[follower].log.refuse_append = None
    sim.connect(other)
    sim.run_for(5000)  # follower and other elect a leader: it must hold w0..w11
    assert all(sim.committed_command(i) is not None for i in range(base + 1, base + 13))
