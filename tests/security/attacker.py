"""A raw attacker: a ZeroMQ DEALER speaking msgpack frames to a node, nothing of waraft's own
client code (only its frame encoders, which any attacker could rewrite in a few lines)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import zmq

from waraft.distribution import envelope
from waraft.services import codec

_refs = itertools.count(1_000_000)


TABLE = "kv"
SERVER = "raft_server_kv_1"
# Elections slow enough that a loaded 2-core machine does not hold one by itself: any change
# of term or leader during a test is then the attack's doing.
CALM = {
    "raft_election_timeout_ms": 1500,
    "raft_election_timeout_ms_max": 3000,
    "raft_heartbeat_interval_ms": 100,
}


class Attacker:
    """One connection to ``node_id`` presenting ``claimed`` (a node id) as its routing id.

    A ROUTER bound on the claimed port receives what the node sends back (replies and pongs
    go to the address a routing id names), so an attacker on the node's host can read them.
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        node_id: str,
        name: str = "evil",
        curve: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        """``curve``: (public key, secret key, the node's public key) to connect with CURVE."""
        self.ctx = ctx
        self.curve = curve
        self.inbox = ctx.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            self.inbox.setsockopt(zmq.CURVE_SERVER, 1)
            self.inbox.setsockopt(zmq.CURVE_PUBLICKEY, curve[0])
            self.inbox.setsockopt(zmq.CURVE_SECRETKEY, curve[1])
        port = self.inbox.bind_to_random_port("tcp://127.0.0.1")
        self.node_id = f"{name}@127.0.0.1:{port}"
        self.target = node_id
        self.sock = self.connect(self.node_id)

    def connect(self, claimed: str, routing_id: str | None = None) -> zmq.Socket[Any]:
        """A socket claiming node ``claimed`` (``routing_id``: this exact one instead)."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, (routing_id or f"{claimed}/a{next(_refs)}").encode())
        if self.curve is not None:
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.curve[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve[1])
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.curve[2])
        sock.connect("tcp://" + self.target.partition("@")[2])
        return sock

    def cast(self, name: str, msg: Any, sock: zmq.Socket[Any] | None = None) -> None:
        (sock or self.sock).send(envelope.cast_frame(name, codec.packb(msg)))

    def call(self, name: str, request: Any) -> int:
        ref = next(_refs)
        self.sock.send(envelope.call_frame(name, ref, codec.packb(request)))
        return ref

    def raw(self, frame: bytes, sock: zmq.Socket[Any] | None = None) -> None:
        (sock or self.sock).send(frame)

    def answers(self, timeout: float = 2.0, want: int = 1) -> list[tuple[Any, ...]]:
        """Decoded frames the node sent back (REPLY/FAIL/PONG), until ``want`` or timeout.

        The node's own liveness PINGs (it probes every peer that spoke to it) are skipped:
        they are not answers, and when they arrive depends on timing."""
        out: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            if self.inbox.poll(50):
                _, frame = self.inbox.recv_multipart()
                decoded = codec.unpackb(frame)
                if len(decoded) >= 2 and decoded[1] == envelope.Kind.PING:
                    continue
                out.append(decoded)
        return out

    def seen_link_id(self, timeout: float = 5.0) -> bytes:
        """Ping the node; the routing id its PONG arrives under, that of the node's own link
        to this attacker (what any process the node answers sees of its link ids)."""
        self.sock.send(envelope.ping_frame(next(_refs)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inbox.poll(50):
                routing_id, frame = self.inbox.recv_multipart()
                if codec.unpackb(frame)[1] == envelope.Kind.PONG:
                    return bytes(routing_id)
        raise AssertionError(f"no PONG from {self.target}")

    def answer_to(self, ref: int, timeout: float = 8.0) -> Any:
        """The value of the node's answer to call ``ref`` (the frame's last element); other
        frames are skipped, one at a time (waiting for several cost the whole timeout)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for answer in self.answers(timeout=left):
                if ref in answer:
                    return answer[-1]
        raise AssertionError(f"no answer to call {ref}")

    def close(self) -> None:
        self.sock.close(0)
        self.inbox.close(0)
