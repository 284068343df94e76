"""Sessions (``peers``): which PINGs end a session, and what a node-down leaves behind.

The frame-level tests play a node by hand: a DEALER that sends crafted PINGs to this process's
node, and a ROUTER at the made-up node's address that takes the PONGs (and the node's probe).
The others run this process as a node against child node processes (``child_node.py``); all
on 127.0.0.1, every child killed by pid at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from waraft import distribution as dist
from waraft import otp
from waraft.distribution import envelope, nodeid
from waraft.distribution.envelope import Kind
from waraft.distribution.receiver import Receiver
from waraft.services import codec

from .helpers import PING, WAIT, Child, wait_until


def _kind(frames: list[bytes]) -> int:
    return int(codec.unpackb(frames[-1])[1])


class _Hand:
    """A node played by hand: PINGs out on a DEALER, PONGs in on the ROUTER it listens on."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], target: str) -> None:
        self.inbox = ctx.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.LINGER, 0)
        port = self.inbox.bind_to_random_port("tcp://127.0.0.1")
        self.node_id = f"hand@127.0.0.1:{port}"
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, nodeid.routing_id(self.node_id, "x", None))
        self.sock.connect(nodeid.endpoint(target))
        self.seq = 0

    def ping(self, run: int, epoch: int, to_run: int | None = None) -> None:
        """Send a PING and wait for its PONG: the node has taken it in."""
        self.seq += 1
        self.sock.send(envelope.ping_frame(self.seq, run, epoch, to_run))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.inbox.poll(100):
                frame = self.inbox.recv_multipart()[-1]
                obj = codec.unpackb(frame)
                if obj[1] == Kind.PONG and obj[2] == self.seq:
                    return
        raise AssertionError(f"no PONG to ping {self.seq}")

    def wait_probe_ping(self) -> None:
        """Wait for a PING of the node's probe: its connection here is up."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.inbox.poll(100) and _kind(self.inbox.recv_multipart()) == Kind.PING:
                return
        raise AssertionError("no PING from the node's probe")

    def restart_listener(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Close the ROUTER (the node's probe loses its connection) and listen again on the
        same address, as a new run of the node would."""
        port = int(self.node_id.rpartition(":")[2])
        self.inbox.close(linger=0)
        self.inbox = ctx.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.LINGER, 0)
        deadline = time.monotonic() + WAIT
        while True:  # (the closed socket releases the port in the background)
            try:
                self.inbox.bind(f"tcp://127.0.0.1:{port}")
                return
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def send_only(self, run: int, epoch: int) -> None:
        self.seq += 1
        self.sock.send(envelope.ping_frame(self.seq, run, epoch))

    def downs(self) -> int:
        return int(dist.peers()[self.node_id]["down_events"])


@pytest.fixture
def slow_node() -> Iterator[str]:
    """This process as a node whose liveness finds nobody down during a test by silence: the
    hand-played node answers no PING."""
    node_id = dist.start(
        "parent@127.0.0.1:0", ping_interval=PING, down_after=60.0, connect_timeout=60.0
    )
    try:
        yield node_id
    finally:
        dist.stop()


def test_a_late_ping_of_a_superseded_run_is_no_new_session(
    slow_node: str, raw: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A node restarted under the same id: its new run's PING ends the session here (one
    node-down). A PING of the dead run still queued on its old connection used to count as a
    new session again (any run but the last seen did): it brought the dead run up, and the
    new run's next PING ran another node-down, once per switch between the two runs' frames.
    Now a superseded run's PINGs are stale: no down, no up, no PONG."""
    hand = _Hand(raw, slow_node)
    hand.ping(run=1, epoch=0)
    hand.ping(run=2, epoch=0)  # restarted
    assert hand.downs() == 1  # the old run's session ended here too
    assert dist.peers()[hand.node_id]["state"] == "up"
    hand.send_only(run=1, epoch=0)  # the old run's late PING (never answered now)
    hand.ping(run=2, epoch=0)  # (same connection: taken in after the late one)
    assert hand.downs() == 1
    assert dist.stats().get("rx_stale_sessions") == 1
    assert dist.peers()[hand.node_id]["state"] == "up"


