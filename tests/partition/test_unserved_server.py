"""The server API's answer for a partition the node does not run: ``NO_SUCH_PARTITION`` for
the calls answered ``"ok"`` / ``("error", reason)``, where a raw ``ExitError`` (``noproc``
here, ``refused`` from another node) came out of ``adjust_config`` and the other admin
verbs; and ``PARTITION_RESTARTING`` for a partition the node runs whose server is not up
right now (a restart), which answered ``NO_SUCH_PARTITION`` too, with the calls answering
data failing ``ExitError("partition_restarting")`` then (they failed ``noproc``), also while
the partition's supervisor gave up and its parent starts it again. Over real nodes:
``tests/cli/test_commands.py``; the receive thread's hook: ``tests/distribution``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import (
    APP,
    a_partition_whose_supervisor_gave_up,
    count_restarts_over_a_long_period,
    kill_server_until_its_supervisor_gives_up,
    start_node,
    wait_until,
)
from waraft import distribution as dist
from waraft import otp
from waraft.core.types import Identity, LogPos
from waraft.distribution import inline, policy
from waraft.partition import part_sup, server, sup
from waraft.services import env

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


DATA_CALLS: list[Callable[[Any], Any]] = [
    server.status,
    server.get_current_config,
    server.membership,
    server.handover_candidates,
]


def _exit_reason(call: Callable[[Any], Any], target: Any) -> Any:
    with pytest.raises(otp.ExitError) as info:
        call(target)
    return info.value.reason


def test_the_calls_that_answer_data_still_raise(node: str) -> None:
    # A status is a dict and a config a Config: no answer of those types says "none here".
    for call in DATA_CALLS:
        assert _exit_reason(call, NAME) == "noproc"


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


# -- a partition that is restarting: registered here, its supervisor up, its server not -----


class _Idle(otp.Process):
    """Stands in for a partition's supervisor (only its registered name matters here)."""


@pytest.fixture
def restarting(node: str) -> Iterator[str]:
    """Server name of partition ("r", 5), started on ``node`` and restarting: registered
    (``env.register_partition``) with its supervisor's name taken, and no server."""
    env.register_partition("r", 5, "app")
    supervisor = _Idle.start(name=part_sup.default_name("r", 5))
    try:
        yield server.default_name("r", 5)
    finally:
        otp.kill(supervisor)
        env.unregister_partition("r", 5)


@pytest.mark.parametrize("call", [c for _, c in VERBS], ids=[v for v, _ in VERBS])
def test_a_verb_to_a_partition_restarting_here_answers_partition_restarting(
    restarting: str, node: str, call: Callable[[Any], Any]
) -> None:
    # The shell said "serves no partition" of a partition it was restarting.
    assert call(restarting) == server.PARTITION_RESTARTING
    assert call((restarting, node)) == server.PARTITION_RESTARTING
    assert server.PARTITION_RESTARTING == ("error", "partition_restarting")
    # A partition never started here is still none of this node's.
    assert call(server.default_name("r", 6)) == server.NO_SUCH_PARTITION


@pytest.mark.parametrize("call", DATA_CALLS, ids=lambda c: c.__name__)
def test_a_data_call_to_a_partition_restarting_here_fails_partition_restarting(
    restarting: str, node: str, call: Callable[[Any], Any]
) -> None:
    # It failed noproc: the shell and `waraft status` said "not running" (or showed an
    # exception) of a partition the node was only restarting.
    assert _exit_reason(call, restarting) == "partition_restarting"
    assert _exit_reason(call, (restarting, node)) == "partition_restarting"
    assert server.RESTARTING == "partition_restarting"
    # A partition never started here still fails noproc.
    assert _exit_reason(call, server.default_name("r", 6)) == "noproc"


def test_a_partition_stopped_here_is_not_restarting(restarting: str) -> None:
    # Registered, but its supervisor is gone (``waraft.sup.stop_partition``): nothing will
    # bring the server back, so it is not "restarting".
    otp.kill(otp.whereis(part_sup.default_name("r", 5)))
    wait_until(lambda: otp.whereis(part_sup.default_name("r", 5)) is None)
    assert server.resign(restarting) == server.NO_SUCH_PARTITION
    assert _exit_reason(server.status, restarting) == "noproc"


