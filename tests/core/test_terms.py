"""Term rules and votes: stale terms, leader stickiness, term advance, vote persistence."""

from __future__ import annotations

from waraft.core.effects import PersistState, Send, StateChanged
from waraft.core.events import Disable
from waraft.core.rpc import (
    AppendEntries,
    AppendEntriesResponse,
    NotifyTerm,
    PreVote,
    RequestPreVote,
    RequestVote,
    Vote,
)
from waraft.core.types import DurableState, ElectionType, State

from .fakes import entries_of, ident, make_leader, make_node, settings

N2, N3 = ident(2), ident(3)


def test_stale_term_is_dropped_and_answered_with_notify_term() -> None:
    node = make_node(1, term=5)
    fx = node.rpc(N2, AppendEntries(1, 1, [], 1, 0), term=4)
    assert [type(e) for e in fx] == [Send]
    assert fx[0].to == N2
    assert fx[0].rpc.term == 5 and isinstance(fx[0].rpc.payload, NotifyTerm)
    assert node.core.leader is None


def test_disabled_replica_does_not_send_notify_term() -> None:
    node = make_node(1, term=5)
    node.handle(Disable("caller", "testing"))
    assert node.state is State.DISABLED
    assert node.rpc(N2, AppendEntries(1, 1, [], 1, 0), term=4) == []


def test_newer_term_is_persisted_before_the_rpc_is_handled() -> None:
    node = make_node(1, term=2)
    fx = node.rpc(N2, AppendEntries(1, 1, [], 1, 0), term=7)
    persist = [i for i, e in enumerate(fx) if isinstance(e, PersistState)]
    sends = [i for i, e in enumerate(fx) if isinstance(e, Send)]
    assert persist and sends and persist[0] < sends[0]
    assert fx[persist[0]].state == DurableState(7, None, None)
    assert node.core.current_term == 7
    assert node.core.leader == N2
    response = fx[sends[0]].rpc
    assert response.term == 7 and response.payload == AppendEntriesResponse(1, True, 1, 1)


def test_leader_steps_down_on_a_newer_term() -> None:
    node = make_leader()
    term = node.core.current_term
    fx = node.rpc(N3, AppendEntriesResponse(0, False, 0, None), term=term + 1)
    assert node.state is State.FOLLOWER
    assert node.core.current_term == term + 1
    assert node.core.voted_for is None and node.core.leader is None
    assert any(isinstance(e, StateChanged) and e.new is State.FOLLOWER for e in fx)


def test_notify_term_with_newer_term_advances_and_equal_is_ignored() -> None:
    node = make_leader()
    term = node.core.current_term
    assert node.rpc(N2, NotifyTerm(), term=term) == []
    node.rpc(N2, NotifyTerm(), term=term + 3)
    assert node.core.current_term == term + 3 and node.state is State.FOLLOWER


def test_first_append_entries_of_a_term_records_the_leader() -> None:
    node = make_node(1)
    node.rpc(N3, AppendEntries(1, 1, [], 1, 0))
    assert node.core.leader == N3
    assert node.core.status(0)["leader_id"] == "n3"


def test_leader_stickiness_refuses_normal_votes_with_the_requests_term() -> None:
    node = make_node(1, term=3)
    node.rpc(N2, AppendEntries(1, 1, [], 1, 0), now=1000)  # heartbeat from leader n2
    fx = node.rpc(N3, RequestVote(ElectionType.NORMAL, 5, 3), term=9, now=2000)
    assert [type(e) for e in fx] == [Send]
    assert fx[0].rpc.term == 9 and fx[0].rpc.payload == Vote(False)
    assert node.core.current_term == 3  # the term did not move


def test_vote_requests_from_non_members_are_dropped_without_touching_the_term() -> None:
    # Issue 15: one forged request_vote from a made-up node deposed a healthy leader.
    outsider = ident(9)
    leader = make_leader(3)
    term = leader.core.current_term
    for payload in (
        RequestVote(ElectionType.FORCE, 10**6, 10**6),
        RequestVote(ElectionType.ALLOWED, 10**6, 10**6),
        RequestPreVote(1),
    ):
        fx = leader.rpc(outsider, payload, term=10**6)
        assert fx == []
        assert leader.core.state is State.LEADER and leader.core.current_term == term
    # A member's request at a higher term still moves the term (the rule is membership only).
    leader.rpc(N3, RequestVote(ElectionType.FORCE, 10**6, 10**6), term=10**6)
    assert leader.core.current_term == 10**6


