"""Leadership handover: target selection and errors, redirects, timeout, the target's side."""

from __future__ import annotations

from typing import Any

import pytest

from waraft.core.effects import PersistState, Reply, Send, StateChanged
from waraft.core.events import (
    CommitBatch,
    Disable,
    HandoverCandidates,
    HandoverRequest,
    IsPeerReady,
    NodeLiveness,
    Timeout,
)
from waraft.core.rpc import (
    AppendEntries,
    AppendEntriesResponse,
    Handover,
    HandoverFailed,
    RequestVote,
)
from waraft.core.types import ElectionType, Entry, Identity, State, TimeoutKind

from .fakes import Cluster, Node, entries_of, ident, ids, make_leader, make_node, settings

N1, N2, N3 = ident(1), ident(2), ident(3)


def ready_leader(**kwargs: Any) -> Node:
    """A leader whose peers both hold and applied the noop."""
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0), **kwargs)
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)
    node.rpc(N3, AppendEntriesResponse(1, True, 2, 2), now=1)
    return node


def test_candidates_are_caught_up_full_members() -> None:
    node = make_leader(members=[N1, N2, N3, ident(4)], witnesses=[ident(4)])
    assert node.core.handover_candidates() == []
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)
    node.rpc(ident(4), AppendEntriesResponse(1, True, 2, 2), now=1)
    assert node.core.handover_candidates() == ["n2"]  # n3 unknown, n4 a witness
    fx = node.handle(HandoverCandidates("op"))
    assert fx == [Reply("op", ("ok", ["n2"]))]


def test_candidates_exclude_peers_too_far_behind() -> None:
    s = settings(raft_max_handover_log_entries=2, raft_commit_batch_interval_ms=0)
    node = make_leader(settings=s)
    node.handle(CommitBatch([(i, (i, i)) for i in range(5)]))
    node.rpc(N2, AppendEntriesResponse(1, True, 5, 5), now=1)  # last 7: cutoff 5
    node.rpc(N3, AppendEntriesResponse(1, True, 4, 5), now=1)
    assert node.core.handover_candidates() == ["n2"]
    s2 = s.with_overrides(raft_handover_max_unapplied_entries=1)
    node.core.settings = s2
    assert node.core.handover_candidates() == []  # applied 5 < 7 - 1


def test_is_peer_ready() -> None:
    node = ready_leader(participants=[ident(4)])
    assert node.handle(IsPeerReady("op", N2)) == [Reply("op", "ok")]
    wire_pair = ["raft_server_test_1", "n2"]  # a peer that crossed the wire as a list
    assert node.handle(IsPeerReady("op", wire_pair)) == [Reply("op", "ok")]  # type: ignore[arg-type]
    assert node.handle(IsPeerReady("op", ident(4))) == [Reply("op", ("error", "not_ready"))]
    stranger = Identity("x", "x")
    assert node.handle(IsPeerReady("op", stranger)) == [Reply("op", ("error", "not_a_participant"))]


def test_non_leader_handover_commands_say_not_leader() -> None:
    node = make_node(2)
    for event in (HandoverRequest("op", "n1"), HandoverCandidates("op"), IsPeerReady("op", N1)):
        assert node.handle(event) == [Reply("op", ("error", "not_leader"))]


def test_targeted_handover_sends_missing_entries() -> None:
    node = ready_leader()
    node.handle(CommitBatch([("c", ("k", "v"))]))
    fx = node.handle(HandoverRequest("op", "n3"), now=5)
    sends = [e for e in fx if isinstance(e, Send)]
    assert len(sends) == 1 and sends[0].to == N3
    request = sends[0].rpc.payload
    assert isinstance(request, Handover)
    assert (request.prev_log_index, request.prev_log_term) == (2, 2)
    assert [e.command for e in request.entries] == ["v"]
    assert fx[-1] == Reply("op", ("ok", "n3"))
    peer, ref, deadline = node.core.handover  # type: ignore[misc]
    assert (peer, ref, deadline) == ("n3", request.ref, 605)
    assert node.core.handover_lease_state == "in_progress"


