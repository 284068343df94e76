"""The receive thread's budget per client key covers everything a client's frame costs it.

A security review flooded a keyed node with 1 MB client batches from one client key: decoding
them was charged to the key's budget, but the depth walk of admission and the acceptor's
inline handling (checking and admitting every command of the batch, on the receive thread)
were not, and cost twice as much. Within its budget the key kept the thread, and so the
node's GIL, 95 % busy: other clients' commits took 3 to 16 s and the leader lost its
leadership. Here an inline handler that costs the thread time stands for that handling: a
client key's frames are dropped once it has spent its budget (``rx_decode_limited``), while a
member's frames, Raft traffic, are never throttled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from tests.security.attacker import Attacker
from waraft import distribution as dist
from waraft.distribution import inline, policy

from .helpers import wait_until

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")

KEYS = {name: zmq.curve_keypair() for name in ("n1", "n2", "app")}
ROLES = {"n1": "node", "n2": "node", "app": "client"}
SINK = "costly_sink"
COST = 0.05
"""Seconds of the receive thread each frame to ``SINK`` takes (its inline handler sleeps)."""
FRAMES = 30
"""Frames sent at once: 1.5 s of handling, three times the burst a client key may bank."""


def _curve() -> dict[str, Any]:
    public, secret = KEYS["n1"]
    return {
        "public_key": public,
        "secret_key": secret,
        "server_keys": {name: pair[0] for name, pair in KEYS.items()},
        "identities": {pair[0]: (ROLES[name], name) for name, pair in KEYS.items()},
    }


@pytest.fixture
def keyed_node() -> Iterator[str]:
    node_id = dist.start("n1@127.0.0.1:0", curve=_curve())
    try:
        yield node_id
    finally:
        dist.stop()


@pytest.fixture
def whole_thread_node() -> Iterator[str]:
    """A keyed node whose client keys may use the whole receive thread."""
    settings = dist.DistSettings(client_receive_share=1.0)
    node_id = dist.start("n1@127.0.0.1:0", curve=_curve(), settings=settings)
    try:
        yield node_id
    finally:
        dist.stop()


@pytest.fixture
def handled() -> Iterator[list[str]]:
    """The origins of the frames ``SINK``'s costly inline handler took, in order."""
    seen: list[str] = []

    def costly(msg: Any, origin: str) -> bool:
        time.sleep(COST)  # stands for work on the receive thread
        seen.append(origin)
        return True

    policy.allow(SINK, casts={"work": policy.CLIENT})
    inline.set_handler(SINK, costly)
    try:
        yield seen
    finally:
        inline.set_handler(SINK, None)
        policy.forget(SINK)


def _flood(ctx: zmq.Context[Any], node_id: str, key: str, name: str) -> Attacker:
    sender = Attacker(ctx, node_id, name=name, curve=(*KEYS[key], KEYS["n1"][0]))
    for i in range(FRAMES):
        sender.cast(SINK, ("work", i))
    return sender


def test_a_client_keys_inline_handling_is_charged_to_its_budget(
    keyed_node: str,
    ctx: zmq.Context[Any],
    handled: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="waraft.distribution.receiver")
    limited = dist.stats().get("rx_decode_limited", 0)
    app = _flood(ctx, keyed_node, "app", "app.flood")
    try:
        # Every frame is either handled or dropped undecoded.
        wait_until(
            lambda: len(handled) + dist.stats().get("rx_decode_limited", 0) - limited == FRAMES,
            timeout=15.0,
        )
    finally:
        app.close()
    dropped = dist.stats().get("rx_decode_limited", 0) - limited
    # The key may bank client_receive_burst_s of the thread's time: at COST a frame, and
    # earning client_receive_share of what it spends back meanwhile, it is in debt long
    # before FRAMES.
    settings = dist.DistSettings()
    allowed = settings.client_receive_burst_s / (COST * (1 - settings.client_receive_share))
    assert dropped > 0
    assert len(handled) <= allowed + 2
    # The operator is told which key is over its share (its requests go unanswered).
    lines = [r.getMessage() for r in caplog.records if "receive thread" in r.getMessage()]
    assert lines and "client:app" in lines[0]


def _all_handled(
    ctx: zmq.Context[Any], node_id: str, key: str, name: str, handled: list[str]
) -> None:
    """Flood ``node_id`` as ``name`` with ``key``: every frame is handled, none dropped."""
    limited = dist.stats().get("rx_decode_limited", 0)
    sender = _flood(ctx, node_id, key, name)
    try:
        wait_until(lambda: len(handled) == FRAMES, timeout=15.0)
    finally:
        sender.close()
    assert dist.stats().get("rx_decode_limited", 0) == limited


def test_a_members_frames_are_never_throttled(
    keyed_node: str, ctx: zmq.Context[Any], handled: list[str]
) -> None:
    _all_handled(ctx, keyed_node, "n2", "n2", handled)


def test_a_client_key_may_be_given_the_whole_thread(
    whole_thread_node: str, ctx: zmq.Context[Any], handled: list[str]
) -> None:
    _all_handled(ctx, whole_thread_node, "app", "app.flood", handled)
