"""Settings of the distribution layer: socket limits, liveness timing and CURVE keys."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from waraft.distribution.policy import RIGHTS

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
    """

    public_key: bytes
    secret_key: bytes
    server_keys: Mapping[str, bytes] = field(default_factory=dict)
    allowed_clients: Collection[bytes] | None = None

    @classmethod
    def coerce(cls, value: CurveConfig | Mapping[str, Any]) -> CurveConfig:
        """Accept a :class:`CurveConfig` or a dict with the same keys."""
        if isinstance(value, CurveConfig):
            return value
        server_keys = {str(k): _key(v) for k, v in dict(value.get("server_keys", {})).items()}
        allowed = value.get("allowed_clients")
        return cls(
            public_key=_key(value["public_key"]),
            secret_key=_key(value["secret_key"]),
            server_keys=server_keys,
            allowed_clients=None if allowed is None else frozenset(_key(k) for k in allowed),
        )

    def server_key_for(self, node_id: str) -> bytes:
        """The public key to expect from ``node_id``'s ROUTER."""
        return _key(self.server_keys.get(node_id, self.public_key))

    def rights_for(self, node_id: str, user_id: str | None) -> frozenset[str] | None:
        """The rights of a connection that authenticated as ``user_id`` (what the ZAP handler
        answered for its key) and claims ``node_id``; None if that key may not claim it.
        Keys of this older, member-only form all carry every right."""
        return RIGHTS

    def client_allowed(self, public_key_z85: bytes) -> bool:
        """Whether a client presenting this (Z85) public key may connect."""
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

    admin_rate_per_sender: float = 50.0
    """Rate-limited remote calls (status and admin verbs) per second from one node; the burst
    is twice this. Raft, transport and client traffic are never rate limited."""

    admin_rate_per_node: float = 200.0
    """Rate-limited remote calls per second from all nodes together (burst twice this)."""

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
        if self.admin_rate_per_sender <= 0 or self.admin_rate_per_node <= 0:
            raise ValueError("admin rate limits must be positive")
