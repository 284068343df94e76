"""Peer listeners (issue 13): node liveness changes reach subscribers, e.g. the partitions."""

from __future__ import annotations

from types import SimpleNamespace

from waraft import distribution
from waraft.distribution.peers import Peer, PeerState
from waraft.distribution.runtime import Counters, Dist


def test_down_and_up_transitions_reach_every_listener_once() -> None:
    seen: list[tuple[str, bool]] = []

    def listener(node: str, up: bool) -> None:
        seen.append((node, up))

    def broken(node: str, up: bool) -> None:
        raise RuntimeError("a failing listener does not stop the others")

    lost: list[str] = []
    fake = SimpleNamespace(
        counters=Counters(), _pending={}, signals=SimpleNamespace(node_down=lost.append)
    )
    peer = Peer("b@127.0.0.1:9", 0.0)
    distribution.add_peer_listener(broken)
    distribution.add_peer_listener(listener)
    distribution.add_peer_listener(listener)  # idempotent
    try:
        Dist._on_peer_change(fake, peer, PeerState.UP, PeerState.DOWN)  # type: ignore[arg-type]
        Dist._on_peer_change(fake, peer, PeerState.DOWN, PeerState.UP)  # type: ignore[arg-type]
        Dist._on_peer_change(fake, peer, PeerState.UP, PeerState.CONNECTING)  # type: ignore[arg-type]
    finally:
        distribution.remove_peer_listener(listener)
        distribution.remove_peer_listener(broken)
    assert seen == [("b@127.0.0.1:9", False), ("b@127.0.0.1:9", True)]
    assert lost == ["b@127.0.0.1:9"]  # remote links and monitors hear of the loss too
