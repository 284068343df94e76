"""Client histories: every operation a simulated client invoked and how it ended.

An operation is *invoked* at a virtual time and ends as ``ok`` (it took effect, with a result),
``fail`` (it certainly did not take effect) or ``unknown`` (it may or may not have taken effect,
e.g. a timeout, or an error after its entry had been appended somewhere). Operations still
pending when the history is checked count as ``unknown``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class Status(enum.Enum):
    PENDING = "pending"
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Operation:
    """One client operation. ``kind`` is ``"commit"`` or ``"read"``."""

    id: int
    client: int
    kind: str
    command: Any
    invoke_ms: int
    node: str | None = None  # where it was sent (last attempt)
    status: Status = Status.PENDING
    complete_ms: int | None = None
    result: Any = None
    key: Any = None  # the Raft log key of a commit (unique per operation)

    def line(self) -> str:
        end = "…" if self.complete_ms is None else str(self.complete_ms)
        return (
            f"[{self.invoke_ms:>7}..{end:>7}] c{self.client} #{self.id} {self.kind} "
            f"{self.command!r} -> {self.status.value} {self.result!r} @{self.node}"
        )


class History:
    """An append-only record of operations, in invocation order."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    def invoke(self, client: int, kind: str, command: Any, now: int, key: Any = None) -> Operation:
        op = Operation(len(self.ops), client, kind, command, now, key=key)
        self.ops.append(op)
        return op

    @staticmethod
    def _complete(op: Operation, status: Status, result: Any, now: int) -> None:
        if op.status is not Status.PENDING:
            raise ValueError(f"operation {op.id} already completed ({op.status.value})")
        if now < op.invoke_ms:
            raise ValueError(f"operation {op.id} completes before it was invoked")
        op.status = status
        op.result = result
        op.complete_ms = now

    def ok(self, op: Operation, result: Any, now: int) -> None:
        self._complete(op, Status.OK, result, now)

    def fail(self, op: Operation, result: Any, now: int) -> None:
        self._complete(op, Status.FAIL, result, now)

    def unknown(self, op: Operation, result: Any, now: int) -> None:
        self._complete(op, Status.UNKNOWN, result, now)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def count(self, status: Status, kind: str | None = None) -> int:
        return sum(
            1 for op in self.ops if op.status is status and (kind is None or op.kind == kind)
        )

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            name = f"{op.kind}.{op.status.value}"
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items()))

    def dump(self, limit: int | None = None) -> str:
        ops = self.ops if limit is None else self.ops[-limit:]
        return "\n".join(op.line() for op in ops)
