"""What this node knows about each other node: liveness state and counters.

A peer is ``connecting`` from first contact until a frame arrives from it (``up``). It is
``down`` when it has been silent for ``down_after`` seconds, when its connection is refused or
lost, or when it never answered within ``connect_timeout``. While a peer is down, casts to it
are dropped (counted) and calls fail at once with ``("nodedown", node)``, as with Erlang's
``noconnect``.

Down is a fact both nodes see, as when Erlang's connection drops. Each side numbers the
sessions it ended: a down it found itself bumps the peer's ``epoch``, which its PINGs carry (with
its run id). A node whose peer's (run, epoch) changes runs its own node-down for that peer
(:meth:`PeerTable.mirror_down`: pending calls fail, monitors and links get ``noconnection``,
the tables are cleared) before it answers the PING, and a peer this node found down comes back
``up`` only once it acknowledged that epoch (:meth:`PeerTable.come_up`): so nothing is sent to
it again before it has run its node-down too, and a gap in what one node sent the other lies
across a node-down both saw. A PONG echoing the epoch acknowledges it, and so does a new session
of the peer (a down of its own finding, or a new run): when both nodes found the other down in
the same outage, the first PING that gets through brings both back up, and neither waits for an
echo while the other already sends. A down this node only mirrors does not bump its epoch (no
echo of echoes), so one pause costs each side one down and one up. A peer that ends the
session while it is down here already gets the node-down's clean-up again if frames of it
were taken in since the down (a one-way cut that changed direction: what it installed here
meanwhile, it has dropped on its side). A peer that never sent a
session (a client of an older build, a hand-made one) comes back up on any frame, as before.
Calls and link/monitor requests from a peer that is down here but running (it sent frames
since) are still answered: it may be up on its side already, its PONG overtaken by them.

A run of the peer that was superseded by a newer one is dead (a node restarted under the same
id): its PINGs and PONGs still queued on the way (another connection than the new run's) are
stale, not a new session, and are ignored (the last :data:`OLD_RUNS` runs are remembered), so
a restart costs each side one down, not a down for every switch between the two runs' frames.

Silence is judged by the liveness thread only up to the latest moment the receive thread has
caught up with (its queue found empty, or a sweep long enough for every connection to have had
its turn: ``sweeps``): a node whose receive thread is held up (a stall, a slow frame) finds
nobody down for it, which the peers, running the node-down too, would pay for. A flood from one
connection does not hold it up: the ROUTER reads the others in turn with it.

Writers: the receive thread (``rx``, ``rtt``), the liveness thread (everything else); state
changes go through :meth:`PeerTable.set_state` under the table lock. Readers on the hot path
(``state``) read one attribute without locking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from waraft.distribution import nodeid

OLD_RUNS = 4
"""Superseded runs of a peer remembered per peer (their late PINGs and PONGs are stale)."""


class PeerState(Enum):
    """Liveness of a peer as seen from this node."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


class Peer:
    """One remote node."""

    __slots__ = (
        "acked",
        "down_events",
        "endpoint",
        "epoch",
        "forgotten",
        "last_rx",
        "member",
        "node_id",
        "old_runs",
        "ping_sent_at",
        "ping_seq",
        "pings",
        "pongs",
        "rtt",
        "run_seen_at",
        "rx",
        "rx_seen",
        "sessions",
        "since",
        "state",
        "taken_while_down",
        "their_session",
    )

    def __init__(self, node_id: str, now: float) -> None:
        self.node_id = node_id
        self.endpoint = nodeid.endpoint(node_id)
        self.state = PeerState.CONNECTING
        self.since = now
        self.rx = 0  # frames received (receive thread)
        self.rx_seen = 0  # value of rx at the last liveness check
        self.last_rx: float | None = None
        self.ping_seq = 0
        self.ping_sent_at: float | None = None
        self.rtt: float | None = None
        self.pings = 0
        self.pongs = 0
        self.down_events = 0
        # Sessions (see the module docstring): downs of this peer found here, the latest of
        # them the peer has acknowledged (a PONG echoed it, or the peer began a session),
        # and the peer's (run id, epoch) from its latest PING or PONG (None until it sent
        # one).
        self.epoch = 0
        self.acked = 0
        self.their_session: tuple[int, int] | None = None
        self.sessions = False  # it sent a session or echoed one: it speaks sessions
        # Runs of the peer superseded by a newer one (oldest first, at most OLD_RUNS), and
        # when the current run replaced the previous one (None: never replaced).
        # Whether a frame of it was acted on while it was down here (receive thread; cleared
        # by each node-down): what it installed since must go with its next session's end.
        self.taken_while_down = False
        self.old_runs: tuple[int, ...] = ()
        self.run_seen_at: float | None = None
        self.forgotten = False  # set once removed from the table: holders must look it up again
        # Set once it was admitted to a member's request (a Raft RPC, a transport chunk):
        # clients and admin tools (``waraft status``) come and go, and their leaving is news
        # for the debug log, not a warning.
        self.member = False

    def __repr__(self) -> str:
        return f"Peer({self.node_id!r}, {self.state.value})"

    def new_run(self, previous: int) -> None:
        """The peer's run ``previous`` was superseded by a newer one (receive thread): from
        now on its frames are stale."""
        self.old_runs = (*self.old_runs, previous)[-OLD_RUNS:]
        self.run_seen_at = time.monotonic()

    def heard_since_down(self) -> bool:
        """Whether the peer is down and a frame came from it since: it is running, and is
        down here only until it acknowledges the down (``PeerTable.come_up``)."""
        heard = self.last_rx
        return self.state is PeerState.DOWN and heard is not None and heard >= self.since


