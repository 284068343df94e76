"""Raft RPCs between servers and their version-tolerant wire form (WARaft's ``wa_raft_rpc.hrl``).

An RPC is an envelope (term, sender identity) around one procedure payload. On the wire it is the
plain list ``[procedure, term, sender_name, sender_node, [field, ...]]``. Decoding tolerates other
versions the way WARaft does: a payload with fewer fields takes the defaults for the missing
trailing ones, a longer payload has its extra trailing fields dropped, and the legacy envelope
``[procedure, term, sender_node, [field, ...]]`` (no sender name) is accepted with the receiver's
own server name as the sender's name.

Refs (pre-vote rounds, handovers) are integers so that they compare equal after a round trip
through msgpack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Final, TypeAlias

from waraft.core.types import ElectionType, Entry, Identity

MAX_TERM: Final = 2**62
"""The largest term an RPC may carry (log entry terms included); RPCs beyond it are refused.

A term is stored as a msgpack integer (at most 2**64 - 1) and a candidate stores its term + 1:
a peer announcing 2**64 - 1 would leave a server that can never persist its next term. The
bound is far above anything an honest cluster reaches (2**62 elections at one per millisecond
take 146 million years) and leaves room to count up from it."""

_REPR_DEPTH: Final = 3
_REPR_ITEMS: Final = 6
_REPR_CHARS: Final = 80


def short_repr(value: Any, _depth: int = 0) -> str:
    """A bounded ``repr`` for error messages about wire data: never deep, never long, never
    raising (a peer's value may be nested 30 levels or be megabytes long)."""
    try:
        if isinstance(value, dict):
            if _depth >= _REPR_DEPTH:
                return "{...}"
            shown = [
                f"{short_repr(k, _depth + 1)}: {short_repr(v, _depth + 1)}"
                for k, v in list(value.items())[:_REPR_ITEMS]
            ]
            text = "{" + ", ".join(shown + ["..."] * (len(value) > _REPR_ITEMS)) + "}"
        elif isinstance(value, (list, tuple)):
            if _depth >= _REPR_DEPTH:
                return "[...]"
            shown = [short_repr(v, _depth + 1) for v in value[:_REPR_ITEMS]]
            text = "[" + ", ".join(shown + ["..."] * (len(value) > _REPR_ITEMS)) + "]"
        else:
            text = repr(value)
    except Exception:  # a repr that fails must not turn a dropped RPC into a crash
        return f"<{type(value).__name__}>"
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


CLIP_DEPTH: Final = 100
"""Nesting beyond which ``clipped_repr`` gives up on ``repr`` (see there)."""


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` nests tuples, lists or dicts more than ``limit`` deep (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for pair in item.items() for child in pair)
        elif isinstance(item, (list, tuple)):
            stack.extend((child, depth + 1) for child in item)
    return False


def clipped_repr(value: Any, chars: int = 200) -> str:
    """``repr(value)[:chars]``, as error messages about a command show it, or ``short_repr``
    for a value nested more than ``CLIP_DEPTH`` deep. Members' frames are not depth-checked,
    so a leader can replicate a command nested 1000 deep, whose ``repr`` raises
    ``RecursionError`` (it crashed the storage actor rejecting it). Decided by the value
    alone, so every replica words the message alike."""
    if _nests_deeper(value, CLIP_DEPTH):
        return short_repr(value)
    return repr(value)[:chars]


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader → follower replication and heartbeat."""

    prev_log_index: int = 0
    prev_log_term: int = 0
    entries: Sequence[Entry] = ()
    commit_index: int = 0
    trim_index: int = 0
    # The leader is about to quiesce: a follower that holds everything may stop its timer.
    quiesce: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Follower → leader. ``match_index`` is the follower's last index when ``success`` is false."""

    prev_log_index: int = 0
    success: bool = False
    match_index: int = 0
    last_applied_index: int | None = None
    # Answer to a quiesce round: this follower holds everything and stopped its timer.
    quiesced: bool = False


@dataclass(frozen=True, slots=True)
class RequestPreVote:
    """Candidate → members: would you vote for me if I started an election?"""

    ref: int = 0


@dataclass(frozen=True, slots=True)
class PreVote:
    """Reply to a pre-vote request. ``vote`` means the responder believes the leader is missing."""

    ref: int = 0
    vote: bool = False
    last_log_index: int = 0
    last_log_term: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate → members."""

    election_type: ElectionType = ElectionType.NORMAL
    last_log_index: int = 0
    last_log_term: int = 0


@dataclass(frozen=True, slots=True)
class Vote:
    """Reply to a vote request (a candidate also sends ``Vote(True)`` to itself)."""

    vote: bool = False


@dataclass(frozen=True, slots=True)
class Handover:
    """Leader → chosen successor: append these entries, then start a forced election."""

    ref: int = 0
    prev_log_index: int = 0
    prev_log_term: int = 0
    entries: Sequence[Entry] = ()


@dataclass(frozen=True, slots=True)
class HandoverFailed:
    """Successor → leader: the handover identified by ``ref`` will not happen."""

    ref: int = 0


@dataclass(frozen=True, slots=True)
class NotifyTerm:
    """Reply to any RPC that carried a stale term; the envelope carries the newer term."""


Payload: TypeAlias = (
    AppendEntries
    | AppendEntriesResponse
    | RequestPreVote
    | PreVote
    | RequestVote
    | Vote
    | Handover
    | HandoverFailed
    | NotifyTerm
)


@dataclass(frozen=True, slots=True)
class RaftRpc:
    """The envelope every server-to-server message travels in."""

    term: int
    sender: Identity
    payload: Payload


PROCEDURES: Final[dict[str, type[Any]]] = {
    "append_entries": AppendEntries,
    "append_entries_response": AppendEntriesResponse,
    "request_pre_vote": RequestPreVote,
    "pre_vote": PreVote,
    "request_vote": RequestVote,
    "vote": Vote,
    "handover": Handover,
    "handover_failed": HandoverFailed,
    "notify_term": NotifyTerm,
}
_NAMES: Final[dict[type[Any], str]] = {cls: name for name, cls in PROCEDURES.items()}
_FIELDS: Final[dict[type[Any], tuple[str, ...]]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in PROCEDURES.values()
}


class RpcDecodeError(ValueError):
    """The object is not a Raft RPC this version understands (unknown procedure, bad shape)."""


def procedure_name(payload: Payload) -> str:
    """The wire name of a payload's procedure (``"append_entries"``, ...)."""
    return _NAMES[type(payload)]


def _field_values(cls: type[Any]) -> Callable[[Any], list[Any]]:
    """A function giving a payload's field values in wire order, as a new list: one
    ``attrgetter`` call (C) instead of a ``getattr`` and a type test per field; only
    ``election_type`` needs converting (to its string)."""
    names = _FIELDS[cls]
    if not names:
        return lambda payload: []
    get = attrgetter(*names)
    if len(names) == 1:
        return lambda payload: [get(payload)]
    if "election_type" not in names:
        return lambda payload: list(get(payload))
    at = names.index("election_type")

    def values(payload: Any) -> list[Any]:
        found = list(get(payload))
        kind = found[at]
        if isinstance(kind, ElectionType):
            found[at] = kind.value
        return found

    return values


_VALUES: Final[dict[type[Any], Callable[[Any], list[Any]]]] = {
    cls: _field_values(cls) for cls in PROCEDURES.values()
}


def to_wire(rpc: RaftRpc) -> list[Any]:
    """The msgpack-ready list form of ``rpc``; entries stay ``Entry`` tuples (wire arrays)."""
    payload = rpc.payload
    cls = type(payload)
    sender = rpc.sender
    return [_NAMES[cls], rpc.term, sender.name, sender.node, _VALUES[cls](payload)]


def from_wire(obj: Any, own_name: str) -> RaftRpc:
    """Decode the list form (current or legacy envelope), defaulting the payload's fields.

    Raises ``RpcDecodeError`` for anything that is not a known procedure in a valid envelope.
    """
    if not isinstance(obj, (list, tuple)):
        raise RpcDecodeError(f"RPC envelope must be a list, got {type(obj).__name__}")
    if len(obj) == 5:
        procedure, term, sender_name, sender_node, raw = obj
    elif len(obj) == 4:
        procedure, term, sender_node, raw = obj
        sender_name = own_name
    else:
        raise RpcDecodeError(f"RPC envelope has {len(obj)} elements")
    cls = PROCEDURES.get(procedure) if isinstance(procedure, str) else None
    if cls is None:
        raise RpcDecodeError(f"unknown procedure {short_repr(procedure)}")
    if not isinstance(term, int) or isinstance(term, bool) or not 0 <= term <= MAX_TERM:
        raise RpcDecodeError(f"bad term {short_repr(term)}")
    if not isinstance(sender_name, str) or not isinstance(sender_node, str):
        raise RpcDecodeError("sender name and node must be strings")
    values = [] if raw is None else raw
    if not isinstance(values, (list, tuple)):
        raise RpcDecodeError("payload must be a list")
    payload = _build_payload(cls, values)
    return RaftRpc(term, Identity(sender_name, sender_node), payload)


def _is_index(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_term(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_TERM


def _is_optional_index(value: Any) -> bool:
    return value is None or _is_index(value)


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_ref(value: Any) -> bool:
    return type(value) is int


# A peer's RPC must not be able to crash the server with a field of the wrong type.
_FIELD_CHECKS: Final[dict[str, Any]] = {
    "prev_log_index": _is_index,
    "prev_log_term": _is_term,
    "commit_index": _is_index,
    "trim_index": _is_index,
    "match_index": _is_index,
    "last_log_index": _is_index,
    "last_log_term": _is_term,
    "last_applied_index": _is_optional_index,
    "success": _is_bool,
    "quiesce": _is_bool,
    "quiesced": _is_bool,
    "vote": _is_bool,
    "ref": _is_ref,
    "entries": lambda value: isinstance(value, (list, tuple)),
    "election_type": lambda value: isinstance(value, (str, ElectionType)),
}


# Per procedure: the field checks in wire order, and where entries and election_type sit.
_CHECKS: Final[dict[type[Any], tuple[Any, ...]]] = {
    cls: tuple(_FIELD_CHECKS[name] for name in names) for cls, names in _FIELDS.items()
}
_ENTRIES_AT: Final[dict[type[Any], int]] = {
    cls: names.index("entries") for cls, names in _FIELDS.items() if "entries" in names
}
_ELECTION_AT: Final[dict[type[Any], int]] = {
    cls: names.index("election_type") for cls, names in _FIELDS.items() if "election_type" in names
}


def _build_payload(cls: type[Any], values: Sequence[Any]) -> Payload:
    names = _FIELDS[cls]
    # Fields missing at the end keep their dataclass defaults; extra trailing ones are dropped.
    # Built positionally (the wire order is the field order): no keyword dict per RPC.
    args = list(values[: len(names)])
    for check, name, value in zip(_CHECKS[cls], names, args, strict=False):
        if not check(value):
            raise RpcDecodeError(f"bad {_NAMES[cls]} field {name}: {short_repr(value)}")
    count = len(args)
    try:
        at = _ENTRIES_AT.get(cls)
        if at is not None and at < count:
            args[at] = [_entry(e) for e in args[at]]
        at = _ELECTION_AT.get(cls)
        if at is not None and at < count:
            args[at] = ElectionType(args[at])
        payload: Payload = cls(*args)
    except (TypeError, ValueError) as exc:
        raise RpcDecodeError(f"bad {_NAMES[cls]} payload: {exc}") from None
    return payload


_tuple_new: Final = tuple.__new__


def _entry(raw: Any) -> Entry:
    if isinstance(raw, Entry):
        return raw
    if not isinstance(raw, (list, tuple)) or not 1 <= len(raw) <= 4:
        raise ValueError(f"bad log entry {short_repr(raw)}")
    if type(raw[0]) is not int or not 0 <= raw[0] <= MAX_TERM:
        raise ValueError(f"bad log entry term {short_repr(raw[0])}")
    if len(raw) == 4:
        # Every entry a peer sends has all four fields: build the tuple directly, skipping
        # the NamedTuple's Python-level __new__ (about half the cost, once per entry).
        return _tuple_new(Entry, raw)
    return Entry(*raw)
