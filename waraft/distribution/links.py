"""Outgoing links: one DEALER socket per (sending thread, peer), created lazily.

ZeroMQ sockets must not be used by two threads at once. Rather than funnel every message
through one sender thread (a queue put, a wake-up and a GIL hand-off per message), each thread
that sends to a peer gets its own DEALER, connected to that peer's ROUTER with the routing id
``<this node>/<tag>``. This costs no thread hop and keeps messages from one actor (one thread)
to one node in order, which Raft relies on. ``benchmarks/dist_bench.py --senders`` measures this
against a single sender thread. Each link draws its own random tag (``nodeid.new_tag``):
whoever could present a link's routing id would take the link over at the peer.

Each link has a lock that its own thread takes around every send (uncontended: ~0.1 µs). It
exists so that :meth:`Outbound.close_all` (``dist.stop()``) and the reaper of dead threads'
links can close a socket without racing a send in progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from waraft.distribution import nodeid
from waraft.distribution.peers import Peer
from waraft.distribution.settings import CurveConfig, DistSettings
from waraft.otp.sched import scheduled_caller
from waraft.otp.sched import sleep as sched_sleep

logger = logging.getLogger(__name__)

REAP_LINGER_MS = 250
"""A dead thread's socket gets this long to flush what it queued before it is dropped."""

_POLL_SLICE = 0.05
_SCHED_SLICE = 0.01
"""How often a scheduled process waiting for queue space tries again (it cannot poll the
socket without blocking its scheduler thread)."""
CLIENT_SNDHWM = 64
"""Frames queued at most for a client or admin process (``Outbound._sndhwm_for``)."""
# The send of pyzmq's compiled socket: its Python-level wrapper (zmq.Socket.send) only adds the
# draft routing_id/group arguments, unused here, and about 0.3-0.6 us per frame. The flag as
# a plain int (pyzmq's enum members convert on every call).
_send: Any = zmq.backend.Socket.send
_NOBLOCK = int(zmq.NOBLOCK)


