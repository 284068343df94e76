"""Caps on authenticated incoming connections: per key and in total, decided at authentication.

Every incoming connection costs this node a file descriptor and libzmq's buffers (~40 KB), and
one that completed its handshake stays open as long as its peer wants. Without a cap a single
client key exhausted a node's descriptors with idle connections: the log, storage and snapshot
code then failed to open files and the node exited. So the ZAP handler (the liveness thread,
see ``Liveness._answer_zap``) refuses a handshake, before it completes, when the key already
holds its share of connections (``max_conns_per_client_key`` for client and admin keys,
``max_conns_per_node_key`` for node keys) or when the node holds its total
(:func:`connection_budget`; client and admin keys together get at most three quarters of it, so
members can always connect). A refused connection gets ZAP status 400 (``REFUSED_STATUS``), is
closed at once and counted (``conn_refused_key_cap``, ``conn_refused_total_cap``).

Accounting. libzmq tells the ZAP handler the key and the peer's IP address of a handshake
(no port: RFC 27's address frame), but not which TCP connection it belongs to (the request's
identity frame is the ROUTER's own routing id option, not the peer's); the ROUTER's monitor
tells which connection (descriptor) was accepted and which one closed, and whether a connection
that closed had failed its handshake (a handshake failure is reported immediately before its
disconnect), but never the key. Nothing libzmq reports joins the two exactly before a
connection sends its first message, and the caps must hold for connections that never send
one. :class:`ConnLedger` joins them by address: a granted handshake is attached to the newest
connection from the same address that carries no grant yet (the one whose handshake is under
way, in practice), and its slot is released when that connection closes. A grant that arrives
before its connection's accept event (the two travel on different pipes, and the ZAP request
was seen first in about one handshake in ten under load) waits for the next connection
accepted from its address, counted meanwhile (``PENDING_S`` at most, then dropped and counted
in ``conn_grants_unattached``). A grant attached to a connection whose handshake then failed
moves to another connection of that address still without one, or, if there is none, waits
again for the next one accepted from its address, as from when it was made (it may belong to
a connection whose accept event is still to come: dropped, that connection went uncounted
once a failing handshake from its address had taken its grant). A grant whose own handshake
failed after it was made so holds its slot until the next connection of its address, or
``PENDING_S`` at most.

What holds, exactly: every counted grant rides on (or waits for) a distinct live connection of
its address, so the counts cannot outlive the connections, a closed connection frees its slot,
and the node's total is exact; a key that is the only one connecting from its address is held
to its cap exactly. What does not: concurrent handshakes of different keys from one address
can swap which key a connection is counted for, and closing connections picks which grant is
released; the keys connecting from one address can so shift slots among themselves, and one of
them can hold more connections than its cap, but never more than its cap plus the slots the
other keys of that address are counted for: together they never exceed the sum of their caps
(``tests/distribution/test_conn_caps.py`` checks this against adversarial interleavings).
Keys from different addresses never affect each other's counts. (That a handshake failure is
reported right before its disconnect holds because the context has one I/O thread; the host of
a connection is read with ``getpeername`` and must match what libzmq gives ZAP.)
"""

from __future__ import annotations

import logging
import resource
import socket
import time
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CLIENT_SHARE = 0.75
"""Part of the total that client and admin keys may hold together (the rest is the members')."""

FD_SHARE = 0.5
"""Part of the descriptor limit incoming connections may take. The rest stays for what the node
cannot do without: its log segments and storage (LMDB), snapshots and transfers, outgoing links
(each a socket plus libzmq's own descriptors), log files and the metrics server."""

FD_TARGET = 65536
"""How far :func:`raise_fd_limit` raises the soft descriptor limit (bounded by the hard one)."""

REFUSED_STATUS = b"400"
"""ZAP status of a refused handshake. Not 300 (RFC 27's temporary error): libzmq answers a 300
with silence and keeps the connection, and its descriptor, until the handshake times out
(``HANDSHAKE_MS``), which is just what the caps are to prevent; a 400 closes it at once and
tells the client (its handshake fails with status 400)."""

PENDING_S = 10.0
"""Seconds a grant waits for its connection's accept event (see the module docstring): twice
the handshake timeout (``HANDSHAKE_MS``), past which libzmq has closed a connection whose
handshake never completed."""


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """The caps of one node (see the module docstring)."""

    per_client_key: int
    per_node_key: int
    total: int

    def __post_init__(self) -> None:
        if min(self.per_client_key, self.per_node_key, self.total) < 1:
            raise ValueError("connection caps must be positive")

    @property
    def client_total(self) -> int:
        """Connections client and admin keys may hold together."""
        return max(1, int(self.total * CLIENT_SHARE))


@dataclass(slots=True)
class _Conn:
    host: str | None
    key: str | None = None  # the grant attached to this connection, if any
    since: float = 0.0  # when that grant was made (monotonic): how long it may wait again


