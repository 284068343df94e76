"""A node of one cluster refuses connections of another cluster's nodes (routing id tags)."""

from __future__ import annotations

import pytest
import zmq

from waraft import distribution as dist
from waraft.distribution import envelope, nodeid
from waraft.services import codec

from .helpers import start_sink, wait_until

FAKE = "other@127.0.0.1:9"  # a well-formed node id nobody runs


def _node(cluster: str | None) -> str:
    return dist.start("parent@127.0.0.1:0", ping_interval=0.1, cluster_id=cluster)


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], node: str, ident: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, ident.encode())
    sock.connect(nodeid.endpoint(node))
    return sock


def _cast(sock: zmq.Socket[bytes], msg: str) -> None:
    sock.send(envelope.cast_frame("sink", codec.packb(msg)))


def test_routing_ids_carry_the_cluster_and_malformed_tags_carry_none() -> None:
    tagged = nodeid.routing_id("n1@127.0.0.1:7001", "ab.1", "prod-1")
    assert tagged == b"n1@127.0.0.1:7001/ab.1#prod-1"
    assert nodeid.sender_of(tagged) == "n1@127.0.0.1:7001"
    assert nodeid.cluster_of(tagged) == "prod-1"
    assert nodeid.cluster_of(nodeid.routing_id("n1@127.0.0.1:7001", "ab.1", None)) is None
    assert nodeid.cluster_of(b"n1@127.0.0.1:7001/ab.1#no spaces") is None
    for bad in ("", "a b", "x" * 33, "a/b", "a#b", 7):
        with pytest.raises(ValueError, match="not a cluster id"):
            nodeid.check_cluster_id(bad)


def test_frames_of_another_clusters_node_are_refused_and_counted(
    raw: zmq.Context[zmq.Socket[bytes]],
) -> None:
    node = _node("alpha")
    try:
        inbox = start_sink()
        other = _dealer(raw, node, f"{FAKE}/x#beta")
        for n in range(3):
            _cast(other, f"beta {n}")
        wait_until(lambda: dist.stats().get("rx_other_cluster", 0) >= 3, what="refusals")
        # Its own cluster's nodes and untagged senders (clients, older builds) pass.
        same = _dealer(raw, node, f"{FAKE}/y#alpha")
        _cast(same, "alpha")
        untagged = _dealer(raw, node, f"{FAKE}/z")
        _cast(untagged, "untagged")
        assert sorted(inbox.wait_len(2)) == [("cast", "alpha"), ("cast", "untagged")]
        assert dist.stats()["rx_other_cluster"] == 3
        assert dist.cluster_id() == "alpha"
    finally:
        dist.stop()


def test_a_node_told_its_cluster_while_running_rechecks_open_connections(
    raw: zmq.Context[zmq.Socket[bytes]],
) -> None:
    node = _node(None)
    try:
        inbox = start_sink()
        other = _dealer(raw, node, f"{FAKE}/x#beta")
        _cast(other, "before")
        assert inbox.wait_len(1) == [("cast", "before")]  # no cluster yet: nothing to compare
        dist.set_cluster_id("alpha")
        _cast(other, "after")  # the same connection, cached by the receiver
        wait_until(lambda: dist.stats().get("rx_other_cluster", 0) >= 1, what="refusal")
        assert inbox.items == [("cast", "before")]
        dist.set_cluster_id("alpha")  # the same again: nothing changes
        with pytest.raises(ValueError, match="belongs to cluster alpha"):
            dist.set_cluster_id("beta")
        assert dist.cluster_id() == "alpha"
    finally:
        dist.stop()


def test_connections_this_node_opens_carry_its_cluster(
    raw: zmq.Context[zmq.Socket[bytes]],
) -> None:
    node = _node("alpha")
    try:
        start_sink()
        server = raw.socket(zmq.ROUTER)
        server.setsockopt(zmq.LINGER, 0)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        sock = _dealer(raw, node, f"handmade@127.0.0.1:{port}/t")
        sock.send(envelope.call_frame("sink", 7, codec.packb("hi")))
        assert server.poll(10_000), "no answer"
        routing_id, _frame = server.recv_multipart()
        assert nodeid.sender_of(routing_id) == node
        assert nodeid.cluster_of(routing_id) == "alpha"
    finally:
        dist.stop()
