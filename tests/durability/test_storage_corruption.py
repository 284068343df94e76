"""A damaged value in the node's LMDB storage (issue 14): never served, quarantined, repaired.

Three real node processes with the default durable providers (the node-wide WAL and the
node-wide LMDB environment). A byte is flipped inside every stored copy of one value in one
replica's ``storage-lmdb/data.mdb``:

* while the node is down (the issue's attack: the replica used to start normally and, once
  leader, serve the damaged value through a linearizable read): the partition's database fails
  its checksum scan at start, is emptied and quarantined, comes up stalled (no reads, no votes),
  is repaired by the leader's snapshot, and once it leads again serves the right value;
* while the node runs and leads the partition (LMDB reads through a shared mapping of the file,
  so the damage shows at once): the strong read that meets it gets an error, never the damaged
  value; the partition restarts, is quarantined and repaired the same way.

The node's other partition is untouched in both cases.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.durability.helpers import (
    TABLE,
    client_for,
    cluster_of,
    row_of,
    wait_local_complete,
    wait_rejoined,
)
from tests.multiprocess.harness import Cluster, NodeProcess, wait_until
from waraft.client import Client, partition_for

PARTITIONS = (1, 2)
SECRET = "the-precious-value-" + "0123456789abcdef" * 2
KEY = "precious"


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    yield from cluster_of(tmp_path_factory.mktemp("lmdbcorrupt"), PARTITIONS)


def _data_file(node: NodeProcess) -> Path:
    return node.data_dir / "storage-lmdb" / "data.mdb"


def _written_back(node: NodeProcess) -> None:
    """Wait until the precious value is in the node's LMDB file: an applied row sits in the
    partition's write-back buffer for up to ``lmdb_flush_interval_ms`` first (the WAL holds
    it meanwhile)."""
    wait_until(lambda: SECRET.encode() in _data_file(node).read_bytes(), timeout=30)
    # Its page is written before the meta page that commits it: a kill in between leaves it
    # in a page no tree reaches, the flip damages nothing, and nothing is quarantined (one
    # fresh-clone CI run). A commit's writes take milliseconds.
    time.sleep(0.5)


def _flip_every_copy(path: Path, needle: bytes) -> int:
    """Flip one byte in the middle of every copy of ``needle`` (LMDB copies pages on write,
    so stale copies may be there too), one byte write each; returns how many."""
    data = path.read_bytes()
    offsets = []
    at = data.find(needle)
    while at >= 0:
        offsets.append(at + len(needle) // 2)
        at = data.find(needle, at + 1)
    with path.open("r+b") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(bytes([data[offset] ^ 0x20]))
        f.flush()
    return len(offsets)


def _fill(client: Client) -> dict[str, Any]:
    """Some writes in both partitions, then the precious value."""
    expected: dict[str, Any] = {f"k{i}": i for i in range(200)}
    futures = [client.commit_async(k, ("write", TABLE, k, v)) for k, v in expected.items()]
    assert all(f is not None and f.result(30) == "ok" for f in futures)
    assert client.commit(KEY, ("write", TABLE, KEY, SECRET)) == "ok"
    expected[KEY] = SECRET
    return expected


def _is_damaged(result: Any) -> bool:
    """A read result carrying some value other than the precious one."""
    return type(result) is tuple and len(result) == 2 and result[0] == "ok" and result[1] != SECRET


def _lead(cluster: Cluster, index: int, partition: int) -> None:
    """Make node ``index`` the leader of ``partition`` (a handover from the current leader)."""
    from waraft import server

    name = server.default_name(TABLE, partition)
    wanted = cluster.ids[index]

    def leads() -> bool:
        found = cluster.leader(partition)
        if found is None:
            return False
        if found[0] == wanted:
            return True
        with contextlib.suppress(Exception):  # a leader that just changed: try again
            server.handover((name, found[0]), wanted)
        time.sleep(0.3)
        return False

    wait_until(leads, timeout=30)


def _fill_and_find_the_keys_leader(
    cluster: Cluster, client: Client
) -> tuple[dict[str, Any], int, int]:
    """``_fill``, then the partition of the precious value and the index of its leader, once
    that leader applied every write."""
    expected = _fill(client)
    partition = partition_for(KEY, len(PARTITIONS))
    leader, _ = wait_until(lambda: cluster.leader(partition), timeout=30)
    wait_local_complete(leader, expected, len(PARTITIONS))
    return expected, partition, cluster.index_of(leader)


def _repaired(cluster: Cluster, index: int, expected: dict[str, Any], client: Client) -> None:
    node = cluster.nodes[index]
    wait_rejoined(cluster, index, expected)
    text = node.log_path.read_text()
    assert text.count("is corrupt and quarantined") == 1, node.log_tail()
    assert "repaired by the snapshot" in text, node.log_tail()
    for partition in PARTITIONS:
        assert row_of(cluster, index, partition)["storage_quarantine"] is None
    # Leading again, it serves the right value through a linearizable read.
    _lead(cluster, index, partition_for(KEY, len(PARTITIONS)))
    assert client.read(KEY, ("read", TABLE, KEY)) == ("ok", SECRET)


def test_damage_found_at_start_is_quarantined_and_repaired(cluster: Cluster) -> None:
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        expected, partition, victim = _fill_and_find_the_keys_leader(cluster, client)
        node = cluster.nodes[victim]
        _written_back(node)
        node.kill()
        assert _flip_every_copy(_data_file(node), SECRET.encode()) >= 1
        cluster.start([victim])
        # Quarantined: stalled (neither serving nor voting) with the reason, until repaired.
        seen: list[Any] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            row = row_of(cluster, victim, partition)
            seen.append((row["state"], row["storage_quarantine"]))
            assert row["state"] != "leader" or row["storage_quarantine"] is None, row
            assert not _is_damaged(client.read(KEY, ("read", TABLE, KEY)))
            if row["state"] == "follower":
                break
            time.sleep(0.05)
        quarantined = [s for s in seen if s[1] is not None]
        assert all(state == "stalled" for state, _ in quarantined), seen
        assert "checksum mismatch" in node.log_path.read_text()
        _repaired(cluster, victim, expected, client)
    finally:
        client.close()


def test_damage_met_by_a_leaders_read_is_never_served(cluster: Cluster) -> None:
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        expected, _, victim = _fill_and_find_the_keys_leader(cluster, client)
        node = cluster.nodes[victim]
        _written_back(node)
        assert _flip_every_copy(_data_file(node), SECRET.encode()) >= 1
        results = [client.read(KEY, ("read", TABLE, KEY)) for _ in range(20)]
        assert not any(_is_damaged(r) for r in results), results
        assert node.alive()  # the partition restarted, not the node
        wait_until(lambda: "is corrupt and quarantined" in node.log_path.read_text(), timeout=30)
        assert "damaged data, crashing" in node.log_path.read_text()
        _repaired(cluster, victim, expected, client)
    finally:
        client.close()
