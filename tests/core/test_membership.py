"""Membership changes through the leader: checks, the ten actions, effect on quorums."""

from __future__ import annotations

from typing import Any

import pytest

from waraft.core.config import make_config
from waraft.core.effects import AppendLog, Apply, CommitCancelled, Reply, Send
from waraft.core.events import AdjustConfig, NodeLiveness, Timeout
from waraft.core.rpc import AppendEntries, AppendEntriesResponse
from waraft.core.types import CONFIG, Entry, Identity, LogPos, Priority, State, TimeoutKind

from .fakes import Node, ident, ids, make_leader, make_node, settings

N1, N2, N3, N4 = ident(1), ident(2), ident(3), ident(4)


def committed_leader(**kwargs: Any) -> Node:
    """A 3-member leader whose noop is committed and applied."""
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0), **kwargs)
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)
    node.rpc(N3, AppendEntriesResponse(1, True, 2, 2), now=1)
    assert node.core.commit_index == node.core.last_applied == 2
    return node


def test_adjust_config_appends_and_replies_with_the_position() -> None:
    node = committed_leader()
    fx = node.handle(AdjustConfig("op", ("add", N4)), now=2)
    append = next(e for e in fx if isinstance(e, AppendLog))
    (entry,) = append.entries
    new = make_config([N1, N2, N3, N4])
    assert entry.command == (CONFIG, new) and entry.term == 2
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))
    # effective as soon as appended: the new member is replicated to at once
    assert node.core.current_config() == new and node.core.config_index() == 3
    assert {e.to for e in fx if isinstance(e, Send)} == {N2, N3, N4}


def test_the_new_config_counts_for_commits_immediately() -> None:
    node = committed_leader()
    node.handle(AdjustConfig("op", ("add", N4)), now=2)
    node.rpc(N2, AppendEntriesResponse(2, True, 3, 2), now=3)
    assert node.core.commit_index == 2  # 2 of 4 is not a majority
    node.rpc(N4, AppendEntriesResponse(2, True, 3, 2), now=3)
    assert node.core.commit_index == 3


def test_config_change_requires_a_quorum_in_the_term() -> None:
    node = make_leader()
    assert node.handle(AdjustConfig("op", ("add", N4))) == [Reply("op", ("error", "no_quorum"))]


def test_one_uncommitted_config_at_a_time() -> None:
    node = committed_leader()
    node.handle(AdjustConfig("op", ("add", N4)), now=2)
    assert node.handle(AdjustConfig("op", "refresh"), now=3) == [
        Reply("op", ("error", "not_ready"))
    ]
    node.rpc(N2, AppendEntriesResponse(2, True, 3, 2), now=4)
    node.rpc(N3, AppendEntriesResponse(2, True, 3, 2), now=4)
    assert node.core.last_applied == 3
    assert node.handle(AdjustConfig("op", "refresh"), now=5)[-2] == Reply(
        "op", ("ok", LogPos(4, 2))
    )


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (("grow", N4), ("invalid_action", ("grow", N4))),
        ("add", ("invalid_action", "add")),
        (("add", "n5"), ("invalid_peer", "n5")),
        (("remove", N1), "cannot_remove_self"),
        (("remove_witness", N1), "cannot_remove_self"),
        (("demote_to_witness", N1), "cannot_demote_self"),
    ],
)
def test_a_request_that_can_never_apply_gets_its_own_error_while_a_change_is_unapplied(
    action: object, reason: object
) -> None:
    # Review O, finding 6: WARaft checks readiness first, so these were all answered
    # not_ready while a config change was unapplied (or before the term's first commit).
    node = make_leader()
    assert node.handle(AdjustConfig("op", action)) == [Reply("op", ("error", reason))]
    node = committed_leader()
    node.handle(AdjustConfig("op", ("add", N4)), now=2)
    assert node.core.config_index() > node.core.last_applied
    assert node.handle(AdjustConfig("op", action), now=3) == [Reply("op", ("error", reason))]
    fx = node.handle(AdjustConfig("caller", action, reply_on_apply=True), now=3)
    assert fx == [CommitCancelled("caller", reason, Priority.HIGH, 0)]
    # what the config decides still waits for the change to apply, as in WARaft
    for valid in (("add", N2), ("remove", Identity("x", "x")), ("add", ident(5))):
        assert node.handle(AdjustConfig("op", valid), now=3) == [
            Reply("op", ("error", "not_ready"))
        ]


def test_expected_config_index() -> None:
    node = committed_leader()
    assert node.handle(AdjustConfig("op", ("add", N4), expected_index=7)) == [
        Reply("op", ("error", "config_index_mismatch"))
    ]
    assert node.handle(AdjustConfig("op", ("add", N4), expected_index=1))[-2] == Reply(
        "op", ("ok", LogPos(3, 2))
    )


