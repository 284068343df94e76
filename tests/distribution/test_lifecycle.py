"""start/stop: cycles, no leaked threads or sockets, bounded shutdown."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable

import pytest
import zmq

from waraft import distribution as dist
from waraft import otp
from waraft.distribution.liveness import Liveness
from waraft.distribution.peers import Peer
from waraft.distribution.settings import DistSettings

from .helpers import DOWN, PING, Child


def _dist_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dist:") and t.is_alive()]


def _start() -> str:
    return dist.start(
        "cycle@127.0.0.1:0", ping_interval=PING, down_after=DOWN, connect_timeout=DOWN
    )


def test_stop_start_cycles_leak_nothing(shared_child: Child) -> None:
    baseline = threading.active_count()
    for i in range(5):
        node_id = _start()
        assert dist.is_started() and dist.node() == node_id
        assert otp.node.current().id == node_id
        assert shared_child.call("echo", i) == i
        assert shared_child.call("call_to", ("nobody", node_id), 1, 5.0) == ("exit", "noproc")
        started = time.monotonic()
        dist.stop()
        assert time.monotonic() - started < 1.0
        assert not _dist_threads()
        assert dist.stats() == {} and dist.peers() == {}
        otp.node.stop_all()
    assert threading.active_count() <= baseline


def test_start_twice_is_an_error_and_stop_is_idempotent() -> None:
    _start()
    try:
        with pytest.raises(RuntimeError):
            _start()
    finally:
        dist.stop()
    dist.stop()
    assert not dist.is_started()
    assert dist.cast(("x", "elsewhere@127.0.0.1:1"), "m") is False  # no raise when stopped
    assert dist.cast_bytes(("x", "elsewhere@127.0.0.1:1"), dist.encode("m")) is False


def test_fixed_port_and_bad_ids() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node_id = f"fixed@127.0.0.1:{port}"
    assert dist.start(node_id) == node_id
    try:
        assert dist.node() == node_id
        with pytest.raises(RuntimeError):
            dist.start(f"other@127.0.0.1:{port}")
    finally:
        dist.stop()
    with pytest.raises(dist.NodeIdError):
        dist.start("not-a-node-id")
    assert not dist.is_started()


def test_port_in_use_fails_cleanly(node: str) -> None:
    dist.stop()
    # The fixture's node is stopped; bind a port with a plain socket and try to take it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(Exception, match="in use"):
            dist.start(f"clash@127.0.0.1:{port}")
    assert not dist.is_started() and not _dist_threads()


def test_stop_fails_waiting_calls_with_nodedown(shared_child: Child) -> None:
    _start()
    outcome: list[object] = []

    def waiting_call() -> None:
        try:
            shared_child.call("noreply", timeout=10.0)
        except otp.ExitError as exc:
            outcome.append(exc.reason)

    caller = threading.Thread(target=waiting_call)
    caller.start()
    time.sleep(0.1)
    dist.stop()
    caller.join(5.0)
    assert outcome == [("nodedown", shared_child.node_id)]
    with pytest.raises(otp.ExitError) as info:
        shared_child.call("echo", 1)  # no router any more
    assert info.value.reason == ("nodedown", shared_child.node_id)


def _wait(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)


def test_the_liveness_thread_survives_a_failing_step(
    monkeypatch: pytest.MonkeyPatch, shared_child: Child
) -> None:
    """A step of the liveness loop that raises must not end pings and down detection for
    the life of the node (the node would answer nobody's pings and see nobody go down)."""
    failures = {"left": 3}
    real_check = Liveness._check

    def failing_check(self: Liveness, now: float) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("injected")
        real_check(self, now)

    monkeypatch.setattr(Liveness, "_check", failing_check)
    _start()
    try:
        assert shared_child.call("echo", 1) == 1
        _wait(lambda: dist.stats().get("liveness_errors") == 3)
        assert "dist:liveness" in _dist_threads()
        # It goes on probing: the child gets pinged once this node stops hearing from it.
        _wait(lambda: dist.peers()[shared_child.node_id]["pings"] > 0)
    finally:
        dist.stop()
        otp.node.stop_all()


def test_a_probe_that_cannot_be_opened_is_retried(
    monkeypatch: pytest.MonkeyPatch, shared_child: Child
) -> None:
    """No socket for one peer's probe (e.g. the context's socket limit) is counted and tried
    again on the next tick; the liveness thread goes on."""
    failures = {"left": 2}
    real_open = Liveness._open_probe

    def failing_open(self: Liveness, peer: Peer) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise zmq.ZMQError(errno.EMFILE)
        real_open(self, peer)

    monkeypatch.setattr(Liveness, "_open_probe", failing_open)
    _start()
    try:
        assert shared_child.call("echo", 2) == 2
        _wait(lambda: dist.peers()[shared_child.node_id]["pings"] > 0)
        stats = dist.stats()
        assert stats.get("probe_open_failed") == 2 and "liveness_errors" not in stats
        assert "dist:liveness" in _dist_threads()
    finally:
        dist.stop()
        otp.node.stop_all()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_forgetting_peers_that_keep_refusing_leaves_the_node_working(shared_child: Child) -> None:
    """Peers on closed ports get probes whose connects are refused over and over (a monitor
    event per retry); once they are forgotten, their probes are closed. Closing a probe's
    monitor while libzmq can still write an event to it hangs the context's I/O thread, and
    with it every socket of the node (seen as a cluster that nothing in this process could
    reach any more). After eight rounds of 30 forgotten peers the node must still talk."""
    settings = DistSettings(
        ping_interval=PING,
        down_after=DOWN,
        connect_timeout=DOWN,
        forget_after=0.2,
        reconnect_ivl_ms=10,
        reconnect_ivl_max_ms=10,
    )
    dist.start("cycle@127.0.0.1:0", settings=settings)
    try:
        assert shared_child.call("echo", 0) == 0
        for round_ in range(1, 9):
            for i in range(30):
                dist.cast(("nobody", f"ghost{round_}x{i}@127.0.0.1:{_closed_port()}"), "hi")
            _wait(lambda r=round_: dist.stats().get("peers_forgotten", 0) >= 30 * r, 20.0)
            assert shared_child.call("echo", round_, timeout=5.0) == round_
    finally:
        dist.stop()
        otp.node.stop_all()


def test_a_burst_of_connections_is_accounted_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Monitor events are taken all at once, not one per liveness step: libzmq's I/O thread
    blocks once a monitor's queue is full, so anyone able to open TCP connections could
    otherwise pace the node's sockets to the liveness loop. Each step is slowed to 20 ms
    here; 150 connections must be counted in well under 150 steps."""
    real_check = Liveness._check

    def slow_check(self: Liveness, now: float) -> None:
        time.sleep(0.02)
        real_check(self, now)

    monkeypatch.setattr(Liveness, "_check", slow_check)
    node_id = _start()
    try:
        port = int(node_id.rpartition(":")[2])
        for _ in range(150):
            with socket.create_connection(("127.0.0.1", port), timeout=2.0):
                pass
        _wait(lambda: dist.stats().get("conn_accepted", 0) >= 150, timeout=1.5)
    finally:
        dist.stop()
        otp.node.stop_all()
