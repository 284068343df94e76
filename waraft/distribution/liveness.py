"""The liveness thread: peer pings, socket monitors, dead-thread link reaping, CURVE auth.

For every known peer this thread keeps a *probe*: a DEALER of its own to the peer's ROUTER,
with a ZeroMQ socket monitor. The probe sends a PING whenever nothing has been heard from the
peer for ``ping_interval`` (links that carry traffic are never pinged); the PONG comes back on
the peer's own link to our ROUTER. A PING carries this node's run id and session epoch for the
peer; a peer found down comes back up only once it acknowledged the down, by a PONG echoing
them or a PING of its own new session (see ``peers``: down is seen by both nodes). Silence
counts only up to the latest moment the receive thread has caught up with (``_silent``,
``sweeps``), so a peer whose frames wait unread behind a flood is not found down for it, while
a peer that stopped is found down whoever floods this node. The monitor reports
TCP-level facts at once: a refused connect (peer not running) or a lost connection (peer
died) marks the peer down immediately, so callers get ``nodedown`` in milliseconds instead of
after ``down_after``; a completed handshake triggers an immediate ping so a returning peer is
back up after one round trip. A lost connection made before a new run of the peer was heard of
is the old run's end, already taken in with the new run's session: no down
(``_superseded``).

The same poll loop serves the ROUTER's monitor (connection counters) and, with CURVE, the ZAP
handler that decides which client keys may connect. The loop polls for at most one tick
(50 ms), so ``stop()`` is noticed quickly; it closes every socket it owns on the way out.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from waraft.distribution import envelope, nodeid
from waraft.distribution.conncaps import REFUSED_STATUS, ConnLedger, ConnLimits, peer_host
from waraft.distribution.links import apply_curve_client
from waraft.distribution.peers import Peer, PeerState
from waraft.distribution.sweeps import SweepBound
from waraft.otp.threadname import set_os_name
from waraft.services.logthrottle import LogThrottle

if TYPE_CHECKING:
    from waraft.distribution.runtime import Dist

logger = logging.getLogger(__name__)

TICK = 0.05
REAP_EVERY = 1.0
_PROBE_HWM = 4  # a probe to a dead peer keeps a few pings queued, not thousands
_MAX_EVENTS = 1024  # monitor events taken per socket per step (libzmq queues up to 1000)
# ZAP requests answered per step: a burst of handshakes (a restarted cluster, or a flood of
# clients with unknown keys) is answered in one step instead of one per poll round, and the
# bound keeps a flood from starving pings and down detection for the rest of the step.
_MAX_ZAP = 256
LAGGING_DOWNS = 10
"""Silence beyond this many ``down_after`` finds a peer down even while this node's receive
thread has not caught up since (see ``Liveness._silent``): it is held up on a frame or a stall,
or reading the frames of many connections accepted since its ROUTER was last empty."""
SWEEP_HEADROOM = 4
"""The sweeps the receive thread is asked for are a 1/this longer than the length the counts
give now: they are checked against the counts as they are when they complete."""
_MAX_DRAINS = 8  # monitor batches taken before the counts are used (else they are not trusted)
_ROUTER_STOP_WAIT = 1.0  # seconds the closing liveness thread waits for the receive thread

_PROBE_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class _Probe:
    __slots__ = ("connected_at", "excused", "monitor", "peer", "server_key", "sock")

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        monitor: zmq.Socket[bytes],
        peer: Peer,
        server_key: bytes | None = None,
    ) -> None:
        self.sock = sock
        self.monitor = monitor
        self.peer = peer
        self.server_key = server_key  # the CURVE key it expects of the peer (None: no CURVE)
        # When its connection last completed a handshake (None: none since the last loss).
        self.connected_at: float | None = None
        self.excused = False  # its last loss was excused (``Liveness._superseded``)


class Liveness(threading.Thread):
    """Pings, monitors and authentication for one distribution instance."""

    def __init__(
        self,
        dist: Dist,
        ctx: zmq.Context[zmq.Socket[bytes]],
        router_monitor: zmq.Socket[bytes],
        zap: zmq.Socket[bytes] | None,
        limits: ConnLimits,
    ) -> None:
        super().__init__(name="dist:liveness", daemon=True)
        self._dist = dist
        self._ctx = ctx
        self._router_monitor = router_monitor
        self._zap = zap
        self._probes: dict[str, _Probe] = {}
        self._by_monitor: dict[zmq.Socket[bytes], _Probe] = {}
        self._poller = zmq.Poller()
        self._poller.register(router_monitor, zmq.POLLIN)
        if zap is not None:
            self._poller.register(zap, zmq.POLLIN)
        self._next_reap = 0.0
        # What repeats every tick, or what anyone reaching the port can cause, is logged
        # at most once a second (the counters count every one).
        self._errors = LogThrottle()
        self._denied = LogThrottle()
        self._handshakes = LogThrottle()
        self._keys_gen = dist.cluster_gen  # the keys the probes were opened with
        self.counts: dict[str, int] = {}
        dist.counters.add_dict(self.counts)
        # The connection caps (``conncaps``): authenticated connections, counted by the
        # ROUTER monitor's events and granted by the ZAP handler.
        self.ledger = ConnLedger(limits)
        # The ROUTER's connection counts that size the receive thread's sweeps (``sweeps``).
        self.sweeps = SweepBound()
        self._failed_last = False  # the last monitor event was a handshake failure
        self._refused = LogThrottle()
        self.counts["conns_authenticated"] = 0  # a gauge: only this dict has it

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        set_os_name("dist:liveness")
        try:
            while not self._dist.stopping:
                try:
                    self._step()
                except Exception:
                    if self._dist.stopping:
                        break
                    # A failed step (say a socket the context refused) must not end pings
                    # and down detection for every peer: the node would look alive to its
                    # own code and dead to everyone else. Count it, say it, go on.
                    self._failed_step()
        finally:
            self._close()

    def _failed_step(self) -> None:
        self._count("liveness_errors")
        self._log_error(
            "distribution liveness step failed (%d so far)",
            self.counts["liveness_errors"],
            exc_info=True,
        )
        time.sleep(TICK)

    def _log_error(self, fmt: str, *args: object, exc_info: bool = False) -> None:
        """Log an error at most once a second: a fault that repeats every tick must not
        flood the log."""
        if self._errors.ready():
            logger.error(fmt, *args, exc_info=exc_info)

    def _step(self) -> None:
        for sock, _ in self._poller.poll(int(TICK * 1000)):
            if sock is self._zap:
                self._authenticate()
            elif sock is self._router_monitor:
                self._router_event()
            else:
                probe = self._by_monitor.get(sock)
                if probe is not None:
                    self._probe_event(probe)
        self._check(time.monotonic())

    def _check(self, now: float) -> None:
        dist = self._dist
        settings = dist.settings
        if dist.cluster_gen != self._keys_gen:
            self._keys_gen = dist.cluster_gen
            self._close_stale_probes()
        # Before any peer's receive count is read: a frame read before the moment is in its
        # peer's count by then (the receive thread counts it first). Read after, a pong taken
        # in between would be covered by the moment and missing from the count.
        caught_up = self._caught_up()
        for peer in dist.peers.all():
            if peer.rx != peer.rx_seen:
                peer.rx_seen = peer.rx
                peer.last_rx = now
            probe = self._probes.get(peer.node_id)
            if probe is not None and probe.peer is not peer:
                # The node was forgotten and came back as a new entry: a new probe for it.
                self._close_probe(peer.node_id, probe)
                dist.outbound.close_peer(peer.node_id)
                probe = None
            if probe is None:
                try:
                    self._open_probe(peer)
                except zmq.ZMQError as exc:
                    # No socket for this peer now (e.g. the context's socket limit): the
                    # other peers still get their pings; this one is tried again next tick.
                    self._count("probe_open_failed")
                    self._log_error("cannot open a probe to %s: %s", peer.node_id, exc)
                continue
            state = peer.state
            if state is PeerState.CONNECTING:
                if now - peer.since > settings.connect_timeout:
                    dist.peers.set_state(peer, PeerState.DOWN)
            elif state is PeerState.UP and self._silent(peer, now, caught_up):
                dist.peers.set_state(peer, PeerState.DOWN)
            # A peer that is not up is pinged whatever it sends: only its PONG (the echo of
            # the session) or its PING brings back a peer found down, and a busy peer must
            # learn of the down.
            quiet = (
                state is not PeerState.UP
                or peer.last_rx is None
                or now - peer.last_rx >= settings.ping_interval
            )
            due = peer.ping_sent_at is None or now - peer.ping_sent_at >= settings.ping_interval
            if quiet and due:
                self._ping(probe, now)
        if now >= self._next_reap:
            self._next_reap = now + REAP_EVERY
            self._forget(now)
            dist.expire_requests(now)
            reaped = dist.outbound.reap_dead_threads()
            if reaped:
                self.counts["links_reaped"] = self.counts.get("links_reaped", 0) + reaped

    def _caught_up(self) -> float:
        """The latest moment the receive thread is known to have caught up with: every
        connection that held a readable frame then has had a message read since (``sweeps``).
        Its last empty moment, or the start of its latest sweep if that one is later and read
        enough messages for the connections the ROUTER may have held meanwhile.

        The order matters: the empty moment first (``SweepBound.observe``), then the sweep,
        then the monitor's events (every connection the sweep can have read is counted by
        then: its accept was reported before its first frame could arrive)."""
        receiver = self._dist.receiver
        bound = self.sweeps
        empty_at = bound.observe(lambda: receiver.empty_at, time.monotonic)
        start, read = receiver.swept
        counted = self._take_router_events()
        length = bound.length()
        receiver.sweep_length = length + length // SWEEP_HEADROOM
        if counted and start > empty_at and read >= length:
            return start
        return empty_at

    def _take_router_events(self) -> bool:
        """Take every event the ROUTER's monitor holds; False if it kept more coming than
        ``_MAX_DRAINS`` batches (then its counts may miss connections)."""
        return any(self._router_event() < _MAX_EVENTS for _ in range(_MAX_DRAINS))

    def _silent(self, peer: Peer, now: float, caught_up: float) -> bool:
        """Whether ``peer`` has been silent for ``down_after``, as far as this node can tell.

        Only silence up to a moment the receive thread has caught up with (``caught_up``,
        see :meth:`_caught_up`) counts: while it is behind (a stall of this process, a slow
        frame, many connections' backlogs) the peer's pings and traffic may sit unread in the
        ROUTER's queue, and a down found then is a false one that the peer pays for too
        (what it asked of this node fails). A flood alone does not hold it back: the ROUTER
        reads its connections in turn, so a sweep completes whoever floods. A receive path
        behind by more than ``LAGGING_DOWNS`` times ``down_after`` no longer shields anyone:
        a peer paused meanwhile is not kept up for ever."""
        heard = peer.last_rx
        if heard is None:
            return True
        down_after = self._dist.settings.down_after
        if now - heard <= down_after:
            return False
        return caught_up - heard > down_after or now - heard > LAGGING_DOWNS * down_after

    def _forget(self, now: float) -> None:
        """Release everything held for peers down longer than ``forget_after`` (and for peers
        evicted from a full table): the entry, the probe and every thread's link."""
        dist = self._dist
        for peer in dist.peers.expire(now, dist.settings.forget_after):
            logger.info("forgetting node %s (down for %.0f s)", peer.node_id, now - peer.since)
        for node_id, probe in list(self._probes.items()):
            if probe.peer.forgotten:
                self._close_probe(node_id, probe)
                closed = dist.outbound.close_peer(node_id)
                self.counts["peers_forgotten"] = self.counts.get("peers_forgotten", 0) + 1
                if closed:
                    self.counts["links_closed"] = self.counts.get("links_closed", 0) + closed

    def _close_stale_probes(self) -> None:
        """Close the probes that expect another server key than the (reloaded) keys give
        their peer; the loop reopens them with the right one. A probe keeps the key it was
        opened with for every reconnect, so a node whose key became known only now would
        otherwise fail its handshakes for good."""
        curve = self._dist.curve
        if curve is None:
            return
        for node_id, probe in list(self._probes.items()):
            if probe.server_key != curve.server_key_for(node_id):
                self._close_probe(node_id, probe)
                self._count("probes_rekeyed")

    def _close_probe(self, node_id: str, probe: _Probe) -> None:
        del self._probes[node_id]
        self._by_monitor.pop(probe.monitor, None)
        self._poller.unregister(probe.monitor)
        _close_monitored(probe.sock, probe.monitor)

    # ------------------------------------------------------------------ probes
    def _open_probe(self, peer: Peer) -> None:
        dist = self._dist
        settings = dist.settings
        sock = self._ctx.socket(zmq.DEALER)
        monitor: zmq.Socket[bytes] | None = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            # Random, as every link's is (``nodeid.new_tag``): the peer's ROUTER hands a routing
            # id over to the newest connection presenting it, so a predictable one let anyone
            # who could connect cut this probe off.
            tag = nodeid.new_tag("p")
            sock.setsockopt(zmq.ROUTING_ID, nodeid.routing_id(dist.node_id, tag, dist.cluster_id))
            sock.setsockopt(zmq.SNDHWM, _PROBE_HWM)
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, settings.reconnect_ivl_ms)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, settings.reconnect_ivl_max_ms)
            curve = dist.curve
            apply_curve_client(sock, curve, peer.node_id)
            monitor = sock.get_monitor_socket(_PROBE_EVENTS)
            sock.connect(peer.endpoint)
        except BaseException:
            if monitor is None:
                sock.close(linger=0)
            else:  # monitor mode off first, as for every monitored socket
                _close_monitored(sock, monitor)
            raise
        probe = _Probe(
            sock, monitor, peer, None if curve is None else curve.server_key_for(peer.node_id)
        )
        self._probes[peer.node_id] = probe
        self._by_monitor[monitor] = probe
        self._poller.register(monitor, zmq.POLLIN)
        self._ping(probe, time.monotonic())

    def _ping(self, probe: _Probe, now: float) -> None:
        peer = probe.peer
        fault_out = self._dist.fault_out()
        if fault_out and peer.node_id in fault_out:
            return
        peer.ping_seq += 1
        peer.ping_sent_at = now
        try:
            theirs = peer.their_session
            to_run = None if theirs is None else theirs[0]
            frame = envelope.ping_frame(peer.ping_seq, self._dist.run_id, peer.epoch, to_run)
            probe.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._count("pings_dropped")
            return
        peer.pings += 1

    def _probe_event(self, probe: _Probe) -> None:
        peer = probe.peer
        dist = self._dist
        events = _drain_events(probe.monitor)
        faulted = peer.node_id in dist.fault_in() or peer.node_id in dist.fault_out()
        for event, _ in events:
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                probe.connected_at = time.monotonic()
                probe.excused = False
                if not faulted:
                    self._ping(probe, time.monotonic())
            elif event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_DISCONNECTED):
                # Refused or lost at the TCP level: the peer process is gone (or restarting).
                if not self._superseded(probe, event):
                    dist.peers.set_state(peer, PeerState.DOWN)
            elif event & _HANDSHAKE_FAILED:
                self._count("probe_handshake_failed")
                self._log_handshake_failed(peer.node_id, event)
                dist.peers.set_state(peer, PeerState.DOWN)

    def _log_handshake_failed(self, node_id: str, event: int) -> None:
        """Say that a handshake with a peer failed, at most once a second: a probe retries
        every ``reconnect_ivl`` (a node whose key this one does not know logged ~10 lines a
        second on every leader); ``probe_handshake_failed`` counts every one."""
        count = self._handshakes.ready()
        if count:
            logger.warning(
                "handshake with %s failed (event %d; %d failed handshakes since the last such "
                "line): does each side have the other's key in its cluster.json? (after "
                "'waraft keys add', reload the keys: SIGHUP or 'waraft keys reload')",
                node_id,
                event,
                count,
            )

    def _superseded(self, probe: _Probe, event: int) -> bool:
        """Whether a lost connection of ``probe`` (``event``) was one to a run of the peer
        that a newer run has replaced since it was made (counted): that run's end was taken
        in when the new one's session arrived (``peers``), and a down found now would end the
        new run's session too (a second down on both nodes). Excused are the first loss
        after a handshake and the retry libzmq schedules right after it; a failed reconnect
        (a further retry) is news about the new run."""
        if event != zmq.EVENT_DISCONNECTED:
            excused, probe.excused = probe.excused, False
            return excused
        connected, replaced = probe.connected_at, probe.peer.run_seen_at
        probe.connected_at = None
        probe.excused = connected is not None and replaced is not None and replaced > connected
        if probe.excused:
            self._count("probe_superseded_losses")
        return probe.excused

    # ------------------------------------------------------------------ router monitor, ZAP
    def _router_event(self) -> int:
        """Take the ROUTER monitor's waiting events (one batch); how many there were."""
        events = _drain_events(self._router_monitor)
        last_close = {v: i for i, (k, v) in enumerate(events) if k == zmq.EVENT_DISCONNECTED}
        ledger = self.ledger
        bound = self.sweeps
        for i, (kind, value) in enumerate(events):
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                bound.handshakes += 1
                continue  # (not between a failure and its disconnect: see ``conncaps``)
            if kind == zmq.EVENT_ACCEPTED:
                self._count("conn_accepted")
                bound.accepted += 1
                # A descriptor closed later in this batch may be reused already: no address.
                closed_later = last_close.get(value, -1) > i
                ledger.accepted(value, None if closed_later else peer_host(value))
            elif kind == zmq.EVENT_DISCONNECTED:
                self._count("conn_closed")
                bound.closed += 1
                ledger.closed(value, authenticated=not self._failed_last)
            elif kind & _HANDSHAKE_FAILED:
                self._count("handshake_failed")
            self._failed_last = bool(kind & _HANDSHAKE_FAILED)
        self.counts["conns_authenticated"] = ledger.granted
        return len(events)

    def _authenticate(self) -> None:
        """Answer the waiting ZAP requests (RFC 27), at most ``_MAX_ZAP`` per step: CURVE
        clients whose key is allowed get 200 unless it is over its connection caps, every
        other client 400."""
        zap = self._zap
        assert zap is not None
        # Every connection a waiting request can belong to was accepted before the request
        # was made: take those events first, so the grant finds its connection.
        self._router_event()
        for _ in range(_MAX_ZAP):
            try:
                frames = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._answer_zap(zap, frames)

    def _answer_zap(self, zap: zmq.Socket[bytes], frames: list[bytes]) -> None:
        # libzmq always sends well-formed requests; a REP socket must answer regardless.
        request_id = frames[1] if len(frames) > 1 else b""
        mechanism = frames[5] if len(frames) > 5 else b""
        curve = self._dist.curve
        user = (
            curve.user_for(z85.encode(frames[6]))
            if curve is not None
            and mechanism == b"CURVE"
            and len(frames) >= 7
            and len(frames[6]) == 32
            else None
        )
        if user is None:
            self._count("auth_denied")
            self._log_denied(mechanism)
            status = (b"400", b"key not allowed")
        elif self._over_cap(user, frames[3].decode(errors="replace")):
            status = (REFUSED_STATUS, b"too many connections")
            user = None
        else:
            status = (b"200", b"OK")
            self.counts["conns_authenticated"] = self.ledger.granted
            self.counts["conn_grants_unattached"] = self.ledger.unattached
        # The User-Id (role, key name and key) rides on every message of the connection:
        # the receive thread reads it to bind the connection's node id and rights to its key.
        zap.send_multipart([b"1.0", request_id, *status, (user or "").encode(), b""])

    def _over_cap(self, user: str, host: str) -> bool:
        """Whether the allowed key ``user`` connecting from ``host`` is over its connection
        caps (counted, logged); if not, its connection is granted a slot."""
        reason = self.ledger.admit(user, user.startswith("node:"), host)
        if reason is None:
            return False
        self._count(f"conn_refused_{reason}_cap")
        count = self._refused.ready()
        if count:
            logger.warning(
                "refused %d connection(s) over the connection caps (latest: %s from %s, "
                "%s cap; %d connections authenticated)",
                count,
                user,
                host,
                reason,
                self.ledger.granted,
            )
        return True

    def _log_denied(self, mechanism: bytes) -> None:
        """Say that a client was refused, at most once a second: anyone who can reach the
        port can make handshakes, and one log line each would let them flood the log (the
        ``auth_denied`` counter still counts every one)."""
        count = self._denied.ready()
        if count:
            logger.warning(
                "refused %d client(s) whose key is not allowed (latest: %s)",
                count,
                mechanism.decode(errors="replace") or "no mechanism",
            )

    # ------------------------------------------------------------------ shutdown
    def _close(self) -> None:
        for probe in self._probes.values():
            _close_monitored(probe.sock, probe.monitor)
        self._probes.clear()
        self._by_monitor.clear()
        # The ROUTER's monitor is turned off by the receive thread (the ROUTER's owner) as
        # it stops; closing this end before that could hang libzmq's I/O thread (see
        # _close_monitored), so wait for it, and rather leak the socket than risk that.
        receiver = self._dist.receiver
        receiver.join(_ROUTER_STOP_WAIT)
        if receiver.is_alive():
            logger.error("the receive thread is still running: its monitor is left open")
        else:
            self._router_monitor.close(linger=0)
        if self._zap is not None:
            self._zap.close(linger=0)


