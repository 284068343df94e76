"""Strong reads: read index with a '$read' marker, the single-member path, lease, buffering."""

from __future__ import annotations

from waraft.core import reads
from waraft.core.effects import (
    AppendLog,
    CancelReads,
    ReadCancelled,
    ReadNow,
    SetTimeout,
    SubmitRead,
)
from waraft.core.events import CommitBatch, HandoverRequest, ReadBatch, Timeout
from waraft.core.rpc import AppendEntriesResponse, HandoverFailed, Vote
from waraft.core.types import NOOP, READ_KEY, State, TimeoutKind

from .fakes import Node, ident, make_leader, make_node, settings

N2, N3 = ident(2), ident(3)
BATCH = Timeout(TimeoutKind.BATCH_COMMIT)


def read(from_: str = "r", command: object = "get", min_index: int | None = None) -> ReadBatch:
    return ReadBatch([(from_, command, min_index)])


def submitted(fx: list) -> list[SubmitRead]:  # type: ignore[type-arg]
    return [e for e in fx if isinstance(e, SubmitRead)]


def test_read_waits_for_an_entry_appended_after_it() -> None:
    node = make_leader()
    fx = node.handle(read())
    assert fx == [SetTimeout(TimeoutKind.BATCH_COMMIT, 2)]
    assert node.core.pending_read and node.core.held_reads == [("r", "get", 2)]
    fx = node.handle(BATCH, now=2)
    append = next(e for e in fx if isinstance(e, AppendLog))
    # the read index is the marker's index: only a quorum in this term can commit it
    assert submitted(fx) == [SubmitRead(3, "r", "get")]
    assert fx.index(append) < fx.index(submitted(fx)[0])
    assert not node.core.pending_read and node.core.held_reads == []


def test_read_index_is_raised_to_the_callers_minimum() -> None:
    node = make_leader()
    node.handle(CommitBatch([("c", ("k", f"v{i}")) for i in range(5)]))
    node.handle(BATCH, now=2)  # appended, not committed: the caller's minimum is ahead
    last = node.core.log.last_index()
    assert last > max(node.core.commit_index, node.core.first_current_term_log_index)
    node.handle(read(min_index=last))
    (sub,) = submitted(node.handle(BATCH, now=4))
    assert sub.read_index >= last  # served no earlier than the caller's minimum


def test_a_read_whose_minimum_is_past_the_log_or_not_an_index_is_refused_at_once() -> None:
    """No index a client was given is past the leader's log; such a read would wait forever
    holding a slot of the node's read budget (and a str crashed the server's comparison)."""
    node = make_leader()
    last = node.core.log.last_index()
    fx = node.handle(ReadBatch([("a", "get", last + 1), ("b", "get", "1"), ("c", "get", last)]))
    assert [e for e in fx if isinstance(e, ReadCancelled)] == [
        ReadCancelled("a", "min_index_ahead"),
        ReadCancelled("b", "min_index_ahead"),
    ]
    assert [r[0] for r in node.core.held_reads] == ["c"]


def test_lone_read_gets_a_marker_entry() -> None:
    node = make_leader()
    node.handle(read())
    fx = node.handle(BATCH, now=2)
    appends = [e for e in fx if isinstance(e, AppendLog)]
    assert len(appends) == 1
    (marker,) = appends[0].entries
    assert (marker.key, marker.command, marker.term) == (READ_KEY, NOOP, 2)
    assert not node.core.pending_read


def test_read_rides_on_pending_commits_without_a_marker() -> None:
    node = make_leader()
    node.handle(CommitBatch([("c", ("k", "v"))]))
    node.handle(read())
    fx = node.handle(BATCH, now=2)
    entries = [e for a in fx if isinstance(a, AppendLog) for e in a.entries]
    assert [e.key for e in entries] == ["k"]
    assert not node.core.pending_read


def test_many_reads_share_one_marker() -> None:
    node = make_leader()
    node.handle(ReadBatch([(f"r{i}", "get", None) for i in range(5)]))
    fx = node.handle(BATCH, now=2)
    assert len([e for a in fx if isinstance(a, AppendLog) for e in a.entries]) == 1


