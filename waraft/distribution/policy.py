"""What other nodes may ask of this one: an explicit allow-list per registered name.

Nothing reaches a local process from the wire unless the process's registered name has a rule
for the message: a cast, call or info is identified by its name and its *tag* (the first
element of the tuple it carries, e.g. ``("rpcs", [...])`` or ``("status",)``); anything else —
another tag, a name without rules (``kernel_sup``, ``raft_sup_*``, storage, logs), a message
that is not a tuple headed by a string — is dropped and counted (``rx_refused``), and a refused
call fails at once with ``"refused"``. Processes that serve other nodes register their rules
when they start (:func:`allow`), so the list lives next to the code that handles the messages.

Casts, calls and infos (``otp.send`` to a process on another node, for its ``handle_info``)
each have rules of their own: a cast rule admits no info with its tag. Infos used to pass under
the cast rules, and most processes have no ``handle_info`` but the default, which logs what it
drops: any client key reached it with ``client_batch`` infos of megabytes. No process takes
infos from the wire today.

Each rule names the *right* it needs:

* ``member`` — Raft RPCs, transport and snapshot traffic between the cluster's nodes;
* ``client`` — the client API: commits, reads, read-only status;
* ``admin`` — verbs that change a partition or the node (bootstrap, promote, handover,
  membership changes, fault injection).

A connection's rights come from the key it authenticated with (see ``CurveConfig``); without
CURVE (``--insecure``) every sender has every right and only the allow-list, the guards and
the partition's membership checks apply. A rule may add a *guard*, a predicate on the sender
and the message (e.g. "every RPC in this batch names the connection's own node as its
sender", or "replies go back to the caller's own node"), and may be *rate limited*: status and
admin calls share a token bucket per calling key and a node-wide one per class of caller
(:class:`RateLimiter`) so that a flood of them cannot starve the Raft traffic behind them, and
client keys cannot use up what operators and members may call (over the limit: counted as
``rx_rate_limited``, a call fails with ``"rate_limited"``).

Thread safety: rules are written by the starting processes and read by the receive thread;
each update replaces a whole dict entry (atomic under the GIL).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

MEMBER: Final = "member"
CLIENT: Final = "client"
ADMIN: Final = "admin"
RIGHTS: Final = frozenset({MEMBER, CLIENT, ADMIN})
"""Every right: what an unauthenticated sender has when CURVE is off (``--insecure``)."""


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a frame: the node id bound to the connection and the rights of its key."""

    node_id: str
    rights: frozenset[str]


