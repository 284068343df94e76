"""Which client batches to an acceptor that no process has are answered
``no_such_partition`` (``acceptor.answer_unserved_partitions``): only those to a partition the
node never started, and not while it is still starting the partitions it was started with.
Over real nodes: ``tests/multiprocess/test_client_outcomes.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from waraft import otp
from waraft.distribution import inline, policy
from waraft.partition import acceptor
from waraft.services import env

ITEMS = [("k1", ("write", "t", "a", 1)), ("k2", ("write", "t", "b", 2))]


def _batch(items: Any = ITEMS) -> tuple[Any, ...]:
    return ("client_batch", ("receiver", "client@127.0.0.1:1"), 7, "commit", items, "high")


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    sent: list[Any] = []
    monkeypatch.setattr(acceptor, "send_client_reply", lambda *args: sent.append(args))
    monkeypatch.setattr(acceptor, "_last_start", float("-inf"))  # no partition started lately
    node = otp.Node("unserved@t")
    with node.activate():
        acceptor.answer_unserved_partitions()
        yield sent
    node.stop()


def test_a_batch_to_a_partition_never_started_is_answered_item_by_item(answers: list[Any]) -> None:
    assert inline.unserved(acceptor.default_name("t", 3), _batch(), "client:c")
    assert answers == [
        (("receiver", "client@127.0.0.1:1"), 7, [acceptor.NO_SUCH_PARTITION] * 2, None)
    ]


def test_a_partition_started_here_once_or_about_to_start_is_left_alone(
    answers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env.register_partition("t_x", 4, "app")  # stopped, or restarting under its supervisor
    assert not inline.unserved(acceptor.default_name("t_x", 4), _batch(), "client:c")
    with acceptor.starting_partitions():  # the node is starting the partitions it runs
        assert not inline.unserved(acceptor.default_name("t", 5), _batch(), "client:c")
    # ... and for a while after it, or after any partition started: another may follow.
    assert not inline.unserved(acceptor.default_name("t", 5), _batch(), "client:c")
    monkeypatch.setattr(acceptor, "_last_start", time.monotonic() - acceptor.STARTUP_GRACE)
    assert inline.unserved(acceptor.default_name("t", 5), _batch(), "client:c")
    assert len(answers) == 1


def test_anything_but_a_well_formed_client_batch_is_left_alone(answers: list[Any]) -> None:
    name = acceptor.default_name("t", 6)
    assert not inline.unserved(name, ("commit", "x"), "client:c")
    assert not inline.unserved(name, _batch(items="not a list"), "client:c")
    assert not inline.unserved("raft_acceptor_no_number", _batch(), "client:c")
    assert answers == []


def test_names_without_rules_of_their_own_take_the_prefix_rule(answers: list[Any]) -> None:
    # No process registered the name: without the prefix rule the batch was refused before
    # anything could answer it; with it, only a client key's batch is admitted.
    rule = policy.rule_for(acceptor.default_name("never", 1), False, _batch())
    assert rule is not None and rule.right == policy.CLIENT
    assert policy.rule_for(acceptor.default_name("never", 1), False, ("rpcs", [])) is None
    assert policy.rule_for("raft_server_never_1", False, _batch()) is None
