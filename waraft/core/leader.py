"""The ``leader`` state: accept commits and reads, replicate, commit, apply (Raft §5.3, §5.4).

Replication rounds and the commit index live in ``replication``; pending commits in
``commit``; reads in ``reads``; leadership transfer in ``handover``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from waraft.core import (
    admin,
    commit,
    config,
    handover,
    quiesce,
    reads,
    replication,
    snapshot,
    terms,
)
from waraft.core.enter import enter_state
from waraft.core.events import (
    AdjustConfig,
    CommitBatch,
    Event,
    HandoverCandidates,
    HandoverRequest,
    IsPeerReady,
    ReadBatch,
    Resign,
    Timeout,
)
from waraft.core.log import approx_command_size
from waraft.core.rpc import (
    AppendEntriesResponse,
    Handover,
    HandoverFailed,
    Payload,
    RequestPreVote,
    RequestVote,
    Vote,
)
from waraft.core.types import (
    CONFIG,
    LEASE_UNAFFECTED,
    NOOP,
    Config,
    Identity,
    LogPos,
    Priority,
    State,
    error,
)

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def enter(core: Replica, old: State) -> None:
    """Take office: recover the label chain, append a noop of our term, replicate at once."""
    enter_state(core, State.LEADER)
    log = core.log
    last = log.last_index()
    last_entry = log.get(last)
    if last_entry is None or last_entry.command is None:
        core.last_label = core.storage_label  # reset log: the chain continues from storage
    else:
        core.last_label = last_entry.label
    core.first_current_term_log_index = last + 1
    core.handover_lease_state = LEASE_UNAFFECTED
    core.inflight = {}
    core.inflight_sent = {}
    core.inflight_bytes = {}
    if not commit.has_pending_commits(core):
        # Something of our own term to establish the first quorum on (buffered commits,
        # if any, serve that purpose instead).
        commit.append(core, [commit.make_entry(core, core.next_ref(), NOOP)])
    replication.commit_and_replicate(core)
    core.heartbeat_timeout()


def handle_rpc(core: Replica, sender: Identity, payload: Payload) -> None:
    match payload:
        case AppendEntriesResponse(success=True):
            on_append_success(core, sender, payload)
        case AppendEntriesResponse():
            on_append_failure(core, sender, payload)
        case RequestVote():
            core.send(sender, Vote(False))
        case RequestPreVote():
            terms.handle_request_pre_vote(core, sender, payload.ref)
        case Handover():
            core.send(sender, HandoverFailed(payload.ref))
        case HandoverFailed():
            handover.on_failed(core, sender, payload.ref)
        case _:
            pass  # append_entries, votes and pre-votes mean nothing to a leader


def on_append_success(core: Replica, sender: Identity, response: AppendEntriesResponse) -> None:
    node = sender.node
    replication.update_heartbeat_reply_ts(core, node)
    replication.credit_lease(core, node, response.prev_log_index)
    match = response.match_index
    next_index = core.next_indices.get(node, core.first_current_term_log_index)
    core.match_indices[node] = match
    core.next_indices[node] = max(next_index, match + 1)
    if response.last_applied_index is not None:
        core.last_applied_indices[node] = response.last_applied_index
    inflight = core.inflight.get(node, 0)
    if inflight > 0:
        core.inflight[node] = inflight - 1
    replication.acknowledge_bytes(core, node, match)
    quiesce.leader_ack(core, sender, response)
    replication.advance_commit_index(core)
    replication.leader_apply_log(core)
    if quiesce.leaves_round_to_timer(core):
        quiesce.arm_leader_timer(core, leaves_round=True)
    else:
        replication.maybe_heartbeat(core)
    replication.catch_up(core, sender)


def on_append_failure(core: Replica, sender: Identity, response: AppendEntriesResponse) -> None:
    node = sender.node
    core.count("leader.append.failure")
    replication.update_heartbeat_reply_ts(core, node)
    replication.credit_lease(core, node, response.prev_log_index)
    snapshot.maybe_request_snapshot(core, sender, response.match_index, response.last_applied_index)
    # Trust the follower's end of log: it may have installed a snapshot since.
    core.next_indices[node] = response.match_index + 1
    core.inflight[node] = 0
    replication.forget_bytes(core, node)
    if response.last_applied_index is not None:
        core.last_applied_indices[node] = response.last_applied_index
    replication.leader_apply_log(core)
    replication.maybe_heartbeat(core)


def handle_event(core: Replica, event: Event) -> None:
    match event:
        case Timeout():
            on_timeout(core)
        case CommitBatch():
            on_commits(core, event)
        case ReadBatch():
            reads.leader_reads(core, event.items)
        case AdjustConfig():
            adjust_config(core, event)
        case HandoverRequest():
            handover.start(core, event.from_, event.peer, unresponsive(core))
        case HandoverCandidates():
            core.reply(event.from_, ("ok", handover.candidates(core, unresponsive(core))))
        case IsPeerReady():
            core.reply(event.from_, handover.is_peer_ready(core, event.peer))
        case Resign():
            core.log_notice("resigns")
            core.goto(core.follower_or_witness())
            core.reply(event.from_, "ok")
        case _:
            admin.command(core, event)


def on_timeout(core: Replica) -> None:
    """Heartbeat and batch timeouts are the same: a replication round (none mid-handover)."""
    if core.handover is not None and not handover.check_timeout(core):
        core.heartbeat_timeout()
        return
    if quiesce.leader_round(core):
        return
    replication.heartbeat(core)


def on_commits(core: Replica, event: CommitBatch) -> None:
    running = core.handover
    if running is not None:
        reason = ("notify_redirect", running[0])
        for from_, op in event.items:
            core.cancel_commit(from_, reason, event.priority, approx_command_size(op[1]))
        core.count("commit.rejected.handover")
        return
    commit.add_pending(core, event.items, event.priority)
    if replication.await_round(core):
        return
    replication.batch_or_heartbeat(core)


# -- membership changes ----------------------------------------------------------------------


def config_change_allowed(core: Replica, expected_index: int | None) -> str | None:
    """``None`` if a new config may be appended now, else the error reason."""
    if core.commit_index < core.first_current_term_log_index:
        return "no_quorum"
    config_index = core.config_index()
    if config_index > core.last_applied:
        return "not_ready"  # one uncommitted (unapplied) config at a time
    if expected_index is not None and expected_index != config_index:
        return "config_index_mismatch"
    return None


def adjust_config(core: Replica, event: AdjustConfig) -> None:
    """Append one single-server membership change; it takes effect once appended.

    A request that could never apply (``config.action_refusal``) is answered with its own
    error before the readiness checks, which WARaft runs first: its ``not_ready`` while a
    change is unapplied hid a typo until the retry. The rest keeps WARaft's order."""
    reason: Any = _handover_redirect(core)
    if reason is None:
        reason = config.action_refusal(event.action, core.self_id)
    if reason is None:
        reason = config_change_allowed(core, event.expected_index)
    if reason is None:
        result = config.adjust_config(
            event.action,
            core.current_config(),
            core.self_id,
            lambda peer: handover.is_ready(core, peer.node),
        )
        if result[0] == "ok":
            reason = _quorum_refusal(core, result[1])
            if reason is None:
                if core.log.can_append(1, Priority.HIGH):
                    _append_config(core, event, result[1])
                    return
                reason = "commit_stalled"
        else:
            reason = result[1]
    core.log_notice("refuses config action %s: %s", event.action, reason)
    if event.reply_on_apply:
        core.cancel_commit(event.from_, reason, Priority.HIGH, 0)  # admitted with 0 bytes
    else:
        core.reply(event.from_, error(reason))


