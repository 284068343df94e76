"""A replica whose durable state file was lost (``durable_state_missing``) must not vote in a
term it may already have voted in: re-enabled (or restarted after that), it takes no part
until every voter told it its term, then goes on past the highest, counted as voted."""

from __future__ import annotations

from waraft.core.events import Disable, Enable
from waraft.core.rpc import (
    AppendEntries,
    NotifyTerm,
    RequestPreVote,
    RequestVote,
    Vote,
)
from waraft.core.types import DurableState, ElectionType, State

from .fakes import Cluster, Node, entries_of, ident, ids, make_node

MISSING = ("durable_state_missing", "no state file, but the log holds an entry of term 5")
LATER = 60_000  # ms: past any election timeout


def lost_replica(members: int = 3) -> Node:
    """Replica n1 holding entries of term 5, its state file gone, re-enabled."""
    node = make_node(
        1, ids(members), entries=entries_of([5, 5]), durable=DurableState(0, None, MISSING)
    )
    assert node.state is State.DISABLED
    node.handle(Enable("op"))
    return node


def granted(node: Node) -> bool:
    return any(isinstance(s.rpc.payload, Vote) and s.rpc.payload.vote for s in node.sends())


def test_a_reenabled_replica_that_lost_its_vote_grants_none_before_the_voters_answer() -> None:
    node = lost_replica()
    assert node.state is State.STALLED
    node.fire(now=LATER)  # no leader came: before, it went on as a follower at term 0
    assert node.state is State.STALLED
    # It may have voted for n3 in term 5 before its state was lost: n2 must not get a vote.
    node.rpc(ident(2), RequestVote(ElectionType.NORMAL, 3, 5), term=5, now=LATER + 1)
    assert not granted(node)
    node.rpc(ident(2), RequestVote(ElectionType.ALLOWED, 9, 9), term=9, now=LATER + 2)
    assert not granted(node)
    # Nor does it acknowledge entries, or adopt a term, before it knows the voters' terms.
    fx = node.rpc(ident(2), AppendEntries(3, 5, [], 3, 0), term=5, now=LATER + 3)
    assert node.sends(fx) == []
    assert node.core.current_term == 0
    assert node.state is State.STALLED


def test_it_asks_every_voter_and_goes_on_past_the_highest_term_counted_as_voted() -> None:
    node = lost_replica()
    asked = {s.to for s in node.sends() if isinstance(s.rpc.payload, RequestPreVote)}
    assert asked == {ident(2), ident(3)}
    assert node.core.status(0)["term_lost"] == ["n2", "n3"]
    node.rpc(ident(3), NotifyTerm(), term=7)
    assert node.state is State.STALLED  # n2 may have asked it for a vote in any term yet
    assert node.core.status(0)["term_lost"] == ["n2"]
    node.rpc(ident(2), NotifyTerm(), term=6)
    assert node.state is State.FOLLOWER
    assert (node.core.current_term, node.core.voted_for) == (7, "n1")
    assert node.durable == DurableState(7, "n1", None)
    assert node.core.status(0)["term_lost"] is None
    node.rpc(ident(2), RequestVote(ElectionType.ALLOWED, 3, 5), term=7)
    assert not granted(node)
    node.rpc(ident(2), RequestVote(ElectionType.ALLOWED, 3, 5), term=8)
    assert granted(node)


def test_the_voters_answer_with_their_terms_in_a_cluster() -> None:
    others = [
        make_node(n, entries=entries_of([5, 5, 7]), durable=DurableState(7, "n3")) for n in (2, 3)
    ]
    cluster = Cluster([lost_replica(), *others])
    node = cluster.node(1)
    cluster.run(node, node.effects)
    cluster.deliver()
    assert node.state is State.FOLLOWER
    assert (node.core.current_term, node.core.voted_for) == (7, "n1")
    assert [other.core.current_term for other in others] == [7, 7]


def test_a_restart_after_enable_still_takes_the_term_for_lost() -> None:
    # Enabled at term 0, then restarted before the voters answered: the state file exists
    # now, but a term below the log's own says the real one was lost.
    node = make_node(1, entries=entries_of([5, 5]), durable=DurableState(0, None, None))
    assert node.state is State.STALLED
    node.rpc(ident(2), RequestVote(ElectionType.ALLOWED, 3, 5), term=5)
    assert not granted(node)
    assert node.core.current_term == 0


def test_disabled_it_adopts_no_term() -> None:
    # Adopting one would be persisted, and after a restart the lost term could no longer be
    # told from the log's.
    node = make_node(1, entries=entries_of([5, 5]), durable=DurableState(0, None, MISSING))
    node.rpc(ident(2), AppendEntries(3, 5, [], 3, 0), term=9)
    node.handle(Disable("op", MISSING))
    assert node.core.current_term == 0
    assert node.durable == DurableState(0, None, MISSING)


def test_a_single_member_recovers_at_once_past_its_log() -> None:
    node = lost_replica(members=1)
    assert node.state in (State.CANDIDATE, State.LEADER)
    assert node.core.current_term > 5


