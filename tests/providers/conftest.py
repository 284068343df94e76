"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from waraft.core.types import Config, Entry, Identity
from waraft.log.disk import DiskLog
from waraft.log.memory import MemoryLog
from waraft.log.provider import LogProvider

LogFactory = Callable[..., LogProvider]

A = Identity("raft_server_t_1", "a@host")
B = Identity("raft_server_t_1", "b@host")
C = Identity("raft_server_t_1", "c@host")


def make_config(*members: Identity, witness: tuple[Identity, ...] = ()) -> Config:
    everyone = tuple(sorted({*members, *witness}))
    return Config(1, tuple(sorted(members)), everyone, tuple(sorted(witness)))


def writes(first_key: int, count: int, term: int = 1) -> list[Entry]:
    """``count`` small write entries keyed ``first_key, first_key + 1, ...``."""
    return [Entry(term, k, ("write", "t", k, k * 10)) for k in range(first_key, first_key + count)]


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