def _handover_redirect(core: Replica) -> tuple[str, str] | None:
    """``("notify_redirect", successor)`` while a handover runs, as commits are answered.

    The successor already has its entries, so a change appended now is not in its log and
    vanishes when it wins: a review's change was answered ``("ok", LogPos)`` and dropped."""
    running = core.handover
    return None if running is None else ("notify_redirect", running[0])


def _quorum_refusal(core: Replica, new_config: Config) -> str | None:
    """``"would_lose_quorum"`` if ``new_config``'s members that are known to run now are no
    majority of it (etcd's strict reconfiguration check).

    A config takes effect once appended, so a change whose own quorum cannot answer is
    stuck: it never commits, and no further change (not even the one undoing it) is allowed
    before it does. A review added a node that was not running while one member was
    stopped; the partition stopped committing until the stopped member came back. Another
    added a typo'd node to a single-member partition, whose config of two then needed a node
    nobody runs. Known to run (``_answering``): this replica, the current members that answer,
    and a member this change adds only if it already answers as a participant. So a
    single-member partition grows through ``add_participant`` first (then ``add`` or
    ``promote_participant_if_ready``), as etcd's learners and WARaft's participants do. A
    change of non-voting participants only is never refused."""
    old = set(core.current_config().membership)
    new = new_config.membership
    if set(new) == old:
        return None
    window = _silence_window_ms(core)
    participants = set(config.participants(core.current_config()))
    running = sum(
        1
        for m in new
        if m == core.self_id
        or (m in old and _answering(core, m.node, window, vouched=True))
        or (m in participants and _answering(core, m.node, window, vouched=False))
    )
    return None if running * 2 > len(new) else "would_lose_quorum"


