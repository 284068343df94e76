"""Administrative commands, initial states, snapshot installation and status output."""

from __future__ import annotations

import pytest

from waraft.core.config import make_config
from waraft.core.effects import (
    InstallSnapshot,
    PersistState,
    Reply,
    ResetLog,
    Send,
    StateChanged,
)
from waraft.core.events import (
    Bootstrap,
    Disable,
    Enable,
    Promote,
    Resign,
    SnapshotAvailable,
    StorageIncomplete,
    Timeout,
    TriggerElection,
)
from waraft.core.rpc import MAX_TERM, AppendEntries, AppendEntriesResponse, RequestVote, Vote
from waraft.core.types import DurableState, ElectionType, LogPos, State, TimeoutKind

from .fakes import Node, ident, ids, make_leader, make_node, open_snapshot, settings

N1, N2, N3 = ident(1), ident(2), ident(3)


def fresh(n: int = 1) -> Node:
    node = make_node(n, base=LogPos(0, 0), storage_config=False)
    assert node.state is State.STALLED
    return node


# -- initial state ---------------------------------------------------------------------------


def test_initial_states() -> None:
    assert make_node(1, base=LogPos(0, 0), storage_config=False).state is State.STALLED
    assert make_node(1, storage_config=False).state is State.STALLED  # data but no config
    assert make_node(1, base=LogPos(0, 0)).state is State.STALLED  # config but nothing applied
    assert make_node(1).state is State.FOLLOWER
    assert make_node(3, witnesses=[N3]).state is State.WITNESS
    disabled = make_node(1, durable=DurableState(4, None, "broken"), start=False)
    assert disabled.core.start(0) == [StateChanged(None, State.DISABLED)]  # nothing re-persisted
    assert disabled.core.current_term == 4 and disabled.core.disable_reason == "broken"


def test_start_emits_the_initial_state_change() -> None:
    node = make_node(2, start=False)
    fx = node.run(node.core.start(0))
    assert fx[0] == StateChanged(None, State.FOLLOWER)
    with pytest.raises(RuntimeError):
        node.core.start(0)


def test_durable_state_overrides_the_storage_term() -> None:
    node = make_node(2, durable=DurableState(9, "n3", None))
    assert (node.core.current_term, node.core.voted_for) == (9, "n3")
    plain = make_node(2, base=LogPos(5, 4))
    assert plain.core.current_term == 4


# -- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_a_sole_member_makes_it_leader() -> None:
    node = fresh()
    cfg = make_config([N1])
    fx = node.handle(Bootstrap("op", LogPos(1, 1), cfg, {"x": 1}))
    # The term is stored before the data lands: data without a state file means it was lost.
    assert fx == [
        PersistState(DurableState(1, None, None)),
        InstallSnapshot("op", "bootstrap", LogPos(1, 1), config=cfg, data={"x": 1}),
    ]
    fx = open_snapshot(node, fx[-1])
    assert fx[0] == ResetLog(LogPos(1, 1))
    assert PersistState(DurableState(1, "n1", None)) in fx
    assert node.state is State.LEADER
    assert fx[-1] == Reply("op", "ok")
    status = node.core.status(0)
    assert (status["commit_index"], status["last_applied"], status["log_last"]) == (2, 2, 2)
    assert status["config"]["membership"] == [N1]


def test_bootstrap_of_a_member_of_many_makes_it_follower() -> None:
    node = fresh(2)
    fx = node.handle(Bootstrap("op", LogPos(1, 1), make_config(ids(3)), None))
    open_snapshot(node, fx[-1])
    assert node.state is State.FOLLOWER
    assert node.core.current_term == 1 and node.core.voted_for is None


