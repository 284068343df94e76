"""A node restarted (or paused) under the same id: nothing of its previous session leaks in.

Each test runs this process as a node against child node processes (``child_node.py``), all
on 127.0.0.1, each killed by pid at the end."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from waraft import distribution as dist
from waraft import otp
from waraft.distribution import monitors
from waraft.distribution.liveness import Liveness
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


def test_a_pause_longer_than_down_after_is_a_node_down_on_both_sides(
    node: str, spawn: Callable[..., Child]
) -> None:
    """The child is stopped (SIGSTOP) long enough for this node to find it down, but not for
    its own liveness to find this node down (its ``down_after`` is longer than the pause).
    This node fails what the child installed here; the child used to read this node's queued
    pings on resuming and never see a down at all: its monitor and link on this node's
    process dangled forever. Now this node's pings tell it the session ended, and it runs its
    own node-down before this node sends it anything again."""
    child = spawn("paused", "--down", "30")
    monitors.allow_link("held")
    otp.start(_Idle, name="held")
    here = ("held", node)
    child.call("spawn", "w", True)
    ref = child.call("victim", "w", ("link", here)) and child.call("victim", "w", ("monitor", here))
    wait_until(lambda: dist.stats().get("remote_monitors_in") == 1, what="the monitor here")
    wait_until(lambda: dist.stats().get("remote_links_in") == 1, what="the link here")
    os.kill(child.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: dist.peers()[child.node_id]["state"] == "down", what="child down")
        # (The node-down runs just after the state changes.)
        wait_until(
            lambda: (
                dist.stats().get("remote_monitors_in", 0)
                == dist.stats().get("remote_links_in", 0)
                == 0
            ),
            what="what the child installed here cleared",
        )
    finally:
        os.kill(child.proc.pid, signal.SIGCONT)
    want = {("EXIT", here, "noconnection"), ("DOWN", ref, here, "noconnection")}

    def child_saw_it() -> bool:
        try:
            return set(child.call("victim", "w", ("infos",), timeout=1.0)) == want
        except otp.ExitError:
            return False  # not back up yet

    wait_until(child_saw_it, what="noconnection on the child")
    stats = child.call("stats")
    assert stats.get("remote_monitors_out", 0) == stats.get("remote_links_out", 0) == 0
    assert child.call("peers")[node]["down_events"] == 1
    assert dist.peers()[child.node_id]["down_events"] == 1
    # Back to one session: traffic flows both ways, nothing more goes down.
    assert child.call("call_to", ("held", node), "ping", 5.0) == ("ok", "idle")
    assert dist.peers()[child.node_id]["state"] == "up"


class _Idle(otp.Process):
    """Traps exits: the link's noconnection must not kill it."""

    def init(self) -> None:
        self.trap_exit = True

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return "idle"


def test_nodes_that_found_each_other_down_are_both_up_after_one_exchange(
    node: str, spawn: Callable[..., Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cut both ways (a partition, or a flood that delays every ping) makes each node find
    the other down. A node used to come back up only once the other echoed its own down in a
    PONG: the first node to hear a PING came up on the PONG and sent at once, while the other
    still waited for its echo and dropped what it sent, the answers to those calls included
    (a review's admin call timed out so). A PING reporting a down of the pinger's own finding
    acknowledges this node's down too: both are up after one PING and its PONG. This node's
    own pings are held back, so the child's PING is all it hears."""
    child = spawn("both")
    monitors.allow_link("held")
    otp.start(_Idle, name="held")
    assert child.call("call_to", ("held", node), "ping", 5.0) == ("ok", "idle")
    dist.set_fault([child.node_id])  # both ways
    wait_until(lambda: dist.peers()[child.node_id]["state"] == "down", what="child down here")
    time.sleep(2 * DOWN)  # the child finds this node silent as well
    monkeypatch.setattr(Liveness, "_ping", lambda self, probe, now: None)
    dist.clear_fault()
    wait_until(lambda: dist.peers()[child.node_id]["state"] == "up", what="child up here")
    assert child.call("peers")[node]["down_events"] == 1  # it did find this node down
    assert child.call("call_to", ("held", node), "ping", 5.0) == ("ok", "idle")
    assert dist.peers()[child.node_id]["down_events"] == 1
    assert child.call("peers")[node]["state"] == "up"


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
