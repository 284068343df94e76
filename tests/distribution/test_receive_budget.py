"""The receive thread's budget per client key covers everything a client's frame costs it.

A security review flooded a keyed node with 1 MB client batches from one client key: decoding
them was charged to the key's budget, but the depth walk of admission and the acceptor's
inline handling (checking and admitting every command of the batch, on the receive thread)
were not, and cost twice as much. Within its budget the key kept the thread, and so the
node's GIL, 95 % busy: other clients' commits took 3 to 16 s and the leader lost its
leadership. Here an inline handler that costs the thread time stands for that handling: a
client key's frames are dropped once it has spent its budget (``rx_decode_limited``), while a
member's frames, Raft traffic, are never throttled.

A dropped request used to go unanswered: its caller waited for its timeout and retried with no
cause it could see. Now a call, or a client batch (a cast carrying its reply address), that a
key in debt sends is answered ``overloaded`` at once, for at most ``shed_answers_per_s`` of its
frames a second; other casts are still dropped without a word.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from tests.security.attacker import Attacker
from waraft import distribution as dist
from waraft.distribution import envelope, inline, policy
from waraft.partition import acceptor

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


@contextlib.contextmanager
def _costly_sink(name: str, cost: float) -> Iterator[list[Any]]:
    """Clients' ``("work", ...)`` casts to ``name`` taken by an inline handler that holds the
    receive thread ``cost`` s each; yields the messages it took, in order."""
    took: list[Any] = []

    def costly(msg: Any, origin: str) -> bool:
        time.sleep(cost)  # stands for work on the receive thread
        took.append(msg)
        return True

    policy.allow(name, casts={"work": policy.CLIENT})
    inline.set_handler(name, costly)
    try:
        yield took
    finally:
        inline.set_handler(name, None)
        policy.forget(name)


@pytest.fixture
def handled() -> Iterator[list[Any]]:
    """The frames ``SINK``'s costly inline handler took, in order."""
    with _costly_sink(SINK, COST) as took:
        yield took


def _flood(ctx: zmq.Context[Any], node_id: str, key: str, name: str) -> Attacker:
    sender = Attacker(ctx, node_id, name=name, curve=(*KEYS[key], KEYS["n1"][0]))
    for i in range(FRAMES):
        sender.cast(SINK, ("work", i))
    return sender