def test_a_replica_whose_term_is_not_below_its_log_is_not_affected() -> None:
    node = make_node(1, entries=entries_of([5, 5]), durable=DurableState(5, None, None))
    assert node.state is State.FOLLOWER
    node.rpc(ident(2), RequestVote(ElectionType.ALLOWED, 3, 5), term=6, now=LATER)
    assert granted(node)


def test_a_learner_that_lost_its_term_hears_every_voter_and_recovers() -> None:
    # The voters dropped its pre-votes as a non-member's before looking at their term, and
    # the followers send a learner nothing else: it stayed stalled for good (review J).
    members, participants = ids(3), ids(4)
    voters = [
        make_node(
            n, members, participants=participants, entries=entries_of([5, 5, 7]),
            durable=DurableState(7, None),
        )
        for n in (1, 2, 3)
    ]  # fmt: skip
    learner = make_node(
        4, members, participants=participants, entries=entries_of([5, 5]),
        durable=DurableState(0, None, MISSING),
    )  # fmt: skip
    cluster = Cluster([learner, *voters])
    cluster.run(learner, learner.core.handle(Enable("op"), 0))
    cluster.deliver()
    for i in range(1, 4):
        cluster.now = i * LATER
        cluster.fire(4)
        cluster.deliver()
    assert learner.core.status(cluster.now)["term_lost"] is None
    assert learner.state is not State.STALLED
    assert learner.core.current_term == 7 and learner.core.voted_for == learner.core.node


def test_a_replica_holding_only_bootstraps_entry_lost_its_term_too() -> None:
    # Bootstrap now stores its term before its data lands, so data without a state file
    # means the file was lost, bootstrap's term included: taken for a new replica, one that
    # had voted in a later term before any entry of it came voted there again (sim seed
    # 75199: vote_once).
    node = make_node(2, ids(3), entries=entries_of([1]), durable=DurableState(0, None, MISSING))
    assert node.state is State.DISABLED
    node.handle(Enable("op"))
    assert node.state is State.STALLED and node.core.status(0)["term_lost"] == ["n1", "n3"]
    node.fire(now=LATER)  # before, it went on as a follower at term 0
    node.rpc(ident(3), RequestVote(ElectionType.ALLOWED, 1, 1), term=3, now=LATER + 1)
    assert not granted(node) and node.state is State.STALLED


def test_two_replicas_that_lost_their_terms_tell_each_other_where_their_logs_end() -> None:
    # n2 led term 6 with n1's vote, and only its own log holds an entry of term 6; then both
    # lost their state files. n1 took n2's question (sent at n2's durable term, 0) for its
    # term: it went on at 5 and voted for n3 in term 6, a second leader in a term whose
    # entry n2 still holds (and at the same index: two entries, one position).
    n1 = make_node(1, entries=entries_of([5, 5]), durable=DurableState(0, None, MISSING))
    n2 = make_node(2, entries=entries_of([5, 5, 6]), durable=DurableState(0, None, MISSING))
    n3 = make_node(3, entries=entries_of([5, 5]), durable=DurableState(5, "n2"))
    cluster = Cluster([n1, n2, n3])
    for n in (1, 2):
        cluster.handle(n, Enable("op"))
    cluster.deliver()
    # Each heard the other's question, at the term its log ends in: neither waits for good.
    assert (n1.state, n1.core.current_term, n1.core.voted_for) == (State.FOLLOWER, 6, "n1")
    assert (n2.state, n2.core.current_term, n2.core.voted_for) == (State.FOLLOWER, 6, "n2")
    n1.rpc(ident(3), RequestVote(ElectionType.ALLOWED, 3, 5), term=6, now=LATER)
    assert not granted(n1)
    n1.rpc(ident(3), RequestVote(ElectionType.ALLOWED, 3, 5), term=7, now=LATER + 1)
    assert granted(n1)


def test_three_replicas_that_lost_their_terms_in_a_ring_answer_each_others_questions() -> None:
    # Sweep seed 89166: n1, n2 and n4 of five lost their state files. Each heard every voter
    # but one of the others (n1 lacked n2, n2 lacked n4, n4 lacked n1), so each asked only
    # that one, which was recovering too and only took the question for an answer: no
    # replica of the three ever heard what it waited for, and with two voters left the
    # partition had no leader for good.
    lost = DurableState(0, None, MISSING)
    nodes = [
        make_node(n, ids(5), entries=entries_of([5, 5]), durable=lost if n in (1, 2, 4) else None)
        for n in range(1, 6)
    ]
    cluster = Cluster(nodes)
    ring = {(2, 1), (4, 2), (1, 4)}  # (sender, receiver): the question each never gets
    cluster.blocked = {(ident(a), ident(b)) for a, b in ring}
    for n in (1, 2, 4):
        cluster.handle(n, Enable("op"))
    cluster.deliver()
    for n, waits_for in ((1, 2), (2, 4), (4, 1)):
        node = cluster.node(n)
        assert node.state is State.STALLED and node.core.status(0)["term_lost"] == [f"n{waits_for}"]
    cluster.blocked = set()
    for n in (1, 2, 4):  # each asks again, only the one it lacks
        cluster.fire(n)
    cluster.deliver()
    for n in (1, 2, 4):
        node = cluster.node(n)
        assert node.state is State.FOLLOWER, n
        assert (node.core.current_term, node.core.voted_for) == (5, f"n{n}")