def test_bootstrap_errors() -> None:
    node = fresh()
    fx = node.handle(Bootstrap("op", LogPos(1, 1), make_config([N1]), None))
    assert node.handle(Bootstrap("op2", LogPos(1, 1), make_config([N1]))) == [
        Reply("op2", ("error", "rejected"))
    ]
    fx = open_snapshot(node, fx[-1], error="disk full")
    assert fx == [Reply("op", ("error", "disk full"))]
    assert node.state is State.STALLED
    stalled_with_data = make_node(1, storage_config=False)
    assert stalled_with_data.handle(Bootstrap("op", LogPos(1, 1), make_config([N1]))) == [
        Reply("op", ("error", "rejected"))
    ]
    follower = make_node(2)
    assert follower.handle(Bootstrap("op", LogPos(1, 1), make_config([N1]))) == [
        Reply("op", ("error", "already_bootstrapped"))
    ]


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (make_config(), "no_members"),
        (make_config([N1, N2], witnesses=[N1, N2]), "no_data_member"),
        (make_config([N1], witnesses=[N1]), "no_data_member"),
        (make_config([N2, N3]), "not_a_participant"),
    ],
)
def test_bootstrap_refuses_a_config_that_can_never_work(config: object, reason: str) -> None:
    # M4: each was answered ok and installed (last_applied 1); the replica then refused
    # every later bootstrap, and getting out meant wiping its data.
    node = fresh()
    refused = Reply("op", ("error", ("invalid_configuration", reason)))
    assert node.handle(Bootstrap("op", LogPos(1, 1), config)) == [refused]  # type: ignore[arg-type]
    assert node.handle(Promote("op", "next", True, config)) == [refused]  # type: ignore[arg-type]
    assert node.state is State.STALLED and node.core.last_applied == 0
    fx = node.handle(Bootstrap("op", LogPos(1, 1), make_config([N1, N2], witnesses=[N2])))
    assert open_snapshot(node, fx[-1])[-1] == Reply("op", "ok")


def test_bootstrap_as_a_non_voting_participant_is_allowed() -> None:
    node = fresh(3)
    config = make_config([N1, N2], participants=[N3])
    fx = node.handle(Bootstrap("op", LogPos(1, 1), config))
    assert open_snapshot(node, fx[-1])[-1] == Reply("op", "ok")
    assert node.state is State.FOLLOWER


def test_unexpected_snapshot_reports_are_ignored() -> None:
    from waraft.core.events import SnapshotOpened

    node = fresh()
    assert node.handle(SnapshotOpened("op", "bootstrap", LogPos(1, 1))) == []


# -- snapshot_available ----------------------------------------------------------------------


def test_snapshot_available_on_a_follower_goes_through_stalled() -> None:
    node = make_node(2, term=3)
    fx = node.handle(SnapshotAvailable("op", "/in/1", LogPos(50, 4)))
    assert StateChanged(State.FOLLOWER, State.STALLED) in fx
    assert fx[-1] == InstallSnapshot("op", "transfer", LogPos(50, 4), root="/in/1")
    cfg = make_config(ids(3))
    fx = open_snapshot(node, fx[-1], config=(40, cfg))
    assert ResetLog(LogPos(50, 4)) in fx
    assert PersistState(DurableState(4, None, None)) in fx
    assert node.state is State.FOLLOWER
    assert (node.core.commit_index, node.core.last_applied) == (50, 50)
    assert node.core.current_config() == cfg and node.core.config_index() == 40
    assert fx[-1].__class__ is not Reply or fx[-1] == Reply("op", "ok")
    assert Reply("op", "ok") in fx


