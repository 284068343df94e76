"""WARaft's own behaviours at cluster level: bootstrap and stalled replicas, snapshot catch-up,
disabled replicas, witnesses, handover, leader stickiness, pre-vote and check-quorum.
(Membership actions: ``test_membership.py``.)"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.sim.helpers import check_one_leader, index_of, one, wait_applied, write
from waraft.core.events import Bootstrap, Promote
from waraft.core.types import NOOP_OMITTED, LogPos, State
from waraft.sim import NetConfig, Simulation, fast_settings
from waraft.sim.simulation import Call

ELECTION_MS = 1000


def _sim(n: int, seed: int, bootstrap: bool = True, **kw: Any) -> Simulation:
    sim = Simulation(nodes=n, seed=seed, **kw)
    if bootstrap:
        sim.bootstrap(witnesses=kw.pop("witnesses", ()))
    return sim


def _data(sim: Simulation, node: str) -> dict[Any, Any]:
    return dict(sim.nodes[node].storage.machine.data)  # type: ignore[attr-defined]


def _states(sim: Simulation, node: str) -> list[State]:
    seen: list[State] = []
    sim.state_listeners.append(lambda n, e: seen.append(e.new) if n.id == node else None)
    return seen


# -- bootstrap and stalled -------------------------------------------------------------------


def test_fresh_replicas_stay_stalled_until_bootstrapped() -> None:
    sim = Simulation(nodes=3, seed=1)
    sim.run_for(5 * ELECTION_MS)
    assert all(sim.state(n) is State.STALLED for n in sim.node_ids)
    assert all(sim.term(n) == 0 for n in sim.node_ids)
    assert sim.network.sent_total == 0  # stalled replicas do not campaign
    sim.bootstrap()
    leader = check_one_leader(sim, sim.node_ids)
    assert sim.term(leader) >= 2  # bootstrap starts everyone at term 1
    one(sim, write(1), 3)


def test_single_member_bootstrap_leads_at_once() -> None:
    """The README's session: bootstrap at {1, 1} on one node → leader, commit index 2."""
    sim = Simulation(nodes=1, seed=2)
    sim.bootstrap(position=LogPos(1, 1))
    assert sim.state("n1") is State.LEADER
    assert sim.run_until(lambda: sim.core("n1").commit_index == 2, 100)
    call = sim.submit("n1", ("write", "test", "key", 1000))
    sim.run_until(lambda: call.done, 1000)
    assert call.result == "ok"
    read = sim.read("n1", ("read", "test", "key"))
    sim.run_until(lambda: read.done, 1000)
    assert read.result == ("ok", 1000)


def test_bootstrap_is_refused_once_bootstrapped() -> None:
    sim = _sim(3, 3)
    config = sim.cluster_config()
    result = sim.call_sync("n1", lambda h: Bootstrap(h, LogPos(1, 1), config))
    assert result in (("error", "already_bootstrapped"), ("error", "rejected"))


def test_new_empty_member_catches_up_through_a_snapshot() -> None:
    sim = Simulation(nodes=4, seed=4)
    sim.bootstrap(members=["n1", "n2", "n3"])
    for i in range(20):
        one(sim, write(i, key=f"k{i}"), 3)
    assert sim.state("n4") is State.STALLED
    leader = check_one_leader(sim, ["n1", "n2", "n3"])
    result = sim.adjust_config(leader, ("add", sim.identity("n4")))
    assert result[0] == "ok"
    assert sim.run_until(lambda: sim.state("n4") is State.FOLLOWER, 5000), sim.describe()
    assert sim.catchup.completed >= 1
    index = one(sim, write("after", key="k0"), 4)
    wait_applied(sim, index, sim.node_ids)
    assert _data(sim, "n4") == _data(sim, leader)


