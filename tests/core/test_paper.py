"""The Raft paper's rules, section by section, after etcd-io/raft's ``raft_paper_test.go``.

Each test drives our core through a scenario of that file (rewritten for our events and
effects, not copied) and checks the messages and state the paper prescribes. Differences
that are WARaft's by design are noted where they change an expectation:

* a stale-term RPC is answered with ``notify_term`` rather than silently ignored;
* a rejected append reports the follower's last index (no reject hint / log term);
* index 0 is never a valid previous entry: our logs start from a snapshot base at index 1.
"""

from __future__ import annotations

import random

import pytest

from waraft.core.effects import Apply, PersistState, Send
from waraft.core.events import CommitBatch, Timeout
from waraft.core.rpc import (
    AppendEntries,
    AppendEntriesResponse,
    NotifyTerm,
    RaftRpc,
    RequestVote,
    Vote,
)
from waraft.core.types import Entry, LogPos, State, TimeoutKind

from .fakes import (
    Cluster,
    Node,
    entries_of,
    ident,
    ids,
    make_leader,
    make_node,
    settings,
)

N1, N2, N3 = ident(1), ident(2), ident(3)
HEARTBEAT = Timeout(TimeoutKind.HEARTBEAT)
NO_BATCH = settings(raft_commit_batch_interval_ms=0)


def sends(fx: list, kind: type) -> list[Send]:  # type: ignore[type-arg]
    return [e for e in fx if isinstance(e, Send) and isinstance(e.rpc.payload, kind)]


def accept(node: Node, fx: list) -> None:  # type: ignore[type-arg]
    """Answer every append in ``fx`` as a follower that accepted it (etcd's acceptAndReply)."""
    for send in sends(fx, AppendEntries):
        request = send.rpc.payload
        match = request.prev_log_index + len(request.entries)
        node.rpc(send.to, AppendEntriesResponse(request.prev_log_index, True, match, match))


def committed_noop_leader(size: int = 3) -> Node:
    """A leader that has committed the noop of its term (etcd's commitNoopEntry)."""
    node = make_leader(members=ids(size), settings=NO_BATCH)
    accept(node, node.effects)
    assert node.core.commit_index == node.log.last_index()
    return node


# -- 5.1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.FOLLOWER, State.CANDIDATE, State.LEADER])
def test_5_1_update_term_from_message(state: State) -> None:
    node = make_node(1)
    if state is State.CANDIDATE:
        node.fire()
    elif state is State.LEADER:
        node = make_leader()
    assert node.state is state
    newer = node.core.current_term + 5
    node.rpc(N2, AppendEntries(1, 1, [], 0, 0), term=newer)
    assert node.core.current_term == newer
    assert node.state is State.FOLLOWER


def test_5_1_reject_stale_term_message() -> None:
    node = make_node(1, term=2)
    fx = node.rpc(N2, AppendEntries(1, 1, entries_of([1]), 2, 0), term=1)
    assert [s.rpc.payload for s in sends(fx, NotifyTerm)] == [NotifyTerm()]
    assert node.log.last_index() == 1 and node.core.leader is None


# -- 5.2 -------------------------------------------------------------------------------------


def test_5_2_start_as_follower() -> None:
    assert make_node(1).state is State.FOLLOWER


def test_5_2_leader_broadcasts_heartbeats() -> None:
    node = committed_noop_leader()
    fx = node.handle(HEARTBEAT, now=200)
    beats = sends(fx, AppendEntries)
    assert sorted(s.to.node for s in beats) == ["n2", "n3"]
    for beat in beats:
        assert beat.rpc.payload.entries == [] and beat.rpc.payload.commit_index == 2


@pytest.mark.parametrize("state", [State.FOLLOWER, State.CANDIDATE])
def test_5_2_nonleader_starts_election(state: State) -> None:
    node = make_node(1)
    if state is State.CANDIDATE:
        node.fire()
    term = node.core.current_term
    fx = node.fire()
    assert node.state is State.CANDIDATE
    assert node.core.current_term == term + 1
    assert node.core.votes.get("n1") is True
    requests = sends(fx, RequestVote)
    assert sorted(s.to.node for s in requests) == ["n2", "n3"]
    assert all(s.rpc.term == term + 1 for s in requests)
    assert all(
        (s.rpc.payload.last_log_index, s.rpc.payload.last_log_term) == (1, 1) for s in requests
    )