def test_config_change_when_the_log_refuses() -> None:
    node = committed_leader()
    node.log.refuse_appends = True
    assert node.handle(AdjustConfig("op", ("add", N4))) == [
        Reply("op", ("error", "commit_stalled"))
    ]


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (("add", N2), "already_member"),
        (("remove", N1), "cannot_remove_self"),
        (("remove_membership", N1), "cannot_remove_self"),
        (("demote_to_witness", N1), "cannot_demote_self"),
        (("remove", Identity("x", "x")), "not_a_participant"),
        (("promote_participant_if_ready", N4), "not_a_participant"),
    ],
)
def test_action_errors_are_reported(action: object, reason: str) -> None:
    node = committed_leader()
    assert node.handle(AdjustConfig("op", action)) == [Reply("op", ("error", reason))]


def test_promote_participant_uses_handover_readiness() -> None:
    node = committed_leader(participants=[N4])
    assert node.handle(AdjustConfig("op", ("promote_participant_if_ready", N4))) == [
        Reply("op", ("error", "not_ready"))
    ]
    node.rpc(N4, AppendEntriesResponse(1, True, 2, 2), now=2)
    fx = node.handle(AdjustConfig("op", ("promote_participant_if_ready", N4)), now=3)
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))
    assert N4 in node.core.current_config().membership


def test_acceptor_path_replies_when_applied() -> None:
    node = committed_leader()
    fx = node.handle(AdjustConfig("caller", ("add", N4), reply_on_apply=True), now=2)
    assert not [e for e in fx if isinstance(e, Reply)]
    assert node.core.queued[3] == ("caller", Priority.HIGH)
    node.rpc(N2, AppendEntriesResponse(2, True, 3, 2), now=3)
    fx = node.rpc(N3, AppendEntriesResponse(2, True, 3, 2), now=3)
    items = next(e for e in fx if isinstance(e, Apply)).items
    assert [(i.index, i.reply_to) for i in items] == [(3, "caller")]
    assert node.core.cached_config == (3, make_config([N1, N2, N3, N4]))


def test_acceptor_path_failures_release_the_commit_slot() -> None:
    node = committed_leader()
    fx = node.handle(AdjustConfig("caller", ("add", N2), reply_on_apply=True))
    assert fx == [CommitCancelled("caller", "already_member", Priority.HIGH, 0)]
    follower = make_node(2)
    fx = follower.handle(AdjustConfig("caller", "refresh", reply_on_apply=True))
    assert fx == [CommitCancelled("caller", "not_leader", Priority.HIGH, 0)]
    assert follower.handle(AdjustConfig("op", "refresh")) == [Reply("op", ("error", "not_leader"))]


def test_single_member_grows_through_a_participant_that_answers() -> None:
    """M2: ``("add", peer)`` on a single member was appended at once, and its config of two
    needed an answer from ``peer``: a typo'd node id nobody runs stopped every commit, and
    undoing it was ``not_ready`` for good. The node must first answer as a participant."""
    node = make_node(1, [N1])
    assert node.state is State.LEADER
    refused = [Reply("op", ("error", "would_lose_quorum"))]
    assert node.handle(AdjustConfig("op", ("add", N2)), now=1) == refused
    assert node.handle(AdjustConfig("op", ("add_witness", N2)), now=1) == refused
    assert node.core.current_config().membership == (N1,) and node.core.commit_index == 2
    fx = node.handle(AdjustConfig("op", ("add_participant", N2)), now=1)
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))
    assert node.core.commit_index == 3  # a participant does not vote: committed alone
    assert node.handle(AdjustConfig("op", ("add", N2)), now=2) == refused  # no answer yet
    node.rpc(N2, AppendEntriesResponse(2, True, 3, 0), now=3)
    fx = node.handle(AdjustConfig("op", ("add", N2)), now=4)
    assert fx[-2] == Reply("op", ("ok", LogPos(4, 2)))
    assert node.core.commit_index == 3  # now two members: needs n2
    node.rpc(N2, AppendEntriesResponse(3, True, 4, 0), now=5)
    assert node.core.commit_index == 4


def test_a_participant_silent_for_the_window_is_no_evidence() -> None:
    node = make_node(1, [N1], participants=[N2], settings=settings(raft_election_timeout_ms=300))
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 0), now=1)
    refused = [Reply("op", ("error", "would_lose_quorum"))]
    assert node.handle(AdjustConfig("op", ("add", N2)), now=302) == refused
    node.handle(NodeLiveness(N2.node, False), now=302)
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 0), now=303)
    assert node.handle(AdjustConfig("op", ("add", N2)), now=303) == refused  # reported down
    node.handle(NodeLiveness(N2.node, True), now=304)
    fx = node.handle(AdjustConfig("op", ("add", N2)), now=304)
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))
    assert N2 in node.core.current_config().membership