def test_lagging_follower_catches_up_by_snapshot_once_the_leader_trimmed() -> None:
    settings = fast_settings(
        raft_max_log_records_per_file=10, raft_max_log_records=20, raft_max_retained_entries=30
    )
    sim = _sim(3, 5, settings=settings)
    leader = check_one_leader(sim, sim.node_ids)
    lagging = next(n for n in sim.node_ids if n != leader)
    sim.crash(lagging)
    for i in range(150):
        one(sim, write(i, key=f"k{i % 7}"), 2)
    assert sim.nodes[leader].log.first_index() > sim.nodes[lagging].log.last_index()
    sim.restart(lagging)
    index = one(sim, write("done"), 3)
    wait_applied(sim, index, sim.node_ids)
    assert sim.run_until(lambda: sim.state(lagging) is State.FOLLOWER, 2000)
    assert sim.catchup.completed >= 1
    assert _data(sim, lagging) == _data(sim, leader)


def test_volatile_replica_restarts_stalled_and_is_restored_from_a_snapshot() -> None:
    sim = _sim(3, 6, durable_log=False, durable_storage=False)
    for i in range(10):
        one(sim, write(i, key=f"k{i}"), 3)
    leader = check_one_leader(sim, sim.node_ids)
    victim = next(n for n in sim.node_ids if n != leader)
    sim.crash(victim)
    sim.restart(victim)
    assert sim.state(victim) is State.STALLED
    assert sim.applied_index(victim) == 0
    assert sim.run_until(lambda: sim.state(victim) is State.FOLLOWER, 5000)
    index = one(sim, write("x"), 3)
    wait_applied(sim, index, sim.node_ids)
    assert _data(sim, victim) == _data(sim, leader)


def test_stalled_replica_does_not_vote() -> None:
    sim = _sim(3, 7, durable_log=False, durable_storage=False)
    leader = check_one_leader(sim, sim.node_ids)
    a, b = (n for n in sim.node_ids if n != leader)
    sim.crash(b)
    sim.restart(b)  # stalled: data lost
    sim.disconnect(leader)  # the leader that could send b a snapshot is gone
    sim.run_for(5 * ELECTION_MS)
    assert sim.state(b) is State.STALLED
    assert sim.leaders() == [leader]  # a and b cannot elect anyone: b does not vote
    sim.connect(leader)
    assert sim.run_until(lambda: sim.state(b) is State.FOLLOWER, 10_000)
    assert sim.state(a) in (State.FOLLOWER, State.LEADER)


# -- disabled --------------------------------------------------------------------------------


def test_disabled_replica_acts_dead_keeps_its_reason_and_needs_data_after_enable() -> None:
    sim = _sim(3, 8)
    leader = check_one_leader(sim, sim.node_ids)
    victim = next(n for n in sim.node_ids if n != leader)
    assert sim.disable(victim, "maintenance") == "ok"
    assert sim.state(victim) is State.DISABLED
    before = sim.nodes[victim].log.last_index()
    for i in range(5):
        one(sim, write(i), 2)
    assert sim.nodes[victim].log.last_index() == before  # ignores replication
    sim.crash(victim)
    sim.restart(victim)
    assert sim.state(victim) is State.DISABLED  # the reason was persisted
    assert sim.core(victim).disable_reason == "maintenance"
    assert sim.enable(victim) == "ok"
    assert sim.run_until(lambda: sim.state(victim) is State.FOLLOWER, 5000)
    assert sim.enable(victim) == ("error", "already_enabled")
    index = one(sim, write("back"), 3)
    wait_applied(sim, index, sim.node_ids)


@pytest.mark.parametrize(("replicas", "seed"), [(3, 21), (2, 22), (3, 23), (1, 24)])
def test_disabling_and_enabling_replicas_of_a_quorum_leaves_the_partition_a_leader(
    replicas: int, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="waraft.core")
    # WARaft's enable moves a replica to stalled, to wait for a leader's snapshot; with a
    # majority re-enabled no leader could exist, and trigger_election and promote are refused
    # in stalled: the partition had no leader until a node was restarted.
    n = 3 if replicas > 1 else 1
    sim = _sim(n, seed)
    leader = check_one_leader(sim, sim.node_ids)
    acked = [one(sim, write(i, key=f"k{i}"), n) for i in range(5)]
    order = [leader] + [x for x in sim.node_ids if x != leader]
    chosen = order[:replicas]
    for node in chosen:
        assert sim.disable(node, "maintenance") == "ok"
    sim.run_for(500)
    for node in chosen:
        assert sim.enable(node) == "ok"
        assert sim.state(node) is State.STALLED
    assert sim.run_until(lambda: any(sim.state(x) is State.LEADER for x in sim.node_ids), 20_000), (
        sim.describe()
    )
    index = one(sim, write("after", key="after"), n)
    wait_applied(sim, index, sim.node_ids)
    assert "no leader came" in caplog.text or "alone in its config" in caplog.text
    for node in sim.node_ids:
        data = _data(sim, node)
        assert all(data.get(f"k{i}") == i for i in range(5)), (node, data, acked)


