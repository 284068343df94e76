"""Shared Raft data types: positions, identities, log entries, cluster configs, states.

This is the Python twin of WARaft's ``wa_raft.erl`` / ``wa_raft.hrl`` type definitions. Everything
here is plain, immutable data so that it can cross actor and process boundaries unchanged and be
encoded with msgpack (NamedTuples travel as arrays; ``Config`` travels as a msgpack extension
type registered by the wire codec).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple


class LogPos(NamedTuple):
    """A position in the Raft log (WARaft's ``#raft_log_pos{index, term}``)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose: WARaft's name
    term: int


class Identity(NamedTuple):
    """A replica's address: its registered server name and its node id.

    WARaft's ``#raft_identity{name, node}``. Node ids carry what is needed to reach the node
    (for example ``"n1@10.0.0.5:7001"``), so a config can name replicas on other machines.
    """

    name: str
    node: str


class Entry(NamedTuple):
    """One log record's payload (WARaft's ``{Term, Op}`` flattened).

    ``command`` is ``None`` only for the term-only base entry a log holds right after a reset
    (WARaft's ``{Index, {Term, undefined}}``); such an entry is never applied. Users' commands
    must therefore never be ``None``. ``key`` is the opaque client key carried into the log
    (``READ_KEY`` marks the read barrier entry). ``label`` is set only when a label function
    is configured (WARaft's ``{Key, Label, Command}`` shape).
    """

    term: int
    key: Any = None
    command: Any = None
    label: Any = None


class Priority(enum.Enum):
    """Commit priority: high-priority pending commits are appended before low-priority ones."""

    HIGH = "high"
    LOW = "low"

    # Members are singletons, so identity hashing is exact; Enum's own __hash__ is a Python
    # function (hash of the name), and every admitted request hashes its priority a few times.
    __hash__ = object.__hash__


class State(enum.Enum):
    """The six server states of ``wa_raft_server``."""

    STALLED = "stalled"
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    WITNESS = "witness"
    DISABLED = "disabled"


class ElectionType(enum.Enum):
    """How a vote request treats leader stickiness (WARaft ``normal | force | allowed``)."""

    NORMAL = "normal"
    FORCE = "force"
    ALLOWED = "allowed"


class TimeoutKind(enum.Enum):
    """The per-state timeouts. The shell keeps at most one armed, replaced on re-arm and
    cancelled on every state change (gen_statem ``state_timeout`` semantics)."""

    ELECTION = "election"
    HEARTBEAT = "heartbeat"
    BATCH_COMMIT = "batch_commit"


# Commands the protocol itself understands; every other command is opaque to Raft.
NOOP = "noop"
NOOP_OMITTED = "noop_omitted"
CONFIG = "config"  # a config command is the tuple (CONFIG, Config)
READ_KEY = "$read"  # key of the read-barrier marker entry (its command is NOOP)


def is_hashable(value: Any) -> bool:
    """Whether ``value`` can be a dict key or set member (a map decoded from msgpack cannot)."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


def is_config_command(command: Any) -> bool:
    """True when ``command`` is a ``(CONFIG, Config)`` membership change."""
    return (
        isinstance(command, tuple)
        and len(command) == 2
        and command[0] == CONFIG
        and isinstance(command[1], Config)
    )


def is_internal_command(command: Any) -> bool:
    """True for a command only the protocol writes: a membership change (any ``(CONFIG, x)``
    pair), a ``NOOP`` or a witness's ``NOOP_OMITTED``. A client may commit none of them:
    the gateway refuses them (a config entry takes effect as soon as it is appended, so a
    client's would change the membership without the admin right), and storage refuses one
    nested in a ``$batch`` or a session call, the same on every replica."""
    kind = type(command)
    if kind is str:
        return command in (NOOP, NOOP_OMITTED)
    return kind is tuple and len(command) == 2 and command[0] == CONFIG


@dataclass(frozen=True, slots=True)
class Config:
    """Cluster configuration, version 1 (WARaft's config map).

    * ``membership``: voting members.
    * ``participants``: everyone that receives replication (a superset of ``membership``;
      non-voting learners are participants outside the membership).
    * ``witness``: peers that keep the log's metadata but not the state machine's data.

    Each tuple is kept sorted and free of duplicates; build configs with
    ``waraft.core.config.make_config`` rather than by hand.
    """

    version: int = 1
    membership: tuple[Identity, ...] = ()
    participants: tuple[Identity, ...] = ()
    witness: tuple[Identity, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The config as WARaft shows it in status output."""
        return {
            "version": self.version,
            "membership": list(self.membership),
            "participants": list(self.participants),
            "witness": list(self.witness),
        }


class DurableState(NamedTuple):
    """What ``wa_raft_durable_state`` keeps across restarts."""

    current_term: int = 0
    voted_for: str | None = None  # a node id, as in WARaft
    disable_reason: Any = None


# WARaft's ``handover_lease_state`` values (the handover module drives them; the replica
# starts at LEASE_UNAFFECTED, so they live below both).
LEASE_UNAFFECTED = "unaffected"
LEASE_IN_PROGRESS = "in_progress"
LEASE_PENDING_RECONFIRMATION = "pending_reconfirmation"

ERROR = "error"
OK = "ok"


def error(reason: Any) -> tuple[str, Any]:
    """Erlang-style ``{error, Reason}`` result."""
    return (ERROR, reason)
