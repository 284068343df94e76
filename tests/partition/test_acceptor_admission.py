"""What the acceptor admits is released on every path, and what it admits is checked as the
server checks it (review E: H1, H2, L2, M3)."""

from __future__ import annotations

from pathlib import Path

from tests.partition.helpers import addr, cluster, leader_of, state, wait_until
from waraft import otp
from waraft.partition import acceptor, part_sup, server
from waraft.services.queues import Queues

LIMIT = 8


def _queues(node: otp.Node) -> Queues:
    queues: Queues = part_sup.all_options(node=node.id)[0].queues
    return queues


def _applied(node: otp.Node) -> int:
    return int(server.status(addr("server", node))["last_applied"])


def test_requests_without_a_reply_handle_release_their_slots(tmp_path: Path) -> None:
    """H1: commits and a membership change sent with no handle (the API allows it) kept
    their commit slots once applied; after the limit every commit was refused."""
    settings = {"raft_max_pending_high_priority_commits": LIMIT}
    with cluster(tmp_path, size=1, settings=settings) as nodes:
        node = nodes[0]
        queues = _queues(node)
        target = addr("acceptor", node)
        applied = _applied(node)
        for round_ in range(3):  # more requests than the limit, in rounds it admits
            ops = [(None, ((round_, i), ("write", "t", i, i))) for i in range(LIMIT - 1)]
            acceptor.commit_batch(target, ops)
            acceptor.adjust_config_async(target, None, "refresh")
            acceptor.read_batch(target, [(None, ("read", "t", 1), None)])
            applied += LIMIT
            wait_until(lambda: _applied(node) >= applied)  # noqa: B023 (waited on at once)
            wait_until(lambda: queues.commit_queue_size() == 0 and queues.read_queue_size() == 0)
        assert queues.commit_queue_byte_size() == 0
        assert acceptor.commit(target, ("k", ("write", "t", "k", 1)), timeout=5) == "ok"


def test_membership_changes_through_the_acceptor_get_the_peer_checks(tmp_path: Path) -> None:
    """H2: ``acceptor.adjust_config`` (reachable remotely with the admin right) committed
    peers that ``server.adjust_config`` refuses; refused, each gives its slot back."""
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        other = next(n for n in nodes if n is not leader)
        before = server.get_current_config(addr("server", leader))
        name = "raft_server_test_1"
        actions = [
            ("add", (name, "not-a-node-id")),  # no node id
            ("add", ("raft_server_test_2", "x9@local")),  # another partition's server
            ("add_participant", (name, f"{other.id.partition('@')[0]}@127.0.0.1")),  # 2nd name
        ]
        for action in actions:
            result = acceptor.adjust_config(addr("acceptor", leader), action, timeout=5)
            assert result[0] == "error" and result[1][0] == "invalid_peer", (action, result)
            result = acceptor.adjust_config(addr("acceptor", other), action, timeout=5)
            assert result[0] == "error", (action, result)  # refused on a follower too
        assert server.get_current_config(addr("server", leader)) == before
        queues = _queues(leader)
        wait_until(lambda: queues.commit_queue_size() == 0)
        assert queues.commit_queue_byte_size() == 0


def test_refused_membership_changes_leave_the_commit_bytes_alone(tmp_path: Path) -> None:
    """L2: a membership change is admitted with no bytes; its refusal released an average
    share of the other commits' bytes (20 refusals took 15 MiB of counted bytes to 0)."""
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        for node in nodes:
            if node is not leader:
                node.stop()  # the commits stay in the commit queue
        queues = _queues(leader)
        target = addr("acceptor", leader)
        value = b"v" * 65536
        acceptor.commit_batch(target, [(None, (i, ("write", "t", i, value))) for i in range(4)])
        wait_until(lambda: queues.commit_queue_size() == 4)
        counted = queues.commit_queue_byte_size()
        assert counted >= 4 * len(value)
        refused = [("bogus", 1), ("add", ("raft_server_test_1", "not-a-node-id"))]
        for action in refused * 5:
            result = acceptor.adjust_config(target, action, timeout=5)
            assert result[0] == "error", result
            assert queues.commit_queue_byte_size() == counted
        assert queues.commit_queue_size() == 4


def _read_counters(queues: Queues) -> tuple[int, int]:
    return queues.read_queue_size(), queues.read_queue_byte_size()


def test_strong_reads_are_bounded_in_bytes_and_released_on_every_path(tmp_path: Path) -> None:
    """M3: reads were admitted by count only (64 reads of 1 MiB on a leader without a
    quorum were all held). Each path that ends a read gives its bytes back: answered,
    refused by a follower, cancelled by a leader change, cancelled by a stop."""
    value = b"r" * 262144
    # A candidate holds reads too (until the stop below).
    settings = {"raft_max_pending_read_bytes": 1024 * 1024, "raft_candidate_buffer_requests": True}
    with cluster(tmp_path, settings=settings) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        followers = [n for n in nodes if n is not leader]
        results: list[list[object]] = []

        def reads(node: otp.Node, count: int) -> None:
            batch = acceptor.BatchReply(count, lambda r, _: results.append(r))
            items = [(batch.slot(i), ("read", "t", value), None) for i in range(count)]
            acceptor.read_batch(addr("acceptor", node), items)

        queues = _queues(leader)
        reads(leader, 2)  # answered
        wait_until(lambda: len(results) == 1)
        assert _read_counters(queues) == (0, 0)
        reads(followers[0], 2)  # refused: not_leader
        wait_until(lambda: len(results) == 2)
        assert results[-1] == [("error", "not_leader")] * 2
        assert _read_counters(_queues(followers[0])) == (0, 0)
        for node in followers:
            node.stop()  # reads now wait for a quorum
        reads(leader, 6)  # 3 reads of 256 KiB (and a little) fill the budget of 1 MiB
        wait_until(lambda: queues.read_queue_size() == 3)
        assert 3 * len(value) < queues.read_queue_byte_size() <= 1024 * 1024
        assert server.resign(addr("server", leader)) == "ok"  # a leader change
        wait_until(lambda: len(results) == 3)
        assert results[-1].count(("error", "read_queue_bytes_full")) == 3
        assert _read_counters(queues) == (0, 0)
        assert server.trigger_election(addr("server", leader)) == "ok"
        wait_until(lambda: state(leader) == "candidate")  # with no quorum, for good
        reads(leader, 2)
        wait_until(lambda: queues.read_queue_size() == 2)
        leader.stop()  # a stop
        wait_until(lambda: len(results) == 4)
        assert _read_counters(queues) == (0, 0)
