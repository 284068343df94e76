"""A 5-node cluster of real processes: elections, replication and strong reads, and service
with two nodes killed (a majority of three survives)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.multiprocess.conftest import make_cluster
from tests.multiprocess.harness import Cluster, wait_until
from waraft.client import Client


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path_factory.mktemp("five"), size=5, partitions=(1, 2))


def test_five_nodes_elect_replicate_and_survive_two_failures(cluster: Cluster) -> None:
    for partition in cluster.partitions:
        leader, _ = wait_until(lambda p=partition: cluster.leader(p))
        assert leader == cluster.ids[partition - 1]  # spread round-robin by bootstrap
    with Client(cluster.ids, table="kv", partitions=2, timeout=20.0, attempt_timeout=2.0) as c:
        values = {f"five{i}": i for i in range(100)}
        futures = [c.commit_async(k, ("write", "kv", k, v)) for k, v in values.items()]
        assert [f.result(30) for f in futures] == ["ok"] * 100
        wait_until(cluster.converged)
        rows = cluster.rows()
        assert len(rows) == 5 * 2
        # Kill both partitions' leaders: three of five remain, a majority.
        victims = [cluster.index_of(wait_until(lambda p=p: cluster.leader(p))[0]) for p in (1, 2)]
        for index in victims:
            cluster.nodes[index].kill()
        survivors = [n for i, n in enumerate(cluster.ids) if i not in victims]
        for partition in cluster.partitions:
            wait_until(lambda p=partition: cluster.leader(p, survivors))
        more = {f"five-after{i}": i for i in range(50)}
        futures = [c.commit_async(k, ("write", "kv", k, v)) for k, v in more.items()]
        assert [f.result(30) for f in futures] == ["ok"] * 50
        everything = {**values, **more}
        reads = [c.read_async(k, ("read", "kv", k)) for k in everything]
        assert [f.result(30) for f in reads] == [("ok", v) for v in everything.values()]
        wait_until(lambda: cluster.converged(survivors))