def test_random_handover_picks_a_candidate() -> None:
    node = ready_leader()
    fx = node.handle(HandoverRequest(None, None), now=5)
    assert node.core.handover is not None and node.core.handover[0] in {"n2", "n3"}
    assert not [e for e in fx if isinstance(e, Reply)]  # a cast: nobody to answer


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("n1", ("ok", "n1")),  # to ourselves: a no-op
        ("n9", ("error", "invalid_peer")),
    ],
)
def test_handover_target_checks(peer: str, expected: object) -> None:
    node = ready_leader()
    assert node.handle(HandoverRequest("op", peer), now=5) == [Reply("op", expected)]
    assert node.core.handover is None


def test_handover_to_a_witness_is_refused() -> None:
    # Review O, finding 6: answered ("ok", node); the witness then declined (HandoverFailed).
    n4 = ident(4)
    node = make_leader(
        members=[N1, N2, N3, n4], witnesses=[n4], settings=settings(raft_commit_batch_interval_ms=0)
    )
    for peer in (N2, N3, n4):
        node.rpc(peer, AppendEntriesResponse(1, True, 2, 2), now=1)
    fx = node.handle(HandoverRequest("op", "n4"), now=5)
    assert fx == [Reply("op", ("error", ("cannot_lead", "witness")))]
    assert node.core.handover is None
    assert "n4" not in node.core.handover_candidates()


def test_handover_to_a_node_reported_down_is_refused() -> None:
    node = ready_leader()
    node.handle(NodeLiveness("n2", False), now=2)
    fx = node.handle(HandoverRequest("op", "n2"), now=5)
    assert fx == [Reply("op", ("error", ("cannot_lead", "down")))]
    assert node.core.handover is None
    assert node.core.handover_candidates() == ["n3"]
    node.handle(HandoverRequest(None, None), now=6)
    assert node.core.handover is not None and node.core.handover[0] == "n3"


def test_handover_to_a_peer_silent_for_the_window_is_refused() -> None:
    # A disabled replica ignores the leader: it looked ready (its indices stay where they
    # were on an idle partition), and a handover to it left the partition without heartbeats
    # until the handover timed out.
    node = make_leader(
        settings=settings(raft_commit_batch_interval_ms=0, raft_election_timeout_ms=300)
    )
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)
    node.rpc(N3, AppendEntriesResponse(1, True, 2, 2), now=1)
    now = 1
    while now < 700:
        now += 50
        node.handle(Timeout(TimeoutKind.HEARTBEAT), now=now)
        node.rpc(N3, AppendEntriesResponse(1, True, 2, 2), now=now)
    assert node.core.status(now)["unresponsive"] == ["n2"]
    assert node.core.handover_candidates() == ["n3"]
    fx = node.handle(HandoverRequest("op", "n2"), now=now)
    assert fx == [Reply("op", ("error", ("cannot_lead", "unresponsive")))]
    assert node.core.handover is None
    assert node.handle(HandoverRequest("op", "n3"), now=now)[-1] == Reply("op", ("ok", "n3"))


def test_handover_without_candidates() -> None:
    node = make_leader()
    assert node.handle(HandoverRequest("op", None)) == [Reply("op", ("error", "no_valid_peer"))]


def test_duplicate_handover_is_refused() -> None:
    node = ready_leader()
    node.handle(HandoverRequest("op", "n2"), now=5)
    assert node.handle(HandoverRequest("op2", "n3"), now=6) == [
        Reply("op2", ("error", "duplicate"))
    ]


