"""MIT 6.824's Raft lab tests (2A election, 2B agreement, 2C persistence), rewritten for the
simulator. Every step of every test also runs the invariant checker; the client-driven tests
end with a linearizability check.

WARaft differences that shape the assertions: a bootstrapped log starts with the base entry at
index 1 and every new leader appends a noop, so command indices are not 1, 2, 3...; without
check-quorum an isolated leader stays leader (6.824 only inspects connected servers).
"""

from __future__ import annotations

import random

import pytest

from tests.sim.helpers import (
    assert_linearizable,
    check_no_leader,
    check_one_leader,
    check_terms_agree,
    index_of,
    n_committed,
    one,
    settle_clients,
    wait_applied,
    write,
)
from waraft.core.types import State
from waraft.sim import ClientConfig, KVWorkload, NetConfig, Simulation, Status, fast_settings

ELECTION_MS = 1000  # fast_settings: election timeout 500-1000 ms, heartbeat 50 ms


def _sim(n: int, seed: int, **kw: object) -> Simulation:
    sim = Simulation(nodes=n, seed=seed, **kw)  # type: ignore[arg-type]
    sim.bootstrap()
    return sim


def _peer(sim: Simulation, node: str, offset: int) -> str:
    ids = sim.node_ids
    return ids[(ids.index(node) + offset) % len(ids)]


# -- 2A: leader election ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_initial_election(seed: int) -> None:
    sim = _sim(3, seed)
    everyone = sim.node_ids
    leader = check_one_leader(sim, everyone)
    assert sim.run_until(lambda: len({sim.term(n) for n in everyone}) == 1, 2000)
    term1 = check_terms_agree(sim, everyone)
    assert term1 >= 1
    sim.run_for(2 * ELECTION_MS)
    # no failures: the term stays and so does the leader
    assert check_terms_agree(sim, everyone) == term1
    assert check_one_leader(sim, everyone) == leader


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reelection(seed: int) -> None:
    sim = _sim(3, seed)
    everyone = sim.node_ids
    leader1 = check_one_leader(sim, everyone)
    sim.disconnect(leader1)
    others = [n for n in everyone if n != leader1]
    check_one_leader(sim, others)
    # the old leader rejoins: it must not disturb the new leader
    sim.connect(leader1)
    leader2 = check_one_leader(sim, everyone)
    # no quorum: no leader among the connected
    follower = _peer(sim, leader2, 1)
    sim.disconnect(leader2)
    sim.disconnect(follower)
    sim.run_for(2 * ELECTION_MS)
    check_no_leader(sim, [n for n in everyone if n not in (leader2, follower)])
    sim.connect(follower)
    check_one_leader(sim, [n for n in everyone if n != leader2])
    sim.connect(leader2)
    check_one_leader(sim, everyone)


def test_many_elections() -> None:
    sim = _sim(7, 5)
    rng = random.Random(5)
    check_one_leader(sim, sim.node_ids)
    for _ in range(10):
        out = rng.sample(sim.node_ids, 3)
        for n in out:
            sim.disconnect(n)
        check_one_leader(sim, [n for n in sim.node_ids if n not in out])
        for n in out:
            sim.connect(n)
    check_one_leader(sim, sim.node_ids)


# -- 2B: agreement ---------------------------------------------------------------------------


def test_basic_agree() -> None:
    sim = _sim(3, 1)
    check_one_leader(sim, sim.node_ids)
    indices = []
    for i in range(1, 4):
        last = max(sim.nodes[n].log.last_index() for n in sim.node_ids)
        count, _ = n_committed(sim, last + 1)
        assert count == 0, "some node committed before the command was submitted"
        indices.append(one(sim, write(i), 3, retry=False))
    assert indices == list(range(indices[0], indices[0] + 3))


def test_follower_failure() -> None:
    sim = _sim(3, 2)
    one(sim, write(101), 3)
    leader1 = check_one_leader(sim, sim.node_ids)
    sim.disconnect(_peer(sim, leader1, 1))
    one(sim, write(102), 2)
    sim.run_for(ELECTION_MS)
    one(sim, write(103), 2)
    leader2 = check_one_leader(sim, sim.node_ids)
    sim.disconnect(_peer(sim, leader2, 1))
    sim.disconnect(_peer(sim, leader2, 2))
    call = sim.submit(leader2, write(104))
    sim.run_for(2 * ELECTION_MS)
    assert not call.done or call.result != "ok"
    assert index_of(sim, write(104)) is None


