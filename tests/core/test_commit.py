"""Commits on the leader: batching, priorities, commit_stalled, cancellations, labels."""

from __future__ import annotations

from waraft.core.effects import (
    AppendLog,
    Apply,
    CommitCancelled,
    ReadCancelled,
    Send,
    SetTimeout,
    StateChanged,
)
from waraft.core.events import (
    AdjustConfig,
    CommitBatch,
    HandoverRequest,
    ReadBatch,
    Resign,
    Timeout,
)
from waraft.core.log import approx_command_size
from waraft.core.rpc import AppendEntries, AppendEntriesResponse
from waraft.core.types import NOOP, Entry, LogPos, Priority, State, TimeoutKind

from .fakes import ident, ids, make_leader, make_node, settings

N2, N3 = ident(2), ident(3)
HEARTBEAT = Timeout(TimeoutKind.HEARTBEAT)
SIZE = approx_command_size(("c", 0))  # what the acceptor admitted each ``batch`` command with
BATCH = Timeout(TimeoutKind.BATCH_COMMIT)


def batch(n: int, prefix: str = "c", priority: Priority = Priority.HIGH) -> CommitBatch:
    items = [(f"{prefix}{i}", (f"{prefix}k{i}", (prefix, i))) for i in range(n)]
    return CommitBatch(items, priority)


def test_commits_wait_for_the_batch_interval() -> None:
    node = make_leader()
    fx = node.handle(batch(3))
    assert fx == [SetTimeout(TimeoutKind.BATCH_COMMIT, 2)]
    assert node.core.status(0)["pending_high"] == 3
    fx = node.handle(BATCH, now=2)
    appends = [e for e in fx if isinstance(e, AppendLog)]
    assert len(appends) == 1 and appends[0].first_index == 3
    assert [e.command for e in appends[0].entries] == [("c", 0), ("c", 1), ("c", 2)]
    assert node.core.queued == {
        3: ("c0", Priority.HIGH),
        4: ("c1", Priority.HIGH),
        5: ("c2", Priority.HIGH),
    }
    assert fx[-1] == SetTimeout(TimeoutKind.HEARTBEAT, 120)


def test_each_new_commit_rearms_the_batch_timer() -> None:
    node = make_leader()
    node.handle(batch(1))
    fx = node.handle(batch(1, "d"))
    assert fx == [SetTimeout(TimeoutKind.BATCH_COMMIT, 2)]
    assert len(node.core.pending_high) == 2


def test_batch_flushes_once_more_than_batch_max_are_pending() -> None:
    node = make_leader()
    node.handle(batch(15))
    assert node.log.last_index() == 2
    fx = node.handle(batch(1, "d"))
    assert [type(e).__name__ for e in fx].count("AppendLog") == 1
    assert node.log.last_index() == 18


def test_zero_interval_disables_batching() -> None:
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0))
    node.handle(batch(1))
    assert node.log.last_index() == 3


def test_high_priority_is_appended_before_low() -> None:
    node = make_leader()
    node.handle(batch(2, "lo", Priority.LOW))
    node.handle(batch(2, "hi", Priority.HIGH))
    fx = node.handle(BATCH, now=2)
    appends = [e for e in fx if isinstance(e, AppendLog)]
    assert [[e.command[0] for e in a.entries] for a in appends] == [["hi", "hi"], ["lo", "lo"]]
    assert node.core.queued[5] == ("lo0", Priority.LOW)


def test_commit_stalled_cancels_every_pending_commit_and_read() -> None:
    node = make_leader()
    node.handle(batch(2, "lo", Priority.LOW))
    node.handle(batch(1, "hi"))
    node.handle(ReadBatch([("r1", "get", None)]))
    node.log.refuse_appends = True
    fx = node.handle(BATCH, now=2)
    cancelled = [(e.to, e.reason, e.priority) for e in fx if isinstance(e, CommitCancelled)]
    assert cancelled == [
        ("hi0", "commit_stalled", Priority.HIGH),
        ("lo0", "commit_stalled", Priority.LOW),
        ("lo1", "commit_stalled", Priority.LOW),
    ]
    assert ReadCancelled("r1", "commit_stalled") in fx
    assert not [e for e in fx if isinstance(e, AppendLog)]
    assert node.core.pending_high == node.core.pending_low == [] and not node.core.pending_read


def test_applied_commits_carry_their_reply_handle_and_priority() -> None:
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0))
    node.handle(batch(1, "lo", Priority.LOW))
    fx = node.rpc(N2, AppendEntriesResponse(2, True, 3, 3), now=1)
    items = next(e for e in fx if isinstance(e, Apply)).items
    assert [(i.index, i.reply_to, i.priority) for i in items] == [
        (2, None, Priority.HIGH),
        (3, "lo0", Priority.LOW),
    ]
    assert node.core.queued == {}


