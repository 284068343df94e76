"""The read-only interfaces through which the pure core sees the outside world.

* ``LogView`` is WARaft's ``#log_view{}``: the server reads the log straight from the provider
  (no actor hop), but every *change* to the log leaves the core as an effect (``AppendLog``,
  ``TruncateLog``, ``ResetLog``, ``TrimLog``) that the shell applies before the core's next step.
  The in-memory log, the disk log and the simulator's log all satisfy it.
* ``QueueView`` is the part of ``wa_raft_queue``'s shared counters the server consults.

Both are ``typing.Protocol``s: implementations need not inherit from them.
"""

from __future__ import annotations

from typing import Protocol

from waraft.core.types import Config, Entry, Priority


class LogView(Protocol):
    """Read access to one partition's Raft log.

    Contract:
    * The log is contiguous from ``first_index()`` to ``last_index()`` inclusive and never empty:
      a fresh or reset log holds the term-only base entry at its first index (index 0, term 0
      for a brand-new replica).
    * ``term(i)`` is ``None`` outside ``[first_index(), last_index()]``.
    * ``entries(start, end, max_count, max_bytes)`` returns the contiguous run beginning at
      ``start`` and ending at or before ``end`` (inclusive), at most ``max_count`` entries, and
      stops once the cumulative encoded size reaches ``max_bytes`` — but returns at least one
      entry when ``start`` is in range. Empty when ``start`` is out of range.
    * ``config()`` is the newest ``(index, Config)`` config entry still in the log, found without
      scanning (providers index it), or ``None``.
    * ``can_append(count, priority)`` is the relaxed-append admission: ``False`` means appending
      now would block, and the leader answers the pending commits with ``commit_stalled``
      instead. The in-memory log always says ``True``.
    * ``retained_from(index, max_bytes)`` is the lowest index ``i`` of the log, at most
      ``index``, such that the entries ``i..index`` total at most ``max_bytes`` encoded bytes
      (``index`` itself when that entry alone is larger; ``first_index()`` when everything up
      to ``index`` fits). Byte-based rotation (``raft_max_retained_bytes``) trims below it; a
      provider answers cheaply while the whole log fits.
    * ``retained_budget(max_bytes)`` is how many bytes of entries this partition may keep now,
      given its own bound ``max_bytes`` (``raft_max_retained_bytes``; 0 = none): ``max_bytes``
      itself, or less when the provider shares a node-wide budget among the partitions of its
      node (``raft_node_max_retained_bytes``) and this partition's share is smaller. 0 means no
      bound at all. It may change between calls (other partitions grow and shrink) and must be
      cheap: it is asked once per applied batch.
    """

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int | None: ...

    def get(self, index: int) -> Entry | None: ...

    def entries(self, start: int, end: int, max_count: int, max_bytes: int) -> list[Entry]: ...

    def config(self) -> tuple[int, Config] | None: ...

    def can_append(self, count: int, priority: Priority) -> bool: ...

    def retained_from(self, index: int, max_bytes: int) -> int: ...

    def retained_budget(self, max_bytes: int) -> int: ...


class QueueView(Protocol):
    """The apply-queue counters that storage drains (``wa_raft_queue``'s atomics)."""

    def apply_queue_size(self) -> int: ...

    def apply_queue_full(self) -> bool: ...