class ConnLedger:
    """Live incoming connections and the grants attached to them (single-threaded)."""

    def __init__(self, limits: ConnLimits) -> None:
        self.limits = limits
        self._conns: dict[int, _Conn] = {}
        # Per host, the live connections without a grant, oldest first.
        self._bare: dict[str | None, dict[int, None]] = {}
        self._held: dict[str, int] = {}
        # Per host, grants whose connection's accept event has not been seen yet (counted),
        # oldest first, with when each was made.
        self._pending: dict[str | None, deque[tuple[str, float]]] = {}
        self.granted = 0
        """Grants counted: the node's authenticated connections (and those about to be)."""
        self.unattached = 0
        """Grants dropped after waiting ``PENDING_S`` for a connection of their host (no
        longer counted)."""

    @property
    def waiting(self) -> int:
        """Grants counted that wait for their connection's accept event."""
        return sum(len(pending) for pending in self._pending.values())

    def held(self, key: str) -> int:
        """Authenticated connections ``key`` holds."""
        return self._held.get(key, 0)

    def accepted(self, fd: int, host: str | None) -> None:
        """The ROUTER accepted a connection on descriptor ``fd`` from ``host``."""
        if fd in self._conns:  # its close was never reported: it is closed now
            self.closed(fd, authenticated=True)
        pending = self._pending.get(host)
        if pending:
            # Its grant came first (or another connection's of this host did: either way
            # a slot of one of this host's keys rides on a live connection again).
            self._conns[fd] = _Conn(host, *pending.popleft())
            if not pending:
                del self._pending[host]
            return
        self._conns[fd] = _Conn(host)
        self._bare.setdefault(host, {})[fd] = None

    def closed(self, fd: int, *, authenticated: bool) -> None:
        """The connection on ``fd`` closed; ``authenticated``: it had completed its handshake."""
        conn = self._conns.pop(fd, None)
        if conn is None:
            return
        if conn.key is None:
            self._unbare(conn.host, fd)
            return
        self._release(conn.key)
        if not authenticated:
            # The grant was another connection's from the same host (or this one's, lost
            # between the grant and the handshake's end): it moves to one still without,
            # or waits for one, since that connection's accept event may still be to come.
            self._grant(conn.key, conn.host, conn.since)

    def admit(
        self, key: str, member: bool, host: str | None, now: float | None = None
    ) -> str | None:
        """Grant ``key`` one more connection from ``host`` (recorded), or say why not:
        ``"key"`` (the key holds its cap) or ``"total"`` (the node holds its total).
        ``now``: the monotonic clock (read if not given), for grants that must wait for
        their connection (:meth:`expire`)."""
        limits = self.limits
        at = time.monotonic() if now is None else now
        self.expire(at)
        if self.held(key) >= (limits.per_node_key if member else limits.per_client_key):
            return "key"
        if self.granted >= (limits.total if member else limits.client_total):
            return "total"
        self._grant(key, host, at)
        return None

    def expire(self, now: float) -> None:
        """Drop the grants that waited ``PENDING_S`` for a connection (counted in
        ``unattached``): their connection's accept event never came (it closed within
        the batch of events that reported it, its address unknown)."""
        for host in list(self._pending):
            pending = self._pending[host]
            while pending and now - pending[0][1] >= PENDING_S:
                self._release(pending.popleft()[0])
                self.unattached += 1
            if not pending:
                del self._pending[host]

    def _grant(self, key: str, host: str | None, since: float) -> None:
        """Count a grant of ``key`` made at ``since``: on the newest connection of ``host``
        without one (the one whose handshake is under way), or waiting for the next one
        accepted from ``host`` (``_pending``, kept oldest first for ``expire``)."""
        self._count(key)
        bare = self._bare.get(host)
        if not bare:
            pending = self._pending.setdefault(host, deque())
            at = len(pending)
            while at and pending[at - 1][1] > since:
                at -= 1
            pending.insert(at, (key, since))
            return
        fd = next(reversed(bare))
        self._unbare(host, fd)
        conn = self._conns[fd]
        conn.key = key
        conn.since = since

    def _count(self, key: str) -> None:
        self._held[key] = self._held.get(key, 0) + 1
        self.granted += 1

    def _release(self, key: str) -> None:
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]
        self.granted -= 1

    def _unbare(self, host: str | None, fd: int) -> None:
        bare = self._bare[host]
        del bare[fd]
        if not bare:
            del self._bare[host]


def connection_budget(max_connections: int) -> int:
    """The total cap: ``max_connections``, but at most ``FD_SHARE`` of the soft descriptor
    limit (read now), so the rest stays for the log, storage and snapshots."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, int(soft * FD_SHARE)))


def raise_fd_limit(target: int = FD_TARGET) -> int:
    """Raise the soft descriptor limit towards ``target``, never above the hard limit, and
    return the soft limit in force. A lowered limit is never lowered further."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the descriptor limit to %d: %s", want, exc)
            return soft
        return want
    return soft


def peer_host(fd: int) -> str | None:
    """The peer address of the connected socket ``fd`` (owned by libzmq: never closed here),
    or None if it is not one (any more)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # not a socket any more: nothing was taken over
        return None
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError):
        return None
    finally:
        sock.detach()
