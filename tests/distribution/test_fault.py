"""Fault injection: partitions made by dropping traffic, and healing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from waraft import distribution as dist
from waraft import otp

from .helpers import DOWN, Child, start_sink, wait_until


def _eventually_ok(fn: Callable[[], object], timeout: float = 5.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except otp.ExitError:
            assert time.monotonic() < deadline, "link did not heal in time"
            time.sleep(0.05)


def test_partition_both_directions_and_heal(node: str, shared_child: Child) -> None:
    inbox = start_sink()
    assert shared_child.call("echo", 1) == 1
    dist.set_fault([shared_child.node_id])
    # Outbound: dropped at once, calls fail fast.
    assert dist.cast(shared_child.echo, ("cast_back", ("sink", node), "lost")) is False
    with pytest.raises(otp.ExitError) as info:
        shared_child.call("echo", 2)
    assert info.value.reason == ("nodedown", shared_child.node_id)
    # Inbound: the child's frames (pongs included) are dropped here, so it goes down.
    wait_until(lambda: dist.peers()[shared_child.node_id]["state"] == "down", DOWN + 2.0)
    stats = dist.stats()
    assert stats["tx_dropped_fault"] >= 1
    assert stats["rx_dropped_fault"] >= 1
    assert dist.peers()[shared_child.node_id]["fault"] is True
    dist.clear_fault()
    assert _eventually_ok(lambda: shared_child.call("echo", 3, timeout=1.0)) == 3
    assert dist.peers()[shared_child.node_id]["state"] == "up"
    otp.cast(shared_child.echo, ("cast_back", ("sink", node), "healed"))
    assert inbox.wait_len(1) == [("cast", "healed")]


def test_one_way_fault(node: str, shared_child: Child) -> None:
    inbox = start_sink()
    dist.set_fault(outbound=[shared_child.node_id])
    assert dist.cast(shared_child.echo, ("cast_back", ("sink", node), "x")) is False
    # The other direction still flows: the child can call us.
    dist.clear_fault()
    # The earlier test left drops on the counter: wait for a new one, or the fault could be
    # cleared before the cast back arrives (and it would be delivered).
    dropped = dist.stats().get("rx_dropped_fault", 0)
    dist.set_fault(inbound=[shared_child.node_id])
    assert dist.cast(shared_child.echo, ("cast_back", ("sink", node), "dropped on return"))
    wait_until(lambda: dist.stats().get("rx_dropped_fault", 0) > dropped)
    dist.clear_fault()
    otp.cast(shared_child.echo, ("cast_back", ("sink", node), "back"))
    assert inbox.wait_len(1) == [("cast", "back")]


def test_partition_between_two_other_nodes(node: str, spawn: Callable[..., Child]) -> None:
    # The harness (this node) stays connected to both and heals the cut it made.
    a, b = spawn("a"), spawn("b")
    assert a.call("call_to", b.echo, ("echo", "a->b"), 5.0) == ("ok", "a->b")
    a.call("set_fault", [b.node_id])
    b.call("set_fault", [a.node_id])
    assert a.call("call_to", b.echo, ("echo", 1), 5.0) == ("exit", ("nodedown", b.node_id))
    assert b.call("call_to", a.echo, ("echo", 1), 5.0) == ("exit", ("nodedown", a.node_id))
    assert a.call("echo", "harness still reaches a") == "harness still reaches a"
    a.call("clear_fault")
    b.call("clear_fault")

    def a_calls_b() -> object:
        outcome = a.call("call_to", b.echo, ("echo", "healed"), 1.0)
        if outcome[0] != "ok":
            raise otp.ExitError(outcome[1])
        return outcome[1]

    assert _eventually_ok(a_calls_b) == "healed"