def test_non_leader_cancels_commits_with_not_leader() -> None:
    node = make_node(2)
    fx = node.handle(batch(2, "x", Priority.LOW))
    assert fx == [
        CommitCancelled("x0", "not_leader", Priority.LOW, approx_command_size(("x", 0))),
        CommitCancelled("x1", "not_leader", Priority.LOW, approx_command_size(("x", 1))),
    ]


def test_leaving_leader_cancels_pending_commits_with_not_leader() -> None:
    node = make_leader()
    node.handle(batch(1))
    node.handle(ReadBatch([("r", "get", None)]))
    fx = node.handle(Resign("admin"))
    assert StateChanged(State.LEADER, State.FOLLOWER) in fx
    assert CommitCancelled("c0", "not_leader", Priority.HIGH, SIZE) in fx
    assert ReadCancelled("r", "not_leader") in fx
    assert fx[-1].__class__.__name__ == "Reply"


def test_queued_commits_survive_stepping_down_until_truncated() -> None:
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0))
    node.handle(batch(1))
    node.rpc(N2, AppendEntries(2, 2, [], 2, 0), term=5, now=1)
    assert node.state is State.FOLLOWER and node.core.queued == {3: ("c0", Priority.HIGH)}
    fx = node.rpc(N2, AppendEntries(2, 2, [Entry(5, "n", "new")], 2, 0), now=2)
    # cancelled, not not_leader: with five members a truncated entry can still commit
    assert CommitCancelled("c0", "cancelled", Priority.HIGH, SIZE) in fx


def test_log_reset_cancels_queued_commits_with_cancelled() -> None:
    from waraft.core.events import SnapshotAvailable

    from .fakes import open_snapshot

    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0))
    node.handle(batch(2))
    node.rpc(N2, AppendEntries(2, 2, [], 2, 0), term=5, now=1)
    fx = node.handle(SnapshotAvailable("op", "/snap", LogPos(100, 4)))
    install = fx[-1]
    fx = open_snapshot(node, install, config=(100, node.core.current_config()))
    cancelled = [(e.to, e.reason, e.size) for e in fx if isinstance(e, CommitCancelled)]
    assert cancelled == [("c0", "cancelled", SIZE), ("c1", "cancelled", SIZE)]


def test_terminate_effects_cancel_pending_and_queued() -> None:
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0))
    node.handle(batch(1))
    node.core.settings = settings()
    node.handle(batch(1, "p", Priority.LOW))
    node.handle(ReadBatch([("r", "get", None)]))
    fx = node.core.terminate_effects()
    p_size = approx_command_size(("p", 0))
    assert fx == [
        CommitCancelled("p0", "not_leader", Priority.LOW, p_size),
        ReadCancelled("r", "not_leader"),
        CommitCancelled("c0", "cancelled", Priority.HIGH, SIZE),  # appended: may commit elsewhere
    ]


def test_terminate_effects_during_handover_cancel_appended_commits() -> None:
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0))
    node.handle(batch(1))
    node.rpc(N2, AppendEntriesResponse(2, True, 3, 3), now=1)
    node.handle(batch(1, "q"))
    node.rpc(N2, AppendEntriesResponse(3, True, 4, 3), now=2)
    node.rpc(N3, AppendEntriesResponse(3, False, 1, 1), now=2)
    node.handle(HandoverRequest("op", "n2"), now=3)
    assert node.core.handover is not None
    fx = node.core.terminate_effects()
    assert fx == []  # everything was applied; nothing pending
    node.core.queued[99] = ("late", Priority.LOW)
    fx = node.core.terminate_effects()
    assert fx == [CommitCancelled("late", "cancelled", Priority.LOW)]  # n2 may commit it


def test_commits_during_handover_are_redirected() -> None:
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0))
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)
    node.handle(HandoverRequest("op", "n2"), now=2)
    fx = node.handle(batch(1))
    assert fx == [CommitCancelled("c0", ("notify_redirect", "n2"), Priority.HIGH, SIZE)]
    fx = node.handle(ReadBatch([("r", "get", None)]))
    assert fx == [ReadCancelled("r", ("notify_redirect", "n2"))]


def test_labels_chain_through_commands_but_not_noops_or_configs() -> None:
    def label(last: object, command: object) -> object:
        return (0 if last is None else last) + 1  # type: ignore[operator]

    node = make_leader(label_fn=label, settings=settings(raft_commit_batch_interval_ms=0))
    assert node.log.get(2).command == NOOP and node.log.get(2).label is None
    node.handle(batch(2))
    assert [node.log.get(i).label for i in (3, 4)] == [1, 2]
    # a new leader continues the chain from its last entry
    fresh = make_leader(
        label_fn=label,
        entries=[Entry(1, "k", "cmd", 7)],
        settings=settings(raft_commit_batch_interval_ms=0),
    )
    assert fresh.log.get(3).label == 7  # the noop carries the last label
    fresh.handle(batch(1))
    assert fresh.log.get(4).label == 8