def test_snapshot_inside_our_log_keeps_the_entries_after_it() -> None:
    """CORE-4: acknowledged entries past the snapshot's position must survive the install."""
    from waraft.core.effects import CommitCancelled, TrimLog
    from waraft.core.types import Priority

    from .fakes import entries_of

    node = make_node(2, entries=entries_of([2] * 9), term=2)  # log 1..10, applied 1
    node.rpc(N1, AppendEntries(10, 2, [], 9, 0))  # commit 9, everything applied
    node.core.last_applied = 5  # pretend storage lagged behind: applied up to 5 only
    node.core.queued = {4: ("a", Priority.HIGH), 7: ("b", Priority.LOW), 10: ("c", Priority.HIGH)}
    fx = node.handle(SnapshotAvailable("op", "/in/3", LogPos(7, 2)))
    fx = open_snapshot(node, fx[-1], config=(1, node.core.current_config()))
    assert not [e for e in fx if isinstance(e, ResetLog)]
    assert TrimLog(7) in fx
    assert node.log.last_index() == 10 and node.log.first_index() == 7
    assert (node.core.last_applied, node.core.commit_index) == (7, 9)
    cancelled = [(e.to, e.reason) for e in fx if isinstance(e, CommitCancelled)]
    assert cancelled == [("a", "cancelled"), ("b", "cancelled")]
    assert node.core.queued == {10: ("c", Priority.HIGH)}
    assert node.state is State.FOLLOWER and Reply("op", "ok") in fx
    # the kept entries are applied from the snapshot on
    node.rpc(N1, AppendEntries(10, 2, [], 10, 0))
    assert [i for i, _ in node.applied][-3:] == [8, 9, 10]


def test_snapshot_at_a_different_term_replaces_the_log() -> None:
    from .fakes import entries_of

    node = make_node(2, entries=entries_of([2] * 5), term=3)
    fx = node.handle(SnapshotAvailable("op", "/in/4", LogPos(4, 3)))
    fx = open_snapshot(node, fx[-1], config=(1, node.core.current_config()))
    assert ResetLog(LogPos(4, 3)) in fx
    assert node.log.terms() == [3] and node.log.first_index() == 4


def test_old_snapshots_are_rejected() -> None:
    node = make_node(2, base=LogPos(10, 1))
    assert node.handle(SnapshotAvailable("op", "/x", LogPos(10, 1))) == [
        Reply("op", ("error", "rejected"))
    ]
    leader = make_leader()
    assert leader.handle(SnapshotAvailable("op", "/x", LogPos(99, 9))) == [
        Reply("op", ("error", "rejected"))
    ]


def test_stalled_accepts_any_snapshot_when_empty_and_stays_on_failure() -> None:
    node = fresh(2)
    fx = node.handle(SnapshotAvailable("op", "/x", LogPos(7, 2)))
    assert node.handle(SnapshotAvailable("op2", "/y", LogPos(8, 2))) == [
        Reply("op2", ("error", "rejected"))
    ]
    fx = open_snapshot(node, fx[-1], error="bad checksum")
    assert fx == [Reply("op", ("error", "bad checksum"))]
    assert node.state is State.STALLED


def test_stalled_replica_accepts_a_snapshot_at_its_own_applied_index() -> None:
    """CORE-2: a re-enabled replica must accept the leader's snapshot at the same position."""
    node = make_node(2, base=LogPos(10, 2), term=3)
    node.handle(Disable("op", "testing"))
    node.handle(Enable("op"))
    assert node.state is State.STALLED and node.core.last_applied == 10
    fx = node.handle(SnapshotAvailable("op", "/in/2", LogPos(10, 2)))
    assert fx == [InstallSnapshot("op", "transfer", LogPos(10, 2), root="/in/2")]
    open_snapshot(node, fx[0], config=(10, node.core.current_config()))
    assert node.state is State.FOLLOWER
    assert node.handle(Disable("op", "again")) and node.handle(Enable("op"))
    assert node.handle(SnapshotAvailable("op", "/old", LogPos(9, 2))) == [
        Reply("op", ("error", "rejected"))
    ]


