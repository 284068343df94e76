"""The virtual clock: a deterministic event queue in integer milliseconds.

Everything that happens in a simulation is a ``Scheduled`` item in one priority queue ordered by
``(time, seq)``. ``seq`` is a global counter, so two items due at the same millisecond fire in the
order they were scheduled: given the same seed the same schedule is replayed exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class Scheduled:
    """One pending action. ``target`` names the node it concerns (``None`` for global ones);
    ``label`` is a short description for traces. Cancel with ``cancel()``: the queue skips it."""

    __slots__ = ("action", "args", "cancelled", "label", "seq", "target", "time")

    def __init__(
        self,
        time: int,
        seq: int,
        target: str | None,
        label: str,
        action: Callable[..., None],
        args: tuple[Any, ...],
    ) -> None:
        self.time = time
        self.seq = seq
        self.target = target
        self.label = label
        self.action = action
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        self.action(*self.args)

    def __repr__(self) -> str:
        return f"<{self.time}ms #{self.seq} {self.target or '-'} {self.label}>"


class VirtualClock:
    """Virtual time plus the queue of everything scheduled to happen.

    Time only moves when an item is popped (``pop``) or the clock is advanced explicitly
    (``advance_to``); it never goes backwards.
    """

    def __init__(self, start_ms: int = 0) -> None:
        self.now = start_ms
        self._heap: list[tuple[int, int, Scheduled]] = []
        self._seq = 0

    def schedule(
        self,
        delay_ms: int,
        action: Callable[..., None],
        *args: Any,
        target: str | None = None,
        label: str = "",
    ) -> Scheduled:
        """Run ``action(*args)`` ``delay_ms`` from now (``delay_ms`` ≥ 0)."""
        if delay_ms < 0:
            raise ValueError(f"negative delay {delay_ms}")
        time_ms = self.now + delay_ms
        self._seq += 1
        item = Scheduled(time_ms, self._seq, target, label, action, args)
        heapq.heappush(self._heap, (time_ms, self._seq, item))
        return item

    def schedule_at(
        self,
        time_ms: int,
        action: Callable[..., None],
        *args: Any,
        target: str | None = None,
        label: str = "",
    ) -> Scheduled:
        """Run ``action(*args)`` at absolute virtual time ``time_ms`` (not in the past)."""
        if time_ms < self.now:
            raise ValueError(f"cannot schedule at {time_ms} < now {self.now}")
        self._seq += 1
        item = Scheduled(time_ms, self._seq, target, label, action, args)
        heapq.heappush(self._heap, (time_ms, self._seq, item))
        return item

    def _drop_cancelled(self) -> None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)

    def peek(self) -> Scheduled | None:
        """The next live item, without removing it."""
        self._drop_cancelled()
        return self._heap[0][2] if self._heap else None

    def next_time(self) -> int | None:
        item = self.peek()
        return None if item is None else item.time

    def pop(self) -> Scheduled | None:
        """Remove the next live item and move the clock to its time (the caller fires it)."""
        self._drop_cancelled()
        if not self._heap:
            return None
        _, _, item = heapq.heappop(self._heap)
        self.now = item.time
        return item

    def advance_to(self, time_ms: int) -> None:
        """Move the clock forward without firing anything (only up to the next item)."""
        nxt = self.next_time()
        if nxt is not None and nxt < time_ms:
            raise ValueError(f"cannot skip over the item due at {nxt}")
        self.now = max(self.now, time_ms)

    def __len__(self) -> int:
        return sum(1 for _, _, item in self._heap if not item.cancelled)