def test_losing_the_connection_to_a_superseded_run_is_no_down(
    slow_node: str, raw: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """The node's probe connected to a run of the peer that a new run has replaced since
    (a peer restarted while this node was paused): the loss of that connection, seen once
    the new run's session was taken in, used to be a down of this node's finding, which
    ended the new run's session as well (a second down here, and one there). It is the old
    run's end, already taken in: no down, and the peer stays up."""
    d = dist._dist
    assert d is not None
    hand = _Hand(raw, slow_node)
    hand.ping(run=1, epoch=0)

    def probe_connected() -> bool:
        probe = d.liveness._probes.get(hand.node_id)
        return probe is not None and probe.connected_at is not None

    wait_until(probe_connected, what="the node's probe connected to the first run")
    hand.ping(run=2, epoch=0)  # the new run: one down here
    assert hand.downs() == 1
    hand.restart_listener(raw)
    hand.wait_probe_ping()  # the probe lost its connection, and is connected again
    hand.ping(run=2, epoch=0)
    assert hand.downs() == 1
    assert dist.peers()[hand.node_id]["state"] == "up"
    assert dist.stats().get("probe_superseded_losses") == 1


def test_downs_of_a_previous_run_of_this_node_are_no_news(
    slow_node: str, raw: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A peer that had not yet heard of this node's restart found its previous run down and
    bumped its epoch for it: that ended a session with the previous run, and this run, which
    has nothing of the peer's, used to run a node-down for it anyway (a review saw a fresh
    node record a down for its peer in 8 restarts of 10). A PING names the run its epoch is
    about; another run than this one's is no news here, this run's is."""
    d = dist._dist
    assert d is not None
    hand = _Hand(raw, slow_node)
    hand.ping(run=7, epoch=0)
    hand.ping(run=7, epoch=1, to_run=d.run_id ^ 1)  # a down of a previous run of this node
    assert hand.downs() == 0
    hand.ping(run=7, epoch=2, to_run=d.run_id)  # a down of this run: news
    assert hand.downs() == 1
    assert dist.peers()[hand.node_id]["state"] == "up"


def test_answers_to_a_peer_up_on_its_side_only_are_not_dropped(
    node: str, spawn: Callable[..., Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    """This node found the child down; the child took the down in on this node's PING and is
    up on its side at once, but its PONG (which brings it back up here) can be overtaken by
    its other frames, on other connections: modelled by holding its PONGs back here. A
    monitor and a link it asked for meanwhile, of a name not registered here, used to get
    their DOWN and EXIT noproc dropped (only the answers to calls went to a peer down here):
    the child's monitor never fired. They are answers to what the peer just sent: they go."""
    child = spawn("late", "--down", "30")  # the child only takes in this node's downs
    ctl = spawn("ctl")  # drives the child while it is down here

    def on_child(*request: Any) -> Any:
        ok, value = ctl.call("call_to", child.echo, request, 5.0)
        assert ok == "ok", value
        return value

    on_child("spawn", "w", True)
    assert child.call("cast_to", ("nobody", node), "hello") is True  # it knows this node
    wait_until(lambda: dist.peers().get(child.node_id, {}).get("state") == "up", what="up")
    d = dist._dist
    assert d is not None
    wait_until(lambda: d.peers.by_id[child.node_id].sessions, what="the child's session")
    held = threading.Event()
    real_pong = Receiver._pong

    def pong(self: Receiver, peer: Any, obj: Any) -> None:
        if not (held.is_set() and peer.node_id == child.node_id):
            real_pong(self, peer, obj)

    monkeypatch.setattr(Receiver, "_pong", pong)
    dist.set_fault([child.node_id])
    wait_until(lambda: dist.peers()[child.node_id]["state"] == "down", what="child down here")
    held.set()
    dist.clear_fault()
    wait_until(lambda: on_child("peers")[node]["down_events"] == 1, what="the child's node-down")
    wait_until(lambda: on_child("peers")[node]["state"] == "up", what="this node up there")
    assert dist.peers()[child.node_id]["state"] == "down"
    on_child("victim", "w", ("monitor", ("nosuch", node)))
    on_child("victim", "w", ("link", ("nosuch", node)))

    def answered() -> bool:
        return len(on_child("victim", "w", ("infos",))) == 2

    try:
        wait_until(answered, what="DOWN and EXIT noproc on the child")
    finally:
        held.clear()
    infos = on_child("victim", "w", ("infos",))
    assert {info[0] for info in infos} == {"DOWN", "EXIT"}
    assert all(info[-1] == "noproc" for info in infos)


class _Watcher(otp.Process):
    """Monitors and links on request (trapping exits), and keeps what it is sent."""

    def init(self) -> None:
        self.trap_exit = True
        self.infos: list[Any] = []

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request[0] == "monitor":
            otp.monitor(tuple(request[1]))
        elif request[0] == "link":
            otp.link(tuple(request[1]))
        return list(self.infos)

    def handle_info(self, msg: Any) -> None:
        self.infos.append(msg)


def test_a_peer_down_here_that_ends_the_session_takes_what_it_installed_since(
    node: str, spawn: Callable[..., Child]
) -> None:
    """A one-way cut that changes direction: first this node's frames are lost (the child
    finds it down; this node takes the down in and is up again), then the child's (this
    node's frames reach the child, where it is still down: a monitor and a link are
    installed there), and this node finds the child down in turn: its node-down drops its
    ends of the monitor and the link. The child took this new session in without a clean-up
    (it had this node down already): the monitor and the link dangled there for good."""
    child = spawn("b")
    ctl = spawn("ctl")  # reads the child while this node is cut off from it

    def on_child(*request: Any) -> Any:
        ok, value = ctl.call("call_to", child.echo, request, 5.0)
        assert ok == "ok", value
        return value

    on_child("spawn", "w", True)
    watcher = otp.start(_Watcher, name="watcher")
    assert child.call("echo", 1) == 1
    d = dist._dist
    assert d is not None
    wait_until(lambda: d.peers.by_id[child.node_id].sessions, what="the child's session")
    dist.set_fault(outbound=[child.node_id])
    wait_until(lambda: on_child("peers")[node]["state"] == "down", what="the child finds it down")
    wait_until(lambda: dist.stats().get("sessions_ended_by_peer") == 1, what="the down here")
    wait_until(lambda: dist.peers()[child.node_id]["state"] == "up", what="child up here")
    dist.set_fault(inbound=[child.node_id])
    otp.call(watcher, ("monitor", ("w", child.node_id)), 5.0)
    otp.call(watcher, ("link", ("w", child.node_id)), 5.0)

    def installed() -> bool:
        stats = on_child("stats")
        return bool(stats.get("remote_monitors_in") == stats.get("remote_links_in") == 1)

    wait_until(installed, what="the monitor and the link on the child")
    wait_until(lambda: dist.peers()[child.node_id]["state"] == "down", what="child down here")
    wait_until(lambda: len(otp.call(watcher, ("infos",), 5.0)) == 2, what="noconnection here")
    dist.clear_fault()
    wait_until(lambda: dist.peers()[child.node_id]["state"] == "up", what="child up here")
    wait_until(lambda: child.call("peers")[node]["state"] == "up", what="this node up there")
    stats = child.call("stats")
    assert stats.get("remote_monitors_in", 0) == stats.get("remote_links_in", 0) == 0
    infos = child.call("victim", "w", ("infos",))  # the link's end there is told
    assert [(info[0], info[-1]) for info in infos] == [("EXIT", "noconnection")]