Guard = Callable[[Sender, Any], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    """What a (name, tag) pair needs: a right, optionally a guard and rate limiting."""

    right: str
    guard: Guard | None = None
    limited: bool = False

    def __post_init__(self) -> None:
        if self.right not in RIGHTS:
            raise ValueError(f"unknown right {self.right!r}")


RuleSpec = Rule | str


@dataclass(frozen=True, slots=True)
class _Rules:
    casts: Mapping[str, Rule]
    calls: Mapping[str, Rule]
    infos: Mapping[str, Rule]


_rules: dict[str, _Rules] = {}
_prefix_rules: dict[str, _Rules] = {}  # see ``allow_prefix``
_open_names = False
_OPEN_RULE: Final = Rule(MEMBER)


def open_unlisted_names(enabled: bool) -> None:
    """For tests of the distribution layer itself (and only them): let casts, calls and infos
    to a name without rules through to members, as before the allow-list existed. Off by
    default; names with rules keep them."""
    global _open_names
    _open_names = enabled


def _coerce(spec: RuleSpec) -> Rule:
    return spec if isinstance(spec, Rule) else Rule(spec)


def allow(
    name: str,
    *,
    casts: Mapping[str, RuleSpec] | None = None,
    calls: Mapping[str, RuleSpec] | None = None,
    infos: Mapping[str, RuleSpec] | None = None,
) -> None:
    """Set the remote requests the process registered as ``name`` accepts (replacing any
    previous rules for that name): ``casts`` for ``handle_cast``, ``calls`` for
    ``handle_call``, ``infos`` for ``handle_info``. Each kind is admitted by its own rules
    only; an info, in particular, needs a rule in ``infos``."""
    _rules[name] = _Rules(
        {tag: _coerce(spec) for tag, spec in (casts or {}).items()},
        {tag: _coerce(spec) for tag, spec in (calls or {}).items()},
        {tag: _coerce(spec) for tag, spec in (infos or {}).items()},
    )


def allow_prefix(
    prefix: str,
    *,
    casts: Mapping[str, RuleSpec] | None = None,
    calls: Mapping[str, RuleSpec] | None = None,
) -> None:
    """Rules for every name that starts with ``prefix`` and has no rules of its own (a
    partition that is not running here): what reaches such a name goes to the
    ``inline.set_unserved_handler`` of the prefix, since no process has the name. Replaces any
    previous rules for the prefix; None for both removes them."""
    if casts is None and calls is None:
        _prefix_rules.pop(prefix, None)
        return
    _prefix_rules[prefix] = _Rules(
        {tag: _coerce(spec) for tag, spec in (casts or {}).items()},
        {tag: _coerce(spec) for tag, spec in (calls or {}).items()},
        {},
    )


def forget(name: str) -> None:
    """Remove every rule for ``name`` (its messages are refused from now on)."""
    _rules.pop(name, None)


def rule_for(name: str, call: bool, msg: Any, *, info: bool = False) -> Rule | None:
    """The rule admitting ``msg`` to ``name`` as a call (``call``), an info (``info``) or
    else a cast, or None if nothing admits it. An info is looked up in the info rules only."""
    rules = _rules.get(name)
    if rules is None:
        rules = _prefix_rule(name)
        if rules is None:
            return _OPEN_RULE if _open_names else None
    if type(msg) is not tuple or not msg:
        return None
    tag = msg[0]
    if type(tag) is not str:
        return None
    return (rules.calls if call else rules.infos if info else rules.casts).get(tag)


def _prefix_rule(name: str) -> _Rules | None:
    for prefix, rules in _prefix_rules.items():  # a handful at most; names without rules only
        if name.startswith(prefix):
            return rules
    return None


def admits(rule: Rule | None, sender: Sender, msg: Any) -> bool:
    """Whether ``rule`` lets ``sender`` deliver ``msg`` (rate limits aside). A guard that
    raises refuses."""
    if rule is None or rule.right not in sender.rights:
        return False
    guard = rule.guard
    if guard is None:
        return True
    try:
        return bool(guard(sender, msg))
    except Exception:
        return False


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; single-threaded (the receive thread)."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class DecodeBudget:
    """Receive-thread time each untrusted sender may spend on its frames.

    Every frame is decoded, admitted and (for inline handlers) handled on the one receive
    thread serving every peer, and msgpack's cost follows the number of objects, not bytes:
    a client key sending 8 MB frames of small integers kept the thread 95 % busy, its queue
    behind it grew to 3 GB, and the node served little for 80 s after the attack ended. Each
    sender key gets ``share`` seconds of that thread per second, up to ``burst`` banked; the
    caller charges everything a frame cost it (decoding only was not enough: admission's
    depth walk and the acceptor's inline handling of a client batch cost twice as much). A
    frame that arrives while its sender is in debt is dropped undecoded (a receive is a
    copy, not a decode, so the backlog drains). Single-threaded (the receive thread)."""

    __slots__ = ("_burst", "_keys", "_max", "_share")

    def __init__(self, share: float, burst: float, max_keys: int = 4096) -> None:
        self._share = share
        self._burst = burst
        self._keys: dict[str, list[float]] = {}  # key -> [seconds banked, when]
        self._max = max_keys

    def allows(self, key: str, now: float) -> bool:
        """Whether ``key`` may have its next frame decoded (it is not in debt)."""
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= self._max:
                self._keys.clear()  # a flood of keys starts everyone afresh, never blocks
            self._keys[key] = [self._burst, now]
            return True
        banked = min(self._burst, entry[0] + (now - entry[1]) * self._share)
        entry[0], entry[1] = banked, now
        return banked > 0.0

    def charge(self, key: str, seconds: float) -> None:
        """Count ``seconds`` of decoding against ``key`` (after ``allows``)."""
        entry = self._keys.get(key)
        if entry is not None:
            entry[0] -= seconds


class KeyedBuckets:
    """A token bucket per key (``rate`` a second up to ``burst``), in bounded memory.

    A bucket left alone for ``burst / rate`` seconds is full, the same as a new one, so such
    an entry is dropped when room is needed; beyond ``max_keys`` entries the least recently
    used is dropped as well (it starts afresh if it comes back). Made-up keys therefore cost
    bounded memory and never refuse a key that is new. Single-threaded (the receive
    thread)."""

    __slots__ = ("_buckets", "_burst", "_idle", "_max", "_rate")

    def __init__(self, rate: float, burst: float, max_keys: int = 4096) -> None:
        self._rate = rate
        self._burst = burst
        self._idle = burst / rate
        self._max = max_keys
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, at]

    def take(self, key: str, now: float) -> bool:
        """Take one of ``key``'s tokens if it has one."""
        buckets = self._buckets
        entry = buckets.get(key)
        if entry is None:
            self._make_room(now)
            entry = buckets[key] = [self._burst, now]
        else:
            buckets.move_to_end(key)  # least recently used first
        tokens = min(self._burst, entry[0] + (now - entry[1]) * self._rate)
        entry[1] = now
        if tokens < 1.0:
            entry[0] = tokens
            return False
        entry[0] = tokens - 1.0
        return True

    def _make_room(self, now: float) -> None:
        """Drop the refilled entries (oldest first), and the oldest one at the limit."""
        buckets = self._buckets
        while buckets:
            oldest, entry = next(iter(buckets.items()))
            if len(buckets) < self._max and now - entry[1] < self._idle:
                return
            del buckets[oldest]

    def __len__(self) -> int:
        return len(self._buckets)