def test_a_re_enabled_replica_with_a_leader_waits_for_its_snapshot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One replica re-enabled while a leader runs: it leaves stalled through the leader's
    # snapshot (WARaft's rule), not through the wait for a leader that is there.
    sim = _sim(3, 25)
    leader = check_one_leader(sim, sim.node_ids)
    victim = next(x for x in sim.node_ids if x != leader)
    one(sim, write(1), 3)
    assert sim.disable(victim, "maintenance") == "ok"
    with caplog.at_level(logging.INFO, logger="waraft.core"):
        assert sim.enable(victim) == "ok"
        assert sim.run_until(lambda: sim.state(victim) is State.FOLLOWER, 10_000)
        sim.run_for(5000)
    assert sim.state(victim) is State.FOLLOWER
    assert "no leader came" not in caplog.text


def test_disabling_the_leader_elects_another() -> None:
    sim = _sim(3, 9)
    leader = check_one_leader(sim, sim.node_ids)
    sim.disable(leader, "bad disk")
    others = [n for n in sim.node_ids if n != leader]
    new = check_one_leader(sim, others)
    assert new != leader
    one(sim, write(1), 2)


# -- witnesses -------------------------------------------------------------------------------


def test_witnesses_vote_never_lead_and_keep_only_stubs() -> None:
    sim = Simulation(nodes=5, seed=10)
    sim.bootstrap(witnesses=["n4", "n5"])
    led: set[str] = set()
    sim.state_listeners.append(lambda n, e: led.add(n.id) if e.new is State.LEADER else None)
    for round_ in range(4):
        leader = check_one_leader(sim, sim.node_ids)
        for i in range(5):
            one(sim, write(f"{round_}.{i}"), 5)
        sim.crash(leader)
        check_one_leader(sim, [n for n in sim.node_ids if n != leader])
        sim.restart(leader)
    assert led and not led & {"n4", "n5"}
    assert sim.state("n4") is State.WITNESS and sim.state("n5") is State.WITNESS
    for w in ("n4", "n5"):
        assert _data(sim, w) == {}
        commands = [e.command for _, e in sim.nodes[w].log.all_entries()]
        assert NOOP_OMITTED in commands
        assert not any(isinstance(c, tuple) and c[0] == "write" for c in commands)


def test_witness_makes_a_quorum_but_never_runs_ahead_of_the_data_replicas() -> None:
    # pre-vote: the cut-off data replica must not depose the leader when it returns
    sim = Simulation(nodes=3, seed=11, settings=fast_settings(raft_election_pre_vote=True))
    sim.bootstrap(witnesses=["n3"])
    leader = check_one_leader(sim, sim.node_ids)
    data_follower = next(n for n in ("n1", "n2") if n != leader)
    one(sim, write("before"), 3)
    # with the other data replica away, leader + witness are a majority, but the witness is
    # never sent entries no other data replica holds: nothing new can commit
    sim.disconnect(data_follower)
    call = sim.submit(leader, write("blocked"))
    sim.run_for(2000)
    assert index_of(sim, write("blocked")) is None and not call.done
    last_data = sim.nodes[data_follower].log.last_index()
    assert sim.nodes["n3"].log.last_index() <= last_data
    sim.connect(data_follower)
    assert sim.run_until(lambda: call.done, 5000) and call.result == "ok"
    # without the witness the two data replicas are a majority on their own
    sim.crash("n3")
    one(sim, write("two data replicas"), 2)


