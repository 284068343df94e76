"""A committed entry that storage cannot apply, replayed from the durable log forever.

Found while building these tests: a client can commit a command the KV storage does not know
(``("bogus", "kv", "k")``). The acceptor admits it, the leader appends and commits it, and every
replica's storage raises ``UnknownCommandError`` applying it. The storage actor crashes, the
partition restarts (``one_for_all``), reopens the log, and applies the same committed entry
again: every replica crash-loops (terms climb by the dozen as short-lived leaders apply the
entry and crash), and the partition answers every request ``not_leader`` until an operator
removes the entry by hand. WARaft crashes its
storage on unknown commands too (digest §5, provider docstring), but with a durable log nothing
ever clears the entry, so one bad request from any client takes a partition down for good.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.durability.helpers import client_for, cluster_of
from tests.multiprocess.harness import Cluster, wait_until


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    yield from cluster_of(tmp_path_factory.mktemp("poison"), (1,))


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a committed command unknown to storage (e.g. ('bogus', 'kv', 'k') from any "
    "client) crash-loops the storage of every replica forever (UnknownCommandError on apply, "
    "partition restart, the same entry re-applied from the durable log): the partition never "
    "serves again (every request: not_leader). Validate commands at admission (acceptor) or "
    "have storage answer ('error', ('unknown_command', ...)) for the entry instead of raising.",
)
def test_an_unknown_command_from_a_client_does_not_take_the_partition_down(
    cluster: Cluster,
) -> None:
    wait_until(cluster.converged, timeout=30)
    with client_for(cluster.ids, 1) as client:
        result = client.commit("k", ("bogus", "kv", "k"), timeout=3)
        assert result != "ok"  # an error for the bad command is fine; the partition must live
        # Later, well-formed writes are acknowledged (a restarted partition needs well under a
        # second to elect a leader with these election timeouts).
        assert client.commit("after", ("write", "kv", "after", 1), timeout=5) == "ok"
        assert client.read("after", ("read", "kv", "after"), timeout=5) == ("ok", 1)
