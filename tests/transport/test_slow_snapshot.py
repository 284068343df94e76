"""A snapshot that takes longer than a storage call may wait (60 s: a partition of a few
million rows) is still made, sent and installed, once.

Here the storage-call timeouts are 1 s and the slow step takes 1.5 s. Installing used a call
with that deadline: the core heard "failed" and stayed stalled at its old position while
storage went on and finished the install, and every snapshot the leader sent after timed out
the same way. Making the leader's snapshot used one too: the catch-up gave up and retried for
good, each retry a new copy of the partition.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, ident, leader_of, state, wait_until
from tests.transport.helpers import on, receiver_ids, start
from tests.transport.test_catchup import _read, _write, cluster
from waraft import otp, storage, transport
from waraft.partition import server
from waraft.storage import StorageServer
from waraft.transport import snapshot_catchup

SLOW_S = 1.5  # the slow step, past the lowered 1 s call timeouts


def _join(tmp_path: Path, nodes: list[otp.Node]) -> otp.Node:
    leader = leader_of(nodes)
    assert leader is not None
    _write(leader, 40)
    newcomer = start(tmp_path, "n4")
    assert server.adjust_config(addr("server", leader), ("add", ident(newcomer)))[0] == "ok"
    return newcomer


def _caught_up(newcomer: otp.Node) -> None:
    """The newcomer follows with its core and its storage at the same position, and took up
    the first snapshot it received (no failed install before it)."""
    wait_until(lambda: state(newcomer) == "follower", timeout=30)
    wait_until(lambda: _read(newcomer, "k39") == ("ok", 39))
    core = server.status(addr("server", newcomer))["last_applied"]
    assert core == storage.status(addr("storage", newcomer))["last_applied"]
    first = min(receiver_ids(newcomer))
    assert on(newcomer, transport.transport_info, first, "status") == "completed"
    assert on(newcomer, transport.transport_info, first, "error") is None


def test_an_install_slower_than_a_storage_call_is_taken_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "STORAGE_TIMEOUT", 1.0)
    original = StorageServer._open_snapshot

    def slow(self: StorageServer, path: str, position: Any) -> Any:
        if "/n4/" in self.path:
            otp.blocking(time.sleep, SLOW_S)  # a large partition's install
        return original(self, path, position)

    monkeypatch.setattr(StorageServer, "_open_snapshot", slow)
    with cluster(tmp_path) as nodes:
        newcomer = _join(tmp_path, nodes)
        try:
            _caught_up(newcomer)
        finally:
            newcomer.stop()


def test_a_snapshot_slower_to_make_than_a_storage_call_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "STORAGE_TIMEOUT", 1.0)
    original = StorageServer._create_snapshot
    making: list[str] = []

    def slow(self: StorageServer, *args: Any) -> Any:
        making.append(self.name)
        otp.blocking(time.sleep, SLOW_S)  # a large partition's copy, made afresh every time
        return original(self, *args)

    monkeypatch.setattr(StorageServer, "_create_snapshot", slow)
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        newcomer = _join(tmp_path, nodes)
        try:
            wait_until(lambda: making)
            with leader.activate():
                started = time.monotonic()
                snapshot_catchup.state()
                answered_in = time.monotonic() - started
            _caught_up(newcomer)
            # The coordinator (node-wide) answered while the snapshot was being made.
            assert answered_in < SLOW_S / 2
        finally:
            newcomer.stop()
