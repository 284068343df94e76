"""Metrics sink (WARaft's ``wa_raft_metrics`` behaviour, digest §7.3).

Every metric key is ``("raft", table, name)`` (``key(table, name)``). The default sink does
nothing; ``install(metrics)`` replaces it for the current node (several nodes may share a
Python process) and ``get()`` returns the node's sink. ``CountingMetrics`` keeps counters and
gathered values in memory, for tests and status pages.

Two always-on facilities feed the Prometheus endpoint (``waraft node --metrics``) whatever the
sink: :class:`Histogram` latency histograms registered by name and label (the log providers
time their fsyncs into them), and per-partition event counters (:func:`count_partition`, e.g.
snapshot transfers), kept per node. Both are cheap: the events they record are rare or already
cost a system call.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from abc import ABC, abstractmethod
from typing import Any

from waraft.services.env import current_node_id

MetricKey = tuple[str, str, str]


def key(table: str, name: str) -> MetricKey:
    """WARaft's metric key ``{raft, Table, Name}``."""
    return ("raft", table, name)


class Metrics(ABC):
    """A metrics sink. Calls come from many threads and must not block."""

    @abstractmethod
    def count(self, metric: Any) -> None:
        """Add 1 to ``metric``."""

    @abstractmethod
    def countv(self, metric: Any, value: int) -> None:
        """Add ``value`` to ``metric``."""

    @abstractmethod
    def gather(self, metric: Any, value: float) -> None:
        """Record one sample of a distribution."""

    @abstractmethod
    def gather_latency(self, metric: Any, value: float) -> None:
        """Record one latency sample (microseconds, as WARaft)."""


class NoopMetrics(Metrics):
    """WARaft's default: drops everything."""

    def count(self, metric: Any) -> None:
        pass

    def countv(self, metric: Any, value: int) -> None:
        pass

    def gather(self, metric: Any, value: float) -> None:
        pass

    def gather_latency(self, metric: Any, value: float) -> None:
        pass