def test_leader_failure() -> None:
    sim = _sim(3, 3)
    one(sim, write(101), 3)
    leader1 = check_one_leader(sim, sim.node_ids)
    sim.disconnect(leader1)
    one(sim, write(102), 2)
    sim.run_for(ELECTION_MS)
    one(sim, write(103), 2)
    leader2 = check_one_leader(sim, [n for n in sim.node_ids if n != leader1])
    sim.disconnect(leader2)
    for n in sim.node_ids:
        sim.submit(n, write(104))
    sim.run_for(2 * ELECTION_MS)
    assert index_of(sim, write(104)) is None


def test_fail_agree() -> None:
    sim = _sim(3, 4)
    one(sim, write(101), 3)
    leader = check_one_leader(sim, sim.node_ids)
    follower = _peer(sim, leader, 1)
    sim.disconnect(follower)
    for value in (102, 103, 104, 105):
        one(sim, write(value), 2)
    sim.connect(follower)
    one(sim, write(106), 3)
    sim.run_for(ELECTION_MS)
    one(sim, write(107), 3)


def test_fail_no_agree() -> None:
    sim = _sim(5, 5)
    one(sim, write(10), 5)
    leader = check_one_leader(sim, sim.node_ids)
    out = [_peer(sim, leader, i) for i in (1, 2, 3)]
    for n in out:
        sim.disconnect(n)
    call = sim.submit(leader, write(20))
    sim.run_for(2 * ELECTION_MS)
    assert index_of(sim, write(20)) is None
    assert not call.done
    for n in out:
        sim.connect(n)
    leader2 = check_one_leader(sim, sim.node_ids)
    index = one(sim, write(30), 5)
    # write(20) never reached a majority: either lost, or committed right before 30 when the
    # old leader kept its lead; never after
    late = index_of(sim, write(20))
    assert late is None or late < index
    assert leader2 in sim.node_ids


def test_concurrent_starts() -> None:
    sim = _sim(3, 6)
    for _attempt in range(5):
        leader = check_one_leader(sim, sim.node_ids)
        term = sim.term(leader)
        calls = [sim.submit(leader, write(100 + i, key=f"c{_attempt}")) for i in range(5)]
        sim.run_until(lambda cs=calls: all(c.done for c in cs), 3000)
        if sim.term(leader) != term or any(c.result != "ok" for c in calls):
            continue  # the term moved on: try again, as 6.824 does
        indices = [index_of(sim, write(100 + i, key=f"c{_attempt}")) for i in range(5)]
        assert None not in indices and len(set(indices)) == 5
        wait_applied(sim, max(i for i in indices if i is not None), sim.node_ids)
        return
    pytest.fail("term changed too often")


def test_rejoin() -> None:
    sim = _sim(3, 7)
    one(sim, write(101), 3)
    leader1 = check_one_leader(sim, sim.node_ids)
    sim.disconnect(leader1)
    for value in (102, 103, 104):
        sim.submit(leader1, write(value))  # appended by the old leader, never committed
    one(sim, write(1103), 2)
    leader2 = check_one_leader(sim, [n for n in sim.node_ids if n != leader1])
    sim.disconnect(leader2)
    sim.connect(leader1)
    one(sim, write(1104), 2)
    sim.connect(leader2)
    one(sim, write(1105), 3)
    for value in (102, 103, 104):
        assert index_of(sim, write(value)) is None
    # the old leader's uncommitted entries were overwritten
    wait_applied(sim, index_of(sim, write(1105)) or 0, sim.node_ids)


