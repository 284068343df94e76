"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waraft.log.disk import DiskLog
from waraft.log.memory import MemoryLog
from waraft.log.provider import LogProvider
from waraft.log.wal import WalLog

from .helpers import LogFactory


@pytest.fixture(params=["memory", "disk", "wal"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    """Opens a log of the parametrised provider in a per-test directory (closed afterwards)."""
    opened: list[LogProvider] = []

    def factory(**options: Any) -> LogProvider:
        log: LogProvider
        if request.param == "memory":
            log = MemoryLog.open(tmp_path)
        elif request.param == "wal":
            log = WalLog.open(tmp_path / "kv.1")  # the node's WAL in tmp_path/wal
        else:
            log = DiskLog.open(tmp_path, **options)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()
