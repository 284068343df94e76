"""Exactly-once client sessions: the replicated dedup table (Raft dissertation, section 6.3).

A client that retries a commit whose outcome it does not know (a timeout, a leader lost after
appending) may get the command into the log twice. Sessions make the second copy harmless: the
client registers a session (itself a replicated command), tags every command with
``(session, seq)``, and every replica records, per session, the result of each applied
sequence number. A tagged command whose ``seq`` is already recorded is not applied again; its
recorded result is returned instead, so the caller of a retried command gets the original
result.

Commands (all travel through the log like any other command, also inside ``$batch`` entries):

* ``("$session", "register", expire_after)``: open a session. Its id is the log index of the
  register entry (unique, and the same on every replica). Answers ``("ok", session_id)``. A
  second register inside the same ``$batch`` entry would get the same id: it is refused with
  ``("error", "session_register_conflict")`` (nothing opened; register again in another entry).
  A register inside a ``$batch`` entry is owned by ``BATCH_OWNER`` (below).
* ``("$session", "call", session_id, seq, acked, command)``: apply ``command`` once. ``acked``
  is the client's promise that it holds the results of every ``seq < acked``: their records are
  dropped (the table stays small while a session lives). A ``seq < acked`` of a recorded floor
  answers ``("error", "session_seq_acknowledged")``: the seq's record is gone, so the answer
  does not say whether an earlier copy was applied (at most once, as ``session_expired``). A
  session registered from the network keeps at most ``MAX_RESULTS_PER_SESSION`` records, the
  newest, whatever it acknowledges.
* ``("$session", "close", session_id)``: forget the session. Answers ``"ok"``.

A session is the capability of whoever holds its *token*: ``register`` may carry one
(``("$session", "register", expire_after, token)``, 16 to 64 random bytes that
``waraft.client`` draws for each session), and then every ``call`` and ``close`` of the
session must carry the same token as a last element (``(..., command, token)``,
``("$session", "close", session_id, token)``). A call or close without it is answered as for a
session that does not exist (``session_expired``; a close: ``"ok"``) and changes nothing, not
even the session's idle time: ids are log indices, easy to guess, so without a token any
client could answer another's retries with its own results or close its session. The token
lives only in the log and the replicas' tables, which no client can read (reserved keys).
Sessions registered without a token (by older clients) keep working unbound.

A session also has an *owner*: who registered it, as authenticated by the node that accepted
the register from the network, never what the client claims. That node appends the register
as ``("$session", "register", expire_after, token_or_None, owner)`` (``owned_register``,
which replaces any owner the command carried; the acceptor's client gateway calls it): with
CURVE the owner is the user id of the connection's key (``role:name``), so every process and
node id of one key is one owner; without CURVE (``--insecure``) or with keys of the older
form, which identify nobody, it is the node id the sender claims, which is no security
boundary (a sender may claim many). Registers appended without an owner (by older nodes, or
by a caller on the node itself, which ``owned_register`` gives ``None``) are one group, owner
``None``. A register inside a ``$batch`` entry was never stamped (the accepting node does not
open packed batches: that would cost every packed frame a decode), so whatever owner it claims,
it is owned by ``BATCH_OWNER``; ``waraft.client`` sends each register as an entry of its own.
(Refusing such registers instead would make replicas of this build answer differently from
older ones for the same log entry.) The owner bounds what a register may cost others (below).

Expiry is measured in applied log entries, not in time: a session whose last register or call
is more than ``expire_after`` entries behind the entry being applied is expired and answers
``("error", "session_expired")``. The records of an expired session are gone with it, so that
answer does not say whether an earlier copy of the command was applied: like a timeout, it
means *applied at most once*. Log distance is chosen over a clock because every replica
applies the same entries at the same indices, so all replicas agree on which sessions are
expired without any stamping by the leader, without trusting client clocks, and regardless of
each node's configuration (``expire_after`` is chosen by the client and replicated in the
register command). The cost is that idle time is counted in writes: on a quiet partition a
session lives longer in seconds, never shorter, which is the safe side.

The table is bounded. Expired sessions are swept once every ``SWEEP_EVERY`` entries, as of the
first index of each span of ``SWEEP_EVERY`` (a session that is never used again, e.g. of a
client that went away without ``close``, would otherwise stay forever). A register by an owner
that holds ``MAX_SESSIONS_PER_OWNER`` sessions, or one that would make the table hold more
than ``MAX_SESSIONS``, first sweeps the expired ones; then, while the owner is at its cap, the
owner's own live session idle for longest (lowest ``last_active``, then lowest id) is dropped,
and while the table is full, the idlest session of the owner holding the most sessions (the
registering owner itself on a tie with it, else the first in owner order, ``None`` first). A
dropped session's next call answers ``session_expired``. So a burst of registers from one
identity (which could once push every other client's live sessions out, and with them their
exactly-once retries) only costs that identity's own sessions, or those of an owner holding
even more. All of it is decided by log index and the replicated commands only, so every
replica keeps the same table at the same position: a replica that restarted sweeps again as
of the same index and drops nothing new, and the eviction chooses among the same live
sessions everywhere.

The table is pure data (no clocks, no I/O). The storage actor stores it as one row per session
plus an index of the session ids (``changes``: only what changed since the last ``saved``, so a
batch that touches one session writes one row, whatever the size of the table), in the same
transaction as the applied position, so it is part of every snapshot and survives restarts;
``SessionTable.from_rows`` reads it back. ``dump()``/``load`` give the whole table as one
msgpack-friendly value (the simulator's snapshots, and the format stored before rows). The
owner is the last element of an owned session's row; rows and dumps of older builds (no
owner) load as sessions of owner ``None``, and unowned sessions are stored in the older
shapes (a build without owners cannot read a row with one: downgrading is not supported once
owned sessions exist).
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from waraft.core.rpc import clipped_repr
from waraft.core.types import is_hashable

logger = logging.getLogger(__name__)

SESSION: Final = "$session"
EXPIRED: Final = ("error", "session_expired")
ACKNOWLEDGED: Final = ("error", "session_seq_acknowledged")
DEFAULT_EXPIRE_AFTER: Final = 1_000_000
SWEEP_EVERY: Final = 4096
"""Entries between two sweeps of expired sessions (``SessionTable.begin``)."""
MAX_SESSIONS: Final = 10_000
"""Sessions a partition keeps at most; a cluster-wide constant, not a setting: replicas with
different bounds would evict differently and answer differently."""
MAX_SESSIONS_PER_OWNER: Final = 1_000
"""Sessions one owner (see the module docstring) keeps at most in a partition; cluster-wide,
as ``MAX_SESSIONS``. A ``waraft.client.Client`` holds one session per partition, and a key
may use ``MAX_IDS_PER_KEY`` (256) node ids, one per client process, at a time: 1,000 leaves
room for the sessions of processes that went away without closing them, and keeps ten owners
at their cap within ``MAX_SESSIONS``, so that one owner's burst never fills the table."""
MAX_RESULTS_PER_SESSION: Final = 65_536
"""Sequence numbers an owned session (one registered from the network) keeps results for: a
call whose ``seq`` is this far past the session's floor raises the floor to keep the newest
ones, as if the client had acknowledged the rest, so a copy of an older seq answers
``session_seq_acknowledged`` (applied at most once). Without it a client that never
acknowledged (``acked`` 0) grew its session without bound, and its row, rewritten whole at
each apply on every replica, with it. ``waraft.client`` acknowledges everything below its
oldest outstanding seq and keeps at most ``max_inflight`` (16,384 packed) in flight, so it
meets the bound only when one request stays unanswered while 65,536 newer ones of its
partition complete. Cluster-wide, as ``MAX_SESSIONS``; sessions registered by a caller on the
node (owner ``None``) are not bounded, as in older builds."""
MAX_OWNER_CHARS: Final = 256
"""Longest owner a register may carry (a CURVE user id ``role:name``, or a node id)."""
REGISTER_CONFLICT: Final = ("error", "session_register_conflict")
BATCH_OWNER: Final = "$batch"
"""Owner of every register found inside a ``$batch`` entry, whatever owner it claims: nobody
stamped it (see the module docstring). Such registers share one owner's cap, so a burst of
them only drops sessions registered the same way. No CURVE user id (``role:name``) or node id
(``name@host``) can be it."""
BAD_OWNER: Final = ("error", ("badarg", "a session owner is a string of at most 256 chars"))
BAD_SESSION_CALL: Final = ("error", ("badarg", "a session id or sequence number is unhashable"))
BAD_TOKEN: Final = ("error", ("badarg", "a session token is 16 to 64 bytes"))
TOKEN_BYTES: Final = 16
"""Random bytes in the token ``waraft.client`` draws for each session."""
_DUMP_VERSION: Final = 1
INDEX_VERSION: Final = 2
"""First element of the stored index of session ids (``SessionTable.changes``); a stored value
whose first element is ``1`` is a whole ``dump()``, as written before rows."""


