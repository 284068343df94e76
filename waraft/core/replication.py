"""Leader replication, the commit index, and applying committed entries (digest §2.9).

A replication round ("heartbeat") appends the pending commits, then sends every participant
one ``append_entries`` carrying up to ``raft_max_log_entries_per_heartbeat`` entries (and
``raft_max_heartbeat_size`` bytes) from its next index. Replication is pipelined: the next
index moves past the sent entries at once, and a follower's failure response resets it.

Deviations from WARaft: an append response no longer replaces a pending batch timeout with
the heartbeat timeout (``maybe_heartbeat``), it tops a lagging peer up between rounds
(``catch_up``), a leader that is the only full member replicates to witnesses
(``_witness_limit``), and a witness is sent stubs only of the entries after the config that
made it one (``_for_witness``).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from waraft.core import commit, config, snapshot
from waraft.core.effects import Apply, ApplyItem
from waraft.core.errors import RaftCoreError
from waraft.core.log import approx_size
from waraft.core.rpc import AppendEntries
from waraft.core.types import (
    LEASE_PENDING_RECONFIRMATION,
    LEASE_UNAFFECTED,
    Config,
    Entry,
    Identity,
    Priority,
    State,
    TimeoutKind,
    is_config_command,
)

if TYPE_CHECKING:
    from waraft.core.replica import Replica

_UNQUEUED = (None, Priority.HIGH)


# -- rounds ----------------------------------------------------------------------------------


def commit_and_replicate(core: Replica) -> None:
    """Append pending commits (high, then low) and send one round to every participant."""
    core.count("leader.heartbeat")
    commit.commit_pending(core, Priority.HIGH)
    commit.commit_pending(core, Priority.LOW)
    core.batch_deadline = None
    cfg = core.current_config()
    peers = targets(core, cfg)  # before a sole member applies a change removing the others
    if config.is_single_member(core.self_id, cfg):
        advance_commit_index(core)
        leader_apply_log(core)
        update_quorum_ts(core)
    self_id = core.self_id
    for peer in peers:
        if peer != self_id:
            replicate_to_peer(core, peer, cfg)


def targets(core: Replica, cfg: Config) -> tuple[Identity, ...]:
    """Whom the leader replicates to: ``cfg``'s participants and, until it applied ``cfg``,
    the participants of the config before it (storage's) that ``cfg`` removed.

    A config takes effect once appended, so a removed replica was sent nothing more and
    never received the change that removed it: it campaigned for ever (at rising terms with
    pre-vote off) and deposed the leader when added back. Once it holds the change it is no
    member in its own config and stops campaigning (``Replica.candidate_eligible``)."""
    current = config.participants(cfg)
    applied = core.cached_config
    if applied is None or applied[0] >= core.config_index():
        return current
    removed = tuple(p for p in config.participants(applied[1]) if p not in current)
    return current + removed if removed else current


def replicate_to_peer(core: Replica, peer: Identity, cfg: Config, quiesce: bool = False) -> None:
    """Send ``peer`` its next entries (or a probe when the entry before them is trimmed).

    ``quiesce`` marks the message as the leader's quiesce round (see ``quiesce``); any other
    message withdraws the peer's acknowledgement of that round.
    """
    log = core.log
    node = peer.node
    if not quiesce:
        core.quiesce_acks.discard(node)
    next_index = core.next_indices.get(node, core.first_current_term_log_index)
    prev_index = next_index - 1
    prev_term = log.term(prev_index)
    core.heartbeat_send_ts[node] = core.now
    last = log.last_index()
    settings = core.settings
    if prev_term is None:
        # Nothing to match against locally: announce where our log ends instead.
        core.count("leader.heartbeat.not_ready")
        last_term = log.term(last)
        core.send(peer, AppendEntries(last, last_term or 0, [], core.commit_index, 0))
        _note_lease_send(core, node, last)
        return
    max_entries = settings.raft_max_log_entries_per_heartbeat
    max_bytes = settings.raft_max_heartbeat_size
    byte_limit = settings.raft_max_bytes_in_flight
    if byte_limit > 0:
        # Never more than the peer's remaining budget in one message (at least one entry
        # while below the budget, so one oversized entry still goes out on its own).
        room = byte_limit - core.inflight_bytes.get(node, 0)
        if room <= 0:
            core.count("leader.heartbeat.bytes_in_flight")
            max_entries = 0
        elif room < max_bytes:
            max_bytes = room
    if max_entries <= 0:
        entries = []
    elif peer in cfg.witness:
        cap = min(max_entries, max(0, _witness_limit(core, cfg, last) - next_index + 1))
        raw = log.entries(next_index, last, cap, max_bytes) if cap > 0 else []
        entries = _for_witness(core, peer, next_index, raw)
    else:
        entries = log.entries(next_index, last, max_entries, max_bytes)
    trim_index = _member_floor(core, cfg, last)
    commit_index = core.commit_index
    core.send(
        peer, AppendEntries(prev_index, prev_term, entries, commit_index, trim_index, quiesce)
    )
    _note_lease_send(core, node, prev_index)
    core.inflight[node] = core.inflight.get(node, 0) + 1
    if entries and byte_limit > 0:
        size = _sent_size(core, prev_index, entries, peer in cfg.witness)
        sent = core.inflight_sent.get(node)
        if sent is None:
            sent = core.inflight_sent[node] = deque()
        sent.append((prev_index + len(entries), size))
        core.inflight_bytes[node] = core.inflight_bytes.get(node, 0) + size
    # Pipelining: assume delivery; a failure response tells us where the follower really is.
    core.next_indices[node] = prev_index + len(entries) + 1


def acknowledge_bytes(core: Replica, node: str, match_index: int) -> None:
    """``node`` holds everything up to ``match_index``: those messages' bytes are no longer
    in flight."""
    sent = core.inflight_sent.get(node)
    if not sent:
        return
    freed = 0
    while sent and sent[0][0] <= match_index:
        freed += sent.popleft()[1]
    if freed:
        core.inflight_bytes[node] = max(0, core.inflight_bytes.get(node, 0) - freed)


def forget_bytes(core: Replica, node: str) -> None:
    """``node``'s pipeline was reset (a failure response): nothing is in flight any more;
    what it still lacks is sent again from its real end of log."""
    core.inflight_sent.pop(node, None)
    core.inflight_bytes.pop(node, None)


def bytes_in_flight_full(core: Replica, node: str) -> bool:
    """True when ``node``'s unacknowledged bytes reached ``raft_max_bytes_in_flight``."""
    limit = core.settings.raft_max_bytes_in_flight
    return limit > 0 and core.inflight_bytes.get(node, 0) >= limit


def catch_up(core: Replica, peer: Identity) -> None:
    """After a peer acknowledged an append: keep its pipeline full while it lags behind.

    Deviation from WARaft (CORE-6), after etcd's handling of append responses: WARaft sends a
    backlog only at batch or heartbeat pace (one message of ``raft_max_log_entries_per_heartbeat``
    entries per round); here every success response tops the peer up with further messages, at
    most ``raft_max_inflight_appends`` unanswered and ``raft_max_bytes_in_flight`` estimated bytes
    unacknowledged. Nothing is sent during a handover or when
    the peer has nothing more to receive (a witness is still capped).
    """
    if core.state is not State.LEADER or core.handover is not None:
        return
    cfg = core.current_config()
    if peer == core.self_id or peer not in targets(core, cfg):
        return
    node = peer.node
    limit = core.settings.raft_max_inflight_appends
    last = core.log.last_index()
    sendable = _witness_limit(core, cfg, last) if peer in cfg.witness else last
    next_indices = core.next_indices
    inflight = core.inflight
    while inflight.get(node, 0) < limit and not bytes_in_flight_full(core, node):
        next_index = next_indices.get(node, core.first_current_term_log_index)
        if next_index > sendable:
            return
        replicate_to_peer(core, peer, cfg)
        if next_indices.get(node, next_index) <= next_index:
            return  # a probe or an empty message: wait for the answer


def _witness_limit(core: Replica, cfg: Config, last: int) -> int:
    """How far a witness may be replicated: what some other full member already holds.

    This keeps every entry a witness helps commit on at least two data replicas. When this
    leader is the only full member there is no second data replica to wait for, and the cap
    would stop every commit for good (CORE-3: e.g. after removing the other data replica);
    the witness then follows the leader's own log, as WARaft's rule cannot be met anyway.
    """
    witness = cfg.witness
    self_id = core.self_id
    if not any(p != self_id and p not in witness for p in cfg.membership):
        return last
    return config.full_member_max(core.match_indices, 0, cfg)


def _for_witness(core: Replica, peer: Identity, first: int, entries: list[Entry]) -> list[Entry]:
    """What witness ``peer`` is sent of ``entries`` (the first at index ``first``): a stub of
    each entry at which the config in force makes ``peer`` a witness, the entry itself
    elsewhere.

    A config takes effect when appended, and only for the entries after it: an entry at or
    below the config that made ``peer`` a witness was written while it was a data member. Had
    it a stub of such an entry, and that config were never committed (a leader dying with it),
    the next leader would know ``peer`` as a data member, and the stub, having the entry's
    index and term, would stay in ``peer``'s log and be applied as the entry: committed data
    missing on a data replica. WARaft stubs by the newest config whatever the entry's index.
    The config in force below the newest config is known here only from the config entries
    sent with it; where it is not, the entry goes whole (a witness skips a command's data).
    """
    newest = core.config_index()
    if first > newest:
        return config.stub_entries_for_witness(entries)
    out: list[Entry] = []
    witness = False  # whether the config in force, as far as known, makes peer a witness
    for index, entry in enumerate(entries, first):
        command = entry.command
        if type(command) is tuple and is_config_command(command):
            witness = peer in command[1].witness
        elif (index > newest or witness) and command is not None:
            entry = entry._replace(command=config.stub_command(entry.key, command))
        out.append(entry)
    return out


def _member_floor(core: Replica, cfg: Config, self_value: int) -> int:
    """The lowest value over the members: ``self_value`` for us, the others' match index.

    Members we know nothing about count as 0.
    """
    match = core.match_indices
    self_node = core.node
    lowest: int | None = None
    for peer in cfg.membership:
        node = peer.node
        value = self_value if node == self_node else match.get(node, 0)
        if lowest is None or value < lowest:
            lowest = value
    return 0 if lowest is None else lowest


# -- commit index ----------------------------------------------------------------------------


def advance_commit_index(core: Replica) -> None:
    """Commit what a majority of members hold — but only from the current term (§5.4.2)."""
    values = dict(core.match_indices)
    values[core.node] = core.log.last_index()
    quorum = config.compute_member_quorum(values, core.current_config())
    if quorum is None:
        return
    if quorum < core.first_current_term_log_index:
        core.count("apply.delay.old")
        return
    if quorum > core.commit_index:
        core.commit_index = quorum


# -- apply -----------------------------------------------------------------------------------


def leader_apply_log(core: Replica) -> None:
    """Apply on the leader; rotation trims only below what every member holds."""
    apply_log(core, _member_floor(core, core.current_config(), core.last_applied))


def apply_log(core: Replica, trim_index: int | None) -> None:
    """Send the next committed entries to storage (one ``Apply``), then maybe rotate the log.

    ``trim_index`` ``None`` means no limit from the cluster (WARaft's ``infinity``).
    """
    commit_index = core.commit_index
    last_applied = core.last_applied
    if commit_index <= last_applied:
        return
    if core.queues.apply_queue_full():
        core.count("apply.delay")
        return
    settings = core.settings
    limited = min(commit_index, last_applied + settings.raft_apply_log_batch_size)
    entries = core.log.entries(
        last_applied + 1, limited, limited - last_applied, settings.raft_apply_batch_max_bytes
    )
    if not entries:
        raise RaftCoreError(
            f"committed entry {last_applied + 1} is missing from the log "
            f"({core.log.first_index()}..{core.log.last_index()})"
        )
    queued = core.queued
    pop = queued.pop
    items: list[ApplyItem] = []
    index = last_applied
    for entry in entries:
        index += 1
        command = entry.command
        if command is None:
            raise RaftCoreError(f"cannot apply the term-only entry at {index}")
        from_, priority = pop(index, _UNQUEUED) if queued else _UNQUEUED
        # tuple.__new__: half the cost of the NamedTuple constructor, once per applied entry
        items.append(tuple.__new__(ApplyItem, (index, entry, from_, priority)))
        if type(command) is tuple and is_config_command(command):
            core.cached_config = (index, command[1])
    core.last_applied = index
    core.emit(Apply(items))
    rotate_floor = limited - settings.raft_max_retained_entries
    rotate_index = index if trim_index is None else min(index, trim_index)
    snapshot.rotate(core, max(rotate_floor, rotate_index), _byte_floor(core, index))


def _sent_size(core: Replica, prev_index: int, entries: list[Entry], witness: bool) -> int:
    """The estimated bytes of ``entries`` (following ``prev_index``), remembered for the
    next peer: a round usually sends every follower the same entries, and the estimate walks
    each command. The key names the range by its last entry's index and term, which by the
    log matching property fix every entry in it, and whether they are a witness's stubs."""
    key = (prev_index, len(entries), entries[-1].term, witness)
    memo = core.sent_size_memo
    if memo is not None and memo[0] == key:
        return memo[1]
    size = 0
    for entry in entries:
        size += approx_size(entry)
    core.sent_size_memo = (key, size)
    return size


def _byte_floor(core: Replica, applied: int) -> int:
    """Where byte-based rotation trims to (0: nowhere): once the applied entries the log
    holds exceed the partition's budget, below the newest ones that fit in three quarters
    of it, so trims come in batches rather than one per apply. The budget is
    ``raft_max_retained_bytes`` lowered to the partition's share of the node-wide
    ``raft_node_max_retained_bytes`` (the provider knows the node's other partitions)."""
    log = core.log
    limit = log.retained_budget(core.settings.raft_max_retained_bytes)
    if limit <= 0 or log.trim_pending():
        # While the last trim is on its way to the provider, its byte counts still include
        # the entries that trim drops: a floor from them would trim too much, and finding
        # it walked a quarter of the log on every apply (10 % of a follower's time in
        # scenario b). The next apply after the trim lands looks again.
        return 0
    if log.retained_from(applied, limit) <= log.first_index():
        return 0
    return log.retained_from(applied, limit - limit // 4)


# -- read lease ------------------------------------------------------------------------------
#
# A follower that takes a leader's append_entries grants no vote to anyone else for a minimum
# election timeout from then (leader stickiness), and the leader holds a read lease from a
# time when a majority did. That time must be when the answered request was *sent* (which
# is before it was taken), not when the answer arrived: answers that waited in a paused
# leader's mailbox (a GC pause, SIGSTOP) arrived seconds after the followers had elected
# someone else, and read as a fresh lease they let it serve stale reads (simulator seeds
# 81571 and 82049). Answers carry their request's prev index and come in order: each is
# matched to the oldest unanswered request with that prev index. A lost request or answer
# only makes later matches older than the truth (a shorter lease, never a longer one).

LEASE_SENDS_MAX: Final = 256
"""Unanswered append_entries remembered per peer for the lease; past it, new ones are not
(their answers then match older ones, or none)."""


def _note_lease_send(core: Replica, node: str, prev_index: int) -> None:
    if core.settings.raft_leader_read_lease_ms <= 0:
        return
    sends = core.lease_sends.get(node)
    if sends is None:
        sends = core.lease_sends[node] = deque()
    if len(sends) < LEASE_SENDS_MAX:
        sends.append((prev_index, core.now))


def credit_lease(core: Replica, node: str, prev_index: int) -> None:
    """``node`` answered an append_entries whose prev index was ``prev_index``: it took one
    sent at the matched request's send time or later."""
    sends = core.lease_sends.get(node)
    if not sends or all(prev != prev_index for prev, _ in sends):
        return  # not remembered (past LEASE_SENDS_MAX): no credit
    prev, sent_at = sends.popleft()
    while prev != prev_index:  # older requests, or their answers, were lost
        prev, sent_at = sends.popleft()
    if sent_at > core.lease_acks.get(node, -1):
        core.lease_acks[node] = sent_at


def lease_quorum_ts(core: Replica) -> int | None:
    """The latest time a majority of members (self: now) took our append_entries sent
    then or later; None if no majority has answered one."""
    values = dict(core.lease_acks)
    values[core.node] = core.now
    return config.compute_member_quorum(values, core.current_config())


# -- liveness --------------------------------------------------------------------------------


def update_heartbeat_reply_ts(core: Replica, node: str) -> None:
    core.heartbeat_reply_ts[node] = core.now
    update_quorum_ts(core)


def update_quorum_ts(core: Replica) -> None:
    """``last_quorum_ts``: the time a majority of members (self = now) last answered us."""
    values = dict(core.heartbeat_reply_ts)
    values[core.node] = core.now
    quorum = config.compute_member_quorum(values, core.current_config())
    if quorum is not None:
        core.last_quorum_ts = quorum
        if core.handover_lease_state == LEASE_PENDING_RECONFIRMATION:
            core.handover_lease_state = LEASE_UNAFFECTED


def leader_eligible(core: Replica) -> str:
    """``"eligible"``, ``"ineligible"`` (not a member / not allowed) or ``"stale"``."""
    settings = core.settings
    if not (settings.raft_leader_eligible and core.is_self_member()):
        return "ineligible"
    if not settings.raft_leader_check_quorum:
        return "eligible"
    last = core.last_quorum_ts
    woken = core.quiesce_woken_ts
    if woken is not None and (last is None or woken > last):
        last = woken  # the quorum was silent because we were quiescent: judge from the wake
    if last is None or core.now - last > settings.raft_liveness_grace_period_ms:
        return "stale"
    return "eligible"


# -- scheduling rounds -----------------------------------------------------------------------


def batch_or_heartbeat(core: Replica) -> None:
    """Wait a little for more commits unless enough are pending; else replicate now."""
    settings = core.settings
    interval = settings.raft_commit_batch_interval_ms
    if interval > 0 and commit.pending_count(core) <= settings.raft_commit_batch_max:
        core.count("commit.batch.delay")
        core.batch_deadline = core.now + interval
        core.set_timeout(TimeoutKind.BATCH_COMMIT, interval)
    else:
        heartbeat(core)


def commits_may_await_round(core: Replica) -> bool:
    """Whether pending commits may wait for an answer to start their round
    (``raft_commit_await_round``): no handover, at most ``raft_commit_batch_max`` of them, and
    every live follower participant (at least one) has a round unanswered."""
    settings = core.settings
    if not settings.raft_commit_await_round or core.handover is not None:
        return False
    if commit.pending_count(core) > settings.raft_commit_batch_max:
        return False
    inflight = core.inflight
    down = core.down_nodes
    self_id = core.self_id
    awaited = False
    for peer in config.participants(core.current_config()):
        node = peer.node
        if peer == self_id or node in down:
            continue
        if inflight.get(node, 0) <= 0:
            return False  # an idle live follower: a round now costs it no waiting
        awaited = True
    return awaited


def await_round(core: Replica) -> bool:
    """Leave new commits pending until the answer to the round on its way; ``True`` if so.

    Deviation from WARaft (issue 12): with ``raft_commit_await_round``, a commit that
    arrives while every live follower participant has a round unanswered (an idle one would
    take a round at once) starts no round and arms no timer: the first answer's
    ``maybe_heartbeat`` finds the batch due (``batch_deadline`` is now) and sends everything
    that gathered meanwhile in one round. Should the answers be lost, the leader's running
    heartbeat timer starts the round (a leader always has one armed while it is not
    quiescent, and a quiescent one woke and sent a round before the commit got here): at
    the normal interval, or with quiescence on, at the slow one
    (``quiesce._commits_await_answers``). Under a stream of commits a partition then sends
    one round per round trip, not one per command.

    More than ``raft_commit_batch_max`` pending commits go out at once, as WARaft's batch
    delay does (``batch_or_heartbeat``): such a round is worth its cost, and holding it would
    turn one busy partition's pipeline (up to ``raft_max_inflight_appends`` rounds) into
    stop-and-wait: one command per request at one partition (harness scenario b) spent less
    CPU per commit and answered sooner without the wait."""
    if not commits_may_await_round(core):
        return False
    if core.batch_deadline is None:
        core.batch_deadline = core.now
    core.count("commit.await_round")
    return True


def maybe_heartbeat(core: Replica) -> None:
    """After a response: replicate now if the last round is old, else re-arm the timeout.

    Deviation from WARaft (CORE-5): WARaft re-arms the heartbeat timeout here, replacing a
    pending batch timeout, so a commit that arrived during the batch interval could wait a
    whole heartbeat interval (120 ms) to be appended. While commits wait for their batch,
    the batch timeout is kept (re-armed for the time left, or the batch flushed if it is due).
    """
    if core.handover is None:
        sent = core.heartbeat_send_ts
        if not sent or core.now - max(sent.values()) > core.settings.raft_heartbeat_interval_ms:
            heartbeat(core)
            return
        deadline = core.batch_deadline
        if deadline is not None and commit.pending_count(core) > 0:
            if deadline <= core.now:
                heartbeat(core)
            else:
                core.set_timeout(TimeoutKind.BATCH_COMMIT, deadline - core.now)
            return
    core.leader_timeout()


def heartbeat(core: Replica) -> None:
    """A replication round, or resignation if this replica may no longer lead."""
    eligibility = leader_eligible(core)
    if eligibility == "eligible":
        commit_and_replicate(core)
        core.leader_timeout()
        return
    core.count(("leader.resign", eligibility))
    core.log_notice("resigns from leadership because this node is %s", eligibility)
    core.goto(core.follower_or_witness())
