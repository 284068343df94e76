"""Leader replication and the follower side: pipelining, caps, probes, truncation, witnesses."""

from __future__ import annotations

from typing import Any

from waraft.core.effects import (
    Apply,
    CommitCancelled,
    PersistState,
    RequestSnapshot,
    Send,
    SetTimeout,
    StateChanged,
    TruncateLog,
)
from waraft.core.events import AdjustConfig, CommitBatch, HandoverRequest, Timeout
from waraft.core.rpc import AppendEntries, AppendEntriesResponse
from waraft.core.types import NOOP, NOOP_OMITTED, DurableState, Entry, LogPos, State, TimeoutKind

from .fakes import entries_of, entry_size, ident, ids, make_leader, make_node, settings

N1, N2, N3 = ident(1), ident(2), ident(3)
HEARTBEAT = Timeout(TimeoutKind.HEARTBEAT)


def appends_to(fx: list, peer: object) -> list[AppendEntries]:  # type: ignore[type-arg]
    return [e.rpc.payload for e in fx if isinstance(e, Send) and e.to == peer]


def commits(n: int, start: int = 0) -> CommitBatch:
    return CommitBatch([(f"c{i}", (f"k{i}", ("write", i))) for i in range(start, start + n)])


# -- leader ----------------------------------------------------------------------------------


def test_pipelining_advances_next_index_on_send() -> None:
    node = make_leader()
    assert node.core.next_indices == {"n2": 3, "n3": 3}
    node.handle(commits(3))
    fx = node.handle(HEARTBEAT, now=5)
    sent = appends_to(fx, N2)[0]
    assert (sent.prev_log_index, sent.prev_log_term, len(sent.entries)) == (2, 2, 3)
    assert node.core.next_indices["n2"] == 6
    # a second round does not resend what is in flight
    fx = node.handle(HEARTBEAT, now=10)
    again = appends_to(fx, N2)[0]
    assert (again.prev_log_index, again.entries) == (5, [])


def test_entry_count_cap_per_message() -> None:
    node = make_leader(settings=settings(raft_max_log_entries_per_heartbeat=4))
    node.handle(commits(20))  # more than the batch max (15): replicated at once
    first = appends_to(node.effects, N2)[0]
    assert len(first.entries) == 4
    assert node.core.next_indices["n2"] == 7
    fx = node.handle(HEARTBEAT, now=200)
    assert len(appends_to(fx, N2)[0].entries) == 4


def test_byte_cap_per_message_keeps_at_least_one_entry() -> None:
    big = CommitBatch([(f"c{i}", (f"k{i}", "x" * 1000)) for i in range(20)])
    node = make_leader(settings=settings(raft_max_heartbeat_size=2500))
    node.handle(big)
    sent = appends_to(node.effects, N2)[0]
    assert 1 <= len(sent.entries) <= 3
    node2 = make_leader(settings=settings(raft_max_heartbeat_size=1))
    node2.handle(big)
    assert len(appends_to(node2.effects, N2)[0].entries) == 1


def test_one_append_and_one_send_per_peer_for_a_batch() -> None:
    node = make_leader(settings=settings(raft_max_log_entries_per_heartbeat=100))
    fx = node.handle(commits(40))
    kinds = [type(e).__name__ for e in fx]
    assert kinds.count("AppendLog") == 1
    assert kinds.count("Send") == 2
    assert node.log.last_index() == 42


def test_success_response_updates_match_and_commits_current_term() -> None:
    node = make_leader()
    node.handle(commits(2))
    node.handle(HEARTBEAT, now=5)
    fx = node.rpc(N2, AppendEntriesResponse(2, True, 4, 1), now=6)
    assert node.core.match_indices["n2"] == 4
    assert node.core.commit_index == 4
    apply = next(e for e in fx if isinstance(e, Apply))
    assert [i.index for i in apply.items] == [2, 3, 4]
    assert [i.reply_to for i in apply.items] == [None, "c0", "c1"]
    assert node.core.last_applied_indices["n2"] == 1


def test_failure_response_resets_next_index_to_the_followers_end() -> None:
    node = make_leader()
    node.handle(commits(5))
    node.handle(HEARTBEAT, now=5)
    assert node.core.next_indices["n2"] == 8
    node.rpc(N2, AppendEntriesResponse(7, False, 1, 1), now=6)
    assert node.core.next_indices["n2"] == 2
    fx = node.handle(HEARTBEAT, now=200)
    resend = appends_to(fx, N2)[0]
    assert resend.prev_log_index == 1 and len(resend.entries) == 6


