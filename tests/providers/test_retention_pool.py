"""The node-wide retained-bytes budget (``waraft.log.budget``, issue 14): the logs of one
node report what they hold to one pool, and each gets a share of the node's budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from waraft.core.settings import Settings
from waraft.core.types import Entry, LogPos
from waraft.log.budget import RetentionPool
from waraft.log.memory import MemoryLog
from waraft.log.wal import WalLog

from .helpers import stop_wal_writers

BUDGET = 100_000


def _entries(start: int, count: int, value: bytes = b"x" * 1000) -> list[Entry]:
    return [Entry(1, f"k{i}", ("write", "t", f"k{i}", value)) for i in range(start, start + count)]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "db"
    stop_wal_writers(tmp_path)


def _settings(budget: int = BUDGET) -> Settings:
    return Settings().with_overrides(raft_node_max_retained_bytes=budget)


def test_the_pool_tracks_what_every_log_of_the_node_holds(root: Path) -> None:
    logs = [MemoryLog.open(root / f"t.{p}", _settings()) for p in range(3)]
    pool = RetentionPool.for_root(str(root))
    assert pool.members == 3 and pool.budget == BUDGET
    for log in logs:
        log.append(1, _entries(1, 20))
    logs[0].trim(11)
    logs[1].truncate(5)
    logs[2].reset(LogPos(50, 2))
    assert pool.held == sum(log.byte_size() for log in logs)
    assert pool.held > 20 * 1000  # entries count their memory, not just a few bytes
    for log in logs:
        log.close()
    assert (pool.held, pool.members) == (0, 0)


def test_a_busy_log_may_use_what_idle_ones_leave_then_only_its_equal_share(root: Path) -> None:
    logs = [MemoryLog.open(root / f"t.{p}", _settings()) for p in range(4)]
    busy = logs[0]
    busy.append(1, _entries(1, 30))  # ~45 kB of the node's 100 kB
    # the other three hold next to nothing: the busy one may have almost the whole budget
    assert busy.retained_budget(8 * 1024 * 1024) > BUDGET - 2000
    # its own, lower bound still applies
    assert busy.retained_budget(10_000) == 10_000
    for log in logs[1:]:
        log.append(1, _entries(1, 30))
    # all four over-full: every one is down to an equal share
    assert pool_share(busy) == BUDGET // 4
    for log in logs:
        log.close()


def pool_share(log: MemoryLog) -> int:
    return log.retained_budget(0)  # no bound of its own: the node's share alone


def test_no_node_budget_leaves_the_partition_bound_alone(root: Path) -> None:
    log = MemoryLog.open(root / "t.1", _settings(0))
    log.append(1, _entries(1, 50))
    assert log.retained_budget(8 * 1024 * 1024) == 8 * 1024 * 1024
    assert log.retained_budget(0) == 0
    log.close()


def test_wal_logs_share_the_pool_of_their_node(root: Path) -> None:
    logs = [WalLog.open(root / f"t.{p}", _settings()) for p in range(2)]
    other = WalLog.open(root.parent / "other-node" / "t.1", _settings())
    pool = RetentionPool.for_root(str(root))
    for log in [*logs, other]:
        log.append(1, _entries(1, 10))
        log.sync()
    assert pool.members == 2
    assert pool.held == sum(log.byte_size() for log in logs)  # not the other node's log
    for log in logs:
        log.close()
    assert pool.held == 0
    other.close()


def test_a_reopened_wal_log_reports_what_it_recovered(root: Path) -> None:
    log = WalLog.open(root / "t.1", _settings())
    log.append(1, _entries(1, 10))
    log.sync()
    held = log.byte_size()
    log.close()
    again = WalLog.open(root / "t.1", _settings())
    assert RetentionPool.for_root(str(root)).held == again.byte_size() == held
    again.close()


def test_memory_estimate_matches_the_heap_an_entry_takes() -> None:
    """``ENTRY_MEMORY_OVERHEAD``: what ``byte_size`` says is within 0.8-1.25 of the heap the
    entries really take (tracemalloc), for 100 B and 1000 B values."""
    import gc
    import tracemalloc

    from waraft.services.codec import packb, unpackb

    for size in (100, 1000):
        raw = [
            packb((3, ("c", i), ("write", "t", f"key-{i:08d}", b"x" * size))) for i in range(3000)
        ]
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            log = MemoryLog()
            for at in range(0, len(raw), 50):
                log.append(at + 1, [Entry(*unpackb(r)) for r in raw[at : at + 50]])
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        ratio = log.byte_size() / used
        assert 0.8 <= ratio <= 1.25, (size, log.byte_size(), used)
