"""The receive thread: the only user of this node's ROUTER socket.

A DEALER's message arrives as exactly two frames, the sender's routing id and the envelope, and
is read with two ``recv()`` calls (no ``recv_multipart``: no list, no loop). While frames keep
coming the thread never polls; it polls (50 ms at most, so ``stop()`` is noticed) only when the
socket is empty. Anything wrong with a frame — an extra or missing part, a routing id that does
not name a node, a size over the limit, another protocol version, bad msgpack, an unknown kind
or a bad shape — drops that frame and increments a counter; nothing a peer sends can stop or
stall this loop.

Delivery to local actors is a registry lookup and one mailbox put (``otp.cast``/``otp.send``
to the pid, or ``otp.send_request`` with a :class:`RemoteReplyTo` for calls), so a slow actor
never holds up the socket.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

from waraft.distribution import envelope, inline, nodeid
from waraft.distribution.envelope import FrameError, Kind
from waraft.distribution.peers import Peer, PeerLimitError, PeerState
from waraft.distribution.reply import RemoteReplyTo
from waraft.otp import messaging
from waraft.otp.errors import NOPROC

if TYPE_CHECKING:
    from waraft.distribution.runtime import Dist

logger = logging.getLogger(__name__)

POLL_MS = 50
IDLE_EVERY = 64  # frames handled between idle hooks when the socket never drains
_MAX_SENDER_CACHE = 65536


class Receiver(threading.Thread):
    """Reads the ROUTER, decodes frames and hands them to local actors or waiting callers."""

    def __init__(self, dist: Dist, router: zmq.Socket[bytes]) -> None:
        super().__init__(name="dist:recv", daemon=True)
        self._dist = dist
        self._router = router
        self._max_bytes = dist.settings.max_frame_bytes
        self._registry = dist.otp_node.registry
        # Written by this thread only; read (copied) by stats().
        self.counts: dict[str, int] = {"rx_msgs": 0, "rx_bytes": 0}
        dist.counters.add_dict(self.counts)
        self._senders: dict[bytes, Peer] = {}

    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            logger.exception("distribution receive loop crashed")
        finally:
            self._router.close(linger=0)

    def _loop(self) -> None:
        router = self._router
        recv = router.recv
        handle = self._handle
        dist = self._dist
        since_idle = 0
        while not dist.stopping:
            try:
                routing_id = recv(zmq.NOBLOCK)
            except zmq.Again:
                since_idle = 0
                if inline.has_due_work():
                    inline.run_idle_hooks()
                router.poll(POLL_MS)
                continue
            except zmq.ZMQError as exc:
                if dist.stopping:
                    return
                logger.error("receive failed: %s", exc)
                time.sleep(0.01)
                continue
            since_idle += 1
            if since_idle >= IDLE_EVERY and inline.has_due_work():
                # Frames never stop arriving: do not hold collected work back forever.
                since_idle = 0
                inline.run_idle_hooks()
            # A multipart message is delivered whole, so these never wait.
            if not router.rcvmore:
                self._count("rx_malformed")  # an envelope-less message (cannot come from a DEALER)
                continue
            frame = recv()
            if router.rcvmore:
                self._drain()
                continue
            try:
                handle(routing_id, frame)
            except Exception:
                # A bug in delivery must not take the node off the network.
                self._count("rx_handler_errors")
                logger.exception("failed to handle a frame from %r", routing_id)

    def _drain(self) -> None:
        router = self._router
        while router.rcvmore:
            router.recv()
        self._count("rx_malformed")

    def _count(self, key: str) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def _sender(self, routing_id: bytes) -> Peer | None:
        """The peer a routing id belongs to (first frame on a connection); None, counted, if
        it names no node or the peer table is full. Only valid ids are cached."""
        node_id = nodeid.sender_of(routing_id)
        if node_id is None:
            self._count("rx_bad_identity")
            return None
        try:
            peer = self._dist.peers.get(node_id)
        except PeerLimitError:
            self._count("rx_peer_limit")
            return None
        if len(self._senders) >= _MAX_SENDER_CACHE:
            self._senders.clear()
        self._senders[routing_id] = peer
        return peer

    def _handle(self, routing_id: bytes, frame: bytes) -> None:
        peer = self._senders.get(routing_id) or self._sender(routing_id)
        if peer is None:
            return
        dist = self._dist
        if dist._fault_in and peer.node_id in dist._fault_in:
            self._count("rx_dropped_fault")
            return
        counts = self.counts
        counts["rx_msgs"] += 1
        counts["rx_bytes"] += len(frame)
        try:
            obj = envelope.decode(frame, self._max_bytes)
        except FrameError as exc:
            self._count(exc.counter)
            logger.debug("dropped a frame from %s: %s", peer.node_id, exc)
            return
        peer.rx += 1
        if peer.state is not PeerState.UP:
            peer.last_rx = time.monotonic()
            dist.peers.set_state(peer, PeerState.UP)
        kind = obj[1]
        if kind == Kind.CAST:
            fast = inline._handlers.get(obj[2]) if inline._handlers else None
            if fast is not None and fast(obj[3]):
                return
            self._deliver(obj[2], obj[3], messaging.cast)
        elif kind == Kind.REPLY:
            dist.complete_call(obj[2], True, obj[3])
        elif kind == Kind.CALL:
            self._call(peer, obj[2], obj[3], obj[4])
        elif kind == Kind.INFO:
            self._deliver(obj[2], obj[3], messaging.send)
        elif kind == Kind.FAIL:
            dist.complete_call(obj[2], False, obj[3])
        elif kind == Kind.PING:
            dist.transmit_to(peer, envelope.pong_frame(obj[2]))  # (faults apply to pongs too)
        else:  # PONG
            self._pong(peer, obj[2])

    def _deliver(self, name: str, msg: Any, fn: Any) -> None:
        pid = self._registry.whereis(name)
        if pid is None:
            self._count("rx_noproc")
            return
        fn(pid, msg)

    def _call(self, peer: Peer, name: str, ref: int, request: Any) -> None:
        handle = RemoteReplyTo(self._dist, peer, ref)
        pid = self._registry.whereis(name)
        if pid is None:
            self._count("rx_noproc")
            handle.fail(NOPROC)
            return
        messaging.send_request(pid, request, handle)

    def _pong(self, peer: Peer, seq: int) -> None:
        peer.pongs += 1
        sent = peer.ping_sent_at
        if seq == peer.ping_seq and sent is not None:
            peer.rtt = time.monotonic() - sent
