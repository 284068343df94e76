"""Coalesced heartbeats between real node processes (issue 13): one frame per node pair per
heartbeat window carries the heartbeats (or answers) of many partitions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.multiprocess.conftest import make_cluster
from tests.multiprocess.harness import FAST_SETTINGS, Cluster, wait_until

PARTITIONS = tuple(range(1, 25))  # 8 led by each of the 3 nodes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    # Quiescence off: every partition heartbeats all the time, which is what is coalesced.
    yield from make_cluster(
        tmp_path_factory.mktemp("coalesce"), partitions=PARTITIONS, raft_quiesce_after_ms=0
    )


def _sent(cluster: Cluster, index: int) -> dict[str, Any]:
    stats: dict[str, Any] = cluster.admin(index, "heartbeat_stats")
    return stats


def test_one_frame_per_node_pair_carries_many_partitions(cluster: Cluster) -> None:
    wait_until(lambda: all(cluster.leader(p) for p in PARTITIONS))
    ids = cluster.ids
    before = [_sent(cluster, i) for i in range(3)]
    t0 = time.monotonic()
    time.sleep(3.0)
    after = [_sent(cluster, i) for i in range(3)]
    window = time.monotonic() - t0
    interval_s = FAST_SETTINGS["raft_heartbeat_interval_ms"] / 1000
    for i in range(3):
        for peer in ids:
            if peer == ids[i]:
                continue
            new = after[i]["sent"].get(peer, {"frames": 0, "rpcs": 0})
            old = before[i]["sent"].get(peer, {"frames": 0, "rpcs": 0})
            frames = new["frames"] - old["frames"]
            rpcs = new["rpcs"] - old["rpcs"]
            assert frames > 0, (ids[i], peer)
            # Per pair and heartbeat interval: a frame of heartbeats and one of answers at
            # most (plus scheduling jitter), however many partitions there are ...
            assert frames <= 3 * window / interval_s, (ids[i], peer, frames)
            # ... and each frame carries several partitions: 8 led + 8 answered per pair.
            assert rpcs / frames >= 4, (ids[i], peer, frames, rpcs)
        received = after[i]["received"]["frames"] - before[i]["received"]["frames"]
        assert received > 0


def test_appends_of_many_partitions_share_frames(cluster: Cluster) -> None:
    # Writes to every partition at once: the servers on a scheduler send their appends and
    # answers of one turn to a peer node as one frame (heartbeats.send_at_turn_end).
    from waraft.client import Client

    wait_until(lambda: all(cluster.leader(p) for p in PARTITIONS))
    before = [_sent(cluster, i)["turn"] for i in range(3)]
    client = Client(cluster.ids, table="kv", partitions=len(PARTITIONS), timeout=15.0)
    try:
        for round_ in range(5):
            futures = [
                client.commit_async(f"k{i}", ("write", "kv", f"k{i}", round_)) for i in range(240)
            ]
            assert all(f.result(20) == "ok" for f in futures)
    finally:
        client.close()
    after = [_sent(cluster, i)["turn"] for i in range(3)]
    frames = sum(a["frames"] - b["frames"] for a, b in zip(after, before, strict=True))
    batches = sum(a["batches"] - b["batches"] for a, b in zip(after, before, strict=True))
    assert frames > 0
    assert batches > frames, (frames, batches)  # some frames carried several partitions