def test_normal_vote_allowed_once_the_leader_is_missing() -> None:
    node = make_node(1, term=3)
    node.rpc(N2, AppendEntries(1, 1, [], 1, 0), now=1000)
    timeout = node.core.settings.raft_election_timeout_ms
    fx = node.rpc(N3, RequestVote(ElectionType.NORMAL, 5, 3), term=9, now=1001 + timeout)
    assert node.core.current_term == 9 and node.core.voted_for == "n3"
    assert fx[-1].rpc.payload == Vote(True)


def test_force_votes_bypass_stickiness() -> None:
    node = make_node(1, term=3)
    node.rpc(N2, AppendEntries(1, 1, [], 1, 0), now=1000)
    fx = node.rpc(N3, RequestVote(ElectionType.FORCE, 5, 3), term=4, now=1001)
    assert node.core.voted_for == "n3" and fx[-1].rpc.payload == Vote(True)


def test_vote_is_persisted_before_it_is_granted() -> None:
    node = make_node(1, term=2)
    fx = node.rpc(N2, RequestVote(ElectionType.ALLOWED, 1, 1))
    assert [type(e) for e in fx] == [PersistState, Send]
    assert fx[0].state == DurableState(2, "n2", None)
    assert fx[1].rpc.payload == Vote(True)


def test_one_vote_per_term_first_come_first_served() -> None:
    node = make_node(1, term=2)
    node.rpc(N2, RequestVote(ElectionType.ALLOWED, 1, 1))
    fx = node.rpc(N3, RequestVote(ElectionType.ALLOWED, 9, 9))
    assert fx[-1].rpc.payload == Vote(False)
    # asking again as the same candidate is answered yes without persisting again
    fx = node.rpc(N2, RequestVote(ElectionType.ALLOWED, 1, 1))
    assert [type(e) for e in fx] == [Send] and fx[0].rpc.payload == Vote(True)


def test_vote_refused_to_a_candidate_with_an_older_log() -> None:
    node = make_node(1, entries=entries_of([2, 2]), term=3)
    for last_index, last_term, granted in [
        (3, 2, True),
        (2, 2, False),
        (9, 1, False),
        (1, 3, True),
    ]:
        fresh = make_node(1, entries=entries_of([2, 2]), term=3)
        fx = fresh.rpc(N2, RequestVote(ElectionType.ALLOWED, last_index, last_term))
        assert fx[-1].rpc.payload == Vote(granted), (last_index, last_term)
    assert node.core.voted_for is None


def test_leader_and_candidate_refuse_votes_in_their_term() -> None:
    leader = make_leader()
    fx = leader.rpc(N3, RequestVote(ElectionType.FORCE, 99, 99))
    assert fx[-1].rpc.payload == Vote(False) and leader.state is State.LEADER
    candidate = make_node(1)
    candidate.fire()
    assert candidate.state is State.CANDIDATE
    fx = candidate.rpc(N3, RequestVote(ElectionType.FORCE, 99, 99))
    assert fx[-1].rpc.payload == Vote(False)


def test_pre_vote_request_never_advances_the_term() -> None:
    node = make_node(1, term=2)
    fx = node.rpc(N2, RequestPreVote(77), term=50)
    assert node.core.current_term == 2
    assert fx[0].rpc.payload == PreVote(77, True, 1, 1)
    node.rpc(N3, AppendEntries(1, 1, [], 1, 0), now=10)
    fx = node.rpc(N2, RequestPreVote(78), term=50, now=20)
    assert fx[0].rpc.payload == PreVote(78, False, 1, 1)


def test_stalled_ignores_votes_but_advances_its_term_when_asked() -> None:
    node = make_node(1, applied=0, storage_config=False)
    assert node.state is State.STALLED
    fx = node.rpc(N2, RequestVote(ElectionType.ALLOWED, 5, 5), term=4)
    assert node.core.current_term == 4
    assert not [e for e in fx if isinstance(e, Send)]
    assert node.rpc(N2, RequestPreVote(1), term=4) == []


def test_disabled_refuses_votes_and_ignores_the_rest() -> None:
    node = make_node(1, term=2)
    node.handle(Disable(None, "bad disk"))
    fx = node.rpc(N2, RequestVote(ElectionType.FORCE, 5, 5))
    assert fx[-1].rpc.payload == Vote(False)
    assert node.rpc(N2, AppendEntries(1, 1, [], 1, 0)) == []
    assert node.rpc(N2, RequestPreVote(1)) == []
    assert node.state is State.DISABLED


def test_disabled_advances_term_and_keeps_its_reason_durable() -> None:
    node = make_node(1, term=2, settings=settings())
    node.handle(Disable(None, "bad disk"))
    fx = node.rpc(N2, RequestVote(ElectionType.FORCE, 5, 5), term=6)
    persisted = [e.state for e in fx if isinstance(e, PersistState)]
    assert persisted == [DurableState(6, None, "bad disk")]
    assert node.state is State.DISABLED
