"""Settings of the distribution layer: socket limits, liveness timing and CURVE keys."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from waraft.distribution.policy import ADMIN, CLIENT, MEMBER, RIGHTS

_NODE_RIGHTS = frozenset({MEMBER, CLIENT})
_CLIENT_RIGHTS = frozenset({CLIENT})
_ADMIN_RIGHTS = frozenset({CLIENT, ADMIN})

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """CURVE encryption and authentication for every link of this node.

    Keys are Z85 text (40 characters, as made by ``zmq.curve_keypair()``), bytes or str.

    * ``public_key`` / ``secret_key``: this node's key pair. Its ROUTER is a CURVE server with
      it, and its DEALERs present it as their client key.
    * ``server_keys``: the public key of each other node, by node id. A node not listed is
      assumed to share this node's key pair (one cluster-wide key pair is the simple setup).
    * ``allowed_clients``: public keys allowed to connect. None (the default) allows this
      node's own key and every key in ``server_keys``, i.e. the cluster's members; anything
      else fails the handshake (counted as ``handshake_failed``).
    * ``identities``: public key → ``(role, name)`` for the keys of a cluster made by
      ``waraft keys create`` (see :mod:`waraft.distribution.keys`). When given, only these
      keys may connect, and each connection gets the rights of its key's role: a ``node``
      key is a member (and a client) and may claim only node ids named after it; ``client``
      and ``admin`` keys may claim only ids whose name starts with ``<key name>.``; a client
      reaches the client API, an admin the admin verbs too. ``server_keys`` may then be
      keyed by a node's name (or by that prefix) instead of its full id.
    * ``source``: ``(directory, name, role)`` when :func:`waraft.distribution.keys.load` made
      it: where :func:`waraft.distribution.reload_keys` re-reads the cluster's keys from.
    """

    public_key: bytes
    secret_key: bytes
    server_keys: Mapping[str, bytes] = field(default_factory=dict)
    allowed_clients: Collection[bytes] | None = None
    identities: Mapping[bytes, tuple[str, str]] = field(default_factory=dict)
    source: tuple[str, str, str | None] | None = field(default=None, compare=False)

    @classmethod
    def coerce(cls, value: CurveConfig | Mapping[str, Any]) -> CurveConfig:
        """Accept a :class:`CurveConfig` or a dict with the same keys."""
        if isinstance(value, CurveConfig):
            return value
        server_keys = {str(k): _key(v) for k, v in dict(value.get("server_keys", {})).items()}
        allowed = value.get("allowed_clients")
        identities = {
            _key(k): (str(v[0]), str(v[1])) for k, v in dict(value.get("identities", {})).items()
        }
        return cls(
            public_key=_key(value["public_key"]),
            secret_key=_key(value["secret_key"]),
            server_keys=server_keys,
            allowed_clients=None if allowed is None else frozenset(_key(k) for k in allowed),
            identities=identities,
        )

    def server_key_for(self, node_id: str) -> bytes:
        """The public key to expect from ``node_id``'s ROUTER: by full id, else by its name,
        else by the name's prefix before the first ``.`` (a client process of that key)."""
        keys = self.server_keys
        found = keys.get(node_id)
        if found is None:
            name = node_id.partition("@")[0]
            found = keys.get(name) or keys.get(name.partition(".")[0])
        return _key(found if found is not None else self.public_key)

    def user_for(self, public_key_z85: bytes) -> str | None:
        """What the ZAP handler answers as the User-Id for a key: ``"role:name:key"`` for a
        cluster identity, ``""`` for an allowed key of the older form, None if refused.

        The key itself is part of it so that :meth:`rights_for` can tell, on every new
        connection and after every reload of the keys, whether the key a connection
        authenticated with is still the cluster's key for that name: a key replaced by
        ``waraft keys add --replace`` loses its open connections, not only its next ones."""
        if self.identities:
            found = self.identities.get(public_key_z85)
            return None if found is None else f"{found[0]}:{found[1]}:{public_key_z85.decode()}"
        return "" if self.client_allowed(public_key_z85) else None

    def rights_for(self, node_id: str, user_id: str | None) -> frozenset[str] | None:
        """The rights of a connection that authenticated as ``user_id`` (what the ZAP handler
        answered for its key) and claims ``node_id``; None if that key may not claim it, or
        is no longer (or never was) the cluster's key of that role and name. Keys of the
        older, member-only form (no ``identities``) carry every right."""
        if not self.identities:
            return RIGHTS
        role, _, rest = (user_id or "").partition(":")
        key_name, _, key = rest.partition(":")
        if self.identities.get(key.encode()) != (role, key_name):
            return None
        name = node_id.partition("@")[0]
        if role == "node":
            return _NODE_RIGHTS if name == key_name else None
        if not name.startswith(key_name + ".") or name in self.node_names():
            # (A node key "db.1" beside a client key "db": ``waraft keys`` refuses that
            # pair; a cluster.json made otherwise must not let "db" claim the node's name.)
            return None
        if role == "client":
            return _CLIENT_RIGHTS
        if role == "admin":
            return _ADMIN_RIGHTS
        return None

    def node_names(self) -> frozenset[str]:
        """The names the cluster's node keys belong to (empty for keys of the older form)."""
        return frozenset(name for role, name in self.identities.values() if role == "node")

    def client_allowed(self, public_key_z85: bytes) -> bool:
        """Whether a client presenting this (Z85) public key may connect."""
        if self.identities:
            return public_key_z85 in self.identities
        if self.allowed_clients is not None:
            return public_key_z85 in {_key(k) for k in self.allowed_clients}
        members = {_key(self.public_key), *(_key(k) for k in self.server_keys.values())}
        return public_key_z85 in members