@pytest.mark.parametrize(
    ("size", "votes", "state"),
    [
        (1, {}, State.LEADER),
        (3, {2: True, 3: True}, State.LEADER),
        (3, {2: True}, State.LEADER),
        (5, {2: True, 3: True, 4: True, 5: True}, State.LEADER),
        (5, {2: True, 3: True, 4: True}, State.LEADER),
        (5, {2: True, 3: True}, State.LEADER),
        (3, {2: False, 3: False}, State.FOLLOWER),
        (5, {2: False, 3: False, 4: False, 5: False}, State.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, State.FOLLOWER),
        (3, {}, State.CANDIDATE),
        (5, {2: True}, State.CANDIDATE),
        (5, {2: False, 3: False}, State.CANDIDATE),
        (5, {}, State.CANDIDATE),
    ],
)
def test_5_2_leader_election_in_one_round(size: int, votes: dict[int, bool], state: State) -> None:
    node = make_node(1, ids(size))
    if node.state is not State.LEADER:
        node.fire()
    for peer, vote in votes.items():
        if node.state is State.CANDIDATE:
            node.rpc(ident(peer), Vote(vote))
    assert node.state is state
    assert node.core.current_term == 2


@pytest.mark.parametrize(
    ("voted_for", "candidate", "granted"),
    [
        (None, 2, True),
        (None, 3, True),
        ("n2", 2, True),
        ("n3", 3, True),
        ("n2", 3, False),
        ("n3", 2, False),
    ],
)
def test_5_2_follower_votes_first_come_first_served(
    voted_for: str | None, candidate: int, granted: bool
) -> None:
    node = make_node(1, term=1, voted_for=voted_for)
    fx = node.rpc(ident(candidate), RequestVote(last_log_index=1, last_log_term=1), term=1)
    assert [s.rpc.payload for s in sends(fx, Vote)] == [Vote(granted)]


@pytest.mark.parametrize("leader_term", [2, 3])
def test_5_2_candidate_falls_back_to_a_legitimate_leader(leader_term: int) -> None:
    node = make_node(1)
    node.fire()
    assert node.state is State.CANDIDATE and node.core.current_term == 2
    node.rpc(N2, AppendEntries(1, 1, [], 0, 0), term=leader_term)
    assert node.state is State.FOLLOWER
    assert node.core.current_term == leader_term