def test_response_triggers_a_round_only_when_the_last_is_old() -> None:
    node = make_leader()
    fx = node.rpc(N2, AppendEntriesResponse(1, True, 2, 1), now=50)
    assert not appends_to(fx, N3)
    assert fx[-1] == SetTimeout(TimeoutKind.HEARTBEAT, 120)
    fx = node.rpc(N3, AppendEntriesResponse(1, True, 2, 1), now=121)
    assert appends_to(fx, N3)


def test_probe_when_the_previous_entry_is_trimmed() -> None:
    node = make_leader(base=LogPos(10, 1))
    node.log.items.extend(Entry(2, i, "x") for i in range(5))
    node.core.next_indices["n2"] = 5  # below our first index (10)
    fx = node.handle(HEARTBEAT, now=200)
    probe = appends_to(fx, N2)[0]
    last = node.log.last_index()
    assert probe == AppendEntries(last, 2, [], node.core.commit_index, 0)


def test_trim_index_is_the_lowest_member_match() -> None:
    node = make_leader()
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)
    fx = node.handle(HEARTBEAT, now=200)
    assert appends_to(fx, N2)[0].trim_index == 0  # n3 unknown
    node.rpc(N3, AppendEntriesResponse(1, True, 2, 2), now=201)
    fx = node.handle(HEARTBEAT, now=400)
    assert appends_to(fx, N3)[0].trim_index == 2


def test_non_voting_participants_get_entries_but_do_not_count() -> None:
    n4 = ident(4)
    node = make_leader(participants=[n4])
    assert appends_to(node.effects, n4)
    node.rpc(n4, AppendEntriesResponse(1, True, 2, 2), now=1)
    assert node.core.commit_index == 1  # quorum needs n2 or n3
    node.rpc(N3, AppendEntriesResponse(1, True, 2, 2), now=2)
    assert node.core.commit_index == 2


def test_only_current_term_entries_commit_by_counting() -> None:
    node = make_leader(entries=entries_of([1, 1]))  # entries 2, 3 from term 1; noop at 4
    assert node.core.first_current_term_log_index == 4
    node.rpc(N2, AppendEntriesResponse(1, True, 3, 1), now=1)
    assert node.core.commit_index == 1
    node.rpc(N2, AppendEntriesResponse(3, True, 4, 1), now=2)
    assert node.core.commit_index == 4


def test_witness_gets_stubbed_entries_capped_by_full_members() -> None:
    node = make_leader(members=[N1, N2, N3], witnesses=[N3])
    assert appends_to(node.effects, N3)[0].entries == []  # no full member holds the noop yet
    node.handle(commits(3))
    node.handle(HEARTBEAT, now=5)
    node.rpc(N2, AppendEntriesResponse(2, True, 4, 2), now=6)  # n2 holds up to 4
    node.core.next_indices["n3"] = 2
    fx = node.handle(HEARTBEAT, now=200)
    sent = appends_to(fx, N3)[0]
    assert [e.command for e in sent.entries] == [NOOP, NOOP_OMITTED, NOOP_OMITTED]
    assert [e.term for e in sent.entries] == [2, 2, 2]
    assert node.core.next_indices["n3"] == 5


def test_a_witness_gets_in_full_the_entries_written_while_it_was_a_data_member() -> None:
    """A config takes effect at its index: entries at or below the demotion were written
    while the peer held data. Stubs of them, were the demotion never committed, would stay
    in a data replica's log as the committed writes (see the simulator test
    ``test_a_demotion_never_committed_leaves_the_replica_its_committed_data``)."""
    node = make_leader(members=[N1, N2, N3])
    node.handle(commits(3), now=1)  # 3..5
    node.handle(HEARTBEAT, now=2)
    node.rpc(N2, AppendEntriesResponse(2, True, 5, 2), now=3)  # committed in its term
    node.handle(AdjustConfig("op", ("demote_to_witness", N3)), now=4)  # 6
    assert node.core.config_index() == 6 and N3 in node.core.current_config().witness
    node.handle(commits(2, start=3), now=5)  # 7..8
    node.handle(HEARTBEAT, now=6)
    node.rpc(N2, AppendEntriesResponse(2, True, 8, 2), now=7)
    node.core.next_indices["n3"] = 2
    sent = appends_to(node.handle(HEARTBEAT, now=200), N3)[0]
    commands = [e.command for e in sent.entries]
    assert commands[:4] == [NOOP, ("write", 0), ("write", 1), ("write", 2)]
    assert commands[4][0] == "config"
    assert commands[5:] == [NOOP_OMITTED, NOOP_OMITTED]
    # Sent from the demotion on, everything after it is stubbed.
    node.core.next_indices["n3"] = 6
    sent = appends_to(node.handle(HEARTBEAT, now=400), N3)[0]
    assert [e.command for e in sent.entries][1:] == [NOOP_OMITTED, NOOP_OMITTED]