class Summary:
    """Count, sum, min and max of gathered samples."""

    __slots__ = ("count", "max", "min", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def as_dict(self) -> dict[str, float]:
        mean = self.total / self.count if self.count else 0.0
        return {
            "count": self.count,
            "sum": self.total,
            "min": self.min,
            "max": self.max,
            "mean": mean,
        }


class CountingMetrics(Metrics):
    """Thread-safe in-memory counters and sample summaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[Any, int] = {}
        self._samples: dict[Any, Summary] = {}

    def count(self, metric: Any) -> None:
        self.countv(metric, 1)

    def countv(self, metric: Any, value: int) -> None:
        with self._lock:
            self._counters[metric] = self._counters.get(metric, 0) + value

    def gather(self, metric: Any, value: float) -> None:
        with self._lock:
            summary = self._samples.get(metric)
            if summary is None:
                summary = self._samples[metric] = Summary()
            summary.add(value)

    def gather_latency(self, metric: Any, value: float) -> None:
        self.gather(metric, value)

    def counter(self, metric: Any) -> int:
        return self._counters.get(metric, 0)

    def summary(self, metric: Any) -> dict[str, float] | None:
        with self._lock:
            summary = self._samples.get(metric)
            return None if summary is None else summary.as_dict()

    def snapshot(self) -> dict[str, Any]:
        """Every counter and summary, copied."""
        with self._lock:
            return {
                "counters": dict(self._counters),
                "samples": {k: s.as_dict() for k, s in self._samples.items()},
            }

    def reset(self) -> None:
        with self._lock:
            self._counters.clear()
            self._samples.clear()


FSYNC_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Upper bounds (seconds) of the fsync latency buckets: 100 us (a fast NVMe) to 2.5 s."""


class Histogram:
    """A thread-safe latency histogram with fixed bucket bounds (seconds), Prometheus style:
    :meth:`snapshot` gives cumulative counts per upper bound, the count and the sum."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: tuple[float, ...] = FSYNC_BUCKETS) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Record one sample."""
        slot = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self._counts[slot] += 1
            self._sum += seconds

    def snapshot(self) -> dict[str, Any]:
        """``{"buckets": [(upper bound, cumulative count), ..., (inf, count)], "count",
        "sum"}``, consistent with itself."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        cumulative = list(itertools.accumulate(counts))
        bounds = [*self._bounds, float("inf")]
        return {
            "buckets": list(zip(bounds, cumulative, strict=True)),
            "count": cumulative[-1],
            "sum": total,
        }


_histograms: dict[tuple[str, str], Histogram] = {}
_histograms_lock = threading.Lock()


def histogram(name: str, label: str) -> Histogram:
    """The process-wide histogram ``name`` for ``label`` (e.g. a log's directory), created on
    first use; :func:`drop_histogram` forgets it when its owner closes."""
    with _histograms_lock:
        found = _histograms.get((name, label))
        if found is None:
            found = _histograms[(name, label)] = Histogram()
        return found


def drop_histogram(name: str, label: str) -> None:
    """Forget a histogram whose owner closed (it is no longer exported)."""
    with _histograms_lock:
        _histograms.pop((name, label), None)


def histograms(name: str) -> dict[str, dict[str, Any]]:
    """Snapshots of every live histogram called ``name``, by label."""
    with _histograms_lock:
        found = [(label, h) for (n, label), h in _histograms.items() if n == name]
    return {label: h.snapshot() for label, h in found}


PartitionEvent = tuple[str, int, str]
_partition_events: dict[str, dict[PartitionEvent, int]] = {}


def count_partition(table: str, partition: int, name: str, *, node: str | None = None) -> None:
    """Count event ``name`` of one partition on this node (kept for the metrics endpoint) and
    pass ``("raft", table, name)`` to the node's sink as :func:`count` would."""
    node_id = current_node_id() if node is None else node
    event = (str(table), int(partition), name)
    with _lock:
        events = _partition_events.setdefault(node_id, {})
        events[event] = events.get(event, 0) + 1
    get(node=node_id).count(key(str(table), name))


def partition_events(*, node: str | None = None) -> dict[PartitionEvent, int]:
    """Every ``(table, partition, name)`` counted by :func:`count_partition` on the node."""
    node_id = current_node_id() if node is None else node
    with _lock:
        return dict(_partition_events.get(node_id, {}))


NOOP = NoopMetrics()
_installed: dict[str, Metrics] = {}
_lock = threading.Lock()


def install(metrics: Metrics | None, *, node: str | None = None) -> None:
    """Make ``metrics`` the node's sink (``None`` restores the no-op default)."""
    node_id = current_node_id() if node is None else node
    with _lock:
        if metrics is None:
            _installed.pop(node_id, None)
        else:
            _installed[node_id] = metrics


def get(*, node: str | None = None) -> Metrics:
    """The node's sink (the no-op one unless ``install`` was called)."""
    return _installed.get(current_node_id() if node is None else node, NOOP)


def count(table: str, name: str) -> None:
    """``?RAFT_COUNT(Table, Name)``."""
    get().count(key(table, name))


def countv(table: str, name: str, value: int) -> None:
    get().countv(key(table, name), value)


def gather(table: str, name: str, value: float) -> None:
    get().gather(key(table, name), value)


def gather_latency(table: str, name: str, value: float) -> None:
    get().gather_latency(key(table, name), value)


__all__ = [
    "FSYNC_BUCKETS",
    "NOOP",
    "CountingMetrics",
    "Histogram",
    "MetricKey",
    "Metrics",
    "NoopMetrics",
    "Summary",
    "count",
    "count_partition",
    "countv",
    "drop_histogram",
    "gather",
    "gather_latency",
    "get",
    "histogram",
    "histograms",
    "install",
    "key",
    "partition_events",
]
