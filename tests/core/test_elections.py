"""Elections: randomized weighted timeouts, eligibility, pre-vote, outcomes, check-quorum."""

from __future__ import annotations

import pytest

from waraft.core.effects import PersistState, Send, SetTimeout
from waraft.core.events import Timeout
from waraft.core.rpc import AppendEntries, AppendEntriesResponse, PreVote, RequestPreVote, Vote
from waraft.core.types import NOOP, DurableState, ElectionType, State, TimeoutKind

from .fakes import Cluster, fixed_rand, ident, ids, make_leader, make_node, settings

N2, N3 = ident(2), ident(3)


@pytest.mark.parametrize(
    ("rand", "weight", "expected"),
    [
        (0.0, 10, 5001),  # Min + uniform(Max - Min) draws 1..Max-Min
        (0.999999, 10, 7500),
        (0.5, 10, 6251),
        (0.5, 5, 12502),  # lower weight, longer timeout
        (0.5, 1, 62510),
        (0.5, 0, 62510),  # zero weight: ten times the base
        (0.5, 11, 62510),  # out of range weights count as the default scaling
    ],
)
def test_election_timeout_is_randomized_and_weighted(
    rand: float, weight: int, expected: int
) -> None:
    node = make_node(1, rand=fixed_rand(rand), settings=settings(raft_election_weight=weight))
    assert node.timeout == SetTimeout(TimeoutKind.ELECTION, expected)


def test_election_timeout_without_a_range() -> None:
    s = settings(raft_election_timeout_ms=300, raft_election_timeout_ms_max=300)
    node = make_node(1, settings=s)
    assert node.timeout == SetTimeout(TimeoutKind.ELECTION, 300)


def test_follower_timeout_starts_an_election() -> None:
    node = make_node(1, term=4)
    fx = node.fire()
    assert node.state is State.CANDIDATE
    assert node.core.current_term == 5 and node.core.voted_for == "n1"
    persist = [i for i, e in enumerate(fx) if isinstance(e, PersistState)]
    sends = [e for e in fx if isinstance(e, Send)]
    assert fx[persist[0]].state == DurableState(5, "n1", None)
    assert {s.to for s in sends} == {N2, N3}
    assert all(fx.index(s) > persist[0] for s in sends)
    assert all(s.rpc.payload.election_type is ElectionType.NORMAL for s in sends)
    assert node.core.votes == {"n1": True}  # the self-vote arrived through the mailbox
    assert isinstance(fx[-1], SetTimeout) and fx[-1].kind is TimeoutKind.ELECTION


@pytest.mark.parametrize(
    "overrides",
    [
        {"raft_leader_eligible": False},
        {"raft_election_weight": 0},
    ],
)
def test_ineligible_follower_does_not_campaign(overrides: dict[str, object]) -> None:
    node = make_node(1, settings=settings(**overrides))
    node.fire()
    assert node.state is State.FOLLOWER and node.core.current_term == 1
    assert node.timeout is not None  # re-armed through repeat_state


def test_non_member_does_not_campaign() -> None:
    node = make_node(4, members=ids(3), participants=[ident(4)])
    assert node.state is State.FOLLOWER
    node.fire()
    assert node.state is State.FOLLOWER


@pytest.mark.parametrize(
    ("size", "votes", "state"),
    [
        (3, {2: True, 3: True}, State.LEADER),
        (3, {2: True}, State.LEADER),
        (5, {2: True, 3: True}, State.LEADER),
        (3, {2: False, 3: False}, State.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, State.FOLLOWER),
        (3, {}, State.CANDIDATE),
        (5, {2: True}, State.CANDIDATE),
        (5, {2: False, 3: False}, State.CANDIDATE),
    ],
)
def test_majority_of_yes_or_no_ends_the_election(
    size: int, votes: dict[int, bool], state: State
) -> None:
    node = make_node(1, ids(size))
    node.fire()
    for peer, vote in votes.items():
        if node.state is State.CANDIDATE:
            node.rpc(ident(peer), Vote(vote))
    assert node.state is state
    assert node.core.current_term == 2


def test_votes_from_non_members_do_not_count() -> None:
    node = make_node(1, ids(3), participants=[ident(4), ident(5)])
    node.fire()
    node.rpc(ident(4), Vote(True))
    node.rpc(ident(5), Vote(True))
    assert node.state is State.CANDIDATE


def test_new_leader_appends_a_noop_and_replicates_it() -> None:
    node = make_node(1)
    node.fire()
    fx = node.rpc(N2, Vote(True))
    assert node.state is State.LEADER
    assert node.log.terms() == [1, 2]
    assert node.log.get(2).command == NOOP
    appends = [e for e in fx if isinstance(e, Send)]
    assert {s.to for s in appends} == {N2, N3}
    for send in appends:
        assert send.rpc.payload == AppendEntries(1, 1, [node.log.get(2)], 1, 0)
    assert node.core.first_current_term_log_index == 2
    assert node.timeout == SetTimeout(TimeoutKind.HEARTBEAT, 120)


def test_candidate_timeout_restarts_the_election_in_a_new_term() -> None:
    node = make_node(1)
    node.fire()
    node.fire()
    assert node.state is State.CANDIDATE and node.core.current_term == 3


