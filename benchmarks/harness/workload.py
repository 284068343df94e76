"""What a load generator sends: keys, values and the read/write mix, and the time window.

The same :class:`Workload` drives every system (waraft through its client, PySyncObj through
the benchmark's request server, PySyncObj inside its leader), so their figures compare the same
operations. Keys cycle through a fixed key space with a large prime stride (cheap, spread over
partitions, no random module on the hot path); values are one random byte string of the given
size, so every command carries exactly ``value_size`` bytes of payload.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.harness.wire import OP_READ, OP_WRITE

_STRIDE = 1_000_003


@dataclass(frozen=True, slots=True)
class Window:
    """The shared clock window of one measurement, in ``time.monotonic_ns()`` (system-wide on
    Linux, so every process on the machine agrees): warm-up from ``t0``, then the measured
    window ``[start_ns, end_ns)``."""

    t0_ns: int
    warmup_ns: int
    duration_ns: int

    @property
    def start_ns(self) -> int:
        return self.t0_ns + self.warmup_ns

    @property
    def end_ns(self) -> int:
        return self.t0_ns + self.warmup_ns + self.duration_ns

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Window:
        return cls(int(data["t0_ns"]), int(data["warmup_ns"]), int(data["duration_ns"]))


@dataclass(frozen=True, slots=True)
class Workload:
    value_size: int = 100
    read_fraction: float = 0.0
    keyspace: int = 10_000
    key_prefix: str = "k"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Workload:
        return cls(
            value_size=int(data["value_size"]),
            read_fraction=float(data["read_fraction"]),
            keyspace=int(data["keyspace"]),
            key_prefix=str(data.get("key_prefix", "k")),
        )


class OpStream:
    """An endless, deterministic stream of ``(op, key, value)`` for one generator."""

    def __init__(self, workload: Workload, seed: int = 0) -> None:
        self._keys = [f"{workload.key_prefix}{i}" for i in range(max(1, workload.keyspace))]
        self._value = os.urandom(workload.value_size)
        self._index = (seed * 7919) % len(self._keys)
        self._read_fraction = workload.read_fraction
        self._read_credit = 0.0

    @property
    def value(self) -> bytes:
        return self._value

    def next(self) -> tuple[int, str, bytes | None]:
        keys = self._keys
        self._index = (self._index + _STRIDE) % len(keys)
        key = keys[self._index]
        if self._read_fraction <= 0.0:
            return OP_WRITE, key, self._value
        # Bresenham-style mixing: exact proportions without random draws.
        self._read_credit += self._read_fraction
        if self._read_credit >= 1.0:
            self._read_credit -= 1.0
            return OP_READ, key, None
        return OP_WRITE, key, self._value


def parse_mix(text: str) -> float:
    """``"write=1,read=0"`` (weights, any scale) → the read fraction."""
    weights = {"write": 0.0, "read": 0.0}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, raw = part.partition("=")
        name = name.strip().lower()
        if name not in weights or not raw:
            raise ValueError(f"bad mix item {part!r}: expected write=W,read=R")
        weights[name] = float(raw)
        if weights[name] < 0:
            raise ValueError(f"negative weight in mix: {part!r}")
    total = weights["write"] + weights["read"]
    if total <= 0:
        raise ValueError("the mix needs a positive weight")
    return weights["read"] / total
