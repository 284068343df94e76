"""Liveness while this node's receive thread is behind: a paused peer is found down about
``down_after`` after it stopped, whoever floods this node, and a peer that keeps answering is
never found down, however many connections' frames wait in the ROUTER before its pongs.

This process is a node (``node`` fixture: pings every ``PING``, down after ``DOWN``); its
peers are child processes on 127.0.0.1, paused with SIGSTOP and killed by pid at the end."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from waraft import distribution as dist
from waraft.distribution import envelope, inline, nodeid
from waraft.distribution.liveness import LAGGING_DOWNS
from waraft.services import codec

from .helpers import DOWN, WAIT, Child, wait_until

SLOW = "slow_sink"
DOWN_BOUND = LAGGING_DOWNS * DOWN / 2
"""Found down sooner than this: about ``down_after``, not the receive path's last-resort
bound (``LAGGING_DOWNS`` times it)."""


def _sink(cost: float) -> Iterator[list[int]]:
    """An inline handler for casts to ``SLOW`` that costs the receive thread ``cost`` seconds
    per frame; the list holds the count of frames it took."""
    taken = [0]

    def burn(msg: object, origin: str) -> bool:
        taken[0] += 1
        until = time.perf_counter() + cost
        while time.perf_counter() < until:
            pass
        return True

    inline.set_handler(SLOW, burn)
    try:
        yield taken
    finally:
        inline.set_handler(SLOW, None)


@pytest.fixture
def slow_sink() -> Iterator[list[int]]:
    """50 us a frame: far more than a frame costs a flooding child to send."""
    yield from _sink(50e-6)


@pytest.fixture
def slower_sink() -> Iterator[list[int]]:
    """6 ms a frame: a turn over ``CONNS`` connections takes longer than twice ``DOWN``."""
    yield from _sink(6e-3)


def _state(node_id: str) -> str:
    return str(dist.peers()[node_id]["state"])


def _time_to_down(child: Child) -> float:
    """Pause ``child`` and return how long this node takes to find it down."""
    os.kill(child.proc.pid, signal.SIGSTOP)
    paused = time.monotonic()
    wait_until(lambda: _state(child.node_id) == "down", what="the paused child down")
    return time.monotonic() - paused


def test_a_paused_peer_is_found_down_in_time_while_another_floods_this_node(
    node: str, spawn: Callable[..., Child], slow_sink: list[int]
) -> None:
    """A flood this node's receive thread cannot keep up with (its queue never drains) used
    to shield every peer: silence counted only up to the moment the queue was last empty, so
    a paused peer was found down only after the last-resort bound, ten times ``down_after``
    (raft's transport, clients and links waited that long for their ``nodedown``). The
    flood's frames do not hide the other peers' frames: ZeroMQ reads each connection in
    turn, so a peer that answers is heard within a sweep, and one that does not is silent."""
    flooder = spawn("flooder")
    quiet = spawn("quiet")
    assert flooder.call("echo", 1) == quiet.call("echo", 1) == 1
    assert flooder.call("flood_for", (SLOW, node), WAIT) == "ok"
    wait_until(lambda: slow_sink[0] > 1000, what="the flood arriving")
    time.sleep(3 * DOWN)  # the quiet peer keeps answering pings: never found down
    assert _state(quiet.node_id) == _state(flooder.node_id) == "up"
    assert dist.peers()[quiet.node_id]["down_events"] == 0
    taken = slow_sink[0]
    took = _time_to_down(quiet)
    assert slow_sink[0] > taken, "the flood stopped: the test measured nothing"
    assert took < DOWN_BOUND, f"found down {took:.2f} s after the pause"
    assert _state(flooder.node_id) == "up"
    assert dist.peers()[flooder.node_id]["down_events"] == 0
    # The flood filled the queues to this node: its receive thread was behind throughout.
    assert flooder.call("stats").get("tx_dropped_full", 0) > 0


CONNS = 250
QUEUED = 4  # frames each connection leaves queued when it closes


def test_a_peer_answering_pings_stays_up_while_closed_connections_backlogs_are_read(
    node: str,
    spawn: Callable[..., Child],
    slower_sink: list[int],
    raw: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """Many connections queue frames and close: the ROUTER goes on reading what they left,
    in turn with the open connections, so a turn over the connections (here about 1.5 s, a
    frame from each) outlasts ``down_after`` and a live peer's pongs are read once a turn.
    A sweep sized by the connections open now ran ahead of what was read (review AA: the
    peer, answering every ping, was found down in 4 runs of 4); the sweeps must count every
    connection accepted since the ROUTER was last empty."""
    quiet = spawn("quiet")
    assert quiet.call("echo", 1) == 1
    wait_until(lambda: _state(quiet.node_id) == "up", what="the quiet peer up")
    frame = envelope.cast_frame(SLOW, codec.packb(("flood", 0)))
    flood_id = "flood@127.0.0.1:1"  # a node id on this host (nothing listens there)
    socks = []
    for i in range(CONNS):
        sock = raw.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, int(WAIT * 1000))  # (what is queued leaves before the close)
        sock.setsockopt(zmq.ROUTING_ID, nodeid.routing_id(flood_id, f"t{i}", None))
        sock.connect(f"tcp://{node.rpartition('@')[2]}")
        socks.append(sock)
    for _ in range(QUEUED):
        for sock in socks:
            sock.send(frame)
    wait_until(lambda: slower_sink[0] > 0, what="the backlog arriving")
    for sock in socks:
        sock.close()
    wait_until(lambda: dist.stats().get("conn_closed", 0) >= CONNS, what="the connections closed")
    closed_with = CONNS * QUEUED - slower_sink[0]
    assert closed_with > CONNS * QUEUED // 2, "the backlog was read before the closes"
    deadline = time.monotonic() + 2 * WAIT
    while slower_sink[0] < CONNS * QUEUED and time.monotonic() < deadline:
        assert _state(quiet.node_id) == "up", f"found down with {slower_sink[0]} frames read"
        time.sleep(0.01)
    assert slower_sink[0] == CONNS * QUEUED
    assert dist.peers()[quiet.node_id]["down_events"] == 0
    assert quiet.call("echo", 2) == 2
