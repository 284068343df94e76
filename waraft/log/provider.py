"""The pluggable Raft log interface (WARaft's ``wa_raft_log`` provider behaviour, digest §4.2).

A provider holds one partition's log: a contiguous, never-empty run of entries from
``first_index()`` to ``last_index()``. It satisfies the core's read-only
``waraft.core.log_view.LogView`` protocol and adds the write side that the log actor and the
server shell drive.

Thread-safety contract (every provider must honour it):

* **One writer thread** calls ``append``, ``truncate``, ``reset``, ``sync``, ``close`` and every
  read (``first_index``, ``last_index``, ``term``, ``get``, ``entries``, ``fold``, ``config``,
  ``can_append``). In waraft that is the partition's server actor thread (appends and reads go
  straight to the provider, as in WARaft) or the log actor while the server waits on it.
* **``trim`` may be called from any other thread** concurrently with the writer (rotation runs
  asynchronously in WARaft). It is best effort: it may delete fewer entries than asked, and the
  writer's reads stay consistent while it runs (a read never sees a half-applied trim).
* Nothing else may be called concurrently.

Write-side contract:

* ``append(first_index, entries)`` requires ``first_index == last_index() + 1``; it never
  overwrites. A gap or overlap raises ``LogPositionError`` and changes nothing.
* ``truncate(index)`` deletes every entry at ``index`` and above. ``index <= first_index()``
  raises ``LogPositionError`` (the log can never become empty); ``index > last_index()`` is a
  no-op.
* ``reset(position)`` replaces the whole log with the term-only base entry
  ``Entry(position.term, None, None)`` at ``position.index``.
* ``trim(index)`` may delete entries below ``index`` (never ``last_index()`` itself).
* ``sync()`` makes everything appended, truncated or reset so far durable. It is the group-commit
  point: the shell calls it once per batch of steps, before sending anything that depends on
  the log (acknowledgements, the leader's own match index). In-memory providers make it a no-op.
* Failed writes raise ``LogWriteError`` and leave the log as it was before the call.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import Any, ClassVar, Final, Self, TypeVar

from waraft.core.settings import Settings
from waraft.core.types import Config, Entry, LogPos, Priority
from waraft.otp.sched import blocking

A = TypeVar("A")

FSYNC_METRIC: Final = "log_fsync_seconds"
"""The latency histogram (:func:`waraft.services.metrics.histogram`) durable logs time their
fsyncs into, labelled with their directory: the node's WAL (one per group commit) or a
partition's disk log."""

FoldFn = Callable[[int, int, Entry, A], A]
"""``fold`` callback: ``fn(index, size, entry, acc) -> acc``."""


class LogError(Exception):
    """Base class of every log provider error."""


class LogPositionError(LogError, ValueError):
    """A write at the wrong place: an append with a gap or overlap, a truncate below the start."""


class LogWriteError(LogError, OSError):
    """Writing or syncing the log failed (disk full, I/O error). The log is unchanged by the
    failed call; after a failed ``sync`` the provider refuses further writes until reopened."""


class LogCorruptionError(LogError):
    """Stored log data failed verification somewhere other than a torn tail."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"log corruption in {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class LogMissingError(LogCorruptionError):
    """A partition's log is gone from where its records were written: its directory says it
    was written there, the log's files hold nothing of it (the WAL directory was removed or
    replaced). The entries after the applied position, which the replica may have
    acknowledged to a leader, are lost, so the replica must not vote or serve on what is
    left: it is quarantined like a corrupt log."""

    def __init__(self, path: str, reason: str) -> None:
        LogError.__init__(self, f"log missing in {path}: {reason}")
        self.path = path
        self.offset = 0
        self.reason = reason


def make_marker(directory: str, name: str) -> None:
    """Create the empty file ``name`` in ``directory`` and make it durable (the file, then
    the directory entry): a provider's record that a partition's log was written here.

    Its two fsyncs run on the node's I/O threads when the caller is a scheduled process (the
    WAL's log actor), as ``otp.blocking`` does; elsewhere (a thread) it is a plain call."""
    blocking(_make_marker, directory, name)


