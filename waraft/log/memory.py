"""In-memory Raft log: WARaft's ``wa_raft_log_ets`` (no durability; the default provider).

Entries live in a Python list with an index offset (cheaper than a dict keyed by index). An
entry's size, used by size-capped reads, is the length of its msgpack encoding, computed once
when it is appended. ``can_append`` always says yes and ``sync`` does nothing.

Concurrency (see ``waraft.log.provider``): the list, its offset and the sizes are kept together
in one ``_Run`` object. The writer appends to and truncates the current run in place; ``trim``
(from any thread) builds a new, shorter run and swaps it in. Both hold ``_lock`` — once per
batch, never per entry — so a trim cannot lose an append; reads take no lock and work on the run
they fetched, which is always internally consistent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Self

from waraft.core.log import combined_budget
from waraft.core.settings import Settings
from waraft.core.types import Config, Entry, LogPos, Priority
from waraft.log.budget import RetentionPool
from waraft.log.provider import (
    A,
    FoldFn,
    LogPositionError,
    LogProvider,
    count_within_bytes,
    is_config_entry,
    retained_offset,
)
from waraft.services.codec import packb

logger = logging.getLogger(__name__)

ENTRY_MEMORY_OVERHEAD = 450
"""Bytes of Python objects per held entry beyond its encoded size: the ``Entry`` tuple, its key
and command tuples, their strings and ints, the bytes object's header, the entry's size and
the list slots. Measured with tracemalloc on entries decoded as a follower receives them and
held by this provider (``benchmarks/MEMORY.md``, "What a retained entry costs"): 360-500 bytes
beyond the encoded size for 100 B and 1000 B values, one write or a ``$batch``; so the estimate
(encoded + 450) is within 0.95-1.2 of the heap it stands for, erring high more often than low."""


class _Run:
    """Entries ``first, first + 1, ...`` with their encoded sizes."""

    __slots__ = ("entries", "first", "sizes", "total")

    def __init__(self, first: int, entries: list[Entry], sizes: list[int]) -> None:
        self.first = first
        self.entries = entries
        self.sizes = sizes
        self.total = sum(sizes)  # bytes of the whole run (byte-based rotation)


def _entry(raw: Any) -> Entry:
    return raw if type(raw) is Entry else Entry(*raw)


class MemoryLog(LogProvider):
    """WARaft's ETS log in Python."""

    blocking_io: ClassVar[bool] = False

    def __init__(self) -> None:
        base = Entry(0)
        self._run = _Run(0, [base], [len(packb(base))])
        self._configs: list[int] = []  # ascending indices of config entries (writer-owned)
        self._lock = threading.Lock()
        self._pool: RetentionPool | None = None  # the node's retained-bytes budget
        self._pooled = 0  # bytes last reported to the pool

    def join_pool(self, pool: RetentionPool, budget: int) -> None:
        """Share ``pool`` (the node's ``raft_node_max_retained_bytes``, ``budget``) with the
        other partitions of the node: report this log's bytes to it from now on."""
        with self._lock:
            if self._pool is not None:
                return
            self._pool = pool
            pool.join(budget)
            self._report()

    def _report(self) -> None:
        """Under ``_lock`` after a change: tell the pool how much the held bytes moved."""
        pool = self._pool
        if pool is None:
            return
        held = self.byte_size()
        delta = held - self._pooled
        if delta:
            self._pooled = held
            pool.change(delta)

    def _leave_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.leave(self._pooled)
                self._pooled = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> Self:
        """A fresh, empty-but-for-the-base-entry log. With ``settings``, it shares the
        node-wide retained-bytes budget with the other logs under ``path``'s parent directory
        (the node's ``<raft_database>``; every log with no ``path`` shares one pool)."""
        log = cls()
        if settings is not None:
            root = os.path.dirname(os.path.abspath(os.fspath(path))) if path is not None else ""
            log.join_pool(RetentionPool.for_root(root), settings.raft_node_max_retained_bytes)
        return log

    def close(self) -> None:
        self._leave_pool()

    # -- reads --------------------------------------------------------------------------------

    def first_index(self) -> int:
        return self._run.first

    def last_index(self) -> int:
        run = self._run
        return run.first + len(run.entries) - 1

    def term(self, index: int) -> int | None:
        run = self._run
        offset = index - run.first
        if offset < 0 or offset >= len(run.entries):
            return None
        return run.entries[offset].term

    def get(self, index: int) -> Entry | None:
        run = self._run
        offset = index - run.first
        if offset < 0 or offset >= len(run.entries):
            return None
        return run.entries[offset]

    def _span(self, run: _Run, start: int, end: int, max_count: int) -> tuple[int, int]:
        lo = start - run.first
        if lo < 0 or lo >= len(run.entries) or max_count <= 0:
            return 0, 0
        hi = min(end - run.first + 1, len(run.entries), lo + max_count)
        return (lo, hi) if hi > lo else (0, 0)

    def entries(self, start: int, end: int, max_count: int, max_bytes: int) -> list[Entry]:
        run = self._run
        lo, hi = self._span(run, start, end, max_count)
        if hi == lo:
            return []
        count = count_within_bytes(run.sizes[lo:hi], max_bytes)
        return run.entries[lo : lo + count]

    def fold(self, start: int, end: int, size_limit: int, fn: FoldFn[A], acc: A) -> A:
        run = self._run
        lo, hi = self._span(run, start, end, end - start + 1)
        if hi == lo:
            return acc
        sizes = run.sizes
        count = count_within_bytes(sizes[lo:hi], size_limit)
        entries = run.entries
        first = run.first
        for offset in range(lo, lo + count):
            acc = fn(first + offset, sizes[offset], entries[offset], acc)
        return acc

    def config(self) -> tuple[int, Config] | None:
        configs = self._configs
        if not configs:
            return None
        run = self._run
        index = configs[-1]
        offset = index - run.first
        if offset < 0 or offset >= len(run.entries):
            return None
        command = run.entries[offset].command
        return index, command[1]

    def can_append(self, count: int, priority: Priority) -> bool:
        return True

    def retained_from(self, index: int, max_bytes: int) -> int:
        """``LogView.retained_from`` in *memory* bytes: each entry counts its encoded size
        plus ``ENTRY_MEMORY_OVERHEAD`` (its Python objects), since memory is what this
        provider's retention bounds."""
        run = self._run
        first = run.first
        count = len(run.entries)
        hi = min(index, first + count - 1) - first
        if hi <= 0 or self.byte_size() <= max_bytes:
            return first
        return first + retained_offset(
            run.sizes, 0, hi, run.total, max_bytes, ENTRY_MEMORY_OVERHEAD
        )

    def retained_budget(self, max_bytes: int) -> int:
        """``LogView.retained_budget``: ``max_bytes`` lowered to this log's share of the node's
        pool (``waraft.log.budget``), when it has joined one."""
        pool = self._pool
        if pool is None:
            return max_bytes
        return combined_budget(max_bytes, pool.share(self._pooled))

    def byte_size(self) -> int:
        """Estimated memory held by the entries: encoded sizes plus the per-entry overhead."""
        run = self._run
        return run.total + ENTRY_MEMORY_OVERHEAD * len(run.entries)

    # -- writes -------------------------------------------------------------------------------

    def append(self, first_index: int, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        batch = [_entry(e) for e in entries]
        self._extend(first_index, batch, [len(packb(e)) for e in batch])

    def _extend(self, first_index: int, batch: list[Entry], sizes: list[int]) -> None:
        """``append``'s body for entries already made ``Entry`` with their encoded ``sizes``
        (``WalLog`` encodes each entry once, for its size and its WAL record)."""
        configs = [first_index + i for i, e in enumerate(batch) if is_config_entry(e)]
        with self._lock:
            run = self._run
            expected = run.first + len(run.entries)
            if first_index != expected:
                raise LogPositionError(
                    f"append at {first_index} but the next index is {expected} (never overwrites)"
                )
            run.entries.extend(batch)
            run.sizes.extend(sizes)
            run.total += sum(sizes)
            if configs:
                self._configs.extend(configs)
            self._report()

    def truncate(self, index: int) -> None:
        with self._lock:
            run = self._run
            if index <= run.first:
                raise LogPositionError(
                    f"truncate at {index} would empty the log (first index {run.first})"
                )
            offset = index - run.first
            if offset >= len(run.entries):
                return
            del run.entries[offset:]
            run.total -= sum(run.sizes[offset:])
            del run.sizes[offset:]
            configs = self._configs
            while configs and configs[-1] >= index:
                configs.pop()
            self._report()

    def reset(self, position: LogPos) -> None:
        if position.index < 0 or position.term < 0:
            raise LogPositionError(f"invalid reset position {position}")
        base = Entry(position.term)
        with self._lock:
            self._run = _Run(position.index, [base], [len(packb(base))])
            self._configs = []
            self._report()

    def trim(self, index: int) -> None:
        with self._lock:
            run = self._run
            # Never delete the last entry: the log must stay non-empty.
            cut = min(index, run.first + len(run.entries) - 1) - run.first
            if cut <= 0:
                return
            # A new run rather than an in-place delete: readers on the writer thread may be
            # holding the old run.
            self._run = _Run(run.first + cut, run.entries[cut:], run.sizes[cut:])
            first = run.first + cut
            self._configs = [i for i in self._configs if i >= first]
            self._report()

    def sync(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["entries"] = len(self._run.entries)
        status["bytes"] = self.byte_size()
        pool = self._pool
        if pool is not None:
            status["node_retained_bytes"] = pool.held
            status["node_retained_budget"] = pool.budget
        return status


PROVIDER = MemoryLog
"""The provider this module stands for when a setting names the module."""

__all__ = ["MemoryLog"]