def test_witness_follows_a_leader_that_is_the_only_data_replica() -> None:
    """CORE-3: with no other full member the witness cap must not stop every commit."""
    node = make_leader(members=[N1, N2, N3], witnesses=[N2, N3])
    sent = appends_to(node.effects, N2)[0]
    assert [e.command for e in sent.entries] == [NOOP]
    node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)
    assert node.core.commit_index == 2


def test_witness_cap_ignores_non_voting_data_participants() -> None:
    n4 = ident(4)
    node = make_leader(members=[N1, N2], witnesses=[N2], participants=[n4])
    assert [e.command for e in appends_to(node.effects, N2)[0].entries] == [NOOP]


def test_snapshot_requested_for_an_empty_follower() -> None:
    node = make_leader()
    fx = node.rpc(N2, AppendEntriesResponse(2, False, 0, 0), now=1)
    assert RequestSnapshot(N2, False) in fx


def test_snapshot_requested_when_needed_entries_are_trimmed() -> None:
    node = make_leader(base=LogPos(50, 1))
    fx = node.rpc(N2, AppendEntriesResponse(50, False, 20, 20), now=1)
    assert RequestSnapshot(N2, False) in fx
    fx = node.rpc(N3, AppendEntriesResponse(50, False, 50, 50), now=2)
    assert not [e for e in fx if isinstance(e, RequestSnapshot)]


def test_snapshot_requested_when_far_behind_in_applying() -> None:
    node = make_leader(settings=settings(raft_snapshot_catchup_threshold=10))
    fx = node.rpc(N2, AppendEntriesResponse(1, False, 30, 19), now=1)
    assert RequestSnapshot(N2, False) in fx
    fx = node.rpc(N2, AppendEntriesResponse(1, False, 30, 20), now=2)
    assert not [e for e in fx if isinstance(e, RequestSnapshot)]
    fx = node.rpc(N2, AppendEntriesResponse(1, False, 30, None), now=3)
    assert not [e for e in fx if isinstance(e, RequestSnapshot)]


def test_snapshot_request_marks_witnesses() -> None:
    node = make_leader(members=[N1, N2, N3], witnesses=[N3])
    fx = node.rpc(N3, AppendEntriesResponse(1, False, 0, 0), now=1)
    assert RequestSnapshot(N3, True) in fx


# -- follower --------------------------------------------------------------------------------


def test_follower_appends_and_reports_match_and_applied() -> None:
    node = make_node(2, term=2)
    node.queues.size = 1
    entries = entries_of([2, 2])
    fx = node.rpc(N1, AppendEntries(1, 1, entries, 2, 0))
    assert node.log.terms() == [1, 2, 2]
    response = next(e for e in fx if isinstance(e, Send)).rpc.payload
    assert response == AppendEntriesResponse(1, True, 3, 0)
    assert node.core.commit_index == 2
    assert [i for i, _ in node.applied] == [2]
    assert node.core.leader_commit_index == 2
    assert isinstance(fx[-1], SetTimeout) and fx[-1].kind is TimeoutKind.ELECTION


def test_follower_commit_never_passes_its_match() -> None:
    node = make_node(2, term=2, entries=entries_of([1, 1, 1]))
    node.rpc(N1, AppendEntries(1, 1, [], 9, 0))
    assert node.core.commit_index == 1  # match is prev + 0 = 1
    node.rpc(N1, AppendEntries(1, 1, entries_of([1]), 9, 0))
    assert node.core.commit_index == 2


