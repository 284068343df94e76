"""Three in-process nodes: replication, strong reads, redirects, failover."""

from __future__ import annotations

from pathlib import Path

from tests.partition.helpers import addr, cluster, leader_of, state, wait_until
from waraft import otp, storage
from waraft.partition import acceptor, server


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


def test_info_publishes_term_leader_and_status_without_asking_the_server(tmp_path: Path) -> None:
    from waraft.services import info

    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        term = server.status(addr("server", leader))["current_term"]
        for n in nodes:
            with n.activate():
                wait_until(lambda: info.get_current_term_and_leader("test", 1) == (term, leader.id))
                expected = "leader" if n is leader else "follower"
                wait_until(lambda expected=expected: info.get_state("test", 1) == expected)
                wait_until(lambda: info.get_live("test", 1))


def test_labels_chain_through_commits_and_reach_storage(tmp_path: Path) -> None:
    from waraft.partition import part_sup

    with cluster(tmp_path, label_module="waraft.label:CounterLabel") as nodes:
        leader = leader_of(nodes)
        assert leader is not None

        for i in range(3):
            assert acceptor.commit(addr("acceptor", leader), (i, ("write", "t", i, i))) == "ok"
        for n in nodes:
            with n.activate():
                opts = part_sup.options("test", 1)
                assert opts is not None and opts.label_module is not None
                # Three labelled commands: the newest applied label is 3 everywhere.
                wait_until(lambda: otp.call("raft_storage_test_1", ("label",)) == 3)
