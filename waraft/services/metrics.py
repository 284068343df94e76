"""Metrics sink (WARaft's ``wa_raft_metrics`` behaviour, digest §7.3).

Every metric key is ``("raft", table, name)`` (``key(table, name)``). The default sink does
nothing; ``install(metrics)`` replaces it for the current node (several nodes may share a
Python process) and ``get()`` returns the node's sink. ``CountingMetrics`` keeps counters and
gathered values in memory, for tests and status pages.
"""

from __future__ import annotations

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
    "NOOP",
    "CountingMetrics",
    "MetricKey",
    "Metrics",
    "NoopMetrics",
    "Summary",
    "count",
    "countv",
    "gather",
    "gather_latency",
    "get",
    "install",
    "key",
]