def test_handover_to_a_lagging_peer_is_refused() -> None:
    s = settings(raft_max_handover_log_entries=3, raft_commit_batch_interval_ms=0)
    node = make_leader(settings=s)
    node.handle(CommitBatch([(i, (i, i)) for i in range(5)]))
    assert node.handle(HandoverRequest("op", "n2"), now=5) == [
        Reply("op", ("error", "peer_lagging"))
    ]


def test_oversized_handover_is_refused() -> None:
    s = settings(raft_max_handover_log_size=1, raft_commit_batch_interval_ms=0)
    node = make_leader(settings=s)
    node.handle(CommitBatch([(i, (i, "x" * 100)) for i in range(3)]))
    assert node.handle(HandoverRequest("op", "n2"), now=5) == [Reply("op", ("error", "oversize"))]


def test_no_heartbeats_while_handing_over_then_timeout_resumes() -> None:
    node = ready_leader()
    node.handle(HandoverRequest("op", "n2"), now=5)
    fx = node.handle(Timeout(TimeoutKind.HEARTBEAT), now=200)
    assert not [e for e in fx if isinstance(e, Send)]
    fx = node.rpc(N3, AppendEntriesResponse(2, True, 2, 2), now=300)
    assert not [e for e in fx if isinstance(e, Send)]
    fx = node.handle(Timeout(TimeoutKind.HEARTBEAT), now=606)
    assert node.core.handover is None
    assert {e.to for e in fx if isinstance(e, Send)} == {N2, N3}
    assert node.core.heartbeat_reply_ts == {}


def test_handover_failed_with_the_wrong_ref_is_ignored() -> None:
    node = ready_leader()
    node.handle(HandoverRequest("op", "n2"), now=5)
    ref = node.core.handover[1]  # type: ignore[index]
    node.rpc(N2, HandoverFailed(ref + 1), now=6)
    node.rpc(N3, HandoverFailed(ref), now=6)
    assert node.core.handover is not None
    node.rpc(N2, HandoverFailed(ref), now=7)
    assert node.core.handover is None


# -- the target ------------------------------------------------------------------------------


def test_target_appends_and_forces_an_election() -> None:
    node = make_node(2, term=2, settings=settings(raft_election_pre_vote=True))
    node.rpc(N1, AppendEntries(1, 1, [], 1, 0), now=1)  # n1 is our leader (sticky)
    fx = node.rpc(N1, Handover(7, 1, 1, entries_of([2])), now=2)
    assert node.state is State.CANDIDATE
    assert node.log.terms() == [1, 2]
    assert node.core.current_term == 3
    requests = [e.rpc.payload for e in fx if isinstance(e, Send)]
    assert requests and all(r == RequestVote(ElectionType.FORCE, 2, 2) for r in requests)
    assert any(isinstance(e, PersistState) for e in fx)


def test_forced_vote_request_beats_stickiness_and_deposes_the_old_leader() -> None:
    cluster = Cluster([make_node(i, ids(3)) for i in (1, 2, 3)])
    cluster.fire(1)
    cluster.deliver()
    cluster.now = 10
    cluster.handle(1, Timeout(TimeoutKind.HEARTBEAT))
    cluster.deliver()
    cluster.handle(1, HandoverRequest("op", "n2"))
    cluster.deliver()
    assert cluster.node(2).state is State.LEADER
    assert cluster.node(1).state is State.FOLLOWER
    assert cluster.node(2).core.current_term == 3
    assert cluster.node(1).core.handover is None


def test_handover_from_a_non_leader_is_ignored() -> None:
    node = make_node(2, term=2)
    node.rpc(N1, AppendEntries(1, 1, [], 1, 0))
    assert node.rpc(N3, Handover(7, 1, 1, [])) == []
    assert node.state is State.FOLLOWER


@pytest.mark.parametrize(
    "overrides", [{"raft_leader_eligible": False}, {"raft_election_weight": 0}]
)
def test_ineligible_target_declines(overrides: dict[str, object]) -> None:
    node = make_node(2, term=2, settings=settings(**overrides))
    fx = node.rpc(N1, Handover(7, 1, 1, []))
    assert fx == [Send(N1, fx[0].rpc)] and fx[0].rpc.payload == HandoverFailed(7)
    assert node.state is State.FOLLOWER


