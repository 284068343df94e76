"""The receive thread: the only user of this node's ROUTER socket.

A DEALER's message arrives as exactly two frames, the sender's routing id and the envelope, and
is read with two ``recv()`` calls (no ``recv_multipart``: no list, no loop). While frames keep
coming the thread never polls; it polls (50 ms at most, so ``stop()`` is noticed) only when the
socket is empty. Anything wrong with a frame — an extra or missing part, a routing id that does
not name a node, a size over the limit, another protocol version, bad msgpack, an unknown kind
or a bad shape — drops that frame and increments a counter; nothing a peer sends can stop or
stall this loop.

Who may send what is decided here, before anything reaches an actor (see
:mod:`~waraft.distribution.policy`): a routing id must name a node on the host the connection
comes from (so a packet can never make this node dial a third address), with CURVE the
connection's key must be the one issued for that node id, and a cast, call or info must be on
the allow-list of the registered name it is addressed to (each kind under its own rules), with a
right the sender holds.

Delivery to local actors is a registry lookup and one mailbox put (``otp.cast``/``otp.send``
to the pid, or ``otp.send_request`` with a :class:`RemoteReplyTo` for calls), so a slow actor
never holds up the socket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import zmq

from waraft.distribution import envelope, inline, nodeid, policy, sweeps
from waraft.distribution.envelope import FrameError, Kind, trailing_int
from waraft.distribution.peers import Peer, PeerLimitError, PeerState
from waraft.distribution.policy import Sender
from waraft.distribution.reply import RemoteReplyTo
from waraft.otp import messaging
from waraft.otp.errors import NOPROC
from waraft.otp.threadname import set_os_name
from waraft.services import codec
from waraft.services.logthrottle import LogThrottle

if TYPE_CHECKING:
    from waraft.distribution.runtime import Dist

logger = logging.getLogger(__name__)

POLL_MS = 50
IDLE_EVERY = 64  # messages of a burst between idle hooks, and per sweep step (``_sweep_step``)
_MAX_SENDER_CACHE = 65536
_MAX_HOST_CACHE = 1024
REFUSED = "refused"
RATE_LIMITED = "rate_limited"
OVERLOADED = "overloaded"
"""What a call shed undecoded (its key over its share of this thread) fails with, and the
reason of the ``("error", "overloaded")`` a shed client batch is answered with (``acceptor``):
not delivered, so not applied; to be retried after a backoff."""
MAX_IDS_PER_KEY = 256
"""Node ids one client or admin key may hold in the peer table at a time (one per client
process using the key; the table holds ``max_peers``, 1024 by default)."""
MAX_IDS_PER_NODE_KEY = 4
"""Node ids one node key may hold in the peer table at a time. A member is one process
speaking as one id, ``<key name>@host:port`` (``CurveConfig.rights_for``); a member
restarted on another port or host name holds its previous id too until that one is down and
forgotten (``down_after`` + ``forget_after``), and this leaves room for a few such restarts.
Without it a member's key could claim its name at every port of its host, each id up while
it pinged, and fill the table: a review locked a client out that way."""
CLIENT_RESERVE_SHARE = 8
"""One ``max_peers``-th of this share of the peer table is kept free of client keys' ids,
for members and operators (128 of 1024 by default)."""
REFUSAL_TTL = 1.0
"""Seconds a refused connection (routing id, address, key) stays refused without another
check: each frame of a refused connection used to be checked again, taking a new-peer token
each time."""
_MAX_REFUSALS = 16384  # (a routing id may be 255 bytes)
TOO_DEEP = "too_deep"


def _user_id(head: zmq.Frame) -> str | None:
    """The user id the connection's CURVE key authenticated as (None if none)."""
    try:
        user = head.get("User-Id")
    except zmq.ZMQError:
        return None
    return user if isinstance(user, str) else None


class _Conn:
    """What the receive thread knows about one routing id (one sending socket)."""

    __slots__ = ("address", "cluster_gen", "origin", "peer", "sender", "user")

    def __init__(
        self,
        peer: Peer,
        sender: Sender,
        address: str | None,
        user: str | None = None,
        cluster_gen: int = 0,
    ) -> None:
        self.peer = peer
        self.sender = sender
        self.address = address
        self.user = user  # the CURVE key's user id the rights were granted to
        self.cluster_gen = cluster_gen  # the cluster id and keys it was checked against
        # Who sent what comes on this connection, for inline handlers and remote calls
        # (``inline``): the key's identity, ``role:name`` (its user id less the key, which
        # may be replaced while the identity, owner of its registers, stays); without one
        # (no CURVE, or a key of the older form, whose user id is "") the node id the
        # sender claims.
        self.origin = _identity_of(user) if user else sender.node_id