def register_command(
    expire_after: int = DEFAULT_EXPIRE_AFTER, token: bytes | None = None
) -> tuple[Any, ...]:
    """The command that opens a session expiring after ``expire_after`` idle entries, bound
    to ``token`` (see the module docstring) when one is given."""
    if token is None:
        return (SESSION, "register", int(expire_after))
    return (SESSION, "register", int(expire_after), token)


def is_register(command: Any) -> bool:
    """Any ``("$session", "register", ...)`` command (whatever its shape)."""
    return (
        type(command) is tuple
        and len(command) >= 3
        and command[0] == SESSION
        and command[1] == "register"
    )


def is_call(command: Any) -> bool:
    """Any ``("$session", "call", ...)`` command (a command tagged by ``call_command``)."""
    return type(command) is tuple and len(command) >= 2 and command[:2] == (SESSION, "call")


def owned_register(command: tuple[Any, ...], owner: str | None) -> tuple[Any, ...]:
    """The register ``command`` as the node that accepted it from the network appends it:
    owned by ``owner`` (the identity that node authenticated the sender as), whatever owner
    the command carried. ``owner`` None (a local caller) gives the shapes of older builds,
    without an owner. A command of another size is returned as is (storage refuses it)."""
    size = len(command)
    if size == 5:
        token = command[3]
        if owner is None:
            return command[:3] if token is None else command[:4]
        return (*command[:4], owner)
    if owner is None or not 3 <= size <= 4:
        return command
    return (SESSION, "register", command[2], command[3] if size == 4 else None, owner)


