"""Every membership action end to end (digest §2.15), with the errors WARaft gives."""

from __future__ import annotations

import pytest

from tests.sim.helpers import check_one_leader, index_of, one, wait_applied, write
from waraft.core.events import AdjustConfig, HandoverRequest, Promote
from waraft.core.types import NOOP_OMITTED, Config, State
from waraft.sim import Simulation, fast_settings


def _cluster(nodes: int, members: list[str], seed: int, **kw: object) -> tuple[Simulation, str]:
    sim = Simulation(nodes=nodes, seed=seed, **kw)  # type: ignore[arg-type]
    sim.bootstrap(members=members)
    leader = check_one_leader(sim, members)
    one(sim, write("seed"), len(members))
    return sim, leader


def _config(sim: Simulation, node: str) -> Config:
    return sim.core(node).current_config()  # type: ignore[no-any-return]


def _ids(sim: Simulation, config_part: tuple[object, ...]) -> list[str]:
    return sorted(p.node for p in config_part)  # type: ignore[attr-defined]


def _adjust(sim: Simulation, node: str, verb: str, peer: str) -> object:
    return sim.adjust_config(node, (verb, sim.identity(peer)))


def _wait_config_applied(sim: Simulation, leader: str) -> None:
    index = sim.core(leader).config_index()
    assert sim.run_until(lambda: sim.core(leader).last_applied >= index, 5000)


def test_add_a_voting_member() -> None:
    sim, leader = _cluster(4, ["n1", "n2", "n3"], 1)
    result = _adjust(sim, leader, "add", "n4")
    assert result[0] == "ok"  # type: ignore[index]
    assert _ids(sim, _config(sim, leader).membership) == ["n1", "n2", "n3", "n4"]
    assert sim.run_until(lambda: sim.state("n4") is State.FOLLOWER, 5000)
    _wait_config_applied(sim, leader)
    assert _adjust(sim, leader, "add", "n4") == ("error", "already_member")
    # four voters: two of them are no longer a majority
    others = [n for n in sim.node_ids if n != leader]
    sim.crash(others[0])
    sim.crash(others[1])
    call = sim.submit(leader, write("no quorum"))
    sim.run_for(2000)
    assert not call.done and index_of(sim, write("no quorum")) is None


def test_add_participant_replicates_without_voting_then_promote_if_ready() -> None:
    settings = fast_settings(raft_max_handover_log_entries=5, raft_handover_max_unapplied_entries=5)
    sim, leader = _cluster(4, ["n1", "n2", "n3"], 2, settings=settings)
    assert _adjust(sim, leader, "add_participant", "n4")[0] == "ok"  # type: ignore[index]
    config = _config(sim, leader)
    assert "n4" in _ids(sim, config.participants) and "n4" not in _ids(sim, config.membership)
    index = one(sim, write("to learner"), 4)
    wait_applied(sim, index, ["n4"])
    _wait_config_applied(sim, leader)
    assert _adjust(sim, leader, "add_participant", "n4") == ("error", "already_participating")
    # a learner does not vote: with two voters down nothing commits, learner or not
    voters = [n for n in ("n1", "n2", "n3") if n != leader]
    sim.crash(voters[0])
    sim.crash(voters[1])
    call = sim.submit(leader, write("learner is no quorum"))
    sim.run_for(2000)
    assert not call.done
    sim.restart(voters[0])
    sim.restart(voters[1])
    assert sim.run_until(lambda: call.done, 10_000)
    leader = check_one_leader(sim, ["n1", "n2", "n3"])
    _wait_config_applied(sim, leader)
    # promotion waits until the learner is caught up
    sim.disconnect("n4")
    for i in range(10):
        one(sim, write(i), 3)
    assert _adjust(sim, leader, "promote_participant_if_ready", "n4") == ("error", "not_ready")
    sim.connect("n4")
    assert sim.run_until(
        lambda: sim.nodes["n4"].log.last_index() >= sim.nodes[leader].log.last_index(), 5000
    )
    sim.run_for(500)
    result = _adjust(sim, leader, "promote_participant_if_ready", "n4")
    assert result[0] == "ok", result  # type: ignore[index]
    assert "n4" in _ids(sim, _config(sim, leader).membership)
    _wait_config_applied(sim, leader)
    stranger_result = sim.adjust_config(leader, ("promote_participant_if_ready", ("x", "nx")))
    assert stranger_result == ("error", "not_a_participant")


