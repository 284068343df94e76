"""start/stop: cycles, no leaked threads or sockets, bounded shutdown."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from waraft import distribution as dist
from waraft import otp

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