def test_single_member_reads_immediately_when_applied() -> None:
    node = make_node(1, [ident(1)])
    assert node.state is State.LEADER
    assert node.handle(read("a", "x")) == [ReadNow("a", "x")]
    node.handle(CommitBatch([("c", ("k", "v"))]))
    node.handle(BATCH, now=2)
    last = node.core.log.last_index()
    assert node.core.last_applied == last  # a sole member commits and applies at once
    assert node.handle(read("b", "x", min_index=last)) == [ReadNow("b", "x")]


def test_single_member_with_pending_commits_goes_through_the_log() -> None:
    node = make_node(1, [ident(1)])
    node.handle(CommitBatch([("c", ("k", "v"))]))
    assert not [e for e in node.handle(read()) if isinstance(e, ReadNow)]
    fx = node.handle(BATCH, now=2)
    assert submitted(fx) == [SubmitRead(3, "r", "get")]  # rides on the commit at 3


def test_non_leader_rejects_reads() -> None:
    node = make_node(2)
    assert node.handle(read()) == [ReadCancelled("r", "not_leader")]


def lease_leader(lease: int = 1000) -> Node:
    node = make_leader(settings=settings(raft_leader_read_lease_ms=lease))
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=10)  # commits the noop
    assert node.core.commit_index == 2 and node.core.last_applied == 2
    return node


def test_lease_read_hits_while_the_quorum_is_fresh() -> None:
    node = lease_leader()
    assert node.handle(read(), now=500) == [ReadNow("r", "get")]
    node.handle(read(), now=1011)
    assert node.core.held_reads == [("r", "get", 2)]


def test_an_answer_that_waited_out_a_pause_renews_no_lease() -> None:
    # The leader was paused (GC, SIGSTOP) for longer than the lease; the followers' answers to
    # its last heartbeat waited in its mailbox and arrived at once on resume. Taken at their
    # arrival time they renewed the lease, and the leader served reads the leader the others
    # elected meanwhile had overwritten (simulator seeds 81571 and 82049).
    node = lease_leader()
    node.handle(Timeout(TimeoutKind.HEARTBEAT), now=100)  # sent at 100
    node.rpc(N2, AppendEntriesResponse(2, True, 2, 2), now=1500)  # resumed at 1500
    node.rpc(N3, AppendEntriesResponse(2, True, 2, 2), now=1500)
    assert not [e for e in node.handle(read(), now=1500) if isinstance(e, ReadNow)]
    node.handle(Timeout(TimeoutKind.HEARTBEAT), now=1510)  # a new round renews it
    node.rpc(N2, AppendEntriesResponse(2, True, 2, 2), now=1520)
    assert node.handle(read(), now=1530) == [ReadNow("r", "get")]


def test_lease_misses_until_the_term_has_committed() -> None:
    node = make_leader(settings=settings(raft_leader_read_lease_ms=1000))
    assert not [e for e in node.handle(read(), now=1) if isinstance(e, ReadNow)]
    assert node.core.held_reads == [("r", "get", 2)]


def test_lease_misses_when_not_applied_far_enough() -> None:
    """A fresh lease never answers a read whose index the leader has not applied yet.

    Guards the lease's ``not_applied`` rule (``reads.lease_miss``): served at once, the read
    would see state older than the caller's minimum (read-your-writes broken). The minimum
    must be inside the log; past the log's end the read is refused as ``min_index_ahead``
    before the lease is consulted, which tests nothing here."""
    node = lease_leader()  # commit 2, applied 2, lease fresh from now=10
    node.handle(CommitBatch([("c", ("k", "v"))]), now=12)
    node.handle(BATCH, now=14)  # entry 3 appended, not committed
    assert node.core.log.last_index() == 3 and node.core.last_applied == 2
    fx = node.handle(read(min_index=3), now=20)
    assert not [e for e in fx if isinstance(e, (ReadNow, ReadCancelled))]
    assert node.core.held_reads == [("r", "get", 3)]
    assert reads.lease_miss(node.core, 3) == "not_applied"
    # it takes the read-index path instead: submitted at an index no lower than 3
    assert submitted(node.handle(BATCH, now=22)) == [SubmitRead(4, "r", "get")]