def test_add_witness_and_remove_witness() -> None:
    sim, leader = _cluster(4, ["n1", "n2", "n3"], 3)
    assert _adjust(sim, leader, "add_witness", "n4")[0] == "ok"  # type: ignore[index]
    config = _config(sim, leader)
    assert "n4" in _ids(sim, config.membership) and "n4" in _ids(sim, config.witness)
    assert sim.run_until(lambda: sim.state("n4") is State.WITNESS, 5000), sim.describe()
    index = one(sim, write("w"), 4)
    wait_applied(sim, index, ["n4"])
    assert sim.nodes["n4"].storage.machine.read(("read", "t", "x")) == "not_found"
    _wait_config_applied(sim, leader)
    assert _adjust(sim, leader, "add_witness", "n4") == ("error", "already_witness")
    data = next(n for n in ("n1", "n2", "n3") if n != leader)
    assert _adjust(sim, leader, "remove_witness", data) == ("error", "not_a_witness")
    assert _adjust(sim, leader, "remove_witness", "n4")[0] == "ok"  # type: ignore[index]
    config = _config(sim, leader)
    assert "n4" not in _ids(sim, config.participants) and not config.witness


def test_add_witness_participant_gets_stubs_and_no_vote() -> None:
    sim, leader = _cluster(4, ["n1", "n2", "n3"], 4)
    assert _adjust(sim, leader, "add_witness_participant", "n4")[0] == "ok"  # type: ignore[index]
    config = _config(sim, leader)
    assert "n4" in _ids(sim, config.witness) and "n4" not in _ids(sim, config.membership)
    assert sim.run_until(lambda: sim.state("n4") is State.WITNESS, 5000)  # via a snapshot
    index = one(sim, write("stubbed"), 4)
    wait_applied(sim, index, ["n4"])
    entry = sim.nodes["n4"].log.get(index)
    assert entry is not None and entry.command == "noop_omitted"


def test_remove_a_member_and_errors() -> None:
    sim, leader = _cluster(3, ["n1", "n2", "n3"], 5)
    assert _adjust(sim, leader, "remove", leader) == ("error", "cannot_remove_self")
    assert sim.adjust_config(leader, ("remove", ("x", "nx"))) == ("error", "not_a_participant")
    victim = next(n for n in sim.node_ids if n != leader)
    assert _adjust(sim, leader, "remove", victim)[0] == "ok"  # type: ignore[index]
    assert victim not in _ids(sim, _config(sim, leader).participants)
    _wait_config_applied(sim, leader)
    last = sim.nodes[victim].log.last_index()
    others = [n for n in sim.node_ids if n != victim]
    for i in range(5):
        one(sim, write(i), 2)
    assert sim.nodes[victim].log.last_index() <= last + 1  # it gets nothing any more
    # two voters left: both needed
    sim.crash(next(n for n in others if n != leader))
    call = sim.submit(leader, write("needs both"))
    sim.run_for(1500)
    assert not call.done


def test_remove_membership_demotes_to_learner() -> None:
    sim, leader = _cluster(3, ["n1", "n2", "n3"], 6)
    victim = next(n for n in sim.node_ids if n != leader)
    assert _adjust(sim, leader, "remove_membership", victim)[0] == "ok"  # type: ignore[index]
    config = _config(sim, leader)
    assert victim in _ids(sim, config.participants) and victim not in _ids(sim, config.membership)
    index = one(sim, write("learner still learns"), 3)
    wait_applied(sim, index, [victim])
    _wait_config_applied(sim, leader)
    assert _adjust(sim, leader, "remove_membership", victim) == ("error", "not_a_member")
    # the learner never campaigns, even without a leader
    sim.crash(leader)
    sim.run_for(5000)
    assert sim.term(victim) == sim.nodes[victim].core.current_term
    assert sim.state(victim) is State.FOLLOWER


def test_demote_to_witness() -> None:
    sim, leader = _cluster(3, ["n1", "n2", "n3"], 7)
    assert _adjust(sim, leader, "demote_to_witness", leader) == ("error", "cannot_demote_self")
    victim = next(n for n in sim.node_ids if n != leader)
    assert _adjust(sim, leader, "demote_to_witness", victim)[0] == "ok"  # type: ignore[index]
    assert sim.run_until(lambda: sim.state(victim) is State.WITNESS, 5000)
    _wait_config_applied(sim, leader)
    assert _adjust(sim, leader, "demote_to_witness", victim) == ("error", "already_witness")
    index = one(sim, write("after demotion"), 3)
    entry = sim.nodes[victim].log.get(index)
    assert entry is not None and entry.command == "noop_omitted"


def test_refresh_and_change_errors() -> None:
    sim, leader = _cluster(3, ["n1", "n2", "n3"], 8)
    follower = next(n for n in sim.node_ids if n != leader)
    assert sim.adjust_config(follower, "refresh") == ("error", "not_leader")
    index = sim.core(leader).config_index()
    assert sim.adjust_config(leader, "refresh", expected_index=index + 7) == (
        "error",
        "config_index_mismatch",
    )
    result = sim.adjust_config(leader, "refresh", expected_index=index)
    assert result[0] == "ok"  # type: ignore[index]
    _wait_config_applied(sim, leader)
    # one uncommitted config at a time: cut the followers off and try twice
    for n in sim.node_ids:
        if n != leader:
            sim.disconnect(n)
    first = sim.adjust_config(leader, "refresh")
    assert first[0] == "ok"  # type: ignore[index]  # appended (effective), not committed
    assert sim.adjust_config(leader, "refresh") == ("error", "not_ready")