def unresponsive(core: Replica) -> list[str]:
    """The participants' nodes that answered nothing this leader sent them for the silence
    window (``_silence_window_ms``): disabled, down, cut off or stuck replicas, what the
    leader's status reports so that a partition running on fewer replicas than its config
    names shows it. A peer counts only when something was sent after its last answer, so the
    followers of a quiescent leader, which it sends nothing, never do; nor does any peer
    until the leader has been awake for a window (just elected, or woken from quiescence,
    when nobody had reason to answer yet)."""
    if core.state is not State.LEADER:
        return []
    window = _silence_window_ms(core)
    now = core.now
    if now - max(core.state_start_ts, core.quiesce_woken_ts or 0) < window:
        return []
    sent_at = core.heartbeat_send_ts
    answered_at = core.heartbeat_reply_ts
    silent = []
    for peer in config.participants(core.current_config()):
        sent = sent_at.get(peer.node)
        answered = answered_at.get(peer.node)
        if sent is None or peer == core.self_id:
            continue
        if answered is None or (sent > answered and now - answered > window):
            silent.append(peer.node)
    return sorted(silent)


def _silence_window_ms(core: Replica) -> int:
    """How long a peer may go without answering before it counts as not running: the minimum
    election timeout, four of the slow heartbeats a settled leader sends
    (``quiesce.slow_heartbeat_ms``), so a peer that answers each of them never looks silent."""
    return max(core.settings.raft_election_timeout_ms, quiesce.slow_heartbeat_ms(core))


def _answering(core: Replica, node: str, window: int, vouched: bool) -> bool:
    """Whether ``node`` answers this leader: not reported down by the failure detector, and
    an answer within ``window`` ms.

    Until this leader has been awake for a whole window (it just took office, or woke from
    quiescence, when nobody had reason to answer it), the detector decides alone for a
    ``vouched`` peer (a current member), and a new one needs to have answered at least once.
    A quiescent leader is woken by the config change itself, so a quiescent healthy partition
    changes its membership at once, on the detector's word, as it did before this rule."""
    if node in core.down_nodes:
        return False
    answered = core.heartbeat_reply_ts.get(node)
    now = core.now
    if answered is not None and now - answered <= window:
        return True
    awake_since = max(core.state_start_ts, core.quiesce_woken_ts or 0)
    if now - awake_since < window:
        return vouched or answered is not None
    return False


def _append_config(core: Replica, event: AdjustConfig, new_config: Config) -> None:
    entry = commit.make_entry(core, core.next_ref(), (CONFIG, new_config))
    index = commit.append(core, [entry])
    core.log_notice("changes config to %s at %d", new_config, index)
    if event.reply_on_apply:
        core.queued[index] = (event.from_, Priority.HIGH)
    replication.commit_and_replicate(core)
    if not event.reply_on_apply:
        core.reply(event.from_, ("ok", LogPos(index, core.current_term)))
    core.heartbeat_timeout()
