"""One running distribution instance: sockets, threads, peers, pending calls, counters.

``waraft.distribution`` keeps at most one :class:`Dist` per OS process and installs it into
``waraft.otp`` as the remote router, so ``otp.cast/send/call((name, node_id), ...)`` to a node
outside this process land here. Threads:

* the receive thread (:mod:`~waraft.distribution.receiver`) owns the ROUTER;
* the liveness thread (:mod:`~waraft.distribution.liveness`) owns the ping sockets, the socket
  monitors and, with CURVE, the ZAP authentication handler, which also enforces the caps on
  authenticated connections (:mod:`~waraft.distribution.conncaps`);
* every thread that sends owns its DEALERs (:mod:`~waraft.distribution.links`).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from waraft.distribution import envelope, inline, keys, nodeid
from waraft.distribution.conncaps import ConnLimits, connection_budget
from waraft.distribution.keys import KeyChanges
from waraft.distribution.links import Outbound
from waraft.distribution.liveness import Liveness
from waraft.distribution.monitors import SIGNALS, DistSignals, allow_signals
from waraft.distribution.peers import Peer, PeerLimitError, PeerState, PeerTable
from waraft.distribution.receiver import Receiver
from waraft.distribution.reply import Outstanding
from waraft.distribution.settings import CurveConfig, DistSettings
from waraft.otp import node as otp_node
from waraft.otp.errors import TIMEOUT, ExitError
from waraft.otp.reply import LocalReplyTo, ReplyTo
from waraft.services import codec

logger = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
"""Where libzmq asks for authentication decisions (fixed by the ZAP protocol, RFC 27)."""

HANDSHAKE_MS = 5000
"""How long an incoming connection may take to complete its ZeroMQ (and CURVE) handshake."""

_ROUTER_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED  # (counted to size the receive thread's sweeps: ``sweeps``)
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class _ThreadCounters(threading.local):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.registered = False


class Counters:
    """Counters written without locks: each thread increments its own dict."""

    def __init__(self) -> None:
        self._tls = _ThreadCounters()
        self._all: list[dict[str, int]] = []
        self._lock = threading.Lock()

    def incr(self, key: str, n: int = 1) -> None:
        """Add ``n`` to ``key`` in the calling thread's dict."""
        tls = self._tls
        if not tls.registered:
            with self._lock:
                self._all.append(tls.counts)
            tls.registered = True
        counts = tls.counts
        counts[key] = counts.get(key, 0) + n

    def add_dict(self, counts: dict[str, int]) -> None:
        """Include a dict owned (and written) by one thread in the totals."""
        with self._lock:
            self._all.append(counts)

    def totals(self) -> dict[str, int]:
        """The sum over every thread (each dict copied atomically under the GIL)."""
        with self._lock:
            dicts = list(self._all)
        out: dict[str, int] = {}
        for counts in dicts:
            for key, value in counts.copy().items():
                out[key] = out.get(key, 0) + value
        return out


PeerListener = Callable[[str, bool], None]
_peer_listeners: list[PeerListener] = []


def add_peer_listener(listener: PeerListener) -> None:
    """Call ``listener(node_id, up)`` (on a distribution thread: the liveness thread, or the
    receive thread for a peer that comes back up or that ended the session itself) whenever a
    peer goes down or comes back up; adding the same listener twice keeps one. It must not
    block."""
    if listener not in _peer_listeners:
        _peer_listeners.append(listener)


def remove_peer_listener(listener: PeerListener) -> None:
    if listener in _peer_listeners:
        _peer_listeners.remove(listener)


def _notify_peer_listeners(node_id: str, up: bool) -> None:
    for listener in list(_peer_listeners):
        try:
            listener(node_id, up)
        except Exception:
            logger.exception("peer listener %r failed", listener)