def test_a_client_keys_inline_handling_is_charged_to_its_budget(
    keyed_node: str,
    ctx: zmq.Context[Any],
    handled: list[Any],
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
    # The operator is told which key is over its share (its requests are shed).
    lines = [r.getMessage() for r in caplog.records if "receive thread" in r.getMessage()]
    assert lines and "client:app" in lines[0]


def _all_handled(
    ctx: zmq.Context[Any], node_id: str, key: str, name: str, handled: list[Any]
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
    keyed_node: str, ctx: zmq.Context[Any], handled: list[Any]
) -> None:
    _all_handled(ctx, keyed_node, "n2", "n2", handled)


def test_a_client_key_may_be_given_the_whole_thread(
    whole_thread_node: str, ctx: zmq.Context[Any], handled: list[Any]
) -> None:
    _all_handled(ctx, whole_thread_node, "app", "app.flood", handled)


# -- answers to what a key in debt sends --------------------------------------------------------

HEAVY_SINK = "heavy_sink"
HEAVY = 0.5
"""Seconds one cast to ``HEAVY_SINK`` takes of the receive thread: at ``DEBT_SHARE`` the key
that sent it is in debt for about 45 s, longer than any of these tests."""
DEBT_SHARE = 0.01
SHED_RATE = 10.0
"""``shed_answers_per_s`` of the node in debt: its frames answered ``overloaded`` a second."""


@pytest.fixture
def app_in_debt(ctx: zmq.Context[Any]) -> Iterator[Attacker]:
    """A keyed node (``shed_answers_per_s`` = ``SHED_RATE``) and a connection of client key
    "app" to it that has spent its share of the receive thread for the rest of the test."""
    settings = dist.DistSettings(
        client_receive_share=DEBT_SHARE, client_receive_burst_s=0.05, shed_answers_per_s=SHED_RATE
    )
    node_id = dist.start("n1@127.0.0.1:0", curve=_curve(), settings=settings)
    try:
        with _costly_sink(HEAVY_SINK, HEAVY) as took:
            app = Attacker(ctx, node_id, name="app.debtor", curve=(*KEYS["app"], KEYS["n1"][0]))
            try:
                app.cast(HEAVY_SINK, ("work", 0))
                wait_until(lambda: bool(took), timeout=10.0)
                yield app
            finally:
                app.close()
    finally:
        dist.stop()


def _limited() -> int:
    return dist.stats().get("rx_decode_limited", 0)


def test_a_call_of_a_key_in_debt_is_answered_overloaded_at_once(
    app_in_debt: Attacker, ctx: zmq.Context[Any]
) -> None:
    """The caller learns why at once (a FAIL ``overloaded``, its run echoed), instead of
    waiting for its timeout (seconds) to retry blind; a member's call, meanwhile, is served
    (here: answered ``noproc``, there being no such process)."""
    app = app_in_debt
    before = _limited()
    run = (1 << 62) + 12345  # (a run id, as ``Dist.run_id``: bit 62 set)
    ref = 4242
    app.raw(envelope.call_frame("nobody", ref, b"\xa3ask", run))
    bare = app.call("nobody", "ask")  # (a hand-made caller's: no run)
    answers = app.answers(timeout=2.0, want=2)
    assert sorted(answers, key=lambda a: a[2] != ref) == [
        (1, envelope.Kind.FAIL, ref, dist.OVERLOADED, run),
        (1, envelope.Kind.FAIL, bare, dist.OVERLOADED),
    ]
    assert _limited() - before == 2  # shed (undecoded), yet answered
    member = Attacker(ctx, app.target, name="n2", curve=(*KEYS["n2"], KEYS["n1"][0]))
    try:
        assert member.answer_to(member.call("nobody", "ask"), timeout=5.0) == "noproc"
    finally:
        member.close()


def test_a_cast_of_a_key_in_debt_is_still_dropped_without_an_answer(
    app_in_debt: Attacker,
) -> None:
    app = app_in_debt
    before = _limited()
    app.cast(HEAVY_SINK, ("work", 1))
    wait_until(lambda: _limited() - before == 1, timeout=5.0)
    ref = app.call("nobody", "ask")  # answered: whatever came before it has arrived
    assert [a[2] for a in app.answers(timeout=2.0, want=2)] == [ref]
    assert dist.stats().get("rx_shed_answers", 0) == 1


def test_a_flood_of_calls_earns_a_bounded_number_of_answers(app_in_debt: Attacker) -> None:
    """Answering costs the receive thread, the resource under attack: a flood of calls gets
    at most ``shed_answers_per_s`` answers a second (as many banked), the rest dropped
    unanswered and unread as before."""
    app = app_in_debt
    before = _limited()
    flood = 200
    start = time.monotonic()
    for _ in range(flood):
        app.call("nobody", "ask")
    wait_until(lambda: _limited() - before == flood, timeout=10.0)
    answers = app.answers(timeout=0.5, want=flood)
    elapsed = time.monotonic() - start
    assert SHED_RATE <= len(answers) <= SHED_RATE * (1 + elapsed) + 1
    assert all(a[1] == envelope.Kind.FAIL and a[3] == dist.OVERLOADED for a in answers)


def test_a_client_batch_of_a_key_in_debt_is_answered_overloaded_as_a_whole(
    app_in_debt: Attacker,
) -> None:
    """The client's requests travel as ``client_batch`` casts that carry their reply address:
    one shed is answered ``("error", "overloaded")`` for the whole batch (its items unread),
    which the client retries after a backoff. A reply address on another node than the
    sender's is not answered (no reflection to a third node)."""
    app = app_in_debt
    registered = inline._shed.get(acceptor.NAME_PREFIX)  # (an acceptor registers it)
    dist.set_shed_handler(acceptor.NAME_PREFIX, acceptor._shed_batch)
    try:
        items = [("k", ("write", "t", "k", i)) for i in range(50)]
        elsewhere = ("client_rx", "victim@127.0.0.1:1")
        app.cast("raft_acceptor_t_1", ("client_batch", elsewhere, 6, "commit", items, "high"))
        home = ("client_rx", app.node_id)
        app.cast("raft_acceptor_t_1", ("client_batch", home, 7, "commit", items, "high"))
        answers = app.answers(timeout=2.0, want=2)
    finally:
        dist.set_shed_handler(acceptor.NAME_PREFIX, registered)
    reply = ("client_reply", 7, (("error", dist.OVERLOADED),), None)
    assert answers == [(1, envelope.Kind.CAST, "client_rx", reply)]