def call_command(
    session: int, seq: int, acked: int, command: Any, token: bytes | None = None
) -> tuple[Any, ...]:
    """``command`` tagged with ``(session, seq)``; every ``seq < acked`` is settled."""
    if token is None:
        return (SESSION, "call", session, seq, acked, command)
    return (SESSION, "call", session, seq, acked, command, token)


def close_command(session: int, token: bytes | None = None) -> tuple[Any, ...]:
    """The command that forgets ``session``."""
    if token is None:
        return (SESSION, "close", session)
    return (SESSION, "close", session, token)


def _valid_token(token: Any) -> bool:
    return type(token) is bytes and 16 <= len(token) <= 64


def is_session_command(command: Any) -> bool:
    """Any ``("$session", ...)`` command."""
    return type(command) is tuple and len(command) >= 2 and command[0] == SESSION


@dataclass(slots=True)
class _Session:
    expire_after: int
    last_active: int
    floor: int = 0  # every seq below is acknowledged by the client; its record is dropped
    results: dict[int, Any] = field(default_factory=dict)
    token: bytes | None = None  # the capability its calls and close carry (None: unbound)
    owner: str | None = None  # who registered it, as stamped by the accepting node

    def admits(self, token: Any) -> bool:
        """Whether a call or close carrying ``token`` may act on this session."""
        mine = self.token
        # A plain comparison: its timing, nanoseconds inside a replicated apply, is lost in
        # the round's milliseconds (and the core takes no hmac).
        return mine is None or (type(token) is bytes and token == mine)


