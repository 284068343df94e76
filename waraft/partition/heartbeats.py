"""Coalesced heartbeats (issue 13): one frame per peer node per window, not one per partition.

Every partition leader heartbeats every follower; with P partitions led towards a node that is
P small frames per heartbeat interval, and as many responses. The partition server hands its
*heartbeat-only* batches (empty ``AppendEntries`` and the success responses to them, see
``is_heartbeat``) to this node-wide ``Coalescer`` instead of sending them; the coalescer waits
``raft_coalesced_heartbeat_window_ms`` after the first one arrives, then sends everything
gathered for a node as one ``("heartbeats", [(server_name, [wire_rpc, ...]), ...])`` cast to
``raft_heartbeats`` on that node. There the distribution's receive thread hands the frame to
``receive`` (an inline handler), which fans the RPCs out to the local partition servers as
ordinary ``("rpcs", [...])`` casts. Responses travel back the same way.

Entries and failed appends are never delayed: they carry data or recovery, and commit latency
depends on them. Heartbeats lose nothing by waiting a few milliseconds (the election timeout is
seconds), and a dropped frame is a dropped heartbeat, which Raft tolerates.

Appends with entries and their responses take a shorter road to the same frame
(``send_at_turn_end``): what the servers on one scheduler send to a peer node while the
scheduler has work waiting leaves as one frame when its run queue empties (``otp.at_turn_end``),
so no timer delays them; a lone batch leaves as the ordinary ``("rpcs", [...])`` cast.

Idle costs nothing: the flushing thread sleeps on a condition until something is queued, and
a quiescent partition queues nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from waraft import distribution, otp
from waraft.core.rpc import AppendEntries, AppendEntriesResponse, RaftRpc
from waraft.distribution import policy
from waraft.services import codec

logger = logging.getLogger(__name__)

INLINE_NAME: Final = "raft_heartbeats"
FRAME_TAG: Final = "heartbeats"

Send = Callable[[tuple[str, str], Any], Any]


def is_heartbeat(rpc: RaftRpc) -> bool:
    """An empty append (a heartbeat or commit-index update) or a success answer to one."""
    payload = rpc.payload
    if type(payload) is AppendEntries:
        return not payload.entries
    if type(payload) is AppendEntriesResponse:
        return payload.success and payload.match_index == payload.prev_log_index
    return False


class Coalescer:
    """Gathers heartbeat wires per destination node and sends one frame per node per window."""

    def __init__(self, window_ms: int, send: Send | None = None) -> None:
        self.window = max(0, window_ms) / 1000.0
        self._send: Send = send or distribution.cast
        self._cond = threading.Condition()
        self._pending: dict[str, list[tuple[str, list[Any]]]] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.frames = 0
        self.rpcs = 0
        # per destination node: [frames, rpcs] (``stats``)
        self.per_node: dict[str, list[int]] = {}

    def add(self, node: str, name: str, wires: list[Any]) -> None:
        """Queue ``wires`` for server ``name`` on ``node``; never blocks on the network."""
        with self._cond:
            self._pending.setdefault(node, []).append((name, wires))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="raft_heartbeats", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def flush(self) -> None:
        """Send everything queued now (one frame per node)."""
        with self._cond:
            batch, self._pending = self._pending, {}
        for node, items in batch.items():
            count = sum(len(wires) for _, wires in items)
            self.frames += 1
            self.rpcs += count
            sent = self.per_node.get(node)
            if sent is None:
                sent = self.per_node[node] = [0, 0]
            sent[0] += 1
            sent[1] += count
            try:
                self._send((INLINE_NAME, node), (FRAME_TAG, items))
            except Exception:
                logger.exception("coalesced heartbeats to %s failed", node)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _run(self) -> None:
        otp.set_os_name("raft:heartbeats")
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
            time.sleep(self.window)  # let the other partitions' heartbeats join the frame
            self.flush()


class _TurnFrames(threading.local):
    """What the servers on this scheduler thread sent in its current turn, per peer node."""

    def __init__(self) -> None:
        self.pending: dict[str, list[tuple[str, list[Any]]]] = {}


_turn = _TurnFrames()
# Frames and server batches sent by send_at_turn_end, all threads (approximate: no lock).
turn_sent = [0, 0]


def send_at_turn_end(node: str, name: str, wires: list[Any]) -> bool:
    """Queue ``wires`` for server ``name`` on ``node`` until the calling scheduled process's
    scheduler ends its turn; False (nothing queued) when the caller is not a scheduled
    process, which then sends them itself."""
    pending = _turn.pending
    if not pending and not otp.at_turn_end(_turn, _flush_turn):
        return False
    pending.setdefault(node, []).append((name, wires))
    return True


MAX_TURN_FRAME_BYTES: Final = 8 * 1024 * 1024
"""A turn's batches to one node leave in frames of at most about this many encoded bytes
(one batch larger than it goes alone). The distribution drops frames over its
``max_frame_bytes`` (16 MiB by default), and one turn can hold many partitions' appends of up
to ``raft_max_heartbeat_size`` (1 MiB) each, several per partition while a restarted follower
catches up: one frame for all of them would be dropped, and again at every retry."""


def _flush_turn() -> None:
    """Send this thread's queued batches: per node, the ordinary cast for a lone batch, else
    frames of at most ``MAX_TURN_FRAME_BYTES`` (usually one)."""
    pending = _turn.pending
    if not pending:
        return
    _turn.pending = {}
    for node, items in pending.items():
        try:
            if len(items) == 1:
                name, wires = items[0]
                distribution.cast((name, node), ("rpcs", wires))
                turn_sent[0] += 1
            else:
                whole = codec.packb((FRAME_TAG, items))
                # Split only when needed: encoding item by item costs about twice as much.
                payloads = (
                    [whole]
                    if len(whole) <= MAX_TURN_FRAME_BYTES
                    else frame_payloads(items, MAX_TURN_FRAME_BYTES)
                )
                for payload in payloads:
                    distribution.cast_bytes((INLINE_NAME, node), payload)
                    turn_sent[0] += 1
            turn_sent[1] += len(items)
        except Exception:
            logger.exception("RPCs to %s failed", node)


_FRAME_HEAD: Final = b"\x92" + codec.packb(FRAME_TAG)  # a 2-array: the tag, then the items


def frame_payloads(items: Sequence[tuple[str, list[Any]]], limit: int) -> list[bytes]:
    """``codec.packb((FRAME_TAG, chunk))`` for consecutive chunks of ``items`` whose encoded
    items add up to at most ``limit`` bytes (at least one item a chunk), each item encoded
    once: the same bytes as one ``packb`` of the whole when it fits."""
    out: list[bytes] = []
    parts: list[bytes] = [_FRAME_HEAD, b""]  # the array header goes in once the count is known
    size = 0
    for item in items:
        encoded = codec.packb(item)
        if size and size + len(encoded) > limit:
            parts[1] = codec.array_header(len(parts) - 2)
            out.append(b"".join(parts))  # one copy of the frame's bytes
            parts, size = [_FRAME_HEAD, b""], 0
        parts.append(encoded)
        size += len(encoded) or 1
    if len(parts) > 2:
        parts[1] = codec.array_header(len(parts) - 2)
        out.append(b"".join(parts))
    return out


SERVER_PREFIX: Final = "raft_server_"


def wires_from_node(node: str, batch: Any) -> bool:
    """Every wire RPC of ``batch`` names ``node`` as its sender: a node speaks only for itself
    (with CURVE, its key proves which node that is)."""
    if not isinstance(batch, (list, tuple)):
        return False
    for wire in batch:
        if not isinstance(wire, (list, tuple)) or len(wire) not in (4, 5):
            return False
        if wire[len(wire) - 2] != node:  # sender_node: index 3 (current) or 2 (legacy)
            return False
    return True


def _frame_from_sender(sender: policy.Sender, msg: Any) -> bool:
    """A coalesced frame only carries its own node's RPCs, only to partition servers: the
    fan-out below is a local cast, which no allow-list checks again."""
    items = msg[1] if len(msg) == 2 else None
    if not isinstance(items, (list, tuple)):
        return False
    return all(
        isinstance(item, (list, tuple))
        and len(item) == 2
        and isinstance(item[0], str)
        and item[0].startswith(SERVER_PREFIX)
        and wires_from_node(sender.node_id, item[1])
        for item in items
    )


# Frames and RPCs received (``receive`` runs on the distribution's receive thread only).
_received = [0, 0]


def receive(msg: Any, origin: str | None = None) -> bool:
    """Inline handler for ``raft_heartbeats``: fan a frame out to the local servers."""
    if not (isinstance(msg, (list, tuple)) and len(msg) == 2 and msg[0] == FRAME_TAG):
        return False
    items: Sequence[Any] = msg[1] if isinstance(msg[1], (list, tuple)) else ()
    received = _received
    received[0] += 1
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
            batch = item[1]
            received[1] += len(batch) if isinstance(batch, (list, tuple)) else 0
            otp.cast(item[0], ("rpcs", batch))
    return True


def stats() -> dict[str, Any]:
    """Coalescing on this node since start: ``sent`` per destination node ``{"frames",
    "rpcs"}`` (every frame is one distribution message carrying ``rpcs`` heartbeats or
    answers of many partitions), ``received`` ``{"frames", "rpcs"}`` over all peers, and
    ``turn`` ``{"frames", "batches"}``: what ``send_at_turn_end`` sent, to all peers (a frame
    carries the batches of one or more servers)."""
    out: dict[str, Any] = {"received": {"frames": _received[0], "rpcs": _received[1]}}
    out["turn"] = {"frames": turn_sent[0], "batches": turn_sent[1]}
    c = _coalescer
    sent = {} if c is None else dict(c.per_node)
    out["sent"] = {node: {"frames": f, "rpcs": r} for node, (f, r) in sent.items()}
    return out


_lock = threading.Lock()
_coalescer: Coalescer | None = None


def coalescer(window_ms: int) -> Coalescer:
    """This process's coalescer (created on first use with ``window_ms``)."""
    global _coalescer
    with _lock:
        if _coalescer is None:
            _coalescer = Coalescer(window_ms)
        return _coalescer


def install() -> None:
    """Receive coalesced frames on this node (idempotent): from members only, each frame
    checked by ``_frame_from_sender`` before the inline handler sees it."""
    policy.allow(
        INLINE_NAME, casts={FRAME_TAG: policy.Rule(policy.MEMBER, guard=_frame_from_sender)}
    )
    distribution.set_inline_handler(INLINE_NAME, receive)
