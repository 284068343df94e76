"""Two OS processes exchanging casts, sends and calls both ways over ZeroMQ."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from waraft import distribution as dist
from waraft import otp
from waraft.distribution import policy
from waraft.services import codec

from .helpers import DOWN, Child, start_sink, wait_until


def test_calls_return_values_through_msgpack(node: str, shared_child: Child) -> None:
    value = (1, -2, 3.5, "text", b"\x00bytes", None, True, {"k": (1, 2)}, ())
    assert shared_child.call("echo", value) == value
    assert shared_child.call("echo", [1, [2]]) == (1, (2,))  # arrays come back as tuples


def test_casts_and_sends_both_ways(node: str, shared_child: Child) -> None:
    inbox = start_sink()
    otp.cast(shared_child.echo, ("cast_back", ("sink", node), "via-cast"))
    otp.send(shared_child.echo, ("info_back", ("sink", node), "via-info"))
    items = inbox.wait_len(2)
    assert sorted(items) == [("cast", "via-cast"), ("info", "via-info")]


def test_an_info_is_admitted_by_an_info_rule_only(node: str, shared_child: Child) -> None:
    """Infos were admitted by the cast rules: ``client_batch``, a client's cast to the
    acceptor, sent as an info reached the acceptor's default ``handle_info``, which logged
    each (megabytes) in full. A name with rules takes an info only under an info rule."""
    inbox = start_sink()
    policy.allow("sink", casts={"c": policy.MEMBER}, infos={"i": policy.MEMBER})
    try:
        refused = dist.stats().get("rx_refused", 0)
        assert shared_child.call("send_to", ("sink", node), ("c", "as an info")) is True
        assert shared_child.call("send_to", ("sink", node), ("i", "as an info")) is True
        assert shared_child.call("cast_to", ("sink", node), ("i", "as a cast")) is True
        assert shared_child.call("cast_to", ("sink", node), ("c", "as a cast")) is True
        items = inbox.wait_len(2)
        wait_until(lambda: dist.stats().get("rx_refused", 0) >= refused + 2, what="refusals")
    finally:
        policy.forget("sink")
    # (The child's link to here keeps its frames in order: nothing else is on its way.)
    assert items == [("info", ("i", "as an info")), ("cast", ("c", "as a cast"))]


def test_child_calls_this_node(node: str, shared_child: Child) -> None:
    start_sink()
    assert shared_child.call("call_to", ("sink", node), ("x", 1), 5.0) == (
        "ok",
        ("sink", ("x", 1)),
    )
    assert shared_child.call("call_to", ("nobody", node), "x", 5.0) == ("exit", "noproc")


def test_casts_from_one_thread_arrive_in_order(node: str, shared_child: Child) -> None:
    inbox = start_sink()
    shared_child.call("flood", ("sink", node), 2000)
    items = inbox.wait_len(2000)
    assert items == [("cast", ("flood", i)) for i in range(2000)]


def test_deferred_reply_from_another_thread(node: str, shared_child: Child) -> None:
    assert shared_child.call("defer", 42) == ("deferred", 42)


def test_callee_crash_reaches_the_caller(node: str, shared_child: Child) -> None:
    with pytest.raises(otp.ExitError) as info:
        shared_child.call("crash")
    assert info.value.reason == ("error", "ValueError: asked to crash")
    assert shared_child.call("echo", "still here") == "still here"


def test_unencodable_reply_fails_the_call(node: str, shared_child: Child) -> None:
    with pytest.raises(otp.ExitError) as info:
        shared_child.call("unencodable")
    assert info.value.reason[0] == "badarg"
    with pytest.raises(codec.CodecError):
        shared_child.call("echo", object())  # the caller's own request: a programming error
    assert dist.cast(shared_child.echo, object()) is False  # a cast never raises
    assert dist.stats()["tx_encode_errors"] == 1


def test_unknown_name_is_noproc(node: str, shared_child: Child) -> None:
    with pytest.raises(otp.ExitError) as info:
        otp.call(("nobody", shared_child.node_id), "hello", 5.0)
    assert info.value.reason == "noproc"
    otp.cast(("nobody", shared_child.node_id), "lost")  # never raises
    assert shared_child.call("echo", 1) == 1


def test_call_timeout(node: str, shared_child: Child) -> None:
    started = time.monotonic()
    with pytest.raises(otp.ExitError) as info:
        shared_child.call("noreply", timeout=0.3)
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 3.0
    assert dist.stats()["call_timeouts"] == 1
    assert shared_child.call("echo", 1) == 1


def test_remote_reply_handle_names_the_caller(node: str, shared_child: Child) -> None:
    # The child's peer table knows this node (its reply handles travel back here).
    peers = shared_child.call("peers")
    assert peers[node]["state"] == "up"


def test_call_to_a_node_nobody_runs_is_nodedown_fast(node: str) -> None:
    with socket.socket() as s:  # a port that is free now: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ghost = f"ghost@127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(otp.ExitError) as info:
        otp.call(("echo", ghost), "hello", 5.0)
    assert info.value.reason == ("nodedown", ghost)
    assert time.monotonic() - started < DOWN + 1.0
    # Known down now: the next call fails at once, casts are dropped and counted.
    started = time.monotonic()
    with pytest.raises(otp.ExitError):
        otp.call(("echo", ghost), "hello", 5.0)
    assert time.monotonic() - started < 0.1
    assert dist.cast(("echo", ghost), "x") is False
    assert dist.stats()["tx_dropped_nodedown"] >= 1
    assert dist.peers()[ghost]["state"] == "down"


def test_killed_node_fails_waiting_and_new_calls(node: str, spawn: Callable[..., Child]) -> None:
    child = spawn("victim")
    assert child.call("echo", 1) == 1
    outcome: list[object] = []

    def waiting_call() -> None:
        try:
            child.call("noreply", timeout=10.0)
        except otp.ExitError as exc:
            outcome.append(exc.reason)

    waiter = threading.Thread(target=waiting_call)
    waiter.start()
    time.sleep(0.1)  # let the call reach the child (it never answers)
    started = time.monotonic()
    child.kill()
    waiter.join(5.0)
    assert outcome == [("nodedown", child.node_id)]
    assert time.monotonic() - started < DOWN + 1.0
    with pytest.raises(otp.ExitError) as info:
        child.call("echo", 1, timeout=5.0)
    assert info.value.reason == ("nodedown", child.node_id)


def test_restarted_peer_is_reachable_again(node: str, spawn: Callable[..., Child]) -> None:
    first = spawn("phoenix")
    assert first.call("echo", 1) == 1
    first.kill()
    # A new process on the same node id (same port) is a new incarnation of the node.
    port = dist.parse(first.node_id).port
    second = spawn_same_port(spawn, port)
    deadline = time.monotonic() + 5.0
    while True:
        try:
            assert second.call("echo", 2, timeout=1.0) == 2
            break
        except otp.ExitError as exc:
            assert exc.reason[0] == "nodedown" or exc.reason == "timeout"
            assert time.monotonic() < deadline, "restarted node never became reachable"
            time.sleep(0.05)


def spawn_same_port(spawn: Callable[..., Child], port: int) -> Child:
    # child_node.py binds the port of its id; give it the old one (retry while TIME_WAIT-free
    # rebinding races the old socket's close).
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return spawn(f"phoenix@127.0.0.1:{port}")
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_many_requests_in_flight_from_one_thread(node: str, shared_child: Child) -> None:
    handles = [dist.send_request(shared_child.echo, ("echo", i)) for i in range(100)]
    assert [dist.wait_response(h, 10.0) for h in handles] == list(range(100))
    deferred = dist.send_request(shared_child.echo, ("defer", "later"))
    assert dist.wait_response(deferred, 10.0) == ("deferred", "later")
    assert dist.stats()["pending_calls"] == 0


def test_unanswered_request_expires(node: str, shared_child: Child) -> None:
    handle = dist.send_request(shared_child.echo, ("noreply",), timeout=0.2)
    with pytest.raises(otp.ExitError) as info:
        dist.wait_response(handle, 5.0)  # failed by the expiry sweep, not by this wait
    assert info.value.reason == "timeout"
    assert dist.stats()["pending_calls"] == 0


def test_request_completes_a_given_handle(node: str, shared_child: Child) -> None:
    # Any ReplyTo works: here a remote caller's style of handle is replaced by a local one.
    handle = otp.LocalReplyTo()
    assert dist.send_request(shared_child.echo, ("echo", "x"), handle) is handle
    assert handle.wait(10.0) == "x"
    bad = dist.send_request(("echo", "ghost@127.0.0.1:1"), ("echo", 1))
    with pytest.raises(otp.ExitError) as info:
        dist.wait_response(bad, 5.0)
    assert info.value.reason == ("nodedown", "ghost@127.0.0.1:1")
