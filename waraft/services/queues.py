"""A partition's admission counters and strong-read queue (the state of ``wa_raft_queue``).

WARaft keeps five atomics and an ETS table that any process may touch: the acceptor admits
commits and reads against them, the server submits reads with their read index, storage drains
the reads it can answer and releases commit and apply slots as it applies. Here the same state is a
``Queues`` object shared by those actors' threads, guarded by one lock that is held only for a few
integer operations (batches take it once, not once per command). It lives below the partition's
actors and the storage layer because all of them share it; the ``queue`` actor that owns its
place in the supervision tree is :mod:`waraft.partition.queue`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Sequence
from typing import Any, Final

from waraft.core.log import approx_command_size
from waraft.core.settings import Settings
from waraft.core.types import Priority
from waraft.otp.reply import ReplyTo

COMMIT_QUEUE_FULL = "commit_queue_full"
COMMIT_QUEUE_BYTES_FULL = "commit_queue_bytes_full"
APPLY_QUEUE_FULL = "apply_queue_full"
COMMIT_STALLED = "commit_stalled"
READ_QUEUE_FULL = "read_queue_full"
READ_QUEUE_BYTES_FULL = "read_queue_bytes_full"


class Queues:
    """Thread-safe admission state of one partition.

    Limits come from ``settings`` (WARaft reads them live; the server refreshes the object).
    Every slot taken by ``commits_started`` / ``admit_reads`` / ``reserve_apply`` is released
    by exactly one of the matching ``commits_finished`` / ``release_reads`` / ``take_reads`` /
    ``fulfill_apply`` calls; a read's bytes, and the slots of the further reads of a
    ``$batch`` read (``read_count``), by its answer (``ReadReply``).
    """

    def __init__(self, table: str, partition: int, settings: Settings) -> None:
        self.table = table
        self.partition = partition
        self.settings = settings
        self._lock = threading.Lock()
        self._seq = itertools.count()
        # Monotonic totals for the metrics endpoint (rate() gives per second); not reset.
        self.commits_admitted = 0
        self.commits_applied = 0  # applied and answered (on the leader, which holds the callers)
        self.reads_admitted = 0
        self._generation = 0  # reset() counts up: a read admitted before it releases nothing
        # Why storage cannot write what it applies (a full disk), set by the storage actor:
        # new commits are refused meanwhile (``set_storage_stalled``).
        self.storage_stalled: str | None = None
        self.reset()

    def reset(self) -> None:
        """Zero every counter and forget every queued read (the queue actor's init)."""
        with self._lock:
            self._apply_count = 0
            self._apply_bytes = 0
            self._pending = {Priority.HIGH: 0, Priority.LOW: 0}
            self._commit_bytes = 0
            self._commit_held = 0  # admitted commits whose bytes are in _commit_bytes
            self._read_count = 0  # one per admitted read command
            self._read_extra = 0  # the further reads of the admitted $batch reads
            self._read_bytes = 0
            self._generation += 1
            self._reads: list[tuple[int, int, Any, Any]] = []
            self.storage_stalled = None

    # -- inspection -----------------------------------------------------------------------------

    def commit_queue_size(self, priority: Priority = Priority.HIGH) -> int:
        return self._pending[priority]

    def commit_queue_full(self, priority: Priority = Priority.HIGH) -> bool:
        return self._pending[priority] >= self._commit_limit(priority)

    def commit_queue_byte_size(self) -> int:
        """Estimated bytes of the admitted commits not yet handed to storage or cancelled
        (both priorities), bounded by ``raft_max_pending_commit_bytes``."""
        return self._commit_bytes

    def apply_queue_size(self) -> int:
        return self._apply_count

    def apply_queue_byte_size(self) -> int:
        return self._apply_bytes

    def apply_queue_full(self) -> bool:
        s = self.settings
        return (
            self._apply_count >= s.raft_max_pending_applies
            or self._apply_bytes >= s.raft_max_pending_apply_bytes
        )

    def read_queue_size(self) -> int:
        """Admitted reads not yet answered, each read of a ``$batch`` counted
        (``read_count``), bounded by ``raft_max_pending_reads``."""
        return self._read_count + self._read_extra

    def read_queue_byte_size(self) -> int:
        """Estimated bytes of the commands of the admitted strong reads not yet answered,
        bounded by ``raft_max_pending_read_bytes``."""
        return self._read_bytes

    def _commit_limit(self, priority: Priority) -> int:
        s = self.settings
        if priority is Priority.HIGH:
            return s.raft_max_pending_high_priority_commits
        return s.raft_max_pending_low_priority_commits

    # -- commits --------------------------------------------------------------------------------

    def commit_started(self, priority: Priority = Priority.HIGH, size: int = 0) -> str | None:
        """Admit one commit of ``size`` estimated bytes: ``None`` when admitted, else the
        rejection reason."""
        return self.commits_started(1, priority, [size])[1]

    def commits_started(
        self, count: int, priority: Priority, sizes: Sequence[int] | None = None
    ) -> tuple[int, str | None]:
        """Admit up to ``count`` commits at once; ``sizes`` are their estimated bytes
        (``command_bytes``), or ``None`` to count them as empty.

        The commit queue is bounded in entries per priority and, across both priorities, in
        bytes (``raft_max_pending_commit_bytes``; a commit larger than the whole budget is
        admitted only into an empty queue, so it can still go through). Returns how many
        were admitted (the first ones, in order) and the reason the rest were rejected
        (``None`` when all were admitted): ``commit_stalled`` (``set_storage_stalled``),
        ``apply_queue_full``, ``commit_queue_full`` or ``commit_queue_bytes_full``.
        """
        with self._lock:
            if self.storage_stalled is not None:
                return 0, COMMIT_STALLED
            if self.apply_queue_full():
                return 0, APPLY_QUEUE_FULL
            room = self._commit_limit(priority) - self._pending[priority]
            admitted = max(0, min(count, room))
            reason = None if admitted == count else COMMIT_QUEUE_FULL
            if sizes is not None:
                limit = self.settings.raft_max_pending_commit_bytes
                fits, self._commit_bytes = _within_bytes(sizes, admitted, self._commit_bytes, limit)
                if fits < admitted:
                    admitted, reason = fits, COMMIT_QUEUE_BYTES_FULL
                self._commit_held += admitted
            self._pending[priority] += admitted
            self.commits_admitted += admitted
        return admitted, reason

    def commits_finished(self, count: int, priority: Priority, applied: bool = False) -> None:
        """Release ``count`` commit slots (``applied`` by storage, or cancelled)."""
        with self._lock:
            self._pending[priority] = max(0, self._pending[priority] - count)
            if applied:
                self.commits_applied += count

    def commit_bytes_released(self, count: int, size: int | None = None) -> None:
        """``count`` admitted commits left the commit queue's byte budget: handed to storage
        (``size``: their ``command_bytes``; from then on the apply queue's byte bound covers
        them) or cancelled (``size``: what the cancellation says they were admitted with, 0
        for a membership change; ``None`` when the canceller no longer has the commands: they
        release the average of what is held). Once nothing is held the total is zero again,
        so estimates never accumulate."""
        with self._lock:
            held = self._commit_held
            if held <= 0:
                return
            count = min(count, held)
            self._commit_held = held - count
            if self._commit_held == 0:
                self._commit_bytes = 0
            elif size is None:
                self._commit_bytes -= self._commit_bytes * count // held
            else:
                self._commit_bytes = max(0, self._commit_bytes - size)

    def set_storage_stalled(self, reason: str | None) -> None:
        """Storage cannot write what it applies (``reason``: a full disk), or can again
        (None). While it cannot, new commits are refused with ``commit_stalled``, as a leader
        whose log cannot append refuses them: each one admitted would be applied into memory
        that nothing writes out. Commits admitted before are still applied and answered, and
        reads are still admitted."""
        with self._lock:
            self.storage_stalled = reason

    # -- reads ----------------------------------------------------------------------------------

    def admit_reads(
        self, items: Sequence[tuple[Any, Any, int | None]]
    ) -> tuple[list[tuple[Any, Any, int | None]], str | None]:
        """Admit reads ``(handle, command, min_index)`` in order, like ``commits_started``
        admits commits: bounded in reads (``raft_max_pending_reads``, each read of a
        ``$batch`` read counted: ``read_count``; a batch of more reads than the whole bound
        is admitted only when no read is held) and in the bytes of their commands
        (``command_bytes``, across the partition's reads; ``raft_max_pending_read_bytes``;
        likewise for a read larger than the whole budget). A batch of more reads than
        ``raft_max_reads_per_batch`` must be refused before (``oversized_read``). Returns
        the admitted reads, each with its handle wrapped in a :class:`ReadReply` that gives
        its bytes (and its batch's further reads) back when the read is answered, whatever
        answers it, and the reason the rest were rejected (``None`` when all were
        admitted): ``apply_queue_full``, ``read_queue_full`` or ``read_queue_bytes_full``."""
        sizes = [command_bytes(item[1]) for item in items]
        counts = [read_count(item[1]) for item in items]
        admitted, reason, generation = self._reserve_reads(len(items), sizes, counts)
        taken = [
            (ReadReply(handle, self, size, generation, count - 1), command, min_index)
            for (handle, command, min_index), size, count in zip(
                items[:admitted], sizes, counts, strict=False
            )
        ]
        return taken, reason

    def _reserve_reads(
        self, count: int, sizes: Sequence[int], counts: Sequence[int]
    ) -> tuple[int, str | None, int]:
        s = self.settings
        with self._lock:
            if self._apply_count >= s.raft_max_pending_applies:
                return 0, APPLY_QUEUE_FULL, self._generation
            held = self._read_count + self._read_extra
            admitted, total = _within_bytes(counts, count, held, s.raft_max_pending_reads)
            reason = None if admitted == count else READ_QUEUE_FULL
            limit = s.raft_max_pending_read_bytes
            fits, self._read_bytes = _within_bytes(sizes, admitted, self._read_bytes, limit)
            if fits < admitted:
                admitted, reason = fits, READ_QUEUE_BYTES_FULL
                total = held + sum(counts[:admitted])
            self._read_count += admitted
            self._read_extra += total - held - admitted
            self.reads_admitted += admitted
        return admitted, reason, self._generation

    def release_read_bytes(self, size: int, generation: int, extra: int = 0) -> None:
        """A read admitted with ``size`` bytes and ``extra`` further reads (a ``$batch``)
        was answered (a read admitted before the last ``reset`` releases nothing: the reset
        zeroed its bytes)."""
        with self._lock:
            if generation == self._generation:
                self._read_bytes = max(0, self._read_bytes - size)
                self._read_extra = max(0, self._read_extra - extra)

    def release_reads(self, count: int) -> None:
        """Release read slots of reads answered without going through the read queue."""
        with self._lock:
            self._read_count = max(0, self._read_count - count)

    def submit_read(self, read_index: int, from_: Any, command: Any) -> None:
        """Queue a read (its slot is already reserved) until storage reaches ``read_index``."""
        with self._lock:
            heapq.heappush(self._reads, (read_index, next(self._seq), from_, command))

    def take_reads(self, position: int, limit: int | None = None) -> list[tuple[Any, Any]]:
        """Remove and return ``(from_, command)`` of the reads whose index is ≤ ``position``,
        in read-index order, releasing their slots; with ``limit``, only the first of them
        that hold at most ``limit`` reads together (``read_count``; at least one), the rest
        left for a later call (``reads_ready``). The caller answers them."""
        reads = self._reads
        if not reads or reads[0][0] > position:
            return []
        taken: list[tuple[Any, Any]] = []
        left = limit
        with self._lock:
            while reads and reads[0][0] <= position:
                if left is not None:
                    count = read_count(reads[0][3])
                    if taken and count > left:
                        break
                    left -= count
                _, _, from_, command = heapq.heappop(reads)
                taken.append((from_, command))
            self._read_count = max(0, self._read_count - len(taken))
        return taken

    def reads_ready(self, position: int) -> bool:
        """Whether a queued read's index is ≤ ``position`` (``take_reads`` would take it)."""
        reads = self._reads
        return bool(reads) and reads[0][0] <= position

    def take_all_reads(self) -> list[Any]:
        """Remove every queued read, releasing their slots; returns the reply handles."""
        with self._lock:
            handles = [item[2] for item in self._reads]
            self._reads = []
            self._read_count = max(0, self._read_count - len(handles))
        return handles

    # -- applies --------------------------------------------------------------------------------

    def reserve_apply(self, count: int, size: int) -> None:
        """Account ``count`` entries of ``size`` bytes handed to storage."""
        with self._lock:
            self._apply_count += count
            self._apply_bytes += size

    def fulfill_apply(self, count: int, size: int) -> None:
        """Storage took ``count`` entries of ``size`` bytes off its queue."""
        with self._lock:
            self._apply_count = max(0, self._apply_count - count)
            self._apply_bytes = max(0, self._apply_bytes - size)


class ReadReply(ReplyTo):
    """The reply handle of an admitted strong read (``Queues.admit_reads``): its answer,
    whichever it is (the result, an error, a refusal, a cancellation at a leader change
    or a stop), first gives the read's bytes back to the partition's read budget, then
    goes to ``inner``. Every path that ends a read answers it, so none needs to know its
    size."""

    __slots__ = ("_extra", "_generation", "_inner", "_queues", "_size")

    def __init__(
        self, inner: ReplyTo, queues: Queues, size: int, generation: int, extra: int = 0
    ) -> None:
        super().__init__()
        self._inner = inner
        self._queues = queues
        self._size = size
        self._generation = generation
        self._extra = extra

    def __repr__(self) -> str:
        return f"ReadReply({self._inner!r}, {self._size})"

    def _complete(self, ok: bool, value: Any) -> None:
        self._queues.release_read_bytes(self._size, self._generation, self._extra)
        if ok:
            self._inner.reply(value)
        else:
            self._inner.fail(value)


def command_bytes(command: Any) -> int:
    """The estimated bytes a commit's command occupies in the commit queue: the same
    estimate on admission (acceptor) and on hand-off to storage (server), so they match."""
    return approx_command_size(command)


_BATCH: Final = "$batch"  # waraft.storage.BATCH (storage sits above this module)


def read_count(command: Any) -> int:
    """How many reads a read command stands for: a ``("$batch", commands)`` read its
    commands' number (for commands packed as msgpack bytes, what the array's header says:
    storage answers a packed batch whose data disagrees as one malformed command), any
    other read 1. Constant time: it runs on the receive thread for every client read."""
    if type(command) is not tuple or len(command) != 2 or command[0] != _BATCH:
        return 1
    payload = command[1]
    if isinstance(payload, (list, tuple)):
        return max(1, len(payload))
    if isinstance(payload, (bytes, bytearray)):
        return max(1, _packed_array_length(payload))
    return 1


def _packed_array_length(data: bytes | bytearray) -> int:
    """The length in the msgpack array header ``data`` starts with (0 if it starts with no
    array header)."""
    if not data:
        return 0
    head = data[0]
    if 0x90 <= head <= 0x9F:
        return head & 0x0F
    if head == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if head == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    return 0


def oversized_read(command: Any, limit: int) -> Any:
    """The answer to a read holding more than ``limit`` reads
    (``raft_max_reads_per_batch``), ``("error", ("badarg", text))``; None for any other.
    Storage serves a ``$batch`` of reads in one turn, so one of 50,000 held its scheduler
    and, queued many times over, grew the node without bound."""
    count = read_count(command)
    if count <= limit:
        return None
    return (
        "error",
        ("badarg", f"a $batch of {count} reads; at most {limit} (raft_max_reads_per_batch)"),
    )


def _within_bytes(sizes: Sequence[int], count: int, held: int, limit: int) -> tuple[int, int]:
    """How many of the first ``count`` requests (of ``sizes`` bytes each, in order) fit a
    byte budget of ``limit`` (0: none) with ``held`` bytes already taken, and the bytes held
    once they are. One larger than the whole budget fits only when nothing is held, so a
    request is never refused for ever."""
    total = held
    for taken in range(count):
        size = sizes[taken]
        if limit > 0 and total + size > limit and total > 0:
            return taken, total
        total += size
    return count, total


__all__ = [
    "APPLY_QUEUE_FULL",
    "COMMIT_QUEUE_BYTES_FULL",
    "COMMIT_QUEUE_FULL",
    "READ_QUEUE_BYTES_FULL",
    "READ_QUEUE_FULL",
    "Queues",
    "ReadReply",
    "command_bytes",
    "oversized_read",
    "read_count",
]