def test_follower_rejects_out_of_range() -> None:
    node = make_node(2, term=2)
    for prev in (0, 5):
        fx = node.rpc(N1, AppendEntries(prev, 1, entries_of([2]), 0, 0))
        assert next(e for e in fx if isinstance(e, Send)).rpc.payload == AppendEntriesResponse(
            prev, False, 1, 1
        )
    trimmed = make_node(2, term=2, base=LogPos(5, 1))
    fx = trimmed.rpc(N1, AppendEntries(3, 1, [], 0, 0))
    assert fx[0].rpc.payload.success is False and fx[0].rpc.payload.match_index == 5


def test_follower_truncates_a_conflict_and_appends_the_rest() -> None:
    node = make_node(2, term=3, entries=entries_of([1, 2, 2]))
    new = entries_of([1, 3, 3])
    fx = node.rpc(N1, AppendEntries(1, 1, new, 1, 0))
    assert TruncateLog(3) in fx
    assert node.log.terms() == [1, 1, 3, 3]
    response = next(e for e in fx if isinstance(e, Send)).rpc.payload
    assert response == AppendEntriesResponse(1, True, 4, 1)


def test_follower_mismatched_previous_entry_truncates_and_rejects() -> None:
    node = make_node(2, term=3, entries=entries_of([1, 2, 2]))
    fx = node.rpc(N1, AppendEntries(3, 3, entries_of([3], first_index=4), 1, 0))
    assert TruncateLog(3) in fx
    assert node.log.terms() == [1, 1]
    response = next(e for e in fx if isinstance(e, Send)).rpc.payload
    assert response == AppendEntriesResponse(3, False, 2, 1)


def test_follower_keeps_a_longer_matching_log() -> None:
    node = make_node(2, term=2, entries=entries_of([2, 2, 2]))
    fx = node.rpc(N1, AppendEntries(1, 1, entries_of([2]), 1, 0))
    assert not [e for e in fx if isinstance(e, TruncateLog)]
    assert node.log.last_index() == 4
    assert fx[0].rpc.payload == AppendEntriesResponse(1, True, 2, 1)


def test_conflict_below_commit_index_disables_the_replica() -> None:
    node = make_node(2, term=3, entries=entries_of([2, 2]))
    node.rpc(N1, AppendEntries(1, 1, [], 3, 0))
    node.rpc(N1, AppendEntries(3, 2, [], 3, 0))
    assert node.core.commit_index == 3
    fx = node.rpc(N1, AppendEntries(1, 1, entries_of([3, 3]), 3, 0))
    assert node.state is State.DISABLED
    reason = node.core.disable_reason
    assert isinstance(reason, str) and "index 2" in reason and "commit index 3" in reason
    assert PersistState(DurableState(3, None, reason)) in fx
    assert StateChanged(State.FOLLOWER, State.DISABLED) in fx
    assert not [e for e in fx if isinstance(e, (TruncateLog, Send))]


def test_conflict_exactly_at_the_commit_index_disables_and_keeps_the_log() -> None:
    """The guard is ``conflict <= commit_index``: the committed entry AT the commit index is
    as untouchable as those below it. A leader claiming another term there means its log or
    ours is corrupt, so the replica disables itself and truncates nothing."""
    node = make_node(2, term=3, entries=entries_of([2, 2]))  # terms [1, 2, 2]
    node.rpc(N1, AppendEntries(3, 2, [], 3, 0))
    assert node.core.commit_index == 3
    fx = node.rpc(N1, AppendEntries(2, 2, entries_of([3], first_index=3), 3, 0))
    assert node.state is State.DISABLED
    reason = node.core.disable_reason
    assert isinstance(reason, str) and "index 3" in reason and "commit index 3" in reason
    assert node.log.terms() == [1, 2, 2]
    assert not [e for e in fx if isinstance(e, (TruncateLog, Send))]


def test_follower_refuses_to_truncate_its_first_entry() -> None:
    node = make_node(2, term=3, base=LogPos(5, 2), applied=5)
    node.core.commit_index = 4  # pretend: below the snapshot (cannot normally happen)
    fx = node.rpc(N1, AppendEntries(5, 3, [], 5, 0))
    assert not [e for e in fx if isinstance(e, TruncateLog)]
    assert fx[0].rpc.payload.success is False


