"""Erlang distribution's role over ZeroMQ, with msgpack frames (never pickle).

A node is one OS process whose id says how to reach it: ``name@host:port``. ``start(node_id)``
binds a ROUTER on that endpoint, makes the process's default ``waraft.otp`` node carry the id
and installs itself as otp's remote router, so that ``otp.cast/send/call((name, node_id), ...)``
reach registered processes on other nodes::

    waraft.distribution.start("n1@127.0.0.1:7001")
    otp.cast(("raft_server_t_1", "n2@127.0.0.1:7002"), msg)        # never blocks
    otp.call(("raft_server_t_1", "n2@127.0.0.1:7002"), req, 5.0)    # ExitError on failure

Semantics (WARaft's ``wa_raft_distribution``, Erlang's ``[noconnect, nosuspend]`` sends):

* ``cast``/``send`` never block and never raise: when the peer's queue is full (``sndhwm``),
  the peer is down or cut off by a fault, the message is dropped and counted; they return
  False then.
* ``call`` raises ``ExitError("timeout")``, ``ExitError(("nodedown", node))`` when the peer
  is down, unreachable or lost while waiting (fast: a refused or lost TCP connection is seen at
  once), ``ExitError("noproc")`` when no process has that name there, or the callee's exit
  reason. A callee may defer its reply and complete ``from_`` from any thread.
  :func:`send_request` / :func:`wait_response` keep many calls in flight from one thread.
* Messages from one thread (one actor) to one node arrive in order (one DEALER each).
* Frames are limited to ``max_frame_bytes``; malformed, oversized, unknown-version and
  unknown-kind frames are dropped and counted (:func:`stats`) and never disturb the node.

Hot path (what the server shell should do):

* send from the actor's own thread (its links keep per-(actor, node) FIFO order), with
  :func:`cast` / :func:`cast_bytes` rather than ``otp.cast`` when the outcome matters: False
  means dropped (WARaft's ``{error, nosuspend}``), so do not advance that peer's next index;
* encode once, ship many: ``payload = encode(msg)`` then ``cast_bytes(addr, payload)`` for
  every peer that gets the same message; the receiver sees exactly what ``cast(addr, msg)``
  would have delivered. When only part of a message is shared (the entries of an
  AppendEntries whose other fields differ per peer), encode that part once with
  ``codec.packb`` and put the resulting ``bytes`` in the message: msgpack copies bytes
  without walking them, and the receiver decodes them with ``codec.unpackb``;
* answer remote callers by completing their ``from_`` (``from_.reply(value)``) from
  whichever actor holds it: it goes straight back over ZeroMQ from that thread;
* no ``call`` on the hot path. Frames of 64 KiB and more go to libzmq without a copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from waraft.distribution import envelope, inline
from waraft.distribution.inline import FailCall
from waraft.distribution.keys import KeyChanges
from waraft.distribution.nodeid import NodeIdError, is_node_id, make, parse
from waraft.distribution.receiver import OVERLOADED
from waraft.distribution.reply import RemoteReplyTo
from waraft.distribution.runtime import Dist, add_peer_listener, remove_peer_listener
from waraft.distribution.settings import CurveConfig, DistSettings
from waraft.otp import node as otp_node
from waraft.otp.reply import LocalReplyTo, ReplyTo
from waraft.services import codec

__all__ = [
    "OVERLOADED",
    "CurveConfig",
    "DistSettings",
    "FailCall",
    "NodeIdError",
    "RemoteReplyTo",
    "add_peer_listener",
    "call",
    "cast",
    "cast_bytes",
    "cast_limit",
    "clear_fault",
    "encode",
    "frame_limit",
    "is_node_id",
    "is_started",
    "make",
    "node",
    "parse",
    "peers",
    "reload_keys",
    "remove_peer_listener",
    "send",
    "send_bytes",
    "send_request",
    "set_fault",
    "set_idle_hook",
    "set_inline_handler",
    "set_shed_handler",
    "set_unserved_call_handler",
    "set_unserved_handler",
    "start",
    "stats",
    "stop",
    "wait_response",
]

_lock = threading.Lock()
_dist: Dist | None = None
_DEFAULTS = DistSettings()


def start(
    node_id: str,
    *,
    bind: str | None = None,
    curve: CurveConfig | Mapping[str, Any] | None = None,
    max_frame_bytes: int = _DEFAULTS.max_frame_bytes,
    sndhwm: int = _DEFAULTS.sndhwm,
    rcvhwm: int = _DEFAULTS.rcvhwm,
    ping_interval: float = _DEFAULTS.ping_interval,
    down_after: float = _DEFAULTS.down_after,
    connect_timeout: float = _DEFAULTS.connect_timeout,
    forget_after: float = _DEFAULTS.forget_after,
    check_peer_host: bool = _DEFAULTS.check_peer_host,
    new_peers_per_s: float = _DEFAULTS.new_peers_per_s,
    admin_rate_per_sender: float = _DEFAULTS.admin_rate_per_sender,
    admin_rate_per_node: float = _DEFAULTS.admin_rate_per_node,
    settings: DistSettings | None = None,
    cluster_id: str | None = None,
) -> str:
    """Make this process the node ``node_id`` (``name@host:port``) and return its id.

    Port 0 binds an ephemeral port and the returned id carries the real one. ``bind``
    overrides the listen endpoint (e.g. ``"tcp://0.0.0.0:7001"`` to listen on every interface
    while the id advertises one address). ``curve`` (a :class:`CurveConfig` or a dict with its
    fields) turns on CURVE encryption and authentication (with ``waraft keys create``'s keys,
    see :mod:`waraft.distribution.keys`, also per-key rights). The other keywords are the
    fields of :class:`DistSettings`. What other nodes may send is limited by the allow-list
    of :mod:`waraft.distribution.policy`. ``settings`` gives every tunable at
    once (the keyword arguments are ignored then). ``cluster_id`` makes this a node of that
    cluster (see :func:`set_cluster_id`). The default otp node becomes the one with
    this id (created if needed), so start distribution before starting actors.

    Raises ``RuntimeError`` if already started, ``NodeIdError`` for a bad id and
    ``zmq.ZMQError`` if the endpoint cannot be bound.
    """
    global _dist
    if settings is None:
        settings = DistSettings(
            max_frame_bytes=max_frame_bytes,
            sndhwm=sndhwm,
            rcvhwm=rcvhwm,
            ping_interval=ping_interval,
            down_after=down_after,
            connect_timeout=connect_timeout,
            forget_after=forget_after,
            check_peer_host=check_peer_host,
            new_peers_per_s=new_peers_per_s,
            admin_rate_per_sender=admin_rate_per_sender,
            admin_rate_per_node=admin_rate_per_node,
        )
    curve_config = None if curve is None else CurveConfig.coerce(curve)
    with _lock:
        if _dist is not None:
            raise RuntimeError(f"distribution already started as {_dist.node_id}")
        _dist = Dist(
            node_id, bind=bind, curve=curve_config, settings=settings, cluster_id=cluster_id
        )
        return _dist.node_id


def stop(timeout: float = 2.0) -> None:
    """Close every socket (linger 0), stop the threads and terminate the ZeroMQ context.

    Bounded by about ``timeout`` seconds; calls still waiting fail with ``nodedown``. The otp
    node and its actors keep running (without a remote router). ``start`` may be called
    again afterwards. No-op when not started.
    """
    global _dist
    with _lock:
        dist, _dist = _dist, None
    if dist is not None:
        dist.stop(timeout)


def is_started() -> bool:
    """True between :func:`start` and :func:`stop`."""
    return _dist is not None


def node() -> str:
    """This node's id (the current otp node's id when distribution is not started)."""
    dist = _dist
    return dist.node_id if dist is not None else otp_node.current().id


def _running() -> Dist:
    dist = _dist
    if dist is None:
        raise RuntimeError("waraft.distribution is not started")
    return dist


def _local(node_id: str) -> bool:
    dist = _dist
    return (dist is not None and node_id == dist.node_id) or otp_node.get(node_id) is not None


def cast(addr: tuple[str, str], msg: Any) -> bool:
    """``otp.cast`` to ``(name, node_id)`` that reports whether the message was queued (False
    also when distribution is not started and the node is not in this process)."""
    if _local(addr[1]):
        from waraft.otp import messaging

        messaging.cast(addr, msg)
        return True
    dist = _dist
    return dist is not None and dist.cast(addr, msg)


def send(addr: tuple[str, str], msg: Any) -> bool:
    """``otp.send`` (to ``handle_info``) that reports whether the message was queued."""
    if _local(addr[1]):
        from waraft.otp import messaging

        messaging.send(addr, msg)
        return True
    dist = _dist
    return dist is not None and dist.send(addr, msg)


def call(addr: tuple[str, str], request: Any, timeout: float | None = 5.0) -> Any:
    """``otp.call`` to ``(name, node_id)`` (see the module docstring for the errors)."""
    from waraft.otp import messaging

    return messaging.call(addr, request, timeout)


def send_request(
    addr: tuple[str, str],
    request: Any,
    from_: ReplyTo | None = None,
    timeout: float | None = 60.0,
) -> ReplyTo:
    """Send a call without waiting (``gen_server:send_request``); returns the handle the
    answer completes (``from_``, or a new ``LocalReplyTo`` to give to :func:`wait_response`).

    Many requests may be in flight at once from one thread. A request unanswered after
    ``timeout`` seconds fails with ``"timeout"`` (so a lost one never pins memory); sending
    failures (peer down, cut off, queue still full after 0.1 s) complete the handle at once.
    To a node in this process it is ``otp.send_request``.
    """
    handle: ReplyTo = LocalReplyTo() if from_ is None else from_
    dist = _dist
    if _local(addr[1]) or dist is None:
        from waraft.otp import messaging

        return messaging.send_request(addr, request, handle)
    dist.send_request(addr, request, handle, timeout)
    return handle


def wait_response(handle: ReplyTo, timeout: float | None = 5.0) -> Any:
    """Wait for a :func:`send_request` answer; raises ``ExitError`` like ``call``."""
    from waraft.otp import messaging

    return messaging.wait_response(handle, timeout)


def encode(msg: Any) -> bytes:
    """Encode ``msg`` once for :func:`cast_bytes`/:func:`send_bytes` (``codec.packb``)."""
    return codec.packb(msg)


def cast_bytes(addr: tuple[str, str], payload: bytes) -> bool:
    """Cast an already encoded message: ``payload`` must be ``encode(msg)``.

    The receiver's ``handle_cast`` gets ``msg`` (decoded there, tuples for arrays); nothing is
    re-encoded here, so one encoding can go to every peer. An invalid payload is dropped and
    counted by the receiver. To a node in this process the payload is decoded and delivered
    directly. Never blocks; False if dropped.
    """
    if _local(addr[1]):
        return cast(addr, codec.unpackb(payload))
    dist = _dist
    return dist is not None and dist.cast_bytes(addr, payload)


def send_bytes(addr: tuple[str, str], payload: bytes) -> bool:
    """:func:`cast_bytes`, delivered to ``handle_info``."""
    if _local(addr[1]):
        return send(addr, codec.unpackb(payload))
    dist = _dist
    return dist is not None and dist.cast_bytes(addr, payload, info=True)


def frame_limit(node_id: str) -> int | None:
    """The largest frame a message to ``node_id`` may travel in (``max_frame_bytes``): the
    distribution drops a larger one (``tx_oversized``) and answers the cast False. None for
    a node of this process, or when distribution is not started: nothing leaves the process."""
    dist = _dist
    return None if dist is None else dist.frame_limit(node_id)


def cast_limit(addr: tuple[str, str]) -> int | None:
    """The largest ``payload`` that :func:`cast_bytes` can carry to ``addr``: its node's
    :func:`frame_limit` less the envelope the cast is framed in; None when there is no limit.
    A sender that keeps its payloads within it never has a cast dropped for its size."""
    limit = frame_limit(addr[1])
    return None if limit is None else limit - len(envelope.cast_frame(addr[0], b""))


def set_inline_handler(name: str, handler: inline.Handler | None) -> None:
    """Let the receive thread hand casts to ``name`` to ``handler(msg, origin)`` directly (see
    :mod:`waraft.distribution.inline`); None removes it. Works whether or not distribution runs."""
    inline.set_handler(name, handler)


def set_unserved_handler(prefix: str, handler: inline.UnservedHandler | None) -> None:
    """Let the layer that owns the names starting with ``prefix`` answer casts to such a name
    that no process has (see :func:`waraft.distribution.inline.set_unserved_handler`)."""
    inline.set_unserved_handler(prefix, handler)


def set_unserved_call_handler(prefix: str, handler: inline.UnservedCallHandler | None) -> None:
    """Let the layer that owns the names starting with ``prefix`` answer calls to such a
    name that no process has, or fail them with a reason of its own (``FailCall``; see
    :func:`waraft.distribution.inline.set_unserved_call_handler`)."""
    inline.set_unserved_call_handler(prefix, handler)


def set_shed_handler(prefix: str, handler: inline.ShedHandler | None) -> None:
    """Let the layer that owns the names starting with ``prefix`` answer the casts to them
    that the receive thread sheds, their key over its share of it (see
    :func:`waraft.distribution.inline.set_shed_handler`)."""
    inline.set_shed_handler(prefix, handler)


def set_idle_hook(name: str, hook: Callable[[], None] | None) -> None:
    """Have the receive thread call ``hook()`` each time it has drained its socket (see
    :mod:`waraft.distribution.inline`); None removes it."""
    inline.set_idle_hook(name, hook)


def set_fault(
    nodes: Iterable[str] = (),
    *,
    inbound: Iterable[str] = (),
    outbound: Iterable[str] = (),
) -> None:
    """Fault injection: drop all traffic to and from ``nodes`` (plus frames arriving from
    ``inbound`` and frames sent to ``outbound``, for one-way cuts), replacing any earlier
    fault. Affects this process only: cut a node off by calling it on every node involved,
    or on the isolated node with every other node. Calls to a node cut off outbound fail at
    once with ``nodedown``; calls already waiting fail when liveness marks the peer down.
    """
    nodes = list(nodes)
    _running().set_fault([*nodes, *inbound], [*nodes, *outbound])


def cluster_id() -> str | None:
    """The cluster this node belongs to (None if it was never told)."""
    return _running().cluster_id


def set_cluster_id(cluster: str) -> None:
    """Make this node a node of ``cluster``. Every connection it opens carries the id, and a
    connection whose sender carries another cluster's id is refused before anything it sent
    is decoded (counted as ``rx_other_cluster``): a node whose data directory belongs to
    another deployment is never taken for a member. Senders that carry no id (clients, nodes
    of older builds, nodes not told yet) are not refused. ``ValueError`` if ``cluster`` is
    not a cluster id or the node belongs to another cluster already."""
    _running().set_cluster_id(cluster)


def reload_keys() -> KeyChanges:
    """Re-read the cluster's keys (``cluster.json``) from the key directory this node's keys
    were loaded from (``keys.load``) and take them at once, without a restart: what ``waraft
    node`` does on SIGHUP and on the admin request of ``waraft keys reload``.

    Keys are added (a node made by ``waraft keys add``: this node then accepts its
    connections and reaches it) and replaced (``--replace``: connections made with the old
    key are refused from their next frame on, links to the node reconnect expecting its new
    key). Nothing else changes at runtime: a file that cannot be read or checked
    (``keys.load``'s checks: owner, mode, JSON, key material), one that changes this node's
    own key or a key's role, or no longer lists a key, raises ``keys.KeysError`` with a
    one-line reason, and the keys in use stay as they were. The file is the only input: no
    message from the network says which keys to take. Returns what changed. Raises
    ``RuntimeError`` when distribution is not started."""
    return _running().reload_keys()


def clear_fault() -> None:
    """Remove the fault: traffic flows again (peers come back up with the next ping)."""
    _running().set_fault((), ())


def stats() -> dict[str, int]:
    """Counters since :func:`start` (empty when not started).

    ``tx_msgs``/``tx_bytes`` queued to libzmq, ``tx_dropped_full`` (peer queue at ``sndhwm``),
    ``tx_dropped_nodedown``, ``tx_dropped_fault``, ``tx_oversized``, ``tx_encode_errors``,
    ``tx_peer_limit``, ``tx_sockets`` (open DEALERs); ``rx_msgs``/``rx_bytes`` frames received
    from identified peers (before decoding), ``rx_malformed``,
    ``rx_oversized``, ``rx_bad_version``, ``rx_unknown_kind``, ``rx_bad_identity``,
    ``rx_dropped_fault``, ``rx_peer_limit``, ``rx_noproc`` (no such registered name),
    ``rx_unserved`` (of those, casts an unserved-name handler answered),
    ``rx_decode_limited`` (frames of a client or admin key over its share of the receive
    thread, dropped undecoded), ``rx_shed_answers`` (of those, requests answered
    ``overloaded``),
    ``rx_late_replies``, ``rx_stale_replies`` (answers to a call of an earlier run of this
    node id), ``rx_handler_errors``, ``rx_other_cluster`` (frames on a connection
    of another cluster's node);
    ``calls``, ``call_timeouts``, ``call_nodedown``; ``nodeup_events``, ``nodedown_events``,
    ``sessions_ended_by_peer`` (node-downs run because the peer found this node down),
    ``rx_stale_sessions`` (PINGs and PONGs of a peer's superseded run, ignored),
    ``probe_superseded_losses`` (lost connections to a peer's superseded run, no down);
    ``conn_accepted``, ``conn_closed``, ``handshake_failed``, ``auth_denied`` (ROUTER side),
    ``conn_refused_key_cap``, ``conn_refused_total_cap`` (handshakes refused for the caps on
    authenticated connections, see ``conncaps``), ``conns_authenticated`` (a gauge),
    ``probe_handshake_failed``, ``pings_dropped``, ``links_reaped``; ``pending_calls``,
    ``peers``. Counters that never moved may be absent.
    """
    dist = _dist
    return {} if dist is None else dist.stats()


def peers() -> dict[str, dict[str, Any]]:
    """Per known peer: ``state`` (connecting/up/down), ``since_s``, ``last_rx_ago_s``,
    ``rtt_ms`` (last ping), ``rx``, ``pings``, ``pongs``, ``down_events``, ``pending_calls``,
    ``fault``, ``member`` (it has sent a member's request: a node of the cluster, not a client
    or an admin tool), and over the currently open DEALERs to it: ``links``, ``tx``,
    ``tx_bytes``, ``tx_dropped_full``."""
    dist = _dist
    return {} if dist is None else dist.peer_status()
