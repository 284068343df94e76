"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waraft.log.disk import DiskLog
from waraft.log.memory import MemoryLog
from waraft.log.provider import LogProvider

from .helpers import LogFactory


@pytest.fixture(params=["memory", "disk"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    """Opens a log of the parametrised provider in a per-test directory (closed afterwards)."""
    opened: list[LogProvider] = []

    def factory(**options: Any) -> LogProvider:
        log: LogProvider
        if request.param == "memory":
            log = MemoryLog.open(tmp_path)
        else:
            log = DiskLog.open(tmp_path, **options)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()