def test_lease_is_off_by_default() -> None:
    node = make_leader()
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=10)
    assert not [e for e in node.handle(read(), now=11) if isinstance(e, ReadNow)]


def test_lease_suspended_during_handover_and_reconfirmed_after_timeout() -> None:
    n = lease_leader()
    n.handle(HandoverRequest("op", "n2"), now=20)
    assert n.core.handover_lease_state == "in_progress"
    assert n.handle(read(), now=21)[0] == ReadCancelled("r", ("notify_redirect", "n2"))
    # the handover times out: lease held until a fresh quorum answers
    n.handle(Timeout(TimeoutKind.HEARTBEAT), now=700)
    assert n.core.handover is None
    assert n.core.handover_lease_state == "pending_reconfirmation"
    assert not [e for e in n.handle(read(), now=701) if isinstance(e, ReadNow)]
    n.rpc(N3, AppendEntriesResponse(2, True, 2, 2), now=702)
    assert n.core.handover_lease_state == "unaffected"
    assert n.handle(read(), now=703) == [ReadNow("r", "get")]


def test_failed_handover_restores_the_lease_at_once() -> None:
    n = lease_leader()
    n.handle(HandoverRequest("op", "n2"), now=20)
    ref = n.core.handover[1]
    n.rpc(N2, HandoverFailed(ref), now=21)
    assert n.core.handover is None
    assert n.handle(read(), now=22) == [ReadNow("r", "get")]


def test_candidate_buffers_reads_at_the_next_terms_first_index() -> None:
    node = make_node(1, settings=settings(raft_candidate_buffer_requests=True))
    node.fire()
    last = node.log.last_index()
    # a minimum at the new term's first index is past the candidate's log, yet admitted: the
    # index exists as soon as the candidate wins (its noop), and a loss cancels the read
    fx = node.handle(ReadBatch([("a", "get", None), ("b", "get", last + 1), ("c", "get", 1)]))
    assert fx == [SubmitRead(2, "a", "get"), SubmitRead(2, "b", "get"), SubmitRead(2, "c", "get")]
    fx = node.rpc(N2, Vote(True))
    assert node.state is State.LEADER
    entries = [e for a in fx if isinstance(a, AppendLog) for e in a.entries]
    # the new term's noop sits at the buffered reads' index: no marker is needed
    assert [e.command for e in entries] == [NOOP] and node.log.last_index() == 2
    assert not node.core.pending_read


def test_candidate_refuses_a_read_whose_minimum_is_past_the_next_terms_first_index() -> None:
    """The leader's ``min_index_ahead`` rule, applied to the log the candidate would lead with:
    buffered, the read waited at 2**63 and held a slot of the node's read budget for as long as
    the node went on to lead (a client key could exhaust the 5000 slots)."""
    node = make_node(1, settings=settings(raft_candidate_buffer_requests=True))
    node.fire()
    last = node.log.last_index()
    fx = node.handle(ReadBatch([("a", "get", 2**63), ("b", "get", last + 2), ("c", "get", "1")]))
    assert fx == [
        ReadCancelled("a", "min_index_ahead"),
        ReadCancelled("b", "min_index_ahead"),
        ReadCancelled("c", "min_index_ahead"),
    ]
    assert not node.core.pending_read and node.core.read_index_high == 0
    fx = node.rpc(N2, Vote(True))
    assert node.state is State.LEADER
    # nothing of the refused reads is held or queued once the candidate leads
    assert not submitted(fx) and not [e for e in fx if isinstance(e, ReadCancelled)]
    assert node.core.held_reads == [] and not node.core.pending_read
    assert node.core.read_index_high <= node.log.last_index()


def test_candidate_buffered_reads_cancelled_when_losing() -> None:
    node = make_node(1, settings=settings(raft_candidate_buffer_requests=True))
    node.fire()
    node.handle(read())
    fx = node.rpc(N2, Vote(False))
    fx += node.rpc(N3, Vote(False))
    assert node.state is State.FOLLOWER
    assert CancelReads("not_leader") in fx


def test_candidate_without_buffering_rejects_reads() -> None:
    node = make_node(1)
    node.fire()
    assert node.handle(read()) == [ReadCancelled("r", "not_leader")]