def test_candidate_timeout_when_ineligible_falls_back_to_follower() -> None:
    node = make_node(1)
    node.fire()
    node.core.settings = settings(raft_leader_eligible=False)
    node.fire()
    assert node.state is State.FOLLOWER


def test_candidate_follows_a_leader_of_its_term() -> None:
    node = make_node(1)
    node.fire()
    fx = node.rpc(N3, AppendEntries(1, 1, [], 1, 0))
    assert node.state is State.FOLLOWER and node.core.leader == N3
    assert fx[-1] == SetTimeout(TimeoutKind.ELECTION, fx[-1].ms)
    response = next(e for e in fx if isinstance(e, Send)).rpc.payload
    assert response == AppendEntriesResponse(1, True, 1, 1)


def test_single_member_restart_elects_itself_immediately() -> None:
    node = make_node(1, [ident(1)])
    assert node.state is State.LEADER
    assert node.core.current_term == 2
    assert node.core.commit_index == 2 and node.core.last_applied == 2


def test_single_member_with_pre_vote_still_elects_itself() -> None:
    # Deliberate deviation from WARaft (which never finishes the pre-vote round alone).
    node = make_node(1, [ident(1)], settings=settings(raft_election_pre_vote=True))
    assert node.state is State.LEADER and node.core.current_term == 2


def test_pre_vote_round_does_not_touch_the_term() -> None:
    node = make_node(1, settings=settings(raft_election_pre_vote=True), term=3)
    fx = node.fire()
    assert node.state is State.CANDIDATE and node.core.current_term == 3
    assert not [e for e in fx if isinstance(e, PersistState)]
    requests = [e for e in fx if isinstance(e, Send)]
    assert {s.to for s in requests} == {N2, N3}
    ref = requests[0].rpc.payload.ref
    assert all(s.rpc.payload == RequestPreVote(ref) for s in requests)
    # a yes from a peer whose log is not ahead of ours: majority -> real election
    fx = node.rpc(N2, PreVote(ref, True, 1, 1))
    assert node.core.current_term == 4
    assert any(
        isinstance(e, Send) and e.rpc.payload.election_type is ElectionType.NORMAL for e in fx
    )


@pytest.mark.parametrize(
    ("vote", "peer_last", "outcome"),
    [
        (False, (1, 1), State.FOLLOWER),  # the peer still hears a leader
        (True, (5, 1), State.FOLLOWER),  # the peer's log is ahead of ours
    ],
)
def test_pre_vote_refusals(vote: bool, peer_last: tuple[int, int], outcome: State) -> None:
    node = make_node(1, settings=settings(raft_election_pre_vote=True), term=3)
    fx = node.fire()
    ref = next(e for e in fx if isinstance(e, Send)).rpc.payload.ref
    node.rpc(N2, PreVote(ref, vote, *peer_last))
    node.rpc(N3, PreVote(ref, vote, *peer_last))
    assert node.state is outcome and node.core.current_term == 3


def test_pre_votes_of_another_round_are_ignored() -> None:
    node = make_node(1, settings=settings(raft_election_pre_vote=True))
    node.fire()
    node.rpc(N2, PreVote(12345, True, 1, 1))
    assert node.core.current_term == 1 and node.core.pre_votes == {"n1": True}


def test_forced_election_skips_pre_vote() -> None:
    node = make_node(1, settings=settings(raft_election_pre_vote=True))
    node.core.next_election_type = ElectionType.FORCE
    fx = node.fire()
    sends = [e for e in fx if isinstance(e, Send)]
    assert node.core.current_term == 2
    assert all(s.rpc.payload.election_type is ElectionType.FORCE for s in sends)
    assert node.core.next_election_type is ElectionType.NORMAL


def test_check_quorum_leader_resigns_when_stale() -> None:
    s = settings(raft_leader_check_quorum=True, raft_liveness_grace_period_ms=1000)
    node = make_leader(settings=s)
    node.handle(Timeout(TimeoutKind.HEARTBEAT), now=500)
    assert node.state is State.LEADER
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=900)
    node.handle(Timeout(TimeoutKind.HEARTBEAT), now=1800)
    assert node.state is State.LEADER  # n2 answered at 900: quorum is 900
    node.handle(Timeout(TimeoutKind.HEARTBEAT), now=1950)
    assert node.state is State.FOLLOWER


def test_without_check_quorum_an_isolated_leader_keeps_leading() -> None:
    node = make_leader()
    node.handle(Timeout(TimeoutKind.HEARTBEAT), now=10_000_000)
    assert node.state is State.LEADER


def test_leader_no_longer_eligible_resigns_at_its_next_heartbeat() -> None:
    node = make_leader()
    node.core.settings = settings(raft_leader_eligible=False)
    node.handle(Timeout(TimeoutKind.HEARTBEAT), now=200)
    assert node.state is State.FOLLOWER


def test_cluster_elects_exactly_one_leader() -> None:
    cluster = Cluster([make_node(i, ids(5)) for i in range(1, 6)])
    cluster.fire(3)
    cluster.deliver()
    assert [n.core.node for n in cluster.leaders()] == ["n3"]
    for node in cluster.nodes.values():
        assert node.core.current_term == 2
        assert node.core.leader == ident(3)
