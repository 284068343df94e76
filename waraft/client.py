"""A client library for services outside the cluster (``waraft.client.Client``).

The client is a small node of its own: it starts ``waraft.distribution`` on an ephemeral port (or
reuses the distribution this process already runs) and talks to the partitions' acceptors through
the acceptor's client gateway (``waraft.acceptor``: one ``client_batch`` cast in, one
``client_reply`` cast out per batch)::

    with Client(["n1@10.0.0.1:7001", "n2@10.0.0.2:7001"], table="kv", partitions=4) as c:
        c.commit("user:42", ("write", "kv", "user:42", b"..."))   # -> "ok"
        c.read("user:42", ("read", "kv", "user:42"))             # -> ("ok", b"...")
        futures = [c.commit_async(k, ("write", "kv", k, 1)) for k in keys]

Results are what the acceptor API returns: the storage's answer (``"ok"``, ``("ok", value)``,
``"not_found"``) or ``("error", reason)``; a result too large for any frame of the
distribution (``max_frame_bytes``, 16 MiB) is answered ``("error", "reply_too_large")``
instead (final: not retried; a commit answered so was applied). The client adds
``("error", "timeout")`` when a request's deadline passes, ``("error", "closed")`` when the
client is closed, and ``("error", ("badarg", why))`` for a command msgpack cannot encode, or
one too large for a frame to its node on its own (``max_frame_bytes`` of the client's
distribution; ``why`` names the limit): never sent, never retried. The futures are
``waraft.client.Future``: the ``concurrent.futures.Future`` methods a caller uses (``result``,
``done``, ``add_done_callback``) at a fraction of the cost (no condition variable per request);
they always complete with such a value, never with an exception.

**Routing.** ``partition_or_key`` is a partition number (an ``int``) or a key, routed with
``partition_for(key, partitions) = stable_hash(key) % partitions + 1`` where ``stable_hash`` is
CRC-32 of the key's bytes (UTF-8 for ``str``, the bytes themselves for ``bytes``, the msgpack
encoding otherwise): the same on every machine and Python version (unlike ``hash()``).

**Batching.** Requests go to a queue served by one sender thread. Each time it wakes it takes
everything queued and sends, per destination acceptor, ONE frame with all of that partition's
requests of a kind (up to ``max_batch`` items). While a frame is being encoded and sent, new
requests accumulate and go in the next frame: natural batching, no fixed delay. Large
commands go fewer to a frame: about a quarter of the distribution's frame limit
(``FRAME_SHARE``), by the bytes per command measured on the partition's earlier frames and
the size of the first command sent; a frame that still encodes larger than the limit is cut
before it is sent (distribution would drop it, and that is no failure of the node). At most
``max_inflight`` requests per partition are in flight (default 1000 unpacked, as WARaft's leader
admits 1500 high-priority entries; 16384 packed, since a packed frame is one entry); the rest
wait in the client until replies make room, so a burst is not turned into a storm of
``commit_queue_full`` rejections. With ``max_partition_batches`` (default 2) batches of a
partition in flight, its further requests wait until one returns, unless ``GATHER_AT`` (64)
are ready: with many partitions each has few requests at a time, and sent one by one each would be
a log entry and a Raft round of its own (``0`` turns this off; ``max_batch=1`` never waits).

**Packing** (``pack=True``, the default). A frame of three or more commits (``MIN_PACKED``:
two go as two entries, so that a reply's shape tells their results from an error) carries
them as ONE ``("$batch", commands)`` command, the commands msgpack-encoded once by the
client: the leader appends, replicates and commits a single log entry for the whole frame
without decoding it, and each replica's storage applies the commands in order
(``waraft.storage.is_batch_command``); reads are packed the same way (at most
``MAX_PACKED_READS``, 1000, to a batch: see ``raft_max_reads_per_batch``). Each request
still gets its own result. The commands of one entry are applied atomically with respect to
crashes (one storage batch) and in order; a failure of the entry (``not_leader``, ...) is
the failure of every command in it. ``pack=False`` makes every command its own log entry.

**Leaders.** The client caches a leader per partition. Unknown leaders are found by asking a
node's ``waraft_admin`` process (``waraft node`` registers it) in the background, and by the
gateway itself: a reply carrying an error names the leader that node knows of, so a request
sent to a follower is redirected in one hop. ``not_leader`` and ``("notify_redirect", node)``
(a handover in progress) are retried at the new leader; ``commit_queue_full``,
``commit_queue_bytes_full``, ``apply_queue_full``, ``read_queue_full``,
``read_queue_bytes_full``, ``commit_stalled`` (a leader whose log cannot append, a full
disk: refused before appending) and ``overloaded`` (the node's receive thread shed the frame
unread, this client's key over its share of it: one error for the whole batch) are retried
with exponential backoff;
``not_leader`` without a usable hint (an election under way) is asked again at most every
``NOT_LEADER_POLL`` s. A hint naming a node that failed an attempt less than ``STALE_HINT`` s
ago is ignored: the follower has not noticed yet that the leader is gone. A node that
``waraft.distribution`` marks down (no answer to pings for ``down_after``), whose frame cannot be
queued, or that does not answer a batch within ``attempt_timeout`` is avoided for a while and its
batches are retried elsewhere, unless it answered other batches in the last half
``attempt_timeout``: a node that keeps answering is slow, not gone, and its batch waits for the
callers' deadline instead of being re-sent. Retries stop at the
request's deadline (``timeout``) or after ``max_retries``.

**Partitions that do not exist.** A node answers a batch for a partition it never started (a
mistyped table, a partition number past the table's) ``no_such_partition`` at once (while it is
still starting the partitions it was started with, it answers nothing: one may be on its way).
The client then leaves that node out for that partition for ``UNSERVED_FOR`` s and tries its
others; once every node it knows has said so, the request ends with ``("error",
"no_such_partition")``: not applied, unless an earlier attempt went unanswered (then
``timeout``, as for any refusal).

**Delivery guarantee.** A commit that was rejected (``not_leader`` from a follower, a full
queue) was never appended, so retrying it is safe. A commit answered with such an error was
rejected on every attempt: once an attempt of it went unanswered (a node that did not answer in
time or failed, or answered something the client could not read), it is answered ``timeout``
if it runs out of deadline or retries, whatever the later attempts were told, and so is an
error a later attempt ends with that says nothing about the first: any refusal of that
attempt (``commit_stalled``, a failed call, ...) and, without a session, any error at all
(with one, storage's answer is the result of the command's one application, and passes).
``closed`` (``Client.close``) is, like ``timeout``, an unknown
outcome. A commit whose attempt timed out, or whose
leader lost leadership after appending it, may or may not have been applied: the client retries
it, so commits are *at least once* in those cases (as with any Raft client without session
deduplication; WARaft's keys are opaque, not deduplicated). Idempotent commands (writes of a
value, deletes) are unaffected.

**Exactly-once sessions** (``sessions=True``, opt-in). The client registers one session per
partition (a replicated command, on the first commit to that partition) and sends each commit as
``("$session", "call", session, seq, acked, command, token)`` (``waraft.core.sessions``; the
token, random bytes drawn at the register, is what binds the session to this client: another
client that guesses the session's id cannot act on it). Every retry of
a request re-sends the same ``(session, seq)``, and every replica's storage applies a sequence
number once and records its result, so a retried commit applies exactly once and the caller gets
the result of the one application. Guarantee: a commit that completes with a result was applied
exactly once; one that completes with an error in ``AT_MOST_ONCE`` (``("error", "timeout")``,
``("error", "session_expired")``, ``("error", "session_seq_acknowledged")``, ...) was applied
at most once (a later retry of it by the caller is a new request); any other error, not at
all. A session idle for ``session_expire_after`` applied entries of its partition is
forgotten by the replicas with the results it recorded: its next commit answers
``("error", "session_expired")`` without being applied, but an earlier attempt of that commit
may have been, so the outcome is unknown, as after a timeout; the client registers a fresh
session for the following ones. Registering does not block the caller (commits wait for it in
the client, so ``commit_async`` may be called from a callback), and ``close`` closes the
client's sessions on the replicas (waiting ``CLOSE_SESSIONS_TIMEOUT`` at most). Sessions work
packed or not (``pack=False``), but a register always travels as an entry of its own, never
packed into a ``$batch``: the node stamps each register with the identity it authenticated the
client as, its *owner*, and never looks inside a packed batch (a register found in one belongs
to the shared ``BATCH_OWNER``). A partition
keeps ``MAX_SESSIONS_PER_OWNER`` sessions per owner (per CURVE key; without CURVE, per node
id), dropping the owner's own idlest beyond that, so clients sharing a key share that bound,
and another key's burst of registers does not expire this client's sessions. Reads are never
tagged. Opt-in
because a session costs a register entry per partition and a table record per outstanding
commit, and because plain writes and deletes are idempotent already.

**Many clients in one process.** Clients may be constructed and closed from many threads at
once. Those that run over ``waraft.dist`` share one distribution node: the first starts it
(unless the process runs one already), and it is stopped when the last client that uses it
closes, never while another client still does. Each client's replies come to a receiver
of its own, named once in the life of the process (with random bytes), and number its
batches from a random 62-bit offset; a reply is taken only from the node its batch went to.
A late reply to a closed client is thus never taken for another client's.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import random
import socket
import threading
import time
import zlib
from _thread import allocate_lock
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Any, Final

from waraft import make_ref, otp
from waraft.core.commit import CANCELLED
from waraft.core.log import approx_command_size
from waraft.core.sessions import (
    ACKNOWLEDGED,
    DEFAULT_EXPIRE_AFTER,
    EXPIRED,
    TOKEN_BYTES,
    call_command,
    close_command,
    is_call,
    register_command,
)
from waraft.core.settings import DEFAULT_MAX_READS_PER_BATCH
from waraft.partition import acceptor
from waraft.services import codec
from waraft.services.replies import REPLY_TOO_LARGE
from waraft.storage import BATCH, UNENCODABLE_RESULT

logger = logging.getLogger(__name__)

ADMIN_NAME: Final = "waraft_admin"
"""The node admin process ``waraft node`` registers (see ``waraft.cli.admin``)."""

DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_ATTEMPT_TIMEOUT: Final = 5.0
DEFAULT_MAX_BATCH: Final = 1000
MAX_PACKED_READS: Final = DEFAULT_MAX_READS_PER_BATCH
"""Reads packed into one ``$batch`` at most, whatever ``max_batch`` says: nodes refuse a
read of more than ``raft_max_reads_per_batch`` reads (by default this many)."""
MIN_PACKED: Final = 3
"""Requests a frame holds at least to be packed into one ``$batch``. A packed frame's reply
is ONE result: the list of its commands' results, or one error for all of them, an
``("error", reason)`` pair. Off the wire both are arrays (msgpack has no tuples), so a list of
TWO results whose first is the string ``"error"`` (a provider's own command may answer so)
read as one error for both. With three or more it cannot be a pair, and a frame of two
goes as two items, each with its own result: the client alone makes the reply unambiguous,
whatever build the node runs (a node answers a packed frame as before)."""
MAX_INFLIGHT_READS: Final = 5000
"""Reads of a partition in flight at most (packed or not), whatever ``max_inflight`` says:
a node admits ``raft_max_pending_reads`` (by default this many) reads of a partition, each
read of a packed batch counted, and refuses the rest (``read_queue_full``, retried)."""
DEFAULT_MAX_INFLIGHT: Final = 1000
DEFAULT_MAX_INFLIGHT_PACKED: Final = 16384
DEFAULT_MAX_RETRIES: Final = 100
DEFAULT_MAX_PARTITION_BATCHES: Final = 2
GATHER_AT: Final = 64
"""Requests of a partition that has ``max_partition_batches`` batches in flight are sent
anyway once this many of one kind are ready: a batch that size already spreads its round
thin, and holding it back would only idle the leader (one partition under load sends batches
of 500-900 and never waits)."""
SUSPECT_FOR: Final = 1.0
"""Seconds a node that failed an attempt is avoided (unless every node is suspect)."""
NOT_LEADER_POLL: Final = 0.1
"""The longest wait (seconds, before jitter) between retries answered ``not_leader``."""
STALE_HINT: Final = 0.5
"""Seconds after a node failed an attempt during which a ``not_leader`` hint naming it is taken
as stale (the follower has not noticed yet) and ignored."""
TICK: Final = 0.05
"""How often (seconds) in-flight batches are checked for expiry."""
LIVENESS_EVERY: Final = 0.25
"""How often (seconds) the nodes of in-flight batches are checked against dist liveness."""
FRAME_SHARE: Final = 4
"""A frame of several requests carries about 1/``FRAME_SHARE`` of the distribution's frame
limit at most (4 MiB of the default 16 MiB ``max_frame_bytes``, as replies do:
``REPLY_FRAME_BYTES``). The margin absorbs commands whose sizes differ from the estimate the
frame was cut by; a packed frame is one log entry, which followers must still get in an
append frame of their own; and a frame of that size already spreads its round thin. A single
request may fill the whole frame."""
SAMPLE_AT: Final = 64
"""A partition's requests sent together, this many or more, are cut into frames by the size
of the first too (``Client._sampled_count``), not only by the measure of its earlier frames:
then a frame of large commands right after small ones is seldom encoded twice (once too
large, then cut). Sizing the command costs about 1 us, so fewer go by the measure alone."""

_DIST_LOCK = threading.Lock()
# Numbers this process's clients' reply receivers: each client's name is unique for the life
# of the process (see ``Client.__init__``).
_client_numbers = itertools.count(1)
_dist_users = 0  # clients using the shared distribution node (guarded by _DIST_LOCK)
_dist_owned = False  # whether a client started it (then the last client out stops it)

_OVERLOAD: Final = frozenset(
    {
        "commit_queue_full",
        "commit_queue_bytes_full",
        "apply_queue_full",
        "read_queue_full",
        "read_queue_bytes_full",
        # A leader whose log refuses appends (a full disk) fails its pending commits and
        # reads with it before appending them (``waraft.core.commit``), until it can write.
        "commit_stalled",
        # The node's receive thread shed the frame undecoded, this client's key over its
        # share of that thread (``waraft.distribution.receiver``): one error for the batch.
        "overloaded",
    }
)
#: Reasons a node gives for ONE attempt it did not apply (full queues, not the leader, a
#: stalled log, a failed call, a reply the client could not read): they say nothing about
#: an earlier attempt of the same command, which may have been applied.
_REFUSALS: Final = _OVERLOAD | frozenset(
    {
        "not_leader",
        CANCELLED,
        "timeout",
        "unreachable",
        "bad_reply",
        "no_such_partition",
        "storage_corruption",
        "storage_quarantined",
    }
)
CLOSED: Final = ("error", "closed")
TIMEOUT: Final = ("error", "timeout")
UNREACHABLE: Final = ("error", "unreachable")
#: The end of a request to a partition none of the client's nodes runs (see the module
#: docstring): not applied.
NO_SUCH_PARTITION: Final = ("error", "no_such_partition")
UNSERVED_FOR: Final = 2.0
"""Seconds a node that answered ``no_such_partition`` for a partition is not sent its requests."""
#: What every open and later request of a client gets once its sender thread crashed (a bug,
#: logged with its traceback): nothing could ever send them.
SENDER_FAILED: Final = ("error", "client_failed")
#: The answers to a commit whose command may still have been applied (at most once); any
#: other error means not applied at all (README, exactly-once sessions). A retry of a seq
#: whose record the replicas dropped (``session_seq_acknowledged``: a request left unanswered
#: while ``MAX_RESULTS_PER_SESSION`` newer ones of its session completed) may follow a copy
#: that was applied; a result msgpack cannot carry (``unencodable_result``), or too large for
#: any frame to the client (``reply_too_large``), was applied. A caller that took any of them
#: for "not applied" and resubmitted applied the command twice.
AT_MOST_ONCE: Final = frozenset(
    {TIMEOUT, CLOSED, SENDER_FAILED, EXPIRED, ACKNOWLEDGED, UNENCODABLE_RESULT, REPLY_TOO_LARGE}
)
#: How long ``close`` waits for the sender to stop before it answers what it can reach; the
#: sender answers the rest itself when it does stop.
CLOSE_JOIN_TIMEOUT = 5.0
CLOSE_SESSIONS_TIMEOUT = 1.0
"""Seconds ``close`` waits at most for the replicas to forget this client's sessions."""
_REGISTER: Final = "register"
"""The kind of a session register request inside the client (sent as a ``commit``)."""


def stable_hash(key: Any) -> int:
    """CRC-32 of the key's bytes (UTF-8 for str, raw for bytes, msgpack otherwise)."""
    if isinstance(key, str):
        data = key.encode()
    elif isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
    else:
        data = codec.packb(key)
    return zlib.crc32(data)


def partition_for(key: Any, partitions: int) -> int:
    """``stable_hash(key) % partitions + 1``: the partition (1-based) that owns ``key``."""
    return stable_hash(key) % partitions + 1


def local_address_for(node_id: str) -> str:
    """This machine's address as seen on the route to ``node_id`` (no packet is sent)."""
    from waraft.distribution import parse

    host = parse(node_id).host.strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1" if host != "::1" else "[::1]"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
            address = str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
    return f"[{address}]" if family == socket.AF_INET6 else address


def _is_error(result: Any) -> bool:
    return type(result) is tuple and len(result) == 2 and result[0] == "error"


_FUTURES_LOCK = allocate_lock()


def _gave_up(request: _Entry) -> Any:
    """What a request that runs out of deadline or retries answers: the last error it got
    (an overload, say), unless an attempt of it went unanswered (a node that did not answer
    in time or failed, or the attempt in flight at the deadline): then ``timeout``. Such an
    attempt may have been appended and applied, so a later ``not_leader`` from another node
    says nothing about it; answering that error let a caller resubmit (as the error invites)
    a commit that was applied, and apply it twice (found by a review)."""
    last_error = request.last_error
    if request.unsure or last_error is None or last_error is UNREACHABLE:
        return TIMEOUT
    return last_error


def _sent_by(origin: str | None, node: str) -> bool:
    """Whether a reply the distribution's connection attributes to ``origin`` may answer a
    batch sent to ``node``. The gateway answers from the node that took the batch (its reply
    handles are local objects, never forwarded), so ``origin`` must be that node: the node id
    it claims (no CURVE, or keys of the older form), or the user id of its node key,
    ``node:<name>`` (a node key may claim only ids ``<name>@...``). None (in process, where no
    connection tells) is taken on trust."""
    if origin is None or origin == node:
        return True
    return origin == "node:" + node.partition("@")[0]


def _refused(error: Any) -> bool:
    """Whether ``error`` refuses one attempt (see ``_REFUSALS``), rather than being storage's
    answer to the command."""
    reason = error[1]
    if type(reason) is tuple:
        return len(reason) == 2 and reason[0] in ("call_error", "notify_redirect")
    return reason in _REFUSALS


def _final(request: _Request, error: Any) -> Any:
    """What ``request`` answers for ``error``, the last error it got and one not retried.

    Once an attempt of a commit went unanswered (``unsure``), it may have been applied, so
    an error that is no definite answer about the command becomes ``timeout`` (maybe
    applied): a caller takes any error outside ``AT_MOST_ONCE`` for "not applied" and may
    resubmit, and a review's commit applied by an unanswered attempt and answered
    ``commit_stalled`` on the retry was applied twice. Definite answers pass: those in
    ``AT_MOST_ONCE``, and, in a session, storage's answer (every attempt carries the same
    seq, so it is the result recorded by the command's one application). Reads apply
    nothing and are answered as they are."""
    if not request.unsure or request.kind != "commit" or error in AT_MOST_ONCE:
        return error
    if is_call(request.item) and not _refused(error):
        return error
    return TIMEOUT


def _unanswered(requests: Iterable[_Request]) -> list[_Request]:
    """The requests not complete yet of an attempt that ends unanswered, each marked so."""
    out = [r for r in requests if not r.done]
    for request in out:
        request.unsure = True
    return out


class Future:
    """The result of one request (see the module docstring).

    Completed once, by the client; ``result(timeout)`` blocks until then (raising
    ``concurrent.futures.TimeoutError`` when ``timeout`` passes first), ``add_done_callback``
    runs ``fn(future)`` on completion (at once if already complete). One module lock guards the
    short critical sections: a request costs no lock or condition object of its own unless
    someone blocks on it.
    """

    __slots__ = ("_callbacks", "_done", "_value", "_waiter")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._callbacks: list[Callable[[Future], Any]] | None = None
        self._waiter: Any = None

    def done(self) -> bool:
        """True once completed."""
        return self._done

    def result(self, timeout: float | None = None) -> Any:
        """The request's result, waiting up to ``timeout`` seconds (None: forever)."""
        if not self._done:
            with _FUTURES_LOCK:
                if not self._done:
                    if self._waiter is None:
                        self._waiter = allocate_lock()
                        self._waiter.acquire()
                    waiter = self._waiter
            if not self._done:
                got = waiter.acquire() if timeout is None else waiter.acquire(True, timeout)
                if got:
                    waiter.release()  # let any other waiter through too
                if not self._done:
                    raise FutureTimeout()
        return self._value

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(self)`` once the result is known."""
        with _FUTURES_LOCK:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        fn(self)

    def set_result(self, value: Any) -> bool:
        """Complete the future (the client does this); False if it was complete already."""
        with _FUTURES_LOCK:
            if self._done:
                return False
            waiter, callbacks = self._claim(value)
        self._wake(waiter, callbacks)
        return True

    def _claim(self, value: Any) -> tuple[Any, list[Callable[[Future], Any]] | None]:
        """Under ``_FUTURES_LOCK``, on a future not done yet: record ``value``; returns what
        ``_wake`` must signal once the lock is released (so that a whole reply's futures are
        completed under one acquisition of the lock)."""
        self._value = value
        self._done = True
        callbacks, self._callbacks = self._callbacks, None
        return self._waiter, callbacks

    def _wake(self, waiter: Any, callbacks: list[Callable[[Future], Any]] | None) -> None:
        if waiter is not None:
            waiter.release()
        if callbacks:
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:
                    logger.exception("a waraft.client future callback raised")


class _Request:
    """One caller's request, from submission until its one completion (``finish``).

    ``callback`` (when there is no future) is called ``callback(result)``, or
    ``callback(index, result)`` when ``index`` is not None (``commit_many``: the index is kept
    here rather than bound in a ``functools.partial`` per request, one object fewer per
    command for the allocator and the cyclic garbage collector to handle)."""

    __slots__ = (
        "attempts",
        "callback",
        "deadline",
        "done",
        "future",
        "index",
        "item",
        "kind",
        "last_error",
        "on_done",
        "partition",
        "priority",
        "unsure",
    )
    count = 1  # commands carried (a _Group carries many)

    def __init__(
        self,
        partition: int,
        kind: str,
        item: Any,
        priority: str,
        deadline: float,
        callback: Callable[..., Any] | None = None,
        index: int | None = None,
        future: Future | None = None,
    ) -> None:
        self.partition = partition
        self.kind = kind
        self.item = item
        self.priority = priority
        self.deadline = deadline
        self.callback = callback
        self.index = index
        self.future = future if future is not None or callback is not None else Future()
        self.done = False
        self.attempts = 0
        self.last_error: Any = None
        self.unsure = False  # an attempt went unanswered: it may have been applied
        self.on_done: Callable[[Any], None] | None = None

    def finish(self, result: Any) -> None:
        """Complete the request once (later completions are ignored)."""
        with _FUTURES_LOCK:
            if self.done:
                return
            self.done = True
        self.complete(result)

    def complete(self, result: Any) -> None:
        """Deliver ``result`` (the caller has set ``done`` under ``_FUTURES_LOCK``)."""
        if self.on_done is not None:
            self.on_done(result)
        future = self.future
        if future is not None:
            future.set_result(result)
            return
        try:
            if self.index is None:
                self.callback(result)  # type: ignore[misc]
            else:
                self.callback(self.index, result)  # type: ignore[misc]
        except Exception:
            logger.exception("a waraft.client request callback raised")


class _Group:
    """The commits of one ``commit_many`` call (without sessions) for one partition, carried
    as lists instead of a ``_Request`` each: ``items[j]`` is the command the caller passed at
    position ``indices[j]``, answered through ``futures[j]`` or ``callback(indices[j], result)``.

    A group is waiting (ready or held) or in exactly ONE in-flight batch, and is never partly
    complete: whoever owns that batch (pops it from ``_inflight``) either completes every
    command from the reply (``deliver``, the path every batch takes while nothing goes wrong),
    or turns the group into ``_Request`` objects (``requests``) for everything else (an error
    result, a deadline, a lost node, close), which then follow the per-request path. A group
    costs a handful of objects per call instead of one per command, which in a client keeping
    thousands of commands in flight is most of its allocation and cyclic-GC work.
    """

    __slots__ = ("callback", "deadline", "futures", "indices", "items", "partition", "priority")
    kind = "commit"
    done = False  # never partly complete (see above): "done" is a per-_Request notion
    last_error = None
    unsure = False  # never sent unanswered: a group is turned into requests first

    def __init__(
        self,
        partition: int,
        items: list[Any],
        indices: Sequence[int],
        priority: str,
        deadline: float,
        callback: Callable[[int, Any], Any] | None,
        futures: list[Future] | None,
    ) -> None:
        self.partition = partition
        self.items = items
        self.indices = indices
        self.priority = priority
        self.deadline = deadline
        self.callback = callback
        self.futures = futures

    @property
    def count(self) -> int:
        return len(self.items)

    def split(self, n: int) -> tuple[_Group, _Group]:
        """The first ``n`` commands and the rest, as two groups (0 < n < count)."""
        futures = self.futures
        return (
            _Group(
                self.partition,
                self.items[:n],
                self.indices[:n],
                self.priority,
                self.deadline,
                self.callback,
                None if futures is None else futures[:n],
            ),
            _Group(
                self.partition,
                self.items[n:],
                self.indices[n:],
                self.priority,
                self.deadline,
                self.callback,
                None if futures is None else futures[n:],
            ),
        )

    def requests(self) -> list[_Request]:
        """A ``_Request`` per command, answering the same future or callback (the group must
        not be used afterwards)."""
        partition, priority, deadline = self.partition, self.priority, self.deadline
        futures = self.futures
        if futures is None:
            return [
                _Request(partition, "commit", item, priority, deadline, self.callback, index)
                for item, index in zip(self.items, self.indices, strict=True)
            ]
        return [
            _Request(partition, "commit", item, priority, deadline, future=future)
            for item, future in zip(self.items, futures, strict=True)
        ]

    def deliver(self, results: Sequence[Any]) -> None:
        """Complete the commands with ``results`` (one each, in order)."""
        futures = self.futures
        if futures is None:
            callback = self.callback
            assert callback is not None
            for index, result in zip(self.indices, results, strict=True):
                try:
                    callback(index, result)
                except Exception:
                    logger.exception("a waraft.client request callback raised")
            return
        wakes = []
        with _FUTURES_LOCK:
            for future, result in zip(futures, results, strict=True):
                if not future._done:
                    waiter, callbacks = future._claim(result)
                    if waiter is not None or callbacks:
                        wakes.append((future, waiter, callbacks))
        for future, waiter, callbacks in wakes:
            future._wake(waiter, callbacks)

    def finish(self, result: Any) -> None:
        """Complete every command with the same ``result`` (a timeout, close)."""
        self.deliver([result] * len(self.items))


_Entry = _Request | _Group


def _take(entries: list[_Entry], n: int) -> tuple[list[_Entry], list[_Entry]]:
    """The first ``n`` commands of ``entries`` and the rest (a group may be split)."""
    taken: list[_Entry] = []
    rest: list[_Entry] = []
    for entry in entries:
        count = entry.count
        if n <= 0:
            rest.append(entry)
        elif count <= n:
            taken.append(entry)
            n -= count
        else:
            assert isinstance(entry, _Group)
            head, tail = entry.split(n)
            taken.append(head)
            rest.append(tail)
            n = 0
    return taken, rest


def _chunks(entries: list[_Entry], size: int) -> Iterator[list[_Entry]]:
    """``entries`` cut into frames of at most ``size`` commands, in one pass (a group may be
    split across frames)."""
    if all(type(entry) is _Request for entry in entries):
        for start in range(0, len(entries), size):
            yield entries[start : start + size]
        return
    chunk: list[_Entry] = []
    room = size
    for entry in entries:
        while entry.count > room:  # only a group holds more than one command
            assert isinstance(entry, _Group)
            head, entry = entry.split(room)
            chunk.append(head)
            yield chunk
            chunk, room = [], size
        chunk.append(entry)
        room -= entry.count
        if room == 0:
            yield chunk
            chunk, room = [], size
    if chunk:
        yield chunk


def _commands(entries: list[_Entry]) -> list[Any]:
    """Every command of ``entries``, in order (the order of a batch's results)."""
    if len(entries) == 1 and type(entries[0]) is _Group:
        return entries[0].items
    out: list[Any] = []
    for entry in entries:
        if type(entry) is _Group:
            out.extend(entry.items)
        else:
            out.append(entry.item)  # type: ignore[union-attr]
    return out


class _Batch:
    """A frame in flight: ``requests`` are its entries (``_Request`` or ``_Group``, in the
    order of its results), ``count`` the commands they carry. ``earliest``: the earliest
    deadline of its entries (they do not change while it is in flight), so the periodic
    deadline scan looks inside a batch only once one of its requests may be late.
    ``deadline_bound``: ``expires`` is its entries' latest deadline, which came before the
    attempt timeout; its expiry then says nothing about the node (the callers gave up first).
    """

    __slots__ = (
        "count",
        "deadline_bound",
        "earliest",
        "expires",
        "node",
        "packed",
        "partition",
        "parts",
        "requests",
    )

    def __init__(
        self,
        node: str,
        partition: int,
        requests: list[_Entry],
        expires: float,
        packed: bool = False,
        earliest: float = float("-inf"),
        count: int | None = None,
        deadline_bound: bool = False,
    ) -> None:
        self.node = node
        self.partition = partition
        self.requests = requests
        self.expires = expires
        self.packed = packed
        self.earliest = earliest
        self.count = len(requests) if count is None else count
        self.deadline_bound = deadline_bound
        # The results of a reply that comes in parts (``client_reply_part``), as they arrive.
        self.parts: list[Any] | None = None

    def grouped(self) -> bool:
        """Whether any entry is still a ``_Group``."""
        return any(type(entry) is _Group for entry in self.requests)

    def materialize(self) -> list[_Request]:
        """Turn its groups into ``_Request`` objects (only its owner, or under the client's
        lock while it is in flight) and return them all."""
        if self.grouped():
            requests: list[_Request] = []
            for entry in self.requests:
                if type(entry) is _Group:
                    requests.extend(entry.requests())
                else:
                    requests.append(entry)  # type: ignore[arg-type]
            self.requests = requests  # type: ignore[assignment]
        return self.requests  # type: ignore[return-value]


def _own_batch_parts(batch: _Batch, inner: bool, total: int) -> bool:
    """Whether parts of ``total`` values may answer ``batch`` although it holds another count
    of commands: a caller's own ``$batch`` command sent alone, whose one result is the list of
    its commands' answers, split inside as a packed frame's is. Bounded as the node bounds
    a ``$batch``'s values, so a part cannot make this client allocate more."""
    return inner and not batch.packed and batch.count == 1 and total <= codec.MAX_UNTRUSTED_OBJECTS


def _pack(kind: str, commands: list[Any]) -> list[Any]:
    """One ``$batch`` item for a whole chunk's commands (see ``waraft.storage.is_batch_command``).

    The commands are msgpack-encoded here, once: the leader appends and replicates the bytes
    without decoding them; only each replica's storage does.
    """
    if kind == "commit":
        return [(make_ref(), (BATCH, codec.packb(commands)))]
    return [(BATCH, codec.packb(commands))]


def _over_value_limit(payload: bytes | None, items: list[Any], kind: str, packed: bool) -> bool:
    """Whether a node would refuse the frame ``payload``, or the storage of every replica the
    packed ``$batch`` in ``items``, for holding more than ``codec.MAX_UNTRUSTED_OBJECTS``
    msgpack values (``waraft.services.codec``): the frame would be dropped (its requests
    answered ``timeout`` after retries until their deadline), the batch applied as malformed.
    A packed frame carries its batch as one bytes value, so only the batch is counted; and
    only data longer than that many bytes can hold that many values, so other frames cost a
    comparison."""
    data = (items[0][1] if kind == "commit" else items[0])[1] if packed else payload
    if data is None or len(data) <= codec.MAX_UNTRUSTED_OBJECTS:
        return False
    try:
        codec.unpackb(data, untrusted=True)
    except codec.CodecError:
        return True
    return False


def _parts(requests: list[_Request], budget: int | None) -> list[list[_Request]]:
    """``requests`` (two or more) in consecutive parts: of about ``budget`` bytes at most by
    ``approx_command_size`` (a lone command may pass it), else halves, also when the estimate
    fits them all in one part (it undercounts a few kinds of values, non-ASCII strings), so
    every part is smaller than the whole and cutting again ends."""
    if budget is not None:
        parts: list[list[_Request]] = []
        part: list[_Request] = []
        size = 0
        for request in requests:
            bytes_ = approx_command_size(request.item)
            if part and size + bytes_ > budget:
                parts.append(part)
                part, size = [], 0
            part.append(request)
            size += bytes_
        parts.append(part)
        if len(parts) > 1:
            return parts
    half = len(requests) // 2
    return [requests[:half], requests[half:]]


_MISSING: Any = object()
"""A result of a reply in parts that has not arrived yet."""


class _Receiver(otp.Process):
    """Gets ``("client_reply", batch_id, results, leader_hint)`` casts for its client (over
    ``waraft.distribution`` they are taken in the receive thread instead: see ``_on_cast``)."""

    def init(self, client: Client) -> None:
        self.client = client

    def handle_cast(self, msg: Any) -> None:
        if not self.client._on_cast(msg):
            logger.debug("client receiver dropped %r", msg)


class Client:
    """A connection to a waraft cluster for one table (see the module docstring).

    ``nodes``: node ids to talk to (any subset of the cluster works; leaders anywhere in it
    are followed). ``partitions``: how many partitions the table has (1..N). ``timeout``: the
    default deadline of a request, seconds. ``node``: run in-process on this ``otp.Node``
    instead of over ``waraft.distribution`` (tests). ``host``: the address this client's node
    listens on (default: the local address on the route to the first node). ``dist_options``: extra
    keyword arguments for ``waraft.distribution.start``. ``pack``: send a frame's commits as one
    ``$batch`` log entry (see Packing above). ``keys``: the cluster's key directory (``waraft
    keys create``); the client then connects with identity ``key_name`` of it (a client key
    reaches commits, reads and read-only status).
    """

    def __init__(
        self,
        nodes: Sequence[str],
        table: str = "kv",
        partitions: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_inflight: int | None = None,
        max_partition_batches: int = DEFAULT_MAX_PARTITION_BATCHES,
        max_retries: int = DEFAULT_MAX_RETRIES,
        priority: str = "high",
        pack: bool = True,
        host: str | None = None,
        node: otp.Node | None = None,
        dist_options: dict[str, Any] | None = None,
        discover: bool = True,
        keys: str | None = None,
        key_name: str = "client",
        sessions: bool = False,
        session_expire_after: int = DEFAULT_EXPIRE_AFTER,
    ) -> None:
        if not nodes:
            raise ValueError("a client needs at least one node id")
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if priority not in ("high", "low"):
            raise ValueError("priority must be 'high' or 'low'")
        self.nodes = list(dict.fromkeys(nodes))
        self.table = table
        self.partitions = partitions
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.max_batch = max(1, max_batch)
        if max_inflight is None:
            # The leader admits 1500 high-priority entries; packed, one entry holds a frame.
            max_inflight = DEFAULT_MAX_INFLIGHT_PACKED if pack else DEFAULT_MAX_INFLIGHT
        self.max_inflight = max(1, max_inflight)
        self.max_partition_batches = max(0, max_partition_batches)
        self.max_retries = max_retries
        self.priority = priority
        self.pack = pack
        self._keys = keys  # a key directory (waraft keys create); used with identity key_name
        self._key_name = key_name
        self.sessions = sessions
        self.session_expire_after = session_expire_after
        # Per partition: [session id, next seq, outstanding seqs, token, oldest outstanding
        # seq or a lower mark (see _tag_with)]; one lock per partition
        # serialises its registration (a commit waits for it) without blocking the others.
        self._sessions: dict[int, list[Any]] = {}
        self._session_locks = {p: threading.Lock() for p in range(1, partitions + 1)}
        # Commits of a partition whose session is being registered, in order (``_tag_all``).
        self._parked: dict[int, list[_Request]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ready: list[_Entry] = []
        self._delayed: list[tuple[float, int, _Request]] = []
        self._inflight: dict[int, _Batch] = {}
        self._inflight_items: dict[int, int] = {}
        self._inflight_reads: dict[int, int] = {}  # of _inflight_items (MAX_INFLIGHT_READS)
        self._inflight_batches: dict[int, int] = {}  # per partition
        self._held: dict[int, list[_Entry]] = {}
        self._leaders: dict[int, str] = {}
        self._suspect: dict[str, float] = {}
        self._failed_at: dict[str, float] = {}  # when a node last failed an attempt
        self._heard: dict[str, float] = {}  # when a node's latest reply arrived
        # (partition, node) -> until when the node is left out for the partition: it said it
        # does not run it (``no_such_partition``).
        self._unserved: dict[tuple[int, str], float] = {}
        self._rr = itertools.count()
        self._seq = itertools.count()
        # From a random 62-bit offset: a reply addressed to an earlier receiver of the same
        # name (another process that had this pid) cannot name a batch of this client.
        self._batch_ids = itertools.count(int.from_bytes(os.urandom(8), "big") >> 2)
        self._closed = False
        self._sender_done = False
        self._in_hand: list[_Entry] = []  # what the sender took to dispatch (sender only)
        # Per acceptor address: the largest payload distribution casts to it, None for no
        # limit (``_cast_limit``); per partition: the encoded bytes per command of its latest
        # frames and the commands a frame then carries, while they are large (``_measure``).
        # All sender only.
        self._cast_limits: dict[tuple[str, str], int | None] = {}
        self._command_bytes: dict[int, float] = {}
        self._frame_counts: dict[int, int] = {}
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "batches",
                "items_sent",
                "replies",
                "retries",
                "redirects",
                "attempt_timeouts",
                "slow_attempts",
                "send_failures",
                "timeouts",
                "stale_hints",
                "partition_holds",
                "silent_leaders",
                "no_such_partition",
                "oversized_frames",
            ),
            0,
        )
        self._owns_dist = False
        self._remote = node is None
        self._node = node if node is not None else self._start_dist(host, dist_options or {})
        # Never reused while the process runs (id(self) was, once a closed client was
        # collected: a reply still on its way to the closed client completed the new one's
        # batch of the same number, a read returning another key's value), and with random
        # bytes, since a later process may get this pid and this node id.
        name = f"waraft_client_{os.getpid()}_{next(_client_numbers)}_{os.urandom(4).hex()}"
        self._receiver = otp.start(_Receiver, self, name=name, node=self._node)
        self.reply_addr = (name, self._node.id)
        if self._remote:
            from waraft import distribution as dist
            from waraft.distribution import policy

            # The only thing nodes may send this client: the replies to its batches.
            policy.allow(
                name,
                casts={
                    "client_reply": policy.MEMBER,
                    "client_replies": policy.MEMBER,
                    "client_reply_part": policy.MEMBER,
                },
            )

            # Replies are handled in dist's receive thread: no hop to the receiver's thread.
            dist.set_inline_handler(name, self._on_cast)
        self._sender = threading.Thread(target=self._run, name="waraft-client-sender", daemon=True)
        self._sender.start()
        if discover:
            threading.Thread(
                target=self._discover_quietly, name="waraft-client-discover", daemon=True
            ).start()

    def _start_dist(self, host: str | None, options: dict[str, Any]) -> otp.Node:
        """Join (or start) the process's distribution node; counted so that the last client
        out stops it, and only if a client started it (never an application's own)."""
        global _dist_users, _dist_owned
        from waraft import distribution as dist
        from waraft.distribution import keys

        with _DIST_LOCK:
            if not dist.is_started():
                host = host or local_address_for(self.nodes[0])
                name = f"client{os.getpid()}x{random.randrange(1 << 30):x}"
                if self._keys is not None:
                    # Connect as the key's identity: the nodes accept only the cluster's keys.
                    options = {**options, "curve": keys.load(self._keys, self._key_name)}
                    name = keys.process_name(self._key_name, "client")
                dist.start(f"{name}@{host}:0", **options)
                _dist_owned = True
            _dist_users += 1
            self._owns_dist = True  # this client holds one reference
            return otp.node.default()

    def _release_dist(self) -> None:
        global _dist_users, _dist_owned
        from waraft import distribution as dist

        with _DIST_LOCK:
            _dist_users -= 1
            if _dist_users > 0 or not _dist_owned:
                return
            _dist_owned = False
            dist.stop()
            self._node.stop(timeout=2.0)

    # -- public API ------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This client's node id."""
        return self._node.id

    def partition_of(self, partition_or_key: Any) -> int:
        """The partition a request for ``partition_or_key`` goes to."""
        if isinstance(partition_or_key, int) and not isinstance(partition_or_key, bool):
            if not 1 <= partition_or_key <= self.partitions:
                raise ValueError(
                    f"partition {partition_or_key} is not in 1..{self.partitions} "
                    "(to route an int key, use partition_for(key, partitions))"
                )
            return partition_or_key
        return partition_for(partition_or_key, self.partitions)

    def commit_async(
        self,
        partition_or_key: Any,
        command: Any,
        *,
        timeout: float | None = None,
        priority: str | None = None,
        callback: Callable[[Any], Any] | None = None,
    ) -> Future | None:
        """Replicate ``command``; the future completes with storage's result of applying it.

        With ``callback``, no future is made: ``callback(result)`` runs in a client thread
        once the result is known (keep it short), and None is returned.
        """
        if command is None:
            raise ValueError("a command must not be None")
        partition = self.partition_of(partition_or_key)
        priority = priority or self.priority
        if self.sessions:
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            request = _Request(partition, "commit", command, priority, deadline, callback)
            self._enqueue(self._tag_all([request]))
            return request.future
        # Keys are made when a command is sent on its own: a packed one needs none.
        return self._submit(partition, "commit", command, priority, timeout, callback)

    def read_async(
        self,
        partition_or_key: Any,
        command: Any,
        *,
        timeout: float | None = None,
        callback: Callable[[Any], Any] | None = None,
    ) -> Future | None:
        """A strong (linearizable) read served by the partition's leader (``callback`` as in
        ``commit_async``)."""
        partition = self.partition_of(partition_or_key)
        return self._submit(partition, "read", command, "high", timeout, callback)

    def commit(
        self,
        partition_or_key: Any,
        command: Any,
        *,
        timeout: float | None = None,
        priority: str | None = None,
    ) -> Any:
        """``commit_async(...)`` and wait for the result."""
        future = self.commit_async(partition_or_key, command, timeout=timeout, priority=priority)
        return self._wait(future, timeout)

    def read(self, partition_or_key: Any, command: Any, *, timeout: float | None = None) -> Any:
        """``read_async(...)`` and wait for the result."""
        return self._wait(self.read_async(partition_or_key, command, timeout=timeout), timeout)

    def commit_many(
        self,
        requests: Iterable[tuple[Any, Any]],
        *,
        timeout: float | None = None,
        callback: Callable[[int, Any], Any] | None = None,
    ) -> list[Future]:
        """Submit many ``(partition_or_key, command)`` commits at once (one queue operation).

        Returns their futures; with ``callback``, ``callback(i, result)`` runs instead for the
        ``i``-th request (no futures are made) and the list is empty.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        partition_of, priority = self.partition_of, self.priority
        # A str key (the common case) is routed inline, to the partition partition_of gives
        # it (partition_for: CRC-32 of its UTF-8 bytes), saving three calls per command.
        n, crc32 = self.partitions, zlib.crc32
        if self.sessions:  # every commit is tagged with its own seq: a _Request each
            batch = [
                _Request(
                    crc32(pk.encode()) % n + 1 if type(pk) is str else partition_of(pk),
                    "commit",
                    cmd,
                    priority,
                    deadline,
                    callback,
                    None if callback is None else i,
                )
                for i, (pk, cmd) in enumerate(requests)
            ]
            made = [] if callback is not None else [r.future for r in batch]
            # Tagged only once every key routed: a bad key raises before any seq is taken.
            self._enqueue(self._tag_all(batch))
            return made  # type: ignore[return-value]
        # Otherwise the commands travel as one _Group per partition (see _Group).
        routed: dict[int, tuple[list[Any], list[int]]] = {}
        if n == 1:
            # partition_of is called for its checks only (an int key other than 1 raises).
            items = [cmd for pk, cmd in requests if type(pk) is str or partition_of(pk)]
            routed[1] = (items, range(len(items)))  # type: ignore[assignment]
        else:
            for i, (pk, cmd) in enumerate(requests):
                p = crc32(pk.encode()) % n + 1 if type(pk) is str else partition_of(pk)
                slot = routed.get(p)
                if slot is None:
                    routed[p] = ([cmd], [i])
                else:
                    slot[0].append(cmd)
                    slot[1].append(i)
        groups: list[_Entry] = []
        futures: list[Future] = []
        for p, (items, indices) in routed.items():
            if not items:
                continue
            mine = None if callback is not None else [Future() for _ in items]
            groups.append(_Group(p, items, indices, priority, deadline, callback, mine))
            if mine is not None:
                futures.extend(mine)
        self._enqueue(groups)
        if callback is not None or len(groups) < 2:
            return futures
        # The caller's order: routing put each partition's futures together.
        ordered: list[Future] = [None] * len(futures)  # type: ignore[list-item]
        for group in groups:
            assert isinstance(group, _Group) and group.futures is not None
            for index, future in zip(group.indices, group.futures, strict=True):
                ordered[index] = future
        return ordered

    def leader(self, partition: int) -> str | None:
        """The cached leader of ``partition`` (None when unknown)."""
        return self._leaders.get(partition)

    def leaders(self) -> dict[int, str]:
        """Every cached leader."""
        with self._lock:
            return dict(self._leaders)

    def refresh_leaders(self, timeout: float = 2.0) -> dict[int, str]:
        """Ask the nodes who leads each partition (their ``waraft_admin``, else their servers'
        status) and update the cache; returns what was learnt. Returns within about
        ``timeout`` seconds: each node gets at most 1 s of what remains, for all its calls."""
        learnt: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            now = time.monotonic()
            if now >= deadline or len(learnt) == self.partitions:
                break
            learnt.update(self._ask_leaders(node, min(deadline, now + 1.0)))
        with self._lock:
            self._leaders.update(learnt)
        return learnt

    def stats(self) -> dict[str, int]:
        """Counters: requests, batches, items_sent, replies, retries, redirects,
        attempt_timeouts, slow_attempts (a batch past its attempt timeout left in flight
        because its node kept answering others), send_failures, timeouts, stale_hints (a
        follower named a leader that had just failed an attempt), silent_leaders (a cached
        leader forgotten because it answered nothing while requests to it ran out of time),
        no_such_partition (requests that ended so), oversized_frames (frames found larger
        than distribution carries, never sent: cut smaller, a lone request refused), plus
        inflight and queued now."""
        with self._lock:
            out = dict(self._counters)
            out["inflight_batches"] = len(self._inflight)
            held = sum(entry.count for entries in self._held.values() for entry in entries)
            ready = sum(entry.count for entry in self._ready)
            out["queued"] = ready + len(self._delayed) + held
        return out

    def close(self) -> None:
        """Close this client's sessions (waiting ``CLOSE_SESSIONS_TIMEOUT`` at most), stop the
        sender, answer every open request ``("error", "closed")`` and stop this client's node
        (and ``waraft.distribution`` if the client started it). Idempotent."""
        self._close_sessions()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._sender.join(CLOSE_JOIN_TIMEOUT)
        # Normally the sender is gone and nothing moves any more. A sender still stuck in a
        # send keeps the requests it holds and answers them when it stops (``_sender_exit``).
        with self._lock:
            pending = self._take_pending()
        for partition in list(self._parked):
            with self._session_locks[partition]:
                pending.extend(self._parked.pop(partition, []))
        for request in pending:
            request.finish(CLOSED)
        if self._remote:
            from waraft import distribution as dist
            from waraft.distribution import policy

            dist.set_inline_handler(self.reply_addr[0], None)
            # The receiver's name is never used again (one rule was left per client made).
            policy.forget(self.reply_addr[0])
        with contextlib.suppress(Exception):
            otp.stop(self._receiver, "normal", 5.0)
        if self._owns_dist:
            self._release_dist()

    def _take_pending(self) -> list[_Entry]:
        """Every request the client still holds (ready, delayed, in flight, held), removed.
        Called with ``_lock`` held, once the sender has stopped or is stopping."""
        pending: list[_Entry] = list(self._ready) + [item[2] for item in self._delayed]
        for batch in self._inflight.values():
            pending.extend(batch.requests)
        for held in self._held.values():
            pending.extend(held)
        self._ready, self._delayed, self._inflight, self._held = [], [], {}, {}
        return pending

    def _refusal(self) -> Any:
        """What a new request is answered at once (``_lock`` held): ``CLOSED`` after close,
        ``SENDER_FAILED`` once the sender crashed, None while the client works."""
        if self._closed:
            return CLOSED
        return SENDER_FAILED if self._sender_done else None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions --------------------------------------------------------------------------------

    def _tag_all(self, requests: list[_Request]) -> list[_Request]:
        """Wrap each request's command in its partition's session with the next seq (retries
        re-send ``request.item``, so they keep it) and return those ready to send, in order.

        The commits of a partition without a session are parked, in order, and its register
        command is sent; they are tagged and sent when it answers (``_registered``), or
        completed with its error. Nothing here waits: a ``commit_async`` from a callback (the
        client's receive thread, which delivers the register's answer) must not block on it.
        """
        ready: list[_Request] = []
        register: list[int] = []
        for request in requests:
            partition = request.partition
            with self._session_locks[partition]:
                state = self._sessions.get(partition)
                if state is None:
                    parked = self._parked.get(partition)
                    if parked is None:
                        parked = self._parked[partition] = []
                        register.append(partition)
                    parked.append(request)
                    continue
                self._tag_with(partition, state, request)
            ready.append(request)
        for partition in register:
            self._register(partition)
        return ready

    def _register(self, partition: int) -> None:
        """Send ``partition``'s register command (no session lock held: a closed client
        answers it inline). It gets the client's own timeout, not that of the commit that
        happened to start it: each parked commit keeps its own deadline (``_expire_parked``),
        and one with a short timeout no longer failed the others with the register."""
        # The session's token: only this client's calls and close act on it (ids are log
        # indices, which anyone can guess; see ``waraft.core.sessions``).
        token = os.urandom(TOKEN_BYTES)
        self._submit(
            partition,
            _REGISTER,  # a kind of its own: never packed into a $batch with other commits
            register_command(self.session_expire_after, token),
            "high",
            self.timeout,
            partial(self._registered, partition, token),
        )

    def _tag_with(self, partition: int, state: list[Any], request: _Request) -> None:
        """Tag ``request`` with the session ``state`` (its partition's lock held)."""
        sid, seq, outstanding, token, low = state
        state[1] = seq + 1
        outstanding.add(seq)
        # The oldest outstanding seq, kept by a mark that only moves up (each seq is passed
        # once): ``min(outstanding)`` walked every request in flight, 16,384 packed, per call.
        while low not in outstanding:
            low += 1
        state[4] = low
        request.item = call_command(sid, seq, low, request.item, token)
        request.on_done = partial(self._settled, partition, sid, seq)

    def _expire_parked(self, now: float) -> list[_Request]:
        """The parked commits past their own deadline, removed (never sent, so they are
        answered ``timeout``): a commit waiting for its session's register was answered only
        with the register, at the deadline of whichever commit started it (a review's 0.5 s
        commit behind a 10 s one took 10 s)."""
        late: list[_Request] = []
        for partition in list(self._parked):
            with self._session_locks[partition]:
                parked = self._parked.get(partition)
                if not parked:
                    continue
                keep = [r for r in parked if r.deadline > now and not r.done]
                if len(keep) != len(parked):
                    late.extend(r for r in parked if r.deadline <= now and not r.done)
                    parked[:] = keep
        return late

    def _registered(self, partition: int, token: bytes, result: Any) -> None:
        """The register of ``partition``'s session answered: send its parked commits tagged
        with the new session, or complete them with the error."""
        registered = type(result) is tuple and len(result) == 2 and result[0] == "ok"
        with self._session_locks[partition]:
            parked = self._parked.pop(partition, [])
            if registered:
                state = self._sessions[partition] = [result[1], 1, set(), token, 1]
                for request in parked:
                    self._tag_with(partition, state, request)
        if registered:
            self._enqueue(parked)
            return
        error = result if _is_error(result) else ("error", ("bad_register_reply", result))
        if error == TIMEOUT:
            # Commits with more time than the register had: park them again behind a new one.
            now = time.monotonic()
            again = [r for r in parked if r.deadline > now and not r.done]
            if again:
                with self._session_locks[partition]:
                    waiting = self._parked.get(partition)
                    if waiting is None:
                        self._parked[partition] = again
                    else:
                        waiting.extend(again)
                if waiting is None:
                    self._register(partition)
                parked = [r for r in parked if r not in again]
        for request in parked:
            request.item = ("$session", "register_failed")  # never sent
            request.finish(error)

    def _close_sessions(self) -> None:
        """Send every open session's close command and wait for the answers, for
        ``CLOSE_SESSIONS_TIMEOUT`` in all. Best effort: a session not closed (the cluster
        unreachable) is forgotten by the replicas once it expires, or evicted from a full
        table (``waraft.core.sessions``), but until then it costs a row in every replica's
        table and snapshot."""
        with self._lock:
            if self._closed or self._sender_done:
                return
        sessions = []
        for partition in list(self._sessions):
            with self._session_locks[partition]:
                state = self._sessions.pop(partition, None)
            if state is not None:
                sessions.append((partition, state[0], state[3]))
        deadline = time.monotonic() + CLOSE_SESSIONS_TIMEOUT
        futures = [
            self._submit(p, "commit", close_command(sid, token), "high", CLOSE_SESSIONS_TIMEOUT)
            for p, sid, token in sessions
        ]
        for future in futures:
            assert future is not None
            with contextlib.suppress(FutureTimeout):
                future.result(max(0.0, deadline - time.monotonic()))

    def _settled(self, partition: int, sid: int, seq: int, result: Any) -> None:
        """A tagged request completed: its seq is no longer outstanding; an expired session
        is dropped so that the next commit registers a new one."""
        with self._session_locks[partition]:
            state = self._sessions.get(partition)
            if state is None or state[0] != sid:
                return
            if result == EXPIRED:
                del self._sessions[partition]
            # A timed-out seq is settled too: nobody retries it any more, and a copy of it
            # still in flight is refused by the replicas once the acked floor passes it
            # (``session_seq_acknowledged``), so it is applied at most once.
            state[2].discard(seq)

    # -- submission ------------------------------------------------------------------------------

    def _submit(
        self,
        partition: int,
        kind: str,
        item: Any,
        priority: str,
        timeout: float | None,
        callback: Callable[[Any], Any] | None = None,
    ) -> Future | None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        request = _Request(partition, kind, item, priority, deadline, callback)
        self._enqueue([request])
        return request.future

    def _enqueue(self, requests: Sequence[_Entry]) -> None:
        with self._lock:
            refusal = self._refusal()
            if refusal is None:
                self._counters["requests"] += sum([r.count for r in requests])
                was_idle = not self._ready
                self._ready.extend(requests)
                if was_idle:
                    self._wake.notify()
        if refusal is not None:
            for request in requests:
                request.finish(refusal)

    def _wait(self, future: Future | None, timeout: float | None) -> Any:
        # The sender enforces the deadline; the margin only guards against a stuck sender.
        assert future is not None
        limit = (self.timeout if timeout is None else timeout) + 5.0
        try:
            return future.result(limit)
        except FutureTimeout:
            return TIMEOUT

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    # -- the sender thread -----------------------------------------------------------------------

    def _run(self) -> None:
        failed = False
        with self._node.activate():
            try:
                self._loop()
            except Exception:
                failed = True
                logger.exception("client sender crashed; its requests fail with %r", SENDER_FAILED)
            finally:
                self._sender_exit(failed)

    def _sender_exit(self, failed: bool) -> None:
        """The sender stops: answer what it leaves behind, as close does (``CLOSED``), or, if
        it crashed while the client was open, ``SENDER_FAILED``: no request may wait for a
        sender that is gone, and later ones are refused at once."""
        with self._lock:
            self._sender_done = True
            answer = SENDER_FAILED if failed and not self._closed else CLOSED
            pending = self._take_pending()
        # A crash can leave requests in the sender's hands, in no queue (once each: a group
        # may also have reached a queue before the crash).
        queued = {id(entry) for entry in pending}
        pending.extend(entry for entry in self._in_hand if id(entry) not in queued)
        self._in_hand = []
        for request in pending:
            request.finish(answer)

    def _loop(self) -> None:
        next_scan = time.monotonic() + TICK
        next_liveness = next_scan
        while True:
            with self._lock:
                while not self._closed and not self._ready and not self._due(time.monotonic()):
                    self._wake.wait(self._sleep_for(next_scan))
                    if time.monotonic() >= next_scan:
                        break
                if self._closed:
                    return
                now = time.monotonic()
                ready, self._ready = self._ready, []
                while self._delayed and self._delayed[0][0] <= now:
                    ready.append(heapq.heappop(self._delayed)[2])
                expired: list[_Batch] = []
                late: list[_Entry] = []
                scanned = now >= next_scan
                if scanned:
                    next_scan = now + TICK
                    expired, late = self._scan(now)
            if now >= next_liveness:
                next_liveness = now + LIVENESS_EVERY
                expired.extend(self._down_batches())
            if scanned and self._parked:
                late.extend(self._expire_parked(now))
            if late:
                self._count("timeouts", sum([entry.count for entry in late]))
            for request in late:
                request.finish(_gave_up(request))
            if expired:
                self._count("attempt_timeouts", len(expired))
            for batch in expired:
                logger.info("no answer from %s for partition %s", batch.node, batch.partition)
                self._node_failed(batch.node, batch.materialize(), now)
            if ready:
                self._in_hand = ready
                self._dispatch(ready, now)
                self._in_hand = []

    def _due(self, now: float) -> bool:
        return bool(self._delayed) and self._delayed[0][0] <= now

    def _sleep_for(self, next_scan: float) -> float | None:
        if not self._inflight and not self._delayed:
            return None  # idle: wait for a request
        wake = next_scan
        if self._delayed:
            wake = min(wake, self._delayed[0][0])
        return max(0.0, wake - time.monotonic())

    def _scan(self, now: float) -> tuple[list[_Batch], list[_Entry]]:
        """Under the lock: batches past their attempt deadline (removed) and requests past
        their own deadline (in flight or held; answered now).

        A batch that expires at its callers' deadlines before its attempt timeout is removed
        and its requests answered as late, not returned: that the node has not answered yet
        is no evidence that it failed, and taking it for one would make the client forget
        the node's leaderships and avoid it (a caller with a short timeout would send the
        next request to a follower). Likewise a batch to a node that answered other batches
        within the last half attempt timeout stays in flight (``_extend``): the node is slow
        (overloaded), not gone."""
        expired = [bid for bid, batch in self._inflight.items() if batch.expires <= now]
        batches: list[_Batch] = []
        late: list[_Entry] = []
        answering_since = now - self.attempt_timeout / 2
        for bid in expired:
            batch = self._inflight[bid]
            if not batch.deadline_bound and self._heard.get(batch.node, -1e18) >= answering_since:
                self._extend(batch, now)
                continue
            self._pop_batch(bid)
            if batch.deadline_bound:
                late.extend(_unanswered(batch.materialize()))
                self._forget_silent_leader(batch, now)
            else:
                batches.append(batch)
        # A batch that stays in flight gets its late requests answered now and the others
        # later, from its reply: one by one, so its groups become requests first.
        late.extend(
            _unanswered(
                request
                for batch in self._inflight.values()
                if batch.earliest <= now
                for request in batch.materialize()
                if request.deadline <= now
            )
        )
        for partition, held in list(self._held.items()):
            keep = [r for r in held if r.deadline > now]
            if len(keep) != len(held):
                late.extend(r for r in held if r.deadline <= now)
                self._held[partition] = keep
        if self._unserved:
            self._prune_unserved(now)
        return batches, late

    def _prune_unserved(self, now: float) -> None:
        """Under the lock: forget the ``no_such_partition`` answers older than
        ``UNSERVED_FOR`` (a partition may have been started since), so the map holds only
        the last few seconds' answers however many partitions have answered over time."""
        unserved = self._unserved
        for key in [k for k, until in unserved.items() if until <= now]:
            del unserved[key]

    def _forget_silent_leader(self, batch: _Batch, now: float) -> None:
        """Under the lock: a batch that expired at its callers' deadlines went to a node that
        has answered nothing for a whole attempt timeout: stop taking it for the partition's
        leader. Its callers' timeouts were shorter than the attempt timeout, so the batch
        never failed the node, and a review's client kept sending every request to a leader
        cut off from its followers for good (the next request asks anew, and a follower's
        answer names the new leader)."""
        if self._heard.get(batch.node, -1e18) >= now - self.attempt_timeout:
            return
        if self._leaders.get(batch.partition) == batch.node:
            del self._leaders[batch.partition]
            self._counters["silent_leaders"] += 1

    def _extend(self, batch: _Batch, now: float) -> None:
        """Under the lock: give ``batch``, past its attempt timeout on a node that is still
        answering, another attempt timeout (at most until its callers' deadlines) instead of
        re-sending it. A re-send would not be answered sooner: the node is answering in
        order, and under overload every copy is more work queued ahead of everything else
        (and, without sessions, a second application of the commands)."""
        latest = max([entry.deadline for entry in batch.requests])
        attempt_expires = now + self.attempt_timeout
        batch.expires = min(attempt_expires, latest)
        batch.deadline_bound = latest < attempt_expires
        self._counters["slow_attempts"] += 1

    def _pop_batch(self, batch_id: int) -> _Batch | None:
        """Under the lock: forget an in-flight batch and give its room back."""
        batch = self._inflight.pop(batch_id, None)
        if batch is not None:
            partition = batch.partition
            self._inflight_items[partition] -= batch.count
            if batch.requests[0].kind == "read":
                self._inflight_reads[partition] -= batch.count
            self._inflight_batches[partition] -= 1
            held = self._held.pop(partition, None)
            if held:
                self._ready.extend(held)
                self._wake.notify()
        return batch

    def _down_batches(self) -> list[_Batch]:
        """In-flight batches to nodes that distribution marks down (removed)."""
        if not self._remote or not self._inflight:
            return []
        from waraft import distribution as dist

        states = dist.peers()
        down = {node for node, peer in states.items() if peer.get("state") == "down"}
        if not down:
            return []
        with self._lock:
            lost = [bid for bid, batch in self._inflight.items() if batch.node in down]
            batches = [self._pop_batch(bid) for bid in lost]
        return [b for b in batches if b is not None]

    def _dispatch(self, ready: list[_Entry], now: float) -> None:
        groups: dict[tuple[int, str, str], list[_Entry]] = {}
        for request in ready:
            if request.done:
                continue
            if request.deadline <= now:
                self._count("timeouts", request.count)
                request.finish(_gave_up(request))
                continue
            key = (request.partition, request.kind, request.priority)
            group = groups.get(key)
            if group is None:
                groups[key] = [request]
            else:
                group.append(request)
        for (partition, kind, priority), requests in groups.items():
            total = sum([entry.count for entry in requests])
            with self._lock:
                if self._gathers(partition, total):
                    requests, total = self._gather(partition, kind, priority, requests)
                else:
                    room = max(0, self._room(partition, kind))
                    if room < total:
                        requests, rest = _take(requests, room)
                        self._held.setdefault(partition, []).extend(rest)
                        total = room
                self._took_room(partition, kind, total)
            if not requests:
                continue
            node = self._target(partition, now)
            address = (acceptor.default_name(self.table, partition), node)
            size = self._frame_counts.get(partition, self.max_batch)
            if total >= SAMPLE_AT and size > 1:
                size = min(size, self._sampled_count(address, requests))
            if kind == "read" and self.pack:
                # A packed read is one $batch, which a node refuses past this many reads.
                size = min(size, MAX_PACKED_READS)
            for chunk in _chunks(requests, size):
                self._send(address, partition, kind, priority, chunk, now)

    def _room(self, partition: int, kind: str) -> int:
        """Under the lock: how many more requests of ``kind`` may go to ``partition`` now
        (``max_inflight``; for reads also ``MAX_INFLIGHT_READS``)."""
        room = self.max_inflight - self._inflight_items.get(partition, 0)
        if kind == "read":
            room = min(room, MAX_INFLIGHT_READS - self._inflight_reads.get(partition, 0))
        return room

    def _took_room(self, partition: int, kind: str, count: int) -> None:
        """Under the lock: ``count`` requests of ``kind`` go in flight to ``partition``."""
        self._inflight_items[partition] = self._inflight_items.get(partition, 0) + count
        if kind == "read":
            self._inflight_reads[partition] = self._inflight_reads.get(partition, 0) + count

    def _sampled_count(self, address: tuple[str, str], entries: list[_Entry]) -> int:
        """How many commands a frame to ``address`` carries if all were as large as the
        first of ``entries`` by ``approx_command_size``: ``max_batch``, or fewer to stay
        within 1/``FRAME_SHARE`` of the frame limit (at least one). Only the first is
        sized: sizing every command would cost a small one a third of what the client
        spends on it; the frames' measure (``_measure``) covers the others, and a frame that
        comes out too large anyway is cut before it is sent (``_send``)."""
        limit = self._cast_limit(address)
        if limit is None:
            return self.max_batch
        first = entries[0]
        per = approx_command_size(first.items[0] if isinstance(first, _Group) else first.item)
        return max(1, min(self.max_batch, int(limit / FRAME_SHARE / max(per, 1.0))))

    def _cast_limit(self, address: tuple[str, str]) -> int | None:
        """The largest payload distribution casts to ``address`` (None: no limit, in
        process). Its settings do not change while it runs, so each is asked once."""
        try:
            return self._cast_limits[address]
        except KeyError:
            pass
        limit = None
        if self._remote:
            from waraft import distribution as dist

            limit = dist.cast_limit(address)
        self._cast_limits[address] = limit
        return limit

    def _measure(self, partition: int, per: float, limit: int) -> None:
        """Remember ``per``, the bytes per command of a frame of ``partition``, when its
        commands are large, and so how many its next frames carry (``_frame_counts``;
        fewer than ``max_batch``, within 1/``FRAME_SHARE`` of ``limit``). The larger of this
        frame's figure and half the previous one counts, so a run of small commands does not
        at once make room for 1000 of the large ones that came before; a partition whose
        commands are small again is forgotten."""
        previous = self._command_bytes.get(partition, 0.0) / 2
        if previous > per:
            per = previous
        fits = int(limit / FRAME_SHARE / per)
        if fits >= self.max_batch:
            self._command_bytes.pop(partition, None)
            self._frame_counts.pop(partition, None)
        else:
            self._command_bytes[partition] = per
            self._frame_counts[partition] = max(1, fits)

    def _gathers(self, partition: int, total: int) -> bool:
        """Under the lock: whether ``total`` new requests for ``partition`` wait to be sent
        together with later ones. They do while ``max_partition_batches`` of its batches are
        in flight, fewer than ``GATHER_AT`` of them.

        Why: with many partitions each has few requests at a time, and sent as they come
        each is a batch of its own, so its own log entry and Raft round (at 1000 partitions
        and 16 requests in flight per partition, 1.4 requests a batch and 1.1 rounds an
        entry were measured). Held while its rounds are under way, they go as one batch, one
        entry, one round. A partition with fewer batches in flight is not delayed, nor is a
        client without batching (``max_batch`` 1)."""
        limit = self.max_partition_batches
        if not limit or self.max_batch == 1 or total >= GATHER_AT:
            return False
        return self._inflight_batches.get(partition, 0) >= limit

    def _gather(
        self, partition: int, kind: str, priority: str, requests: list[_Entry]
    ) -> tuple[list[_Entry], int]:
        """Under the lock: hold ``requests`` (of ``kind`` and ``priority``) with the
        partition's held ones; what goes now, and its count: the held requests of the same
        kind and priority, in order, once ``GATHER_AT`` of them wait and the in-flight cap has
        room, else nothing. The others stay held: one batch carries one kind (reads sent in
        a batch of commits would be applied as commands). ``_pop_batch`` hands every held
        request back to the sender, which groups them again, when a batch returns."""
        held = self._held.setdefault(partition, [])
        held.extend(requests)
        self._counters["partition_holds"] += 1
        same = [e for e in held if e.kind == kind and e.priority == priority]
        waiting = sum([entry.count for entry in same])
        room = self._room(partition, kind)
        if not GATHER_AT <= waiting <= room:
            return [], 0
        others = [e for e in held if e.kind != kind or e.priority != priority]
        if others:
            self._held[partition] = others
        else:
            del self._held[partition]
        return same, waiting

    def _send(
        self,
        address: tuple[str, str],
        partition: int,
        kind: str,
        priority: str,
        chunk: list[_Entry],
        now: float,
    ) -> None:
        batch_id = next(self._batch_ids)
        deadlines = [r.deadline for r in chunk]
        attempt_expires = now + self.attempt_timeout
        latest = max(deadlines)
        expires = min(attempt_expires, latest)
        earliest = min(deadlines)
        commands = _commands(chunk)
        count = len(commands)
        # Session registers are grouped apart (``_REGISTER``) and go as commits of their own
        # entry: a node cannot stamp one packed in a $batch with its owner
        # (``waraft.partition.acceptor``), so it would share ``BATCH_OWNER``'s cap.
        alone = kind == _REGISTER
        wire = "commit" if alone else kind
        packed = self.pack and count >= MIN_PACKED and not alone
        with self._lock:
            closed = self._closed
            if not closed:
                self._inflight[batch_id] = _Batch(
                    address[1], partition, chunk, expires, packed, earliest, count,
                    latest < attempt_expires,
                )  # fmt: skip
                self._inflight_batches[partition] = self._inflight_batches.get(partition, 0) + 1
                self._counters["batches"] += 1
                self._counters["items_sent"] += count
        if closed:
            for request in chunk:
                request.finish(CLOSED)
            return
        try:
            if packed:
                items = _pack(wire, commands)
            elif wire == "commit":
                items = [(make_ref(), command) for command in commands]
            else:
                items = commands
            msg = ("client_batch", self.reply_addr, batch_id, wire, items, priority)
            payload = codec.packb(msg) if self._remote else None
        except codec.CodecError as exc:
            self._unencodable(batch_id, exc)
            return
        if payload is not None:
            limit = self._cast_limit(address)
            if limit is not None:
                per = len(payload) / count
                # Frames of small commands (most) cost a comparison and a lookup.
                if per * FRAME_SHARE * self.max_batch > limit or partition in self._frame_counts:
                    self._measure(partition, per, limit)
                if len(payload) > limit:
                    # Distribution would drop it (and the cast's False read as a lost node).
                    self._count("oversized_frames")
                    why = self._too_large(address, len(payload), limit)
                    self._split(batch_id, address, partition, kind, priority, now, why, limit)
                    return
        if (packed or payload is not None) and _over_value_limit(payload, items, wire, packed):
            values = codec.MAX_UNTRUSTED_OBJECTS
            why = f"the command holds more than {values:,} msgpack values"
            self._split(batch_id, address, partition, kind, priority, now, why)
            return
        if self._cast(address, msg, payload):
            return
        with self._lock:
            lost = self._pop_batch(batch_id)
            self._counters["send_failures"] += 1
        if lost is not None:
            self._node_failed(address[1], lost.materialize(), now)

    def _split(
        self,
        batch_id: int,
        address: tuple[str, str],
        partition: int,
        kind: str,
        priority: str,
        now: float,
        why: str,
        limit: int | None = None,
    ) -> None:
        """A batch never sent because a node would refuse it (more msgpack values than it
        decodes, ``_over_value_limit``) or distribution would drop it (more bytes than a frame
        carries, ``limit``): its requests are sent in smaller batches instead, in order
        (``_parts``), and a lone request is answered ``("error", ("badarg", why))`` at once
        (never sent, so never applied, and not retried)."""
        with self._lock:
            batch = self._pop_batch(batch_id)
            if batch is None:
                return
            requests = batch.materialize()
            if len(requests) > 1:
                self._took_room(partition, requests[0].kind, len(requests))
        if len(requests) == 1:
            requests[0].finish(("error", ("badarg", why)))
            return
        budget = None if limit is None else limit // FRAME_SHARE
        for part in _parts(list(requests), budget):
            self._send(address, partition, kind, priority, [*part], now)

    def _too_large(self, address: tuple[str, str], size: int, limit: int) -> str:
        """Why a lone request whose frame payload is ``size`` bytes, over the ``limit`` a
        cast to ``address`` carries, is refused (``badarg``)."""
        from waraft import distribution as dist

        frame = dist.frame_limit(address[1]) or limit
        envelope = frame - limit
        return (
            f"the command needs a {size + envelope:,}-byte frame, over the distribution's "
            f"frame limit of {frame:,} bytes (max_frame_bytes)"
        )

    def _unencodable(self, batch_id: int, error: Exception) -> None:
        """A batch that msgpack cannot encode: each request whose command cannot be encoded
        is answered ``("error", ("badarg", why))`` (never sent, so never applied); the others
        go back to be sent again. Before, the sender re-sent the whole frame until the
        deadline and answered ``timeout`` (which says the command may have been applied), and
        every other request in the frame with it."""
        with self._lock:
            batch = self._pop_batch(batch_id)
        if batch is None:
            return
        requests = batch.materialize()
        again: list[_Entry] = []
        for request in requests:
            try:
                codec.packb(request.item)
            except codec.CodecError as exc:
                request.finish(("error", ("badarg", f"the command cannot be encoded: {exc}")))
            else:
                again.append(request)
        if len(again) == len(requests):  # each encodes, not together: never sent, either
            for request in requests:
                request.finish(("error", ("badarg", f"the batch cannot be encoded: {error}")))
        elif again:
            with self._lock:
                self._ready.extend(again)
                self._wake.notify()

    def _cast(self, address: tuple[str, str], msg: Any, payload: bytes | None) -> bool:
        """Send ``msg``: in process as it is, over distribution as ``payload`` (its encoding,
        made by the caller so that a command msgpack cannot carry is caught there). False:
        the node is down, cut off or its queue full, a failure of the node; never the
        frame's size, which the caller has kept within ``_cast_limit``."""
        if payload is None:
            otp.cast(address, msg)
            return True
        from waraft import distribution as dist

        try:
            return dist.cast_bytes(address, payload)
        except RuntimeError:  # distribution stopped under us
            return False

    # -- leaders and nodes -----------------------------------------------------------------------

    def _target(self, partition: int, now: float) -> str:
        leader = self._leaders.get(partition)
        if leader is not None and self._suspect.get(leader, 0.0) <= now:
            return leader
        healthy = [n for n in self.nodes if self._suspect.get(n, 0.0) <= now]
        if self._unserved:
            unserved = self._unserved
            healthy = [n for n in healthy if unserved.get((partition, n), 0.0) <= now]
        pool = healthy or self.nodes
        return pool[next(self._rr) % len(pool)]

    def _runs_nowhere(self, partition: int, node: str) -> bool:
        """``node`` answered that it does not run ``partition``: leave it out for the
        partition for ``UNSERVED_FOR`` s; True once every known node has said so."""
        now = time.monotonic()
        with self._lock:
            self._prune_unserved(now)
            unserved = self._unserved
            unserved[(partition, node)] = now + UNSERVED_FOR
            if self._leaders.get(partition) == node:
                del self._leaders[partition]
            return all((partition, n) in unserved for n in self.nodes)

    def _set_leader(self, partition: int, node: str | None) -> None:
        with self._lock:
            if node is None:
                self._leaders.pop(partition, None)
            else:
                self._leaders[partition] = node
                self._suspect.pop(node, None)  # another node just vouched for it
                if node not in self.nodes:
                    self.nodes.append(node)  # a member we were not told about

    def _node_failed(self, node: str, requests: list[_Request], now: float) -> None:
        with self._lock:
            self._suspect[node] = now + SUSPECT_FOR
            self._failed_at[node] = now
            for partition, leader in list(self._leaders.items()):
                if leader == node:
                    del self._leaders[partition]
        for request in requests:
            self._retry(request, UNREACHABLE, self._backoff(request))

    def _on_cast(self, msg: Any, origin: str | None = None) -> bool:
        """A cast to this client's receiver; True when it was a well-formed reply (one, or
        several coalesced by the server: ``("client_replies", [(batch_id, results, hint)])``).
        ``origin``: who sent it, as the distribution's connection tells (None in process);
        a reply is taken only from the node its batch went to (``_sent_by``)."""
        if type(msg) is not tuple or not msg:
            return False
        if msg[0] == "client_reply" and len(msg) == 4:
            return self._reply_of(msg[1:], origin)
        if msg[0] == "client_replies" and len(msg) == 2 and isinstance(msg[1], (tuple, list)):
            return all([self._reply_of(reply, origin) for reply in msg[1]])
        if msg[0] == "client_reply_part" and len(msg) == 7:
            return self._part_of(*msg[1:], origin=origin)
        return False

    def _part_of(
        self,
        batch_id: Any,
        inner: Any,
        start: Any,
        total: Any,
        results: Any,
        hint: Any,
        origin: str | None = None,
    ) -> bool:
        """One part of a reply too large for one frame (``waraft.services.replies``): kept on
        its batch until every value is in, then handled as one reply (``inner``: the values
        are the items of the reply's one result, a packed batch's list). Parts of a batch that
        expired meanwhile are dropped with it."""
        if not (
            type(batch_id) is int
            and type(inner) is bool
            and type(start) is int
            and type(total) is int
            and isinstance(results, (tuple, list))
            and start >= 0
            and start + len(results) <= total
        ):
            return False
        with self._lock:
            batch = self._inflight.get(batch_id)
            if batch is None:
                return True  # expired and retried already
            if not _sent_by(origin, batch.node):
                return False
            if total != batch.count and not _own_batch_parts(batch, inner, total):
                return False  # an answer per command, whichever way it is cut
            parts = batch.parts
            if parts is None or len(parts) != total:
                parts = batch.parts = [_MISSING] * total
            parts[start : start + len(results)] = results
            if _MISSING in parts:
                return True
            batch.parts = None
        reply = [parts] if inner else parts
        self._on_reply(batch_id, reply, hint if isinstance(hint, str) else None, origin)
        return True

    def _reply_of(self, reply: Any, origin: str | None = None) -> bool:
        if not (isinstance(reply, (tuple, list)) and len(reply) == 3):
            return False
        batch_id, results, hint = reply
        if isinstance(batch_id, int) and isinstance(results, (tuple, list)):
            return self._on_reply(
                batch_id, results, hint if isinstance(hint, str) else None, origin
            )
        return False

    def _on_reply(
        self, batch_id: int, results: Sequence[Any], hint: str | None, origin: str | None = None
    ) -> bool:
        """A ``client_reply`` arrived (the receiver's thread); False (dropped) when it came
        from another node than its batch went to."""
        with self._lock:
            batch = self._inflight.get(batch_id)
            if batch is None:
                return True  # expired and retried already
            if not _sent_by(origin, batch.node):
                return False
            self._pop_batch(batch_id)
            self._counters["replies"] += 1
            self._suspect.pop(batch.node, None)
            self._heard[batch.node] = time.monotonic()
        count = batch.count
        if len(results) == 1 and count > 1:
            # One result for several requests: one error for all (a packed frame's one log
            # entry refused, or any frame shed unread: ``overloaded``), or a packed frame's
            # list of results (a tuple, off the wire; never a pair, see MIN_PACKED). Anything
            # else is a bad reply: a string "ok" for a frame of three completed its commits
            # with "o" and "k".
            only = results[0]
            if _is_error(only):
                results = [only] * count
            elif batch.packed and (type(only) is list or type(only) is tuple):
                results = only
            else:
                results = ()
        if len(results) != count:
            logger.error("a reply for %d requests had %d results", count, len(results))
            for request in batch.materialize():
                # The node took this attempt and answered something unreadable: it may have
                # been applied, so the request ends ``timeout``, never ``bad_reply``.
                request.unsure = True
                self._retry(request, ("error", "bad_reply"), self._backoff(request))
            return True
        if batch.grouped():
            if tuple not in set(map(type, results)) or not any(map(_is_error, results)):
                # Nothing to retry: every command completes with its result, group by group.
                start = 0
                for entry in batch.requests:
                    n = entry.count
                    if type(entry) is _Group:
                        entry.deliver(results if n == count else results[start : start + n])
                    else:
                        entry.finish(results[start])
                    start += n
                if self._leaders.get(batch.partition) is None:
                    self._set_leader(batch.partition, batch.node)
                return True
            batch.materialize()  # errors are handled one request at a time
        requests: list[_Request] = batch.requests  # type: ignore[assignment]
        # The answered requests are claimed under ONE acquisition of the futures lock for the
        # whole reply (not one per request) and delivered after it is released; errors go
        # through _on_error one by one as before (they may be retried, not completed).
        errors: list[tuple[_Request, Any]] = []
        answered: list[tuple[_Request, Any]] = []
        wakes: list[tuple[Future, Any, Any]] = []
        with _FUTURES_LOCK:
            for request, result in zip(requests, results, strict=True):
                if _is_error(result):
                    errors.append((request, result))
                elif not request.done:
                    request.done = True
                    future = request.future
                    if future is None or request.on_done is not None or future._done:
                        answered.append((request, result))
                    else:
                        wakes.append((future, *future._claim(result)))
        for future, waiter, callbacks in wakes:
            if waiter is not None or callbacks:
                future._wake(waiter, callbacks)
        for request, result in answered:
            request.complete(result)
        for request, result in errors:
            self._on_error(request, result, batch, hint)
        if len(errors) < len(requests) and self._leaders.get(batch.partition) is None:
            self._set_leader(batch.partition, batch.node)
        return True

    def _on_error(self, request: _Request, result: Any, batch: _Batch, hint: str | None) -> None:
        reason = result[1]
        if reason == CANCELLED:
            # Appended, then given up by that replica (truncated, replaced by a snapshot, or
            # the server stopped): the entry may commit elsewhere, or sit in the snapshot
            # already. Asked again like not_leader (same session and seq: applied once); at
            # the deadline it answers timeout, never "cancelled", which read as "not applied"
            # and invited a second apply (a review's finding).
            request.unsure = True
            reason = "not_leader"
        if reason == "not_leader":
            new = hint if hint is not None and hint != batch.node else None
            if new is not None and time.monotonic() - self._failed_at.get(new, -1e9) < STALE_HINT:
                # The follower still names a leader that failed an attempt of ours moments
                # ago: it has not noticed yet that the leader is gone (a partition, a crash, a
                # SIGSTOP). Going back there costs another attempt_timeout per try, which is
                # what stretched client-visible failovers to seconds in the chaos runs; ask
                # another node instead until the followers name a new leader. Only for
                # STALE_HINT seconds, about the followers' election timeout: a hint that
                # persists past it means the leader is back (a short SIGSTOP) and is followed.
                new = None
                self._count("stale_hints")
            if self._leaders.get(batch.partition) in (batch.node, None) or new is not None:
                self._set_leader(batch.partition, new)
            self._count("redirects")
            delay = 0.0 if new is not None and request.attempts < 3 else self._poll(request)
            self._retry(request, result, delay)
        elif type(reason) is tuple and len(reason) == 2 and reason[0] == "notify_redirect":
            if isinstance(reason[1], str):
                self._set_leader(batch.partition, reason[1])
            self._count("redirects")
            self._retry(request, result, 0.01)
        elif reason in _OVERLOAD:
            self._retry(request, result, self._backoff(request))
        elif reason == "no_such_partition" and not self._runs_nowhere(batch.partition, batch.node):
            self._retry(request, result, 0.0)  # to a node not known to lack the partition
        else:
            if reason == "no_such_partition":
                self._count("no_such_partition")
            request.finish(_final(request, result))

    @staticmethod
    def _backoff(request: _Request) -> float:
        base = min(0.5, 0.01 * (2.0 ** min(request.attempts, 6)))
        return base * (0.5 + random.random() / 2)

    @staticmethod
    def _poll(request: _Request) -> float:
        """The wait before asking again where the leader is (``not_leader`` without a usable
        hint: an election is under way). Capped well below ``_backoff``'s 0.5 s: a
        ``not_leader`` answer costs the node nothing, and each extra wait after the new leader
        is elected adds directly to what the caller sees as unavailability."""
        base = min(NOT_LEADER_POLL, 0.01 * (2.0 ** min(request.attempts, 6)))
        return base * (0.5 + random.random() / 2)

    def _retry(self, request: _Request, error: Any, delay: float) -> None:
        request.attempts += 1
        request.last_error = error
        if error is UNREACHABLE:
            request.unsure = True
        if request.done:
            return
        now = time.monotonic()
        if request.attempts > self.max_retries or now + delay >= request.deadline:
            request.finish(_gave_up(request))
            return
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                self._counters["retries"] += 1
                if delay <= 0:
                    self._ready.append(request)
                else:
                    heapq.heappush(self._delayed, (now + delay, next(self._seq), request))
                self._wake.notify()
        if closed:
            request.finish(CLOSED)

    # -- discovery -------------------------------------------------------------------------------

    def _discover_quietly(self) -> None:
        with self._node.activate():
            try:
                self.refresh_leaders()
            except Exception:
                logger.debug("leader discovery failed", exc_info=True)

    def _ask_leaders(self, node: str, deadline: float) -> dict[int, str]:
        """The leaders ``node`` knows of, asked by ``deadline`` (``time.monotonic``): its
        admin process, else each partition's server, every call capped at the time left
        (they had the whole timeout each: 5 s for a ``refresh_leaders(1.0)`` of 4
        partitions on a stopped node)."""
        try:
            answer = otp.call(
                (ADMIN_NAME, node), ("leaders", self.table), max(0.0, deadline - time.monotonic())
            )
        except otp.ExitError:
            answer = None
        except Exception:  # e.g. an encoding problem: fall back to the servers
            answer = None
        if isinstance(answer, dict):
            return {
                int(p): str(leader)
                for p, leader in answer.items()
                if isinstance(p, int) and isinstance(leader, str) and 1 <= p <= self.partitions
            }
        from waraft.partition import server

        learnt: dict[int, str] = {}
        for partition in range(1, self.partitions + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                status = server.status((server.default_name(self.table, partition), node), left)
            except otp.ExitError:
                continue
            leader = status.get("leader_id")
            if isinstance(leader, str):
                learnt[partition] = leader
        return learnt


__all__ = [
    "ADMIN_NAME",
    "AT_MOST_ONCE",
    "CLOSED",
    "TIMEOUT",
    "UNREACHABLE",
    "Client",
    "local_address_for",
    "partition_for",
    "stable_hash",
]