def _make_marker(directory: str, name: str) -> None:
    with open(os.path.join(directory, name), "wb") as f:
        os.fsync(f.fileno())
    dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LogProvider(ABC):
    """A partition's Raft log (see the module docstring for the contracts)."""

    blocking_io: ClassVar[bool] = True
    """True if the provider's calls block on I/O (writes, fsync): the processes calling it
    directly (the log server, the Raft server) then run on threads of their own rather than
    on a scheduler thread shared with other partitions. Only a provider that never blocks
    (the memory log) sets False."""

    # -- management -------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None,
        settings: Settings | None = None,
        **options: Any,
    ) -> Self:
        """Open (or create) the log of the partition whose data directory is ``path``.

        A brand-new log holds the base entry ``Entry(0)`` at index 0. ``settings`` supplies the
        table's knobs (for example ``raft_max_log_records_per_file``); ``options`` are
        provider-specific overrides.
        """

    @abstractmethod
    def close(self) -> None:
        """Release resources; the provider is unusable afterwards. Does not imply ``sync``."""

    # -- reads (LogView) ----------------------------------------------------------------------

    @abstractmethod
    def first_index(self) -> int: ...

    @abstractmethod
    def last_index(self) -> int: ...

    @abstractmethod
    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``, ``None`` outside the log."""

    @abstractmethod
    def get(self, index: int) -> Entry | None:
        """The entry at ``index``, ``None`` outside the log."""

    @abstractmethod
    def entries(self, start: int, end: int, max_count: int, max_bytes: int) -> list[Entry]:
        """The contiguous run from ``start`` to at most ``end`` (inclusive): at most
        ``max_count`` entries, stopping once their cumulative size reaches ``max_bytes`` but
        holding at least one entry when ``start`` is in the log; empty otherwise."""

    @abstractmethod
    def fold(self, start: int, end: int, size_limit: int, fn: FoldFn[A], acc: A) -> A:
        """WARaft's ``fold``: ``fn(index, size, entry, acc)`` over ``[start, end]`` in order,
        stopping once the cumulative size reaches ``size_limit`` (at least one entry)."""

    @abstractmethod
    def config(self) -> tuple[int, Config] | None:
        """The newest ``(index, Config)`` config entry still in the log (indexed, no scan)."""

    @abstractmethod
    def can_append(self, count: int, priority: Priority) -> bool:
        """Relaxed-append admission: ``False`` when appending ``count`` entries now would
        have to wait (the leader then answers ``commit_stalled``)."""

    def retained_from(self, index: int, max_bytes: int) -> int:
        """``LogView.retained_from``. This default keeps no byte bound (it answers
        ``first_index()``): the providers of this package override it."""
        return self.first_index()

    def retained_budget(self, max_bytes: int) -> int:
        """``LogView.retained_budget``. This default shares no node-wide budget (it answers
        ``max_bytes``); the in-memory and WAL providers override it."""
        return max_bytes

    # -- writes -------------------------------------------------------------------------------

    @abstractmethod
    def append(self, first_index: int, entries: Sequence[Entry]) -> None:
        """Append ``entries`` at ``first_index`` (must equal ``last_index() + 1``)."""

    @abstractmethod
    def truncate(self, index: int) -> None:
        """Delete every entry at ``index`` and above (durable, like an append, once a later
        ``sync`` returns at the latest)."""

    @abstractmethod
    def reset(self, position: LogPos) -> None:
        """Leave only ``Entry(position.term)`` at ``position.index`` (durable once a later
        ``sync`` returns at the latest)."""

    @abstractmethod
    def trim(self, index: int) -> None:
        """Best effort: delete entries below ``index`` (may delete fewer, any thread)."""

    @abstractmethod
    def sync(self) -> None:
        """Make every completed write durable (one group commit)."""

    # -- helpers with a default implementation -----------------------------------------------

    def sync_within(self, stalled_timeout: float) -> bool:
        """``sync``, except that while the provider's writes are *stalled* (a full disk that
        it retries by itself) it gives up after ``stalled_timeout`` seconds and returns False:
        the writes stay queued, nothing of them may be acknowledged yet, and a later call
        completes them. A provider that never stalls just syncs (this default)."""
        self.sync()
        return True

    def flush(self) -> None:
        """WARaft's best-effort ``flush``: the same as ``sync`` unless a provider says more."""
        self.sync()

    def fold_terms(self, start: int, end: int, fn: Callable[[int, int, A], A], acc: A) -> A:
        """``fn(index, term, acc)`` for every index of ``[start, end]`` held by the log."""
        for index in range(max(start, self.first_index()), min(end, self.last_index()) + 1):
            term = self.term(index)
            if term is not None:
                acc = fn(index, term, acc)
        return acc

    def last_position(self) -> LogPos:
        """``LogPos(last_index, term(last_index))``."""
        last = self.last_index()
        term = self.term(last)
        return LogPos(last, 0 if term is None else term)

    def holds(self, position: LogPos) -> bool:
        """True when the log holds ``position.index`` with ``position.term``."""
        return self.term(position.index) == position.term

    def open_at(self, position: LogPos) -> bool:
        """WARaft's ``wa_raft_log:open`` check against storage's last applied ``position``:
        reset to ``position`` unless the log already holds it. Returns True if it reset."""
        if self.holds(position):
            return False
        self.reset(position)
        return True

    def status(self) -> dict[str, Any]:
        """Provider facts for the partition's status output."""
        return {
            "provider": type(self).__name__,
            "first_index": self.first_index(),
            "last_index": self.last_index(),
        }