class Dist:
    """This OS process's distribution layer (``waraft.distribution`` has the public API)."""

    def __init__(
        self,
        node_id: str,
        *,
        bind: str | None,
        curve: CurveConfig | None,
        settings: DistSettings,
        cluster_id: str | None = None,
    ) -> None:
        nodeid.parse(node_id)
        self.settings = settings
        self.curve = curve
        # The cluster this node belongs to (None: not told yet). Connections are tagged with
        # it and a connection tagged with another one is refused (see ``set_cluster_id``);
        # ``cluster_gen`` tells the receiver's per-connection cache that it changed, or that
        # the keys did (``reload_keys``): every connection is checked again.
        self.cluster_id = None if cluster_id is None else nodeid.check_cluster_id(cluster_id)
        self.cluster_gen = 0
        self._keys_lock = threading.Lock()
        self.counters = Counters()
        self.peers = PeerTable(self._on_peer_change, settings.max_peers)
        self._peer_map = self.peers.by_id  # read-only alias for the lock-free hot path
        self._pending: dict[int, Outstanding] = {}
        # This run of the distribution: calls carry it and their answers echo it, so an answer
        # to a call made before a restart under the same node id is recognised and dropped
        # (peer entries, and the answering node's handles, outlive the caller's restart).
        # Bit 62 set: 62 random bits, and always msgpack's 9-byte uint64, so the receive
        # thread can read it off a call frame's tail without decoding (``envelope.call_run``).
        self.run_id = secrets.randbits(62) | 1 << 62
        # Call references start at random too: a reply that carries no run (a hand-made
        # client's answer) still almost never names a call of this run by chance.
        self._refs = itertools.count(secrets.randbits(62) + 1)
        self._fault_in: frozenset[str] = frozenset()
        self._fault_out: frozenset[str] = frozenset()
        self.stopping = False
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._ctx.set(zmq.MAX_SOCKETS, settings.max_sockets)
        zap = router = monitor = None
        try:
            if curve is not None:
                zap = self._ctx.socket(zmq.REP)
                zap.setsockopt(zmq.LINGER, 0)
                zap.bind(ZAP_ENDPOINT)
            router = self._make_router(curve)
            monitor = router.get_monitor_socket(_ROUTER_EVENTS)
            self.node_id = self._bind(router, node_id, bind)
            self.outbound = Outbound(
                self._ctx, self.node_id, settings, curve, lambda: self.cluster_id
            )
            self.otp_node = self._adopt_otp_node()
            self.signals = DistSignals(self)
            self.receiver = Receiver(self, router)
            self.liveness = Liveness(self, self._ctx, monitor, zap, self._conn_limits())
        except BaseException:
            # Nothing runs yet: close what was opened so a failed start leaks nothing
            # (monitor mode off first: see liveness._close_monitored).
            if router is not None and monitor is not None:
                router.disable_monitor()
            for sock in (monitor, router, zap):
                if sock is not None:
                    sock.close(linger=0)
            self._ctx.term()
            raise
        allow_signals()
        inline.set_handler(SIGNALS, self.signals.handle)
        self.receiver.start()  # from here on each thread closes the sockets it owns
        self.liveness.start()
        otp_node.set_remote_router(self)
        otp_node.set_remote_signals(self.signals)
        logger.info("distribution started as %s", self.node_id)

    # ------------------------------------------------------------------ setup
    def _conn_limits(self) -> ConnLimits:
        """The caps on authenticated incoming connections (enforced with CURVE only: without
        keys nobody is authenticated), the total bounded by the descriptor limit now."""
        settings = self.settings
        total = connection_budget(settings.max_connections)
        if self.curve is not None:
            logger.info(
                "incoming connections capped at %d per client key, %d per node key, %d in all",
                settings.max_conns_per_client_key,
                settings.max_conns_per_node_key,
                total,
            )
        return ConnLimits(settings.max_conns_per_client_key, settings.max_conns_per_node_key, total)

    def _make_router(self, curve: CurveConfig | None) -> zmq.Socket[bytes]:
        settings = self.settings
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.RCVHWM, settings.rcvhwm)
        # libzmq cuts connections carrying a frame over twice the limit (memory protection);
        # frames between the limit and that are dropped and counted by the receive thread.
        router.setsockopt(zmq.MAXMSGSIZE, 2 * settings.max_frame_bytes)
        # A peer's link that reconnects (after a TCP drop) presents the routing id it had, and
        # this ROUTER may still hold the old connection: it never writes on incoming ones, so
        # it does not notice one that died half-open. Without handover it would ignore the new
        # connection as long as the old one holds the id; with it the newest connection gets
        # the id. That is safe only because nobody but the peer knows its links' ids: each is
        # random (``nodeid.new_tag``), and one that could be guessed or derived from another
        # let any authenticated key, or anyone without keys, cut members' links for good.
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A connection that has not completed its handshake in this time is closed (libzmq's
        # default is 30 s): TCP connections that never spoke held the node's descriptors
        # long enough that ~700 connects a second, without any key, exhausted them.
        router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if curve is not None:
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
            router.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
            router.setsockopt_string(zmq.ZAP_DOMAIN, "waraft")
        return router

    def _adopt_otp_node(self) -> otp_node.Node:
        # Make the otp node with this id the process default (created unless it exists), so
        # that names registered from now on are reachable from other nodes.
        existing = otp_node.get(self.node_id)
        if existing is not None and existing.alive:
            otp_node.set_default(existing)
            return existing
        return otp_node.start_default(self.node_id)

    @staticmethod
    def _bind(router: zmq.Socket[bytes], node_id: str, bind: str | None) -> str:
        address = nodeid.parse(node_id)
        if bind is None:
            port = "*" if address.port == 0 else str(address.port)
            bind = f"tcp://{address.host}:{port}"
        router.bind(bind)
        if address.port != 0:
            return node_id
        last = router.getsockopt_string(zmq.LAST_ENDPOINT)
        return nodeid.with_port(node_id, int(last.rpartition(":")[2]))

    # ------------------------------------------------------------------ sending
    def transmit(self, node_id: str, frame: bytes) -> bool:
        """Queue ``frame`` for ``node_id`` if the peer is not down, not cut off by a fault
        and the frame is within the size limit; count the reason otherwise."""
        peer = self._peer_map.get(node_id)
        if peer is None:
            try:
                peer = self.peers.get(node_id)
            except nodeid.NodeIdError:
                self.counters.incr("tx_bad_address")
                return False
            except PeerLimitError:
                self.counters.incr("tx_peer_limit")
                return False
        return self.transmit_to(peer, frame)

    def transmit_to(self, peer: Peer, frame: bytes, *, down_too: bool = False) -> bool:
        """:meth:`transmit` to a known peer; with ``down_too`` even while it is down (the
        PONGs a peer found down comes back up through, answers to its calls)."""
        if peer.forgotten:  # held by a reply handle while the table forgot it
            return self.transmit(peer.node_id, frame)
        if self._fault_out and peer.node_id in self._fault_out:
            self.counters.incr("tx_dropped_fault")
            return False
        if peer.state is PeerState.DOWN and not down_too:
            self.counters.incr("tx_dropped_nodedown")
            return False
        if len(frame) > self.settings.max_frame_bytes:
            self.counters.incr("tx_oversized")
            logger.error("dropped a %d-byte frame to %s (over the limit)", len(frame), peer)
            return False
        try:
            return self.outbound.send(peer, frame)
        except zmq.ZMQError as exc:  # e.g. the socket limit: a cast never raises
            self.counters.incr("tx_socket_errors")
            logger.error("cannot send to %s: %s", peer.node_id, exc)
            return False

    def transmit_answer(self, node_id: str, frame: bytes) -> bool:
        """:meth:`transmit` the answer to a frame ``node_id`` just sent: also while it is
        down here but has sent since (``Peer.heard_since_down``). Such a peer is running and
        may be up on its side already (it acknowledged the down with a PING or PONG that its
        other frames overtook, on another connection): dropped, the answer would be lost for
        good, as for the answers to its calls."""
        peer = self._peer_map.get(node_id)
        if peer is None:
            return self.transmit(node_id, frame)
        return self._answer_to(peer, frame)

    def _answer_to(self, peer: Peer, frame: bytes) -> bool:
        """:meth:`transmit_to` an answer (a call's reply, a link's or monitor's immediate
        signal): also while ``peer`` is down here but has sent since, see
        :meth:`transmit_answer`."""
        return self.transmit_to(peer, frame, down_too=peer.heard_since_down())

    def cast_bytes(self, addr: tuple[str, str], payload: bytes, *, info: bool = False) -> bool:
        """Ship an already encoded message (``codec.packb(msg)``) to ``addr``."""
        name, node_id = addr
        frame = envelope.info_frame(name, payload) if info else envelope.cast_frame(name, payload)
        return self.transmit(node_id, frame)

    def _encode(self, msg: Any) -> bytes | None:
        try:
            return codec.packb(msg)
        except codec.CodecError as exc:
            self.counters.incr("tx_encode_errors")
            logger.error("cannot encode a message for another node: %s", exc)
            return None

    # RemoteRouter protocol (waraft.otp.node) ----------------------------------------------
    def frame_limit(self, node_id: str) -> int | None:
        """The largest frame a message to ``node_id`` can travel in (``max_frame_bytes``; a
        larger one is dropped), or None for this node or another node of this process (no
        message to it leaves the process)."""
        if node_id == self.node_id or otp_node.get(node_id) is not None:
            return None
        return self.settings.max_frame_bytes

    def cast(self, addr: tuple[str, str], msg: Any) -> bool:
        """Deliver ``msg`` to ``handle_cast`` of ``addr``; False if dropped. Never blocks."""
        payload = self._encode(msg)
        return payload is not None and self.cast_bytes(addr, payload)

    def send(self, addr: tuple[str, str], msg: Any) -> bool:
        """Deliver ``msg`` to ``handle_info`` of ``addr``; False if dropped. Never blocks."""
        payload = self._encode(msg)
        return payload is not None and self.cast_bytes(addr, payload, info=True)

    def call(self, addr: tuple[str, str], request: Any, timeout: float | None) -> Any:
        """Call ``addr`` and wait up to ``timeout`` seconds (None = forever).

        Raises ``ExitError`` with ``"timeout"``, ``("nodedown", node)`` (peer down, cut off by
        a fault, unreachable, or lost while waiting), ``"noproc"`` or the callee's exit reason;
        raises ``CodecError`` if ``request`` cannot be encoded.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        handle = LocalReplyTo()
        ref = self._request(addr, request, handle, deadline, None)
        if ref is None:
            return handle.wait(0)  # failed already: raises its reason
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return handle.wait(remaining)
        except ExitError as exc:
            if exc.reason == TIMEOUT:
                self.counters.incr("call_timeouts")
            elif isinstance(exc.reason, tuple) and exc.reason[:1] == ("nodedown",):
                self.counters.incr("call_nodedown")
            raise
        finally:
            self._pending.pop(ref, None)

    def send_request(
        self,
        addr: tuple[str, str],
        request: Any,
        handle: ReplyTo,
        timeout: float | None = 60.0,
    ) -> None:
        """Send a call without waiting (``gen_server:send_request``): the answer completes
        ``handle``; without one within ``timeout`` seconds (None = never given up) the
        handle fails with ``"timeout"``. Failures to send complete it at once."""
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        # Queue space is waited for briefly only: the caller does not want to block.
        send_by = now + 0.1 if deadline is None else min(deadline, now + 0.1)
        self._request(addr, request, handle, send_by, deadline)

    def _request(
        self,
        addr: tuple[str, str],
        request: Any,
        handle: ReplyTo,
        send_by: float | None,
        expires: float | None,
    ) -> int | None:
        """Register and send a CALL frame; the reference, or None if ``handle`` was failed."""
        name, node_id = addr
        try:
            peer = self.peers.get(node_id)
        except (nodeid.NodeIdError, PeerLimitError):
            handle.fail(("nodedown", node_id))
            return None
        if self._fault_out and node_id in self._fault_out:
            self.counters.incr("call_nodedown")
            handle.fail(("nodedown", node_id))
            return None
        ref = next(self._refs)
        frame = envelope.call_frame(name, ref, codec.packb(request), self.run_id)
        if len(frame) > self.settings.max_frame_bytes:
            self.counters.incr("tx_oversized")
            handle.fail(("frame_too_large", len(frame)))
            return None
        self._pending[ref] = Outstanding(handle, node_id, expires)
        self.counters.incr("calls")
        # Checked only once the request is visible in _pending: a peer going down from now
        # on fails it through the down listener, and one down already is caught here.
        if peer.state is PeerState.DOWN or self.stopping:
            self._pending.pop(ref, None)
            self.counters.incr("call_nodedown")
            handle.fail(("nodedown", node_id))
            return None
        try:
            sent = self.outbound.send_wait(
                peer, frame, send_by, lambda: handle.done or not self._sendable(peer)
            )
        except BaseException:  # e.g. a scheduled caller killed while it waited for room
            self._pending.pop(ref, None)
            raise
        if not sent:
            self._pending.pop(ref, None)
            if handle.done:  # failed meanwhile (its peer went down): that is the outcome
                return None
            if self.stopping or not self._sendable(peer):
                self.counters.incr("call_nodedown")
                handle.fail(("nodedown", node_id))
            else:
                self.counters.incr("call_timeouts")
                handle.fail(TIMEOUT)
            return None
        return ref

    def _sendable(self, peer: Peer) -> bool:
        """Whether frames for ``peer`` may still be queued: not down, not forgotten, not cut
        off by a fault, and distribution not stopping."""
        return not (
            self.stopping
            or peer.forgotten
            or peer.state is PeerState.DOWN
            or (bool(self._fault_out) and peer.node_id in self._fault_out)
        )

    def expire_requests(self, now: float) -> None:
        """Fail asynchronous requests that outlived their timeout (liveness thread)."""
        for ref, entry in self._pending.copy().items():
            if entry.expires is not None and entry.expires <= now:
                self._pending.pop(ref, None)
                if not entry.handle.done:
                    self.counters.incr("call_timeouts")
                entry.handle.fail(TIMEOUT)

    # ------------------------------------------------------------------ replies
    def send_reply(
        self, peer: Peer, ref: int, ok: bool, value: Any, run: int | None = None
    ) -> None:
        """Answer call ``ref`` from ``peer``'s run ``run`` (used by ``RemoteReplyTo``)."""
        try:
            payload = codec.packb(value)
        except codec.CodecError as exc:
            self.counters.incr("tx_encode_errors")
            logger.error("cannot encode the reply to a call from %s: %s", peer.node_id, exc)
            ok, payload = False, codec.packb(("badarg", f"unencodable reply: {exc}"))
        # A peer found down that called since is running; it is down here only until it
        # acknowledges the down (``peers``). Its call may be of the session it began on
        # seeing this node take in a down of its own finding, sent before the PONG that
        # acknowledges it arrived (another connection): answered, not left to time out.
        frame = envelope.reply_frame(ref, ok, payload, run)
        if not self._answer_to(peer, frame):
            self.counters.incr("tx_replies_dropped")

    def complete_call(
        self, ref: int, ok: bool, value: Any, node_id: str, run: int | None = None
    ) -> None:
        """A REPLY/FAIL frame arrived from ``node_id`` (receive thread). Only the node that
        was called can answer: a reply naming another node's call is dropped and counted
        (``rx_foreign_replies``), and so is one echoing another run id than this one's
        (``rx_stale_replies``): the answer to a call of this node's previous run, which
        could otherwise complete a call of this run that has the same reference."""
        if run is not None and run != self.run_id:
            self.counters.incr("rx_stale_replies")
            return
        entry = self._pending.get(ref)
        if entry is not None and entry.node != node_id:
            self.counters.incr("rx_foreign_replies")
            return
        entry = self._pending.pop(ref, None)
        if entry is None:
            self.counters.incr("rx_late_replies")
        elif ok:
            entry.handle.reply(value)
        else:
            entry.handle.fail(value)

    # ------------------------------------------------------------------ liveness
    def _on_peer_change(self, peer: Peer, old: PeerState, new: PeerState) -> None:
        if new is PeerState.DOWN:
            self.counters.incr("nodedown_events")
            logger.log(
                logging.WARNING if peer.member else logging.INFO,
                "node %s is down (was %s)",
                peer.node_id,
                old.value,
            )
            self.clean_up_after(peer)
            _notify_peer_listeners(peer.node_id, False)
        elif new is PeerState.UP:
            self.counters.incr("nodeup_events")
            logger.info("node %s is up", peer.node_id)
            _notify_peer_listeners(peer.node_id, True)

    def clean_up_after(self, peer: Peer) -> None:
        """The node-down's clean-up for ``peer`` (without a state change): its pending calls
        fail with ``nodedown``, monitors and links with it get ``noconnection``, and what it
        installed here is removed. Run by every down, and again when a peer down here ends
        the session after frames of it were taken in (``peers``)."""
        reason = ("nodedown", peer.node_id)
        for ref, entry in self._pending.copy().items():
            if entry.node == peer.node_id:
                self._pending.pop(ref, None)
                entry.handle.fail(reason)
        self.signals.node_down(peer.node_id)

    # ------------------------------------------------------------------ faults
    def set_fault(self, inbound: Iterable[str], outbound: Iterable[str]) -> None:
        """Drop frames from ``inbound`` nodes and to ``outbound`` nodes (replacing any
        previous fault)."""
        self._fault_in = frozenset(inbound)
        self._fault_out = frozenset(outbound)

    def fault_in(self) -> frozenset[str]:
        """Nodes whose frames are currently dropped on arrival."""
        return self._fault_in

    def fault_out(self) -> frozenset[str]:
        """Nodes to which frames are currently dropped."""
        return self._fault_out

    def set_cluster_id(self, cluster_id: str) -> None:
        """Make this node a node of ``cluster_id`` from now on: connections opened from now
        on carry it, and the receiver re-checks every connection, refusing those tagged with
        another cluster. ``ValueError`` if it is not a cluster id or the node already belongs
        to another one (a node's cluster never changes while it runs)."""
        nodeid.check_cluster_id(cluster_id)
        if self.cluster_id not in (None, cluster_id):
            raise ValueError(f"node {self.node_id} belongs to cluster {self.cluster_id}")
        if self.cluster_id is None:
            self.cluster_id = cluster_id
            self.cluster_gen += 1
            logger.info("node %s belongs to cluster %s", self.node_id, cluster_id)

    def reload_keys(self) -> KeyChanges:
        """Re-read the cluster's keys from the key directory this node's keys were loaded
        from and take them (see ``waraft.distribution.reload_keys``). Raises ``KeysError``,
        changing nothing, for a file that cannot be read or used, or one a running node may
        not take (``keys.check_reload``)."""
        with self._keys_lock:  # a signal and an admin request at once: one after the other
            current = self.curve
            if current is None:
                raise keys.KeysError("this node runs without keys (--insecure): nothing to reload")
            if current.source is None:
                raise keys.KeysError(
                    "this node's keys were given in code, not loaded from a key directory"
                )
            directory, name, role = current.source
            new = keys.load(directory, name, role)
            changes = keys.check_reload(current, new)
            if not changes:
                logger.info("keys reloaded from %s: unchanged", directory)
                return changes
            # The new keys first, then the generation: a connection checked against the old
            # keys meanwhile is then checked again (receiver); links and probes that present
            # a server key the new file changed are closed and reopened with the new one
            # (the senders' links here, the probes by the liveness thread that owns them).
            self.curve = new
            closed = self.outbound.set_curve(new)
            self.cluster_gen += 1
            logger.warning(
                "keys reloaded from %s: %s (%d links reopened)",
                directory,
                changes.describe(),
                closed,
            )
            return changes

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, int]:
        """Every counter of this instance (see ``waraft.distribution.stats``)."""
        out = self.outbound.counters()
        for key, value in self.counters.totals().items():
            out[key] = out.get(key, 0) + value
        out["pending_calls"] = len(self._pending)
        out["peers"] = len(self.peers.all())
        out["links_open"] = self.outbound.open_links()
        out.update(self.signals.counts())
        return out

    def peer_status(self) -> dict[str, dict[str, Any]]:
        """Per peer: liveness and counters (see ``waraft.distribution.peers``)."""
        per_link = self.outbound.per_peer()
        pending: dict[str, int] = {}
        for entry in self._pending.copy().values():
            pending[entry.node] = pending.get(entry.node, 0) + 1
        empty = {"links": 0, "tx": 0, "tx_bytes": 0, "tx_dropped_full": 0}

        def extra(peer: Peer) -> dict[str, Any]:
            return {
                **per_link.get(peer.node_id, empty),
                "pending_calls": pending.get(peer.node_id, 0),
                "fault": peer.node_id in self._fault_in or peer.node_id in self._fault_out,
                "member": peer.member,
            }

        return self.peers.status(extra)

    # ------------------------------------------------------------------ shutdown
    def stop(self, timeout: float = 2.0) -> None:
        """Stop the threads, close every socket (linger 0) and terminate the context.

        Calls still waiting fail with ``("nodedown", node)``. Bounded by about ``timeout``
        seconds; if something could not be closed in time, the context is abandoned rather
        than waited for.
        """
        deadline = time.monotonic() + timeout
        self.stopping = True
        if otp_node.remote_router() is self:
            otp_node.set_remote_router(None)
        if otp_node.remote_signals() is self.signals:
            otp_node.set_remote_signals(None)
        if inline.handler(SIGNALS) == self.signals.handle:
            inline.set_handler(SIGNALS, None)
        self.signals.close()  # every node is lost: noconnection to every link and monitor
        for entry in self._pending.copy().values():
            entry.handle.fail(("nodedown", entry.node))
        self._pending.clear()
        clean = True
        for thread in (self.receiver, self.liveness):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                clean = False
                logger.error("%s did not stop in time", thread.name)
        clean = self.outbound.close_all(max(0.1, deadline - time.monotonic())) and clean
        if clean:
            self._terminate_context(max(0.1, deadline - time.monotonic()))
        else:
            logger.error("distribution context abandoned: some sockets could not be closed")
        logger.info("distribution %s stopped", self.node_id)

    def _terminate_context(self, timeout: float) -> None:
        # Every socket is closed with linger 0 (reaped ones with a short linger), so term()
        # returns at once; it runs in a helper thread anyway so stop() can never hang on it.
        worker = threading.Thread(target=self._ctx.term, name="dist:term", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            logger.error("terminating the ZeroMQ context takes longer than %.1f s", timeout)
