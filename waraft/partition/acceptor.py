"""The client front door of a partition (WARaft's ``wa_raft_acceptor``).

The acceptor admits commits and strong reads against the partition's ``Queues`` and hands each
caller's reply handle to the server; it never answers a successful request itself — storage does,
once the entry is applied (or the read's index is reached). Rejections are immediate:
``commit_queue_full``, ``commit_queue_bytes_full``, ``apply_queue_full``, ``read_queue_full``,
``read_queue_bytes_full``; a read of more than ``raft_max_reads_per_batch`` reads (a ``$batch``)
gets ``("error", ("badarg", text))``, and each read of a batch counts against
``raft_max_pending_reads``.

Every API function takes the acceptor as a registered name, a pid, or a ``(name, node)`` address
(another node). Call failures are mapped as WARaft maps them: a timeout is
``("error", "timeout")``; a missing process, a node that is down or a process shutting down is
``("error", "unreachable")``; a call the node's receive thread shed, its client key over its
share of that thread, is ``("error", "overloaded")``; any other exit is
``("error", ("call_error", reason))``.

Besides WARaft's API, ``commit_batch`` / ``read_batch`` casts admit many requests at once and
reach the server as one message: the hot path of the client library and of ``waraft.distribution``.

The client gateway (used by ``waraft.client`` from other nodes, where reply handles cannot
travel): the cast ``("client_batch", reply_addr, batch_id, kind, items, priority)`` with
``kind`` ``"commit"`` (items are ``(key, command)`` ops) or ``"read"`` (items are read
commands) admits the whole batch as one ``commit_batch`` / ``read_batch``. Each item gets a slot
of a :class:`BatchReply`; once every slot is filled (rejections at once, the rest as storage or
the server answer them) ONE cast ``("client_reply", batch_id, results, leader_hint)`` goes back
to ``reply_addr``, results in item order. ``leader_hint`` is the leader this node knows of for
the partition when some result is an error (None otherwise), so a client redirects in one hop.
A malformed batch is logged and dropped; a malformed item fails its own slot with
``("error", ("badarg", text))``. A batch the receive thread sheds undecoded, its client key
over its share of that thread, is answered with ONE ``("error", "overloaded")`` for the whole
batch (``_shed_batch``).

Session owners (``waraft.core.sessions``): a ``("$session", "register", ...)`` commit is
appended owned by whoever this node authenticated its sender as (``owned_register``): the
``origin`` the distribution's receive thread hands the gateway (``_inline``) and remote
``commit`` calls (``RemoteReplyTo.origin``), i.e. the CURVE key's user id, or without CURVE
the node id the sender claims. Any owner the command itself carries is replaced, and a
caller on this node registers with none (owner ``None``). With the setting
``raft_session_owners`` False (a rolling upgrade from a build without owners) every register
is appended unowned, in the shapes older builds apply. Registers packed inside a
``$batch`` are not looked for (that would cost every packed frame a decode): storage gives
them the shared ``BATCH_OWNER``, and ``waraft.client`` sends each register as an item of its
own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from _thread import allocate_lock
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from waraft import distribution as dist
from waraft import otp
from waraft.core import events
from waraft.core.rpc import short_repr
from waraft.core.sessions import SESSION, owned_register
from waraft.core.types import Priority, is_internal_command
from waraft.distribution import inline as dist_inline
from waraft.distribution import policy
from waraft.distribution.reply import RemoteReplyTo
from waraft.services import codec, env, info
from waraft.services.logthrottle import LogThrottle
from waraft.services.options import RaftOptions
from waraft.services.queues import Queues, command_bytes, oversized_read
from waraft.services.replies import coalesced_replies, send_client_reply
from waraft.storage import is_batch_command

logger = logging.getLogger(__name__)

# Malformed casts and rejected batches can arrive at any rate (a faulty or hostile client, or
# plain overload, where every batch is rejected): one line a second each across all the
# node's acceptors, with how many it stands for. Shared by the acceptors' scheduler threads
# and the receive thread: a race costs at most one extra line or a miscount.
_MALFORMED_LOG = LogThrottle()
_REJECTED_LOG = LogThrottle()

DEFAULT_TIMEOUT = 10.0  # raft_rpc_call_timeout, seconds
FORWARD_EVERY = 4096  # admitted requests held before forwarding even if more are queued
_NO_BYTES: Final = (0,)  # a membership change's size in the commit queue's byte budget


NAME_PREFIX: Final = "raft_acceptor_"


def default_name(table: str, partition: int) -> str:
    """``raft_acceptor_<table>_<partition>``."""
    return f"{NAME_PREFIX}{table}_{partition}"


# -- partitions that do not run here --------------------------------------------------------

NO_SUCH_PARTITION: Final = ("error", "no_such_partition")
"""The answer to each request of a client batch sent to a partition this node never started
(a mistyped table, a partition number past the table's): the client tries its other nodes,
and ends with it when none runs the partition, instead of timing out."""

STARTUP_GRACE: Final = 5.0
"""Seconds after the latest partition start on this node during which a batch to a partition
not started here is not answered ``NO_SUCH_PARTITION``: a node that starts its partitions (at
boot, or an application that starts them one by one after its supervisor, as ``waraft.sup``
advises for clean shutdown ordering) may be about to start that one too."""

_starting_lock = allocate_lock()
_starting = 0  # applications starting their first partitions (``starting_partitions``)
_last_start = float("-inf")  # time.monotonic() of the latest partition start (``note_start``)


def note_start() -> None:
    """A partition (or an application's partition supervisor) is starting on this node."""
    global _last_start
    _last_start = time.monotonic()


@contextlib.contextmanager
def starting_partitions() -> Iterator[None]:
    """While an application starts the partitions it was started with, a partition not started
    yet may be about to be: batches to it are dropped (the client retries) rather than
    answered ``NO_SUCH_PARTITION``; so for ``STARTUP_GRACE`` s after it, too."""
    global _starting
    note_start()
    with _starting_lock:
        _starting += 1
    try:
        yield
    finally:
        with _starting_lock:
            _starting -= 1
        note_start()


def answer_unserved_partitions() -> None:
    """Have this node answer a client batch to a partition it never started with
    ``NO_SUCH_PARTITION`` for each item (by the receive thread: no process has the name).
    The batch needs what one to a running partition needs: a client key, replies to the
    sender's own node. And a client batch the receive thread sheds, its key over its share of
    that thread, with one ``OVERLOADED`` (``_shed_batch``). Idempotent."""
    rule = policy.Rule(policy.CLIENT, guard=policy.reply_to_sender(1))
    policy.allow_prefix(NAME_PREFIX, casts={"client_batch": rule})
    dist.set_unserved_handler(NAME_PREFIX, _unserved)
    dist.set_shed_handler(NAME_PREFIX, _shed_batch)


def _unserved(name: str, msg: Any, origin: str) -> bool:
    """A cast to acceptor ``name``, which no process has: answer a client batch to a
    partition never started here (see ``answer_unserved_partitions``). A partition that was
    started (stopped since, or restarting) or may be about to start is left alone: its
    batch is dropped, as before, and the client's retries find it once it runs."""
    if type(msg) is not tuple or not msg or msg[0] != "client_batch":
        return False
    if _starting or time.monotonic() - _last_start < STARTUP_GRACE:
        return False  # a partition may be about to start: dropped, the client retries
    named = env.partition_named(name, NAME_PREFIX)
    if named is None or env.is_partition_registered(*named):
        return False
    parsed = parse_client_batch(msg)
    if parsed is None:
        return False
    reply_addr, batch_id, _, items, _ = parsed
    send_client_reply(reply_addr, batch_id, [NO_SUCH_PARTITION] * len(items), None)
    return True


OVERLOADED: Final = ("error", dist.OVERLOADED)
"""The answer to a client batch the receive thread shed undecoded, its client key over its
share of that thread (``waraft.distribution.receiver``): one error for the whole batch, whose
items were never read, so none was admitted. The client retries it after a backoff."""


def _shed_batch(name: str, reader: codec.Peek, sender: str) -> bool:
    """Answer a client batch to acceptor ``name`` that the receive thread shed: ``OVERLOADED``
    to its reply address, read with its batch id from the frame's head (``reader``) without
    decoding the items. Only an address on the ``sender``'s own node is answered, as the
    gateway's guard (``policy.reply_to_sender``) requires of an admitted batch: a shed one
    was not admitted. True: answered."""
    try:
        if reader.array() != 6 or reader.value() != "client_batch":
            return False
        reply_addr, batch_id = reader.value(), reader.value()
    except codec.CodecError:
        return False  # not a client batch, or its head is not within the bytes read
    if not (
        type(reply_addr) is tuple
        and len(reply_addr) == 2
        and type(reply_addr[0]) is str
        and reply_addr[1] == sender
        and type(batch_id) is int
    ):
        return False
    send_client_reply((reply_addr[0], sender), batch_id, [OVERLOADED], None)
    return True


# Every request names its priority: a dict lookup instead of ``Priority(value)`` (the enum's
# value lookup measured ~2-4 us a call, a dict hit ~0.1 us). Members hash as their values.
_PRIORITIES: Final[dict[Any, Priority]] = {
    **{p.value: p for p in Priority},
    **{p: p for p in Priority},
}


def priority_of(value: Any) -> Priority:
    """``"high"`` / ``"low"`` (or a ``Priority``) → ``Priority``; anything else is an error."""
    try:
        found = _PRIORITIES.get(value)
    except TypeError:  # unhashable
        found = None
    if found is None:
        raise ValueError(f"priority must be 'high' or 'low', got {value!r}")
    return found


def check_op(op: Any, owner: str | None = None) -> tuple[Any, Any]:
    """A commit op is ``(key, command)`` with a command that is not ``None`` and not one only
    the protocol writes (``is_internal_command``: a config change, a noop). A session
    register comes back owned by ``owner`` (``owned_register``: who this node authenticated
    the sender as, None for a caller on this node), whatever owner it claimed."""
    if not isinstance(op, (tuple, list)) or len(op) != 2:
        raise ValueError(f"a commit op is a (key, command) pair, got {short_repr(op)}")
    command = op[1]
    if command is None:
        raise ValueError("a command must not be None")
    # is_internal_command inlined for the usual write (a tuple of four): one test per op,
    # and one more for a register. A packed frame's one op is a pair (``$batch``): its
    # commands are not looked at here (a register among them is ``BATCH_OWNER``'s).
    kind = type(command)
    if kind is tuple:
        size = len(command)
        if size == 2:
            if is_internal_command(command):
                raise ValueError(_reserved(command))
        elif size >= 3 and command[0] == SESSION and command[1] == "register":
            command = owned_register(command, owner)
    elif kind is str and is_internal_command(command):
        raise ValueError(_reserved(command))
    return (op[0], command)


def _is_packed(kind: str, items: Sequence[Any]) -> bool:
    """Whether a client batch is one ``$batch`` item (a commit op's command, or a read), whose
    one result is then the list of its commands' answers (``send_client_reply``'s ``packed``).
    Malformed items are answered by ``check_op``, not here."""
    if len(items) != 1:
        return False
    item = items[0]
    if kind == "commit":
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            return False
        item = item[1]
    return is_batch_command(item)


def _reserved(command: Any) -> str:
    return (
        f"{short_repr(command)} is reserved to the protocol (membership changes go "
        "through adjust_config)"
    )


def check_local_op(op: Any) -> tuple[Any, Any]:
    """``check_op`` for an op given by a caller in this process, which must also encode:
    ops from the wire were decoded from msgpack, but a local caller may pass a set, a
    datetime or an integer past 2**64, which the server could not append (it crashed, and
    with the memory providers the partition came back empty)."""
    checked = check_op(op)
    try:
        codec.packb(checked)
    except codec.CodecError as exc:
        raise ValueError(f"a commit op must encode as msgpack: {short_repr(op)}: {exc}") from None
    return checked


class Acceptor(otp.Process):
    """Admission control in front of the partition's server."""

    trap_exit = True

    def init(self, options: RaftOptions) -> None:
        self.name = options.acceptor_name
        self.server = options.server_name
        self.queues: Queues = options.queues
        # Admitted requests wait here until whoever admitted them (this actor, or the distribution's
        # receive thread for client batches taken inline) has nothing more queued; then they go to
        # the server as one message per kind, so requests that arrive together reach the core
        # together. The lock is held for list operations only.
        self._lock = threading.Lock()
        self._commits: dict[Priority, list[tuple[Any, Any]]] = {}
        self._reads: list[tuple[Any, Any, int | None]] = []
        self._held = 0
        dist.set_idle_hook(self.name, self._forward)
        dist.set_inline_handler(self.name, self._inline)
        # From the wire: client batches whose replies go back to the sender's own node,
        # commits and reads for clients, membership changes for admins. The casts that carry
        # local reply handles (commit_batch, read_batch, adjust_config) stay local.
        policy.allow(
            self.name,
            casts={"client_batch": policy.Rule(policy.CLIENT, guard=policy.reply_to_sender(1))},
            calls={
                "commit": policy.CLIENT,
                "read": policy.CLIENT,
                "adjust_config": policy.Rule(policy.ADMIN, limited=True),
            },
        )
        logger.info("acceptor %s starting", self.name)

    def terminate(self, reason: Any) -> None:
        # The server stops after us: what we admitted is still answered (by it, or by its
        # own terminate cancelling its pending requests).
        if dist_inline.handler(self.name) == self._inline:
            dist.set_inline_handler(self.name, None)
            dist.set_idle_hook(self.name, None)
        self._forward()
        logger.info("acceptor %s terminating: %r", self.name, reason)

    # -- calls ----------------------------------------------------------------------------------

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        try:
            return self._handle_call(request, from_)
        finally:
            self._maybe_forward()

    def handle_cast(self, msg: Any) -> None:
        try:
            self._handle_cast(msg)
        finally:
            self._maybe_forward()

    def _maybe_forward(self) -> None:
        if self._held and (self._held >= FORWARD_EVERY or self.actor_inbox.empty()):
            self._forward()

    def _forward(self) -> None:
        """Send everything admitted so far to the server (commits first, in arrival order)."""
        with self._lock:
            commits, self._commits = self._commits, {}
            reads, self._reads = self._reads, []
            self._held = 0
        for priority, items in commits.items():
            otp.cast(self.server, events.CommitBatch(items, priority))
        if reads:
            otp.cast(self.server, events.ReadBatch(reads))

    def _hold(self, commits: Sequence[tuple[Any, Any]], priority: Priority) -> None:
        with self._lock:
            self._commits.setdefault(priority, []).extend(commits)
            self._held += len(commits)

    def _hold_reads(self, reads: Sequence[tuple[Any, Any, int | None]]) -> None:
        with self._lock:
            self._reads.extend(reads)
            self._held += len(reads)

    def _handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        # Calls may come over the wire: a malformed one is answered, never a crash (which
        # would restart the whole partition, over and over if repeated).
        if not isinstance(request, tuple) or len(request) != 3:
            return ("error", ("badarg", f"malformed acceptor call {short_repr(request)}"))
        kind = request[0]
        if kind == "commit":
            _, op, priority = request
            if not _is_priority(priority):
                return ("error", ("badarg", f"malformed commit {short_repr(request)}"))
            # The gateway's check: a register is owned by who the caller's connection
            # authenticated as (None for a caller on this node).
            origin = from_.origin if isinstance(from_, RemoteReplyTo) else None
            try:
                op = check_op(op, self._owner(origin))
            except ValueError as exc:
                return ("error", ("badarg", f"malformed commit: {exc}"))
            return self._single(self._commit([(from_, op)], priority_of(priority)))
        if kind == "read" and not _valid_read(request):
            return ("error", ("badarg", f"malformed read {short_repr(request)}"))
        if kind == "read":
            _, command, min_index = request
            refused = self._oversized(command)
            if refused is not None:
                return refused
            return self._single(self._read([(from_, command, min_index)]))
        if kind == "adjust_config":
            _, action, index = request
            return self._adjust_config(from_, action, index)
        logger.error("acceptor %s got an unexpected call %r", self.name, request)
        return otp.NOREPLY

    def _handle_cast(self, msg: Any) -> None:
        # Casts may come from any peer that reaches this node: a malformed one is dropped
        # here rather than crashing the acceptor (which would restart the whole partition).
        kind = msg[0] if isinstance(msg, tuple) and msg else None
        if kind == "client_batch":
            self._client_batch(msg, None, mailbox=True)
        elif kind == "commit_batch" and _valid_batch(msg, 3, _valid_op) and _is_priority(msg[2]):
            commits = _answerable(msg[1])
            self._reject_tail(commits, self._commit(commits, priority_of(msg[2])))
        elif kind == "read_batch" and _valid_batch(msg, 2, _valid_read):
            reads = self._sized(_answerable(msg[1]))
            self._reject_tail(reads, self._read(reads))
        elif kind == "adjust_config" and len(msg) == 4 and _is_handle(msg[1]):
            _, from_, action, index = msg
            from_ = otp.DISCARD if from_ is None else from_
            result = self._adjust_config(from_, action, index)
            if result is not otp.NOREPLY:
                from_.reply(result)
        else:
            if count := _MALFORMED_LOG.ready():
                logger.error(
                    "dropped %d malformed or unknown cast(s) (latest: acceptor %s, %.200r)",
                    count,
                    self.name,
                    msg,
                )

    # -- admission ------------------------------------------------------------------------------

    def _commit(
        self, items: Sequence[tuple[Any, Any]], priority: Priority
    ) -> tuple[int, str | None]:
        """Admit commits in order; the admitted ones go to the server with the next forward.

        Returns how many were admitted and why the rest were rejected.
        """
        sizes = [command_bytes(op[1]) for _, op in items]
        admitted, reason = self.queues.commits_started(len(items), priority, sizes)
        if admitted:
            self._hold(items if admitted == len(items) else items[:admitted], priority)
        if reason is not None:
            _log_rejected(self.name, len(items) - admitted, "commits", reason)
        return admitted, reason

    def _read(self, items: Sequence[tuple[Any, Any, int | None]]) -> tuple[int, str | None]:
        """Admit strong reads like ``_commit`` admits commits (by count and by the bytes of
        their commands); their handles give the bytes back once they are answered."""
        admitted, reason = self.queues.admit_reads(items)
        if admitted:
            self._hold_reads(admitted)
        if reason is not None:
            _log_rejected(self.name, len(items) - len(admitted), "reads", reason)
        return len(admitted), reason

    def _oversized(self, command: Any) -> Any:
        """The refusal of a read holding more than ``raft_max_reads_per_batch`` reads (a
        ``$batch``), else None: storage serves a batch in one turn, and one of 50,000 reads
        held its scheduler for seconds."""
        return oversized_read(command, self.queues.settings.raft_max_reads_per_batch)

    def _sized(self, reads: Sequence[tuple[Any, Any, int | None]]) -> Sequence[Any]:
        """``reads`` without the oversized ones (``_oversized``), which are answered here."""
        limit = self.queues.settings.raft_max_reads_per_batch
        kept: list[tuple[Any, Any, int | None]] | None = None
        for index, read in enumerate(reads):
            refused = oversized_read(read[1], limit)
            if refused is not None:
                if kept is None:
                    kept = list(reads[:index])
                read[0].reply(refused)
            elif kept is not None:
                kept.append(read)
        return reads if kept is None else kept

    def _adjust_config(self, from_: Any, action: Any, index: int | None) -> Any:
        # Held in the commit queue's byte budget with no bytes: whatever ends it (the apply,
        # a refusal, a cancellation) releases none.
        admitted, reason = self.queues.commits_started(1, Priority.HIGH, _NO_BYTES)
        if not admitted:
            return ("error", reason)
        self._forward()  # after the commits admitted before it
        otp.cast(
            self.server,
            events.AdjustConfig(from_, action, expected_index=index, reply_on_apply=True),
        )
        return otp.NOREPLY

    def _owner(self, origin: str | None) -> str | None:
        """The owner a register from ``origin`` is appended with: ``origin``, or None (the
        shapes older builds apply) while ``raft_session_owners`` is off for a rolling upgrade
        from a build without owners."""
        return origin if self.queues.settings.raft_session_owners else None

    def _inline(self, msg: Any, origin: str) -> bool:
        """The distribution's receive thread hands client batches from other nodes straight to
        the gateway (admission is the shared, thread-safe ``Queues``); what it admits is
        forwarded by ``_forward``, the idle hook, once the receive thread has drained its
        socket. ``origin``: who the connection authenticated as (owner of its registers)."""
        if type(msg) is tuple and msg and msg[0] == "client_batch":
            self._client_batch(msg, origin)
            dist_inline.idle_work_due(self.name)
            return True
        return False

    def _client_batch(self, msg: Any, origin: str | None, mailbox: bool = False) -> None:
        """The client gateway (see the module docstring); ``origin`` owns its registers.

        ``mailbox``: the batch came through this actor's mailbox, not from the receive thread
        (``_inline``), so nobody authenticated it: a caller on this node (no owner) if its
        replies go to this node, else the node they go to (the distribution's guard checked
        that it is the sender's; only a remote batch that arrives while no inline handler is
        registered, as this actor restarts, comes this way)."""
        parsed = parse_client_batch(msg)
        if parsed is None:
            if count := _MALFORMED_LOG.ready():
                logger.warning(
                    "dropped %d malformed message(s) (latest: a client batch to acceptor %s)",
                    count,
                    self.name,
                )
            return
        reply_addr, batch_id, kind, items, priority = parsed
        if mailbox and reply_addr[1] != self.node.id:
            origin = reply_addr[1]
        origin = self._owner(origin)
        slots = self._reply_slots(reply_addr, batch_id, len(items), _is_packed(kind, items))
        if kind == "commit":
            ops: list[tuple[otp.ReplyTo, Any]] = []
            for slot, item in zip(slots, items, strict=True):
                try:
                    ops.append((slot, check_op(item, origin)))
                except ValueError as exc:
                    slot.reply(("error", ("badarg", str(exc))))
            if ops:
                self._reject_tail(ops, self._commit(ops, priority))
        else:
            reads = self._sized(
                [(slot, command, None) for slot, command in zip(slots, items, strict=True)]
            )
            if reads:
                self._reject_tail(reads, self._read(reads))

    def _reply_slots(
        self, reply_addr: tuple[str, str], batch_id: int, size: int, packed: bool
    ) -> Sequence[otp.ReplyTo]:
        """The reply handles of a client batch's ``size`` items: a ``BatchReply``'s slots,
        or for a batch of one item (every request of an unpacking client, and every packed
        ``$batch``: ``packed``) a ``SingleReply``, which answers the same in one object."""
        table, partition = self.queues.table, self.queues.partition
        if size == 1:
            return (SingleReply(reply_addr, batch_id, table, partition, packed),)
        batch = BatchReply(
            size,
            lambda results, hint: send_client_reply(reply_addr, batch_id, results, hint),
            lambda: info.get_leader(table, partition),
        )
        return [batch.slot(index) for index in range(size)]

    @staticmethod
    def _single(outcome: tuple[int, str | None]) -> Any:
        # The server or storage answers an admitted request; a rejection is answered now.
        admitted, reason = outcome
        return otp.NOREPLY if admitted else ("error", reason)

    @staticmethod
    def _reject_tail(items: Sequence[Any], outcome: tuple[int, str | None]) -> None:
        admitted, reason = outcome
        if reason is None:
            return
        for item in items[admitted:]:
            item[0].reply(("error", reason))


# -- the client gateway -------------------------------------------------------------------------

_EMPTY: Final[Any] = object()
MAX_CLIENT_BATCH: Final = 100_000
"""Items accepted in one client batch (a bigger one is dropped as malformed)."""


def parse_client_batch(
    msg: Any,
) -> tuple[tuple[str, str], int, str, Sequence[Any], Priority] | None:
    """Check a ``client_batch`` cast's shape: ``(reply_addr, batch_id, kind, items, priority)``
    or None when it is malformed (anything a peer may send must not crash the acceptor)."""
    if not isinstance(msg, (tuple, list)) or len(msg) != 6:
        return None
    _, reply_addr, batch_id, kind, items, priority = msg
    # Plain checks, no generator: this runs once per client request on the receive thread.
    if not (
        isinstance(reply_addr, (tuple, list))
        and len(reply_addr) == 2
        and isinstance(reply_addr[0], str)
        and isinstance(reply_addr[1], str)
        and isinstance(batch_id, int)
        and kind in ("commit", "read")
        and isinstance(items, (tuple, list))
        and len(items) <= MAX_CLIENT_BATCH
    ):
        return None
    try:
        checked = priority_of(priority)
    except ValueError:
        return None
    return (reply_addr[0], reply_addr[1]), batch_id, kind, items, checked


def _log_rejected(name: str, count: int, what: str, reason: str) -> None:
    if held := _REJECTED_LOG.ready():
        logger.warning(
            "rejected %d batch(es) of commands (latest: acceptor %s, %d %s: %s)",
            held,
            name,
            count,
            what,
            reason,
        )


def _is_handle(value: Any) -> bool:
    return value is None or isinstance(value, otp.ReplyTo)


def _answerable(items: Sequence[Any]) -> Sequence[Any]:
    """``items`` (``(handle, ...)``) with every ``None`` handle, a request sent with nobody
    to answer, replaced by ``otp.DISCARD`` before admission. Every admitted request then
    carries a handle, and storage and the server release what admission took by that one
    rule: an applied commit without one kept its commit slot for good (1500 such commits
    and the partition refused every commit until it restarted)."""
    if all(item[0] is not None for item in items):
        return items
    return [(otp.DISCARD, *item[1:]) if item[0] is None else item for item in items]


def _is_priority(value: Any) -> bool:
    return isinstance(value, Priority) or value in ("high", "low")


def _valid_op(item: Any) -> bool:
    op = item[1]
    return (
        isinstance(op, (tuple, list))
        and len(op) == 2
        and op[1] is not None
        and not is_internal_command(op[1])
    )


def _valid_read(item: Any) -> bool:
    min_index = item[2]
    return min_index is None or (type(min_index) is int and min_index >= 0)


def _valid_batch(msg: Any, length: int, check: Any) -> bool:
    """``msg`` is ``(kind, [(handle, ...), ...], ...)`` with items that pass ``check``."""
    if len(msg) != length or not isinstance(msg[1], (list, tuple)):
        return False
    width = 2 if length == 3 else 3
    return all(
        isinstance(item, (tuple, list))
        and len(item) == width
        and _is_handle(item[0])
        and check(item)
        for item in msg[1]
    )


class BatchReply:
    """Collects the results of one client batch and delivers them all at once.

    ``slot(i)`` is the reply handle of item ``i``. When the last slot is filled (from any
    thread; each slot counts once), ``send(results, hint)`` is called exactly once, in the
    thread that filled it, with the results in item order and ``hint = leader_hint()`` if some
    result is an error (else None). A failed slot (``fail(reason)``) holds WARaft's mapping of
    the exit reason (``map_exit``). An empty batch sends at once.
    """

    __slots__ = ("_leader_hint", "_lock", "_remaining", "_results", "_send")

    def __init__(
        self,
        size: int,
        send: Callable[[list[Any], Any], Any],
        leader_hint: Callable[[], Any] = lambda: None,
    ) -> None:
        self._results: list[Any] = [_EMPTY] * size
        self._remaining = size
        self._lock = allocate_lock()
        self._send = send
        self._leader_hint = leader_hint
        if size == 0:
            send([], None)

    def slot(self, index: int) -> BatchSlot:
        """The reply handle of item ``index``."""
        return BatchSlot(self, index)

    @property
    def remaining(self) -> int:
        """Slots not filled yet."""
        return self._remaining

    def fill(self, index: int, value: Any) -> bool:
        """Fill slot ``index`` (ignored if already filled); True if this filled it."""
        with self._lock:
            results = self._results
            if results[index] is not _EMPTY:
                return False
            results[index] = value
            self._remaining -= 1
            done = self._remaining == 0
        if done:
            self._deliver()
        return True

    def _deliver(self) -> None:
        results = self._results
        hint = None
        for value in results:
            if type(value) is tuple and value and value[0] == "error":
                hint = self._leader_hint()
                break
        try:
            self._send(results, hint)
        except Exception:
            logger.exception("sending a client batch reply failed")


class BatchSlot(otp.ReplyTo):
    """One item's reply handle in a :class:`BatchReply` (no lock of its own: the batch's
    lock makes completion once-only)."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: BatchReply, index: int) -> None:  # no per-slot lock
        self._batch = batch
        self._index = index

    def __repr__(self) -> str:
        return f"BatchSlot({self._index})"

    @property
    def done(self) -> bool:
        return self._batch._results[self._index] is not _EMPTY

    def reply(self, value: Any) -> None:
        self._batch.fill(self._index, value)

    def fail(self, reason: Any) -> None:
        self._batch.fill(self._index, map_exit(reason))

    def _complete(self, ok: bool, value: Any) -> None:  # pragma: no cover - reply/fail override
        self._batch.fill(self._index, value if ok else map_exit(value))


class SingleReply(otp.ReplyTo):
    """The reply handle of a client batch of one item: what a ``BatchReply`` of size 1 and
    its slot do, in one object (no results list, closures or second lock; this is built for
    every request of a client that does not pack them). Completed once, from any thread
    (``ReplyTo``'s claim), it sends ``[result]``, with the leader hint when the result is an
    error; a failure holds ``map_exit`` of its reason."""

    __slots__ = ("_addr", "_batch_id", "_packed", "_partition", "_table")

    def __init__(
        self, addr: tuple[str, str], batch_id: int, table: str, partition: int, packed: bool = False
    ) -> None:
        super().__init__()
        self._addr = addr
        self._batch_id = batch_id
        self._table = table
        self._partition = partition
        self._packed = packed  # the one item is a $batch (``send_client_reply``'s ``packed``)

    def __repr__(self) -> str:
        return f"SingleReply({self._batch_id})"

    def _complete(self, ok: bool, value: Any) -> None:
        result = value if ok else map_exit(value)
        hint = None
        if type(result) is tuple and result and result[0] == "error":
            hint = info.get_leader(self._table, self._partition)
        try:
            send_client_reply(self._addr, self._batch_id, [result], hint, self._packed)
        except Exception:
            logger.exception("sending a client batch reply failed")


def start_link(options: RaftOptions) -> otp.Pid:
    """Start the acceptor registered as ``options.acceptor_name``."""
    pid: otp.Pid = Acceptor.start_link(options, name=options.acceptor_name)
    return pid


def child_spec(options: RaftOptions) -> dict[str, Any]:
    """WARaft's child spec: transient, 30 s shutdown."""
    return {
        "id": "wa_raft_acceptor",
        "start": (start_link, (options,)),
        "restart": "transient",
        "shutdown": 30000,
    }


# -- the API ------------------------------------------------------------------------------------


def call(acceptor: otp.Target, request: Any, timeout: float | None) -> Any:
    """``otp.call`` with WARaft's mapping of call failures to error results."""
    try:
        result = otp.call(acceptor, request, timeout)
    except otp.ExitError as exc:
        return map_exit(exc.reason)
    return result


def map_exit(reason: Any) -> tuple[str, Any]:
    """WARaft's ``call/3`` error mapping."""
    if reason == "timeout":
        return ("error", "timeout")
    if reason == dist.OVERLOADED:  # shed by the callee's receive thread: not delivered
        return OVERLOADED
    if reason in ("noproc", "shutdown", "normal", "killed") or (
        isinstance(reason, tuple) and reason and reason[0] in ("nodedown", "shutdown")
    ):
        return ("error", "unreachable")
    return ("error", ("call_error", reason))


def commit(
    acceptor: otp.Target,
    op: Any,
    timeout: float | None = DEFAULT_TIMEOUT,
    priority: Any = Priority.HIGH,
) -> Any:
    """Replicate ``op = (key, command)`` and return storage's result of applying it."""
    # Priorities travel as their names: requests may cross the wire (msgpack).
    request = ("commit", check_local_op(op), priority_of(priority).value)
    return call(acceptor, request, timeout)


def commit_async(
    acceptor: otp.Target, from_: otp.ReplyTo, op: Any, priority: Any = Priority.HIGH
) -> None:
    """Like ``commit`` but the answer goes to ``from_`` (any ``ReplyTo``)."""
    otp.cast(acceptor, ("commit_batch", [(from_, check_local_op(op))], priority_of(priority).value))


def commit_batch(
    acceptor: otp.Target, items: Sequence[tuple[otp.ReplyTo, Any]], priority: Any = Priority.HIGH
) -> None:
    """Many ``commit_async`` at once: one message to the acceptor, one to the server. A
    ``None`` handle: nobody is answered (the request is admitted and released as any other)."""
    checked = [(from_, check_local_op(op)) for from_, op in items]
    otp.cast(acceptor, ("commit_batch", checked, priority_of(priority).value))


def read(acceptor: otp.Target, command: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
    """A strong (linearizable) read: the storage's answer once it is up to date."""
    return call(acceptor, ("read", command, None), timeout)


def read_after(
    acceptor: otp.Target,
    command: Any,
    min_index: int | None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Any:
    """A strong read answered only once storage has applied at least ``min_index``."""
    if min_index is not None and (not isinstance(min_index, int) or min_index < 0):
        raise ValueError(f"min_index must be a non-negative integer, got {min_index!r}")
    return call(acceptor, ("read", command, min_index), timeout)


def read_batch(acceptor: otp.Target, items: Sequence[tuple[otp.ReplyTo, Any, int | None]]) -> None:
    """Many strong reads at once, each answered to its own handle."""
    otp.cast(acceptor, ("read_batch", list(items)))


def adjust_config(
    acceptor: otp.Target,
    action: Any,
    index: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Any:
    """Change the membership; answered ``("ok", LogPos)`` once the config entry is applied."""
    return call(acceptor, ("adjust_config", action, index), timeout)


def adjust_config_async(
    acceptor: otp.Target, from_: otp.ReplyTo, action: Any, index: int | None = None
) -> None:
    """``adjust_config`` answered to ``from_`` (``None``: to nobody)."""
    otp.cast(acceptor, ("adjust_config", from_, action, index))


def client_batch(
    acceptor: otp.Target,
    reply_addr: tuple[str, str],
    batch_id: int,
    kind: str,
    items: Sequence[Any],
    priority: Any = Priority.HIGH,
) -> None:
    """Send a client-gateway batch (see the module docstring); the results come back to
    ``reply_addr`` as one ``("client_reply", batch_id, results, leader_hint)`` cast."""
    otp.cast(
        acceptor,
        ("client_batch", reply_addr, batch_id, kind, list(items), priority_of(priority).value),
    )


__all__ = [
    "DEFAULT_TIMEOUT",
    "FORWARD_EVERY",
    "MAX_CLIENT_BATCH",
    "NO_SUCH_PARTITION",
    "STARTUP_GRACE",
    "Acceptor",
    "BatchReply",
    "BatchSlot",
    "SingleReply",
    "adjust_config",
    "adjust_config_async",
    "answer_unserved_partitions",
    "call",
    "check_op",
    "child_spec",
    "client_batch",
    "coalesced_replies",
    "commit",
    "commit_async",
    "commit_batch",
    "default_name",
    "map_exit",
    "note_start",
    "parse_client_batch",
    "priority_of",
    "read",
    "read_after",
    "read_batch",
    "send_client_reply",
    "start_link",
    "starting_partitions",
]
