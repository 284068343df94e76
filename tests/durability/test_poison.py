"""A committed entry that storage cannot apply must not take the partition down.

Regression test for a bug these tests found (fixed in 9ddc533): a client could commit a command
the KV storage does not know (``("bogus", "kv", "k")``); the leader appended and committed it,
and every replica's storage raised ``UnknownCommandError`` applying it. The storage actor
crashed, the partition restarted, reopened the durable log and applied the same entry again:
every replica crash-looped (terms climbing by the dozen) and the partition answered every
request ``not_leader`` for good. Now the entry's result is an error, the same on every replica.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.durability.helpers import client_for, cluster_of
from tests.multiprocess.harness import Cluster, wait_until


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    yield from cluster_of(tmp_path_factory.mktemp("poison"), (1,))


def test_an_unknown_command_from_a_client_does_not_take_the_partition_down(
    cluster: Cluster,
) -> None:
    wait_until(cluster.converged, timeout=30)
    with client_for(cluster.ids, 1) as client:
        result = client.commit("k", ("bogus", "kv", "k"), timeout=3)
        assert isinstance(result, tuple) and result[0] == "error", result
        # Later, well-formed writes are acknowledged (a restarted partition needs well under a
        # second to elect a leader with these election timeouts).
        assert client.commit("after", ("write", "kv", "after", 1), timeout=5) == "ok"
        assert client.read("after", ("read", "kv", "after"), timeout=5) == ("ok", 1)
    wait_until(cluster.converged, timeout=30)  # every replica applied it, none crashed
