"""Nodes of two deployments with the same node ids: one started on the earlier deployment's
data directory is never taken for a member of the new one (real node processes)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.multiprocess.harness import Cluster, wait_until
from waraft.cli import ops
from waraft.client import Client

OLD_KEYS = 40  # the old deployment's log is the longer one: it would win an election
NEW_KEYS = 5


def _write(ids: list[str], value: str, count: int) -> None:
    client = Client(ids, table="kv", partitions=1, timeout=20.0, attempt_timeout=2.0)
    try:
        for i in range(count):
            assert client.commit(f"k{i}", ("write", "kv", f"k{i}", value)) == "ok"
    finally:
        client.close()


def _reads(ids: list[str], count: int = OLD_KEYS) -> list[object]:
    client = Client(ids, table="kv", partitions=1, timeout=3.0, attempt_timeout=1.0)
    try:
        futures = [client.read_async(f"k{i}", ("read", "kv", f"k{i}")) for i in range(count)]
        return [f.result(10.0) for f in futures]
    finally:
        client.close()


def _reachable(cluster: Cluster, indices: tuple[int, ...] = (0, 1, 2)) -> bool:
    """Whether this process reaches the nodes (it saw the earlier ones with the same ids
    go down, and learns that they are up again from its next pings)."""
    from waraft import otp

    try:
        return all(cluster.admin(i, "ping", timeout=1.0) for i in indices)
    except otp.ExitError:
        return False


def _other_cluster_frames(cluster: Cluster, index: int) -> int:
    stats = cluster.admin(index, "dist_stats")
    return int(stats.get("rx_other_cluster", 0))


def test_a_node_on_an_earlier_deployments_data_dir_is_refused(
    tmp_path: Path, dist_node: str
) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = Cluster(tmp_path / "old", partitions=(1,))
    new = Cluster(tmp_path / "new", partitions=(1,))
    try:
        old.start()
        old.bootstrap()
        _write(old.ids, "old", OLD_KEYS)
        kind, old_id = old.admin(0, "cluster")
        assert (
            kind == "ok"
            and old_id
            and all(old.admin(i, "cluster") == ("ok", old_id) for i in range(3))
        )
        old.kill_all()

        # The same node ids again; n2 is started on the old deployment's data dir.
        for fresh, earlier in zip(new.nodes, old.nodes, strict=True):
            fresh.port = earlier.port
        new.nodes[1].data_dir = old.nodes[1].data_dir
        new.start()
        wait_until(lambda: _reachable(new))
        results = ops.bootstrap_cluster(new.ids, "kv", [1], timeout=10.0)
        assert results[0].error is not None and f"belong to cluster {old_id}" in results[0].error
        assert results[0].bootstrap == {}
        rows = new.rows()
        assert [rows[(new.ids[i], 1)]["state"] for i in (0, 2)] == ["stalled", "stalled"]
        assert [new.admin(i, "cluster") for i in (0, 2)] == [("ok", None), ("ok", None)]

        # With that node down, nothing is bootstrapped unless asked; then the others
        # bootstrap a cluster of their own ...
        new.nodes[1].kill()
        results = ops.bootstrap_cluster(new.ids, "kv", [1], timeout=10.0)
        assert results[0].bootstrap == {} and "--allow-unreachable" in str(results[0].error)
        assert [new.admin(i, "cluster") for i in (0, 2)] == [("ok", None), ("ok", None)]
        results = ops.bootstrap_cluster(new.ids, "kv", [1], timeout=10.0, allow_unreachable=True)
        # Done as asked (a leader without the unreachable node): a warning, not an error.
        assert results[0].error is None and "unreachable" in str(results[0].warning), results[0]
        assert results[0].leader in (new.ids[0], new.ids[2])
        _, new_id = new.admin(0, "cluster")
        assert new_id not in (None, old_id) and new.admin(2, "cluster") == ("ok", new_id)
        _write([new.ids[0], new.ids[2]], "new", NEW_KEYS)
        # ... and when it comes back, its connections are refused by both.
        new.nodes[1].spawn()
        new.nodes[1].wait_ready()
        wait_until(lambda: _reachable(new))
        wait_until(lambda: min(_other_cluster_frames(new, i) for i in (0, 2)) > 0)
        # Without its vote the two others are the only quorum: with one of them down there is
        # no leader, rather than one elected with the old deployment's longer log.
        leader = results[0].leader
        down = new.ids.index(str(leader))
        new.nodes[down].kill()
        time.sleep(3.0)  # several election timeouts
        survivor = 2 if down == 0 else 0
        rows = new.rows([new.ids[survivor], new.ids[1]])
        assert rows[(new.ids[survivor], 1)]["state"] != "leader", rows
        assert ("ok", "old") not in _reads([new.ids[survivor], new.ids[1]], 3)
        new.nodes[down].spawn()
        new.nodes[down].wait_ready()
        wait_until(lambda: _reachable(new))
        expected = [("ok", "new")] * NEW_KEYS + ["not_found"] * (OLD_KEYS - NEW_KEYS)
        wait_until(lambda: _reads([new.ids[0], new.ids[2]]) == expected, timeout=30.0)
    finally:
        old.kill_all()
        new.kill_all()
