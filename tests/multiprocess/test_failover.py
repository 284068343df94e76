"""Failures of real node processes (one 3-node cluster, durable providers; the tests run in
order and each leaves the cluster whole): kill -9 of a leader under load, restart and rejoin,
a network partition made by fault injection in the transport, and its healing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.multiprocess.conftest import make_cluster
from tests.multiprocess.harness import Cluster, wait_until
from waraft.client import Client, partition_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    # check-quorum: a leader that heard no majority for raft_liveness_grace_period_ms steps
    # down (WARaft's raft_leader_check_quorum), so its clients are redirected, not left waiting.
    yield from make_cluster(
        tmp_path_factory.mktemp("failover"),
        raft_leader_check_quorum=True,
        raft_liveness_grace_period_ms=1000,
    )


def _keys_of(partition: int, count: int, prefix: str) -> list[str]:
    keys: list[str] = []
    i = 0
    while len(keys) < count:
        key = f"{prefix}{i}"
        if partition_for(key, 4) == partition:
            keys.append(key)
        i += 1
    return keys


def _read_all(client: Client, expected: dict[str, Any]) -> dict[str, Any]:
    """Keys whose strong read does not return the expected value (empty when all match)."""
    keys = list(expected)
    futures = [client.read_async(k, ("read", "kv", k)) for k in keys]
    results = [f.result(30) for f in futures]
    return {k: r for k, r in zip(keys, results, strict=True) if r != ("ok", expected[k])}


def test_kill9_of_a_leader_under_load_loses_no_acknowledged_write(cluster: Cluster) -> None:
    wait_until(cluster.converged)
    client = Client(cluster.ids, table="kv", partitions=4, timeout=20.0, attempt_timeout=2.0)
    acked: dict[str, int] = {}
    failed: list[Any] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"w{w}-{i}"
            result = client.commit(key, ("write", "kv", key, i))
            if result == "ok":
                acked[key] = i
            else:
                failed.append((key, result))
            i += 1

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 100)
        leader, term = wait_until(lambda: cluster.leader(1))
        victim = cluster.index_of(leader)
        cluster.nodes[victim].kill()
        at_kill = len(acked)
        survivors = [n for n in cluster.ids if n != leader]

        def new_leader() -> Any:
            found = cluster.leader(1, survivors)
            return found if found is not None and found[1] > term else None

        wait_until(new_leader)
        # Writes keep being acknowledged after the failover (every partition had a leader
        # on the dead node or gets one on a survivor).
        wait_until(lambda: len(acked) >= at_kill + 200, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        assert _read_all(client, acked) == {}
        # A write may fail only for want of a leader in time, never silently.
        assert all(r[0] == "error" for _, r in failed), failed[:5]
    finally:
        client.close()
    pytest.killed_index = victim  # type: ignore[attr-defined]  # for the next test


def test_a_killed_node_restarts_from_its_disk_and_rejoins(cluster: Cluster) -> None:
    victim = getattr(pytest, "killed_index", None)
    if victim is None or cluster.nodes[victim].alive():
        victim = 2
        cluster.nodes[victim].kill()
    cluster.start([victim])
    wait_until(cluster.converged, timeout=30)
    # The restarted node is a full member again: with another node down, it and the last one
    # are the majority every partition needs.
    other = (victim + 1) % 3
    cluster.nodes[other].kill()
    majority = [cluster.ids[i] for i in range(3) if i != other]
    with Client(majority, table="kv", partitions=4, timeout=20.0, attempt_timeout=2.0) as client:
        values = {f"rejoin{i}": i for i in range(40)}
        futures = [client.commit_async(k, ("write", "kv", k, v)) for k, v in values.items()]
        assert [f.result(30) for f in futures] == ["ok"] * len(values)
        assert _read_all(client, values) == {}
    wait_until(lambda: cluster.converged(majority), timeout=30)
    cluster.start([other])
    wait_until(cluster.converged, timeout=30)


def test_a_leader_cut_off_by_fault_injection_is_replaced_and_heals(cluster: Cluster) -> None:
    wait_until(cluster.converged, timeout=30)
    leader, term = wait_until(lambda: cluster.leader(1))
    cut = cluster.index_of(leader)
    others = [n for n in cluster.ids if n != leader]
    commit_before = cluster.rows([leader])[(leader, 1)]["commit"]
    # Drop all traffic between the leader's node and the rest, in both directions, on every
    # node (the test process itself still reaches all of them).
    for i in range(len(cluster.ids)):
        assert cluster.admin(i, "set_fault", others if i == cut else [leader], [], []) == "ok"
    try:

        def replaced() -> Any:
            found = cluster.leader(1, others)
            return found if found is not None and found[1] > term else None

        _, new_term = wait_until(replaced)
        keys = _keys_of(1, 30, "cut")
        values = {k: i for i, k in enumerate(keys)}
        with Client(others, table="kv", partitions=4, timeout=20.0, attempt_timeout=2.0) as c:
            futures = [c.commit_async(k, ("write", "kv", k, v)) for k, v in values.items()]
            assert [f.result(30) for f in futures] == ["ok"] * len(values)
        # The isolated node committed nothing meanwhile, and check-quorum deposed it.
        isolated = wait_until(lambda: cluster.rows([leader]).get((leader, 1)))
        assert isolated["commit"] == commit_before
        wait_until(lambda: cluster.rows([leader])[(leader, 1)]["state"] != "leader")
    finally:
        for i in range(len(cluster.ids)):
            cluster.admin(i, "clear_fault")
    # Healed: the old leader follows the new one and catches up; the data is everywhere.
    wait_until(cluster.converged, timeout=30)
    assert cluster.leader(1) is not None
    healed = cluster.rows([leader])[(leader, 1)]
    assert healed["state"] == "follower" and healed["term"] >= new_term
    with Client([leader], table="kv", partitions=4, timeout=20.0) as c:
        assert _read_all(c, values) == {}


def test_fault_injection_is_refused_unless_allowed(
    tmp_path_factory: pytest.TempPathFactory, cluster: Cluster
) -> None:
    from tests.multiprocess.harness import NodeProcess

    node = NodeProcess(tmp_path_factory.mktemp("nofault"), "solo", ["--memory", "--insecure"])
    node.spawn()
    try:
        node_id = node.wait_ready()
        from waraft.cli import admin

        assert admin.call(node_id, "set_fault", [cluster.ids[0]], [], []) == (
            "error",
            "fault_injection_disabled",
        )
    finally:
        node.kill()
