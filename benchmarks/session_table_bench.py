"""CPU the storage actor spends storing the exactly-once session table per apply batch.

``python -m benchmarks.session_table_bench``: for tables of 100, 1,000 and 10,000 sessions
(the cap), each session holding ``RESULTS`` (default 4) recorded results, one "batch" is one
tagged call on one session plus its recorded result, then what the storage actor hands the
provider for the table, encoded as the providers encode values (``waraft.services.codec``):

* ``whole``: the whole table (``SessionTable.dump``), as stored before rows;
* ``rows``: what changed (``SessionTable.changes``: here one row), then ``saved``.

Printed per size: microseconds per batch (best of ``REPS`` runs of ``BATCHES`` batches each)
and bytes written per batch. Pure CPU in one process; no provider involved, so the figures are
the table's own cost on top of whatever the provider's transaction costs.

Then the cost of a register on a full table (10,000 sessions, a third of them called since):
each such register sweeps the expired sessions and evicts the idlest, on every replica, and
one client can send hundreds a second.
"""

from __future__ import annotations

import os
import time

from waraft.core.sessions import SessionTable, call_command, register_command
from waraft.services import codec

RESULTS = int(os.environ.get("RESULTS", "4"))
BATCHES = int(os.environ.get("BATCHES", "200"))
REPS = int(os.environ.get("REPS", "5"))


def _table(size: int) -> tuple[SessionTable, int]:
    """A table of ``size`` sessions with ``RESULTS`` recorded results each; the next index."""
    table = SessionTable()
    index = 1
    for _ in range(size):
        table.begin(register_command(10**9), index)
        index += 1
    for sid in range(1, size + 1):
        for seq in range(1, RESULTS + 1):
            table.begin(call_command(sid, seq, 1, ("write", "t", "k", seq)), index)
            table.finish(sid, seq, "ok")
            index += 1
    table.saved()
    return table, index


def _run(table: SessionTable, index: int, size: int, mode: str) -> tuple[float, int]:
    """Best microseconds per batch over ``REPS`` runs, and bytes written per batch."""
    best = float("inf")
    written = 0
    seq = RESULTS + 1
    for _ in range(REPS):
        start = time.perf_counter()
        written = 0
        for batch in range(BATCHES):
            sid = 1 + (batch * 7919) % size
            table.begin(call_command(sid, seq, seq - 1, ("write", "t", "k", seq)), index)
            table.finish(sid, seq, "ok")
            index += 1
            if mode == "whole":
                written += len(codec.packb(table.dump()))
            else:
                rows, changed_index = table.changes()
                for _, row in rows:
                    written += len(codec.packb(row))
                if changed_index is not None:
                    written += len(codec.packb(changed_index))
                table.saved()
        seq += 1
        best = min(best, (time.perf_counter() - start) / BATCHES * 1e6)
    return best, written // BATCHES


def _register_on_full_table() -> float:
    """Best microseconds per register on a full table (each one evicts a session)."""
    table = SessionTable()
    index = 0
    for _ in range(table.max_sessions):
        index += 1
        table.begin(register_command(10**9), index)
    for sid in range(1, table.max_sessions + 1, 3):
        index += 1
        table.begin(call_command(sid, 1, 0, "x"), index)
    best = float("inf")
    for _ in range(REPS):
        start = time.perf_counter()
        for _ in range(BATCHES):
            index += 1
            table.begin(register_command(10**9), index)
        best = min(best, (time.perf_counter() - start) / BATCHES * 1e6)
    return best


def main() -> None:
    print(f"{'sessions':>9} {'mode':>6} {'us/batch':>10} {'bytes/batch':>12}")
    for size in (100, 1_000, 10_000):
        for mode in ("whole", "rows"):
            table, index = _table(size)
            us, written = _run(table, index, size, mode)
            print(f"{size:>9} {mode:>6} {us:>10.1f} {written:>12}")
    print(f"register on a full table: {_register_on_full_table():.1f} us")


if __name__ == "__main__":
    main()