@pytest.mark.parametrize("state", [State.FOLLOWER, State.CANDIDATE])
def test_5_2_election_timeout_is_randomized(state: State) -> None:
    s = settings(raft_election_timeout_ms=1000, raft_election_timeout_ms_max=2000)
    node = make_node(1, settings=s, rand=random.Random(7).random)
    seen: set[int] = set()
    for _ in range(500):
        node.fire()  # follower -> candidate, or candidate -> candidate
        if state is State.FOLLOWER:
            node.rpc(N2, AppendEntries(1, 1, [], 0, 0), term=node.core.current_term + 1)
        assert node.timeout is not None and node.timeout.kind is TimeoutKind.ELECTION
        seen.add(node.timeout.ms // 100)  # etcd's ticks: a tenth of the minimum
    assert seen == set(range(10, 20))


@pytest.mark.parametrize("state", [State.FOLLOWER, State.CANDIDATE])
def test_5_2_election_timeouts_rarely_conflict(state: State) -> None:
    s = settings(raft_election_timeout_ms=1000, raft_election_timeout_ms_max=2000)
    rng = random.Random(11)
    nodes = [make_node(i, ids(5), settings=s, rand=rng.random) for i in range(1, 6)]
    conflicts = 0
    rounds = 300
    for _ in range(rounds):
        ticks = []
        for node in nodes:
            if state is State.CANDIDATE or node.state is State.CANDIDATE:
                node.fire()
            else:
                node.rpc(N1 if node.core.self_id != N1 else N2, AppendEntries(1, 1, [], 0, 0))
            ticks.append(node.timeout.ms // 100)  # type: ignore[union-attr]
        if ticks.count(min(ticks)) > 1:
            conflicts += 1
    assert conflicts / rounds <= 0.3


# -- 5.3 -------------------------------------------------------------------------------------


def test_5_3_leader_starts_replication() -> None:
    node = committed_noop_leader()
    last = node.log.last_index()
    fx = node.handle(CommitBatch([("c", ("k", "some data"))]), now=1)
    assert node.log.last_index() == last + 1
    assert node.core.commit_index == last
    for send in sends(fx, AppendEntries):
        assert send.rpc.payload == AppendEntries(last, 2, [Entry(2, "k", "some data")], last, 2)
    assert any(isinstance(e, PersistState) for e in fx) is False  # appends are log effects


def test_5_3_leader_commits_and_announces_the_commit() -> None:
    node = committed_noop_leader()
    last = node.log.last_index()
    fx = node.handle(CommitBatch([("c", ("k", "some data"))]), now=1)
    accept(node, fx)
    assert node.core.commit_index == last + 1
    assert node.applied[-1] == (last + 1, Entry(2, "k", "some data"))
    fx = node.handle(HEARTBEAT, now=300)
    assert all(s.rpc.payload.commit_index == last + 1 for s in sends(fx, AppendEntries))


@pytest.mark.parametrize(
    ("size", "acceptors", "committed"),
    [
        (1, set(), True),
        (3, set(), False),
        (3, {2}, True),
        (3, {2, 3}, True),
        (5, set(), False),
        (5, {2}, False),
        (5, {2, 3}, True),
        (5, {2, 3, 4}, True),
        (5, {2, 3, 4, 5}, True),
    ],
)
def test_5_3_leader_acknowledges_commit_on_a_majority(
    size: int, acceptors: set[int], committed: bool
) -> None:
    node = committed_noop_leader(size) if size > 1 else make_node(1, [N1], settings=NO_BATCH)
    last = node.log.last_index()
    fx = node.handle(CommitBatch([("c", ("k", "v"))]), now=1)
    for send in sends(fx, AppendEntries):
        if int(send.to.node[1:]) in acceptors:
            request = send.rpc.payload
            match = request.prev_log_index + len(request.entries)
            node.rpc(send.to, AppendEntriesResponse(request.prev_log_index, True, match, match))
    assert (node.core.commit_index > last) is committed


@pytest.mark.parametrize("old_terms", [[], [2], [1, 2], [1]])
def test_5_3_leader_commits_preceding_entries(old_terms: list[int]) -> None:
    node = make_leader(entries=entries_of(old_terms), term=2, settings=NO_BATCH)
    assert node.core.current_term == 3
    fx = node.handle(CommitBatch([("c", ("k", "some data"))]), now=1)
    accept(node, node.effects + fx)
    applied = [(e.term, e.command) for _, e in node.applied]
    expected = [(t, ("cmd", i)) for i, t in enumerate(old_terms, start=2)]
    assert applied == [*expected, (3, "noop"), (3, "some data")]


@pytest.mark.parametrize(
    ("count", "commit"),
    [(1, 1), (2, 2), (2, 1)],
)
def test_5_3_follower_applies_what_the_leader_committed(count: int, commit: int) -> None:
    node = make_node(1, term=2)
    entries = [Entry(2, i, f"data{i}") for i in range(count)]
    fx = node.rpc(N2, AppendEntries(1, 1, entries, 1 + commit, 0))
    applied = [item.entry for e in fx if isinstance(e, Apply) for item in e.items]
    assert node.core.commit_index == 1 + commit
    assert applied == entries[:commit]


@pytest.mark.parametrize(
    ("prev_term", "prev_index", "accepted", "match"),
    [
        (1, 1, True, 1),  # matches the committed base entry
        (1, 2, True, 2),  # matches an uncommitted entry
        (2, 3, True, 3),
        (1, 3, False, 2),  # mismatch at 3: truncated, report our new end
        (3, 4, False, 3),  # beyond our log
    ],
)
def test_5_3_follower_checks_the_previous_entry(
    prev_term: int, prev_index: int, accepted: bool, match: int
) -> None:
    node = make_node(1, entries=entries_of([1, 2]), term=2)
    fx = node.rpc(N2, AppendEntries(prev_index, prev_term, [], 1, 0))
    (reply,) = sends(fx, AppendEntriesResponse)
    assert reply.rpc.payload == AppendEntriesResponse(prev_index, accepted, match, 1)


@pytest.mark.parametrize(
    ("prev", "new_terms", "expected_terms"),
    [
        (LogPos(3, 2), [3], [1, 1, 2, 3]),
        (LogPos(2, 1), [3, 4], [1, 1, 3, 4]),
        (LogPos(1, 1), [1], [1, 1, 2]),
        (LogPos(1, 1), [3], [1, 3]),
    ],
)
def test_5_3_follower_deletes_conflicts_and_appends_new_entries(
    prev: LogPos, new_terms: list[int], expected_terms: list[int]
) -> None:
    node = make_node(1, entries=entries_of([1, 2]), term=2)
    node.rpc(
        N2,
        AppendEntries(
            prev.index, prev.term, entries_of(new_terms, first_index=prev.index + 1), 1, 0
        ),
    )
    assert node.log.terms() == expected_terms


FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = [
    [1, 1, 1, 4, 4, 5, 5, 6, 6],
    [1, 1, 1, 4],
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    [1, 1, 1, 4, 4, 4, 4],
    [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
]


@pytest.mark.parametrize("follower_terms", FIGURE_7_FOLLOWERS)
def test_5_3_leader_brings_follower_logs_into_agreement(follower_terms: list[int]) -> None:
    # The shared base entry (index 1, term 1) stands in for etcd's index 0.
    lead_entries = entries_of(FIGURE_7_LEADER)
    last = 1 + len(lead_entries)
    lead = make_node(1, entries=lead_entries, applied=last, term=8, settings=NO_BATCH)
    follower = make_node(2, entries=entries_of(follower_terms), term=7, settings=NO_BATCH)
    cluster = Cluster([lead, follower])  # n3 exists only as a vote
    cluster.fire(1)
    cluster.deliver()
    cluster.handle(1, RaftRpc(lead.core.current_term, N3, Vote(True)))
    assert lead.state is State.LEADER and lead.core.current_term == 9
    cluster.handle(1, CommitBatch([("c", ("k", "new"))]))
    for _ in range(40):
        cluster.deliver()
        if follower.log.items == lead.log.items:
            break
        cluster.now += 200
        cluster.handle(1, HEARTBEAT)
    assert follower.log.items == lead.log.items
    cluster.now += 200
    cluster.handle(1, HEARTBEAT)  # carries the final commit index
    cluster.deliver()
    assert follower.core.commit_index == lead.core.commit_index == lead.log.last_index()


# -- 5.4.1 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("terms", "term"), [([1], 2), ([1, 2], 3)])
def test_5_4_1_vote_request_carries_the_last_log_position(terms: list[int], term: int) -> None:
    node = make_node(1)
    node.rpc(N2, AppendEntries(1, 1, entries_of(terms), 0, 0), term=term - 1)
    fx = node.fire()
    requests = sends(fx, RequestVote)
    assert sorted(s.to.node for s in requests) == ["n2", "n3"]
    for send in requests:
        assert send.rpc.term == term
        assert send.rpc.payload.last_log_index == 1 + len(terms)
        assert send.rpc.payload.last_log_term == terms[-1]


@pytest.mark.parametrize(
    ("terms", "cand_term", "cand_index", "granted"),
    [
        ([1], 1, 2, True),
        ([1], 1, 3, True),
        ([1, 1], 1, 2, False),
        ([1], 2, 2, True),
        ([1], 2, 3, True),
        ([1, 1], 2, 2, True),
        ([2], 1, 2, False),
        ([2], 1, 3, False),
        ([2, 2], 1, 2, False),
        ([1, 1], 1, 2, False),
    ],
)
def test_5_4_1_voter_refuses_candidates_with_older_logs(
    terms: list[int], cand_term: int, cand_index: int, granted: bool
) -> None:
    node = make_node(1, [N1, N2], entries=entries_of(terms))
    fx = node.rpc(N2, RequestVote(last_log_index=cand_index, last_log_term=cand_term), term=3)
    assert [s.rpc.payload for s in sends(fx, Vote)] == [Vote(granted)]


# -- 5.4.2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("match", "commit"), [(2, 1), (3, 1), (4, 4), (5, 5)])
def test_5_4_2_leader_only_commits_entries_of_its_term_by_counting(match: int, commit: int) -> None:
    node = make_leader(members=[N1, N2], entries=entries_of([1, 2]), term=2, settings=NO_BATCH)
    assert node.core.current_term == 3 and node.core.first_current_term_log_index == 4
    node.handle(CommitBatch([("c", ("k", "v"))]), now=1)
    node.rpc(N2, AppendEntriesResponse(1, True, match, 0), now=2)
    assert node.core.commit_index == commit
