"""The node-wide budget for retained log bytes (``raft_node_max_retained_bytes``, issue 14).

``raft_max_retained_bytes`` bounds each partition's log on its own, so a node with many
partitions could keep that much times its partition count. A ``RetentionPool`` is shared by the
in-memory and WAL logs of every partition of a node (the partitions whose directories share one
parent, ``<raft_database>``): each log reports the bytes it holds, and its
``retained_budget`` is its *share* of the node's budget,

    share = max(budget // partitions open, budget - bytes held by the other partitions)

so a lone busy partition may use what idle ones leave, while once the node is over budget every
partition above an equal share trims towards it. The bound is soft: partitions apply (and trim)
on their own schedules, and what is not applied yet is never trimmed, but the total settles at
the budget instead of growing with the partition count.

Accounting is by each log's own estimate of its memory (``MemoryLog.byte_size``); the log
recomputes it after each change and reports the difference, so the total cannot drift.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import ClassVar

logger = logging.getLogger(__name__)


class RetentionPool:
    """Bytes held by the logs of one node, against the node's budget (0: unbounded).

    Thread-safe: logs of different partitions change on different scheduler threads.
    """

    _registry: ClassVar[dict[str, RetentionPool]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, budget: int = 0) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._held = 0
        self._members = 0

    @classmethod
    def for_root(cls, root: str) -> RetentionPool:
        """The pool of the node whose partition directories live in ``root`` ("" for logs
        with no directory: one pool per process). Pools are tiny and never dropped."""
        key = os.path.abspath(root) if root else ""
        with cls._registry_lock:
            pool = cls._registry.get(key)
            if pool is None:
                pool = cls._registry[key] = cls()
            return pool

    def join(self, budget: int) -> None:
        """A log opens: count it, and take the node's budget from its settings (every
        partition of a node has the same; the newest opener's value wins)."""
        with self._lock:
            self._members += 1
            self.budget = budget

    def leave(self, held: int) -> None:
        """A log closes, handing back the ``held`` bytes it had reported."""
        with self._lock:
            self._members = max(0, self._members - 1)
            self._held -= held

    def change(self, delta: int) -> None:
        """A log's held bytes changed by ``delta``."""
        with self._lock:
            self._held += delta

    def share(self, own: int) -> int:
        """The budget of a log holding ``own`` bytes (see the module docstring); 0 when the
        node has no budget. Reads without the lock: a momentarily stale answer only moves a
        trim by one apply batch."""
        budget = self.budget
        if budget <= 0:
            return 0
        fair = budget // max(1, self._members)
        return max(fair, budget - (self._held - own), 1)

    @property
    def held(self) -> int:
        """Bytes the node's open logs hold, by their estimates."""
        return self._held

    @property
    def members(self) -> int:
        """Logs open in this pool."""
        return self._members


__all__ = ["RetentionPool"]
