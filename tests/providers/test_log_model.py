"""Random operation sequences against a plain model: both providers must agree with it."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waraft.core.types import Config, Entry, LogPos
from waraft.log.disk import DiskLog
from waraft.log.memory import MemoryLog
from waraft.log.provider import LogProvider
from waraft.log.wal import WalLog, WalWriter

from .helpers import A, B, make_config

CONFIGS = [make_config(A), make_config(A, B)]

op = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 25), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("reset"), st.integers(0, 300), st.integers(0, 3)),
    st.tuples(st.just("trim"), st.floats(0, 1.2)),
    st.tuples(st.just("reopen"), st.booleans()),
)


class Model:
    def __init__(self) -> None:
        self.first = 0
        self.entries: list[Entry] = [Entry(0)]

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1

    def config(self) -> tuple[int, Config] | None:
        for offset in range(len(self.entries) - 1, -1, -1):
            command = self.entries[offset].command
            if isinstance(command, tuple) and command[0] == "config":
                return self.first + offset, command[1]
        return None


def check(log: LogProvider, model: Model) -> None:
    assert (log.first_index(), log.last_index()) == (model.first, model.last)
    got = log.entries(model.first, model.last, 1 << 20, 1 << 60)
    assert got == model.entries
    assert [log.term(i) for i in range(model.first, model.last + 1)] == [
        e.term for e in model.entries
    ]
    assert log.term(model.last + 1) is None and log.term(model.first - 1) is None
    assert log.config() == model.config()


def append(log: LogProvider, model: Model, count: int, bump: int, with_config: bool) -> None:
    """Append ``count`` entries (a config among them if ``with_config``) to both, in a term
    ``bump`` past the last one."""
    term = model.entries[-1].term + bump
    start = model.last + 1
    new = [Entry(term, ("k", i), ("write", "t", i, i)) for i in range(start, start + count)]
    if with_config:
        new[count // 2] = Entry(term, "cfg", ("config", CONFIGS[start % 2]), "lab")
    log.append(start, new)
    log.sync()
    model.entries.extend(new)


def run(log: LogProvider, ops: list[Any], reopen: Any) -> None:
    model = Model()
    for step in ops:
        kind = step[0]
        if kind == "append":
            _, count, bump, with_config = step
            append(log, model, count, bump, with_config)
        elif kind == "truncate":
            if model.last == model.first:
                continue
            index = model.first + 1 + int(step[1] * (model.last - model.first))
            log.truncate(index)
            del model.entries[index - model.first :]
        elif kind == "reset":
            position = LogPos(step[1], step[2])
            log.reset(position)
            model.first, model.entries = position.index, [Entry(position.term)]
        elif kind == "trim":
            index = model.first + int(step[1] * (model.last - model.first))
            log.trim(index)
            new_first = log.first_index()
            assert model.first <= new_first <= max(model.first, min(index, model.last))
            del model.entries[: new_first - model.first]
            model.first = new_first
        else:
            log = reopen(log, step[1])
        check(log, model)
    log.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=25))
def test_memory_log_matches_the_model(ops: list[Any]) -> None:
    run(MemoryLog(), ops, lambda log, crash: log)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=25))
def test_disk_log_matches_the_model(ops: list[Any]) -> None:
    directory = tempfile.mkdtemp(prefix="waraft-model-")
    options: dict[str, Any] = {"max_records_per_file": 8, "cache_entries": 4}

    def reopen(log: LogProvider, crash: bool) -> LogProvider:
        assert isinstance(log, DiskLog)
        if crash:
            log._close_fds()  # kill -9: nothing more reaches the files
        else:
            log.close()
        return DiskLog(directory, **options)

    try:
        run(DiskLog(directory, **options), ops, reopen)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=25))
def test_wal_log_matches_the_model(ops: list[Any]) -> None:
    """The shared WAL with tiny files (so rotation, checkpoints and file deletion run often)
    and an idle second partition that rotation must carry forward untouched."""
    root = tempfile.mkdtemp(prefix="waraft-wal-model-")
    options: dict[str, Any] = {"max_file_bytes": 600}
    idle = [Entry(1, ("idle", i), ("write", "t", i, i)) for i in range(1, 6)]

    def open_idle() -> WalLog:
        return WalLog.open(f"{root}/kv.2", **options)

    def reopen(log: LogProvider, crash: bool) -> LogProvider:
        assert isinstance(log, WalLog)
        writer = log._writer
        if crash:
            # kill -9 after the last fsync: the writer stops, no log is closed.
            with WalWriter._registry_lock:
                WalWriter._registry.pop(writer.directory, None)
            writer.stop()
        else:
            log.close()
        other = open_idle()
        assert other.entries(1, 5, 100, 1 << 30) == idle
        other.close()
        return WalLog.open(f"{root}/kv.1", **options)

    other = open_idle()
    other.append(1, idle)
    other.sync()
    other.close()
    log = WalLog.open(f"{root}/kv.1", **options)
    try:
        run(log, ops, reopen)
    finally:
        with WalWriter._registry_lock:
            leftover = WalWriter._registry.pop(os.path.join(root, "wal"), None)
        if leftover is not None:
            leftover.stop()
        shutil.rmtree(root, ignore_errors=True)


two_op = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 1), st.integers(1, 25), st.integers(0, 2)),
    st.tuples(st.just("truncate"), st.integers(0, 1), st.floats(0, 1)),
    st.tuples(st.just("reset"), st.integers(0, 1), st.integers(0, 300), st.integers(0, 3)),
    st.tuples(st.just("trim"), st.integers(0, 1), st.floats(0, 1.2)),
    st.tuples(st.just("reopen"), st.booleans()),
)


def _step(log: LogProvider, model: Model, step: tuple[Any, ...]) -> None:
    """Apply one of ``two_op``'s per-partition operations to ``log`` and ``model``."""
    kind = step[0]
    if kind == "append":
        append(log, model, step[2], step[3], False)
    elif kind == "truncate":
        if model.last > model.first:
            index = model.first + 1 + int(step[2] * (model.last - model.first))
            log.truncate(index)
            log.sync()
            del model.entries[index - model.first :]
    elif kind == "reset":
        position = LogPos(step[2], step[3])
        log.reset(position)
        log.sync()
        model.first, model.entries = position.index, [Entry(position.term)]
    else:
        index = model.first + int(step[2] * (model.last - model.first))
        log.trim(index)
        log.sync()
        new_first = log.first_index()
        assert model.first <= new_first <= max(model.first, min(index, model.last))
        del model.entries[: new_first - model.first]
        model.first = new_first


