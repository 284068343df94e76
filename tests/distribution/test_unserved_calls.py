"""A call from another node to a name no process has here: failed ``noproc``, unless the
layer that owns the name's prefix answers it, or fails it with a reason of its own
(``set_unserved_call_handler``, ``FailCall``: the partition layer answers a verb to a
partition it is restarting, and fails a status call ``partition_restarting``,
``waraft.partition.server``)."""

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
        if request == "fail":
            return dist.FailCall(("its_reason", name))
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


def test_the_owner_of_a_prefix_may_fail_such_a_call_with_its_own_reason(
    node: str, shared_child: Child, answered: list[Any]
) -> None:
    # A call answering data has no reply value meaning "not here right now": the caller's
    # otp.call raises ExitError with the handler's reason, as it does for noproc.
    name = PREFIX + "y"
    reply = shared_child.call("call_to", (name, node), "fail", 5.0)
    assert tuple(reply) == ("exit", ("its_reason", name))


class _Idle(otp.Process):
    """Stands in for a partition's supervisor (only its registered name matters)."""


@pytest.fixture
def restarting(node: str) -> Iterator[str]:
    """Server name of partition ("r", 5) of this node, which it is restarting: registered,
    its supervisor's name taken, no server; and the partition layer's unserved answers on."""
    from waraft.distribution import policy
    from waraft.partition import part_sup, server
    from waraft.services import env

    env.register_partition("r", 5, "app")
    supervisor = _Idle.start(name=part_sup.default_name("r", 5))
    server.answer_unserved_calls()
    try:
        yield server.default_name("r", 5)
    finally:
        policy.allow_prefix(server.NAME_PREFIX)
        dist.set_unserved_call_handler(server.NAME_PREFIX, None)
        otp.kill(supervisor)
        env.unregister_partition("r", 5)


def test_a_partition_restarting_here_is_said_so_to_a_caller_on_another_node(
    node: str, shared_child: Child, restarting: str
) -> None:
    def call_from_child(name: str, request: Any) -> Any:
        return tuple(shared_child.call("call_to", (name, node), request, 5.0))

    assert call_from_child(restarting, ("status",)) == ("exit", "partition_restarting")
    assert call_from_child(restarting, ("current_config",)) == ("exit", "partition_restarting")
    assert call_from_child(restarting, ("resign",)) == ("ok", ("error", "partition_restarting"))
    # A partition this node never started: noproc, as before.
    assert call_from_child("raft_server_r_6", ("status",)) == ("exit", "noproc")
