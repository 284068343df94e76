"""What ``waraft.client`` answers when an attempt goes unanswered, against real nodes: never an
error that says "not applied" for a commit that may have been, and no cached leader kept for
good when it stops answering."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.multiprocess.conftest import make_cluster
from tests.multiprocess.harness import Cluster, wait_until
from waraft import client as client_module
from waraft import distribution as dist
from waraft.client import NO_SUCH_PARTITION, Client
from waraft.services.codec import MAX_UNTRUSTED_OBJECTS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path_factory.mktemp("outcomes"), partitions=(1,))


def _leader(cluster: Cluster) -> str:
    found = wait_until(lambda: cluster.leader(1))
    return str(found[0])


def test_a_commit_whose_attempt_went_unanswered_is_a_timeout_not_another_nodes_error(
    cluster: Cluster,
) -> None:
    # The leader applies each commit but its replies never reach this process; the retries go
    # to followers, which answer not_leader. Answering that at the deadline told the caller
    # the commit was not applied (a review resubmitted them and got each one twice).
    client = Client(
        cluster.ids, table="kv", partitions=1, timeout=2.0, attempt_timeout=0.3,
        sessions=True, discover=False,
    )  # fmt: skip
    try:
        assert client.commit(1, ("append", "kv", "L", "warm")) == "ok"
        answers = {}
        for i in range(3):
            lead = _leader(cluster)
            dist.set_fault(inbound=[lead])
            try:
                answers[f"v{i}"] = client.commit(1, ("append", "kv", "L", f"v{i}"))
            finally:
                dist.clear_fault()
            time.sleep(1.0)  # this process sees the leader up again
        applied = wait_until(lambda: client.read(1, ("read", "kv", "L"), timeout=5.0))[1]
        assert applied[0] == "warm" and set(applied[1:]) <= set(answers)
        assert answers == dict.fromkeys(answers, ("error", "timeout")), answers
        assert len(applied) > 1, "no commit reached the leader: the test proved nothing"
    finally:
        client.close()


def test_a_leader_that_answers_nothing_is_not_cached_for_good(cluster: Cluster) -> None:
    # Callers' timeouts below the attempt timeout never failed the node, so the client kept
    # the old leader, cut off from its followers (no check-quorum), and every commit timed out.
    client = Client(cluster.ids, table="kv", partitions=1, timeout=1.0, discover=False)
    old = _leader(cluster)
    others = [n for n in cluster.ids if n != old]
    try:
        assert client.commit(1, ("write", "kv", "a", 0)) == "ok"
        cluster.admin(cluster.index_of(old), "set_fault", others)
        wait_until(lambda: cluster.leader(1, others))
        ok = 0
        deadline = time.monotonic() + 20.0
        while ok < 5 and time.monotonic() < deadline:
            ok += client.commit(1, ("write", "kv", "a", ok)) == "ok"
        assert ok == 5, client.stats()
        assert client.stats()["silent_leaders"] >= 1
    finally:
        cluster.admin(cluster.index_of(old), "clear_fault")
        client.close()


@pytest.mark.parametrize("pack", [True, False])
def test_a_command_msgpack_cannot_encode_is_refused_and_its_frame_mates_are_sent(
    cluster: Cluster, pack: bool
) -> None:
    # The sender re-sent a frame that did not encode until the deadline, and answered
    # ``timeout`` (which says "may have been applied") to it and to every request in the
    # same frame.
    client = Client(cluster.ids, table="kv", partitions=1, timeout=5.0, pack=pack)
    try:
        assert client.commit(1, ("write", "kv", "warm", 0)) == "ok"  # the leader is known
        started = time.monotonic()
        futures = client.commit_many(
            [
                (1, ("write", "kv", f"{pack}a", 1)),
                (1, ("write", "kv", f"{pack}bad", {1, 2})),  # a set: msgpack has none
                (1, ("write", "kv", f"{pack}c", 3)),
            ]
        )
        results = [f.result(10) for f in futures]
        assert results[0] == results[2] == "ok", results
        assert results[1][0] == "error" and results[1][1][0] == "badarg", results
        assert "cannot be encoded" in results[1][1][1]
        assert time.monotonic() - started < 2.0  # answered, not timed out
        assert client.read(1, ("read", "kv", f"{pack}c")) == ("ok", 3)
        assert client.read(1, ("read", "kv", f"{pack}bad")) == "not_found"
    finally:
        client.close()


@pytest.mark.parametrize("pack", [True, False])
def test_a_command_over_the_nodes_value_limit_is_refused_and_big_batches_are_split(
    cluster: Cluster, pack: bool
) -> None:
    # Nodes refuse a frame (and replicas a $batch) of more than MAX_UNTRUSTED_OBJECTS msgpack
    # values. The client sent it anyway: a lone command that large ended as a timeout after
    # retries until the deadline, and honest commands sharing a frame with it, or a frame of
    # many commands that were each well under the limit, went the same way.
    limit = MAX_UNTRUSTED_OBJECTS
    client = Client(cluster.ids, table="kv", partitions=1, timeout=20.0, pack=pack)
    try:
        assert client.commit(1, ("write", "kv", "warm", 0)) == "ok"
        started = time.monotonic()
        futures = client.commit_many(
            [
                (1, ("write", "kv", f"{pack}a", 1)),
                (1, ("write", "kv", f"{pack}huge", [0] * (limit + 10))),
                (1, ("write", "kv", f"{pack}c", 3)),
            ]
        )
        results = [f.result(30) for f in futures]
        assert results[0] == results[2] == "ok", results
        assert results[1][0] == "error" and results[1][1][0] == "badarg", results
        assert "msgpack values" in results[1][1][1]
        assert time.monotonic() - started < 10.0  # answered, not timed out
        assert client.read(1, ("read", "kv", f"{pack}huge")) == "not_found"
        # Three commands of 0.4 limit each: under the limit one by one, over it together.
        share = [0] * (limit * 4 // 10)
        futures = client.commit_many([(1, ("write", "kv", f"{pack}s{i}", share)) for i in range(3)])
        assert [f.result(30) for f in futures] == ["ok"] * 3
        found = client.read(1, ("read", "kv", f"{pack}s2"))
        assert found[0] == "ok" and len(found[1]) == len(share)
    finally:
        client.close()


def test_a_partition_no_node_runs_ends_no_such_partition_not_timeout(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The nodes dropped a batch to an acceptor nobody had: a mistyped table or a partition
    # past the table's waited out the caller's whole deadline and ended "timeout", which
    # also reads as "maybe applied" (two reviews' finding).
    beyond = Client(cluster.ids, table="kv", partitions=2, timeout=10.0, discover=False)
    mistyped = Client(cluster.ids, table="kvv", partitions=1, timeout=10.0, discover=False)
    try:
        assert beyond.commit(1, ("write", "kv", "served", 1)) == "ok"
        # Right after their partitions started, nodes leave such batches unanswered (another
        # partition may be on its way: acceptor.STARTUP_GRACE); reads may ask again.
        wait_until(lambda: beyond.read(2, ("read", "kv", "a"), timeout=1.0) == NO_SUCH_PARTITION)
        assert beyond.commit(2, ("write", "kv", "a", 1)) == NO_SUCH_PARTITION
        assert beyond.read(2, ("read", "kv", "a")) == NO_SUCH_PARTITION
        assert mistyped.commit(1, ("write", "kvv", "a", 1)) == NO_SUCH_PARTITION
        assert beyond.stats()["no_such_partition"] >= 3
        assert beyond.commit(1, ("write", "kv", "served", 2)) == "ok"  # the others still work
        answered = sum(cluster.admin(i, "dist_stats").get("rx_unserved", 0) for i in range(3))
        assert answered >= 3  # every node was asked before the client gave up
        # The answers are forgotten once they expire, by the sender's own scans: the map does
        # not keep every (partition, node) that ever answered so.
        monkeypatch.setattr(client_module, "UNSERVED_FOR", 0.2)
        assert beyond.commit(2, ("write", "kv", "a", 1)) == NO_SUCH_PARTITION
        assert beyond._unserved
        wait_until(
            lambda: beyond.commit(1, ("write", "kv", "x", 1)) == "ok" and not beyond._unserved
        )
    finally:
        beyond.close()
        mistyped.close()