def test_a_transferred_snapshot_is_installed_only_from_the_current_leader() -> None:
    """A snapshot replaces data and membership: from the wire, only our leader may send one."""
    follower = make_node(2, term=3)
    follower.rpc(N1, AppendEntries(0, 0, [], 0, 0))  # N1 leads term 3
    assert follower.core.leader == N1
    for stranger in (N3.node, "intruder@10.0.0.9:1"):
        fx = follower.handle(SnapshotAvailable("op", "/in/x", LogPos(50, 4), stranger))
        assert fx == [Reply("op", ("error", "not_leader"))]
        assert follower.state is State.FOLLOWER and follower.core.last_applied == 1
    fx = follower.handle(SnapshotAvailable("op", "/in/1", LogPos(50, 4), N1.node))
    assert fx[-1] == InstallSnapshot("op", "transfer", LogPos(50, 4), root="/in/1")

    stalled = fresh(2)  # knows no leader yet: nobody's snapshot is its leader's
    fx = stalled.handle(SnapshotAvailable("op", "/in/2", LogPos(7, 2), N1.node))
    assert fx == [Reply("op", ("error", "not_leader"))]
    stalled.rpc(N1, AppendEntries(0, 0, [], 0, 0), term=2)
    assert stalled.core.leader == N1
    fx = stalled.handle(SnapshotAvailable("op", "/in/3", LogPos(7, 2), N3.node))
    assert fx == [Reply("op", ("error", "not_leader"))]
    fx = stalled.handle(SnapshotAvailable("op", "/in/4", LogPos(7, 2), N1.node))
    assert fx == [InstallSnapshot("op", "transfer", LogPos(7, 2), root="/in/4")]


def test_stalled_rejects_heartbeats_with_zero_match() -> None:
    node = fresh(2)
    fx = node.rpc(N1, AppendEntries(5, 2, [], 5, 0), term=2, now=77)
    assert [e.rpc.payload for e in fx if isinstance(e, Send)] == [
        AppendEntriesResponse(5, False, 0, 0)
    ]
    assert node.core.last_quorum_ts == 77


# -- promote ---------------------------------------------------------------------------------


def test_promote_with_config_on_an_empty_replica_matches_the_readme() -> None:
    node = fresh()
    cfg = make_config([N1])
    fx = node.handle(Promote("op", 1, True, cfg))
    assert fx == [InstallSnapshot("op", "promote", LogPos(0, 0), config=cfg)]
    fx = open_snapshot(node, fx[0])
    assert fx[-1] == Reply("op", "ok")
    status = node.core.status(0)
    assert status["state"] == "leader"
    assert status["current_term"] == 1
    assert (status["commit_index"], status["last_applied"]) == (1, 1)
    assert (status["log_first"], status["log_last"]) == (0, 1)
    assert status["leader_id"] == "n1"


def test_promote_in_stalled_without_config_is_invalid() -> None:
    node = fresh()
    assert node.handle(Promote("op", 1)) == [Reply("op", ("error", "invalid_state"))]
    assert node.handle(TriggerElection("op")) == [Reply("op", ("error", "invalid_state"))]


def test_forced_promote_takes_a_later_term_without_votes() -> None:
    node = make_node(2, term=3)
    fx = node.handle(Promote("op", "next", True), now=5)
    assert node.state is State.LEADER
    assert node.core.current_term == 4 and node.core.voted_for == "n2"
    assert fx.index(PersistState(DurableState(4, "n2", None))) < fx.index(
        StateChanged(State.FOLLOWER, State.LEADER)
    )
    assert fx[-1] == Reply("op", "ok")


def _vote_requests(fx: list[object]) -> list[RequestVote]:
    return [e.rpc.payload for e in fx if isinstance(e, Send) and e.rpc.payload != Vote(True)]


def test_promote_without_force_runs_a_forced_election_answered_when_won() -> None:
    """A review promoted a replica whose log was behind: it led with it, and the up-to-date
    members disabled themselves. Without force, promote is an election the votes decide."""
    node = make_node(2, term=3, settings=settings(raft_election_pre_vote=True))
    fx = node.handle(Promote("op", "next"), now=5)
    assert node.state is State.CANDIDATE and node.core.current_term == 4
    assert node.core.voted_for == "n2"  # its own vote, as any candidate's
    # forced: no pre-vote, and the followers' leader stickiness does not refuse it
    assert _vote_requests(fx) == [RequestVote(ElectionType.FORCE, 1, 1)] * 2
    assert not node.of(Reply, fx)  # answered when the election ends
    fx = node.rpc(N1, Vote(True), now=6)
    assert node.state is State.LEADER
    assert Reply("op", "ok") in fx


