"""End-to-end smoke test over the synchronous harness: elect, replicate, commit, apply."""

from __future__ import annotations

from waraft.core.events import CommitBatch
from waraft.core.types import NOOP, State

from .fakes import Cluster, make_node


def test_three_nodes_elect_replicate_and_apply() -> None:
    cluster = Cluster([make_node(i) for i in (1, 2, 3)])
    assert all(n.state is State.FOLLOWER for n in cluster.nodes.values())
    cluster.fire(1)
    cluster.deliver()
    leader = cluster.node(1)
    assert leader.state is State.LEADER
    assert leader.core.current_term == 2
    assert leader.applied[-1][1].command == NOOP

    cluster.handle(1, CommitBatch([("caller", ("k1", ("write", 1)))]))
    cluster.fire(1)  # the batch timeout
    cluster.deliver()
    cluster.now = 1000
    cluster.fire(1)  # a heartbeat carries the new commit index
    cluster.deliver()
    for node in cluster.nodes.values():
        assert node.core.commit_index == 3
        assert [e.command for _, e in node.applied][-1] == ("write", 1)
    assert leader.core.queued == {}