def test_truncation_cancels_queued_commits_as_cancelled() -> None:
    node = make_leader()
    node.handle(commits(2))
    node.handle(HEARTBEAT, now=5)
    assert set(node.core.queued) == {3, 4}
    # a new leader of term 3 overwrites index 3 onwards
    fx = node.rpc(N2, AppendEntries(2, 2, [Entry(3, "x", "new")], 2, 0), term=3, now=6)
    cancelled = [e for e in fx if isinstance(e, CommitCancelled)]
    assert [(c.to, c.reason) for c in cancelled] == [("c0", "cancelled"), ("c1", "cancelled")]
    assert node.core.queued == {}
    assert node.log.terms() == [1, 2, 3]


def test_deposed_leader_keeps_queued_commits_that_later_commit() -> None:
    node = make_leader()
    node.handle(commits(1))
    node.handle(HEARTBEAT, now=5)
    node.rpc(N2, AppendEntries(3, 2, [], 0, 0), term=3, now=6)
    assert node.state is State.FOLLOWER and 3 in node.core.queued
    fx = node.rpc(N2, AppendEntries(3, 2, [], 3, 0), now=7)
    items = next(e for e in fx if isinstance(e, Apply)).items
    assert [(i.index, i.reply_to) for i in items] == [(2, None), (3, "c0")]


def test_follower_switches_to_witness_when_the_config_says_so() -> None:
    from waraft.core.config import make_config
    from waraft.core.types import CONFIG

    node = make_node(3, term=2)
    cfg = make_config(ids(3), [N3])
    fx = node.rpc(N1, AppendEntries(1, 1, [Entry(2, "c", (CONFIG, cfg))], 1, 0))
    assert node.state is State.WITNESS
    assert StateChanged(State.FOLLOWER, State.WITNESS) in fx
    back = make_config(ids(3))
    node.rpc(N1, AppendEntries(2, 2, [Entry(2, "c2", (CONFIG, back))], 1, 0))
    assert node.state is State.FOLLOWER


def test_follower_rotation_trims_in_batches() -> None:
    s = settings(raft_max_log_records_per_file=10, raft_max_log_records=5)
    node = make_node(2, term=2, settings=s)
    node.rpc(N1, AppendEntries(1, 1, entries_of([2] * 14), 15, 0))
    assert node.log.trims == []  # 15 - 5 - 1 = 9 < 10
    node.rpc(N1, AppendEntries(15, 2, entries_of([2], first_index=16), 16, 0))
    assert node.log.trims == [11]
    assert node.log.first_index() == 11


def test_rotation_by_trim_index_uses_the_leaders_trim_index() -> None:
    s = settings(
        raft_max_log_records_per_file=2, raft_max_log_records=0, raft_rotate_by_trim_index=True
    )
    node = make_node(2, term=2, settings=s)
    node.rpc(N1, AppendEntries(1, 1, entries_of([2] * 9), 10, 4))
    assert node.log.trims == [4]


def test_leader_rotation_respects_members_and_the_retained_cap() -> None:
    s = settings(
        raft_max_log_records_per_file=2, raft_max_log_records=0, raft_commit_batch_interval_ms=0
    )
    node = make_leader(settings=s)
    node.handle(commits(8))
    node.rpc(N2, AppendEntriesResponse(2, True, 10, 10), now=1)
    assert node.core.last_applied == 10
    assert node.log.trims == []  # n3's match is unknown (0)
    s2 = s.with_overrides(raft_max_retained_entries=3)
    node2 = make_leader(settings=s2)
    node2.handle(commits(8))
    node2.rpc(N2, AppendEntriesResponse(2, True, 10, 10), now=1)
    assert node2.log.trims == [7]


def test_apply_batches_are_capped_and_resume_on_notify_complete() -> None:
    from waraft.core.events import NotifyComplete

    s = settings(raft_apply_log_batch_size=3)
    node = make_node(2, term=2, settings=s)
    node.rpc(N1, AppendEntries(1, 1, entries_of([2] * 7), 8, 0))
    assert node.core.last_applied == 4
    node.queues.size = 500
    node.handle(NotifyComplete())
    assert node.core.last_applied == 4  # queue above the notify buffer
    node.queues.size = 0
    node.handle(NotifyComplete())
    assert node.core.last_applied == 7