# -- handover --------------------------------------------------------------------------------


def test_handover_to_a_chosen_peer_is_fast() -> None:
    sim = _sim(3, 12)
    leader = check_one_leader(sim, sim.node_ids)
    term = sim.term(leader)
    one(sim, write(1), 3)
    peer = next(n for n in sim.node_ids if n != leader)
    start = sim.now
    assert sim.handover(leader, peer) == ("ok", peer)
    assert sim.run_until(lambda: sim.leader() == peer, ELECTION_MS)
    assert sim.now - start < 500  # no election timeout needed
    assert sim.term(peer) == term + 1
    assert sim.run_until(lambda: sim.state(leader) is State.FOLLOWER, 1000)
    one(sim, write(2), 3)


def test_handover_to_a_random_ready_peer() -> None:
    sim = _sim(3, 13)
    leader = check_one_leader(sim, sim.node_ids)
    one(sim, write(1), 3)
    result = sim.handover(leader)
    assert result[0] == "ok" and result[1] != leader
    assert sim.run_until(lambda: sim.leader() == result[1], 2000)


def test_handover_errors_and_redirects() -> None:
    settings = fast_settings(raft_max_handover_log_entries=10, raft_handover_timeout_ms=300)
    sim = _sim(3, 14, settings=settings)
    leader = check_one_leader(sim, sim.node_ids)
    one(sim, write(0), 3)
    a, b = (n for n in sim.node_ids if n != leader)
    assert sim.handover(leader, leader) == ("ok", leader)
    assert sim.handover(leader, "nowhere") == ("error", "invalid_peer")
    assert sim.handover(a, b) == ("error", "not_leader")
    sim.disconnect(b)
    for i in range(15):
        one(sim, write(f"lag{i}"), 2)
    assert sim.handover(leader, b) == ("error", "peer_lagging")
    # a handover to a peer that never answers: commits are redirected until it times out
    sim.disconnect(a)
    assert sim.handover(leader, a) == ("ok", a)
    assert sim.handover(leader, a) == ("error", "duplicate")
    call = sim.submit(leader, write("during"))
    sim.run_until(lambda: call.done, 100)
    assert call.result == ("error", ("notify_redirect", a))
    sim.run_for(400)  # the handover timed out: the leader serves again
    sim.connect(a)
    sim.connect(b)
    assert sim.leader() == leader
    one(sim, write("after"), 3)


# -- stickiness, pre-vote, check-quorum ------------------------------------------------------


def _deaf_follower(sim: Simulation) -> tuple[str, str, str]:
    """Cut only leader → follower: the follower stops hearing the leader, all else works."""
    leader = check_one_leader(sim, sim.node_ids)
    deaf, other = (n for n in sim.node_ids if n != leader)
    sim.block(leader, deaf)
    return leader, deaf, other


def test_leader_stickiness_refuses_normal_votes_while_the_leader_is_live() -> None:
    sim = _sim(3, 15)
    leader, deaf, other = _deaf_follower(sim)
    term = sim.term(leader)
    sim.run_for(5 * ELECTION_MS)
    assert sim.term(deaf) > term  # it campaigns ...
    assert sim.term(other) == term  # ... but the other follower neither votes nor moves on
    assert sim.leaders() == [leader] and sim.term(leader) == term
    one(sim, write(1), 2)


def test_pre_vote_keeps_a_cut_off_node_from_bumping_its_term() -> None:
    sim = _sim(3, 16, settings=fast_settings(raft_election_pre_vote=True))
    leader, deaf, _other = _deaf_follower(sim)
    term = sim.term(leader)
    sim.run_for(5 * ELECTION_MS)
    assert sim.term(deaf) == term  # pre-votes fail: no term change at all
    sim.heal()
    sim.disconnect(deaf)
    sim.run_for(5 * ELECTION_MS)
    assert sim.term(deaf) == term
    sim.connect(deaf)
    sim.run_for(2 * ELECTION_MS)
    assert sim.leader() == leader and sim.term(leader) == term  # rejoins without disruption


