"""Leadership handover (digest §2.13): the leader side and the readiness rules.

A handover sends the chosen successor the entries it lacks in one ``handover`` RPC; the
successor appends them and starts a forced election (``follower.on_handover``). While the
handover runs the leader sends no heartbeats and redirects commits and reads to the successor;
it ends with the successor's higher-term vote request, a ``handover_failed``, or a timeout.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from waraft.core import config
from waraft.core.rpc import Handover
from waraft.core.types import (
    LEASE_IN_PROGRESS,
    LEASE_PENDING_RECONFIRMATION,
    LEASE_UNAFFECTED,
    Identity,
    error,
)

if TYPE_CHECKING:
    from waraft.core.replica import Replica


def _cutoffs(core: Replica) -> tuple[int, int]:
    settings = core.settings
    last = core.log.last_index()
    return (
        last - settings.raft_max_handover_log_entries,
        last - settings.handover_max_unapplied_entries,
    )


def is_ready(core: Replica, node: str) -> bool:
    """Close enough behind us, both in its log and in applying it (known values only)."""
    match = core.match_indices.get(node)
    applied = core.last_applied_indices.get(node)
    if match is None or applied is None:
        return False
    match_cutoff, apply_cutoff = _cutoffs(core)
    return match >= match_cutoff and applied >= apply_cutoff


def candidates(core: Replica, silent: Collection[str]) -> list[str]:
    """Full members (not us) that are ready to take over and not known unable to
    (``cannot_lead``; ``silent``: the nodes ``leader.unresponsive`` reports)."""
    return [
        peer.node
        for peer in config.full_members(core.current_config())
        if peer.node != core.node
        and is_ready(core, peer.node)
        and cannot_lead(core, peer, silent) is None
    ]


def cannot_lead(core: Replica, peer: Identity, silent: Collection[str]) -> str | None:
    """Why the leader knows ``peer``, a voting member, could not take over (``None``: it
    may): a ``witness`` never stands for election, and a node the failure detector reports
    ``down`` or that has not answered this leader for the silence window (``unresponsive``:
    down, cut off or disabled, as the leader's status reports it) would not get the RPC or
    ignore it. Such a handover was answered ``("ok", node)``: the witness declined within a
    millisecond, a silent target left the partition without heartbeats until the handover
    timed out."""
    if peer in core.current_config().witness:
        return "witness"
    if peer.node in core.down_nodes:
        return "down"
    if peer.node in silent:
        return "unresponsive"
    return None


def is_peer_ready(core: Replica, peer: Any) -> Any:
    """``"ok"`` or ``("error", not_a_participant | not_ready)``."""
    if isinstance(peer, (list, tuple)) and len(peer) == 2:
        peer = Identity(str(peer[0]), str(peer[1]))  # a pair that crossed the wire
    if peer not in config.participants(core.current_config()):
        return error("not_a_participant")
    if not is_ready(core, peer.node):
        return error("not_ready")
    return "ok"


def start(core: Replica, from_: Any, peer_node: str | None, silent: Collection[str]) -> None:
    """The leader's ``handover`` command: pick or check the target, then send the RPC.

    A target that is no voting member is WARaft's ``invalid_peer``. One the leader knows
    cannot take over is refused with ``("cannot_lead", why)`` (``cannot_lead``), checked
    after WARaft's own errors, so that only what WARaft accepted is answered differently."""
    if peer_node is None:
        options = candidates(core, silent)
        if not options:
            core.log_notice("has no valid peer to hand over to")
            core.reply(from_, error("no_valid_peer"))
            return
        peer_node = options[int(core.rand() * len(options)) % len(options)]
    if peer_node == core.node:
        core.reply(from_, ("ok", peer_node))
        return
    if core.handover is not None:
        core.reply(from_, error("duplicate"))
        return
    peer = config.member_by_node(peer_node, core.current_config())
    if peer is None:
        core.reply(from_, error("invalid_peer"))
        return
    log = core.log
    settings = core.settings
    first = log.first_index()
    last = log.last_index()
    send_index = max(core.match_indices.get(peer_node, 0) + 1, first + 1)
    max_entries = settings.raft_max_handover_log_entries
    if last - send_index > max_entries:
        core.count("leader.handover.peer_lagging")
        core.reply(from_, error("peer_lagging"))
        return
    prev_index = send_index - 1
    prev_term = log.term(prev_index)
    entries = log.entries(send_index, last, max_entries, settings.raft_max_handover_log_size)
    if prev_term is None or prev_index + len(entries) != last:
        core.count("leader.handover.oversize")
        core.reply(from_, error("oversize"))
        return
    why = cannot_lead(core, peer, silent)
    if why is not None:
        core.log_notice("refuses handover to %s: %s", peer, why)
        core.reply(from_, error(("cannot_lead", why)))
        return
    core.count("leader.handover")
    core.log_notice("starting handover to %s", peer)
    ref = core.next_ref()
    core.handover = (peer_node, ref, core.now + settings.raft_handover_timeout_ms)
    core.handover_lease_state = LEASE_IN_PROGRESS
    core.send(peer, Handover(ref, prev_index, prev_term, entries))
    # The timer judges the handover's timeout: at the normal interval, not at a slow
    # deadline armed before (a settled leader's, ``waraft.core.quiesce``).
    core.heartbeat_timeout()
    core.reply(from_, ("ok", peer_node))


def on_failed(core: Replica, sender: Identity, ref: int) -> None:
    """The successor declined; in-flight heartbeat acks stay valid for the lease."""
    running = core.handover
    if running is not None and running[0] == sender.node and running[1] == ref:
        core.log_notice("resuming normal operation after failed handover to %s", sender)
        core.handover = None
        core.handover_lease_state = LEASE_UNAFFECTED


def check_timeout(core: Replica) -> bool:
    """On a leader timeout during a handover: ``True`` if the handover just expired.

    An expired handover clears the reply timestamps and holds the lease until a fresh quorum
    answers (peers may have voted for the successor since their last ack).
    """
    running = core.handover
    if running is None:
        return False
    if core.now > running[2]:
        core.log_notice("handover to %s timed out", running[0])
        core.handover = None
        core.handover_lease_state = LEASE_PENDING_RECONFIRMATION
        core.heartbeat_reply_ts = {}
        # Only answers to what is sent from now on renew the lease.
        core.lease_sends = {}
        core.lease_acks = {}
        return True
    return False
