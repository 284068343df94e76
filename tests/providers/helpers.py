"""Helpers shared by the provider tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from waraft.core.types import Config, Entry, Identity, Priority
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


def stop_wal_writers(under: Path) -> None:
    """Stop and forget the node WAL writers a test left running under ``under`` (each
    directory's writer is a process-wide singleton that would outlive the test)."""
    from waraft.log.wal import WalWriter

    with WalWriter._registry_lock:
        leftover = [w for d, w in WalWriter._registry.items() if d.startswith(str(under))]
        for writer in leftover:
            WalWriter._registry.pop(writer.directory, None)
    for writer in leftover:
        writer.stop()


class ApplyQueues:
    """The partition queues a storage actor's apply reports to, for tests that drive
    ``StorageServer._apply`` without its process: every report is dropped."""

    def fulfill_apply(self, count: int, size: int) -> None:
        pass

    def commits_finished(self, count: int, priority: Priority, applied: bool) -> None:
        pass

    def apply_queue_size(self) -> int:
        return 0