def is_config_entry(entry: Entry) -> bool:
    """True when ``entry`` carries ``("config", Config)``, whether or not it has a label."""
    command = entry.command
    return (
        type(command) is tuple
        and len(command) == 2
        and command[0] == "config"
        and isinstance(command[1], Config)
    )


def retained_offset(
    sizes: Sequence[int], lo: int, hi: int, total: int, max_bytes: int, overhead: int = 0
) -> int:
    """``retained_from`` over a list of sizes: the lowest offset ``i`` in ``[lo, hi]`` such
    that ``sizes[i..hi]`` (each plus ``overhead``) sum to at most ``max_bytes`` (``hi`` when
    ``sizes[hi]`` alone is larger). ``total`` is the sum of ``sizes[lo:]``; the walk covers
    only the entries above ``hi`` and those dropped, so it is cheap while little is over."""
    kept = total + overhead * (len(sizes) - lo)
    for at in range(len(sizes) - 1, hi, -1):
        kept -= sizes[at] + overhead
    excess = kept - max_bytes
    if excess <= 0:
        return lo
    dropped = 0
    for at in range(lo, hi + 1):
        dropped += sizes[at] + overhead
        if dropped >= excess:
            return min(hi, at + 1)
    return hi


def count_within_bytes(sizes: Iterable[int], max_bytes: int) -> int:
    """How many leading entries of ``sizes`` a size-capped read returns.

    WARaft's fold rule: an entry is taken while the size taken *before* it is below
    ``max_bytes``, so the entry that reaches the limit is included and at least one entry is
    taken when ``sizes`` is not empty.
    """
    totals = list(accumulate(sizes))
    if not totals:
        return 0
    return min(len(totals), bisect_left(totals, max_bytes) + 1)


__all__ = [
    "FoldFn",
    "LogCorruptionError",
    "LogError",
    "LogMissingError",
    "LogPositionError",
    "LogProvider",
    "LogWriteError",
    "count_within_bytes",
    "is_config_entry",
    "make_marker",
    "retained_offset",
]
