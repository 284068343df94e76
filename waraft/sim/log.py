"""``MemoryLog``: the simulator's Raft log, an in-memory ``LogView`` plus its mutations.

It honours the ``waraft.core.log_view.LogView`` contract exactly and checks the contract of the
log effects strictly (a core that appends with a gap, overwrites, or truncates at or below the
first index gets a ``LogContractError`` instead of a silently repaired log):

* contiguous from ``first_index()`` to ``last_index()``, never empty (base entry at the first
  index; index 0 term 0 when brand new);
* ``entries()`` stops once the cumulative size reaches ``max_bytes`` and returns at least one
  entry when ``start`` is in range;
* ``config()`` is the newest config entry still in the log, from an index (no scan);
* ``can_append()`` is ``True`` unless a test installs ``refuse_append``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from waraft.core.log import combined_budget
from waraft.core.types import Config, Entry, LogPos, Priority, is_config_command


class LogContractError(AssertionError):
    """A log effect broke the effect contract (the core asked for something impossible)."""


def approx_size(obj: Any) -> int:
    """A cheap, deterministic stand-in for an entry's encoded size in bytes."""
    kind = type(obj)
    if kind is str or kind is bytes:
        return 5 + len(obj)
    if kind is int:
        return 9
    if obj is None or kind is bool:
        return 1
    if kind is tuple or kind is Entry or kind is list:
        total = 5
        for item in obj:
            total += approx_size(item)
        return total
    if kind is dict:
        return 5 + sum(approx_size(k) + approx_size(v) for k, v in obj.items())
    if kind is Config:
        return 16 + 24 * (len(obj.participants) + len(obj.membership) + len(obj.witness))
    if isinstance(obj, tuple):  # other NamedTuples (Identity, LogPos, ...)
        return 5 + sum(approx_size(item) for item in obj)
    return 32