def test_promote_without_force_answers_a_lost_election() -> None:
    node = make_node(2, term=3)
    node.handle(Promote("op", "next"))
    node.rpc(N1, Vote(False))
    fx = node.rpc(N3, Vote(False))
    assert node.state is State.FOLLOWER
    assert node.of(Reply, fx) == [Reply("op", ("error", "election_lost"))]
    # undecided until the election timeout: not elected
    node = make_node(2, term=3)
    node.handle(Promote("op2", "next"))
    fx = node.fire()
    assert node.of(Reply, fx) == [Reply("op2", ("error", "not_elected"))]
    # a newer term ends it too
    node = make_node(2, term=3)
    node.handle(Promote("op3", "next"))
    fx = node.rpc(N1, AppendEntries(1, 1, [], 1, 0), term=9)
    assert node.state is State.FOLLOWER
    assert node.of(Reply, fx) == [Reply("op3", ("error", "not_elected"))]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        (2, "invalid_term"),
        ("bogus", "invalid_term"),
        (2**62 + 1, "invalid_term"),
        (2**70, "invalid_term"),
        (("next", 2), None),
        (3, None),
    ],
)
def test_promote_terms(term: object, expected: str | None) -> None:
    node = make_node(2, term=3)
    fx = node.handle(Promote("op", term, True))
    if expected is None:
        assert fx[-1] == Reply("op", "ok")
    else:
        assert fx == [Reply("op", ("error", expected))]


@pytest.mark.parametrize(("term", "election_term"), [("current", 4), ("next", 4), (7, 7)])
def test_promote_without_force_elects_at_the_requested_term(
    term: object, election_term: int
) -> None:
    node = make_node(2, term=3)
    node.handle(Promote("op", term))
    assert node.state is State.CANDIDATE and node.core.current_term == election_term


def test_promote_refusals() -> None:
    follower = make_node(2, term=3)
    follower.rpc(N1, AppendEntries(1, 1, [], 1, 0), now=1000)
    assert follower.handle(Promote("op", "current"), now=1001) == [
        Reply("op", ("error", "invalid_term"))
    ]  # this term already has a leader
    assert follower.handle(Promote("op", "next"), now=1001) == [Reply("op", ("error", "rejected"))]
    grace = follower.core.settings.raft_promotion_grace_period_secs * 1000
    follower.handle(Promote("op", "next"), now=1000 + grace)
    assert follower.state is State.CANDIDATE

    ineligible = make_node(2, settings=settings(raft_leader_eligible=False))
    assert ineligible.handle(Promote("op", "next")) == [Reply("op", ("error", "ineligible"))]
    witness = make_node(3, witnesses=[N3])
    assert witness.handle(Promote("op", "next")) == [Reply("op", ("error", "invalid_state"))]
    empty = make_node(2, storage_config=(1, make_config()))
    assert empty.state is State.FOLLOWER
    assert empty.handle(Promote("op", "next")) == [Reply("op", ("error", "invalid_configuration"))]
    # A replica removed from the partition (it may not have heard yet) leads nobody, with or
    # without force: it was promoted and showed as a second leader next to the real one.
    removed = make_node(4, members=[N1, N2, N3])
    for force in (False, True):
        answer = removed.handle(Promote("op", "next", force))
        assert answer == [Reply("op", ("error", "not_a_member"))]
    assert removed.state is State.FOLLOWER


def test_forced_promote_seeds_the_quorum_time() -> None:
    s = settings(raft_leader_check_quorum=True, raft_liveness_grace_period_ms=1000)
    node = make_node(2, term=3, settings=s)
    node.rpc(N1, AppendEntries(1, 1, [], 1, 0), now=5)
    node.core.heartbeat_reply_ts = {"n1": 1, "n3": 1}
    node.handle(Promote("op", "next", True), now=10)
    assert node.state is State.LEADER and node.core.last_quorum_ts == 10
    node.handle(Timeout(TimeoutKind.HEARTBEAT), now=900)
    assert node.state is State.LEADER


