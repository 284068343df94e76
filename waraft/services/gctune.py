"""The cyclic garbage collector of a node process: thresholds, a freeze, pause metrics.

CPython frees almost everything a node allocates by reference counting; the cyclic collector
only has to find reference cycles. With the interpreter's default thresholds (700, 10, 10) it
runs a young collection every 700 net container allocations, and a node allocates containers
for every frame, RPC, entry and reply: measured on this project's harness (issue 12,
``benchmarks/HOTPATH.md``, "The nodes' cyclic GC"), collections took 8-13 % of a node's CPU in
scenario b and 19 % at 1000 partitions, where a full collection walks every live object of
every partition (~200 ms each, the whole process stalled). Objects that survive a young
collection are promoted and make the full collections bigger; with a larger young threshold
most of them (in-flight requests, batches) die by reference count before any collection sees
them.

A process that owns its interpreter (``waraft node``) calls :func:`tune`; a service embedding
waraft decides for its own process (the library never changes the collector on import).
:func:`watch_pauses` times every collection into a histogram (``waraft_gc_pause_seconds`` on
the metrics endpoint) and logs pauses of :data:`SLOW_PAUSE_S` or more, since a collection
stalls every partition of the node at once.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from typing import Any, Final

from waraft.services import metrics
from waraft.services.logthrottle import LogThrottle

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_THRESHOLD",
    "GC_PAUSE_METRIC",
    "SLOW_PAUSE_S",
    "Threshold",
    "parse_threshold",
    "tune",
    "unwatch_pauses",
    "watch_pauses",
]

Threshold = tuple[int, int, int]

DEFAULT_THRESHOLD: Final[Threshold] = (20_000, 20, 20)
"""``waraft node``'s thresholds: a young collection per 20,000 net container allocations (the
interpreter's default is 700), an older one per 20 young ones, a full one per 20 older ones
(and only when the long-lived objects grew by a quarter, CPython's own rule)."""

GC_PAUSE_METRIC: Final = "gc_pause_seconds"
"""The histogram family (label: ``gen0``, ``gen1``, ``gen2``) of collection pauses."""

SLOW_PAUSE_S: Final = 0.1
"""A collection at least this long is logged (throttled: one line a minute)."""

MAX_YOUNG_THRESHOLD: Final = 10_000_000
"""Beyond this the young generation is effectively never collected: cycles would pile up."""


def parse_threshold(value: str | Sequence[int] | None) -> Threshold | None:
    """``"A,B,C"`` (or three ints) as a threshold; ``None``, ``"default"`` or ``""`` for
    :data:`DEFAULT_THRESHOLD`; ``"python"`` for ``None`` (leave the interpreter's). Raises
    ``ValueError`` with the accepted forms for anything else: three whole numbers, each at
    least 1 (0 would switch the collector off, leaking every cycle of a long-running node),
    the first at most :data:`MAX_YOUNG_THRESHOLD`."""
    if value is None:
        return DEFAULT_THRESHOLD
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "default"):
            return DEFAULT_THRESHOLD
        if text == "python":
            return None
        parts: list[Any] = [p.strip() for p in text.split(",")]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
    else:
        numbers = list(value) if all(type(n) is int for n in value) else []
    if len(numbers) != 3 or min(numbers) < 1 or numbers[0] > MAX_YOUNG_THRESHOLD:
        raise ValueError(
            f"a GC threshold is three whole numbers >= 1 like 20000,20,20 (the first at most "
            f"{MAX_YOUNG_THRESHOLD}), 'default' or 'python'; got {value!r}"
        )
    return (numbers[0], numbers[1], numbers[2])


def tune(threshold: Threshold | None = DEFAULT_THRESHOLD, *, freeze: bool = True) -> None:
    """Set the collector's thresholds (``None`` leaves them) and, with ``freeze``, move every
    object alive now (modules, classes, the start-up state) to the permanent generation, so
    that no full collection walks them again. Call it once, early, from the process's owner:
    before the partitions start (objects frozen are never collected, so freezing a partition's
    state would leak it once the partition stops)."""
    if threshold is not None:
        gc.set_threshold(*threshold)
        logger.info("cyclic GC thresholds %s", ",".join(map(str, threshold)))
    if freeze:
        gc.collect()
        gc.freeze()


class _PauseWatch:
    """The ``gc.callbacks`` entry: times each collection (the collector holds the GIL, so the
    start and the stop of one collection come in order on one thread)."""

    __slots__ = ("histograms", "started", "throttle")

    def __init__(self) -> None:
        self.started = 0.0
        self.histograms = [metrics.histogram(GC_PAUSE_METRIC, f"gen{g}") for g in range(3)]
        self.throttle = LogThrottle(60.0)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        paused = time.perf_counter() - self.started
        generation = int(info.get("generation", 2))
        self.histograms[min(max(generation, 0), 2)].observe(paused)
        if paused >= SLOW_PAUSE_S and (count := self.throttle.ready()):
            logger.warning(
                "a generation-%d garbage collection stalled the node for %.0f ms "
                "(%d slow collection(s) since the last line); tracked objects: %d",
                generation,
                paused * 1000,
                count,
                len(gc.get_objects(generation)),
            )


_watch: _PauseWatch | None = None


def watch_pauses() -> None:
    """Time every collection of this process from now on (idempotent)."""
    global _watch
    if _watch is None:
        _watch = _PauseWatch()
        gc.callbacks.append(_watch)


def unwatch_pauses() -> None:
    """Stop timing collections (for tests and embedders that undo :func:`watch_pauses`)."""
    global _watch
    if _watch is not None:
        gc.callbacks.remove(_watch)
        _watch = None
