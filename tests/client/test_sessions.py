"""Client sessions: an ambiguous attempt retried by the client applies once with sessions (and
twice without: the bug they fix); many clients built and closed from many threads share one
reference-counted distribution node."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.partition.helpers import addr, cluster
from tests.partition.test_sessions import CountingStorage
from waraft import distribution as dist
from waraft import otp, storage
from waraft.client import AT_MOST_ONCE, Client
from waraft.core import sessions
from waraft.core.types import LogPos

_ids = itertools.count(1)


class SlowFirstBump(CountingStorage):
    """Applies its first ``bump`` slowly, so the client's attempt times out and it retries
    the same request while the first copy is still being applied."""

    slowed: ClassVar[bool] = False

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        if type(command) is tuple and command[:1] == ("bump",) and not SlowFirstBump.slowed:
            SlowFirstBump.slowed = True
            time.sleep(0.8)
        return super().apply(command, position, label)


@pytest.fixture
def client_node() -> Iterator[otp.Node]:
    node = otp.Node(f"sclient{next(_ids)}@local")
    yield node
    node.stop()


@pytest.mark.parametrize("sessions", [True, False])
@pytest.mark.parametrize("pack", [True, False])
def test_a_retried_ambiguous_commit_applies_once_with_sessions(
    tmp_path: Path, client_node: otp.Node, sessions: bool, pack: bool
) -> None:
    SlowFirstBump.slowed = False
    with cluster(tmp_path, size=1, storage_module=SlowFirstBump) as nodes:
        c = Client(
            [n.id for n in nodes],
            table="test",
            partitions=1,
            node=client_node,
            attempt_timeout=0.2,
            timeout=10.0,
            sessions=sessions,
            pack=pack,
        )
        try:
            result = c.commit(1, ("bump", "test", "c"))
            assert c.stats()["retries"] >= 1  # the attempt was ambiguous and retried
            time.sleep(0.3)  # let any second copy apply
            value = c.read(1, ("read", "test", "c"))
            if sessions:
                assert result == ("ok", 1)
                assert value == ("ok", 1)
                # Later commits keep working in the same session.
                assert c.commit(1, ("bump", "test", "c")) == ("ok", 2)
            else:
                assert value[1] >= 2  # at-least-once: each retry applied again
        finally:
            c.close()


def test_many_clients_from_many_threads_share_one_counted_dist_node() -> None:
    if dist.is_started():
        pytest.skip("this process already runs a distribution node")
    clients: list[Client] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def make() -> None:
        try:
            c = Client(["nobody@127.0.0.1:1"], host="127.0.0.1", discover=False, timeout=0.5)
            with lock:
                clients.append(c)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and len(clients) == 8
    assert len({c.node_id for c in clients}) == 1
    try:
        clients[0].close()
        assert dist.is_started()  # the others still use it
        # A surviving client still works end to end: its request times out, no crash.
        assert clients[1].commit(1, ("write", "kv", "k", 1)) == ("error", "timeout")
        closers = [threading.Thread(target=c.close) for c in clients[1:]]
        for t in closers:
            t.start()
        for t in closers:
            t.join(20)
        assert not dist.is_started()
    finally:
        for c in clients:
            c.close()
        if dist.is_started():
            dist.stop()


def _stored_sessions(node: otp.Node) -> list[Any]:
    found = storage.read(
        addr("storage", node), ("read", storage.SESSIONS_TABLE, storage.SESSIONS_KEY)
    )
    return [] if found == "not_found" else list(found[1][1])


def test_close_forgets_the_clients_sessions_on_the_replicas(
    tmp_path: Path, client_node: otp.Node
) -> None:
    with cluster(tmp_path, size=1) as nodes:
        for i in range(3):  # short-lived clients, as a service that makes one per request
            with Client(
                [n.id for n in nodes], table="test", partitions=1, node=client_node, sessions=True
            ) as c:
                assert c.commit(1, ("write", "test", "k", i)) == "ok"
                assert len(_stored_sessions(nodes[0])) == 1
        assert _stored_sessions(nodes[0]) == []


def test_commit_async_from_a_callback_does_not_wait_for_the_session_register(
    tmp_path: Path, client_node: otp.Node
) -> None:
    """The register's answer comes through the client thread that runs callbacks: waiting
    for it there used to block that thread until the commit timed out."""
    with cluster(tmp_path, size=1) as nodes:
        c = Client(
            [n.id for n in nodes], table="test", partitions=1, node=client_node, sessions=True,
            timeout=3.0,
        )  # fmt: skip
        try:
            done = threading.Event()
            out: dict[str, Any] = {}

            def first(result: Any) -> None:
                out["first"] = result
                with c._session_locks[1]:
                    c._sessions.pop(1, None)  # the next commit must register again
                started = time.monotonic()
                c.commit_async(1, ("incr", "test", "n", 1), callback=second)
                out["blocked"] = time.monotonic() - started

            def second(result: Any) -> None:
                out["second"] = result
                done.set()

            c.commit_async(1, ("incr", "test", "n", 1), callback=first)
            assert done.wait(10)
            assert out["first"] == ("ok", 1) and out["second"] == ("ok", 2)
            assert out["blocked"] < 0.5
        finally:
            c.close()


def test_an_applied_commit_answered_acknowledged_is_an_unknown_outcome(
    tmp_path: Path, client_node: otp.Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: a request left unanswered while ``MAX_RESULTS_PER_SESSION`` newer ones of
    its session completed is answered ``session_seq_acknowledged`` at its retry although its
    first copy was applied; outside ``AT_MOST_ONCE`` that read "not applied at all", and a
    caller resubmitting as the contract allowed applied the command twice."""
    monkeypatch.setattr(sessions, "MAX_RESULTS_PER_SESSION", 4)  # 65,536 at a unit's size
    SlowFirstBump.slowed = False
    with cluster(tmp_path, size=1, storage_module=SlowFirstBump) as nodes:
        c = Client(
            [n.id for n in nodes], table="test", partitions=1, node=client_node,
            attempt_timeout=0.2, timeout=10.0, sessions=True,
        )  # fmt: skip
        try:
            assert c.commit(1, ("write", "test", "warm", 1)) == "ok"  # the session exists
            futures = c.commit_many([(1, ("bump", "test", "c")) for _ in range(6)])
            results = [f.result(10) for f in futures]
            time.sleep(0.3)  # any copy still in flight is applied
            assert c.read(1, ("read", "test", "c")) == ("ok", 6)  # each applied once
            assert sessions.ACKNOWLEDGED in results, results  # the first, retried after 4 newer
            assert all(r in AT_MOST_ONCE or r[0] == "ok" for r in results), results
        finally:
            c.close()
