"""What ``waraft.client`` answers when an attempt goes unanswered, against real nodes: never an
error that says "not applied" for a commit that may have been, and no cached leader kept for
good when it stops answering."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from tests.multiprocess.conftest import make_cluster
from tests.multiprocess.harness import Cluster, child_env, wait_until
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


# A client process whose distribution carries frames of at most FRAME_LIMIT bytes (the nodes
# take 16 MiB): what it sends and is answered, and its own counters, as JSON on stdout.
FRAME_LIMIT = 1 << 20
_BIG_VALUES_CLIENT = textwrap.dedent(
    """
    import json, sys, time
    from waraft import distribution as dist
    from waraft.client import Client

    nodes, limit, pack = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3] == "True"
    tag = "p" if pack else "u"

    def value(i, size=limit // 16):
        return bytes([i % 251]) * size

    out = {}
    options = {"max_frame_bytes": limit}
    with Client(nodes, table="kv", partitions=1, timeout=30.0, pack=pack,
                dist_options=options) as c:
        # First thing sent: sized before any frame of the partition was measured.
        first = c.commit_many([(1, ("write", "kv", f"{tag}a{i}", value(i))) for i in range(80)])
        out["first"] = [f.result(60) for f in first]
        # After frames of small commands: the measure says small, the burst is large.
        small = [c.commit_async(1, ("write", "kv", f"{tag}s{i}", i)) for i in range(50)]
        out["small"] = [f.result(60) for f in small]
        burst = [(1, ("write", "kv", f"{tag}s{i}", i)) for i in range(3)]
        burst += [(1, ("write", "kv", f"{tag}b{i}", value(i))) for i in range(48)]
        out["burst"] = [f.result(60) for f in c.commit_many(burst)]
        # Many in flight at once, one at a time, half a frame each.
        futures = [c.commit_async(1, ("write", "kv", f"{tag}h{i}", value(i, limit // 2)))
                   for i in range(12)]
        out["halves"] = [f.result(60) for f in futures]
        # One command alone fills nearly a whole frame; one more than a frame never goes.
        out["whole"] = c.commit(1, ("write", "kv", f"{tag}whole", value(7, limit - 4096)))
        started = time.monotonic()
        mates = c.commit_many([
            (1, ("write", "kv", f"{tag}m1", 1)),
            (1, ("write", "kv", f"{tag}over", value(9, limit + 1))),
            (1, ("write", "kv", f"{tag}m2", 2)),
        ], timeout=10.0)
        out["mates"] = [f.result(30) for f in mates]
        out["mates_s"] = time.monotonic() - started
        out["client"] = c.stats()
        out["dist"] = dist.stats()
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("pack", [True, False])
def test_large_values_go_in_frames_within_the_limit_and_one_over_it_is_refused(
    cluster: Cluster, pack: bool
) -> None:
    # With 1 MiB values and 300 in flight, the client packed 17-60 MB of one partition's
    # requests into one frame: distribution dropped it over its 16 MiB limit ("dropped a
    # 46138431-byte frame"), the cast's False marked the node failed, its leaders were
    # forgotten and every request retried with backoff. A lone command over the limit was
    # re-sent and dropped until its deadline.
    command = [sys.executable, "-c", _BIG_VALUES_CLIENT, ",".join(cluster.ids)]
    run = subprocess.run(
        [*command, str(FRAME_LIMIT), str(pack)],
        capture_output=True, text=True, timeout=240, env=child_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    # Nothing was dropped for its size, and no node was taken for failed.
    assert out["dist"].get("tx_oversized", 0) == 0, out["dist"]
    assert out["client"]["send_failures"] == 0, out["client"]
    assert "dropped a" not in run.stderr
    for phase in ("first", "small", "burst", "halves"):
        assert out[phase] == ["ok"] * len(out[phase]), (phase, out[phase])
    assert out["whole"] == "ok"
    assert out["mates"][0] == out["mates"][2] == "ok", out["mates"]
    over = out["mates"][1]
    assert over[0] == "error" and over[1][0] == "badarg", over
    assert "max_frame_bytes" in over[1][1] and f"{FRAME_LIMIT:,}" in over[1][1], over
    assert out["mates_s"] < 5.0  # answered at once, not retried until the deadline
    # What was written is there, whole.
    tag = "p" if pack else "u"
    client = Client(cluster.ids, table="kv", partitions=1, timeout=20.0)
    try:
        for key, size, i in (("a79", 16, 79), ("b3", 16, 3), ("h11", 2, 11)):
            assert client.read(1, ("read", "kv", f"{tag}{key}")) == (
                "ok", bytes([i % 251]) * (FRAME_LIMIT // size)
            )  # fmt: skip
        whole = client.read(1, ("read", "kv", f"{tag}whole"))
        assert whole == ("ok", bytes([7]) * (FRAME_LIMIT - 4096))
        assert client.read(1, ("read", "kv", f"{tag}over")) == "not_found"
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
