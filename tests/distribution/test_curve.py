"""CURVE encryption and authentication between nodes."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from waraft import distribution as dist
from waraft import otp
from waraft.distribution import envelope
from waraft.services import codec

from .helpers import DOWN, PING, Child, start_sink, wait_until

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")

CLUSTER_PUBLIC, CLUSTER_SECRET = zmq.curve_keypair()


@pytest.fixture
def curve_node() -> Iterator[str]:
    node_id = dist.start(
        "parent@127.0.0.1:0",
        curve={"public_key": CLUSTER_PUBLIC, "secret_key": CLUSTER_SECRET},
        ping_interval=PING,
        down_after=DOWN,
        connect_timeout=DOWN,
    )
    try:
        yield node_id
    finally:
        dist.stop()


def _curve_child(spawn: Callable[..., Child], name: str, *extra: str) -> Child:
    # "--opt=value": a Z85 key may begin with "-" (see child_node.py).
    return spawn(name, f"--curve={CLUSTER_PUBLIC.decode()},{CLUSTER_SECRET.decode()}", *extra)


def test_nodes_sharing_the_cluster_key_talk_both_ways(
    curve_node: str, spawn: Callable[..., Child]
) -> None:
    child = _curve_child(spawn, "secure")
    inbox = start_sink()
    assert child.call("echo", b"secret payload") == b"secret payload"
    assert child.call("call_to", ("sink", curve_node), "hi", 5.0) == ("ok", ("sink", "hi"))
    otp.cast(child.echo, ("cast_back", ("sink", curve_node), "encrypted"))
    assert inbox.wait_len(1) == [("cast", "encrypted")]


def test_plain_node_and_curve_node_cannot_talk(
    curve_node: str, spawn: Callable[..., Child]
) -> None:
    plain = spawn("plain")
    with pytest.raises(otp.ExitError) as info:
        plain.call("echo", 1, timeout=5.0)
    assert info.value.reason == ("nodedown", plain.node_id)
    assert dist.stats()["probe_handshake_failed"] >= 1


def test_unknown_client_key_is_refused(curve_node: str) -> None:
    inbox = start_sink()
    public, secret = zmq.curve_keypair()  # not the cluster's key
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, b"rogue@127.0.0.1:9/1")
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, CLUSTER_PUBLIC)  # knows the server's public key
        sock.connect(dist.nodeid.endpoint(curve_node))
        plain = ctx.socket(zmq.DEALER)  # no CURVE at all
        plain.setsockopt(zmq.LINGER, 0)
        plain.setsockopt(zmq.ROUTING_ID, b"plain@127.0.0.1:9/1")
        plain.connect(dist.nodeid.endpoint(curve_node))
        for s in (sock, plain):
            s.send(envelope.cast_frame("sink", codec.packb("let me in")))
        wait_until(lambda: dist.stats().get("auth_denied", 0) >= 1)
        wait_until(lambda: dist.stats().get("handshake_failed", 0) >= 2)
        assert inbox.items == []
    finally:
        ctx.destroy(linger=0)


def test_a_flood_of_unknown_keys_is_counted_and_logged_once_a_second(
    curve_node: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone who reaches the port can start handshakes: each is refused and counted, but a
    # log line per handshake would let them fill the disk.
    rogues = 60
    caplog.set_level(logging.WARNING, logger="waraft.distribution.liveness")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    started = time.monotonic()
    socks = []  # held: a socket garbage-collected mid-handshake never reaches ZAP
    try:
        for i in range(rogues):
            public, secret = zmq.curve_keypair()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, f"rogue{i}@127.0.0.1:9/1".encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.setsockopt(zmq.CURVE_SERVERKEY, CLUSTER_PUBLIC)
            sock.connect(dist.nodeid.endpoint(curve_node))
            socks.append(sock)
        wait_until(lambda: dist.stats().get("auth_denied", 0) >= rogues)
        elapsed = time.monotonic() - started
    finally:
        ctx.destroy(linger=0)
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(lines) <= int(elapsed) + 2, [r.getMessage() for r in lines]
    assert "CURVE" in lines[0].getMessage()


def test_explicit_per_node_keys(spawn: Callable[..., Child]) -> None:
    # This node has its own key pair, the child keeps the cluster pair: each side lists the
    # other's public key under its node id (server_keys) and accepts it as a client.
    public, secret = zmq.curve_keypair()
    child_id = f"keyed@127.0.0.1:{_free_port()}"
    node_id = dist.start(
        "parent@127.0.0.1:0",
        curve=dist.CurveConfig(
            public_key=public,
            secret_key=secret,
            server_keys={child_id: CLUSTER_PUBLIC},
        ),
        ping_interval=PING,
        down_after=DOWN,
        connect_timeout=DOWN,
    )
    try:
        extra = (f"--allow={public.decode()}", "--server-key", f"{node_id}={public.decode()}")
        child = _curve_child(spawn, child_id, *extra)
        inbox = start_sink()
        assert child.call("echo", "per-node keys") == "per-node keys"
        otp.cast(child.echo, ("cast_back", ("sink", node_id), "back"))
        assert inbox.wait_len(1) == [("cast", "back")]
    finally:
        dist.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
