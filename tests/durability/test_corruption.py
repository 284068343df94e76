"""Damaged log segment files at the node level (issue 7, items 1 and 7).

A follower is killed with SIGKILL and one of its segment files is damaged before it restarts:

* a byte flipped in the middle of a record that has valid records after it (in an older
  segment, and inside the last one) is corruption: the partition comes up ``disabled`` with a
  reason naming the log corruption; it neither applies, nor accepts entries, nor votes (with
  the healthy replica of the other node gone, no leader can be elected), while the rest of the
  cluster goes on committing; with its data directory moved away it is caught up again;
* the last record cut short (a torn tail, as a crash mid-write leaves it) is repaired on open
  (cut, with a warning) and the node rejoins with every acknowledged write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.durability.helpers import (
    DISK_LOG,
    RECORD_HEADER,
    Writers,
    client_for,
    cluster_of,
    flip_byte,
    follower_of_all,
    local_mismatches,
    partition_dir,
    records,
    row_of,
    segments,
    settled,
    strong_read_mismatches,
    wait_local_complete,
    wait_rejoined,
)
from tests.multiprocess.harness import Cluster, wait_until

PARTITIONS = (1, 2)
# Small segment files (a few tens of records each) so that a replica has several of them.
SEGMENTS: dict[str, object] = {"raft_max_log_records_per_file": 40, **DISK_LOG}


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    yield from cluster_of(tmp_path_factory.mktemp("corrupt"), PARTITIONS, **SEGMENTS)


def _fill(cluster: Cluster, writers: Writers, victim: int) -> None:
    """Write until the victim's log of every partition spans several segment files."""
    writers.wait_for(500)

    def spans() -> bool:
        return all(len(segments(cluster.nodes[victim], p)) >= 3 for p in PARTITIONS)

    wait_until(spans, timeout=60)


