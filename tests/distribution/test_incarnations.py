"""A node restarted (or paused) under the same id: nothing of its previous session leaks in.

Each test runs this process as a node against child node processes (``child_node.py``), all
on 127.0.0.1, each killed by pid at the end."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from waraft import distribution as dist
from waraft import otp
from waraft.distribution.receiver import Receiver

from .helpers import DOWN, PING, WAIT, Child, wait_until


def _start(node_id: str = "parent@127.0.0.1:0") -> str:
    return dist.start(node_id, ping_interval=PING, down_after=DOWN, connect_timeout=DOWN)


@pytest.fixture
def restartable() -> Iterator[None]:
    """Distribution is stopped at the end of the test, however often it restarted."""
    try:
        yield
    finally:
        dist.stop()


def _sees_up(child: Child, node_id: str) -> bool:
    try:
        return bool(child.call("peers", timeout=1.0)[node_id]["state"] == "up")
    except (otp.ExitError, KeyError):
        return False


def test_an_answer_to_the_previous_run_never_completes_a_call_of_this_one(
    restartable: None, spawn: Callable[..., Child]
) -> None:
    """The callee answers a call of this node's previous run after the node restarted under
    the same id; a call of the new run with the same reference must not take that answer.

    References used to restart at 1 in every run, so the first call of each run collided; now
    they start at random, and the test forces the collision to check what actually prevents
    the mix-up: the caller's run id, echoed by the answer."""
    me = _start()
    callee = spawn("callee")
    assert callee.call("echo", 1) == 1
    old = dist.send_request(callee.echo, ("later", 2.0, "for the previous run"), timeout=WAIT)
    d = dist._dist
    assert d is not None
    (old_ref,) = d._pending
    answer_due = time.monotonic() + 2.0
    dist.stop()
    with pytest.raises(otp.ExitError):
        dist.wait_response(old, 0)  # the stop failed it (nodedown)
    assert _start(me) == me
    wait_until(lambda: _sees_up(callee, me), what="the callee sees the new run up")
    d = dist._dist
    assert d is not None
    d._refs = itertools.count(old_ref)  # the new run's next call reuses the old reference
    with pytest.raises(otp.ExitError) as info:
        callee.call("noreply", timeout=max(0.5, answer_due - time.monotonic()) + 1.0)
    assert info.value.reason == "timeout"
    assert dist.stats().get("rx_stale_replies", 0) == 1


def test_a_node_whose_receive_thread_is_behind_finds_no_peer_down(
    node: str, spawn: Callable[..., Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client key's flood kept a leader's receive thread from reaching its peers' frames
    for longer than ``down_after``: it found every peer down, failing what they had asked of
    it, and a peer that runs the node-down too fails its own calls as well (a review's admin
    call did). Silence counts only up to the moment the receive thread last drained its
    queue: here it is held on one frame for twice ``down_after`` while the child's pings
    queue up behind it."""
    child = spawn("patient")
    assert child.call("echo", 1) == 1
    stall = threading.Event()
    real_connection = Receiver._connection

    def held_connection(self: Receiver, head: Any) -> Any:
        if stall.is_set():
            stall.clear()
            time.sleep(2 * DOWN)
        return real_connection(self, head)

    monkeypatch.setattr(Receiver, "_connection", held_connection)
    stall.set()
    assert child.call("echo", 2) == 2  # its answer is the frame the thread is held on
    assert not stall.is_set()
    assert child.call("echo", 3) == 3
    assert dist.peers()[child.node_id]["down_events"] == 0
    assert child.call("peers")[node]["down_events"] == 0
