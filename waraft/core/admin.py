"""Commands every state shares unless it overrides them (WARaft's ``command/4``, digest §2.14).

Also the administrative paths that need storage: ``bootstrap``, snapshot installation
(``snapshot_available``) and the older README's ``promote(..., config)`` on an empty replica.
Those emit ``InstallSnapshot`` and finish when the shell reports ``SnapshotOpened``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

from waraft.core import replication, snapshot, terms
from waraft.core.config import bootstrap_refusal, find_member_majority, normalize_config
from waraft.core.effects import InstallSnapshot
from waraft.core.events import (
    AdjustConfig,
    Bootstrap,
    CommitBatch,
    Disable,
    Enable,
    Event,
    HandoverCandidates,
    HandoverRequest,
    IsPeerReady,
    NotifyComplete,
    Promote,
    ReadBatch,
    Resign,
    SnapshotAvailable,
    SnapshotOpened,
    StorageIncomplete,
    TermOrOffset,
    Timeout,
    TriggerElection,
)
from waraft.core.log import approx_command_size
from waraft.core.rpc import MAX_TERM
from waraft.core.types import Config, ElectionType, LogPos, Priority, State, error

if TYPE_CHECKING:
    from waraft.core.replica import Replica

_OPERATIONAL = (State.FOLLOWER, State.CANDIDATE, State.LEADER)


def command(core: Replica, event: Event) -> None:
    """The fallback for commands a state does not handle itself."""
    state = core.state
    match event:
        case CommitBatch():
            for from_, op in event.items:
                core.cancel_commit(from_, "not_leader", event.priority, approx_command_size(op[1]))
        case ReadBatch():
            for from_, _, _ in event.items:
                core.cancel_read(from_, "not_leader")
        case NotifyComplete():
            notify_complete(core)
        case StorageIncomplete():
            storage_incomplete(core, event)
        case TriggerElection() if state in _OPERATIONAL:
            trigger_election(core, event)
        case Promote() if state in _OPERATIONAL:
            if event.config is not None and event.config != core.current_config():
                core.reply(event.from_, error("already_bootstrapped"))
            else:
                promote(core, event.from_, event.term_or_offset, event.force)
        case TriggerElection() | Promote():
            core.reply(event.from_, error("invalid_state"))
        case Resign():
            core.reply(event.from_, error("not_leader"))
        case AdjustConfig():
            if event.reply_on_apply:
                # A membership change is admitted with 0 bytes: it releases none.
                core.cancel_commit(event.from_, "not_leader", Priority.HIGH, 0)
            else:
                core.reply(event.from_, error("not_leader"))
        case SnapshotAvailable():
            snapshot_available(core, event)
        case SnapshotOpened():
            snapshot_opened(core, event)
        case HandoverCandidates() | IsPeerReady() | HandoverRequest():
            core.reply(event.from_, error("not_leader"))
        case Enable():
            core.reply(event.from_, error("already_enabled"))
        case Disable():
            core.log_notice("disabling: %s", event.reason)
            core.disable_reason = event.reason
            core.goto(State.DISABLED)
            core.reply(event.from_, "ok")
        case Bootstrap():
            core.reply(event.from_, error("already_bootstrapped"))
        case Timeout():
            pass  # a timeout this state does not arm (the shell raced a state change)
        case _:
            core.log_notice("drops unhandled command %r", event)


def resolve_term(core: Replica, term_or_offset: TermOrOffset) -> int | None:
    """``"current"``, ``"next"``, ``("next", n)`` or an absolute term; ``None`` if invalid.

    A term outside ``0..MAX_TERM`` is invalid: every receiver drops an RPC carrying one as
    malformed (a replica moved there is shut out for good), and the durable state cannot
    store one past 2**64 (the server crashed). Every caller refuses ``None``.
    """
    term = _requested_term(core.current_term, term_or_offset)
    if term is None or not 0 <= term <= MAX_TERM:
        return None
    return term


def _requested_term(current: int, term_or_offset: TermOrOffset) -> int | None:
    if term_or_offset == "current":
        return current
    if term_or_offset == "next":
        return current + 1
    if (
        isinstance(term_or_offset, (tuple, list))
        and len(term_or_offset) == 2
        and term_or_offset[0] == "next"
        and _is_int(term_or_offset[1])
    ):
        return current + term_or_offset[1]
    if _is_int(term_or_offset):
        return term_or_offset
    return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def notify_complete(core: Replica) -> None:
    """Storage drained its queue: apply more if anything is committed."""
    state = core.state
    if state not in (State.LEADER, State.FOLLOWER, State.WITNESS):
        return
    if core.queues.apply_queue_size() > core.settings.raft_storage_notify_complete_buffer:
        return
    if state is State.LEADER:
        replication.leader_apply_log(core)
    else:
        replication.apply_log(core, None)


def storage_incomplete(core: Replica, event: StorageIncomplete) -> None:
    """A witness (or a replica that was one) made a data replica again: its storage lacks the
    data, so it may not apply the config that says so, and it used to crash over it at every
    restart (about 1,500 times in two minutes in a review, winning elections in between).
    It goes ``stalled``: it takes no part in quorums, and its answers make the leader send a
    snapshot, whose install brings the data and leaves ``stalled``."""
    if core.state in (State.STALLED, State.DISABLED):
        return
    core.log_notice("stalled until a snapshot brings the data: %s", event.reason)
    core.count("storage.incomplete")
    core.goto(State.STALLED)


def trigger_election(core: Replica, event: TriggerElection) -> None:
    """Start an election now; ``"current"`` means an election at the next term."""
    term = resolve_term(core, event.term_or_offset)
    if term is None or term >= MAX_TERM:
        # (The election itself runs at ``term + 1``, which must still be a valid term.)
        core.reply(event.from_, error("invalid_term"))
        return
    if term < core.current_term:
        core.reply(event.from_, error("rejected"))
        return
    if not core.settings.raft_leader_eligible:
        core.reply(event.from_, error("ineligible"))
        return
    core.log_notice("starts an election on request")
    if term > core.current_term:
        terms.advance_term(core, term, None)
    core.goto(State.CANDIDATE)
    core.reply(event.from_, "ok")


def promote(
    core: Replica, from_: Any, term_or_offset: TermOrOffset, force: bool, elect: bool = True
) -> None:
    """Make this replica leader of ``term`` (the caller's choice of term, as in WARaft).

    With ``force`` it is WARaft's administrative override: it appoints itself leader of
    ``term`` with no votes and nothing checked about its log. It can lose data: a replica
    that lags (restarted, or cut off) leads with a shorter log, and the up-to-date members
    disable themselves rather than drop committed entries; and a term a majority already
    used gets a second leader.

    Without ``force`` (deviation from WARaft, whose promote self-appoints either way) it runs
    a forced election (``promote_by_election``), so the votes decide as in any election.
    ``elect`` False keeps WARaft's self-appointment for the one caller with no log to
    protect: ``promote_with_config`` on an empty replica of a new partition, whose other
    members are empty and stalled too and answer no vote until a leader's snapshot comes.
    """
    term = resolve_term(core, term_or_offset)
    reason = _promote_refusal(core, term, force)
    if reason is not None:
        core.reply(from_, error(reason))
        return
    assert term is not None
    if not force and elect:
        promote_by_election(core, from_, term)
        return
    how = "forced" if force else "the first config of an empty replica"
    core.log_notice("promotes itself to leader of term %d without votes (%s)", term, how)
    if term > core.current_term:
        terms.advance_term(core, term, core.node)
    if force:
        # No votes were collected: give check-quorum a full grace period from now, and do
        # not let replies from an earlier tenure stand in for a fresh quorum.
        core.last_quorum_ts = core.now
        core.heartbeat_reply_ts = {}
    core.goto(State.LEADER)
    core.reply(from_, "ok")


def promote_by_election(core: Replica, from_: Any, term: int) -> None:
    """A promote without ``force``: a forced election at ``term`` (or the next term when
    ``term`` is the current one), answered when it ends (``settle_promotion``).

    A review promoted a restarted replica whose log was behind: it led with its stale log,
    and the up-to-date members disabled themselves; promoted at the term a majority had just
    used, it was a second leader of that term. An election has neither flaw: a vote is
    granted only to a log at least as up to date, and one vote per term. The forced type
    skips pre-vote and leader stickiness, as a handover's election does: the grace period
    (``_promote_refusal``) already said no leader is alive."""
    if term > core.current_term + 1:
        terms.advance_term(core, term - 1, None)  # the election moves to ``term``
    core.log_notice("runs a forced election for a promote")
    core.next_election_type = ElectionType.FORCE
    core.goto(State.CANDIDATE)
    core.promotion = from_


def settle_promotion(core: Replica, state: State) -> None:
    """Answer a pending ``promote_by_election`` as this replica enters ``state``: ``"ok"``
    if it won (``leader``), else ``("error", "election_lost")`` if a majority refused its
    vote (its log is behind, or they voted for another) or ``("error", "not_elected")``
    (the election timed out, or another leader or a newer term came first)."""
    waiter = core.promotion
    if waiter is None:
        return
    core.promotion = None
    if state is State.LEADER:
        core.reply(waiter, "ok")
        return
    lost = find_member_majority(core.votes, core.current_config()) is False
    core.reply(waiter, error("election_lost" if lost else "not_elected"))


def _promote_refusal(core: Replica, term: int | None, force: bool) -> str | None:
    current = core.current_term
    if term is None or term < current:
        return "invalid_term"
    if term == current and core.leader is not None:
        return "invalid_term"
    if not core.settings.raft_leader_eligible:
        return "ineligible"
    if core.state is State.WITNESS:
        return "invalid_state"
    membership = core.current_config().membership
    if not membership:
        return "invalid_configuration"
    if core.self_id not in membership:
        # A replica removed from the partition (it may not know yet) would lead nobody:
        # the members drop a non-member's RPCs, and clients routed to it time out.
        return "not_a_member"
    # The grace period keeps an election (``promote_by_election``) from deposing a live
    # leader; a replica that heard none since it started has nothing to wait for, since the
    # votes protect the log. The forced override checks nothing.
    if force or core.last_quorum_ts is None:
        return None
    grace_ms = core.settings.raft_promotion_grace_period_secs * 1000
    if core.now - core.last_quorum_ts >= grace_ms:
        return None
    return "rejected"  # a leader was heard from recently


# -- snapshots and bootstrap -----------------------------------------------------------------


def _from_stranger(core: Replica, event: SnapshotAvailable) -> bool:
    """Refuse (and say so) a transferred snapshot whose sender is not our current leader.

    A snapshot replaces the data and the membership wholesale, so it gets at least the trust
    an ``append_entries`` gets: it must come from the node this replica follows in its current
    term. One from an older leader is refused too; the current one sends its own.
    """
    source = event.source
    if source is None or (core.leader is not None and core.leader.node == source):
        return False
    core.count("server.snapshot_available.not_leader")
    core.reply(event.from_, error("not_leader"))
    return True


def snapshot_available(core: Replica, event: SnapshotAvailable) -> None:
    """Outside ``stalled``: a newer snapshot sends us to ``stalled`` to install it."""
    if _from_stranger(core, event):
        return
    if (
        core.state in (State.FOLLOWER, State.CANDIDATE, State.WITNESS)
        and event.position.index > core.last_applied
    ):
        core.log_notice("installs a newer snapshot at %s", event.position)
        core.goto(State.STALLED)
        core.dispatch(event)
        return
    core.reply(event.from_, error("rejected"))


def install_transfer(core: Replica, event: SnapshotAvailable) -> None:
    """In ``stalled``: load a transferred snapshot at or past what we applied.

    Deviation from WARaft (CORE-2), which wants a strictly newer index: a stalled replica does
    not trust its own data, and a leader that needs this replica to commit cannot move its
    snapshot past the position the replica already has (a re-enabled replica would then stay
    stalled for ever). Reloading the committed state at the same index loses nothing.
    """
    if _from_stranger(core, event):
        return
    position = event.position
    if core.pending_install is not None or position.index < core.last_applied:
        core.reply(event.from_, error("rejected"))
        return
    core.pending_install = ("transfer", position, None)
    core.emit(InstallSnapshot(event.from_, "transfer", position, root=event.root))


def bootstrap(core: Replica, event: Bootstrap) -> None:
    """In ``stalled``: an empty replica starts from an empty snapshot holding ``config``."""
    if core.last_applied != 0 or core.pending_install is not None:
        core.reply(event.from_, error("rejected"))
        return
    if _refuses_config(core, event.from_, event.config):
        return
    core.log_notice("bootstraps at %s with %s", event.position, event.config)
    term = max(1, event.position.term)
    if term > core.current_term:
        # Stored before the data lands (the runner persists before it installs): a replica
        # whose log or storage holds anything then always has its term on disk, so one that
        # has data and no state file has lost it (``replica.term_lost``), bootstrap's term
        # included. A replica that voted in a later term before any entry of it arrived
        # looked new once the file was gone, and could vote in that term again.
        terms.advance_term(core, term, None)
    core.pending_install = ("bootstrap", event.position, None)
    core.emit(
        InstallSnapshot(
            event.from_, "bootstrap", event.position, config=event.config, data=event.data
        )
    )


def _refuses_config(core: Replica, from_: Any, config: Config | None) -> bool:
    """Answer ``("invalid_configuration", why)`` and return True if ``config`` can never
    work as this replica's first config (``config.bootstrap_refusal``)."""
    reason = "no_members" if config is None else bootstrap_refusal(config, core.self_id)
    if reason is None:
        return False
    core.log_notice("refuses to start from config %s: %s", config, reason)
    core.reply(from_, error(("invalid_configuration", reason)))
    return True


PROMOTE_POSITION = LogPos(0, 0)


def promote_with_config(core: Replica, event: Promote) -> None:
    """The older README's ``promote(name, term, force, config)`` on an empty replica.

    The config is installed first (as a bootstrap at position 0:0 would), then the replica
    appoints itself leader as WARaft's promote does, forced or not (``promote``'s ``elect``):
    the other members of a new partition are empty and stalled, so an election could not be
    won, and there is no log to lose.
    """
    if core.last_applied != 0 or core.pending_install is not None:
        core.reply(event.from_, error("invalid_state"))
        return
    if _refuses_config(core, event.from_, event.config):
        return
    core.pending_install = ("promote", PROMOTE_POSITION, (event.term_or_offset, event.force))
    core.emit(InstallSnapshot(event.from_, "promote", PROMOTE_POSITION, config=event.config))


def snapshot_opened(core: Replica, event: SnapshotOpened) -> None:
    """Storage finished an ``InstallSnapshot``: reset the log and take up the new position."""
    pending = core.pending_install
    if pending is None or pending[0] != event.purpose or pending[1] != event.position:
        core.log_notice("ignores an unexpected snapshot report %r", event)
        return
    core.pending_install = None
    if event.error is not None:
        core.log_notice("could not load the %s snapshot: %r", event.purpose, event.error)
        core.reply(event.from_, error(event.error))
        return
    position = event.position
    storage_config = event.config
    if storage_config is not None:
        storage_config = (storage_config[0], normalize_config(storage_config[1]))
    if event.purpose == "transfer":
        snapshot.adopt_snapshot(core, position, storage_config)
    else:
        snapshot.reset_log(core, position, storage_config)  # a new replica: nothing to keep
    core.storage_label = event.label
    if core.state is not State.STALLED:
        # Disabled while storage was loading: keep the log consistent, stay where we are.
        core.reply(event.from_, error("invalid_state"))
        return
    purpose = event.purpose
    if purpose == "promote":
        term_or_offset, force = pending[2]
        promote(core, event.from_, term_or_offset, force, elect=False)
        return
    if purpose == "bootstrap":
        term = max(1, position.term)
        if term > core.current_term:
            terms.advance_term(core, term, None)
        if core.is_single_member() and core.voted_for in (None, core.node):
            core.voted_for = core.node
            terms.persist(core)
            core.goto(State.LEADER)
        else:
            core.goto(core.follower_or_witness())
    else:
        if position.term > core.current_term:
            terms.advance_term(core, position.term, None)
        core.goto(core.follower_or_witness())
    core.reply(event.from_, "ok")