def test_without_pre_vote_a_returning_node_forces_a_new_term() -> None:
    sim = _sim(3, 17)
    leader = check_one_leader(sim, sim.node_ids)
    term = sim.term(leader)
    away = next(n for n in sim.node_ids if n != leader)
    sim.disconnect(away)
    sim.run_for(5 * ELECTION_MS)
    assert sim.term(away) > term + 1
    sim.connect(away)
    new = check_one_leader(sim, sim.node_ids)
    assert sim.term(new) > term  # its higher term deposed the leader (what pre-vote prevents)


def test_check_quorum_makes_a_cut_off_leader_step_down() -> None:
    settings = fast_settings(raft_leader_check_quorum=True)
    sim = _sim(3, 18, settings=settings)
    leader = check_one_leader(sim, sim.node_ids)
    sim.disconnect(leader)
    grace = settings.raft_liveness_grace_period_ms + 2 * settings.raft_heartbeat_interval_ms
    assert sim.run_until(lambda: sim.state(leader) is not State.LEADER, grace + 100)
    sim2 = _sim(3, 18)
    leader2 = check_one_leader(sim2, sim2.node_ids)
    sim2.disconnect(leader2)
    sim2.run_for(5 * settings.raft_liveness_grace_period_ms)
    assert sim2.state(leader2) is State.LEADER  # without check-quorum it never notices


def test_trigger_election_and_promote() -> None:
    sim = _sim(3, 19)
    leader = check_one_leader(sim, sim.node_ids)
    term = sim.term(leader)
    follower = next(n for n in sim.node_ids if n != leader)
    assert sim.trigger_election(follower) == "ok"
    new = check_one_leader(sim, sim.node_ids)
    assert sim.term(new) > term
    # promote is an administrative override: refused while a leader was heard recently
    other = next(n for n in sim.node_ids if n != new)
    assert sim.promote(other, "next") == ("error", "rejected")
    assert sim.promote(other, "next", force=True) == "ok"
    assert sim.leader() == other
    one(sim, write("promoted"), 3)


def _up_to_date(sim: Simulation, stale: str) -> list[str]:
    return [n for n in sim.node_ids if n != stale]


def test_promote_without_force_of_a_stale_replica_is_refused_by_the_votes() -> None:
    """A review promoted a replica restarted behind the others (it had heard no leader
    since, so no grace period held it back): it led with its stale log, and the up-to-date
    members disabled themselves rather than drop committed entries (the simulator's
    leader-completeness check fails). Without force, promote is a forced election, which a
    log that is behind loses; the partition goes on under an up-to-date leader."""
    sim = _sim(3, 7)
    leader = check_one_leader(sim, sim.node_ids)
    stale = next(n for n in sim.node_ids if n != leader)
    sim.crash(stale)
    for i in range(5):
        one(sim, write(i), 2)
    sim.restart(stale)
    assert sim.core(stale).last_quorum_ts is None
    # lost (the votes refused it), or not decided before an up-to-date member's election
    assert sim.promote(stale, "next") in (("error", "election_lost"), ("error", "not_elected"))
    assert check_one_leader(sim, sim.node_ids) != stale
    one(sim, write("after"), 3)
    assert not any(sim.state(n) is State.DISABLED for n in sim.node_ids)


def test_promote_without_force_never_makes_a_second_leader_of_a_term() -> None:
    """With pre-vote, a cut-off replica's term stays behind: promote("next") self-appointed
    it at the term the majority had just elected a leader in (two leaders of one term,
    the simulator's log-matching check failed). Its election there is refused (everyone
    voted in that term), or, cut off, times out."""
    sim = _sim(3, 7, settings=fast_settings(raft_election_pre_vote=True))
    leader = check_one_leader(sim, sim.node_ids)
    one(sim, write("a"), 3)
    stale = [n for n in sim.node_ids if n != leader][1]
    sim.isolate(stale)
    assert sim.resign(leader) == "ok"
    check_one_leader(sim, _up_to_date(sim, stale))
    one(sim, write("b"), 2)
    sim.run_for(2500)
    assert sim.promote(stale, "next") == ("error", "not_elected")
    sim.heal()
    check_one_leader(sim, sim.node_ids)
    one(sim, write("c"), 3)