def test_no_quorum_before_the_leader_committed_in_its_term() -> None:
    sim, leader = _cluster(3, ["n1", "n2", "n3"], 9)
    for n in sim.node_ids:
        if n != leader:
            sim.crash(n)
    sim.run_for(3000)
    assert sim.call_sync(leader, lambda h: Promote(h, "next", True)) == "ok"
    assert sim.state(leader) is State.LEADER
    assert sim.adjust_config(leader, "refresh") == ("error", "no_quorum")


def test_config_change_through_the_acceptor_replies_on_apply() -> None:
    sim, leader = _cluster(4, ["n1", "n2", "n3"], 10)
    action = ("add", sim.identity("n4"))
    # the acceptor path takes a commit slot and is answered by storage once applied
    handle = sim.call(leader, lambda h: AdjustConfig(h, action, None, True), "adjust")
    sim.nodes[leader].admitted[handle] = sim.config.client.priority
    sim.nodes[leader].pending[sim.config.client.priority] += 1
    sim.unadmitted_ok.discard(handle)
    assert sim.run_until(lambda: handle.done, 5000)
    assert handle.result[0] == "ok"
    position = handle.result[1]
    assert sim.nodes[leader].storage.config is not None
    assert sim.nodes[leader].storage.config[0] == position.index
    assert not sim.nodes[leader].admitted


def test_a_single_member_grows_through_a_participant() -> None:
    """M2: adding a voter to a single member made a config of two whose every commit needs
    the new node: a node id nobody runs (a typo) stopped the partition for good, the undo
    being ``not_ready`` while that config is uncommitted. The node answers as a participant
    first (caught up by a snapshot meanwhile), then becomes a voter."""
    sim, leader = _cluster(2, ["n1"], 13)
    assert _adjust(sim, leader, "add", "n2") == ("error", "would_lose_quorum")
    assert _adjust(sim, leader, "add_participant", "n2")[0] == "ok"  # type: ignore[index]
    assert sim.run_until(lambda: sim.state("n2") is State.FOLLOWER, 5000)
    _wait_config_applied(sim, leader)
    assert _adjust(sim, leader, "add", "n2")[0] == "ok"  # type: ignore[index]
    assert _ids(sim, _config(sim, leader).membership) == ["n1", "n2"]
    one(sim, write("two voters"), 2)


def test_a_quiescent_partition_changes_its_membership_at_once() -> None:
    """A quiescent leader hears nothing for as long as it stays quiet: the change wakes it,
    and its members, not reported down, count as running (L1's silence rule waits for a
    whole window of being awake)."""
    sim, leader = _cluster(4, ["n1", "n2", "n3"], 14)
    assert sim.run_until(lambda: sim.core(leader).quiescent, 5000), sim.describe()
    sim.run_for(30_000)
    assert sim.core(leader).quiescent
    assert _adjust(sim, leader, "add", "n4")[0] == "ok"  # type: ignore[index]
    one(sim, write("four voters"), 4)


@pytest.mark.parametrize("seed", [1, 2, 3, 5])
def test_a_demotion_never_committed_leaves_the_replica_its_committed_data(seed: int) -> None:
    """A lagging member is demoted to witness while the leader cannot reach the third member,
    so the demotion is appended but never committed. The leader must go on sending the
    lagging member the entries written while it was a data member in full: it sent stubs of
    them, by the newest config, and once the leader died the next one knew nothing of the
    demotion. The stubs, with the entries' index and term, stayed in the replica's log and
    were applied as the writes: committed data silently missing on a data replica, which
    then led and answered strong reads with not_found."""
    settings = fast_settings(raft_max_log_entries_per_heartbeat=3, raft_quiesce_after_ms=0)
    sim = Simulation(nodes=3, seed=seed, settings=settings)
    sim.bootstrap()
    leader = sim.await_leader()
    peer, lagging = (n for n in sim.node_ids if n != leader)
    one(sim, write("x"), 3)
    sim.block(leader, lagging)
    for i in range(6):
        call = sim.submit(leader, ("write", "t", f"k{i}", i), record=True)
        assert sim.run_until(lambda call=call: call.done) and call.result == "ok"
    sim.block(leader, peer)  # the demotion cannot commit
    demote = sim.call(
        leader, lambda h: AdjustConfig(h, ("demote_to_witness", sim.identity(lagging)), None)
    )
    assert sim.run_until(lambda: demote.done, 1000) and demote.result[0] == "ok"
    demote_index = demote.result[1].index
    sim.heal()
    sim.block(leader, peer)
    start = sim.nodes[lagging].log.last_index()
    assert sim.run_until(lambda: sim.nodes[lagging].log.last_index() > start, 2000)
    log = sim.nodes[lagging].log
    held = [log.get(i) for i in range(start + 1, min(log.last_index(), demote_index) + 1)]
    assert held and all(e is not None and e.command != NOOP_OMITTED for e in held)
    sim.crash(leader)  # the demotion dies with it
    sim.heal()
    sim.await_leader(among=[peer, lagging])
    one(sim, write("after"), 2)
    sim.run_for(2000)
    assert not sim.core(lagging).is_self_witness()
    if sim.leader() != lagging:
        assert sim.handover(sim.leader(), lagging) == ("ok", lagging)
        sim.run_for(2000)
    assert sim.leader() == lagging
    assert sim.nodes[lagging].storage.machine.data.get("k0") == 0
    read = sim.read(lagging, ("read", "t", "k0"), record=True)
    assert sim.run_until(lambda: read.done) and read.result == ("ok", 0)
    assert sim.check_linearizable().ok