def test_promote_a_leader_to_a_later_term_repeats_leader() -> None:
    node = make_leader()
    fx = node.handle(Promote("op", "next", True), now=5)
    assert StateChanged(State.LEADER, State.LEADER) in fx
    assert node.core.current_term == 3 and node.log.get(3).term == 3


def test_promote_with_config_on_a_live_replica() -> None:
    node = make_node(2, term=3)
    other = make_config([N1])
    assert node.handle(Promote("op", "next", False, other)) == [
        Reply("op", ("error", "already_bootstrapped"))
    ]
    same = node.core.current_config()
    assert node.handle(Promote("op", "next", True, same))[-1] == Reply("op", "ok")


# -- trigger_election / resign ---------------------------------------------------------------


def test_trigger_election() -> None:
    node = make_node(2, term=3)
    fx = node.handle(TriggerElection("op"))
    assert node.state is State.CANDIDATE and node.core.current_term == 4
    assert fx[-1] == Reply("op", "ok")
    fx = node.handle(TriggerElection("op", 10))
    assert StateChanged(State.CANDIDATE, State.CANDIDATE) in fx
    assert node.core.current_term == 11  # advanced to 10, then the election's own +1
    assert node.handle(TriggerElection("op", 3)) == [Reply("op", ("error", "rejected"))]
    ineligible = make_node(2, settings=settings(raft_leader_eligible=False))
    assert ineligible.handle(TriggerElection("op")) == [Reply("op", ("error", "ineligible"))]
    witness = make_node(3, witnesses=[N3])
    assert witness.handle(TriggerElection("op")) == [Reply("op", ("error", "invalid_state"))]


@pytest.mark.parametrize(
    "term_or_offset",
    [MAX_TERM, MAX_TERM + 1, ("next", 2**70), ("next", MAX_TERM), -1, 2**64, ("next", True)],
)
def test_trigger_election_refuses_a_term_past_max_term(term_or_offset: object) -> None:
    # M1: answered ok and moved the replica to a term every receiver drops as malformed (shut
    # out for good), or to one the durable state cannot encode (the server crashed).
    node = make_node(2, term=3)
    fx = node.handle(TriggerElection("op", term_or_offset))  # type: ignore[arg-type]
    assert fx == [Reply("op", ("error", "invalid_term"))]
    assert node.state is State.FOLLOWER and node.core.current_term == 3


@pytest.mark.parametrize("term_or_offset", [MAX_TERM + 1, ("next", 2**70), -1])
def test_promote_refuses_a_term_past_max_term(term_or_offset: object) -> None:
    node = make_node(2, term=3)
    fx = node.handle(Promote("op", term_or_offset, True))  # type: ignore[arg-type]
    assert fx == [Reply("op", ("error", "invalid_term"))]
    assert node.state is State.FOLLOWER and node.core.current_term == 3


def test_resign() -> None:
    node = make_leader()
    fx = node.handle(Resign("op"))
    assert node.state is State.FOLLOWER and fx[-1] == Reply("op", "ok")
    assert node.core.leader is None
    assert node.handle(Resign("op")) == [Reply("op", ("error", "not_leader"))]


# -- disable / enable ------------------------------------------------------------------------


def test_disable_persists_the_reason_and_enable_moves_to_stalled() -> None:
    node = make_leader()
    fx = node.handle(Disable("op", "operator request"))
    assert node.state is State.DISABLED
    term = node.core.current_term
    assert PersistState(DurableState(term, "n1", "operator request")) in fx
    assert fx[-1] == Reply("op", "ok")
    assert node.core.status(0)["disable_reason"] == "operator request"
    fx = node.handle(Disable("op", "another"))
    assert PersistState(DurableState(term, "n1", "another")) in fx
    fx = node.handle(Enable("op"))
    assert node.state is State.STALLED
    assert PersistState(DurableState(term, "n1", None)) in fx
    assert fx[-1] == Reply("op", "ok")
    assert node.handle(Enable("op")) == [Reply("op", ("error", "already_enabled"))]


