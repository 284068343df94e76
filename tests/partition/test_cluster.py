"""Three in-process nodes: replication, strong reads, redirects, failover."""

from __future__ import annotations

from pathlib import Path

from tests.partition.helpers import addr, cluster, leader_of, state, wait_until
from waraft import acceptor, otp, server, storage


def test_commits_replicate_to_every_node_and_read_back(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        for i in range(20):
            op = (f"k{i}", ("write", "test", f"key{i}", i))
            assert acceptor.commit(addr("acceptor", leader), op) == "ok"
        assert acceptor.read(addr("acceptor", leader), ("read", "test", "key7")) == ("ok", 7)
        assert acceptor.read(addr("acceptor", leader), ("read", "test", "nope")) == "not_found"
        # Followers apply the same entries (local, non-consistent storage reads).
        for n in nodes:
            wait_until(
                lambda n=n: (
                    storage.read(addr("storage", n), ("read", "test", "key19")) == ("ok", 19)
                )
            )
        leader_status = server.status(addr("server", leader))
        for n in nodes:
            status = server.status(addr("server", n))
            assert status["current_term"] == leader_status["current_term"]
            assert status["leader_id"] == leader.id


def test_followers_answer_not_leader(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        follower = next(n for n in nodes if n is not leader)
        op = ("k", ("write", "test", "key", 1))
        assert acceptor.commit(addr("acceptor", follower), op) == ("error", "not_leader")
        assert acceptor.read(addr("acceptor", follower), ("read", "test", "key")) == (
            "error",
            "not_leader",
        )


def test_a_new_leader_is_elected_and_keeps_acknowledged_writes(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        old = leader_of(nodes)
        assert old is not None
        for i in range(10):
            assert acceptor.commit(addr("acceptor", old), (i, ("write", "t", i, i))) == "ok"
        old.stop()
        rest = [n for n in nodes if n is not old]
        new = wait_until(lambda: leader_of(rest))
        assert new is not old
        for i in range(10):
            assert acceptor.read(addr("acceptor", new), ("read", "t", i)) == ("ok", i)
        assert acceptor.commit(addr("acceptor", new), ("x", ("write", "t", "x", 1))) == "ok"


def test_a_partitioned_leader_is_replaced_and_steps_down_when_healed(tmp_path: Path) -> None:
    with cluster(tmp_path) as nodes:
        old = leader_of(nodes)
        assert old is not None
        cut = old.id
        otp.node.set_link_filter(lambda src, dst: cut not in (src, dst))
        rest = [n for n in nodes if n is not old]
        new = wait_until(lambda: leader_of(rest))
        assert acceptor.commit(addr("acceptor", new), ("a", ("write", "t", "a", 1))) == "ok"
        otp.node.set_link_filter(None)
        wait_until(lambda: state(old) == "follower")
        wait_until(lambda: storage.read(addr("storage", old), ("read", "t", "a")) == ("ok", 1))
