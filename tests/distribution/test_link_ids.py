"""Routing ids of links and probes: whoever sees one learns nothing that takes over another.

A node's ROUTER hands a routing id to the newest connection presenting it (``ROUTER_HANDOVER``,
for links that reconnect after a TCP drop). Link ids used to be ``<node>/<per-process
value>.<counter>``: one PONG showed the value, and connections under the next few counters,
made to the node's peers without sending a frame, cut its links to them for good.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import zmq

from waraft.distribution import envelope, nodeid
from waraft.distribution.envelope import Kind
from waraft.services import codec

from .helpers import WAIT, Child, connect_silently, derived_link_ids, start_sink


def _seen_link_id(ctx: zmq.Context[zmq.Socket[bytes]], target: str) -> bytes:
    """Ping ``target`` as a made-up node whose ROUTER listens here: the routing id of the
    link ``target`` answers on (a PONG comes on the pinged node's own link to the pinger)."""
    inbox = ctx.socket(zmq.ROUTER)
    inbox.setsockopt(zmq.LINGER, 0)
    me = f"evil@127.0.0.1:{inbox.bind_to_random_port('tcp://127.0.0.1')}"
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, f"{me}/x".encode())
    sock.connect(nodeid.endpoint(target))
    sock.send(envelope.ping_frame(7))
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if inbox.poll(100):
            routing_id, frame = inbox.recv_multipart()
            if codec.unpackb(frame)[1] == Kind.PONG:  # not the node's own probe's PING
                return routing_id
    raise AssertionError(f"no PONG from {target}")


def test_tags_are_random_and_the_longest_routing_id_fits() -> None:
    tags = {nodeid.new_tag() for _ in range(1000)}
    assert len(tags) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{20}", tag) for tag in tags)  # 120 random bits
    longest = nodeid.make("n" * (nodeid.MAX_ID_BYTES - len("@host:65535")), "host", 65535)
    cluster = "c" * nodeid.MAX_CLUSTER_ID_CHARS
    routing_id = nodeid.routing_id(longest, nodeid.new_tag("p"), cluster)
    assert len(routing_id) <= nodeid.MAX_ROUTING_ID_BYTES  # ZeroMQ refuses longer ones
    assert nodeid.sender_of(routing_id) == longest
    assert nodeid.cluster_of(routing_id) == cluster


def test_a_link_id_seen_on_the_wire_does_not_take_over_a_members_link(
    node: str, spawn: Callable[..., Child], raw: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """The attacker learns one of the child's link ids from a PONG, then connects to this
    node under every id of the child's links it can derive from it, and sends nothing: the
    child's links to this node keep delivering, during the attack and after it."""
    child = spawn("member")
    inbox = start_sink()
    assert child.call("cast_to", ("sink", node), "before") is True  # the links are up
    inbox.wait_len(1)
    ids = derived_link_ids(_seen_link_id(raw, child.node_id))
    attack = connect_silently(raw, node, ids)
    for i in range(5):  # casts on the child's links, and the calls' replies on them too
        assert child.call("cast_to", ("sink", node), ("during", i), timeout=5.0) is True
    inbox.wait_len(6)
    for sock in attack:
        sock.close(0)
    for i in range(5):
        assert child.call("cast_to", ("sink", node), ("after", i), timeout=5.0) is True
    items = inbox.wait_len(11)
    assert items == [("cast", "before")] + [
        ("cast", (when, i)) for when in ("during", "after") for i in range(5)
    ]