def test_apply_byte_cap_and_full_queue() -> None:
    s = settings(raft_apply_batch_max_bytes=1)
    node = make_node(2, term=2, settings=s)
    node.queues.full = True
    node.rpc(N1, AppendEntries(1, 1, entries_of([2] * 3), 4, 0))
    assert node.core.last_applied == 1 and node.core.commit_index == 4
    node.queues.full = False
    node.rpc(N1, AppendEntries(4, 2, [], 4, 0))
    assert node.core.last_applied == 2  # one entry per apply batch


def test_entry_sizes_are_plausible() -> None:
    assert entry_size(Entry(1, "k", "x" * 10)) > 10


# -- draining a backlog on responses (CORE-6) ------------------------------------------------


def _answer_n2(node: object, fx: list, now: int) -> list:  # type: ignore[type-arg]
    """Answer every append sent to n2 in ``fx`` with success; return the new effects."""
    out: list = []  # type: ignore[type-arg]
    for request in appends_to(fx, N2):
        match = request.prev_log_index + len(request.entries)
        out += node.rpc(
            N2, AppendEntriesResponse(request.prev_log_index, True, match, match), now=now
        )  # type: ignore[attr-defined]
    return out


def test_backlog_drains_on_responses_without_waiting_for_heartbeats() -> None:
    s = settings(raft_commit_batch_interval_ms=0, raft_max_inflight_appends=1)
    node = make_leader(settings=s)
    _answer_n2(node, node.effects, now=0)  # the noop
    node.handle(commits(100), now=1)  # 102 entries; 15 per message
    fx = node.effects
    round_trips = 0
    while appends_to(fx, N2) and node.core.match_indices.get("n2", 0) < node.log.last_index():
        round_trips += 1
        assert all(len(r.entries) <= 15 for r in appends_to(fx, N2))
        fx = _answer_n2(node, fx, now=2)  # the clock does not move: no heartbeat is due
        assert not any(isinstance(e, SetTimeout) and e.kind is TimeoutKind.BATCH_COMMIT for e in fx)
    assert node.core.match_indices["n2"] == node.log.last_index() == 102
    assert round_trips == 7  # ceil(101 / 15)
    assert node.core.commit_index == 102


def test_inflight_appends_per_peer_are_bounded() -> None:
    s = settings(raft_commit_batch_interval_ms=0, raft_max_inflight_appends=3)
    node = make_leader(settings=s)
    _answer_n2(node, node.effects, now=0)  # the noop
    node.handle(commits(100), now=1)
    first = appends_to(node.effects, N2)
    assert len(first) == 1
    fx = _answer_n2(node, node.effects, now=2)
    sent = appends_to(fx, N2)
    assert len(sent) == 3  # the answered one freed a slot; the pipeline holds 3
    assert node.core.inflight["n2"] == 3
    # a failure response resets the pipeline to the follower's end of log
    node.rpc(N2, AppendEntriesResponse(20, False, 10, 10), now=3)
    assert node.core.inflight["n2"] == 0 and node.core.next_indices["n2"] == 11


def test_no_catch_up_when_the_peer_is_current_or_a_handover_runs() -> None:
    s = settings(raft_commit_batch_interval_ms=0)
    node = make_leader(settings=s)
    fx = node.rpc(N2, AppendEntriesResponse(1, True, 2, 2), now=1)
    assert not appends_to(fx, N2)  # nothing beyond the noop to send
    node.rpc(N3, AppendEntriesResponse(1, True, 2, 2), now=1)
    node.handle(commits(30), now=2)  # 15 of them go out to each peer
    node.handle(HandoverRequest("op", "n3"), now=3)
    assert node.core.handover is not None
    fx = node.rpc(N2, AppendEntriesResponse(2, True, 17, 2), now=4)
    assert not appends_to(fx, N2)


def test_witness_catch_up_respects_the_data_replica_cap() -> None:
    s = settings(raft_commit_batch_interval_ms=0)
    node = make_leader(members=[N1, N2, N3], witnesses=[N3], settings=s)
    node.handle(commits(20), now=1)
    fx = node.rpc(N3, AppendEntriesResponse(1, True, 1, 1), now=2)
    assert appends_to(fx, N3) == []  # n2 holds nothing beyond 1 yet: nothing may go to n3


# -- bytes in flight per follower (issue 14) -------------------------------------------------


