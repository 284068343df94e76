"""A packed frame's one result, as a remote client gets it off the wire, tells the list of its
commands' results from one error for all of them. msgpack has no tuples: a packed entry's
two results ``["error", "ok"]`` (a provider's own command may answer the string
``"error"``) arrived as ``("error", "ok")`` and ended both requests with that "error" (review
Z, 3). A frame of two now goes as two items; three or more cannot be a pair."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from waraft import client as client_module
from waraft import otp
from waraft.client import Client
from waraft.partition import acceptor
from waraft.services import codec
from waraft.storage import BATCH

_ids = itertools.count(1)
WHOLE_ENTRY_REFUSED = ("error", "refused_whole")
"""What the gateway answers for a packed entry holding the command ``"refuse"``."""


class _WireGateway(otp.Process):
    """A node's acceptor as a remote client sees it: each command's result is its third
    element (a provider's own answer); a packed ``$batch`` is ONE result, the list of its
    commands' results, or ``WHOLE_ENTRY_REFUSED`` for the whole entry; the reply goes
    through msgpack as the wire carries it (arrays come back as tuples)."""

    def init(self, frames: list[int]) -> None:
        self.frames = frames  # the items of each frame

    def handle_cast(self, msg: Any) -> None:
        _, reply_to, batch_id, kind, items, _priority = msg
        commands = [item[1] if kind == "commit" else item for item in items]
        self.frames.append(len(commands))
        if len(commands) == 1 and commands[0][0] == BATCH:
            inner = [tuple(c) for c in codec.unpackb(commands[0][1])]
            answers = [c[2] for c in inner]
            result: Any = WHOLE_ENTRY_REFUSED if "refuse" in answers else answers
            results = [result]
        else:
            results = [c[2] for c in commands]
        reply = codec.unpackb(codec.packb(("client_reply", batch_id, results, None)))
        otp.cast(reply_to, reply)


@pytest.fixture
def gateway() -> Iterator[tuple[Client, list[int]]]:
    client_node = otp.Node(f"packedc{next(_ids)}@local")
    node = otp.Node(f"packedg{next(_ids)}@local")
    frames: list[int] = []
    otp.start(_WireGateway, frames, name=acceptor.default_name("t", 1), node=node)
    c = Client([node.id], table="t", partitions=1, node=client_node, discover=False)
    try:
        yield c, frames
    finally:
        c.close()
        node.stop()
        client_node.stop()


def _commit_together(c: Client, answers: list[str]) -> list[Any]:
    futures = c.commit_many([(1, ("own", i, a)) for i, a in enumerate(answers)], timeout=5)
    return [f.result(10) for f in futures]


def test_two_results_the_first_the_string_error_are_two_results(
    gateway: tuple[Client, list[int]],
) -> None:
    c, frames = gateway
    assert _commit_together(c, ["error", "ok"]) == ["error", "ok"]
    assert frames == [2]  # one frame, its two commands as two items
    assert client_module.MIN_PACKED == 3


def test_a_packed_frame_tells_its_results_from_one_error_for_all(
    gateway: tuple[Client, list[int]],
) -> None:
    c, frames = gateway
    assert _commit_together(c, ["error", "ok", "error"]) == ["error", "ok", "error"]
    assert _commit_together(c, ["ok", "refuse", "ok"]) == [WHOLE_ENTRY_REFUSED] * 3
    assert frames == [1, 1]  # packed: one item each