def test_the_receive_thread_answers_a_verb_to_a_restarting_partition(
    restarting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A remote caller cannot look at this node's registry: the node answers for it (the
    # receive thread, for a call to a name no process has; see ``answer_unserved_calls``).
    here = otp.node.current()
    sent: list[Any] = []

    def record(target: Any, request: Any, timeout: Any = None) -> Any:
        sent.append(request)  # what each verb sends, as the receive thread gets it
        raise otp.ExitError("noproc")

    with monkeypatch.context() as patched:
        patched.setattr(otp, "call", record)
        for _, call in VERBS:
            call(restarting)
    assert len(sent) == len(VERBS)
    server.answer_unserved_calls()
    try:
        for request in sent:
            assert inline.unserved_call(restarting, request, here) == server.PARTITION_RESTARTING
        assert inline.unserved_call(restarting, ["resign"], here) == server.PARTITION_RESTARTING
        # Calls answering data fail with the reason (they failed noproc); a partition not
        # started here, and a call no remote caller may make, still fail noproc.
        failed = dist.FailCall("partition_restarting")
        for request in (("status",), ["current_config"], ("handover_candidates",)):
            assert inline.unserved_call(restarting, request, here) == failed
        assert inline.unserved_call(restarting, ("snapshot_available", "/", (1, 1)), here) is None
        assert inline.unserved_call(server.default_name("r", 6), ("resign",), here) is None
        assert inline.unserved_call(server.default_name("r", 6), ("status",), here) is None
        for name in ("raft_server_r_\u00b2", "raft_server_r_" + "9" * 30, "raft_server_5"):
            assert inline.unserved_call(name, ("resign",), here) is None
    finally:
        policy.allow_prefix(server.NAME_PREFIX)
        dist.set_unserved_call_handler(server.NAME_PREFIX, None)


def test_a_partition_whose_server_is_being_restarted_answers_partition_restarting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node(tmp_path, "n", [1])
    try:
        name = server.default_name("test", 1)
        with node.activate():
            first = wait_until(lambda: otp.whereis(name))
        # Hold the restart before the server's start: its name stays free meanwhile.
        gate = threading.Event()
        start_link = server.RaftServer.start_link

        def gated_start_link(*args: Any, **kwargs: Any) -> Any:
            otp.blocking(gate.wait, 10)
            return start_link(*args, **kwargs)

        monkeypatch.setattr(server.RaftServer, "start_link", gated_start_link)
        with node.activate():
            otp.kill(first)
            wait_until(lambda: otp.whereis(name) is None)
            for _, call in VERBS:
                assert call(name) == server.PARTITION_RESTARTING
            for data_call in DATA_CALLS:
                assert _exit_reason(data_call, name) == "partition_restarting"
            assert server.trigger_election(server.default_name("test", 2)) == (
                server.NO_SUCH_PARTITION
            )
        assert server.trigger_election((name, node.id)) == server.PARTITION_RESTARTING
        assert _exit_reason(server.status, (name, node.id)) == "partition_restarting"
        gate.set()
        with node.activate():
            back = wait_until(lambda: otp.whereis(name))
            assert back is not first
            answer = server.resign(name)
            assert answer not in (server.PARTITION_RESTARTING, server.NO_SUCH_PARTITION)
    finally:
        node.stop()


# -- a partition whose supervisor gave up: its parent (``waraft.sup``) starts it again -------


def test_a_partition_whose_supervisor_gave_up_is_restarting_while_its_parent_restarts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the partition supervisor's exit and the new one's registration nothing had a
    # name of the partition, and every call answered as for a partition the node does not
    # run (no_such_partition, noproc), although waraft.sup was starting it again.
    name = server.default_name("test", 1)
    sup_name = part_sup.default_name("test", 1)
    with a_partition_whose_supervisor_gave_up(tmp_path, monkeypatch) as (node, gate, first):
        with node.activate():
            assert otp.whereis(sup_name) is None and otp.whereis(name) is None
            for _, call in VERBS:
                assert call(name) == server.PARTITION_RESTARTING
            for data_call in DATA_CALLS:
                assert _exit_reason(data_call, name) == "partition_restarting"
            assert server.resign(server.default_name("test", 2)) == server.NO_SUCH_PARTITION
        assert server.resign((name, node.id)) == server.PARTITION_RESTARTING
        assert _exit_reason(server.status, (name, node.id)) == "partition_restarting"
        # Other nodes' callers are answered the same by the receive thread.
        server.answer_unserved_calls()
        assert inline.unserved_call(name, ("resign",), node) == server.PARTITION_RESTARTING
        assert inline.unserved_call(name, ("status",), node) == dist.FailCall(
            "partition_restarting"
        )
        gate.set()
        with node.activate():
            back = wait_until(lambda: otp.whereis(name))
            assert wait_until(lambda: otp.whereis(sup_name)) is not first
            assert server.status(back)["state"] is not None
            answer = server.resign(name)
            assert answer not in (server.PARTITION_RESTARTING, server.NO_SUCH_PARTITION)
        assert not part_sup.is_restarted_by_parent("test", 1, node.id)


def test_a_partition_that_nothing_will_start_again_is_no_such_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its supervisor gave up, and so did its parent (intensity 0), which nothing restarts
    # (a temporary child): the partition is gone for good, not restarting.
    monkeypatch.setitem(sup.FLAGS, "intensity", 0)
    count_restarts_over_a_long_period(monkeypatch)
    node = otp.Node("unserved_gone@local")
    try:
        with node.activate():
            env.set_env(APP, "raft_database", str(tmp_path / "gone"))
            spec = sup.child_spec(APP, [{"table": "test", "partition": 1}])
            started = otp.supervisor.start_child("kernel_sup", {**spec, "restart": "temporary"})
            assert started[0] == "ok", started
            parent = started[1]
            first = wait_until(lambda: otp.whereis(part_sup.default_name("test", 1)))
        kill_server_until_its_supervisor_gives_up(node, first)
        wait_until(lambda: not parent.is_alive())
        name = server.default_name("test", 1)
        with node.activate():
            assert env.is_partition_registered("test", 1)
            assert server.resign(name) == server.NO_SUCH_PARTITION
            assert _exit_reason(server.status, name) == "noproc"
        assert not part_sup.is_restarted_by_parent("test", 1, node.id)
    finally:
        node.stop()