def _big_commits(n: int, size: int) -> CommitBatch:
    return CommitBatch([(f"b{i}", (f"k{i}", ("write", "x" * size))) for i in range(n)])


def test_bytes_in_flight_per_peer_are_bounded() -> None:
    s = settings(
        raft_commit_batch_interval_ms=0,
        raft_max_inflight_appends=100,
        raft_max_bytes_in_flight=10_000,
    )
    node = make_leader(settings=s)
    _answer_n2(node, node.effects, now=0)  # the noop
    node.handle(_big_commits(60, 1000), now=1)  # ~60 kB: far beyond the budget
    fx = node.effects
    # n2 answers nothing: rounds keep going out, but only as empty heartbeats once full
    for now in range(200, 2000, 200):
        fx += node.handle(HEARTBEAT, now=now)
    sent = appends_to(fx, N2)
    carried = sum(len(r.entries) for r in sent)
    assert 5 <= carried <= 11  # ~10 kB of ~1 kB entries, never the whole backlog
    assert node.core.inflight_bytes["n2"] <= 10_000 + 1100
    assert all(r.entries == [] for r in sent[-5:])  # heartbeats still go out
    # acknowledgements free the budget and the rest follows, still within it per window
    delivered = node.core.match_indices.get("n2", 0)
    for _ in range(40):
        fx = _answer_n2(node, fx, now=2000)
        delivered = node.core.match_indices["n2"]
        assert node.core.inflight_bytes.get("n2", 0) <= 10_000 + 1100
        if delivered == node.log.last_index():
            break
    assert delivered == node.log.last_index()


def test_failure_response_forgets_bytes_in_flight() -> None:
    s = settings(raft_commit_batch_interval_ms=0, raft_max_bytes_in_flight=5_000)
    node = make_leader(settings=s)
    node.handle(_big_commits(20, 1000), now=1)
    assert node.core.inflight_bytes["n2"] >= 5_000
    node.rpc(N2, AppendEntriesResponse(20, False, 2, 2), now=3)
    assert node.core.inflight_bytes.get("n2", 0) == 0
    # the next round restarts from the follower's end of log with a fresh budget
    fx = node.handle(HEARTBEAT, now=200)
    resent = appends_to(fx, N2)[0]
    assert resent.prev_log_index == 2 and len(resent.entries) >= 4
    assert 0 < node.core.inflight_bytes["n2"] <= 5_000 + 1100


def test_zero_bytes_in_flight_means_unbounded() -> None:
    s = settings(
        raft_commit_batch_interval_ms=0,
        raft_max_inflight_appends=100,
        raft_max_bytes_in_flight=0,
        raft_max_log_entries_per_heartbeat=100,
    )
    node = make_leader(settings=s)
    node.handle(_big_commits(60, 1000), now=1)
    assert sum(len(r.entries) for r in appends_to(node.effects, N2)) == 60


# -- log retention in bytes (issue 14) -------------------------------------------------------


def test_rotation_by_bytes_trims_applied_entries_beyond_the_budget() -> None:
    s = settings(raft_commit_batch_interval_ms=0, raft_max_retained_bytes=5000)
    node = make_leader(settings=s)
    node.handle(_big_commits(8, 1000), now=1)
    node.rpc(N2, AppendEntriesResponse(2, True, 10, 10), now=2)
    assert node.core.last_applied == 10
    # n3's match is unknown (0) and the entry-count rules keep everything, but the bytes do
    # not fit: rotation keeps the newest applied entries within 3/4 of the budget
    assert node.log.trims, "no byte-based trim"
    first = node.log.first_index()
    kept = sum(entry_size(node.log.get(i)) for i in range(first, 11))  # type: ignore[arg-type]
    assert kept <= 5000 * 3 // 4
    assert first <= 8  # the three newest (~1 kB each) are kept
    # without a byte budget nothing is trimmed
    node2 = make_leader(settings=s.with_overrides(raft_max_retained_bytes=0))
    node2.handle(_big_commits(8, 1000), now=1)
    node2.rpc(N2, AppendEntriesResponse(2, True, 10, 10), now=2)
    assert node2.log.trims == []


