"""Peer listeners (issue 13): node liveness changes reach subscribers, e.g. the partitions."""

from __future__ import annotations

import logging
from functools import partial
from types import SimpleNamespace

import pytest

from waraft import distribution
from waraft.distribution import policy
from waraft.distribution.peers import Peer, PeerState
from waraft.distribution.receiver import Receiver, _Conn
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
    fake.clean_up_after = partial(Dist.clean_up_after, fake)
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


def test_only_a_member_going_down_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A peer becomes a member by being admitted to a member's request; a client (a
    ``waraft status`` run, a service's Client) leaving is logged at INFO, not WARNING."""
    name = "test_peer_listeners_member_probe"
    policy.allow(name, casts={"rpc": policy.MEMBER}, calls={"get": policy.CLIENT})
    fake_receiver = SimpleNamespace(
        _limiter=None, _count=lambda counter: None, _deep=lambda frame, value: False
    )
    member, client = Peer("m@127.0.0.1:9", 0.0), Peer("waraft-cli1x2@127.0.0.1:9", 0.0)
    try:
        for peer, tag in ((member, "rpc"), (client, "get")):
            conn = _Conn(peer, policy.Sender(peer.node_id, policy.RIGHTS), None)
            verdict = Receiver._admit(
                fake_receiver,  # type: ignore[arg-type]
                conn,
                name,
                tag == "get",
                (tag,),
                b"",
            )
            assert verdict is True
    finally:
        policy.forget(name)
    assert (member.member, client.member) == (True, False)
    fake = SimpleNamespace(
        counters=Counters(), _pending={}, signals=SimpleNamespace(node_down=lambda node: None)
    )
    fake.clean_up_after = partial(Dist.clean_up_after, fake)
    with caplog.at_level(logging.INFO, logger="waraft.distribution.runtime"):
        for peer in (member, client):
            Dist._on_peer_change(fake, peer, PeerState.UP, PeerState.DOWN)  # type: ignore[arg-type]
    levels = {r.getMessage().split()[1]: r.levelno for r in caplog.records if "down" in r.message}
    assert levels == {"m@127.0.0.1:9": logging.WARNING, "waraft-cli1x2@127.0.0.1:9": logging.INFO}