def _identity_of(user: str) -> str:
    """``role:name`` of a user id ``role:name:key`` (a Z85 key may itself hold colons)."""
    role, _, rest = user.partition(":")
    return f"{role}:{rest.partition(':')[0]}"


class _Refusals:
    """Connections refused lately, each for ``ttl`` seconds, at most ``limit`` of them (a
    full cache forgets the expired ones, or everything: a forgotten refusal costs one more
    check, never an admission)."""

    __slots__ = ("_limit", "_refused", "_ttl")

    def __init__(self, ttl: float, limit: int) -> None:
        self._ttl = ttl
        self._limit = limit
        self._refused: dict[tuple[Any, ...], tuple[float, str]] = {}  # -> (until, counter)

    def get(self, key: tuple[Any, ...], now: float) -> str | None:
        """The counter of ``key``'s refusal if it is still in force."""
        entry = self._refused.get(key)
        if entry is None:
            return None
        if now < entry[0]:
            return entry[1]
        del self._refused[key]
        return None

    def put(self, key: tuple[Any, ...], counter: str, now: float) -> None:
        refused = self._refused
        if len(refused) >= self._limit:
            live = {k: v for k, v in refused.items() if now < v[0]}
            self._refused = refused = live if len(live) < self._limit // 2 else {}
        refused[key] = (now + self._ttl, counter)


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
        self._senders: dict[bytes, _Conn] = {}
        self._hosts: dict[str, frozenset[str]] = {}
        settings = dist.settings
        rate = settings.new_peers_per_s
        # Unknown ids admitted per sender key (see _new_peer), and how many it holds.
        self._new_ids = policy.KeyedBuckets(rate, 2 * rate)
        self._ids_of_key = policy.IdCap(MAX_IDS_PER_KEY, dist.peers.by_id)
        self._ids_of_node_key = policy.IdCap(MAX_IDS_PER_NODE_KEY, dist.peers.by_id)
        self._node_id_cap = LogThrottle(10.0)  # a member over its cap is news, not a flood
        self._client_reserve = settings.max_peers // CLIENT_RESERVE_SHARE
        self._refusals = _Refusals(REFUSAL_TTL, _MAX_REFUSALS)
        self._limiter = policy.RateLimiter(
            settings.admin_rate_per_sender, settings.admin_rate_per_node
        )
        self._decode_budget = policy.DecodeBudget(
            settings.client_receive_share, settings.client_receive_burst_s
        )
        # Shed frames answered ``overloaded`` per key (``_shed``).
        answers = settings.shed_answers_per_s
        self._shed_answers = policy.KeyedBuckets(answers, answers)
        # Socket errors can repeat at loop speed and a handler bug can be hit by every
        # frame a peer sends: at most one line a second each (the counters count them all).
        self._socket_errors = LogThrottle()
        self._handler_errors = LogThrottle()
        self._other_cluster = LogThrottle(10.0)  # a refused node keeps pinging
        self._over_share = LogThrottle(10.0)  # a key over its share drops frames by the score
        # When this thread last found the ROUTER empty, and the latest completed sweep (see
        # ``sweeps``): the moments it has caught up with, read by the liveness thread, for
        # which silence is evidence against a peer only up to such a moment (a node whose own
        # receive path is behind must not find its peers down).
        self.empty_at = time.monotonic()
        self.swept: tuple[float, int] = (self.empty_at, 0)
        self.sweep_length = sweeps.COMMAND_LAG  # (the liveness thread sets it)
        self._sweep_start = self.empty_at
        self._sweep_read = 0
        self._sweep_goal = self.sweep_length

    empty_at: float
    """When this thread last found the ROUTER empty (the clock read before the check): every
    frame queued before then has been read."""

    swept: tuple[float, int]
    """The latest completed sweep: its start, and how many messages were read (and handled)
    after it. The liveness thread decides whether that many catch up with the start
    (``sweeps.SweepBound``); published as one tuple, so the two are read together."""

    sweep_length: int
    """How many messages the next sweeps read before they are published (set by the liveness
    thread from the connection counts)."""

    def run(self) -> None:
        set_os_name("dist:recv")
        try:
            self._loop()
        except Exception:
            logger.exception("distribution receive loop crashed")
        finally:
            # Monitor mode off before the liveness thread closes the PAIR its events go to
            # (a blocking event send with no reader would hang libzmq's I/O thread).
            with contextlib.suppress(zmq.ZMQError):  # the context is terminating
                self._router.disable_monitor()
            self._router.close(linger=0)

    def _loop(self) -> None:
        router = self._router
        recv = router.recv
        # EVENTS through getsockopt directly: the sugar attribute goes through pyzmq's
        # Python-level __getattr__. (Typed as int: EVENTS is an integer option.)
        getsockopt = cast(Callable[[int], int], router.getsockopt)
        # Plain ints, not pyzmq's enum members: ``int & PollEvent`` runs enum.Flag.__and__
        # in Python (and builds a member) on every check, about 1 us against 0.05.
        events, pollin = int(zmq.EVENTS), int(zmq.POLLIN)
        noblock = int(zmq.NOBLOCK)
        # One poll item list for the thread's life: ``router.poll()`` builds a Poller, registers
        # the socket and converts the result on every call, and this loop polls whenever the
        # socket drains, which under one-request-at-a-time load is after every message.
        poll_items = [(router, zmq.POLLIN)]
        zmq_poll = zmq.zmq_poll
        handle = self._handle
        dist = self._dist
        since_idle = 0
        # Whether to receive without asking ``EVENTS`` first. ``EVENTS`` makes libzmq process
        # its command pipe (a syscall) with the GIL held, so asking it before every message
        # was a quarter of a busy leader's GIL time in scenario b (benchmarks/HOTPATH.md);
        # a receive that finds nothing raises (and builds) a ``zmq.Again`` instead, about
        # twice the cost of an empty ``EVENTS``. So: after a poll that reported input, and
        # while messages follow each other, receive directly (one ``Again`` ends a burst);
        # after a lone message, ask ``EVENTS`` (one request at a time: scenario c).
        direct = False
        burst = False
        unswept = 0  # messages read and handled since the last sweep step
        monotonic = time.monotonic
        while not dist.stopping:
            if not direct:
                # (The clock before the check: a frame arriving during it may go unread.)
                checked = monotonic()
                if not getsockopt(events) & pollin:
                    since_idle = unswept = 0
                    burst = False
                    # Everything queued before the check was read: caught up, and a new
                    # sweep starts from here.
                    self.empty_at = self._sweep_start = checked
                    self._sweep_read = 0
                    if inline.has_due_work():
                        inline.run_idle_hooks()
                    try:
                        direct = bool(zmq_poll(poll_items, POLL_MS))
                    except zmq.ZMQError as exc:
                        if dist.stopping:
                            return
                        self._log_socket_error("poll", exc)
                        time.sleep(0.01)
                    continue
            if unswept >= IDLE_EVERY:
                # (At the top of an iteration: every message counted has been handled, so a
                # pong it brought is in its peer's count before the sweep is published.)
                unswept = 0
                self._sweep_step()
            try:
                head = recv(noblock, copy=False)
            except zmq.Again:
                direct = burst = False
                continue
            except zmq.ZMQError as exc:
                if dist.stopping:
                    return
                self._log_socket_error("receive", exc)
                time.sleep(0.01)
                continue
            direct = burst
            burst = True
            since_idle += 1
            unswept += 1
            if since_idle >= IDLE_EVERY and inline.has_due_work():
                # Frames never stop arriving: do not hold collected work back forever.
                since_idle = 0
                inline.run_idle_hooks()
            # A multipart message is delivered whole, so these never wait.
            if not head.more:
                self._count("rx_malformed")  # an envelope-less message (cannot come from a DEALER)
                continue
            # The body as a zmq.Frame, whose ``more`` is a cheap property: ``getsockopt``
            # builds pyzmq's ``SocketOption`` enum member in Python on every call (about
            # 1 us a frame, measured against 0.4 for the Frame and its copy to bytes).
            body = recv(copy=False)
            if body.more:
                self._drain()
                continue
            data = body.bytes
            # Dropped before handling: the Frame holds libzmq's buffer and caches its copy,
            # and kept until the next message it held a large body twice while idle.
            del body
            try:
                handle(head, data)
            except Exception:
                # A bug in delivery must not take the node off the network.
                self._count("rx_handler_errors")
                self._log_handler_error(head)
            del data  # nor its copy: an idle node holds no message it has handled

    def _sweep_step(self) -> None:
        """``IDLE_EVERY`` more messages read and handled in a burst (the ROUTER never found
        empty): count them towards the current sweep; once it has read ``sweep_length`` (as
        it was when the sweep began), publish it (``swept``) and begin the next one, with
        one clock read a sweep."""
        read = self._sweep_read + IDLE_EVERY
        if read >= self._sweep_goal:
            self.swept = (self._sweep_start, read)
            self._sweep_start = time.monotonic()
            self._sweep_goal = self.sweep_length
            read = 0
        self._sweep_read = read

    def _log_socket_error(self, what: str, exc: zmq.ZMQError) -> None:
        self._count("rx_socket_errors")
        count = self._socket_errors.ready()
        if count:
            logger.error("%s failed: %s (%d in the last interval)", what, exc, count)

    def _log_handler_error(self, head: zmq.Frame) -> None:
        count = self._handler_errors.ready()
        if count:
            logger.exception(
                "failed to handle a frame from %r (%d such failures in the last interval)",
                head.bytes[:100],
                count,
            )

    def _drain(self) -> None:
        router = self._router
        while router.rcvmore:
            router.recv()
        self._count("rx_malformed")

    def _count(self, key: str) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def _connection(self, head: zmq.Frame) -> _Conn | None:
        """The connection a message came on (checked and cached per routing id): None,
        counted, if it names no node, comes from another host than its node id names, holds
        a key not issued for that node id, or may not bring a new node id in (``_new_peer``).
        A refusal is remembered for ``REFUSAL_TTL``: the connection's next frames are refused
        for the price of a lookup."""
        routing_id = head.bytes
        conn = self._senders.get(routing_id)
        address = _peer_address(head)
        user = _user_id(head) if self._dist.curve is not None else None
        dist = self._dist
        if (
            conn is not None
            and conn.address == address
            and conn.user == user
            and conn.cluster_gen == dist.cluster_gen
            and not conn.peer.forgotten
        ):
            # Same user id too: with ROUTER_HANDOVER another connection can take a routing
            # id over, and it must not inherit the rights of the key that connected first.
            return conn
        # Read before the checks: a reload of the keys or a new cluster id meanwhile (the
        # new one in place before the generation moves on) makes this entry stale at once.
        gen = dist.cluster_gen
        now = time.monotonic()
        # The key names everything the checks depend on: a refusal of one key's connection
        # never refuses another key's connection presenting the same routing id.
        seen = (routing_id, address, user, gen)
        refusal = self._refusals.get(seen, now)
        if refusal is None:
            found = self._check(routing_id, address, user, now, gen)
            if isinstance(found, _Conn):
                if len(self._senders) >= _MAX_SENDER_CACHE:
                    self._senders.clear()
                self._senders[routing_id] = found
                return found
            refusal = found
            self._refusals.put(seen, found, now)
        self._count(refusal)
        return None

    def _check(
        self, routing_id: bytes, address: str | None, user: str | None, now: float, gen: int
    ) -> _Conn | str:
        """A new connection's checks (against the keys and cluster id of generation
        ``gen``): its ``_Conn``, or the counter naming why it is refused."""
        node_id = nodeid.sender_of(routing_id)
        if node_id is None:
            return "rx_bad_identity"
        if not self._from_its_host(node_id, address):
            return "rx_wrong_host"
        if self._of_another_cluster(node_id, routing_id):
            return "rx_other_cluster"
        rights = self._rights(node_id, user)
        if rights is None:
            return "rx_wrong_key"
        dist = self._dist
        try:
            if node_id in dist.peers.by_id:
                peer = dist.peers.get(node_id)
            else:
                found = self._new_peer(node_id, user, rights, now)
                if isinstance(found, str):
                    return found
                peer = found
        except PeerLimitError:
            return "rx_peer_limit"
        return _Conn(peer, Sender(node_id, rights), address, user, gen)

    def _new_peer(
        self, node_id: str, user: str | None, rights: frozenset[str], now: float
    ) -> Peer | str:
        """The peer for a node id this node does not know, or the counter naming why the
        sender may not bring it in. Raises ``PeerLimitError`` if the table is full.

        Each sender key has its own rate of new ids (``new_peers_per_s``; without keys,
        nothing tells senders apart and all share one): one client key churning made-up
        ids took a node-wide bucket's every token, and new clients and admins were locked
        out. Each key holds a bounded number of ids at a time (``_id_cap``; a review kept
        1,100 made-up ids of one client key alive with pings, filling the table), checked
        before any token is taken. Client keys' ids leave ``max_peers /
        CLIENT_RESERVE_SHARE`` entries of the table free."""
        cap = self._id_cap(user, rights)
        key = user or ""
        if cap is not None and cap.full(key, node_id, now):
            if cap is self._ids_of_node_key:
                self._log_node_id_cap(key, node_id)
            return "rx_key_id_limit"
        if not self._new_ids.take(key, now):
            return "rx_new_peer_limited"
        reserve = 0 if policy.privileged(rights) else self._client_reserve
        peer = self._dist.peers.get(node_id, reserve)
        if cap is not None:
            cap.add(key, node_id)
        return peer

    def _id_cap(self, user: str | None, rights: frozenset[str]) -> policy.IdCap | None:
        """The cap on the node ids the connection's key may hold: ``MAX_IDS_PER_NODE_KEY``
        for a node key (a member, whose ids all carry its name but may name any port),
        ``MAX_IDS_PER_KEY`` for a client or admin key (one id per process using it). None
        without CURVE and for keys of the older, member-only form (user id ``""``): nothing
        tells their senders apart, and one cap shared by all would hold the whole cluster's
        members to it."""
        if not user:
            return None
        return self._ids_of_node_key if policy.MEMBER in rights else self._ids_of_key

    def _log_over_share(self, origin: str) -> None:
        """Say which key is over its share of this thread: its clients see ``overloaded``
        answers (or, beyond ``shed_answers_per_s``, timeouts) and the operator why."""
        count = self._over_share.ready()
        if count:
            settings = self._dist.settings
            logger.warning(
                "dropped %d frame(s) of %s undecoded: the key used its share of the receive "
                "thread (client_receive_share=%s, client_receive_burst_s=%s in [dist]); its "
                "requests are answered overloaded (or time out) until it is back in credit",
                count,
                origin,
                settings.client_receive_share,
                settings.client_receive_burst_s,
            )

    def _log_node_id_cap(self, user: str, node_id: str) -> None:
        count = self._node_id_cap.ready()
        if count:
            logger.warning(
                "refused node id %s: key %s holds %d node ids already (a member restarting "
                "on new addresses gets in once its old ids are forgotten; otherwise the key "
                "is misused); %d such refusals since the last line",
                node_id,
                _identity_of(user),
                MAX_IDS_PER_NODE_KEY,
                count,
            )

    def _of_another_cluster(self, node_id: str, routing_id: bytes) -> bool:
        """Whether the connection is a node of another cluster than this node's (logged).
        Every deployment bootstraps its partitions at the same log position, so a
        node started on an earlier deployment's data directory would otherwise pass for a
        member whose log matches: a review read that deployment's values back for keys
        acknowledged since. Senders without a cluster id (clients, older builds) pass."""
        ours = self._dist.cluster_id
        if ours is None:
            return False
        theirs = nodeid.cluster_of(routing_id)
        if theirs is None or theirs == ours:
            return False
        count = self._other_cluster.ready()
        if count:
            logger.error(
                "refused %s: it is a node of cluster %s, this node of cluster %s (started on "
                "another deployment's data directory?); %d such refusals since the last line",
                node_id,
                theirs,
                ours,
                count,
            )
        return True

    def _rights(self, node_id: str, user: str | None) -> frozenset[str] | None:
        """Every right without CURVE; with it, those of the key the connection authenticated
        with, provided that key may speak for ``node_id`` (None otherwise)."""
        curve = self._dist.curve
        if curve is None:
            return policy.RIGHTS
        return curve.rights_for(node_id, user)

    def _from_its_host(self, node_id: str, address: str | None) -> bool:
        """Whether a connection from ``address`` may use ``node_id``: the id's host must be
        that address (or resolve to it). Replies and pings go to the node id's address, so
        this is what keeps a packet from making this node dial anywhere else."""
        if address is None or not self._dist.settings.check_peer_host:
            return True  # not TCP (inproc/ipc), or checking turned off: nothing to compare
        host = nodeid.parse(node_id).host.strip("[]")
        return address in self._addresses_of(host)

    def _addresses_of(self, host: str) -> frozenset[str]:
        known = self._hosts.get(host)
        if known is not None:
            return known
        try:
            ipaddress.ip_address(host)
            found = frozenset({host})
        except ValueError:
            # A host name: resolved once (this thread's only blocking lookup, on first contact).
            try:
                found = frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
            except OSError:
                found = frozenset()
        if len(self._hosts) >= _MAX_HOST_CACHE:
            self._hosts.clear()
        self._hosts[host] = found
        return found

    def _handle(self, head: zmq.Frame, frame: bytes) -> None:
        conn = self._connection(head)
        if conn is None:
            return
        peer = conn.peer
        dist = self._dist
        if dist._fault_in and peer.node_id in dist._fault_in:
            self._count("rx_dropped_fault")
            return
        counts = self.counts
        counts["rx_msgs"] += 1
        counts["rx_bytes"] += len(frame)
        if policy.MEMBER in conn.sender.rights:
            obj = self._decode(peer, frame, False)
            if obj is not None:
                self._dispatch(conn, obj, frame)
        else:
            self._handle_budgeted(conn, frame)

    def _handle_budgeted(self, conn: _Conn, frame: bytes) -> None:
        """A frame from a sender without the member right, within its key's budget of this
        thread's time (``policy.DecodeBudget``); dropped undecoded (``rx_decode_limited``)
        while the key is in debt.

        Everything the frame costs here is charged, not only its decoding: the depth walk
        of admission and what an inline handler does with it (the acceptor checks and
        admits every command of a client batch on this thread) cost a 1 MB batch of
        30,000 writes twice its decoding. Charging the decoding alone let one client key
        keep the thread, and so the node's GIL, 95 % busy within its budget, and every
        member's heartbeat and answer, and every other client, waited behind it."""
        key = conn.user or conn.peer.node_id  # a key's budget, whatever node ids it uses
        budget = self._decode_budget
        start = time.perf_counter()
        if not budget.allows(key, start):
            self._shed(conn, key, frame, start)
            return
        try:
            obj = self._decode(conn.peer, frame, True)
            if obj is not None:
                self._dispatch(conn, obj, frame)
        finally:
            budget.charge(key, time.perf_counter() - start)

    def _shed(self, conn: _Conn, key: str, frame: bytes, start: float) -> None:
        """A frame of a key in debt: dropped undecoded (``rx_decode_limited``), but answered
        ``overloaded`` at once if it expects an answer (``rx_shed_answers``): a call, or a
        cast that carries its reply address (``inline.set_shed_handler``). Left unanswered,
        its caller waited for its timeout and retried with no cause it could see.

        The answers must not cost this thread what dropping saves, since this thread is what
        a flooding key attacks: only the frame's head is read (``envelope.peek``, a bounded
        prefix; nothing is decoded or checked past it), only ``shed_answers_per_s`` calls
        and casts of a key a second are looked at (its infos, pings and answers never: their
        senders wait for nothing), the rest dropped unread as before, and what looking and
        answering cost is charged to the key's budget like a decode, so it pays its answers
        back before any frame of it is decoded again."""
        self._count("rx_decode_limited")
        self._log_over_share(conn.origin)
        if not envelope.may_want_answer(frame) or not self._shed_answers.take(key, start):
            return
        try:
            if self._answer_shed(conn, frame):
                self._count("rx_shed_answers")
        finally:
            self._decode_budget.charge(key, time.perf_counter() - start)

    def _answer_shed(self, conn: _Conn, frame: bytes) -> bool:
        """Answer a shed frame ``overloaded`` if it expects an answer; True if answered."""
        head = envelope.peek(frame)
        if head is None:
            return False  # a head that does not read as a call's or a cast's
        kind, name, reader = head
        if kind == Kind.CAST:
            return inline.shed(name, reader, conn.sender.node_id)
        if kind != Kind.CALL:
            return False
        try:
            ref = reader.value()
        except codec.CodecError:
            return False
        if type(ref) is not int:
            return False
        # To the connection's own node, as every answer (no reflection to a third node).
        self._dist.send_reply(conn.peer, ref, False, OVERLOADED, envelope.call_run(frame))
        return True

    def _dispatch(self, conn: _Conn, obj: tuple[Any, ...], frame: bytes) -> None:
        """Act on a decoded frame: deliver it, complete a call, or answer a ping."""
        peer = conn.peer
        dist = self._dist
        peer.rx += 1
        kind = obj[1]
        if peer.state is not PeerState.UP:
            peer.last_rx = time.monotonic()
            if kind < Kind.PING:  # (pings and pongs settle the session first)
                dist.peers.come_up(peer)
                if peer.state is PeerState.DOWN:
                    peer.taken_while_down = True
        if kind == Kind.CAST:
            if self._admit(conn, obj[2], False, obj[3], frame) is not True:
                return
            fast = inline._handlers.get(obj[2]) if inline._handlers else None
            if fast is not None and fast(obj[3], conn.origin):
                return
            delivered = self._deliver(obj[2], obj[3], messaging.cast)
            if not delivered and inline._unserved and inline.unserved(obj[2], obj[3], conn.origin):
                self._count("rx_unserved")
        elif kind == Kind.INFO:
            # By the info rules only: a cast rule's guard was written for handle_cast.
            if self._admit(conn, obj[2], False, obj[3], frame, info=True) is True:
                self._deliver(obj[2], obj[3], messaging.send)
        elif kind == Kind.REPLY:
            if not self._deep(frame, obj[3]):
                dist.complete_call(obj[2], True, obj[3], peer.node_id, trailing_int(obj, 4))
        elif kind == Kind.CALL:
            self._call(conn, obj[2], obj[3], obj[4], frame, trailing_int(obj, 5))
        elif kind == Kind.FAIL:
            if not self._deep(frame, obj[3]):
                dist.complete_call(obj[2], False, obj[3], peer.node_id, trailing_int(obj, 4))
        elif kind == Kind.PING:
            self._ping(peer, obj)
        else:  # PONG
            self._pong(peer, obj)

    def _decode(self, peer: Peer, frame: bytes, untrusted: bool) -> Any:
        """The frame's envelope, or None (counted) if it is malformed."""
        try:
            return envelope.decode(frame, self._max_bytes, check_depth=False, untrusted=untrusted)
        except FrameError as exc:
            self._count(exc.counter)
            logger.debug("dropped a frame from %s: %s", peer.node_id, exc)
            return None

    def _deep(self, frame: bytes, value: Any) -> bool:
        if envelope.is_deep(frame, value):
            self._count("rx_too_deep")
            return True
        return False

    def _admit(
        self, conn: _Conn, name: str, call: bool, msg: Any, frame: bytes, info: bool = False
    ) -> bool | str:
        """True if ``msg`` may go to ``name`` as a call (``call``), an info (``info``) or else
        a cast; else the reason (counted). A peer admitted to a member's request is marked a
        member (its going down is then worth a warning). Rate limits count the connection's
        key (``origin``), whatever node ids it speaks as.

        The nesting depth is checked here, after admission, and not for members' traffic
        (Raft RPCs, whose shapes the server checks): walking a 1000-entry AppendEntries would
        cost more than decoding it. Everything from clients and admins is checked."""
        sender = conn.sender
        rule = policy.rule_for(name, call, msg, info=info)
        if not policy.admits(rule, sender, msg):
            self._count("rx_refused")
            what = "call" if call else "info" if info else "cast"
            logger.debug("refused %s %s from %s", what, name, sender)
            return REFUSED
        assert rule is not None
        if rule.limited and not self._limiter.take(conn.origin, policy.privileged(sender.rights)):
            self._count("rx_rate_limited")
            return RATE_LIMITED
        if rule.right == policy.MEMBER:
            conn.peer.member = True
        elif self._deep(frame, msg):
            return TOO_DEEP
        return True

    def _deliver(self, name: str, msg: Any, fn: Any) -> bool:
        """Hand ``msg`` to the process registered as ``name``; False (counted) if none is."""
        pid = self._registry.whereis(name)
        if pid is None:
            self._count("rx_noproc")
            return False
        fn(pid, msg)
        return True

    def _call(
        self, conn: _Conn, name: str, ref: int, request: Any, frame: bytes, run: int | None
    ) -> None:
        peer = conn.peer
        handle = RemoteReplyTo(self._dist, peer, ref, conn.origin, conn.sender.rights, run)
        verdict = self._admit(conn, name, True, request, frame)
        if verdict is not True:
            handle.fail(verdict)
            return
        pid = self._registry.whereis(name)
        if pid is None:
            self._count("rx_noproc")
            answer = inline.unserved_call(name, request, self._dist.otp_node)
            if answer is None:
                handle.fail(NOPROC)
            elif type(answer) is inline.FailCall:
                handle.fail(answer.reason)
            else:
                handle.reply(answer)
            return
        messaging.send_request(pid, request, handle)

    def _ping(self, peer: Peer, obj: tuple[Any, ...]) -> None:
        """Answer a PING. One carrying another session than the peer's last one means the
        peer ended the session (it found this node down) or restarted: this node runs its
        node-down for the peer first, so that the PONG, which lets the peer come back up and
        send again, follows it (see ``peers``). The peer is up here, if it may be, before
        the PONG leaves: the pinger sends as soon as the PONG brings this node back up on
        its side, and what this node sends in answer must not be dropped."""
        dist = self._dist
        run, epoch = trailing_int(obj, 3), trailing_int(obj, 4)
        if run is None or epoch is None:
            pong = envelope.pong_frame(obj[2])
        elif self._stale_run(peer, run):
            return  # (its run is dead: nobody to answer)
        else:
            to_run = trailing_int(obj, 5)
            self._note_session(peer, run, epoch, to_run in (None, dist.run_id))
            pong = envelope.pong_frame(obj[2], (run, epoch), (dist.run_id, peer.epoch))
        dist.peers.come_up(peer)
        dist.transmit_to(peer, pong, down_too=True)  # (faults apply to pongs too)

    def _note_session(self, peer: Peer, run: int, epoch: int, mine: bool = True) -> None:
        """The peer's current session for this node, from a PING or a PONG: a new run or a
        higher epoch ends the session here too. A lower epoch of the same run is stale (a
        PING overtaken by a later PONG, which travels on another connection): ignored. So is
        the change of a session the peer sent while it had heard of a previous run of this
        node only (``mine`` False): it counts downs of that run, not of this one, which has
        nothing of the peer's to clear (a restart here that the peer is not yet aware of).

        A new session also acknowledges every down found here: the peer has ended the
        previous session on its side (a down of its own finding, or a restart), so what
        this node sends from now on already follows its node-down. Waiting for an echo as
        well would leave one side up and the other dropping its answers when both found
        the other down in the same outage."""
        peer.sessions = True
        seen = peer.their_session
        if seen is not None and seen[0] == run and epoch <= seen[1]:
            return
        if seen is not None and seen[0] != run:
            peer.new_run(seen[0])
        peer.their_session = (run, epoch)
        if not mine:
            return
        peer.acked = peer.epoch
        if seen is None:
            return
        if self._dist.peers.mirror_down(peer):
            self._count("sessions_ended_by_peer")
        elif peer.taken_while_down:
            # Down here already, but what it installed since (its frames got through while
            # this node's did not) is gone on its side: cleared here too.
            peer.taken_while_down = False
            self._dist.clean_up_after(peer)
            self._count("sessions_ended_by_peer")

    def _stale_run(self, peer: Peer, run: int) -> bool:
        """Whether ``run`` is a superseded (dead) run of the peer (counted): its PINGs and
        PONGs, still on their way on its connections, neither begin a session nor bring the
        peer back up (see ``peers``)."""
        if run in peer.old_runs:
            self._count("rx_stale_sessions")
            return True
        return False

    def _pong(self, peer: Peer, obj: tuple[Any, ...]) -> None:
        """A PONG: the round trip time, and the session it echoes. An echo of this run's
        current epoch for the peer acknowledges the latest down found here, which lets a
        peer that is down come back up; a PONG without one comes from a peer that does not
        speak sessions."""
        peer.pongs += 1
        sent = peer.ping_sent_at
        if obj[2] == peer.ping_seq and sent is not None:
            peer.rtt = time.monotonic() - sent
        run, epoch = trailing_int(obj, 3), trailing_int(obj, 4)
        if run is None or epoch is None:
            peer.acked = peer.epoch
        elif run == self._dist.run_id:
            # The answerer's own session first: a down it found in the same outage is taken
            # in now, not as news (a second down) once this peer is back up.
            own_run, own_epoch = trailing_int(obj, 5), trailing_int(obj, 6)
            if own_run is not None and own_epoch is not None:
                if self._stale_run(peer, own_run):
                    return  # the echo of a dead run acknowledges nothing
                self._note_session(peer, own_run, own_epoch)
            peer.sessions = True
            peer.acked = max(peer.acked, epoch)
        self._dist.peers.come_up(peer)


def _peer_address(head: zmq.Frame) -> str | None:
    """The remote IP address of the connection a message arrived on (None if not TCP)."""
    try:
        address = head.get("Peer-Address")
    except zmq.ZMQError:
        return None
    return address if isinstance(address, str) and address else None
