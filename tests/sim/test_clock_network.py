"""The virtual clock and the virtual network (no Raft core needed)."""

from __future__ import annotations

import random

import pytest

from waraft.sim.clock import VirtualClock
from waraft.sim.network import NetConfig, Network


def test_clock_fires_in_time_then_schedule_order() -> None:
    clock = VirtualClock()
    fired: list[str] = []
    clock.schedule(5, fired.append, "b")
    clock.schedule(1, fired.append, "a")
    clock.schedule(5, fired.append, "c")
    cancelled = clock.schedule(3, fired.append, "x")
    cancelled.cancel()
    while (item := clock.pop()) is not None:
        item.fire()
    assert fired == ["a", "b", "c"]
    assert clock.now == 5


def test_clock_refuses_the_past_and_skipping_items() -> None:
    clock = VirtualClock()
    clock.schedule(10, lambda: None)
    with pytest.raises(ValueError):
        clock.schedule(-1, lambda: None)
    with pytest.raises(ValueError):
        clock.advance_to(11)
    clock.advance_to(10)
    assert clock.now == 10
    with pytest.raises(ValueError):
        clock.schedule_at(9, lambda: None)


def _net(config: NetConfig, seed: int = 1, up: set[str] | None = None):
    clock = VirtualClock()
    got: list[tuple[int, str, str, object]] = []
    alive = up if up is not None else {"a", "b", "c"}
    net = Network(
        clock,
        random.Random(seed),
        lambda s, d, m: got.append((clock.now, s, d, m)),
        lambda n: n in alive,
        config,
    )
    return clock, net, got


def _drain(clock: VirtualClock) -> None:
    while (item := clock.pop()) is not None:
        item.fire()


def test_reliable_network_delivers_everything_within_bounds() -> None:
    clock, net, got = _net(NetConfig(min_delay_ms=2, max_delay_ms=7))
    for i in range(100):
        net.send("a", "b", i)
    _drain(clock)
    assert sorted(m for _, _, _, m in got) == list(range(100))
    assert all(2 <= t <= 7 for t, _, _, _ in got)
    assert net.sent["a"] == 100 and net.dropped_total == 0


def test_loss_duplication_and_reordering_are_seeded() -> None:
    cfg = NetConfig(max_delay_ms=3, loss=0.2, duplicate=0.2, reorder=0.3, reorder_delay_ms=40)

    def run() -> list[tuple[int, str, str, object]]:
        clock, net, got = _net(cfg, seed=7)
        for i in range(500):
            net.send("a", "b", i)
        _drain(clock)
        return got

    first = run()
    assert first == run()  # same seed, same schedule
    values = [m for _, _, _, m in first]
    assert len(set(values)) < 500  # some lost
    assert len(values) > len(set(values))  # some duplicated
    assert values != sorted(values)  # some reordered


def test_partitions_symmetric_asymmetric_and_in_flight() -> None:
    clock, net, got = _net(NetConfig(min_delay_ms=5, max_delay_ms=5))
    net.partition(["a"], ["b", "c"])
    net.send("a", "b", 1)
    net.send("b", "c", 2)
    net.send("c", "a", 3)
    _drain(clock)
    assert [m for *_, m in got] == [2]
    net.heal()
    net.block("a", "b")
    net.send("a", "b", 4)
    net.send("b", "a", 5)
    _drain(clock)
    assert [m for *_, m in got] == [2, 5]
    net.heal()
    net.send("a", "b", 6)  # in flight when the link is cut: lost
    net.isolate("b", ["a", "b", "c"])
    _drain(clock)
    assert [m for *_, m in got] == [2, 5]
    net.heal()
    net.partition(["a", "b"], nodes=["a", "b", "c"])  # c in no group: isolated
    assert not net.can_reach("c", "a") and not net.can_reach("a", "c")
    assert net.can_reach("a", "b")


def test_messages_to_a_down_node_are_dropped() -> None:
    clock, net, got = _net(NetConfig(), up={"a"})
    net.send("a", "b", 1)
    _drain(clock)
    assert got == [] and net.dropped_total == 1
