"""A log-linear latency histogram in the spirit of HdrHistogram, small enough to record from a
hot client loop and to ship between processes as JSON.

Values are integers (the harness records nanoseconds). Below ``2**bits`` every value has its own
bucket; above, each power of two is split into ``2**(bits-1)`` equal buckets, so a recorded value
is reported within a relative error of ``2**(1-bits)`` (0.8 % with the default ``bits=8``) while
the whole range from 1 ns to hours needs only a few thousand buckets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BITS = 8
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


def bucket_index(value: int, bits: int = DEFAULT_BITS) -> int:
    """The bucket holding ``value`` (>= 0)."""
    size = 1 << bits
    if value < size:
        return value
    shift = value.bit_length() - bits
    return shift * (size >> 1) + (value >> shift)


def bucket_bounds(index: int, bits: int = DEFAULT_BITS) -> tuple[int, int]:
    """The half-open value range ``[low, high)`` of bucket ``index``."""
    size = 1 << bits
    if index < size:
        return index, index + 1
    half = size >> 1
    shift = (index - half) // half
    mantissa = index - shift * half
    return mantissa << shift, (mantissa + 1) << shift


@dataclass(slots=True)
class Histogram:
    """Counts of recorded values by bucket, plus exact count, sum, min and max."""

    bits: int = DEFAULT_BITS
    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    sum: int = 0
    min: int = 0
    max: int = 0

    def record(self, value: int) -> None:
        """Add one value (negative values are clamped to 0: a clock never runs backwards)."""
        if value < 0:
            value = 0
        size = 1 << self.bits
        if value < size:
            index = value
        else:
            shift = value.bit_length() - self.bits
            index = shift * (size >> 1) + (value >> shift)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        if self.total == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.total += 1
        self.sum += value

    def record_many(self, values: Iterable[int]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: Histogram) -> None:
        """Add every count of ``other`` (same ``bits``) into this histogram."""
        if other.bits != self.bits:
            raise ValueError("cannot merge histograms of different precision")
        if other.total == 0:
            return
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.min = other.min if self.total == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        self.sum += other.sum

    def percentile(self, pct: float) -> int:
        """The smallest value v such that at least ``pct`` % of the recorded values are <= v,
        reported as its bucket's upper bound (clamped to the exact max); 0 when empty."""
        if self.total == 0:
            return 0
        rank = max(1, -(-self.total * pct // 100))  # ceil without floats drifting
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(bucket_bounds(index, self.bits)[1] - 1, self.max)
        return self.max

    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def summary_ms(self, percentiles: Iterable[float] = PERCENTILES) -> dict[str, float | int]:
        """Count, mean, min, max and percentiles in milliseconds (values recorded in ns)."""
        out: dict[str, float | int] = {
            "count": self.total,
            "mean_ms": round(self.mean() / 1e6, 4),
            "min_ms": round(self.min / 1e6, 4),
            "max_ms": round(self.max / 1e6, 4),
        }
        for pct in percentiles:
            out[f"p{pct:g}_ms".replace(".", "_")] = round(self.percentile(pct) / 1e6, 4)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "total": self.total,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "counts": [[index, count] for index, count in sorted(self.counts.items())],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Histogram:
        hist = cls(bits=int(data["bits"]))
        hist.counts = {int(index): int(count) for index, count in data["counts"]}
        hist.total = int(data["total"])
        hist.sum = int(data["sum"])
        hist.min = int(data["min"])
        hist.max = int(data["max"])
        return hist