class MemoryLog:
    """A contiguous in-memory log with a base entry; implements ``LogView``."""

    def __init__(
        self,
        position: LogPos = LogPos(0, 0),  # noqa: B008 (an immutable NamedTuple)
        size_fn: Callable[[Entry], int] = approx_size,
    ) -> None:
        self._size_fn = size_fn
        self._first = 0
        self._entries: list[Entry] = []
        self._sizes: list[int] = []
        self._configs: list[int] = []  # indices of config entries, ascending
        self.refuse_append: Callable[[int, Priority], bool] | None = None
        # The node-wide retained-bytes budget this replica's node gives it (0: none). A sim
        # node holds one partition, so it is the whole ``raft_node_max_retained_bytes``.
        self.node_share = 0
        self._reset(position)

    # -- LogView ---------------------------------------------------------------------------------

    def first_index(self) -> int:
        return self._first

    def last_index(self) -> int:
        return self._first + len(self._entries) - 1

    def term(self, index: int) -> int | None:
        offset = index - self._first
        if 0 <= offset < len(self._entries):
            return self._entries[offset].term
        return None

    def get(self, index: int) -> Entry | None:
        offset = index - self._first
        if 0 <= offset < len(self._entries):
            return self._entries[offset]
        return None

    def entries(self, start: int, end: int, max_count: int, max_bytes: int) -> list[Entry]:
        first, last = self._first, self.last_index()
        if start < first or start > last or end < start:
            return []
        stop = min(end, last, start + max(1, max_count) - 1)
        lo = start - first
        hi = stop - first + 1
        sizes = self._sizes
        total = 0
        for offset in range(lo, hi):
            total += sizes[offset]
            if total >= max_bytes:
                return self._entries[lo : offset + 1]
        return self._entries[lo:hi]

    def config(self) -> tuple[int, Config] | None:
        if not self._configs:
            return None
        index = self._configs[-1]
        if index < self._first:
            return None
        entry = self._entries[index - self._first]
        return index, entry.command[1]

    def can_append(self, count: int, priority: Priority) -> bool:
        refuse = self.refuse_append
        return refuse is None or not refuse(count, priority)

    def retained_budget(self, max_bytes: int) -> int:
        return combined_budget(max_bytes, self.node_share)

    def retained_from(self, index: int, max_bytes: int) -> int:
        first = self._first
        index = min(index, self.last_index())
        if index <= first:
            return first
        sizes = self._sizes
        total = 0
        for at in range(index, first - 1, -1):
            total += sizes[at - first]
            if total > max_bytes:
                return min(index, at + 1)
        return first

    # -- inspection ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def all_entries(self) -> list[tuple[int, Entry]]:
        """Every ``(index, entry)`` pair, base entry included (for tests and traces)."""
        return [(self._first + i, e) for i, e in enumerate(self._entries)]

    def copy(self) -> MemoryLog:
        clone = MemoryLog.__new__(MemoryLog)
        clone._size_fn = self._size_fn
        clone._first = self._first
        clone._entries = list(self._entries)
        clone._sizes = list(self._sizes)
        clone._configs = list(self._configs)
        clone.refuse_append = self.refuse_append
        clone.node_share = self.node_share
        return clone

    # -- mutations (the log effects) -------------------------------------------------------------

    def append(self, first_index: int, entries: Sequence[Entry]) -> None:
        """``AppendLog`` at exactly ``last_index() + 1`` (a log never overwrites)."""
        if first_index != self.last_index() + 1:
            raise LogContractError(
                f"append at {first_index} but the log ends at {self.last_index()}"
            )
        size_fn = self._size_fn
        index = first_index
        for entry in entries:
            if entry.command is None:
                raise LogContractError(f"append of an entry without command at {index}")
            if is_config_command(entry.command):
                self._configs.append(index)
            self._entries.append(entry)
            self._sizes.append(size_fn(entry))
            index += 1

    def truncate(self, index: int) -> None:
        """``TruncateLog``: delete every entry at ``index`` and above (``index`` > first)."""
        if index <= self._first:
            raise LogContractError(
                f"truncate at {index} would delete the first index {self._first}"
            )
        keep = index - self._first
        if keep >= len(self._entries):
            return
        del self._entries[keep:]
        del self._sizes[keep:]
        configs = self._configs
        while configs and configs[-1] >= index:
            configs.pop()

    def reset(self, position: LogPos) -> None:
        """``ResetLog``: the log becomes only the term-only base entry at ``position``."""
        if position.index == 0 and position.term != 0:
            raise LogContractError(f"reset to index 0 with term {position.term}")
        if position.index < 0 or position.term < 0:
            raise LogContractError(f"reset to a negative position {position}")
        self._reset(position)

    def _reset(self, position: LogPos) -> None:
        self._first = position.index
        self._entries = [Entry(position.term)]
        self._sizes = [1]
        self._configs = []

    def trim(self, index: int, strip: bool = False) -> int:
        """``TrimLog``: drop entries below ``index`` (clamped so the log stays non-empty).

        With ``strip`` the new first entry loses its op (keeps only its term), as a provider may.
        Returns the new first index.
        """
        index = min(index, self.last_index())
        if index <= self._first:
            return self._first
        drop = index - self._first
        del self._entries[:drop]
        del self._sizes[:drop]
        self._first = index
        configs = self._configs
        # configs below the first index stay listed until a newer one arrives: config() hides them
        if strip:
            head = self._entries[0]
            if head.command is not None:
                self._entries[0] = Entry(head.term)
                if configs and configs[-1] == index:
                    configs.pop()
        while len(configs) > 1 and configs[1] <= index:
            configs.pop(0)
        return self._first

    def open(self, position: LogPos) -> bool:
        """Reopen at storage's ``position`` after a restart: keep the log when it holds
        ``position`` with the same term, else reset it there (WARaft's ``handle_open``).
        Returns ``True`` when the log was reset."""
        if self.term(position.index) == position.term:
            return False
        self._reset(position)
        return True