def test_target_that_cannot_append_declines() -> None:
    node = make_node(2, term=2)
    fx = node.rpc(N1, Handover(7, 5, 2, entries_of([2], first_index=6)))
    assert [e.rpc.payload for e in fx if isinstance(e, Send)] == [HandoverFailed(7)]
    assert node.state is State.FOLLOWER


def test_target_with_a_fatal_conflict_declines_and_disables() -> None:
    node = make_node(2, term=3, entries=entries_of([2, 2]))
    node.rpc(N1, AppendEntries(3, 2, [], 3, 0))
    fx = node.rpc(N1, Handover(7, 1, 1, entries_of([3, 3])))
    assert [e.rpc.payload for e in fx if isinstance(e, Send)] == [HandoverFailed(7)]
    assert node.state is State.DISABLED


def test_target_with_a_conflict_at_its_commit_index_declines_and_disables() -> None:
    """A handover's entries go through the same guard as a heartbeat's: a conflict exactly at
    the commit index would delete a committed entry, so the target disables itself."""
    node = make_node(2, term=3, entries=entries_of([2, 2]))  # terms [1, 2, 2]
    node.rpc(N1, AppendEntries(3, 2, [], 3, 0))
    assert node.core.commit_index == 3
    fx = node.rpc(N1, Handover(7, 2, 2, entries_of([3], first_index=3)))
    assert [e.rpc.payload for e in fx if isinstance(e, Send)] == [HandoverFailed(7)]
    assert node.state is State.DISABLED
    assert node.log.terms() == [1, 2, 2]


def test_witness_declines_handover() -> None:
    node = make_node(3, witnesses=[N3], term=2)
    assert node.state is State.WITNESS
    fx = node.rpc(N1, Handover(7, 1, 1, []))
    assert [e.rpc.payload for e in fx] == [HandoverFailed(7)]


def test_a_just_disabled_target_declines_and_the_leader_resumes_at_once() -> None:
    # Review O, finding 6: WARaft's disabled replica ignores a handover, so a handover to a
    # replica disabled moments before (not yet silent to the leader) held the leader's
    # heartbeats, commits and reads until the handover timed out.
    cluster = Cluster([make_node(i, ids(3)) for i in (1, 2, 3)])
    cluster.fire(1)
    cluster.deliver()
    cluster.now = 10
    cluster.handle(1, Timeout(TimeoutKind.HEARTBEAT))
    cluster.deliver()
    cluster.handle(2, Disable("op", "test"))
    assert cluster.node(2).state is State.DISABLED
    cluster.handle(1, HandoverRequest("op", "n2"))
    assert cluster.node(1).core.handover is not None  # the leader could not know yet
    cluster.deliver()
    assert cluster.node(1).core.handover is None
    assert cluster.node(1).state is State.LEADER
    assert cluster.node(2).state is State.DISABLED


def test_leader_and_candidate_decline_handover() -> None:
    leader = make_leader()
    fx = leader.rpc(N2, Handover(3, 1, 1, []))
    assert [e.rpc.payload for e in fx] == [HandoverFailed(3)]
    candidate = make_node(1)
    candidate.fire()
    fx = candidate.rpc(N2, Handover(3, 1, 1, [Entry(2, "x", "y")]))
    # a candidate follows the sender first and then treats it as the follower would
    assert StateChanged(State.CANDIDATE, State.FOLLOWER) in fx
    assert candidate.state is State.CANDIDATE  # and starts the forced election
    assert candidate.core.current_term == 3
    requests = [e.rpc.payload for e in fx if isinstance(e, Send)]
    assert requests and all(r.election_type is ElectionType.FORCE for r in requests)
    assert candidate.core.votes == {"n1": True}