@pytest.mark.parametrize("keep_files", [0, 1, 2])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(two_op, max_size=30))
def test_two_wal_logs_sharing_a_writer_match_their_models(keep_files: int, ops: list[Any]) -> None:
    """Two open partitions interleave their records in one WAL of tiny files, so rotation
    keeps, expires, checkpoints and deletes files under both (``keep_files`` 0, 1 and 2);
    after every operation, and across clean restarts and kill -9 (the writer stops after its
    last fsync, no log is closed), each partition's log is exactly its model's."""
    root = tempfile.mkdtemp(prefix="waraft-wal-two-")
    options: dict[str, Any] = {"max_file_bytes": 500, "keep_files": keep_files}
    wal = os.path.join(root, "wal")

    def open_both() -> list[WalLog]:
        return [WalLog.open(f"{root}/kv.{i}", **options) for i in (1, 2)]

    logs = open_both()
    models = [Model(), Model()]
    try:
        for step in ops:
            if step[0] == "reopen":
                writer = logs[0]._writer
                if step[1]:
                    with WalWriter._registry_lock:
                        WalWriter._registry.pop(writer.directory, None)
                    writer.stop()
                else:
                    for log in logs:
                        log.close()
                logs = open_both()
            else:
                _step(logs[step[1]], models[step[1]], step)
            for log, model in zip(logs, models, strict=True):
                check(log, model)
        # What rotation left on disk is bounded: the active file, the kept ones, and one
        # whose deletion may still be pending.
        names = [n for n in os.listdir(wal) if not n.startswith(".")]
        assert len(names) <= keep_files + 3, names
    finally:
        with WalWriter._registry_lock:
            leftover = WalWriter._registry.pop(wal, None)
        if leftover is not None:
            leftover.stop()
        shutil.rmtree(root, ignore_errors=True)
