"""The server API's answer for a partition the node does not run: ``NO_SUCH_PARTITION`` for
the calls answered ``"ok"`` / ``("error", reason)``, where a raw ``ExitError`` (``noproc``
here, ``refused`` from another node) came out of ``adjust_config`` and the other admin
verbs. Over real nodes: ``tests/cli/test_commands.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from waraft import otp
from waraft.core.types import Identity, LogPos
from waraft.distribution import policy
from waraft.partition import server

NAME = server.default_name("t", 9)


@pytest.fixture
def node() -> Iterator[str]:
    node = otp.Node("unserved_server@t")
    with node.activate():
        yield node.id
    node.stop()


VERBS: list[tuple[str, Callable[[str], Any]]] = [
    ("adjust_config", lambda name: server.adjust_config(name, ("add", Identity(name, "n@h:1")))),
    ("refresh_config", server.refresh_config),
    ("disable", lambda name: server.disable(name, "maintenance")),
    ("enable", server.enable),
    ("handover", server.handover),
    ("resign", server.resign),
    ("trigger_election", server.trigger_election),
    ("promote", server.promote),
    ("is_peer_ready", lambda name: server.is_peer_ready(name, Identity(name, "n@h:1"))),
    (
        "bootstrap",
        lambda name: server.bootstrap(
            name, LogPos(1, 1), server.make_config([Identity(name, "n@h:1")])
        ),
    ),
]


@pytest.mark.parametrize("call", [c for _, c in VERBS], ids=[v for v, _ in VERBS])
def test_an_admin_verb_to_a_partition_not_running_here_answers_no_such_partition(
    node: str, call: Callable[[str], Any]
) -> None:
    assert call(NAME) == server.NO_SUCH_PARTITION
    assert server.NO_SUCH_PARTITION == ("error", "no_such_partition")


def test_the_calls_that_answer_data_still_raise(node: str) -> None:
    # A status is a dict and a config a Config: no answer of those types says "none here".
    for call in (server.status, server.get_current_config, server.handover_candidates):
        with pytest.raises(otp.ExitError) as info:
            call(NAME)
        assert info.value.reason == "noproc"


def test_a_remote_call_to_a_server_not_running_here_takes_the_prefix_rules() -> None:
    # Without rules for the name, a call from another node was refused before the receiver
    # looked for the process: a missing partition read as a permission problem. With the
    # prefix rules, a caller with the call's right gets noproc (as a local caller does),
    # and one without it is still refused.
    adjust = ("adjust_config", "refresh", None)
    server.answer_unserved_calls()
    try:
        rule = policy.rule_for("raft_server_never_1", True, adjust)
        assert rule is not None and rule.right == policy.ADMIN
        status = policy.rule_for("raft_server_never_1", True, ("status",))
        assert status is not None and status.right == policy.CLIENT
        assert policy.rule_for("raft_server_never_1", False, ("rpcs", [])) is None
        assert policy.rule_for("raft_acceptor_never_1", True, adjust) is None
    finally:
        policy.allow_prefix(server.NAME_PREFIX)
