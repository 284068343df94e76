"""A value collected at most once per interval and shared by the callers in between
(``Recent``): the ``/metrics`` page and the ``status_all`` rows, each of which costs a status
call per local partition to collect."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    """The last value ``collect`` returned and when its collection began.

    ``get()`` returns the last value if its collection began less than ``interval`` seconds
    ago, else collects a new one; ``get(fresh=True)`` always collects, and the callers after it
    share what it collected. ``collections`` counts the collections. Not thread-safe: one
    caller at a time (a subclass that shares it between threads adds a lock)."""

    _value: T

    def __init__(
        self,
        collect: Callable[[], T],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._collect = collect
        self._interval = interval
        self._clock = clock
        self._at = float("-inf")
        self.collections = 0

    def get(self, fresh: bool = False) -> T:
        now = self._clock()
        if fresh or now - self._at >= self._interval:
            # The time before the collection: its first parts are that old, its last younger.
            self._value, self._at = self._collect(), now
            self.collections += 1
        return self._value