@pytest.mark.parametrize("force", [False, True])
def test_promote_with_a_config_appoints_the_empty_replica_forced_or_not(force: bool) -> None:
    """The older README's ``promote(name, term, force, config)`` on an empty replica: without
    force it ran an election, which the other members of the config, empty and stalled,
    never answer: a candidate at rising terms for good, the caller answered not_elected.
    It appoints itself, as WARaft's does, forced or not (it has no log to protect)."""
    sim = Simulation(nodes=3, seed=5)
    first = sim.node_ids[0]
    config = sim.cluster_config()
    answer = sim.call_sync(first, lambda h: Promote(h, 1, force, config), "promote")
    assert answer == "ok"
    sim.run_for(5000)
    assert sim.state(first) is State.LEADER and sim.core(first).current_term == 1


def test_a_candidates_read_past_the_next_terms_first_index_holds_no_read_slot() -> None:
    """A buffered read whose minimum index no leader's log would reach held one of the
    node's read slots for as long as the candidate went on to lead."""
    sim = _sim(3, 21, settings=fast_settings(raft_candidate_buffer_requests=True))
    leader = check_one_leader(sim, sim.node_ids)
    follower = next(n for n in sim.node_ids if n != leader)
    assert sim.trigger_election(follower) == "ok"
    assert sim.state(follower) is State.CANDIDATE
    node = sim.nodes[follower]
    first = sim.core(follower).log.last_index() + 1  # the new term's first index
    far, near = Call("far"), Call("near")
    assert node.accept_read(far, ("read", "test", "k"), 2**63)
    assert far.result == ("error", "min_index_ahead")  # refused at once, like a leader
    assert node.accept_read(near, ("read", "test", "k"), first)
    assert check_one_leader(sim, sim.node_ids) == follower
    assert sim.run_until(lambda: near.done, 2000) and near.result == "not_found"  # served
    assert node.pending["read"] == 0


def test_unreliable_network_with_all_options_stays_safe_and_live() -> None:
    settings = fast_settings(
        raft_election_pre_vote=True,
        raft_leader_check_quorum=True,
        raft_candidate_buffer_requests=True,
    )
    sim = _sim(5, 20, settings=settings, net=NetConfig.unreliable(), batch_effects=True)
    sim.add_clients(3)
    for victim in ("n1", "n2", "n3"):
        sim.run_for(1500)
        sim.crash(victim)
        sim.run_for(1500)
        sim.restart(victim)
    one(sim, write("end"), 5, timeout_ms=30_000)


def test_volatile_witness_is_restored_from_a_metadata_only_snapshot() -> None:
    sim = Simulation(nodes=3, seed=22, durable_log=False, durable_storage=False)
    sim.bootstrap(witnesses=["n3"])
    for i in range(5):
        one(sim, write(i, key=f"k{i}"), 3)
    sim.crash("n3")
    sim.restart("n3")
    assert sim.state("n3") is State.STALLED
    assert sim.run_until(lambda: sim.state("n3") is State.WITNESS, 5000), sim.describe()
    snapshot = next(iter(sim.catchup.snapshots.values()))
    assert snapshot.witness and snapshot.data is None
    storage = sim.nodes["n3"].storage
    assert storage.incomplete and storage.witness and _data(sim, "n3") == {}
    index = one(sim, write("after"), 3)
    wait_applied(sim, index, ["n3"])


def test_status_counts_the_elections_a_replica_started() -> None:
    sim = _sim(3, seed=5)
    leader = sim.await_leader()
    before = {n: sim.core(n).status(sim.now)["elections_started"] for n in sim.node_ids}
    assert before[leader] >= 1  # it became leader through a candidacy
    sim.crash(leader)
    survivors = [n for n in sim.node_ids if n != leader]
    assert sim.run_until(lambda: sim.leader() in survivors, 20_000), sim.describe()
    new = sim.leader()
    assert sim.core(new).status(sim.now)["elections_started"] > before[new]
