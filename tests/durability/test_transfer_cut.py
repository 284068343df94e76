"""A snapshot transfer cut off midway by kill -9 (issue 7, item 7: "a transfer cut off midway
is retried and completes").

A wiped follower is caught up by a snapshot of a partition holding several MiB, sent in small
chunks with one in flight so that the transfer lasts long enough to be interrupted. While the
file is half written in the receiver's transfer directory, kill -9 either

* the receiver, which is restarted: it is still ``stalled``, and the half-received directory is
  never installed; or
* the sender (the leader), which is restarted: a leader sends a new snapshot and the receiver's
  orphaned transfer times out without being installed.

Either way the follower ends up caught up by a complete snapshot (never the cut one), with
every acknowledged write in its own storage.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.durability.helpers import (
    Writers,
    client_for,
    cluster_of,
    local_mismatches,
    partition_dir,
    row_of,
    settled,
    strong_read_mismatches,
    wait_rejoined,
)
from tests.multiprocess.harness import Cluster, wait_until

PARTITIONS = (1,)
SETTINGS: dict[str, object] = {
    "raft_max_log_records_per_file": 20,
    "raft_max_log_records": 20,
    "raft_max_retained_entries": 200,
    "dist_transport_chunk_size": 8192,
    "dist_transport_max_inflight": 1,
    "dist_transport_ack_timeout_ms": 1000,
    "transport_idle_timeout_secs": 2,
    "raft_snapshot_catchup_failed_backoff_ms": 300,
    "raft_snapshot_catchup_completed_backoff_ms": 300,
}
BLOB = "v" * 4096
INSTALLED = "installed the snapshot"


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    yield from cluster_of(tmp_path_factory.mktemp("cut"), PARTITIONS, **SETTINGS)


def _load(cluster: Cluster, count: int) -> dict[str, str]:
    """``count`` keys with 4 KiB values: a snapshot of several MiB."""
    values = {f"big{i}": f"{i}{BLOB}" for i in range(count)}
    with client_for(cluster.ids, len(PARTITIONS)) as client:
        futures = [client.commit_async(k, ("write", "kv", k, v)) for k, v in values.items()]
        assert all(f is not None and f.result(60) == "ok" for f in futures)
    return values


def _half_received(receiver_dir: Path, sender_dir: Path) -> str | None:
    """The id of a transfer whose receiving directory holds less than half of the snapshot's
    data file (its largest file), if there is one."""
    sent = [p for p in sender_dir.glob("snapshot.*/*") if p.is_file()]
    if not sent:
        return None
    data = max(sent, key=lambda p: p.stat().st_size)
    for part in (receiver_dir / "transport").glob(f"*/{data.name}"):
        if 0 < part.stat().st_size < data.stat().st_size // 2:
            return part.parent.name
    return None


@pytest.mark.parametrize("cut", ["receiver", "sender"])
def test_a_snapshot_transfer_cut_by_kill9_is_retried_and_completes(
    cluster: Cluster, cut: str
) -> None:
    wait_until(cluster.converged, timeout=30)
    leader, _ = wait_until(lambda: cluster.leader(1))
    sender = cluster.index_of(leader)
    receiver = next(i for i in range(3) if i != sender)
    rnode, snode = cluster.nodes[receiver], cluster.nodes[sender]
    loaded = _load(cluster, 2000)
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        with Writers(client, "cut", threads=2) as writers:
            writers.wait_for(200)
            rnode.kill()
            installs = rnode.log_path.read_text().count(INSTALLED)
            shutil.rmtree(rnode.data_dir)
            cluster.start([receiver])
            cut_id = wait_until(
                lambda: _half_received(partition_dir(rnode, 1), partition_dir(snode, 1)),
                timeout=30,
                interval=0.01,
            )
            victim = rnode if cut == "receiver" else snode
            victim.kill()
            assert rnode.log_path.read_text().count(INSTALLED) == installs
            if cut == "receiver":
                # Restarted out of the leader's reach first, to see it is still stalled.
                others = [i for i in range(3) if i != receiver]
                for i in others:
                    assert cluster.admin(i, "set_fault", [rnode.node_id], [], []) == "ok"
                try:
                    cluster.start([receiver])
                    assert row_of(cluster, receiver, 1)["state"] == "stalled"
                finally:
                    for i in others:
                        assert cluster.admin(i, "clear_fault") == "ok"
            else:
                cluster.start([sender])
            acked = writers.snapshot()
            wait_rejoined(cluster, receiver, acked, timeout=60)
        acked = settled(cluster, writers)
        # A complete snapshot was installed (a second one may follow when the leader's log
        # moved past the first meanwhile), never the one that was cut.
        text = rnode.log_path.read_text()
        assert text.count(INSTALLED) > installs, text[-3000:]
        assert f"transport {cut_id}: raft_server_kv_1 {INSTALLED}" not in text, text[-3000:]
        assert f"transport {cut_id}: receiving" in text
        row = row_of(cluster, receiver, 1)
        assert row["state"] == "follower" and row["log_first"] > 1, row
        everything = {**loaded, **acked}
        assert local_mismatches(cluster.ids[receiver], everything, len(PARTITIONS)) == {}
        assert strong_read_mismatches(client, acked) == {}
    finally:
        client.close()


def _kill_during_catchup(cluster: Cluster, kills: int, seed: int) -> None:
    """Wipe a follower, then kill -9 it again and again at random moments of its catch-up
    (while the snapshot is made, sent, installed, or the log replayed after it), restarting
    it each time on what it had on disk; it ends up caught up, with every write."""
    import random

    rng = random.Random(seed)
    wait_until(cluster.converged, timeout=30)
    leader, _ = wait_until(lambda: cluster.leader(1))
    receiver = next(i for i in range(3) if cluster.ids[i] != leader)
    rnode = cluster.nodes[receiver]
    loaded = _load(cluster, 1000)
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        with Writers(client, "rk", threads=2) as writers:
            writers.wait_for(200)
            rnode.kill()
            shutil.rmtree(rnode.data_dir)
            for _ in range(kills):
                cluster.start([receiver])
                time.sleep(rng.uniform(0.0, 1.5))  # the kill lands at a random moment
                rnode.kill()
            cluster.start([receiver])
            acked = writers.snapshot()
            wait_rejoined(cluster, receiver, acked, timeout=60)
        acked = settled(cluster, writers)
        everything = {**loaded, **acked}
        assert local_mismatches(cluster.ids[receiver], everything, len(PARTITIONS)) == {}
        assert strong_read_mismatches(client, acked) == {}
        assert "quarantined" not in rnode.log_path.read_text()
    finally:
        client.close()


def test_a_follower_killed_at_random_moments_of_its_catchup_recovers(cluster: Cluster) -> None:
    _kill_during_catchup(cluster, kills=4, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_kills_during_catchup_soak(cluster: Cluster, seed: int) -> None:
    _kill_during_catchup(cluster, kills=12, seed=seed)
