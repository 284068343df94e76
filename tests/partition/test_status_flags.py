"""The liveness flags (live, lagging, stale) tell the truth when looked at.

They change with applies and with time alone, with no change of state, term or leader: the
server published them only at such a change, so a follower that caught up stayed ``lagging``
and a leader whose followers had all gone stayed ``live`` (review O, finding 2). Both the
published flags (``waraft.info``) and the status (``waraft status``) are checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.partition.helpers import addr, cluster, ident, leader_of, start_node, wait_until
from waraft import otp
from waraft.partition import acceptor, server
from waraft.services import info

DURABLE = {
    "log_module": "waraft.log.disk:DiskLog",
    "storage_module": "waraft.storage.sqlite:SqliteStorage",
}


def _flags(node: otp.Node) -> tuple[bool, bool, bool]:
    status = server.status(addr("server", node))
    return (status["live"], status["lagging"], status["stale"])


def _published(node: otp.Node) -> Any:
    with node.activate():
        return info.get_status("test", 1)


def test_a_follower_that_caught_up_stops_being_lagging(tmp_path: Path) -> None:
    settings = {"raft_stale_grace_period_entries": 2}
    with cluster(tmp_path, settings=settings, **DURABLE) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        index, follower = next((i, n) for i, n in enumerate(nodes) if n is not leader)
        node_id = follower.id
        follower.stop()
        for i in range(10):  # committed while it is away: it comes back 10 entries behind
            assert acceptor.commit(addr("acceptor", leader), (i, ("write", "t", i, i))) == "ok"
        back = start_node(tmp_path, f"n{index + 1}", [1], settings, node_id=node_id, **DURABLE)
        try:
            commit = server.status(addr("server", leader))["commit_index"]
            wait_until(lambda: server.status(addr("server", back))["last_applied"] >= commit)
            # Caught up as a follower of the same leader in the same term all along.
            status = server.status(addr("server", back))
            assert status["state"] == "follower" and status["leader_id"] == leader.id
            wait_until(lambda: _flags(back) == (True, False, False))
            wait_until(lambda: _published(back) == ("follower", True, False, False))
        finally:
            back.stop()


def test_a_leader_whose_followers_are_gone_stops_being_live(tmp_path: Path) -> None:
    with cluster(tmp_path, settings={"raft_max_heartbeat_age_msecs": 300}) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        assert acceptor.commit(addr("acceptor", leader), ("k", ("write", "t", "k", 1))) == "ok"
        wait_until(lambda: _published(leader) == ("leader", True, False, False))
        for node in nodes:
            if node is not leader:
                node.stop()
        # Still the leader of the same term (nothing made it step down), no longer live.
        wait_until(lambda: _flags(leader) == (False, True, True))
        assert server.status(addr("server", leader))["state"] == "leader"
        wait_until(lambda: _published(leader) == ("leader", False, True, True))


def test_a_replica_removed_from_the_config_stops_being_live(tmp_path: Path) -> None:
    with cluster(tmp_path, settings={"raft_liveness_grace_period_ms": 500}) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        removed = next(n for n in nodes if n is not leader)
        wait_until(lambda: _published(removed) == ("follower", True, False, False))
        action = ("remove", ident(removed))
        assert server.adjust_config(addr("server", leader), action)[0] == "ok"
        # Nobody sends it anything any more: it is no longer live once the grace is over.
        wait_until(lambda: not _flags(removed)[0])
        wait_until(lambda: _published(removed) is not None and not _published(removed)[1])
        assert _flags(leader) == (True, False, False)
