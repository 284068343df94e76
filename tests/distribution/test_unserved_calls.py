"""A call from another node to a name no process has here: failed ``noproc``, unless the
layer that owns the name's prefix answers it (``set_unserved_call_handler``: the partition
layer answers a verb to a partition it is restarting, ``waraft.partition.server``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from waraft import distribution as dist
from waraft import otp

from .helpers import Child

PREFIX = "unserved_call_test_"


@pytest.fixture
def answered() -> Iterator[list[Any]]:
    """A handler for ``PREFIX`` that answers ``"ask"`` calls and leaves the rest."""
    seen: list[Any] = []

    def handler(name: str, request: Any, node: otp.Node) -> Any:
        seen.append((name, request, node.id))
        if request == "boom":
            raise RuntimeError("a handler that raises fails the call noproc")
        return ("answered", name) if request == "ask" else None

    dist.set_unserved_call_handler(PREFIX, handler)
    yield seen
    dist.set_unserved_call_handler(PREFIX, None)


def test_the_owner_of_a_prefix_answers_a_call_no_process_can_take(
    node: str, shared_child: Child, answered: list[Any]
) -> None:
    def call_from_child(name: str, request: Any) -> Any:
        return tuple(shared_child.call("call_to", (name, node), request, 5.0))

    name = PREFIX + "x"
    assert call_from_child(name, "ask") == ("ok", ("answered", name))
    assert call_from_child(name, "other") == ("exit", "noproc")
    assert call_from_child(name, "boom") == ("exit", "noproc")
    assert call_from_child("unserved_other_x", "ask") == ("exit", "noproc")
    # The handler learns which node the name was looked up on (the receive thread has none).
    assert [n for _, _, n in answered] == [node] * 3


def test_without_a_handler_such_a_call_fails_noproc(node: str, shared_child: Child) -> None:
    reply = shared_child.call("call_to", (PREFIX + "x", node), "ask", 5.0)
    assert tuple(reply) == ("exit", "noproc")