def test_leader_after_reset_takes_the_label_from_storage() -> None:
    def label(last: object, command: object) -> object:
        return (last or 0) + 1  # type: ignore[operator]

    node = make_node(1, label_fn=label, base=LogPos(5, 1), start=False)
    node.core.storage_label = 41
    node.run(node.core.start(0))
    node.fire()
    from waraft.core.rpc import Vote

    node.rpc(N2, Vote(True))
    assert node.state is State.LEADER
    node.core.settings = settings(raft_commit_batch_interval_ms=0)
    node.handle(batch(1))
    assert node.log.get(7).label == 42


def test_buffered_commits_become_the_new_leaders_first_entries() -> None:
    s = settings(raft_candidate_buffer_requests=True)
    node = make_node(1, settings=s)
    node.fire()
    assert node.handle(batch(2)) == []
    from waraft.core.rpc import Vote

    fx = node.rpc(N2, Vote(True))
    appends = [e for e in fx if isinstance(e, AppendLog)]
    assert [[e.command for e in a.entries] for a in appends] == [[("c", 0), ("c", 1)]]
    assert node.core.first_current_term_log_index == 2
    assert any(isinstance(e, Send) for e in fx)


def test_buffered_commits_are_cancelled_if_the_election_is_lost() -> None:
    s = settings(raft_candidate_buffer_requests=True)
    node = make_node(1, settings=s)
    node.fire()
    node.handle(batch(1))
    fx = node.fire()  # election timeout: a new election (repeat state)
    assert CommitCancelled("c0", "not_leader", Priority.HIGH, SIZE) in fx


def test_candidate_without_buffering_rejects_commits() -> None:
    node = make_node(1)
    node.fire()
    assert node.handle(batch(1)) == [CommitCancelled("c0", "not_leader", Priority.HIGH, SIZE)]


def test_response_keeps_the_batch_timer_of_waiting_commits() -> None:
    """CORE-5: a response must not push waiting commits back to the 120 ms heartbeat."""
    node = make_leader()
    node.handle(batch(1), now=10)  # batch due at 12
    fx = node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=11)
    assert fx[-1] == SetTimeout(TimeoutKind.BATCH_COMMIT, 1)
    assert node.log.last_index() == 2
    fx = node.rpc(N3, AppendEntriesResponse(1, True, 2, 2), now=12)  # the batch is due: flush
    assert [type(e).__name__ for e in fx].count("AppendLog") == 1
    assert node.log.last_index() == 3
    fx = node.rpc(N2, AppendEntriesResponse(2, True, 3, 3), now=13)
    assert fx[-1] == SetTimeout(TimeoutKind.HEARTBEAT, 120)  # nothing waits any more


def test_cancelled_commits_release_the_bytes_they_were_admitted_with() -> None:
    """L2 (review E): a cancellation carries its command's estimate (the acceptor's
    ``command_bytes``), and a membership change's carries 0, so the commit queue's byte
    budget loses exactly what it counted: an average share let it drift to 0."""
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0))
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)  # a config change may go
    node.handle(CommitBatch([("big", ("k", ("w", b"x" * 1000)))], Priority.HIGH))
    node.handle(AdjustConfig("cfg", "refresh", reply_on_apply=True))
    node.core.settings = settings()  # the next commit stays pending
    node.handle(batch(1, "p"))
    fx = node.core.terminate_effects()
    sizes = {e.to: e.size for e in fx if isinstance(e, CommitCancelled)}
    assert sizes == {
        "p0": approx_command_size(("p", 0)),
        "big": approx_command_size(("w", b"x" * 1000)),
        "cfg": 0,
    }


def test_commits_and_changes_refused_at_once_release_the_bytes_they_were_admitted_with() -> None:
    """The same rule for refusals that never reach the pending queue: commits sent to a
    follower (``not_leader``) or during a handover (``notify_redirect``) release their
    command's estimate, a membership change a follower or the leader refuses releases 0."""
    follower = make_node(2, ids(3))
    assert follower.state is not State.LEADER
    fx = follower.handle(CommitBatch([("f", ("k", ("w", b"y" * 500)))], Priority.HIGH))
    fx += follower.handle(AdjustConfig("fcfg", "refresh", reply_on_apply=True))
    leader = make_leader()  # no commit of its own term yet: a change is refused (no_quorum)
    fx += leader.handle(AdjustConfig("lcfg", "refresh", reply_on_apply=True))
    sizes = {e.to: e.size for e in fx if isinstance(e, CommitCancelled)}
    assert sizes == {"f": approx_command_size(("w", b"y" * 500)), "fcfg": 0, "lcfg": 0}