class Link:
    """The calling thread's DEALER to one peer, with its counters."""

    __slots__ = (
        "closed",
        "dropped_full",
        "lock",
        "peer",
        "sent",
        "sent_bytes",
        "server_key",
        "sock",
        "thread",
    )

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        peer: Peer,
        thread: threading.Thread,
        server_key: bytes | None = None,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.thread = thread
        self.server_key = server_key  # the CURVE key it expects of the peer (None: no CURVE)
        self.lock = threading.Lock()
        self.closed = False
        self.sent = 0
        self.sent_bytes = 0
        self.dropped_full = 0

    def close(self, linger_ms: int) -> None:
        """Close the socket (taking the lock, so never under a send in progress)."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.sock.close(linger=linger_ms)


class _ThreadLinks(threading.local):
    def __init__(self) -> None:
        self.links: dict[str, Link] = {}


class Outbound:
    """Every outgoing DEALER of one distribution instance."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        node_id: str,
        settings: DistSettings,
        curve: CurveConfig | None,
        cluster_id: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._ctx = ctx
        self._node_id = node_id
        self._cluster_id = cluster_id  # read at each new link: the node may join one later
        self._settings = settings
        self._curve = curve
        self._tls = _ThreadLinks()
        self._lock = threading.Lock()
        self._links: set[Link] = set()
        self._closed = False
        self._closed_counts: dict[str, int] = {"tx_msgs": 0, "tx_bytes": 0, "tx_dropped_full": 0}
        # With a cluster's keys, the names of its nodes: a link to any other id goes to a
        # client or admin process (see ``_configure``).
        self._node_names = _node_names(curve)
        self._copy_threshold = settings.copy_threshold

    # ------------------------------------------------------------------ hot path
    def send(self, peer: Peer, frame: bytes) -> bool:
        """Queue ``frame`` for ``peer`` without blocking; False if dropped (queue full/closed)."""
        link = self._tls.links.get(peer.node_id)
        if link is None or link.closed:
            # None yet, or closed because the peer was forgotten (close_peer): open afresh.
            link = self._open(peer)
            if link is None:
                return False
        with link.lock:
            if link.closed:
                return False
            try:
                _send(link.sock, frame, _NOBLOCK, len(frame) < self._copy_threshold)
            except zmq.Again:
                link.dropped_full += 1
                return False
            except zmq.ZMQError as exc:  # context terminated under us during stop()
                logger.debug("send to %s failed: %s", peer.node_id, exc)
                return False
        link.sent += 1
        link.sent_bytes += len(frame)
        return True

    def send_wait(
        self,
        peer: Peer,
        frame: bytes,
        deadline: float | None,
        abandon: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Like :meth:`send`, but wait for queue space until ``deadline`` (monotonic; None =
        no limit) instead of dropping. Used for calls, which may wait.

        Gives up (False) at ``deadline``, when the link closes, or as soon as ``abandon()``
        is true, checked at least every ``_POLL_SLICE`` (the caller's peer went down, its
        call was answered or failed meanwhile): a full queue to a stopped peer must not hold
        the caller for the whole call timeout once the peer is known down.

        A scheduled process never blocks its scheduler thread here (blocking work never runs
        on a scheduler: every other process of that thread would stall): it waits in short
        sleeps that yield the scheduler (``otp.sched.sleep``). The frame still goes out on
        the thread's own link, after whatever the process sent before (per-process order)."""
        scheduled = scheduled_caller() is not None
        while True:
            if self.send(peer, frame):
                return True
            link = self._tls.links.get(peer.node_id)
            if link is None or link.closed or self._closed or abandon():
                return False
            wait = _SCHED_SLICE if scheduled else _POLL_SLICE
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return False
            if scheduled:
                sched_sleep(wait)
                continue
            with link.lock:
                if link.closed:
                    return False
                link.sock.poll(int(wait * 1000) + 1, zmq.POLLOUT)

    # ------------------------------------------------------------------ lifecycle
    def _open(self, peer: Peer) -> Link | None:
        thread = threading.current_thread()
        with self._lock:
            if self._closed:
                return None
            sock = self._ctx.socket(zmq.DEALER)
            try:
                self._configure(sock, peer)
                sock.connect(peer.endpoint)
            except Exception:
                sock.close(linger=0)
                raise
            curve = self._curve
            expected = None if curve is None else curve.server_key_for(peer.node_id)
            link = Link(sock, peer, thread, expected)
            self._links.add(link)
        self._tls.links[peer.node_id] = link
        return link

    def _configure(self, sock: zmq.Socket[bytes], peer: Peer) -> None:
        settings = self._settings
        sock.setsockopt(zmq.LINGER, 0)
        # A tag of its own for every link, unrelated to any other: the peer's ROUTER hands a
        # routing id to whoever presents it, and ids made of a per-process value and a counter
        # (that value visible in every frame this node sent anyone) let a client key cut
        # members' links to each other for good.
        tag = nodeid.new_tag()
        sock.setsockopt(zmq.ROUTING_ID, nodeid.routing_id(self._node_id, tag, self._cluster_id()))
        sock.setsockopt(zmq.SNDHWM, self._sndhwm_for(peer.node_id))
        sock.setsockopt(zmq.RCVHWM, 1)  # nothing is ever sent back on this connection
        sock.setsockopt(zmq.RECONNECT_IVL, settings.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, settings.reconnect_ivl_max_ms)
        apply_curve_client(sock, self._curve, peer.node_id)

    def _sndhwm_for(self, node_id: str) -> int:
        """Frames queued at most for ``node_id``: ``sndhwm`` for a node of the cluster, at
        most ``CLIENT_SNDHWM`` for a client or admin process (known only with keys).

        A link to a client carries its replies; a client that sends reads and never takes
        the replies in left up to 10,000 frames of them queued (a review's leader reached
        GBs of memory). A client that reads keeps a few frames queued at most."""
        settings = self._settings
        names = self._node_names
        if names is None or node_id.partition("@")[0] in names:
            return settings.sndhwm
        return min(settings.sndhwm, CLIENT_SNDHWM)

    def reap_dead_threads(self) -> int:
        """Close the links of threads that have exited; returns how many were closed."""
        with self._lock:
            dead = [link for link in self._links if not link.thread.is_alive()]
            for link in dead:
                self._links.discard(link)
                self._absorb(link)
        for link in dead:
            link.close(REAP_LINGER_MS)
        return len(dead)

    def close_peer(self, node_id: str) -> int:
        """Close every thread's link to ``node_id`` (a forgotten peer); returns how many. A
        thread that sends to it again opens a new one."""
        with self._lock:
            gone = [link for link in self._links if link.peer.node_id == node_id]
            for link in gone:
                self._links.discard(link)
                self._absorb(link)
        for link in gone:
            link.close(0)
        return len(gone)

    def set_curve(self, curve: CurveConfig) -> int:
        """Use ``curve`` (the cluster's reloaded keys) for links opened from now on, and close
        every link that expects another server key than ``curve`` gives its peer (a new node
        tried before its key was known, a node whose key was replaced): each thread opens a
        new one at its next send. Returns how many were closed."""
        with self._lock:
            self._curve = curve
            self._node_names = _node_names(curve)
            stale = [
                link
                for link in self._links
                if link.server_key != curve.server_key_for(link.peer.node_id)
            ]
            for link in stale:
                self._links.discard(link)
                self._absorb(link)
        for link in stale:
            link.close(0)
        return len(stale)

    def open_links(self) -> int:
        """How many links are open now (every thread)."""
        with self._lock:
            return len(self._links)

    def close_all(self, lock_timeout: float = 1.0) -> bool:
        """Close every link (linger 0). False if a link stayed busy past ``lock_timeout``
        (its socket is then left open, so terminating the context could block)."""
        with self._lock:
            self._closed = True
            links = list(self._links)
            self._links.clear()
        clean = True
        for link in links:
            if link.lock.acquire(timeout=lock_timeout):
                try:
                    if not link.closed:
                        link.closed = True
                        link.sock.close(linger=0)
                finally:
                    link.lock.release()
            else:
                clean = False
                logger.error("a sender to %s kept its socket busy; not closed", link.peer.node_id)
        return clean

    def _absorb(self, link: Link) -> None:
        # Keep the totals of closed links so stats() stays monotonic.
        counts = self._closed_counts
        counts["tx_msgs"] += link.sent
        counts["tx_bytes"] += link.sent_bytes
        counts["tx_dropped_full"] += link.dropped_full

    # ------------------------------------------------------------------ introspection
    def counters(self) -> dict[str, int]:
        """Totals over every link, open or closed."""
        with self._lock:
            links = list(self._links)
            out = dict(self._closed_counts)
        for link in links:
            out["tx_msgs"] += link.sent
            out["tx_bytes"] += link.sent_bytes
            out["tx_dropped_full"] += link.dropped_full
        out["tx_sockets"] = len(links)
        return out

    def per_peer(self) -> dict[str, dict[str, int]]:
        """Open links and their counters, by peer."""
        with self._lock:
            links = list(self._links)
        out: dict[str, dict[str, int]] = {}
        for link in links:
            entry = out.setdefault(
                link.peer.node_id, {"links": 0, "tx": 0, "tx_bytes": 0, "tx_dropped_full": 0}
            )
            entry["links"] += 1
            entry["tx"] += link.sent
            entry["tx_bytes"] += link.sent_bytes
            entry["tx_dropped_full"] += link.dropped_full
        return out


def _node_names(curve: CurveConfig | None) -> frozenset[str] | None:
    """The names of the cluster's nodes (None without a cluster's keys)."""
    if curve is None or not curve.identities:
        return None
    return curve.node_names()


def apply_curve_client(sock: zmq.Socket[Any], curve: CurveConfig | None, node_id: str) -> None:
    """Make ``sock`` a CURVE client of ``node_id`` (no-op without CURVE)."""
    if curve is None:
        return
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
    sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_key_for(node_id))