def test_no_byte_floor_is_sought_while_the_last_trim_is_on_its_way_to_the_provider() -> None:
    # A real provider trims when the log process gets to it; until then it still counts the
    # trimmed entries' bytes, so a floor computed from them would trim too much (and finding
    # it walked a quarter of the log on every apply).
    s = settings(raft_commit_batch_interval_ms=0, raft_max_retained_bytes=5000)
    node = make_leader(settings=s)
    node.log.defer_trims = True
    node.handle(_big_commits(8, 1000), now=1)
    node.rpc(N2, AppendEntriesResponse(2, True, 10, 10), now=2)
    assert len(node.log.trims) == 1 and node.log.first == 1  # emitted, not landed
    first_trim = node.log.trims[0]
    calls = node.log.retained_calls
    node.handle(_big_commits(4, 1000), now=3)
    node.rpc(N2, AppendEntriesResponse(2, True, 14, 14), now=4)
    assert node.core.last_applied == 14
    assert node.log.retained_calls == calls, "the provider's stale sizes were walked"
    assert node.log.trims == [first_trim]
    node.log.land_trims()
    node.handle(_big_commits(1, 1000), now=5)
    node.rpc(N2, AppendEntriesResponse(2, True, 15, 15), now=6)
    assert node.log.retained_calls > calls, node.log.trims
    assert len(node.log.trims) == 2 and node.log.trims[1] > first_trim, node.log.trims


def test_rotation_by_bytes_never_trims_unapplied_entries() -> None:
    s = settings(raft_commit_batch_interval_ms=0, raft_max_retained_bytes=1000)
    node = make_leader(settings=s)
    node.handle(_big_commits(8, 1000), now=1)
    node.rpc(N2, AppendEntriesResponse(2, True, 5, 5), now=2)  # commits up to 5 only
    assert node.core.last_applied == 5
    assert node.log.first_index() == 5  # the last applied entry alone exceeds the budget


def test_rotation_by_bytes_uses_the_node_share_and_a_lagging_follower_gets_a_snapshot() -> None:
    # No byte bound of the partition's own: the provider's share of the node's budget (the
    # other partitions of the node hold the rest) is what trims.
    s = settings(raft_commit_batch_interval_ms=0, raft_max_retained_bytes=0)
    node = make_leader(settings=s)
    node.log.node_share = 5000
    node.handle(_big_commits(8, 1000), now=1)
    node.rpc(N2, AppendEntriesResponse(2, True, 10, 10), now=2)
    assert node.core.last_applied == 10
    first = node.log.first_index()
    assert first > 2, "the node share did not trim"
    kept = sum(entry_size(node.log.get(i)) for i in range(first, 11))  # type: ignore[arg-type]
    assert kept <= 5000 * 3 // 4
    # n3 never acknowledged anything past the noop: what it needs is gone, so a snapshot
    fx = node.rpc(N3, AppendEntriesResponse(2, False, 1, 1), now=3)
    assert RequestSnapshot(N3, False) in fx
    # the smaller of the two bounds applies: a partition bound above the share changes nothing
    node2 = make_leader(settings=s.with_overrides(raft_max_retained_bytes=50_000))
    node2.log.node_share = 5000
    node2.handle(_big_commits(8, 1000), now=1)
    node2.rpc(N2, AppendEntriesResponse(2, True, 10, 10), now=2)
    assert node2.log.first_index() == first


def test_sent_size_is_remembered_only_for_the_same_entries() -> None:
    # One round sends every member the same entries: their size is estimated once. A witness
    # is sent stubs of them, and after a new term the same indices hold other entries.
    from types import SimpleNamespace

    from waraft.core import replication
    from waraft.core.config import stub_entries_for_witness
    from waraft.core.log import approx_size

    core: Any = SimpleNamespace(sent_size_memo=None)
    big = [Entry(2, f"k{i}", ("write", "x" * 1000)) for i in range(5)]
    full = sum(approx_size(e) for e in big)
    assert replication._sent_size(core, 10, big, False) == full
    assert replication._sent_size(core, 10, big, False) == full
    stubs = stub_entries_for_witness(big)
    assert replication._sent_size(core, 10, stubs, True) == sum(approx_size(e) for e in stubs)
    assert replication._sent_size(core, 10, stubs, True) < full
    small = [Entry(3, f"k{i}", ("write", "y")) for i in range(5)]
    assert replication._sent_size(core, 10, small, False) == sum(approx_size(e) for e in small)
    assert replication._sent_size(core, 11, big[1:], False) == full - approx_size(big[0])
