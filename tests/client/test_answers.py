"""Which reply answers which request, and what a request's final answer says about its
command (applied, not applied, maybe): in process, against scripted gateways."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from tests.client.test_client import _scripted
from tests.partition.helpers import wait_until
from waraft import client as client_module
from waraft import otp
from waraft.client import Client
from waraft.partition import acceptor

_ids = itertools.count(1)


@pytest.fixture
def client_node() -> Iterator[otp.Node]:
    node = otp.Node(f"answers{next(_ids)}@local")
    yield node
    node.stop()


class _LateGateway(otp.Process):
    """A leader that was paused while the read of ``"a"`` was in flight: it holds that
    answer, and sends it (late) just before it answers the next read of ``"b"``."""

    def init(self) -> None:
        self.late: list[tuple[Any, Any]] = []

    def handle_cast(self, msg: Any) -> None:
        _, reply_to, batch_id, _kind, items, _priority = msg
        key = items[0][2]
        reply = ("client_reply", batch_id, [("ok", f"VALUE-OF-{key}")], None)
        if key == "a":
            self.late.append((reply_to, reply))
            return
        for to, old in self.late:
            otp.cast(to, old)
        otp.cast(reply_to, reply)


def test_a_late_reply_to_a_closed_client_never_answers_a_new_one(
    client_node: otp.Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Receivers were named after ``id(self)``, which Python reuses once an object is
    collected, and batches numbered from 1: a new client could get a closed one's reply
    address, and the closed client's late answer completed its first batch (a read of "b"
    returned the value of "a"). ``id`` is made constant here to reuse it every time."""
    monkeypatch.setattr(client_module, "id", lambda _obj: 0x5EED, raising=False)
    server = otp.Node(f"late{next(_ids)}@local")
    otp.start(_LateGateway, name=acceptor.default_name("t", 1), node=server)

    def make(timeout: float) -> Client:
        return Client(
            [server.id], table="t", partitions=1, node=client_node, discover=False,
            timeout=timeout,
        )  # fmt: skip

    try:
        old = make(0.2)
        assert old.read(1, ("read", "t", "a")) == ("error", "timeout")
        old.close()
        new = make(5.0)
        try:
            assert new.read(1, ("read", "t", "b")) == ("ok", "VALUE-OF-b")
        finally:
            new.close()
    finally:
        server.stop()


def test_receiver_names_are_never_reused_in_a_process(client_node: otp.Node) -> None:
    names = set()
    for _ in range(20):
        c = Client(["ghost@local"], table="t", partitions=1, node=client_node, discover=False)
        names.add(c.reply_addr)
        c.close()
        del c
        gc.collect()
    assert len(names) == 20


def test_a_reply_from_another_node_than_the_batchs_is_ignored(client_node: otp.Node) -> None:
    """The gateway answers from the node that took the batch; a reply for the batch's number
    from any other node (another cluster's late answer to an earlier holder of this address)
    is not this batch's. The node's own id, or its node key's user id, is."""
    scripted = _scripted(client_node, 1, lambda _cmd: None, timeout=10.0, max_batch=1)
    with scripted as (c, _log):
        node = c.nodes[0]
        futures = [c.read_async(1, ("read", "test", k)) for k in ("x", "y")]
        wait_until(lambda: len(c._inflight) == 2, timeout=5)
        first, second = sorted(c._inflight)
        forged = ("client_reply", first, [("ok", "forged")], None)
        assert c._on_cast(forged, "other@local") is False
        assert c._on_cast(forged, "node:other") is False
        assert not futures[0].done() and first in c._inflight
        assert c._on_cast(("client_reply", first, [("ok", "x")], None), node) is True
        name = node.partition("@")[0]
        assert c._on_cast(("client_reply", second, [("ok", "y")], None), f"node:{name}")
        assert [f.result(5) for f in futures] == [("ok", "x"), ("ok", "y")]


def test_a_reply_part_from_another_node_is_ignored(client_node: otp.Node) -> None:
    with _scripted(client_node, 1, lambda _cmd: None, timeout=10.0) as (c, _log):
        future = c.read_async(1, ("read", "test", "x"))
        wait_until(lambda: len(c._inflight) == 1, timeout=5)
        (bid,) = c._inflight
        part = ("client_reply_part", bid, False, 0, 1, [("ok", "forged")], None)
        assert c._on_cast(part, "other@local") is False
        assert c._inflight[bid].parts is None
        assert c._on_cast((*part[:5], [("ok", "x")], None), c.nodes[0]) is True
        assert future.result(5) == ("ok", "x")