def _flip_inside(path: Path, which: str) -> int:
    """Flip a byte in the middle of the payload of a record that is followed by valid ones;
    returns the file offset of the record."""
    found = records(path)
    assert len(found) >= 3, (path, found)
    offset, length = found[len(found) // 2] if which == "middle" else found[0]
    flip_byte(path, offset + RECORD_HEADER.size + (length - RECORD_HEADER.size) // 2)
    return offset


def test_a_flipped_byte_disables_the_partition_which_neither_serves_nor_votes(
    cluster: Cluster,
) -> None:
    victim = follower_of_all(cluster)
    node = cluster.nodes[victim]
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        with Writers(client, "c") as writers:
            _fill(cluster, writers, victim)
            node.kill()
            # Partition 1: an older segment (never a tail); partition 2: the last segment, a
            # record with valid records after it (so not a torn tail either).
            older = segments(node, 1)[-2]
            _flip_inside(older, "middle")
            last = segments(node, 2)[-1]
            if len(records(last)) < 3:
                last = segments(node, 2)[-2]
            _flip_inside(last, "first")
            cluster.start([victim])
            before = {p: row_of(cluster, victim, p) for p in PARTITIONS}
            for partition, damaged in ((1, older), (2, last)):
                row = before[partition]
                assert row["state"] == "disabled", row
                reason = str(row["disable_reason"])
                assert "log_corruption" in reason and damaged.name in reason, reason
            # The rest of the cluster goes on committing.
            writers.wait_for(500, timeout=40)
        assert writers.unexpected == []
        acked = writers.snapshot()
        assert strong_read_mismatches(client, acked) == {}
        # The disabled replicas took no part: nothing appended, applied or committed.
        for partition in PARTITIONS:
            row = row_of(cluster, victim, partition)
            assert row["state"] == "disabled", row
            for field in ("log_last", "applied", "commit", "term"):
                assert row[field] == before[partition][field], (field, row, before[partition])
        # The corrupt file is left for inspection.
        assert older.exists() and last.exists()
        assert "is corrupt and quarantined" in node.log_path.read_text()
        _no_leader_without_the_disabled_vote(cluster, victim)
        _recover_by_wiping(cluster, victim, acked)
    finally:
        client.close()


def _no_leader_without_the_disabled_vote(cluster: Cluster, victim: int) -> None:
    """Kill the leader of partition 1: the last healthy replica needs the disabled one's vote
    to win an election, and must never get it."""
    healthy = [n for i, n in enumerate(cluster.ids) if i != victim]
    leader, _ = wait_until(lambda: cluster.leader(1, healthy))
    was = row_of(cluster, victim, 1)
    cluster.nodes[cluster.index_of(leader)].kill()
    left = [n for n in cluster.ids if n != leader]
    # Several election timeouts (300-600 ms here): an election would have been won by now.
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        rows = cluster.rows(left)
        for node in left:
            row = rows.get((node, 1))
            assert row is None or row["state"] != "leader", row
        time.sleep(0.1)
    # Its term and vote never moved: it answered no (pre-)vote request.
    disabled = row_of(cluster, victim, 1)
    assert disabled["state"] == "disabled", disabled
    assert (disabled["term"], disabled["voted_for"]) == (was["term"], was["voted_for"]), disabled


def _recover_by_wiping(cluster: Cluster, victim: int, acked: dict[str, int]) -> None:
    """The documented way out (``waraft.log``): restart the killed leader, move the corrupt
    replica's data away and start it again: it comes back stalled and a snapshot catches it
    up."""
    node = cluster.nodes[victim]
    cluster.start([i for i, n in enumerate(cluster.nodes) if not n.alive()])
    node.kill()
    node.data_dir.rename(node.data_dir.with_name(node.name + ".corrupt"))
    cluster.start([victim])
    wait_rejoined(cluster, victim, acked)
    assert "installed the snapshot" in node.log_path.read_text()


def _tear(path: Path, keep_of_last: int) -> int:
    """Cut the file inside its last record, keeping ``keep_of_last`` bytes of it."""
    offset, length = records(path)[-1]
    assert 0 < keep_of_last < length
    os.truncate(path, offset + keep_of_last)
    return offset


def test_a_torn_tail_is_cut_silently_and_the_node_rejoins(cluster: Cluster) -> None:
    victim = follower_of_all(cluster)
    node, victim_id = cluster.nodes[victim], cluster.ids[victim]
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        with Writers(client, "t") as writers:
            _fill(cluster, writers, victim)
            node.kill()
            # A record cut inside its payload, and one cut inside its header.
            _tear(segments(node, 1)[-1], RECORD_HEADER.size + 3)
            _tear(segments(node, 2)[-1], 5)
            cluster.start([victim])
            acked = writers.snapshot()
            wait_rejoined(cluster, victim, acked)
            writers.wait_for(300)
        acked = settled(cluster, writers)
        text = node.log_path.read_text()
        assert text.count("cutting the torn tail") == len(PARTITIONS), node.log_tail()
        assert "quarantined" not in text
        for partition in PARTITIONS:
            assert row_of(cluster, victim, partition)["state"] == "follower"
        assert local_mismatches(victim_id, acked, len(PARTITIONS)) == {}
        assert strong_read_mismatches(client, acked) == {}
    finally:
        client.close()


def test_a_corrupt_term_and_vote_file_disables_only_its_partition(cluster: Cluster) -> None:
    # A replica that cannot trust its term and vote must not vote (it could vote twice in a
    # term); the node's other partitions are unaffected.
    victim = follower_of_all(cluster)
    node, victim_id = cluster.nodes[victim], cluster.ids[victim]
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        with Writers(client, "s") as writers:
            writers.wait_for(300)
            node.kill()
            state = partition_dir(node, 1) / "state"
            flip_byte(state, state.stat().st_size - 1)
            cluster.start([victim])
            row = row_of(cluster, victim, 1)
            assert row["state"] == "disabled", row
            assert "durable_state_error" in str(row["disable_reason"]), row
            writers.wait_for(300)
        acked = writers.snapshot()
        others = {k: v for k, v in acked.items() if client.partition_of(k) == 2}
        wait_local_complete(victim_id, others, len(PARTITIONS))
        assert row_of(cluster, victim, 2)["state"] == "follower"
        assert row_of(cluster, victim, 1)["state"] == "disabled"
        assert strong_read_mismatches(client, acked) == {}
    finally:
        client.close()