def _key(value: bytes | str) -> bytes:
    key = value.encode() if isinstance(value, str) else bytes(value)
    if len(key) != 40:
        raise ValueError("CURVE keys are 40 characters of Z85 text")
    return key


@dataclass(frozen=True, slots=True)
class DistSettings:
    """Tunables of one distribution instance (see ``waraft.distribution.start``)."""

    max_frame_bytes: int = 16 * MiB
    """Largest frame accepted or sent. Bigger frames up to twice this are dropped and counted
    by the receiver; beyond that libzmq closes the connection (``ZMQ_MAXMSGSIZE``)."""

    sndhwm: int = 10_000
    """Messages queued per outgoing socket before sends to that peer are dropped (nosuspend)."""

    rcvhwm: int = 10_000
    """Messages queued per incoming connection before libzmq stops reading it."""

    ping_interval: float = 1.0
    """A peer we have heard nothing from for this long (seconds) is pinged."""

    down_after: float = 5.0
    """A peer silent for this long is marked down: calls to it fail with ``nodedown``."""

    connect_timeout: float = 2.0
    """A peer never heard from this long after first contact is marked down."""

    copy_threshold: int = 64 * 1024
    """Frames of at least this many bytes are handed to libzmq without a copy."""

    max_peers: int = 1024
    """Most distinct nodes this node talks to; frames from further routing ids are dropped."""

    max_sockets: int = 8192
    """libzmq's socket limit for the context (one DEALER per sending thread and peer)."""

    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 1000

    forget_after: float = 30.0
    """A peer down for this long is forgotten: its entry, its probe and every socket opened
    towards it are released (a client or CLI process that went away, or a made-up id a packet
    named). Known peers come back on their next contact."""

    check_peer_host: bool = True
    """A routing id must name a node on the host its connection comes from (replies and pings
    go to the address a node id names, so this keeps a packet from making this node dial a
    third address). Turn off only where addresses are translated (NAT) and peers' source
    addresses differ from the hosts in their node ids; use keys then."""

    new_peers_per_s: float = 50.0
    """Unknown node ids accepted per second from one sender key (burst twice this; without
    keys, from all senders together). Every new peer costs sockets and a probe; a flood of
    made-up ids is dropped beyond this rate (``rx_new_peer_limited``) instead of starving
    the receive and liveness threads, and one key's flood leaves the other keys' rate
    alone. Known peers are never limited."""

    admin_rate_per_sender: float = 50.0
    """Rate-limited remote calls (status and admin verbs) per second from one sender key
    (without keys: one node id), whatever node ids the key speaks as; the burst is twice
    this. Raft, transport and client traffic are never rate limited."""

    admin_rate_per_node: float = 200.0
    """Rate-limited remote calls per second from all client keys together, and as many
    again from admin and node keys (and senders without keys) together; bursts twice
    this."""

    max_conns_per_client_key: int = 64
    """Authenticated incoming connections one client or admin key may hold at a time (with
    CURVE keys; see :mod:`~waraft.distribution.conncaps`). A client process opens one per
    thread that sends to this node (and one probe); a key shared by many busy processes needs
    more. Handshakes beyond it are refused (``conn_refused_key_cap``)."""

    max_conns_per_node_key: int = 256
    """Authenticated incoming connections one node key may hold: a peer node opens one per
    sending thread (its schedulers, transports, the distribution threads) plus its probe, and
    for a while after it restarts the old run's connections may still be open."""

    max_connections: int = 4096
    """Authenticated incoming connections in total; at most half the descriptor limit at start
    (the rest is kept for the log, storage and snapshots), and client and admin keys together
    get at most three quarters of it. Beyond it handshakes are refused
    (``conn_refused_total_cap``)."""

    client_receive_share: float = 0.25
    """Seconds per second of the receive thread one client or admin key may use for its
    frames: decoding, admitting and inline handling (``policy.DecodeBudget``); beyond it the
    key's frames are dropped undecoded (``rx_decode_limited``) until it is back in credit,
    its requests answered ``overloaded`` up to ``shed_answers_per_s``.
    Members' frames are never limited. In a Python node this thread's time is the GIL's: at
    half of it one client key flooding 1 MB batches kept other clients' commits at 50-80 ms
    (7 ms unloaded), at a quarter about 18 ms. Every process using one key shares it: a
    deployment whose one key carries many busy, uncoalesced clients may raise it (up to 1)."""

    client_receive_burst_s: float = 0.5
    """Seconds of the receive thread a client or admin key may bank while quiet."""

    shed_answers_per_s: float = 100.0
    """Frames of a key over its ``client_receive_share`` that are answered ``overloaded`` at
    once, a second per key (as many banked): calls, and casts that carry a reply address
    (client batches); the key's other frames are dropped unanswered (``receiver``). Each
    answer costs this thread a read of the frame's head and a reply frame (charged to the
    key), so a flood of any rate earns at most this many."""

    def __post_init__(self) -> None:
        if self.max_frame_bytes < 1024:
            raise ValueError("max_frame_bytes must be at least 1024")
        if self.sndhwm < 1 or self.rcvhwm < 1:
            raise ValueError("high-water marks must be positive")
        if not 0 < self.ping_interval < self.down_after:
            raise ValueError("need 0 < ping_interval < down_after")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if self.forget_after <= 0:
            raise ValueError("forget_after must be positive")
        if self.new_peers_per_s <= 0:
            raise ValueError("new_peers_per_s must be positive")
        if self.admin_rate_per_sender <= 0 or self.admin_rate_per_node <= 0:
            raise ValueError("admin rate limits must be positive")
        if min(self.max_conns_per_client_key, self.max_conns_per_node_key) < 1:
            raise ValueError("connection caps per key must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be positive")
        if not 0 < self.client_receive_share <= 1:
            raise ValueError("client_receive_share must be in (0, 1]")
        if self.client_receive_burst_s <= 0:
            raise ValueError("client_receive_burst_s must be positive")
        if self.shed_answers_per_s <= 0:
            raise ValueError("shed_answers_per_s must be positive")
