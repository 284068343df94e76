"""Effects the protocol core emits: what the shell (or the simulator) must do, as plain data.

Contract between the core and whoever runs it (the ``waraft.server`` actor or ``waraft.sim``):

1. ``RaftCore.handle`` returns a list of effects. Execute them **in list order**, with one
   licence: a runner may batch several steps and perform all their persistence (``PersistState``,
   ``AppendLog``, ``TruncateLog``, ``ResetLog``, plus one fsync) before any of their
   ``Send`` / ``Reply`` / ``Apply`` / read effects. Never the other way round: nothing that
   depends on persisted state may leave before it is durable.
2. Log effects (``AppendLog``, ``TruncateLog``, ``ResetLog``) must be applied to the log behind
   the core's ``LogView`` before the core's next ``handle`` call; the core reads its own writes
   within a step from an overlay and from the ``LogView`` afterwards. ``TrimLog`` is best effort
   and may be applied later or partly.
3. ``StateChanged`` cancels whatever state timeout is armed; a later ``SetTimeout`` in the same
   list arms the new one. A ``SetTimeout`` replaces the armed one.
4. ``CommitCancelled`` and ``ReadCancelled`` answer ``("error", reason)`` and also release the
   caller's admission slot (pending-commit counter of that priority / pending-read counter).
5. ``Apply`` hands committed entries to storage in index order; storage answers each item's
   ``reply_to`` itself with the provider's result and releases its commit slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

from waraft.core.rpc import RaftRpc
from waraft.core.types import (
    Config,
    DurableState,
    Entry,
    Identity,
    LogPos,
    Priority,
    State,
    TimeoutKind,
)


@dataclass(frozen=True, slots=True)
class PersistState:
    """Durably store term, vote and disable reason before anything after it takes effect."""

    state: DurableState


@dataclass(frozen=True, slots=True)
class AppendLog:
    """Append ``entries`` at ``first_index``, ``first_index + 1``, ... (never overwrites)."""

    first_index: int
    entries: Sequence[Entry]


@dataclass(frozen=True, slots=True)
class TruncateLog:
    """Delete every entry at ``index`` and above."""

    index: int


@dataclass(frozen=True, slots=True)
class ResetLog:
    """Replace the whole log with the term-only base entry at ``position``."""

    position: LogPos


@dataclass(frozen=True, slots=True)
class TrimLog:
    """Entries below ``index`` are no longer needed (log rotation); best effort."""

    index: int


@dataclass(frozen=True, slots=True)
class Send:
    """Cast ``rpc`` to the server ``to``; never blocks, may be dropped."""

    to: Identity
    rpc: RaftRpc


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer a caller."""

    to: Any
    value: Any


@dataclass(frozen=True, slots=True)
class CommitCancelled:
    """Answer a commit caller with ``("error", reason)`` and release its pending-commit slot
    and the bytes its admission counted: ``size``, its command's estimate (0 for a
    membership change), or ``None`` when the canceller no longer has the command (then an
    average share of the bytes held)."""

    to: Any
    reason: Any
    priority: Priority
    size: int | None = None


@dataclass(frozen=True, slots=True)
class ReadCancelled:
    """Answer a read caller with ``("error", reason)`` and release its pending-read slot."""

    to: Any
    reason: Any


class ApplyItem(NamedTuple):
    """One committed entry for storage; ``reply_to`` is the committing caller, if any.

    An entry has a ``reply_to`` exactly when its commit was admitted (the acceptor gives a
    request sent with no handle ``otp.DISCARD``): storage releases the commit slot, and the
    server the commit bytes, of every entry that has one."""

    index: int  # type: ignore[assignment]  # shadows tuple.index: the log index reads best
    entry: Entry
    reply_to: Any
    priority: Priority


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply these committed entries, in order (storage answers each ``reply_to``)."""

    items: Sequence[ApplyItem]


@dataclass(frozen=True, slots=True)
class SubmitRead:
    """Queue a strong read; storage answers it once it has applied up to ``read_index``."""

    read_index: int
    from_: Any
    command: Any


@dataclass(frozen=True, slots=True)
class ReadNow:
    """Answer a read from storage's current position (single member, or a valid lease)."""

    from_: Any
    command: Any


@dataclass(frozen=True, slots=True)
class CancelReads:
    """Fail every queued strong read with ``("error", reason)``."""

    reason: Any


@dataclass(frozen=True, slots=True)
class SetTimeout:
    """Arm the state timeout (replacing any armed one)."""

    kind: TimeoutKind
    ms: int


@dataclass(frozen=True, slots=True)
class CancelTimeout:
    """Disarm the state timeout: the replica went quiescent and needs no timer."""


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The server entered ``new`` (also on a repeat of the same state). Cancels the timeout."""

    old: State | None
    new: State


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    """A follower needs a snapshot (digest §2.16); the catch-up coordinator decides."""

    peer: Identity
    witness: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Load storage from a snapshot, then report back with a ``SnapshotOpened`` event.

    ``purpose`` "transfer": open the snapshot in ``root`` at ``position``.
    ``purpose`` "bootstrap" / "promote": make an empty snapshot holding ``config`` and ``data``
    at ``position`` (in a temporary directory) and open it.
    """

    from_: Any
    purpose: str
    position: LogPos
    root: str | None = None
    config: Config | None = None
    data: Any = None


Effect: TypeAlias = (
    PersistState
    | AppendLog
    | TruncateLog
    | ResetLog
    | TrimLog
    | Send
    | Reply
    | CommitCancelled
    | ReadCancelled
    | Apply
    | SubmitRead
    | ReadNow
    | CancelReads
    | SetTimeout
    | CancelTimeout
    | StateChanged
    | RequestSnapshot
    | InstallSnapshot
)

PERSISTENCE_EFFECTS: tuple[type[Any], ...] = (PersistState, AppendLog, TruncateLog, ResetLog)
