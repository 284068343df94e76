"""How many messages the receive thread must read before it has caught up with a moment.

A peer is found down only for silence this node has *heard*: its frames may sit unread in the
ROUTER's queue while the receive thread is behind (see ``Liveness._silent``). The receive thread
has caught up with a moment ``S`` once every connection that held a readable frame at ``S`` has
had a message read since: each of a peer's frames is then either read or was sent after ``S``.
Two things establish it.

* The ROUTER found empty (``Receiver.empty_at``): ``ZMQ_EVENTS`` takes in the socket's
  pending commands, then asks every active pipe for input, deactivating each one that has
  none; without POLLIN, everything queued before the check was read.
* A *sweep*: enough messages read after ``S``, however busy the socket stays (a flood never
  lets it drain). :meth:`SweepBound.length` is that many, for libzmq 4.3's ROUTER:

  - A connection holding a frame at ``S`` is in the fair queue's active set once the socket
    has taken in its commands (where a connection reports new input after it was found empty
    once), which it does at least every 100 receive calls (``inbound_poll_rate``), so within
    :data:`COMMAND_LAG` messages (one more for the message ``ZMQ_EVENTS`` may hold prefetched).
  - The fair queue reads its active pipes in turn: between two wraps of its cursor it reads
    each pipe at most once (an active pipe moves only when it is the last one, by a swap, and
    one read in the current turn can no longer be the last), so a turn is at most one message
    per pipe, and an active pipe is read before the end of the next turn: within two turns.
  - Only the termination of a pipe that is still active moves the last pipe *behind* the
    cursor, costing it one turn. A pipe whose peer closed is deactivated when its last frame is
    read, before it terminates; a still-active pipe terminates only when the socket itself ends
    it, which, for a bound ROUTER, is a routing-id handover (``ROUTER_HANDOVER``: a connection
    identified with a routing id another one holds). So each identification adds a turn.
  - Pipes: at most the connections accepted (``EVENT_ACCEPTED`` is posted before the
    connection's session even starts, on the context's one I/O thread) and not closed before
    the ROUTER was last found empty: a closed connection's frames are flushed into its pipe as
    its close is reported, and an empty ROUTER has read them all. Identifications after that
    empty moment: at most the handshakes completed since (``EVENT_HANDSHAKE_SUCCEEDED`` is
    posted just after the connection's pipe and routing id are handed to the socket, which the
    empty check took in; every pipe that could not be read was deactivated by it, a handed-over
    one for good), and at most the pipes.

  So ``COMMAND_LAG + (2 + identifications) * pipes`` messages. Counts only grow between empty
  moments, so a sweep never shrinks before the ROUTER is found empty: closed connections whose
  frames are still queued keep counting (they are read in turn with the open ones), and so do
  fresh connections, which may hand a routing id over. An undercount would find a live peer
  down; an overcount only finds a paused one down later (never later than ``LAGGING_DOWNS``).

The liveness thread owns this: it counts the ROUTER monitor's events, hands the receive thread
the length its next sweeps aim at, and accepts a completed sweep only if it read at least
:meth:`SweepBound.length` messages as computed after the sweep (with every connection whose
frames it can have read counted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

COMMAND_LAG = 101
"""Messages the receive thread may read after a moment before the ROUTER has taken in every
connection's report of input that was pending at that moment (libzmq's 100 receive calls
between command intakes, at least one call a message, and one prefetched message)."""


MAX_CANDIDATES = 64
"""Counts ``SweepBound.observe`` keeps for a later empty moment: one per liveness check
since the ROUTER was last found empty. Beyond it the oldest go, so the base can advance less
far: sweeps stay longer, never shorter."""


class SweepBound:
    """The ROUTER's connection counts (from its monitor) and the sweep length they give.

    Liveness thread only. ``accepted``, ``closed`` and ``handshakes`` count the monitor's
    accept, disconnect and handshake-succeeded events; :meth:`observe` must be called before
    the counts are used, with a reader of the receive thread's last empty moment."""

    __slots__ = ("_base", "_candidates", "_empty_seen", "accepted", "closed", "handshakes")

    def __init__(self) -> None:
        self.accepted = 0
        self.closed = 0
        self.handshakes = 0
        # (closed, handshakes) counted before the ROUTER was last found empty, and the counts
        # taken since, each with the time it was taken (``observe``).
        self._base = (0, 0)
        self._candidates: deque[tuple[float, int, int]] = deque(maxlen=MAX_CANDIDATES)
        self._empty_seen: float | None = None

    def observe(self, empty_at: Callable[[], float], now: Callable[[], float]) -> float:
        """The receive thread's last empty moment (``empty_at()``), taking it in.

        Counts may be subtracted only once the ROUTER was found empty *after* they were
        taken. The receive thread reads its clock before its empty check and publishes the
        reading after it, so a moment later than the time counts were taken (``now()``, read
        before the counts) says its check came after them. A moment that is not later says
        nothing: the check may have come first, and the thread been held up before it
        published (a review paused it there, as a GIL hand-off or preemption can, while
        connections with backlogs closed: their unread frames were subtracted and a live
        peer found down). Then the older base stays, which only makes sweeps longer."""
        self._candidates.append((now(), self.closed, self.handshakes))
        moment = empty_at()
        if moment != self._empty_seen:
            self._empty_seen = moment
            while self._candidates and self._candidates[0][0] < moment:
                _, closed, handshakes = self._candidates.popleft()
                self._base = (closed, handshakes)
        return moment

    def length(self) -> int:
        """Messages a sweep must read after its start to have caught up with it (see the
        module's docstring), for every sweep that started after the last observed empty
        moment and ended before the counts were last updated."""
        closed, handshakes = self._base
        pipes = max(self.accepted - closed, 0)
        identified = min(pipes, max(self.handshakes - handshakes, 0))
        return COMMAND_LAG + (2 + identified) * pipes
