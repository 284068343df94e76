"""``status_all`` from client keys costs at most one collection per interval.

Each collection asks every local server for its status; the admin rate limit alone let a
client key have a node run 200 of them a second. Calls are delivered to a real admin process
on a real node of three partitions, as the receive thread delivers them (a ``RemoteReplyTo``
carrying the connection's rights), and the servers' status calls are counted."""

from __future__ import annotations

import queue
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, ident, start_node, wait_until
from waraft import otp
from waraft.cli import admin
from waraft.cli.admin import STATUS_CACHE_INTERVAL, StatusCache
from waraft.core.types import LogPos
from waraft.distribution import policy
from waraft.distribution.reply import RemoteReplyTo
from waraft.otp import messaging
from waraft.partition import acceptor, server

PARTITIONS = [1, 2, 3]
CLIENT_ONLY = frozenset({policy.CLIENT})
ADMIN = frozenset({policy.CLIENT, policy.ADMIN})


class Node:
    """A node running ``PARTITIONS`` (partition 1 bootstrapped) and the admin process, whose
    servers' status calls are counted in ``status_calls``."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.node = start_node(tmp_path, "n1", PARTITIONS)
        config = server.make_config([ident(self.node)])
        assert server.bootstrap(addr("server", self.node), LogPos(1, 1), config) == "ok"
        with self.node.activate():
            admin.start_link("test_app")
        self.status_calls = 0
        real = server.status

        def counted(name: Any, *args: Any, **kwargs: Any) -> Any:
            self.status_calls += 1
            return real(name, *args, **kwargs)

        monkeypatch.setattr(server, "status", counted)

    def remote(self, rights: frozenset[str]) -> list[dict[str, Any]]:
        """``status_all`` as a caller on another node whose connection has ``rights``."""
        answers: queue.Queue[tuple[bool, Any]] = queue.Queue()
        dist = types.SimpleNamespace(
            send_reply=lambda peer, ref, ok, value, run=None: answers.put((ok, value))
        )
        peer = types.SimpleNamespace(node_id="app.x@127.0.0.1:1")
        handle = RemoteReplyTo(dist, peer, 1, "client:app", rights)  # type: ignore[arg-type]
        pid = self.node.registry.whereis(admin.NAME)
        assert pid is not None
        messaging.send_request(pid, ("status_all",), handle)
        ok, value = answers.get(timeout=10)
        assert ok, value
        return list(value)

    def local(self) -> list[dict[str, Any]]:
        """``status_all`` as ``/metrics`` asks it, from the node itself."""
        with self.node.activate():
            return list(otp.call(admin.NAME, ("status_all",), 10.0))

    def commit(self) -> None:
        op = ("k", ("write", "test", "k", time.monotonic()))
        assert acceptor.commit(addr("acceptor", self.node), op) == "ok"


def _commit_of(rows: list[dict[str, Any]]) -> int:
    (row,) = [r for r in rows if r["partition"] == 1]
    commit: int = row["commit"]
    return commit


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    n = Node(tmp_path, monkeypatch)
    wait_until(lambda: _commit_of(n.local()) >= 1)
    yield n  # the suite's conftest stops every otp node


def test_client_calls_in_an_interval_share_one_collection(node: Node) -> None:
    time.sleep(STATUS_CACHE_INTERVAL)  # the fixture's collection is too old to be served
    before = node.status_calls
    started = time.monotonic()
    answers = [node.remote(CLIENT_ONLY) for _ in range(40)]
    elapsed = time.monotonic() - started
    # One collection asks each partition once; one more per interval the burst spanned.
    intervals = 1 + int(elapsed / STATUS_CACHE_INTERVAL)
    assert len(PARTITIONS) <= node.status_calls - before <= len(PARTITIONS) * intervals
    assert all(a == answers[0] for a in answers)
    assert sorted(r["partition"] for r in answers[0]) == PARTITIONS


def test_client_rows_are_at_most_an_interval_old_and_trusted_callers_refresh_them(
    node: Node,
) -> None:
    old = _commit_of(node.remote(CLIENT_ONLY))
    node.commit()
    # An admin key, and the node itself, are told now; each is a new collection, which the
    # client callers after it are served without one of their own.
    before = node.status_calls
    assert _commit_of(node.remote(ADMIN)) > old
    assert _commit_of(node.local()) > old
    assert node.status_calls - before == 2 * len(PARTITIONS)
    fresh = _commit_of(node.local())
    before = node.status_calls
    assert _commit_of(node.remote(CLIENT_ONLY)) == fresh
    assert node.status_calls == before
    # Once the interval has passed, a client call collects again and sees the new commit.
    node.commit()
    time.sleep(STATUS_CACHE_INTERVAL)
    assert _commit_of(node.remote(CLIENT_ONLY)) > fresh
    assert node.status_calls - before == len(PARTITIONS)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_collects_once_per_interval_and_whenever_asked_fresh() -> None:
    clock = FakeClock()
    made: list[float] = []

    def collect() -> list[dict[str, Any]]:
        made.append(clock.now)
        return [{"collection": len(made)}]

    cache = StatusCache(collect, interval=1.0, clock=clock)
    assert [cache.get() for _ in range(50)] == [[{"collection": 1}]] * 50
    clock.now = 0.999
    assert cache.get() == [{"collection": 1}]
    clock.now = 1.0
    assert cache.get() == [{"collection": 2}]
    clock.now = 1.5
    assert cache.get(fresh=True) == [{"collection": 3}]
    clock.now = 2.4  # 0.9 s after the fresh one, which the next callers share
    assert cache.get() == [{"collection": 3}]
    assert made == [0.0, 1.0, 1.5] and cache.collections == 3


def test_only_client_keys_are_served_the_cached_rows() -> None:
    def remote(rights: frozenset[str]) -> RemoteReplyTo:
        return RemoteReplyTo(None, None, 1, None, rights)  # type: ignore[arg-type]

    assert not admin.wants_fresh_status(remote(CLIENT_ONLY))
    assert not admin.wants_fresh_status(remote(frozenset()))
    assert admin.wants_fresh_status(remote(ADMIN))
    assert admin.wants_fresh_status(remote(frozenset({policy.MEMBER, policy.CLIENT})))
    assert admin.wants_fresh_status(remote(policy.RIGHTS))  # no keys: every sender has all
    assert admin.wants_fresh_status(None)  # a local caller