def test_removed_leader_config_is_refused_but_removing_others_works() -> None:
    node = committed_leader()
    fx = node.handle(AdjustConfig("op", ("remove", N3)), now=2)
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))
    assert node.core.current_config().participants == (N1, N2)
    node.rpc(N2, AppendEntriesResponse(2, True, 3, 2), now=3)
    assert node.core.commit_index == 3  # 2 of 2


def test_demoting_a_peer_to_witness_switches_its_replication() -> None:
    node = committed_leader()
    node.handle(AdjustConfig("op", ("demote_to_witness", N3)), now=2)
    assert node.core.current_config().witness == (N3,)
    node.core.next_indices["n3"] = 2
    fx = node.handle(Timeout(TimeoutKind.HEARTBEAT), now=300)
    sent = next(e.rpc.payload for e in fx if isinstance(e, Send) and e.to == N3)
    assert all(e.command in ("noop", (CONFIG, node.core.current_config())) for e in sent.entries)


def test_removed_follower_stops_campaigning() -> None:
    node = make_node(3, term=2)
    cfg = make_config([N1, N2])
    node.rpc(N1, AppendEntries(1, 1, [Entry(2, "c", (CONFIG, cfg))], 1, 0))
    node.fire()
    assert node.state is State.FOLLOWER


def test_non_voting_participant_is_a_follower_that_never_campaigns() -> None:
    node = make_node(4, ids(3), participants=[N4])
    node.fire()
    assert node.state is State.FOLLOWER
    assert node.core.status(0)["witness"] is False


def test_a_change_whose_running_members_are_no_quorum_of_it_is_refused() -> None:
    """A config takes effect once appended: a change its own quorum cannot answer never
    commits, and no later change (not even its undoing) is allowed before it does. A review
    added a node that was not running while a member was stopped, and the partition stopped
    committing (etcd's strict reconfiguration check refuses it)."""
    node = committed_leader()
    node.handle(NodeLiveness(N3.node, False), now=2)
    refused = Reply("op", ("error", "would_lose_quorum"))
    assert node.handle(AdjustConfig("op", ("add", N4)), now=3)[-1] == refused
    assert node.handle(AdjustConfig("op", ("remove", N2)), now=3)[-1] == refused
    assert node.core.current_config().membership == (N1, N2, N3)
    # Removing the stopped member, or a participant that does not vote, keeps a quorum.
    fx = node.handle(AdjustConfig("op", ("add_participant", N4)), now=3)
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))
    node.handle(NodeLiveness(N3.node, True), now=4)
    node.rpc(N2, AppendEntriesResponse(2, True, 3, 3), now=5)
    fx = node.handle(AdjustConfig("op", ("promote_participant_if_ready", N4)), now=6)
    assert not any(r == refused for r in fx)


def test_a_member_silent_for_an_election_timeout_counts_as_not_running() -> None:
    """L1: only the failure detector's word counted; a member that stopped answering but was
    not reported down counted as running, so adding a 4th node to 3 with one cut off was
    accepted, and its config (3 of 4) never committed until the silent member came back."""
    node = committed_leader()  # n2 and n3 answered at 1; the window is 5000 ms
    refused = [Reply("op", ("error", "would_lose_quorum"))]
    node.rpc(N2, AppendEntriesResponse(2, True, 2, 2), now=5500)
    assert node.handle(AdjustConfig("op", ("add", N4)), now=5500) == refused
    assert node.core.current_config().membership == (N1, N2, N3)
    # Removing the silent member keeps a quorum (2 of 2 answer).
    fx = node.handle(AdjustConfig("op", ("remove", N3)), now=5500)
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))
    node2 = committed_leader()
    node2.rpc(N2, AppendEntriesResponse(2, True, 2, 2), now=5500)
    node2.rpc(N3, AppendEntriesResponse(2, True, 2, 2), now=5501)
    fx = node2.handle(AdjustConfig("op", ("add", N4)), now=5502)
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))


def test_a_leader_awake_for_less_than_the_window_trusts_the_detector() -> None:
    """Just elected (or woken from quiescence), nobody has had reason to answer yet: the
    failure detector alone decides for the current members, as before."""
    node = make_leader(settings=settings(raft_commit_batch_interval_ms=0), now=10_000)
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=10_001)
    assert node.core.commit_index == 2  # n3 never answered this leader
    fx = node.handle(AdjustConfig("op", ("add", N4)), now=10_002)
    assert fx[-2] == Reply("op", ("ok", LogPos(3, 2)))