def test_backup_fast_backtracking() -> None:
    sim = _sim(5, 8)
    rng = random.Random(8)
    one(sim, write(rng.random()), 5)
    leader1 = check_one_leader(sim, sim.node_ids)
    for i in (2, 3, 4):
        sim.disconnect(_peer(sim, leader1, i))
    for i in range(50):
        sim.submit(leader1, write(f"lost-a{i}"))  # never committed
    sim.run_for(ELECTION_MS // 2)
    sim.disconnect(leader1)
    sim.disconnect(_peer(sim, leader1, 1))
    for i in (2, 3, 4):
        sim.connect(_peer(sim, leader1, i))
    for i in range(50):
        one(sim, write(f"b{i}"), 3)
    group = [_peer(sim, leader1, i) for i in (2, 3, 4)]
    leader2 = check_one_leader(sim, group)
    other = next(n for n in group if n != leader2)
    sim.disconnect(other)
    for i in range(50):
        sim.submit(leader2, write(f"lost-c{i}"))
    sim.run_for(ELECTION_MS // 2)
    for n in sim.node_ids:
        sim.disconnect(n)
    for n in (leader1, _peer(sim, leader1, 1), other):
        sim.connect(n)
    before = sim.network.sent_total
    for i in range(50):
        one(sim, write(f"d{i}"), 3)
    for n in sim.node_ids:
        sim.connect(n)
    one(sim, write("final"), 5)
    for i in range(50):
        assert index_of(sim, write(f"lost-a{i}")) is None
        assert index_of(sim, write(f"lost-c{i}")) is None
    # backtracking over ~50 divergent entries must not cost a message storm
    assert sim.network.sent_total - before < 3000


def test_count_rpc_budget() -> None:
    sim = _sim(3, 9)
    check_one_leader(sim, sim.node_ids)
    election_rpcs = sim.network.sent_total
    assert election_rpcs < 30, f"too many RPCs ({election_rpcs}) to elect an initial leader"
    settings = sim.config.settings
    for _ in range(5):  # retried when the term changes, as 6.824 does
        leader = check_one_leader(sim, sim.node_ids)
        term = sim.term(leader)
        start_sent, start_time = sim.network.sent_total, sim.now
        iters = 10
        for i in range(iters):
            one(sim, write(f"count{i}"), 3)
        if sim.term(leader) != term:
            continue
        spent = sim.network.sent_total - start_sent
        heartbeats = (sim.now - start_time) // settings.raft_heartbeat_interval_ms + 1
        # 6.824's budget ((iters + 1 + 3) * 3 RPCs, a request and its reply each), plus one
        # heartbeat round (2 requests + 2 replies) per interval that elapsed
        assert spent <= (iters + 1 + 3) * 3 * 2 + 4 * heartbeats, spent
        break
    else:
        pytest.fail("term changed too often")
    idle_start = sim.network.sent_total
    sim.run_for(1000)
    idle = sim.network.sent_total - idle_start
    rounds = 1000 // settings.raft_heartbeat_interval_ms + 1
    assert idle <= 4 * rounds, f"too many RPCs ({idle}) for 1 second of idleness"


# -- 2C: persistence -------------------------------------------------------------------------


def test_persist1() -> None:
    sim = _sim(3, 10)
    one(sim, write(11), 3)
    for n in sim.node_ids:
        sim.crash(n)
    for n in sim.node_ids:
        sim.restart(n)
    one(sim, write(12), 3)
    leader1 = check_one_leader(sim, sim.node_ids)
    sim.crash(leader1)
    sim.restart(leader1)
    one(sim, write(13), 3)
    leader2 = check_one_leader(sim, sim.node_ids)
    sim.crash(leader2)
    one(sim, write(14), 2)
    sim.restart(leader2)
    wait_applied(sim, index_of(sim, write(14)) or 0, sim.node_ids)
    i3 = _peer(sim, check_one_leader(sim, sim.node_ids), 1)
    sim.crash(i3)
    one(sim, write(15), 2)
    sim.restart(i3)
    one(sim, write(16), 3)


def test_persist2() -> None:
    sim = _sim(5, 11)
    value = 10
    for _ in range(5):
        value += 1
        one(sim, write(value), 5)
        leader1 = check_one_leader(sim, sim.node_ids)
        sim.crash(_peer(sim, leader1, 1))
        sim.crash(_peer(sim, leader1, 2))
        value += 1
        one(sim, write(value), 3)
        for i in (0, 3, 4):
            sim.crash(_peer(sim, leader1, i))
        sim.restart(_peer(sim, leader1, 1))
        sim.restart(_peer(sim, leader1, 2))
        sim.run_for(ELECTION_MS)
        sim.restart(_peer(sim, leader1, 3))
        value += 1
        one(sim, write(value), 3)
        sim.restart(_peer(sim, leader1, 4))
        sim.restart(leader1)
    one(sim, write(1000), 5)


def test_persist3() -> None:
    sim = _sim(3, 12)
    one(sim, write(101), 3)
    leader = check_one_leader(sim, sim.node_ids)
    far = _peer(sim, leader, 2)
    sim.disconnect(far)
    one(sim, write(102), 2)
    sim.crash(leader)
    sim.crash(_peer(sim, leader, 1))
    sim.connect(far)
    sim.restart(leader)
    one(sim, write(103), 2)
    sim.restart(_peer(sim, leader, 1))
    one(sim, write(104), 3)


# 6.824's figure 8 tests sleep 0-13 ms between leader crashes with 150-300 ms elections
FIGURE8 = fast_settings(
    raft_election_timeout_ms=150, raft_election_timeout_ms_max=300, raft_heartbeat_interval_ms=20
)


@pytest.mark.parametrize("seed", [13, 14])
def test_figure8(seed: int) -> None:
    """Leaders crash at random right after appending; only current-term entries may commit by
    counting replicas (the invariants check every step)."""
    sim = _sim(5, seed, settings=FIGURE8)
    rng = random.Random(seed)
    one(sim, write(rng.random()), 1)
    up = 5
    for i in range(1000):
        leader = sim.leader()
        if leader is not None:
            sim.submit(leader, write(f"f{i}"))
        sim.run_for(rng.randint(0, 500) if rng.random() < 0.1 else rng.randint(0, 13))
        if leader is not None and sim.nodes[leader].up:
            sim.crash(leader)
            up -= 1
        if up < 3:
            node = rng.choice(sim.node_ids)
            if not sim.nodes[node].up:
                sim.restart(node)
                up += 1
    for n in sim.node_ids:
        sim.restart(n)
    one(sim, write("end"), 5, timeout_ms=30_000)
    assert len(sim.invariants.leaders) > 50  # many leaders came and went


def test_unreliable_agree() -> None:
    sim = _sim(5, 15, net=NetConfig.unreliable())
    sim.add_clients(4, KVWorkload(keys=3, write=0.9, delete=0.0))
    for i in range(1, 51):
        one(sim, write(i, key="agree"), 1)
    sim.set_net(NetConfig())
    one(sim, write(100, key="agree"), 5)
    settle_clients(sim)
    assert_linearizable(sim)


def test_figure8_unreliable() -> None:
    sim = _sim(5, 16, net=NetConfig.unreliable(), settings=FIGURE8)
    rng = random.Random(16)
    one(sim, write(rng.randrange(10000)), 1)
    disconnected: set[str] = set()
    for i in range(1000):
        if i == 200:  # long reordering from now on
            sim.set_net(NetConfig.unreliable().with_(reorder=0.3, reorder_delay_ms=2000))
        leader = sim.leader()
        if leader is not None and leader not in disconnected:
            sim.submit(leader, write(f"u{i}"))
        sim.run_for(rng.randint(0, 500) if rng.random() < 0.1 else rng.randint(0, 13))
        if leader is not None and rng.random() < 0.5 and leader not in disconnected:
            sim.disconnect(leader)
            disconnected.add(leader)
        if len(sim.node_ids) - len(disconnected) < 3:
            node = rng.choice(sim.node_ids)
            if node in disconnected:
                sim.connect(node)
                disconnected.discard(node)
    for n in sim.node_ids:
        sim.connect(n)
    sim.set_net(NetConfig())
    one(sim, write("end"), 5, timeout_ms=30_000)
    assert len(sim.invariants.leaders) > 5


def _churn(seed: int, unreliable: bool) -> None:
    net = NetConfig.unreliable() if unreliable else NetConfig()
    sim = _sim(5, seed, net=net, client=ClientConfig(attempt_timeout_ms=2000))
    rng = random.Random(seed)
    sim.add_clients(3, KVWorkload(keys=4))
    for _ in range(20):  # 6.824's churn: per round, one node each rolls each die
        if rng.random() < 0.2:
            sim.disconnect(rng.choice(sim.node_ids))
        if rng.random() < 0.5:
            node = rng.choice(sim.node_ids)
            sim.restart(node)
            sim.connect(node)
        if rng.random() < 0.2:
            sim.crash(rng.choice(sim.node_ids))
        sim.run_for(ELECTION_MS * 7 // 10)
    sim.set_net(NetConfig())
    for n in sim.node_ids:
        sim.restart(n)
        sim.connect(n)
    one(sim, write("after-churn"), 5, timeout_ms=30_000)
    settle_clients(sim)
    assert_linearizable(sim)
    ok = sim.history.count(Status.OK, "commit")
    assert ok >= 10, f"too little progress under churn: {sim.history.summary()}"
    leader = check_one_leader(sim, sim.node_ids)
    assert sim.state(leader) is State.LEADER


@pytest.mark.parametrize("seed", [17, 18])
def test_reliable_churn(seed: int) -> None:
    _churn(seed, unreliable=False)


@pytest.mark.parametrize("seed", [19, 20, 21])  # 20 found CORE-1 (stale strong reads)
def test_unreliable_churn(seed: int) -> None:
    _churn(seed, unreliable=True)
