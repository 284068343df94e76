"""Liveness under floods: a paused peer is found down about ``down_after`` after it stopped,
whoever floods whom, and a peer that keeps answering is never found down, however far behind
either node's receive thread is.

This process is a node (``node`` fixture: pings every ``PING``, down after ``DOWN``); its
peers are child processes on 127.0.0.1, paused with SIGSTOP and killed by pid at the end."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from waraft import distribution as dist
from waraft.distribution import inline
from waraft.distribution.liveness import LAGGING_DOWNS

from .helpers import DOWN, WAIT, Child, wait_until

SLOW = "slow_sink"
FRAME_COST = 50e-6
"""Seconds of the receive thread each flooded frame costs here: far more than a frame costs
the flooding child to send, so this node's receive queue never drains during the flood."""
DOWN_BOUND = LAGGING_DOWNS * DOWN / 2
"""Found down sooner than this: about ``down_after``, not the receive path's last-resort
bound (``LAGGING_DOWNS`` times it)."""


@pytest.fixture
def slow_sink() -> Iterator[list[int]]:
    """An inline handler for casts to ``SLOW`` that costs the receive thread ``FRAME_COST``
    per frame; the list holds the count of frames it took."""
    taken = [0]

    def burn(msg: object, origin: str) -> bool:
        taken[0] += 1
        until = time.perf_counter() + FRAME_COST
        while time.perf_counter() < until:
            pass
        return True

    inline.set_handler(SLOW, burn)
    try:
        yield taken
    finally:
        inline.set_handler(SLOW, None)


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
    flood's frames do not hide the other peers' frames: ZeroMQ serves each connection in
    turn, so a peer that answers is heard within a round over the connections, and one
    that does not is silent."""
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


def test_a_flooded_peer_stays_up_while_it_answers_and_is_found_down_once_paused(
    node: str, spawn: Callable[..., Child]
) -> None:
    """This node floods a peer faster than the peer's receive thread reads: neither finds
    the other down (the peer's answers to this node's pings are not held up behind the
    flood: they come from another connection of each node), and once the peer is paused
    it is found down about ``down_after`` later, the flood going on."""
    peer = spawn("flooded")
    assert peer.call("echo", 1) == 1
    stop = threading.Event()
    payload = dist.encode(b"x" * 1000)

    def flood() -> None:
        while not stop.is_set():
            dist.cast_bytes(("nobody", peer.node_id), payload)

    flooding = threading.Thread(target=flood, daemon=True)
    flooding.start()
    try:
        wait_until(lambda: dist.stats().get("tx_dropped_full", 0) > 0, what="the peer behind")
        time.sleep(3 * DOWN)
        assert _state(peer.node_id) == "up"
        assert dist.peers()[peer.node_id]["down_events"] == 0
        assert peer.call("peers")[node]["down_events"] == 0
        took = _time_to_down(peer)
        assert flooding.is_alive()
    finally:
        stop.set()
        flooding.join(WAIT)
    assert took < DOWN_BOUND, f"found down {took:.2f} s after the pause"