def test_disable_without_a_reason_gets_a_default() -> None:
    node = make_node(2)
    node.handle(Disable("op", None))
    assert node.core.disable_reason == "No reason specified."
    assert node.handle(Promote("op", "next")) == [Reply("op", ("error", "invalid_state"))]
    assert node.handle(SnapshotAvailable("op", "/x", LogPos(99, 1))) == [
        Reply("op", ("error", "rejected"))
    ]


# -- status ----------------------------------------------------------------------------------


def test_status_fields() -> None:
    node = make_leader()
    status = node.core.status(0)
    assert set(status) >= {
        "state", "id", "table", "partition", "current_term", "voted_for", "commit_index",
        "last_applied", "leader_name", "leader_id", "pending_high", "pending_low",
        "pending_read", "queued", "next_indices", "match_indices", "log_first", "log_last",
        "votes", "inflight_applies", "disable_reason", "config", "config_index", "witness",
    }  # fmt: skip
    assert status["state"] == "leader" and status["id"] == "n1"
    assert status["config"]["version"] == 1


def test_status_flags() -> None:
    s = settings(raft_liveness_grace_period_ms=100, raft_stale_grace_period_entries=2)
    assert fresh().core.status_flags(0) == (False, True, True)
    follower = make_node(2, settings=s)
    assert follower.core.status_flags(0) == (False, True, True)
    follower.rpc(N1, AppendEntries(1, 1, [], 1, 0), now=10)
    assert follower.core.status_flags(50) == (True, False, False)
    assert follower.core.status_flags(111) == (False, True, True)
    follower.rpc(N1, AppendEntries(1, 1, [], 3, 0), now=200)
    assert follower.core.status_flags(200) == (True, True, True)  # 2 entries behind
    witness = make_node(3, witnesses=[N3], settings=s)
    witness.rpc(N1, AppendEntries(1, 1, [], 1, 0), now=10)
    assert witness.core.status_flags(20) == (True, False, True)
    leader = make_leader(settings=settings(raft_max_heartbeat_age_msecs=100))
    assert leader.core.status_flags(100) == (True, False, False)
    assert leader.core.status_flags(101) == (False, True, True)
    # The status carries them as of when it is asked (what `waraft status` shows).
    assert {k: leader.core.status(101)[k] for k in ("live", "lagging", "stale")} == {
        "live": False,
        "lagging": True,
        "stale": True,
    }


def test_current_config_prefers_a_newer_log_config() -> None:
    from waraft.core.types import CONFIG, Entry

    new = make_config(ids(5))
    node = make_node(2, entries=[Entry(1, "c", (CONFIG, new))])
    assert node.core.current_config() == new and node.core.config_index() == 2
    old = make_node(2, entries=[Entry(1, "c", (CONFIG, new))], applied=2, storage_config=(2, new))
    assert old.core.config_index() == 2


def test_a_replica_whose_storage_lacks_its_data_goes_stalled_and_asks_for_a_snapshot() -> None:
    follower = make_node(2)
    assert follower.state is State.FOLLOWER
    follower.handle(StorageIncomplete("incomplete"), now=10)
    assert follower.state is State.STALLED
    # It takes no part: a heartbeat is refused with match 0, which makes the leader send
    # a snapshot, and it grants no vote.
    fx = follower.rpc(N1, AppendEntries(3, 1, [], 3), now=11)
    assert [e.rpc.payload for e in fx if isinstance(e, Send)] == [
        AppendEntriesResponse(3, False, 0, 0)
    ]
    follower.handle(StorageIncomplete("again"), now=12)  # stalled already: nothing more
    assert follower.state is State.STALLED