def _drain_events(monitor: zmq.Socket[bytes]) -> list[tuple[int, int]]:
    """Every (event, value) waiting on ``monitor`` (at most ``_MAX_EVENTS`` at a time).

    Taking them all at once, not one per tick, matters beyond promptness: libzmq's I/O thread
    blocks once a monitor's queue is full, so a burst of connections (anyone can open TCP
    connections to the ROUTER, before any authentication) would otherwise pace every socket
    of the node to the liveness loop's rate.
    """
    events: list[tuple[int, int]] = []
    for _ in range(_MAX_EVENTS):
        try:
            message = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        try:
            parsed = parse_monitor_message(message)
            events.append((int(parsed["event"]), int(parsed["value"])))
        except (RuntimeError, ValueError, KeyError):
            continue  # not a monitor message: nothing to act on
    return events


def _close_monitored(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
    """Close ``sock`` and the PAIR its events arrive on, monitor mode first.

    libzmq's I/O thread writes monitor events with a blocking send. Closing the PAIR while
    the socket can still emit one (a retried connect, a disconnect while it is torn down)
    leaves that send with no reader, and the I/O thread, which serves every socket of the
    context, hangs for good: this node then neither sends nor receives anything while its
    threads look healthy. Turning monitor mode off first stops the events at the source.
    """
    try:
        sock.disable_monitor()
    except zmq.ZMQError as exc:  # the context is terminating: nothing is written any more
        logger.debug("could not turn off a monitor: %s", exc)
    monitor.close(linger=0)
    sock.close(linger=0)