def privileged(rights: frozenset[str]) -> bool:
    """Whether a sender with ``rights`` is an operator or a member (an admin or node key, or
    anyone without CURVE): what client keys do must not use up what these are allowed."""
    return ADMIN in rights or MEMBER in rights


class RateLimiter:
    """Rate limits for limited rules (status and admin verbs).

    A bucket per caller, counted by who the caller is: the user id of its key (a client key
    may speak as 256 node ids at a time; with a bucket per node id it had 256 times the
    rate), or its node id without keys (nothing else tells senders apart). Then a
    node-wide bucket per class: privileged callers (:func:`privileged`) have their own, so
    that client keys together cannot rate-limit an operator's ``waraft status`` or
    ``promote`` (a review's client key had 16 of 40 such calls answered ``rate_limited``).
    The callers' table is bounded (:class:`KeyedBuckets`)."""

    __slots__ = ("_callers", "_clients", "_operators")

    def __init__(self, per_sender: float, node_wide: float, max_senders: int = 4096) -> None:
        self._callers = KeyedBuckets(per_sender, 2 * per_sender, max_senders)
        self._clients = TokenBucket(node_wide, 2 * node_wide)
        self._operators = TokenBucket(node_wide, 2 * node_wide)

    def take(self, caller: str, is_privileged: bool, now: float | None = None) -> bool:
        """Whether one more limited request from ``caller`` may go through now."""
        if now is None:
            now = time.monotonic()
        pool = self._operators if is_privileged else self._clients
        return self._callers.take(caller, now) and pool.take(now)


class IdCap:
    """How many node ids each key may hold in the peer table at a time (``cap``).

    ``held`` is the peer table's id mapping (read only): an id the table forgot no longer
    counts. Finding those costs a pass over the key's ids, done at most every
    ``recount_every`` seconds per key, so a key at its cap that keeps naming new ids is
    refused for the price of a lookup. Memory: at most ``cap`` ids per key, and keys are
    authenticated ones (issued by the operator). Single-threaded (the receive thread)."""

    __slots__ = ("_cap", "_counted", "_held", "_ids", "_recount_every")

    def __init__(self, cap: int, held: Mapping[str, object], recount_every: float = 1.0) -> None:
        self._cap = cap
        self._held = held
        self._recount_every = recount_every
        self._ids: dict[str, set[str]] = {}
        self._counted: dict[str, float] = {}  # key -> when its ids were last checked

    def full(self, key: str, node_id: str, now: float) -> bool:
        """Whether ``key`` may not bring ``node_id`` in (it holds ``cap`` other ids)."""
        ids = self._ids.get(key)
        if ids is None or len(ids) < self._cap or node_id in ids:
            return False
        if now - self._counted.get(key, float("-inf")) < self._recount_every:
            return True
        self._counted[key] = now
        held = self._held
        # Lookups only: other threads change the table, never this set.
        ids = self._ids[key] = {i for i in ids if i in held}
        return len(ids) >= self._cap

    def add(self, key: str, node_id: str) -> None:
        """Count ``node_id`` as one of ``key``'s (after ``full`` said it may come in)."""
        self._ids.setdefault(key, set()).add(node_id)


def same_node(position: int) -> Guard:
    """A guard: element ``position`` of the message is the sender's own node id (a node may
    only speak for itself, and replies are never sent to a third node)."""

    def guard(sender: Sender, msg: Any) -> bool:
        return bool(len(msg) > position and msg[position] == sender.node_id)

    return guard


def reply_to_sender(position: int) -> Guard:
    """A guard: element ``position`` is a ``(name, node)`` address on the sender's node."""

    def guard(sender: Sender, msg: Any) -> bool:
        addr = msg[position] if len(msg) > position else None
        return bool(isinstance(addr, tuple) and len(addr) == 2 and addr[1] == sender.node_id)

    return guard


__all__ = [
    "ADMIN",
    "CLIENT",
    "MEMBER",
    "RIGHTS",
    "IdCap",
    "KeyedBuckets",
    "RateLimiter",
    "Rule",
    "Sender",
    "TokenBucket",
    "admits",
    "allow",
    "forget",
    "open_unlisted_names",
    "privileged",
    "reply_to_sender",
    "rule_for",
    "same_node",
]