def test_a_witness_made_a_data_member_again_gets_the_data_before_it_serves() -> None:
    """demote_to_witness, a write, remove_witness, add: the replica's storage lacks the
    write. As the real storage does (check_config), the simulated one refuses the config
    making it a data replica and waits for a snapshot; it went on applying without the data,
    then led and answered not_found for a committed write."""
    sim, leader = _cluster(3, ["n1", "n2", "n3"], 1)
    node = [n for n in sim.node_ids if n != leader][1]
    for verb, after in (("demote_to_witness", "k0"), ("remove_witness", "k1"), ("add", "k2")):
        assert _adjust(sim, leader, verb, node)[0] == "ok"  # type: ignore[index]
        _wait_config_applied(sim, leader)
        call = sim.submit(leader, ("write", "t", after, verb), record=True)
        assert sim.run_until(lambda call=call: call.done, 3000) and call.result == "ok"
    sim.run_for(3000)
    storage = sim.nodes[node].storage
    assert sim.state(node) is State.FOLLOWER and not storage.incomplete
    assert storage.machine.read(("read", "t", "k0")) == ("ok", "demote_to_witness")
    sim.check_replicas()
    assert sim.handover(leader, node) == ("ok", node)
    sim.run_for(2000)
    read = sim.read(node, ("read", "t", "k0"), record=True)
    assert sim.run_until(lambda: read.done) and read.result == ("ok", "demote_to_witness")
    assert sim.check_linearizable().ok


def test_a_change_during_a_handover_is_redirected_to_the_successor() -> None:
    """A change asked of a leader handing over was answered ``("ok", LogPos)``, appended
    after the successor got its entries, and dropped when the successor won. It is now
    refused as commits are, with a redirect to the successor; asked again there, it holds."""
    sim, leader = _cluster(4, ["n1", "n2", "n3"], 3)
    successor = next(n for n in ("n1", "n2", "n3") if n != leader)
    handover = sim.call(leader, lambda h: HandoverRequest(h, successor), "handover")
    action = ("add_participant", sim.identity("n4"))
    change = sim.call(leader, lambda h: AdjustConfig(h, action, None), "adjust")
    assert sim.run_until(lambda: handover.done and change.done, 2000)
    assert handover.result == ("ok", successor)
    assert change.result == ("error", ("notify_redirect", successor))
    assert check_one_leader(sim, ["n1", "n2", "n3"]) == successor
    assert sim.adjust_config(successor, action)[0] == "ok"
    _wait_config_applied(sim, successor)
    assert sim.identity("n4") in _config(sim, successor).participants


def test_a_removed_member_learns_it_and_stops_campaigning() -> None:
    """The leader stopped sending to a member the moment it appended the change removing
    it, so the member never learned: with pre-vote off it campaigned for ever (40 elections
    in 30 s, each a persisted term), and adding it back deposed the healthy leader."""
    sim, leader = _cluster(3, ["n1", "n2", "n3"], 11)
    removed = next(n for n in sim.node_ids if n != leader)
    term = sim.term(leader)
    elections = sim.core(removed).elections_started
    assert _adjust(sim, leader, "remove", removed)[0] == "ok"  # type: ignore[index]
    sim.run_for(10_000)
    assert sim.identity(removed) not in _config(sim, removed).membership
    assert sim.core(removed).elections_started == elections
    assert sim.term(removed) == term and sim.state(removed) is State.FOLLOWER
    assert _adjust(sim, leader, "add", removed)[0] == "ok"  # type: ignore[index]
    one(sim, write("back"), 3)
    assert sim.leader() == leader and sim.term(leader) == term
