"""Events the protocol core consumes (besides ``RaftRpc``, which is an event in its own right).

Each event that expects an answer carries ``from_``: an opaque reply handle (the shell's
``ReplyTo``; anything at all in the simulator). The core never calls it; it hands it back inside a
``Reply`` / ``CommitCancelled`` / ``ReadCancelled`` effect or stores it until a commit is applied.
``from_=None`` means nobody waits for an answer (WARaft's casts).

Result values follow WARaft: ``"ok"``, ``("ok", value)`` or ``("error", reason)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from waraft.core.rpc import RaftRpc
from waraft.core.types import Config, Identity, LogPos, Priority, TimeoutKind

# ``int`` (an absolute term), ``"current"``, ``"next"`` or ``("next", offset)``.
TermOrOffset: TypeAlias = int | str | tuple[str, int]


@dataclass(frozen=True, slots=True)
class Timeout:
    """The armed state timeout fired (the shell drops firings it cancelled or replaced)."""

    kind: TimeoutKind


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """Commits admitted by the acceptor: ``items`` are ``(from_, (key, command))`` pairs.

    The hot path delivers many commits in one event; a single commit is a batch of one.
    """

    items: Sequence[tuple[Any, tuple[Any, Any]]]
    priority: Priority = Priority.HIGH


@dataclass(frozen=True, slots=True)
class ReadBatch:
    """Strong reads admitted by the acceptor: ``(from_, command, min_index or None)`` triples."""

    items: Sequence[tuple[Any, Any, int | None]]


@dataclass(frozen=True, slots=True)
class AdjustConfig:
    """A membership change (digest §2.15). ``action`` is ``"refresh"`` or ``(verb, Identity)``
    with verb one of add, add_witness, add_participant, add_witness_participant,
    promote_participant_if_ready, remove, remove_witness, remove_membership, demote_to_witness.

    ``reply_on_apply`` is WARaft's acceptor path: the caller is answered ``("ok", LogPos)`` when
    storage applies the config entry, instead of as soon as it is appended.
    """

    from_: Any
    action: Any
    expected_index: int | None = None
    reply_on_apply: bool = False


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Make a brand-new (stalled, empty) replica part of a cluster at ``position``."""

    from_: Any
    position: LogPos
    config: Config
    data: Any = None


@dataclass(frozen=True, slots=True)
class Promote:
    """Administrative promotion to leader (digest §2.14): with ``force``, WARaft's
    self-appointment without votes; without, a forced election (``admin.promote``).

    ``config`` supports the older README's ``promote(name, term, force, config)`` on a stalled,
    empty replica: the config is installed first (as a bootstrap would) and then promoted.
    """

    from_: Any
    term_or_offset: TermOrOffset
    force: bool = False
    config: Config | None = None


@dataclass(frozen=True, slots=True)
class TriggerElection:
    """Start an election now (``"current"`` means at the next term)."""

    from_: Any
    term_or_offset: TermOrOffset = "current"


@dataclass(frozen=True, slots=True)
class Resign:
    """A leader steps down to follower (or witness)."""

    from_: Any


@dataclass(frozen=True, slots=True)
class HandoverRequest:
    """Transfer leadership to ``peer`` (a node id), or to a random ready peer when ``None``."""

    from_: Any
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class HandoverCandidates:
    """Which peers a handover could go to now."""

    from_: Any


@dataclass(frozen=True, slots=True)
class IsPeerReady:
    """``"ok"`` or ``("error", not_a_participant | not_ready | not_leader)``."""

    from_: Any
    peer: Identity


@dataclass(frozen=True, slots=True)
class Disable:
    """Stop taking part in the protocol; ``reason`` is persisted."""

    from_: Any
    reason: Any


@dataclass(frozen=True, slots=True)
class Enable:
    """Leave ``disabled`` for ``stalled`` (the reason is cleared and persisted)."""

    from_: Any


@dataclass(frozen=True, slots=True)
class SnapshotAvailable:
    """A snapshot at ``position`` sits in directory ``root`` (the file transport finished).

    ``source`` is the authenticated node that sent it over the wire; a replica installs such a
    snapshot only while it knows that node as the leader of its current term (Raft's rule for
    InstallSnapshot). ``None`` is a local admin's call, which needs no leader.
    """

    from_: Any
    root: str
    position: LogPos
    source: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotOpened:
    """The shell finished an ``InstallSnapshot`` effect.

    ``error`` is ``None`` on success; then storage now sits at ``position`` with ``config`` (its
    ``(index, Config)`` or ``None``) and ``label``, and the log has NOT yet been reset: the core
    answers with a ``ResetLog`` effect.
    """

    from_: Any
    purpose: str  # "bootstrap" | "transfer" | "promote"
    position: LogPos
    error: Any = None
    config: tuple[int, Config] | None = None
    label: Any = None


@dataclass(frozen=True, slots=True)
class NotifyComplete:
    """Storage drained its apply queue; apply more if anything is committed."""


@dataclass(frozen=True, slots=True)
class StorageIncomplete:
    """Storage holds a witness's incomplete data, and the config it was to apply makes this
    replica a data replica: the replica must get the data by snapshot before it applies."""

    reason: str


@dataclass(frozen=True, slots=True)
class NodeLiveness:
    """Node-level liveness changed: the node ``node`` answers (``up``) or stopped answering.

    The runner's failure detector (pings answered by the peer node, not TCP state) delivers
    this to every partition; only quiescence reads it (see ``quiesce``).
    """

    node: str
    up: bool


Event: TypeAlias = (
    RaftRpc
    | Timeout
    | CommitBatch
    | ReadBatch
    | AdjustConfig
    | Bootstrap
    | Promote
    | TriggerElection
    | Resign
    | HandoverRequest
    | HandoverCandidates
    | IsPeerReady
    | Disable
    | Enable
    | SnapshotAvailable
    | SnapshotOpened
    | NotifyComplete
    | StorageIncomplete
    | NodeLiveness
)
