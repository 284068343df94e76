"""Catch-up by snapshot (issue 7, items 4 and 6): a replica the leader's log cannot bring back
gets a snapshot from the leader (file transport over ZeroMQ, ``snapshot_available``) and ends up
a follower whose own storage holds every acknowledged write.

The clusters here rotate their logs hard (``raft_max_log_records_per_file`` and
``raft_max_log_records`` of a few tens of entries, ``raft_max_retained_entries`` a few
hundred), so that after a few hundred entries written while a replica is away, the entries it
would need are gone from every log and replay alone cannot catch it up. Each test checks that
the catch-up really went through a snapshot: the replica's log starts past the beginning, and
its node logged the install.

* a follower whose data directory was deleted comes back ``stalled``, isolated by fault
  injection until that has been observed, then is caught up;
* a follower killed and restarted with its data intact, but far behind the trimmed logs, is
  caught up without losing anything it had;
* a brand-new empty node added to running partitions with ``adjust_config`` is caught up and,
  once made leader, serves strong reads.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.durability.helpers import (
    Writers,
    client_for,
    cluster_of,
    follower_of_all,
    leader_commits,
    local_mismatches,
    row_of,
    settled,
    strong_read_mismatches,
    wait_rejoined,
)
from tests.multiprocess.harness import Cluster, NodeProcess, wait_until
from waraft.client import Client
from waraft.core.types import Identity
from waraft.partition import server

PARTITIONS = (1, 2)
ROTATION: dict[str, object] = {
    "raft_max_log_records_per_file": 20,
    "raft_max_log_records": 20,
    "raft_max_retained_entries": 200,
}
INSTALLED = "installed the snapshot"


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    yield from cluster_of(tmp_path_factory.mktemp("catchup"), PARTITIONS, **ROTATION)


def _push_past_rotation(cluster: Cluster, writers: Writers, away: str, held: int) -> None:
    """Write until every leader's log starts beyond ``held``, the last index ``away`` holds
    (and beyond 300 in any case): the entries it lacks are trimmed away everywhere, so only a
    snapshot can bring it back."""
    writers.wait_for(200)

    def trimmed() -> bool:
        rows = cluster.rows([n for n in cluster.ids if n != away])
        firsts = [r["log_first"] for (n, p), r in rows.items() if r["state"] == "leader"]
        return len(firsts) == len(PARTITIONS) and min(firsts) > max(held + 1, 300)

    wait_until(trimmed, timeout=60)


def _log_last(cluster: Cluster, index: int) -> int:
    return max(int(row_of(cluster, index, p)["log_last"]) for p in PARTITIONS)


def _installs(node: NodeProcess) -> int:
    return node.log_path.read_text().count(INSTALLED)


def _isolate(cluster: Cluster, victim: int) -> None:
    """Every other node drops all traffic to and from ``victim`` (its id is stable across
    restarts, so this holds for the restarted process too)."""
    node = cluster.ids[victim]
    for i in range(len(cluster.ids)):
        if i != victim:
            assert cluster.admin(i, "set_fault", [node], [], []) == "ok"


def _heal(cluster: Cluster, victim: int) -> None:
    for i in range(len(cluster.ids)):
        if i != victim:
            assert cluster.admin(i, "clear_fault") == "ok"


def _check_snapshot_catchup(cluster: Cluster, index: int, installs_before: int) -> None:
    """The replica follows every partition and its node installed a snapshot of each."""
    node = cluster.nodes[index]
    rows = cluster.rows([cluster.ids[index]])
    for partition in PARTITIONS:
        row = rows[(cluster.ids[index], partition)]
        assert row["state"] == "follower", row
        assert row["log_first"] > 1, row  # its log restarted at a snapshot's position
    # The receiving transport manager logs each snapshot the partition's server installed.
    assert _installs(node) - installs_before >= len(PARTITIONS), node.log_tail()


def test_a_wiped_follower_comes_back_stalled_and_is_caught_up_by_a_snapshot(
    cluster: Cluster,
) -> None:
    victim = follower_of_all(cluster)
    node, victim_id = cluster.nodes[victim], cluster.ids[victim]
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        with Writers(client, "wipe") as writers:
            writers.wait_for(300)
            installs = _installs(node)
            node.kill()
            _push_past_rotation(cluster, writers, victim_id, 0)
            shutil.rmtree(node.data_dir)
            _isolate(cluster, victim)
            try:
                cluster.start([victim])
                for partition in PARTITIONS:
                    row = row_of(cluster, victim, partition)
                    assert row["state"] == "stalled", row
                    assert (row["log_last"], row["applied"]) == (0, 0), row
            finally:
                _heal(cluster, victim)
            acked = writers.snapshot()
            wait_rejoined(cluster, victim, acked)
            writers.wait_for(200)  # the cluster goes on committing with it
        acked = settled(cluster, writers)
        _check_snapshot_catchup(cluster, victim, installs)
        assert local_mismatches(victim_id, acked, len(PARTITIONS)) == {}
        assert strong_read_mismatches(client, acked) == {}
    finally:
        client.close()


def test_a_far_behind_follower_with_its_data_is_caught_up_by_a_snapshot(
    cluster: Cluster,
) -> None:
    victim = follower_of_all(cluster)
    node, victim_id = cluster.nodes[victim], cluster.ids[victim]
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        with Writers(client, "far") as writers:
            writers.wait_for(300)
            held = _log_last(cluster, victim)
            installs = _installs(node)
            node.kill()
            _push_past_rotation(cluster, writers, victim_id, held)
            cluster.start([victim])
            acked = writers.snapshot()
            wait_rejoined(cluster, victim, acked)
        acked = settled(cluster, writers)
        _check_snapshot_catchup(cluster, victim, installs)
        assert local_mismatches(victim_id, acked, len(PARTITIONS)) == {}
        assert strong_read_mismatches(client, acked) == {}
    finally:
        client.close()


def _add_member(cluster: Cluster, partition: int, node: str) -> Any:
    """``adjust_config(("add", node))`` at the partition's leader (retried if leadership
    moves meanwhile)."""
    name = server.default_name("kv", partition)

    def add() -> Any:
        leader, _ = wait_until(lambda: cluster.leader(partition, cluster.ids[:3]))
        result = server.adjust_config((name, leader), ("add", Identity(name, node)))
        return result if isinstance(result, tuple) and result[0] == "ok" else None

    return wait_until(add, timeout=20)


def test_a_brand_new_node_added_to_running_partitions_is_caught_up_and_serves(
    cluster: Cluster,
) -> None:
    wait_until(cluster.converged, timeout=30)
    client = client_for(cluster.ids, len(PARTITIONS))
    newcomer = NodeProcess(cluster.root, "n4", cluster.nodes[0].extra)
    try:
        with Writers(client, "new") as writers:
            _push_past_rotation(cluster, writers, "", 0)
            newcomer.spawn()
            new_id = newcomer.wait_ready()
            cluster.nodes.append(newcomer)
            for partition in PARTITIONS:
                row = row_of(cluster, 3, partition)
                assert row["state"] == "stalled" and row["log_last"] == 0, row
                assert new_id not in row["members"]
            for partition in PARTITIONS:
                _add_member(cluster, partition, new_id)
            acked = writers.snapshot()
            wait_rejoined(cluster, 3, acked)
        acked = settled(cluster, writers)
        _check_snapshot_catchup(cluster, 3, 0)
        for (node, _), row in cluster.rows().items():
            assert new_id in row["members"] and len(row["members"]) == 4, (node, row)
        assert local_mismatches(new_id, acked, len(PARTITIONS)) == {}
        # It serves: made leader of partition 1, it answers strong reads and commits through
        # a client that knows only it.
        name = server.default_name("kv", 1)
        leader, _ = wait_until(lambda: cluster.leader(1))
        server.handover((name, leader), new_id)
        wait_until(lambda: (cluster.leader(1) or ("",))[0] == new_id, timeout=20)
        assert leader_commits(cluster)[1] > 0
        with Client([new_id], table="kv", partitions=len(PARTITIONS), timeout=20.0,
                    discover=False) as only_new:  # fmt: skip
            keys = {k: v for k, v in acked.items() if only_new.partition_of(k) == 1}
            assert strong_read_mismatches(only_new, keys) == {}
            assert only_new.commit("after-join", ("write", "kv", "after-join", 7)) == "ok"
            assert only_new.read("after-join", ("read", "kv", "after-join")) == ("ok", 7)
    finally:
        client.close()
        newcomer.kill()
