"""Quiescence: an idle partition stops heartbeating and its followers stop their timers.

Not in WARaft (issue 13; after CockroachDB's quiesced ranges and dragonboat's quiesce).

Leader side (``leader_round``, run instead of a heartbeat round): when quiescence is enabled
(``raft_quiesce_after_ms`` > 0), nothing is pending (commits, reads, applies, handover), every
participant holds the whole log, everything is committed and applied, no participant's node is
reported down, and nothing happened for ``raft_quiesce_after_ms``, the leader sends one round
of empty ``AppendEntries(quiesce=True)``. Once every participant answered that round with
``quiesced=True`` (and was sent, and answered, nothing else since), the leader goes quiescent:
it sends nothing until woken, but for one quiesce round per liveness grace period
(``recheck``: no follower wakes for it; it finds a newer term or an emptied replica that
nothing told it about). A leader that would quiesce
but for a participant on a node reported down stays awake and heartbeats every quarter of the
minimum election timeout instead of every heartbeat interval (``slow_heartbeat_ms``).

A *settled* leader heartbeats at that slow rate too, before its quiet period is over:
everything is committed and applied, every participant holds the whole log, and no read lease
needs fresh answers. Its heartbeats then only keep the followers' election timers from firing;
the ones at the full rate only cost CPU (at 1000 busy partitions per node they were about 20
rounds per committed command). A commit index the followers were not told yet does not keep
it busy: they learn it from the next round, whichever comes first of the next write's, a slow
heartbeat or the quiesce round, so a follower applies (and serves local reads) up to
``slow_heartbeat_ms`` after the leader. A round of its own for the commit index was a third
of the rounds at 1000 busy partitions per node (one after nearly every write's). Any commit,
read or lagging follower makes it busy again, and the next round goes out at once or at the
normal interval.

Under load a round trip can outlast the heartbeat interval. A leader that sent every entry to
every live participant then leaves the next round to the answers on their way, its timer
holding back to the slow interval (in case they were lost): when nothing else waits
(``leaves_round_to_timer``), and when only commits wait for those answers to start their round
(``_commits_await_answers``, with ``raft_commit_await_round``). After such a round or answer
the timer is armed for the slow deadline at once (``arm_leader_timer``) rather than fire at
the normal interval only to find that out.

Follower side (``follower_ack``): a follower or witness that accepted a quiesce round holding
the leader's whole log, with everything committed, and whose leader's node is reported up,
goes quiescent: it cancels its election timeout and answers ``quiesced=True``.

Waking (``before_event``): every event or message for the partition wakes it — a command, a
read, a config change, a vote, any RPC — except a ``NodeLiveness`` report, which wakes a
follower only when its leader's node went down and a leader only when a participant's node
changed. A woken leader replicates at once (so a strong read confirms leadership with a
round: a quiescent leader's lease has run out); a woken follower re-arms its election timer,
so a dead leader is replaced within the detector's delay plus one election timeout. When the
leader's node answers again, the follower sends the leader a ``NotifyTerm`` of its own term
instead of trusting the detector: a leader still in office wakes and replicates (resetting
the timer), a node that restarted meanwhile has no leader on it, and the timer elects one.

Stale views. A replica that adopts a newer term tells the leader it followed in the older
one (``tell_old_leader``): a leader that only lost its way to the others (a one-way fault)
is otherwise never told, as a follower sends nothing unasked and the new leader's node
drops what it sends to a node it believes down. A replica that starts announces itself to
its peers (``announce``): a partition restarted while its node stays up fires no liveness
report, and one that comes back stalled or disabled sends nothing of its own.

Safety does not depend on any of this: quiescence only withholds timers, never changes terms,
votes, logs or commit indices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from waraft.core import commit, config, replication
from waraft.core.events import Event, NodeLiveness, Timeout
from waraft.core.rpc import AppendEntries, AppendEntriesResponse, NotifyTerm, RaftRpc
from waraft.core.types import Identity, State, TimeoutKind

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def enabled(core: Replica) -> bool:
    return core.settings.raft_quiesce_after_ms > 0


# -- events ------------------------------------------------------------------------------------


def before_event(core: Replica, event: Event) -> bool:
    """Run ahead of every event; ``False`` means the event is consumed here.

    Records node liveness, wakes a quiescent replica, and notes leader activity.
    """
    if type(event) is NodeLiveness:
        on_node_liveness(core, event)
        return False
    if type(event) is RaftRpc:
        payload = event.payload
        # A response to an empty round is not traffic; anything else is.
        if not (
            type(payload) is AppendEntriesResponse and payload.match_index == core.commit_index
        ):
            core.quiet_since = core.now
    elif type(event) is not Timeout:
        core.quiet_since = core.now
    elif core.quiescent:
        if core.state is State.LEADER:
            recheck(core)  # the timer a quiescent leader keeps: one quiesce round
            return True
        return False  # a firing of the timer we cancelled: the shell should have dropped it
    core.woken_by_leader_down = False  # traffic: a leader-node-up no longer probes
    if core.quiescent:
        wake(core, "event", detail=_describe(event))
    return True


def on_node_liveness(core: Replica, event: NodeLiveness) -> None:
    """Track which nodes the detector reports down; wake when it concerns this partition."""
    node = event.node
    if event.up:
        if node not in core.down_nodes:
            return
        core.down_nodes.discard(node)
    else:
        if node in core.down_nodes:
            return
        core.down_nodes.add(node)
    state = core.state
    if state is State.LEADER:
        if any(p.node == node for p in config.participants(core.current_config())):
            core.quiesce_acks.discard(node)
            core.quiet_since = core.now
            if core.quiescent:
                wake(core, "node_up" if event.up else "node_down")
    elif core.quiescent and not event.up:
        leader = core.leader
        if leader is None or leader.node == node:
            wake(core, "leader_node_down", successor_rank(core, node))
            core.woken_by_leader_down = True
    elif event.up and core.woken_by_leader_down and state in (State.FOLLOWER, State.WITNESS):
        # The leader's node answers again and nothing happened meanwhile: a flap of the
        # detector, or a node restarted faster than it was found down. After a flap the
        # leader is still quiescent and would not heartbeat, so the timer would end in a
        # needless election; after a restart it is no leader (its replica may even be
        # stalled or disabled, and never call an election), so going back to sleep would
        # leave the partition without one. So ask: any message wakes a quiescent leader,
        # whose round resets the timer (and quiesces again later); no answer, and the
        # timer elects a successor.
        leader = core.leader
        if leader is not None and leader.node == node:
            core.woken_by_leader_down = False
            core.count("quiesce.follower.probe_leader")
            core.send(leader, NotifyTerm())


def tell_old_leader(core: Replica, old: Identity | None, sender: Identity) -> None:
    """After adopting ``sender``'s newer term: tell ``old``, the leader this replica followed
    in the older term, that term is over (a ``NotifyTerm`` at the new one).

    A quiescent leader sends nothing, and a follower sends nothing unasked, so a leader that
    only lost its way *to* the others (a one-way fault: a follower stopped hearing it, its
    detector reported it down, it won the next term, and the distribution drops everything
    it sends to the node it believes down) was never told: it stayed leader at the old term,
    in status and in the leader table clients route by, for as long as the fault lasted.
    The voters can usually still reach it; one message each deposes it at once. Skipped when
    ``old`` is the sender (it knows its term), this replica, or on a node reported down (the
    distribution would drop it). The quiescent leader's periodic check (``recheck``) covers
    a message lost on the way. Only with quiescence on: an awake leader learns the new term
    from the answers to its next heartbeat."""
    if old is None or not enabled(core) or old == core.self_id:
        return
    if old.node == sender.node or old.node in core.down_nodes:
        return
    core.count("quiesce.notify_old_leader")
    core.send(old, NotifyTerm())


def recheck(core: Replica) -> None:
    """A quiescent leader's timer fired: check on the followers with one quiesce round.

    A quiescent leader otherwise learns nothing until woken, and some news never wakes it:
    a newer term its followers adopted while the message telling it was lost
    (``tell_old_leader``), or a follower's replica that restarted empty and no announcement
    reached (``announce``). Every ``raft_liveness_grace_period_ms`` it sends the quiesce
    round again (``leader_round``, as if the quiet period had just ended): a follower that
    still holds everything acknowledges it and stays quiescent (no timer armed), one at a
    newer term answers with that term and deposes the leader, one that lost its data
    answers with a failure that keeps the leader awake and sends it a snapshot. The grace
    period is the age past which liveness evidence is stale anyway (check-quorum, the
    published ``live`` flags). The cost is one message and its answer per follower per
    period: at 1000 partitions per node and the default 30 s, about 22 rounds a second
    per node of three, against about 5500 heartbeats a second without quiescence."""
    core.quiescent = False
    core.quiesce_acks.clear()
    core.quiesce_woken_ts = core.now  # check-quorum judges from here, as after a wake
    core.count("quiesce.leader.recheck")


def recheck_ms(core: Replica) -> int:
    """How long a quiescent leader sleeps before its check (``recheck``)."""
    settings = core.settings
    return max(settings.raft_liveness_grace_period_ms, settings.raft_heartbeat_interval_ms)


def announce(core: Replica, extra_nodes: Iterable[str]) -> None:
    """At start: tell the same-named replica on every node of the config (or, with none
    known, on ``extra_nodes``) that this replica started anew, with a ``NotifyTerm``.

    A partition can restart while its node stays up (its supervisor restarted it), so no
    liveness report tells its peers, and a replica that comes back stalled (memory
    providers, a quarantined store) or disabled sends nothing of its own. Quiescent peers
    then kept believing in the old incarnation: followers in a leader that was gone (no
    leader until a client's request reached one of them), a leader in a follower that had
    lost its data (never repaired, so losing the leader's node left no quorum to elect).
    Any RPC wakes a quiescent replica: a woken follower re-arms its election timer (the old
    leader, if still in office, answers with a round that resets it), a woken leader
    replicates and sends a stalled replica a snapshot. The message is at this replica's
    term, so a peer at a newer one answers with it; one at an older term adopts it (as any
    RPC from a member would make it). Only with quiescence on: otherwise the peers' timers
    and heartbeats notice the restart."""
    if not enabled(core):
        return
    name = core.self_id.name
    nodes = {p.node for p in config.participants(core.current_config())}
    if not nodes:
        nodes = set(extra_nodes)
    nodes.discard(core.self_id.node)
    if nodes:
        core.count("quiesce.announce")
    for node in sorted(nodes):
        core.send(Identity(name, node), NotifyTerm())


def _fnv1a(text: str) -> int:
    """32-bit FNV-1a of ``text``: the same on every node and run (``hash`` of a str is not)."""
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def successor_rank(core: Replica, dead_node: str) -> tuple[int, int] | None:
    """This replica's place among the candidates to succeed a leader on ``dead_node``.

    The candidates are the config's data-holding voters on nodes not reported down, ordered
    by a hash of (partition server name, node): every replica of a partition computes the same
    order, and over many partitions each surviving node comes first about equally often, so
    the new leaderships spread over the survivors. ``(rank, count)``, or ``None`` when this
    replica is not a candidate (a witness, or not a member).
    """
    down = core.down_nodes
    name = core.self_id.name
    alive = [
        p.node
        for p in config.full_members(core.current_config())
        if p.node != dead_node and p.node not in down
    ]
    if core.self_id.node not in alive:
        return None
    alive.sort(key=lambda node: (_fnv1a(f"{name}|{node}"), node))
    return alive.index(core.self_id.node), len(alive)


def staggered_election_timeout(core: Replica, rank: int, count: int) -> None:
    """Arm the election timer in this replica's own slot of the election timeout range.

    When a leader's node dies, every partition it led wakes on every surviving node at the
    same moment. With independent random timers two survivors of a partition fire close
    together often enough, once the election storm slows each round trip, that many elections
    split and cost whole extra timeouts (measured: a third of 334 partitions, up to three extra
    terms). Rank ``r`` of ``count`` draws from the first 60 % of the r-th of ``count`` equal
    slices of [min, max]: the first choice fires alone, the next only if it has not been
    heard from at least 40 % of a slice later. The bound stays one election timeout.
    """
    settings = core.settings
    low = settings.raft_election_timeout_ms
    high = settings.raft_election_timeout_ms_max
    if high <= low or count <= 0:
        core.election_timeout()
        return
    width = (high - low) / count
    core.election_timeout(low + 1 + int(width * rank + core.rand() * width * 0.6))


def _describe(event: Event) -> str:
    """What woke a replica, for the log: the RPC's type and sender, or the event's type."""
    if type(event) is RaftRpc:
        return f"{type(event.payload).__name__} t{event.term} from {event.sender.node}"
    return type(event).__name__


def wake(core: Replica, why: str, rank: tuple[int, int] | None = None, detail: str = "") -> None:
    """Leave quiescence: a leader replicates now, a follower re-arms its election timer
    (in its ``rank`` slot, see ``staggered_election_timeout``, when given)."""
    core.quiescent = False
    core.quiesce_acks.clear()
    core.count(("quiesce.wake", why))
    # DEBUG, not INFO: with many partitions a write every few seconds each is a wake and a
    # quiesce per write (a review measured ~85 MB of log per node per hour at 1000
    # partitions and 200 writes/s); the ``quiesce.*`` counters count them.
    if detail:
        core.log_debug("wakes from quiescence (%s: %s)", why, detail)
    else:
        core.log_debug("wakes from quiescence (%s)", why)
    if core.state is State.LEADER:
        # A round now, without the check-quorum test: the quorum was silent because we were,
        # and the next heartbeat timeout judges the answers to this round.
        core.quiesce_woken_ts = core.now
        replication.commit_and_replicate(core)
        core.heartbeat_timeout()
    else:
        # last_quorum_ts stays as old as the last round: a woken follower does not refuse
        # votes for leader stickiness, so a peer that saw the leader's node die first is not
        # held back by one that has not noticed yet (that would cost an election timeout).
        if rank is None:
            core.election_timeout()
        else:
            staggered_election_timeout(core, *rank)


def reset(core: Replica) -> None:
    """A state change ends quiescence (the new state's enter arms its own timer)."""
    core.quiescent = False
    core.woken_by_leader_down = False
    core.quiesce_woken_ts = None
    core.quiesce_acks.clear()
    core.quiet_since = core.now


# -- leader ------------------------------------------------------------------------------------


_BUSY: Final = 0
_IDLE: Final = 1
_IDLE_PEER_DOWN: Final = 2  # idle, but a participant's node is reported down
_SETTLED: Final = 3  # nothing to send but liveness, though not quiet long enough to quiesce


def _leader_idle(core: Replica) -> int:
    if core.handover is not None or core.pending_read or core.held_reads or core.queued:
        return _BUSY
    if commit.has_pending_commits(core) or core.batch_deadline is not None:
        return _BUSY
    last = core.log.last_index()
    if core.commit_index != last or core.last_applied != last:
        return _BUSY
    if core.queues.apply_queue_size() > 0:
        return _BUSY
    down = core.down_nodes
    match = core.match_indices
    self_id = core.self_id
    peer_down = False
    for peer in config.participants(core.current_config()):
        if peer == self_id:
            continue
        node = peer.node
        if node in down:
            peer_down = True
        elif match.get(node) != last:
            return _BUSY
    if core.now - core.quiet_since < core.settings.raft_quiesce_after_ms:
        return _SETTLED if _may_settle(core) else _BUSY
    return _IDLE_PEER_DOWN if peer_down else _IDLE


def _may_settle(core: Replica) -> bool:
    """Whether slow heartbeats keep what the full rate would: no read lease (it needs answers
    younger than ``raft_leader_read_lease_ms``), and a liveness grace period that two slow
    rounds fit in (check-quorum judges the leader by it, and the followers' published
    ``live`` flag by when they last heard from the leader)."""
    settings = core.settings
    if settings.raft_leader_read_lease_ms > 0:
        return False
    return 2 * slow_heartbeat_ms(core) < settings.raft_liveness_grace_period_ms


def slow_heartbeat_ms(core: Replica) -> int:
    """The heartbeat interval of a settled leader, or of an idle one that cannot quiesce
    because a participant's node is down: a quarter of the minimum election timeout (never
    below the normal interval), so its live followers' timers and leader stickiness still
    hold with a heartbeat to spare."""
    settings = core.settings
    return max(settings.raft_heartbeat_interval_ms, settings.raft_election_timeout_ms // 4)


def _slow_round(core: Replica) -> bool:
    """A settled leader, and an idle one with a down participant, heartbeat every
    ``slow_heartbeat_ms``.

    It stays awake (a quiescent leader would let its live followers forget it, and one of
    them would then vote for a node that only the leader cannot reach, breaking leader
    stickiness), but without this rule every partition that has a replica on a dead node
    heartbeats at the full rate until the node returns: after one node of three dies at
    1000 partitions, about 8000 rounds a second on the two survivors, which starved the
    elections that replace the dead node's leaders (10 s per election instead of a round
    trip). ``False``: a normal round is due now.
    """
    left = _until_slow_round(core)
    if left <= 0:
        core.count("quiesce.leader.slow_round")
        return False
    core.set_timeout(TimeoutKind.HEARTBEAT, left)
    return True


def _until_slow_round(core: Replica) -> int:
    """Milliseconds until ``slow_heartbeat_ms`` since the last round sent are over (at most
    0: a round is due)."""
    interval = slow_heartbeat_ms(core)
    sent = core.heartbeat_send_ts
    elapsed = core.now - max(sent.values()) if sent else interval
    return interval - elapsed


def leaves_round_to_timer(core: Replica) -> bool:
    """After a successful answer: whether a round now would carry nothing the followers need
    at once (every live participant was sent every entry, no commit, read or handover waits;
    a new commit index can wait for the next round, see the module's docstring), so that the
    next round is the heartbeat timer's to decide however long ago the last one left; the
    timer then sends a normal, slow or quiesce round (``leader_round``).

    ``replication.maybe_heartbeat`` starts a round at once when the last one is older than
    the interval (so that a stream of answers, each re-arming the timer, cannot starve it).
    Under load, when a round trip takes longer than the interval (seen at 1000 busy
    partitions per node), every round's answers started the next one, and a leader with
    nothing to send heartbeated at the round-trip pace instead of its timer's. Only with
    quiescence on (without it the leader keeps WARaft's behaviour) and when slow rounds cost
    nothing (``_may_settle``)."""
    if not _may_leave_round_to_answers(core):
        return False
    if core.batch_deadline is not None or commit.has_pending_commits(core):
        return False
    return _all_sent(core)


def _may_leave_round_to_answers(core: Replica) -> bool:
    """What both rules that leave the next round to the answers on their way ask first:
    quiescence on, slow rounds cost nothing, and no read or handover waits for a round."""
    if not enabled(core) or not _may_settle(core):
        return False
    return core.handover is None and not core.pending_read and not core.held_reads


def _all_sent(core: Replica) -> bool:
    """Whether every live participant was sent every entry of the log."""
    last = core.log.last_index()
    down = core.down_nodes
    next_indices = core.next_indices
    self_id = core.self_id
    for peer in config.participants(core.current_config()):
        node = peer.node
        if peer == self_id or node in down:
            continue
        if next_indices.get(node, 0) <= last:
            return False
    return True


def _commits_await_answers(core: Replica) -> bool:
    """At a heartbeat timeout: whether the only thing a round now would carry is commits that
    wait for an answer on its way to start theirs (``replication.await_round``): every live
    follower has a round unanswered, every entry went out, no read or handover waits.

    Under load, when a round trip took longer than the heartbeat interval (at 1000 busy
    partitions per node: queues of thousands of messages on every node), the timer fired
    while the answers were on their way and sent those commits in a round of their own,
    a round per interval instead of one per round trip: more, smaller rounds, each costing
    the followers an append (and an fsync, in durable mode). The timer now waits for the
    answers, or for the slow interval should they be lost (``_slow_round``)."""
    return (
        _may_leave_round_to_answers(core)
        and replication.commits_may_await_round(core)
        and _all_sent(core)
    )


def _holds_back(core: Replica, idle: int) -> str | None:
    """Why a leader in state ``idle`` (not ``_IDLE``) keeps to the slow interval, or ``None``
    when a normal round is due: settled, idle with a participant's node down, or busy only
    with answers on their way."""
    if idle != _BUSY:
        return "slow"
    if leaves_round_to_timer(core):
        # Everything went out and only answers are awaited (a round trip longer than the
        # interval, under load): a round now would repeat what is on its way. Wait for the
        # answers, or the slow interval if one was lost.
        return "awaiting_answers"
    if _commits_await_answers(core):
        # The same, with commits that the first answer will send in its round.
        return "commits_await_answers"
    return None


def arm_leader_timer(core: Replica, leaves_round: bool = False) -> None:
    """Arm a leader's heartbeat timer after a round it sent or an answer it took: at the slow
    interval's deadline when a firing would only hold back to it (``leader_round``), else at
    the normal interval. ``leaves_round``: the caller found ``leaves_round_to_timer`` true
    just now, so a firing holds back unless the leader is idle (not asked again: this runs
    at every answer).

    Under load at 1000 busy partitions per node, a round trip outlasts the normal interval:
    the timer armed at it fired while the answers were on their way, found nothing to send,
    and was armed again for the slow deadline, about 1.4 firings per committed command, each
    a timer delivery and a step of the core for nothing. Whatever happens before the slow
    deadline that needs a round sooner arms the timer itself: an answer (here again), a
    commit or read (``batch_or_heartbeat``, or the answer it awaits), a config change, a
    handover; should the answers be lost, the round goes out at the same deadline as
    before. Without quiescence the timer is WARaft's."""
    if enabled(core) and replication.leader_eligible(core) == "eligible":
        idle = _leader_idle(core)
        if idle != _IDLE and (leaves_round or _holds_back(core, idle) is not None):
            left = _until_slow_round(core)
            if left > 0:
                core.count("quiesce.leader.armed_slow")
                core.set_timeout(TimeoutKind.HEARTBEAT, left)
                return
    core.heartbeat_timeout()


def leader_round(core: Replica) -> bool:
    """At a heartbeat timeout: quiesce, send the quiesce round, hold a slow round back, or
    ``False`` for a normal round."""
    if not enabled(core) or replication.leader_eligible(core) != "eligible":
        return False
    idle = _leader_idle(core)
    if idle != _IDLE:
        core.quiesce_acks.clear()
        why = _holds_back(core, idle)
        if why is None:
            return False
        if why != "slow":
            core.count(f"quiesce.leader.{why}")
        return _slow_round(core)
    self_id = core.self_id
    peers = [p for p in config.participants(core.current_config()) if p != self_id]
    acks = core.quiesce_acks
    if all(p.node in acks for p in peers):
        core.quiescent = True
        core.count("quiesce.leader")
        core.log_debug("quiesces at %d", core.commit_index)
        core.set_timeout(TimeoutKind.HEARTBEAT, recheck_ms(core))  # see ``recheck``
        return True
    cfg = core.current_config()
    for peer in peers:
        if peer.node not in acks:
            replication.replicate_to_peer(core, peer, cfg, quiesce=True)
    core.heartbeat_timeout()
    return True


def leader_ack(core: Replica, sender: Identity, response: AppendEntriesResponse) -> None:
    """Count a follower's answer to the quiesce round; any other answer means the follower is
    awake (a plain round reached it after its ack, and woke it), so it must be sent the
    quiesce round again before the leader may go quiet. Otherwise the leader quiesced with
    that follower's election timer running, and an idle partition elected (seen right after
    bootstrapping 1000 partitions)."""
    if response.quiesced and response.match_index == core.log.last_index():
        core.quiesce_acks.add(sender.node)
    else:
        core.quiesce_acks.discard(sender.node)


# -- follower / witness -----------------------------------------------------------------------


def follower_ack(core: Replica, leader: Identity, request: AppendEntries, match: int) -> bool:
    """After accepting ``request``: go quiescent if it is a quiesce round we fully hold."""
    if not (request.quiesce and enabled(core)):
        return False
    if request.entries or match != request.prev_log_index or core.commit_index != match:
        return False
    if request.commit_index != match or leader.node in core.down_nodes:
        return False
    core.quiescent = True
    core.count("quiesce.follower")
    return True