@dataclass(frozen=True, slots=True)
class Done:
    """The command is answered without applying anything (``result``)."""

    result: Any


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply ``command`` to the state machine, then call ``SessionTable.finish(session, seq,
    result)``; ``session`` is ``None`` for an untagged command (nothing to record)."""

    command: Any
    session: int | None = None
    seq: int = 0
    result: Any = None  # the storage's own answer when it rewrote the command (``incr``)


@dataclass(frozen=True, slots=True)
class Pending:
    """The same ``(session, seq)`` was begun earlier and not finished yet (a duplicate inside
    one batch): its answer is ``SessionTable.result(session, seq)`` once that one finishes."""

    session: int
    seq: int


_PENDING: Final = object()


def _raise_floor(session: _Session, floor: int) -> None:
    """Acknowledge every seq below ``floor`` (above the session's floor): their records go,
    but for those begun and not finished in this batch (``finish`` drops them). Costs the
    smaller of the records kept and the seqs passed, so a client raising its ``acked`` by one
    at each call does not walk a full session each time."""
    results = session.results
    old, session.floor = session.floor, floor
    # Compared, not ``len(range(...))``: a client's seq or acked may be near 2**64, past what
    # a range's length can hold (OverflowError, in an apply, on every replica).
    if floor - old <= len(results):
        for seq in range(old, floor):
            if results.get(seq, _PENDING) is not _PENDING:
                del results[seq]
        return
    for seq in [s for s, r in results.items() if s < floor and r is not _PENDING]:
        del results[seq]


class SessionTable:
    """Per-session records of applied sequence numbers and their results.

    Contract: ``begin`` is called for every command in log order with its entry's index (the
    commands of a ``$batch`` entry share its index); an ``Apply`` with a session must be
    followed by ``finish`` before ``changes``/``dump``, and a ``finish`` whose transaction
    failed by ``reopen`` (then ``finish`` again once the command is applied). ``changed``
    tells whether anything was recorded since the last ``saved``/``dump`` (so that untagged
    traffic costs no table write).
    """

    __slots__ = (
        "_by_deadline",
        "_by_size",
        "_dirty",
        "_heaped",
        "_idle",
        "_index_dirty",
        "_owned",
        "_sessions",
        "_swept",
        "max_per_owner",
        "max_sessions",
    )

    def __init__(self, max_sessions: int | None = None, max_per_owner: int | None = None) -> None:
        """``max_sessions``/``max_per_owner``: the bounds (``MAX_SESSIONS`` and
        ``MAX_SESSIONS_PER_OWNER`` as they are when the table is made, for tests)."""
        self._sessions: dict[int, _Session] = {}
        self._owned: dict[str | None, set[int]] = {}  # owner -> its session ids (never empty)
        self._dirty: set[int] = set()  # sessions whose row changed (or went) since saved()
        self._index_dirty = False  # a session came or went since saved()
        self.max_sessions = MAX_SESSIONS if max_sessions is None else max_sessions
        self.max_per_owner = MAX_SESSIONS_PER_OWNER if max_per_owner is None else max_per_owner
        self._swept = -1  # the last sweep's epoch (index // SWEEP_EVERY)
        # Lazy heaps, so that a register on a full table finds the expired sessions, the
        # owner holding the most and that owner's idlest session in O(log n) (sorting the
        # whole table per register cost 2.6 ms at 10,000 sessions, and one client could
        # register hundreds a second):
        # * ``_by_deadline``: (last_active + expire_after, sid);
        # * ``_idle``: per owner, (last_active, sid) of its sessions;
        # * ``_by_size``: (-sessions held, owner's sort key) per owner.
        # An entry may be stale: its session gone, active since (the keys of the first two
        # only grow, so a stale key is never too small to surface), or its owner holding
        # fewer since (every owner keeps an entry at least as large as what it holds: one is
        # pushed whenever it gains a session). Stale entries are dropped or pushed again with
        # the current key when they reach the top. Built on first use (``_heaps``), rebuilt
        # when they carry too many stale entries.
        self._by_deadline: list[tuple[int, int]] = []
        self._idle: dict[str | None, list[tuple[int, int]]] = {}
        self._by_size: list[tuple[int, int, str]] = []
        self._heaped = False

    @property
    def changed(self) -> bool:
        """Whether anything changed since the last ``saved`` or ``dump``."""
        return self._index_dirty or bool(self._dirty)

    def _came_or_went(self, sid: int) -> None:
        """Session ``sid`` was added or removed: its row and the index change."""
        self._dirty.add(sid)
        self._index_dirty = True

    def _add(self, sid: int, session: _Session) -> None:
        """Hold ``session`` as ``sid`` (no row marked: a register marks it, a load does not)."""
        self._sessions[sid] = session
        owner = session.owner
        owned = self._owned.get(owner)
        if owned is None:
            owned = self._owned[owner] = set()
        owned.add(sid)
        if self._heaped:
            heapq.heappush(self._by_deadline, (session.last_active + session.expire_after, sid))
            idle = self._idle.get(owner)
            if idle is None:
                idle = self._idle[owner] = []
            heapq.heappush(idle, (session.last_active, sid))
            if len(idle) > 2 * len(owned) + 64:  # mostly stale: sessions that came and went
                self._idle[owner] = self._idle_heap(owned)
            heapq.heappush(self._by_size, (-len(owned), *_owner_key(owner)))

    def _drop(self, sid: int) -> None:
        """Forget session ``sid`` (held): its row and the index change."""
        session = self._sessions.pop(sid)
        owner = session.owner
        owned = self._owned[owner]
        owned.discard(sid)
        if not owned:
            del self._owned[owner]
            self._idle.pop(owner, None)
        self._came_or_went(sid)

    def _idle_heap(self, sids: set[int]) -> list[tuple[int, int]]:
        sessions = self._sessions
        heap = [(sessions[sid].last_active, sid) for sid in sids]
        heapq.heapify(heap)
        return heap

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session: object) -> bool:
        return session in self._sessions

    def begin(self, command: Any, index: int, nested: bool = False) -> Done | Apply | Pending:
        """Decide what applying ``command`` at log ``index`` means; ``nested``: the command
        is one of a ``$batch`` entry's (a register there is owned by ``BATCH_OWNER``)."""
        epoch = index // SWEEP_EVERY
        if epoch != self._swept:
            # As of the epoch's first index, not of this one: a replica that restarted within
            # the epoch (``_swept`` is not stored) sweeps again and drops nothing new, so every
            # replica's table is the same at the same position.
            self._swept = epoch
            if self._sessions:
                self.expire(epoch * SWEEP_EVERY)
        if not is_session_command(command):
            return Apply(command)
        kind = command[1]
        size = len(command)
        if kind == "call" and (size == 6 or size == 7):
            _, _, sid, seq, acked, inner = command[:6]
            if not (is_hashable(sid) and is_hashable(seq)):
                # Checked before any lookup: the command is already committed, and an
                # unhashable id (a map) raised here on every replica, at every restart.
                return Done(BAD_SESSION_CALL)
            session = self._live(sid, index)
            if session is None or not session.admits(command[6] if size == 7 else None):
                return Done(EXPIRED)
            session.last_active = index
            self._dirty.add(sid)
            if type(acked) is int and acked > session.floor:
                _raise_floor(session, acked)
            if seq in session.results:
                recorded = session.results[seq]
                return Pending(sid, seq) if recorded is _PENDING else Done(recorded)
            if type(seq) is not int or seq < session.floor:
                return Done(ACKNOWLEDGED)
            if seq - session.floor >= MAX_RESULTS_PER_SESSION and session.owner is not None:
                _raise_floor(session, seq - MAX_RESULTS_PER_SESSION + 1)
            session.results[seq] = _PENDING
            return Apply(inner, sid, seq)
        if kind == "register" and 3 <= size <= 5:
            expire_after = command[2]
            if type(expire_after) is not int or expire_after <= 0:
                return Done(("error", "bad_session_expiry"))
            token = command[3] if size >= 4 else None
            # A 5-element register (stamped with its owner) may be unbound: token None.
            if (size == 4 or token is not None) and not _valid_token(token):
                return Done(BAD_TOKEN)
            owner = command[4] if size == 5 else None
            if owner is not None and (type(owner) is not str or len(owner) > MAX_OWNER_CHARS):
                return Done(BAD_OWNER)
            if nested:
                owner = BATCH_OWNER  # never stamped: the claimed owner is nobody's word
            if index in self._sessions:
                return Done(REGISTER_CONFLICT)  # a second register in one entry
            self._make_room(owner, index)
            self._add(index, _Session(expire_after, index, token=token, owner=owner))
            self._came_or_went(index)
            return Done(("ok", index))
        if kind == "close" and (size == 3 or size == 4):
            sid = command[2]
            if not is_hashable(sid):
                return Done(BAD_SESSION_CALL)
            found = self._sessions.get(sid)
            if found is not None and found.admits(command[3] if size == 4 else None):
                self._drop(sid)
            return Done("ok")
        return Done(("error", ("unknown_command", f"bad session command {clipped_repr(command)}")))

    def finish(self, session: int, seq: int, result: Any) -> bool:
        """Record ``result`` of the ``Apply`` that ``begin`` returned for ``(session, seq)``
        (not when the floor passed ``seq`` meanwhile, in the same batch: nothing below the
        floor is kept). False if there was nothing to finish (the session is gone)."""
        found = self._sessions.get(session)
        if found is None or seq not in found.results:
            return False
        if seq < found.floor:
            del found.results[seq]
        else:
            found.results[seq] = result
        self._dirty.add(session)
        return True

    def reopen(self, session: int, seq: int) -> None:
        """Take back a ``finish`` of ``(session, seq)`` that returned True: the transaction
        meant to store its result with the command's effect did not commit, so the seq is
        begun and not finished again, and stays out of the rows (``changes``) until a
        ``finish`` records what the command did when it is applied. Stored, a result recorded
        ahead of its command answered a retry of a command no replica had applied."""
        found = self._sessions.get(session)
        if found is not None:
            found.results[seq] = _PENDING
            self._dirty.add(session)

    def result(self, session: int, seq: int) -> Any:
        """The answer to a ``Pending`` of ``(session, seq)`` once the ``Apply`` before it in
        the batch finished: its recorded result; ``ACKNOWLEDGED`` if the floor passed the seq
        within the batch (what the duplicate answers when it comes in a later batch, and it
        says "applied at most once"); ``EXPIRED`` if the session is gone."""
        found = self._sessions.get(session)
        if found is None:
            return EXPIRED
        recorded = found.results.get(seq, _PENDING)
        return ACKNOWLEDGED if recorded is _PENDING else recorded

    def _live(self, sid: Any, index: int) -> _Session | None:
        session = self._sessions.get(sid)
        if session is None:
            return None
        if index - session.last_active > session.expire_after:
            # Dropped lazily: every replica reaches this same decision at this same index.
            self._drop(sid)
            return None
        return session

    def expire(self, index: int) -> int:
        """Drop every session expired at ``index`` (garbage collection; lookups already treat
        them as expired). Returns how many were dropped."""
        self._heaps()
        heap, sessions, dropped = self._by_deadline, self._sessions, 0
        while heap and heap[0][0] < index:
            _, sid = heapq.heappop(heap)
            session = sessions.get(sid)
            if session is None:
                continue  # gone already
            deadline = session.last_active + session.expire_after
            if deadline < index:  # index - last_active > expire_after
                self._drop(sid)
                dropped += 1
            else:  # active since this entry was pushed
                heapq.heappush(heap, (deadline, sid))
        return dropped

    def _make_room(self, owner: str | None, index: int) -> None:
        """Make room for one more session of ``owner`` at ``index``: if ``owner`` holds
        ``max_per_owner`` sessions or the table ``max_sessions``, sweep the expired ones; then
        drop ``owner``'s own idlest sessions while it is at its cap, and while the table is
        full the idlest session of the owner holding the most (``_largest``). Idlest: lowest
        ``last_active``, then lowest id. The same choice on every replica (module docstring),
        and a burst of registers by one owner only ever drops that owner's sessions, unless
        another holds more than it does."""
        owned = self._owned.get(owner)
        if len(self._sessions) < self.max_sessions and (
            owned is None or len(owned) < self.max_per_owner
        ):
            return
        self.expire(index)
        own = other = 0
        owned = self._owned.get(owner)
        while owned is not None and len(owned) >= self.max_per_owner:
            self._drop_idlest(owner)
            own += 1
            owned = self._owned.get(owner)
        while self._sessions and len(self._sessions) >= self.max_sessions:
            victim = self._largest(owner)
            self._drop_idlest(victim)
            if victim == owner:
                own += 1
            else:
                other += 1
        if other:
            logger.info(
                "session table: dropped %d idle session(s) of %r (at its cap of %d) and %d of "
                "others (table full at %d)",
                own,
                owner,
                self.max_per_owner,
                other,
                self.max_sessions,
            )
        elif own:
            # An owner replacing its own idle sessions is routine (and one log line per
            # register of a burst would be the burst's to write): debug only.
            logger.debug(
                "session table: dropped %d idle session(s) of %r (at its cap of %d)",
                own,
                owner,
                self.max_per_owner,
            )

    def _largest(self, owner: str | None) -> str | None:
        """The owner holding the most sessions (the table is not empty): ``owner`` itself if
        it holds as many as any other, else the first such in ``_owner_key`` order."""
        heap, held = self._by_size, self._owned
        while True:
            negative, named, name = heap[0]
            top = name if named else None
            found = held.get(top)
            count = 0 if found is None else len(found)
            if count == -negative:
                break
            heapq.heappop(heap)
            if 0 < count < -negative:  # it held more when pushed: again with what it holds
                heapq.heappush(heap, (-count, named, name))
        mine = held.get(owner)
        return owner if mine is not None and len(mine) == count else top

    def _drop_idlest(self, owner: str | None) -> None:
        """Drop the idlest session of ``owner`` (which holds one; heaps built)."""
        heap, sessions = self._idle[owner], self._sessions
        while True:
            last_active, sid = heapq.heappop(heap)
            session = sessions.get(sid)
            if session is None:
                continue  # gone already
            if session.last_active != last_active:  # active since: its entry goes back
                heapq.heappush(heap, (session.last_active, sid))
                continue
            self._drop(sid)
            return

    def _heaps(self) -> None:
        """Build the lazy heaps if they are not (or rebuild them once mostly stale)."""
        sessions = self._sessions
        bound = 2 * len(sessions) + 1024
        if (
            self._heaped
            and len(self._by_deadline) <= bound
            and len(self._by_size) <= 2 * len(self._owned) + 1024
        ):
            return
        self._by_deadline = [(s.last_active + s.expire_after, sid) for sid, s in sessions.items()]
        heapq.heapify(self._by_deadline)
        self._idle = {owner: self._idle_heap(sids) for owner, sids in self._owned.items()}
        self._by_size = [(-len(sids), *_owner_key(owner)) for owner, sids in self._owned.items()]
        heapq.heapify(self._by_size)
        self._heaped = True

    # -- storing: a row per session ----------------------------------------------------------

    def changes(self) -> tuple[list[tuple[int, tuple[Any, ...] | None]], tuple[Any, ...] | None]:
        """What to store since the last ``saved``: ``(rows, index)``. ``rows`` holds
        ``(session id, row)`` for every session recorded since, ``row`` None for one that is
        gone (delete its row); ``index`` is the stored index of session ids if a session came or
        went, else None. Clears nothing: call ``saved`` once the transaction holding them has
        committed (one that failed leaves them to be written with the next)."""
        sessions = self._sessions
        rows: list[tuple[int, tuple[Any, ...] | None]] = []
        for sid in sorted(self._dirty):
            found = sessions.get(sid)
            rows.append((sid, None if found is None else _row(found)))
        index = (INDEX_VERSION, tuple(sorted(sessions))) if self._index_dirty else None
        return rows, index

    def saved(self) -> None:
        """The last ``changes`` are stored: nothing is changed any more."""
        self._dirty.clear()
        self._index_dirty = False

    def resave_all(self) -> None:
        """Mark every session and the index changed (converting a table stored whole)."""
        self._dirty.update(self._sessions)
        self._index_dirty = True

    @classmethod
    def from_rows(cls, index: Any, rows: Any) -> SessionTable:
        """The table stored as ``index`` (from ``changes``) and ``rows`` (each session's row,
        in the index's order). Raises ValueError for a value these did not write."""
        if type(index) is not tuple or len(index) != 2 or index[0] != INDEX_VERSION:
            raise ValueError(f"not a session index: {index!r:.200}")
        sids = index[1]
        if len(rows) != len(sids):
            raise ValueError(f"{len(rows)} session rows for {len(sids)} sessions")
        table = cls()
        for sid, row in zip(sids, rows, strict=True):
            if type(row) is not tuple or len(row) not in (4, 5, 6):
                raise ValueError(f"session {sid!r}: not a session row: {row!r:.200}")
            table._add(sid, _from_row(row))
        return table

    # -- the whole table as one value ---------------------------------------------------------

    def dump(self) -> tuple[Any, ...]:
        """The whole table as plain tuples, ints and recorded results (msgpack-friendly);
        clears ``changed``."""
        self.saved()
        rows = tuple((sid, *_row(s)) for sid, s in sorted(self._sessions.items()))
        return (_DUMP_VERSION, rows)

    @classmethod
    def load(cls, dumped: Any) -> SessionTable:
        """The table ``dump`` described (an empty table for ``None``)."""
        table = cls()
        if dumped is None:
            return table
        version, rows = dumped
        if version != _DUMP_VERSION:
            raise ValueError(f"unknown session table version {version!r}")
        for sid, *row in rows:
            table._add(sid, _from_row(tuple(row)))
        return table

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionTable) and self.dump_view() == other.dump_view()

    __hash__ = None  # type: ignore[assignment]

    def dump_view(self) -> tuple[Any, ...]:
        """``dump()`` without clearing ``changed`` (for comparisons and status)."""
        rows = tuple((sid, *_row(s)) for sid, s in sorted(self._sessions.items()))
        return (_DUMP_VERSION, rows)


def _owner_key(owner: str | None) -> tuple[int, str]:
    """A total order of owners (None first), the same on every replica."""
    return (0, "") if owner is None else (1, owner)


def _row(session: _Session) -> tuple[Any, ...]:
    """One session's stored row: ``(expire_after, last_active, floor, ((seq, result), ...))``,
    then the token (None if unbound) if the session has a token or an owner, then the owner if
    it has one; rows of unowned sessions keep the shapes of older builds (results still
    pending are not stored: a transaction never holds a half-applied seq)."""
    results = session.results
    row = (
        session.expire_after,
        session.last_active,
        session.floor,
        tuple((seq, results[seq]) for seq in sorted(results) if results[seq] is not _PENDING),
    )
    if session.owner is not None:
        return (*row, session.token, session.owner)
    return row if session.token is None else (*row, session.token)


def _from_row(row: tuple[Any, ...]) -> _Session:
    """The session ``_row`` stored (4 elements, 5 with a token, 6 with token and owner)."""
    expire_after, last_active, floor, results = row[:4]
    token = row[4] if len(row) >= 5 else None
    owner = row[5] if len(row) == 6 else None
    results_of = {seq: r for seq, r in results}
    return _Session(expire_after, last_active, floor, results_of, token, owner)