StateListener = Callable[[Peer, PeerState, PeerState], None]


class PeerLimitError(Exception):
    """The peer table is full (``max_peers``): a flood of made-up node ids cannot make this
    node open a socket for each."""


class PeerTable:
    """The peers of one distribution instance, created on first contact."""

    def __init__(self, on_change: StateListener, max_peers: int) -> None:
        self._max = max_peers
        self._peers: dict[str, Peer] = {}
        self.by_id = self._peers  # read-only for others: lookups take no lock
        self._lock = threading.Lock()
        self._on_change = on_change

    def get(self, node_id: str, reserve: int = 0) -> Peer:
        """The peer for ``node_id``, created (``connecting``) if new.

        Raises ``NodeIdError`` for a malformed id and :class:`PeerLimitError` when
        ``max_peers`` peers are known already, or ``max_peers - reserve`` for a newcomer that
        must leave ``reserve`` entries free (a client key's: members and operators keep
        room however many ids client keys hold).
        """
        peer = self._peers.get(node_id)
        if peer is not None:
            return peer
        nodeid.parse(node_id)
        limit = self._max - reserve
        with self._lock:
            peer = self._peers.get(node_id)
            if peer is None:
                if len(self._peers) >= limit and not self._evict_one_down():
                    raise PeerLimitError(node_id)
                peer = self._peers[node_id] = Peer(node_id, time.monotonic())
            return peer

    def _evict_one_down(self) -> bool:
        """Make room (table lock held): forget the peer down for longest, if any is down, so
        a table filled by made-up ids never locks out a member or a client for long."""
        down = [p for p in self._peers.values() if p.state is PeerState.DOWN]
        if not down:
            return False
        oldest = min(down, key=lambda p: p.since)
        del self._peers[oldest.node_id]
        oldest.forgotten = True
        return True

    def expire(self, now: float, after: float) -> list[Peer]:
        """Forget every peer down for at least ``after`` seconds; returns them (already marked
        ``forgotten``) so that their sockets can be closed."""
        with self._lock:
            gone = [
                p
                for p in self._peers.values()
                if p.state is PeerState.DOWN and now - p.since >= after
            ]
            for peer in gone:
                del self._peers[peer.node_id]
                peer.forgotten = True
        return gone

    def all(self) -> list[Peer]:
        """A snapshot of every known peer."""
        with self._lock:
            return list(self._peers.values())

    def set_state(self, peer: Peer, state: PeerState) -> bool:
        """Move ``peer`` to ``state`` as found by this node; True (and the listener runs) if
        it changed. Down ends the session: the peer's ``epoch`` is bumped with it."""
        return self._move(peer, state, bump=True)

    def mirror_down(self, peer: Peer) -> bool:
        """Mark ``peer`` down because it ended the session (its PING's epoch or run changed):
        the listener runs as for any down, but the epoch is not bumped, so the peer is not
        told of a down of its own making. True if it changed."""
        return self._move(peer, PeerState.DOWN, bump=False)

    def come_up(self, peer: Peer) -> bool:
        """Mark ``peer`` up on a frame from it, unless it is down and has not acknowledged
        the latest down found here (``acked`` behind ``epoch``) while it speaks sessions:
        it may not have run its node-down yet. True if it changed."""
        return self._move(peer, PeerState.UP, bump=False)

    def _move(self, peer: Peer, state: PeerState, bump: bool) -> bool:
        with self._lock:
            old = peer.state
            if old is state:
                return False
            if (
                state is PeerState.UP
                and old is PeerState.DOWN
                and peer.sessions
                and peer.acked != peer.epoch
            ):
                return False
            peer.state = state
            peer.since = time.monotonic()
            if state is PeerState.DOWN:
                peer.taken_while_down = False
                peer.down_events += 1
                if bump:
                    peer.epoch += 1
        self._on_change(peer, old, state)
        return True

    def status(self, extra: Callable[[Peer], dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``peers()`` output: per node id, its state and counters (plus ``extra(peer)``)."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for peer in self.all():
            out[peer.node_id] = {
                "state": peer.state.value,
                "since_s": round(now - peer.since, 3),
                "last_rx_ago_s": None if peer.last_rx is None else round(now - peer.last_rx, 3),
                "rtt_ms": None if peer.rtt is None else round(peer.rtt * 1000.0, 3),
                "rx": peer.rx,
                "pings": peer.pings,
                "pongs": peer.pongs,
                "down_events": peer.down_events,
                **extra(peer),
            }
        return out
