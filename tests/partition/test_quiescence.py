"""The partition shell runs quiescence (issue 13): idle servers cancel their timers, a strong
read on a quiescent leader still works, and node liveness wakes followers into an election."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, cluster, leader_of, wait_until
from waraft import otp
from waraft.core.events import NodeLiveness
from waraft.partition import acceptor, app, server

QUIET = {"raft_quiesce_after_ms": 200}


def _quiescent(node: otp.Node) -> bool:
    return bool(server.status(addr("server", node), timeout=2)["quiescent"])


def test_idle_servers_quiesce_and_a_read_wakes_the_leader(tmp_path: Path) -> None:
    with cluster(tmp_path, settings=QUIET) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        op = ("k", ("write", "test", "key", 1))
        assert acceptor.commit(addr("acceptor", leader), op) == "ok"
        wait_until(lambda: all(_quiescent(n) for n in nodes), timeout=10)
        term = server.status(addr("server", leader))["current_term"]
        read = acceptor.read(addr("acceptor", leader), ("read", "test", "key"))
        assert read == ("ok", 1)
        wait_until(lambda: all(_quiescent(n) for n in nodes), timeout=10)
        assert server.status(addr("server", leader))["current_term"] == term


def test_leader_node_down_wakes_quiescent_followers_into_an_election(tmp_path: Path) -> None:
    with cluster(tmp_path, settings=QUIET) as nodes:
        old = leader_of(nodes)
        assert old is not None
        wait_until(lambda: all(_quiescent(n) for n in nodes), timeout=10)
        cut = old.id
        otp.node.set_link_filter(lambda src, dst: cut not in (src, dst))
        try:
            rest = [n for n in nodes if n is not old]
            for n in rest:  # what the distribution's liveness thread does on nodedown
                with n.activate():
                    app._fan_out_liveness(cut, False)
            new = wait_until(lambda: leader_of(rest), timeout=10)
            assert new is not old
        finally:
            otp.node.set_link_filter(None)


def test_without_node_liveness_a_quiescent_follower_never_elects(tmp_path: Path) -> None:
    """The contract the runtime relies on: only NodeLiveness (or traffic) wakes a follower."""
    with cluster(tmp_path, settings=QUIET) as nodes:
        old = leader_of(nodes)
        assert old is not None
        wait_until(lambda: all(_quiescent(n) for n in nodes), timeout=10)
        follower = next(n for n in nodes if n is not old)
        otp.cast(addr("server", follower), NodeLiveness("someone@else", False))
        otp.node.set_link_filter(lambda src, dst: old.id not in (src, dst))
        try:
            time.sleep(1.0)  # > the election timeout (300-500 ms)
            assert _quiescent(follower)
        finally:
            otp.node.set_link_filter(None)


def test_liveness_of_a_node_in_no_partition_config_reaches_no_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI or client node coming and going is reported by the distribution's detector like
    any peer; at 10,000 partitions per node, casting that to every server cost 20,000 server
    steps per ``waraft status`` run. Only nodes named in a local config are passed on."""
    with cluster(tmp_path, settings=QUIET) as nodes:
        members = {n.id for n in nodes}
        wait_until(lambda: all(members <= server.member_nodes(n.id) for n in nodes), timeout=10)
        sent: list[tuple[Any, Any]] = []
        real_cast = otp.cast

        def recording_cast(target: Any, message: Any) -> Any:
            if type(message) is NodeLiveness:
                sent.append((target, message))
            return real_cast(target, message)

        monkeypatch.setattr(otp, "cast", recording_cast)
        node = nodes[0]
        with node.activate():
            app._fan_out_liveness("cli-1234@127.0.0.1:5555", True)
            app._fan_out_liveness("cli-1234@127.0.0.1:5555", False)
        assert sent == []
        with node.activate():
            app._fan_out_liveness(nodes[1].id, True)  # a member's report still goes out
        assert [t for t, _ in sent] == [server.default_name("test", 1)]
