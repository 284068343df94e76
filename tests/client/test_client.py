"""waraft.client against in-process clusters (no sockets): routing, batching, redirects,
retries, deadlines and close."""

from __future__ import annotations

import contextlib
import itertools
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import cluster, leader_of, wait_until
from waraft import otp
from waraft.client import Client, partition_for, stable_hash

_ids = itertools.count(1)


class _Results:
    """A ``commit_many`` callback collecting results by index (``got``); ``wait`` returns once
    ``expected`` results arrived (False on timeout)."""

    def __init__(self, expected: int) -> None:
        self.got: dict[int, object] = {}
        self._expected = expected
        self._finished = threading.Event()

    def __call__(self, i: int, result: object) -> None:
        self.got[i] = result
        if len(self.got) == self._expected:
            self._finished.set()

    def wait(self, timeout: float) -> bool:
        return self._finished.wait(timeout)


def test_stable_hash_is_crc32_of_the_key_bytes() -> None:
    assert stable_hash("user:1") == zlib.crc32(b"user:1")
    assert stable_hash(b"user:1") == stable_hash("user:1")
    assert stable_hash(("a", 1)) == stable_hash(("a", 1))
    assert partition_for("user:1", 4) == zlib.crc32(b"user:1") % 4 + 1


def test_keys_spread_over_every_partition() -> None:
    seen = {partition_for(f"key{i}", 4) for i in range(200)}
    assert seen == {1, 2, 3, 4}


@pytest.fixture
def client_node() -> Iterator[otp.Node]:
    node = otp.Node(f"client{next(_ids)}@local")
    yield node
    node.stop()


def _client(nodes: list[otp.Node], client_node: otp.Node, **kw: object) -> Client:
    return Client(
        [n.id for n in nodes],
        table="test",
        partitions=1,
        node=client_node,
        **kw,  # type: ignore[arg-type]
    )


def test_partition_numbers_are_checked(tmp_path: Path, client_node: otp.Node) -> None:
    c = Client(["x@local"], table="test", partitions=2, node=client_node, discover=False)
    try:
        assert c.partition_of(2) == 2
        assert c.partition_of("k") in (1, 2)
        with pytest.raises(ValueError):
            c.partition_of(3)
    finally:
        c.close()


def test_commits_and_reads_with_many_in_flight(tmp_path: Path, client_node: otp.Node) -> None:
    with cluster(tmp_path) as nodes:
        c = _client(nodes, client_node)
        try:
            futures = [c.commit_async(1, ("write", "test", f"k{i}", i)) for i in range(300)]
            assert [f.result(10) for f in futures] == ["ok"] * 300
            reads = [c.read_async(1, ("read", "test", f"k{i}")) for i in range(0, 300, 7)]
            assert [f.result(10) for f in reads] == [("ok", i) for i in range(0, 300, 7)]
            assert c.read(1, ("read", "test", "nope")) == "not_found"
            stats = c.stats()
            # Natural batching: far fewer frames than requests.
            assert stats["batches"] < stats["requests"]
            assert c.leader(1) == leader_of(nodes).id  # type: ignore[union-attr]
        finally:
            c.close()


def test_a_follower_redirects_to_the_leader(tmp_path: Path, client_node: otp.Node) -> None:
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        follower = next(n for n in nodes if n is not leader)
        c = _client([follower], client_node, discover=False)
        try:
            assert c.commit(1, ("write", "test", "a", 1)) == "ok"
            assert c.stats()["redirects"] >= 1
            assert c.leader(1) == leader.id  # type: ignore[union-attr]
        finally:
            c.close()


def test_a_stopped_leader_is_replaced_and_requests_retried(
    tmp_path: Path, client_node: otp.Node
) -> None:
    with cluster(tmp_path) as nodes:
        c = _client(nodes, client_node, attempt_timeout=0.5, timeout=15.0)
        try:
            assert c.commit(1, ("write", "test", "before", 1)) == "ok"
            old = leader_of(nodes)
            assert old is not None
            old.stop()
            rest = [n for n in nodes if n is not old]
            futures = [c.commit_async(1, ("write", "test", f"after{i}", i)) for i in range(20)]
            assert [f.result(20) for f in futures] == ["ok"] * 20
            new = wait_until(lambda: leader_of(rest))
            assert c.leader(1) == new.id
            assert c.read(1, ("read", "test", "before")) == ("ok", 1)
        finally:
            c.close()


def test_requests_to_nowhere_time_out(client_node: otp.Node) -> None:
    c = Client(
        ["ghost@local"],
        table="test",
        partitions=1,
        node=client_node,
        discover=False,
        attempt_timeout=0.2,
        timeout=0.6,
    )
    try:
        assert c.commit(1, ("write", "test", "k", 1)) == ("error", "timeout")
        assert c.read(1, ("read", "test", "k"), timeout=0.3) == ("error", "timeout")
    finally:
        c.close()


def test_close_answers_open_requests(client_node: otp.Node) -> None:
    c = Client(["ghost@local"], table="test", partitions=1, node=client_node, discover=False)
    future = c.commit_async(1, ("write", "test", "k", 1))
    c.close()
    assert future.result(5) == ("error", "closed")
    assert c.commit_async(1, ("write", "test", "k", 2)).result(5) == ("error", "closed")
    c.close()  # idempotent


def test_requests_a_stuck_sender_holds_at_close_are_answered_when_it_stops(
    client_node: otp.Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    from waraft import client as client_module

    monkeypatch.setattr(client_module, "CLOSE_JOIN_TIMEOUT", 0.2)
    c = Client(["ghost@local"], table="test", partitions=1, node=client_node, discover=False)
    gate, entered = threading.Event(), threading.Event()
    real = c._dispatch

    def stuck(*args: object) -> None:
        entered.set()
        gate.wait(10)  # a send that hangs past close's wait for the sender
        real(*args)  # type: ignore[arg-type]

    c._dispatch = stuck  # type: ignore[method-assign]
    future = c.commit_async(1, ("write", "test", "k", 1))
    assert future is not None and entered.wait(5)
    c.close()  # returns after CLOSE_JOIN_TIMEOUT, the request still in the sender's hands
    assert not future.done()
    gate.set()
    assert future.result(5) == ("error", "closed")


def test_a_crashed_sender_answers_open_and_later_requests(client_node: otp.Node) -> None:
    c = Client(["ghost@local"], table="test", partitions=1, node=client_node, discover=False)
    try:

        def crash(*args: object) -> None:
            raise RuntimeError("a bug in the sender")

        c._dispatch = crash  # type: ignore[method-assign]
        first = c.commit_async(1, ("write", "test", "k", 1))
        assert first is not None and first.result(5) == ("error", "client_failed")
        later = c.commit_async(1, ("write", "test", "k", 2))
        assert later is not None and later.result(0.5) == ("error", "client_failed")
    finally:
        c.close()


def test_in_flight_requests_per_partition_are_capped(tmp_path: Path, client_node: otp.Node) -> None:
    with cluster(tmp_path) as nodes:
        c = _client(nodes, client_node, max_inflight=5, discover=False)
        try:
            futures = [c.commit_async(1, ("write", "test", f"c{i}", i)) for i in range(60)]
            assert [f.result(20) for f in futures] == ["ok"] * 60
            stats = c.stats()
            # Never more than 5 requests out at once: at least 60 / 5 frames went out.
            assert stats["batches"] >= 12 and stats["queued"] == 0
            assert stats["items_sent"] - stats["retries"] == 60
        finally:
            c.close()


@pytest.mark.parametrize("pack", [True, False])
def test_packing_puts_a_burst_of_commits_in_one_log_entry(
    tmp_path: Path, client_node: otp.Node, pack: bool
) -> None:
    from tests.partition.helpers import addr
    from waraft.partition import server

    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        c = _client(nodes, client_node, pack=pack)
        try:
            assert c.commit(1, ("write", "test", "warm", 0)) == "ok"  # leader found
            before = server.status(addr("server", leader))["log_last"]
            futures = [c.commit_async(1, ("write", "test", i, i)) for i in range(300)]
            assert [f.result(10) for f in futures] == ["ok"] * 300
            reads = [c.read_async(1, ("read", "test", i)) for i in range(300)]
            assert [f.result(10) for f in reads] == [("ok", i) for i in range(300)]
            assert c.read(1, ("read", "test", "nope")) == "not_found"
            entries = server.status(addr("server", leader))["log_last"] - before
        finally:
            c.close()
        if pack:
            assert entries < 60  # a few frames' worth, far fewer than the 300 commits
        else:
            assert entries >= 300


def test_callbacks_replace_futures(tmp_path: Path, client_node: otp.Node) -> None:

    with cluster(tmp_path) as nodes:
        c = _client(nodes, client_node)
        try:
            on_result = _Results(200)
            got = on_result.got

            ops = [(1, ("write", "test", f"c{i}", i)) for i in range(200)]
            assert c.commit_many(ops, callback=on_result) == []
            assert on_result.wait(10)
            assert got == dict.fromkeys(range(200), "ok")
            box: list[object] = []
            done = threading.Event()
            returned = c.read_async(
                1, ("read", "test", "c7"), callback=lambda r: (box.append(r), done.set())
            )
            assert returned is None and done.wait(10) and box == [("ok", 7)]
        finally:
            c.close()


class _FakeGateway(otp.Process):
    """A partition's acceptor stand-in: ``mode`` "swallow" never answers (a leader cut off
    from its followers: it appends and waits for a quorum that never comes), "pause" swallows
    one batch then leads, "redirect"
    answers every request ``not_leader`` naming ``hint`` (a follower that has not noticed yet
    that its leader is gone), "cancel" answers ``cancelled`` naming ``hint`` (a deposed leader
    whose appended entry was replaced by a snapshot), "lead" answers ``ok``."""

    def init(self, mode: str, hint: str | None, seen: list[str]) -> None:
        self.mode, self.hint, self.seen = mode, hint, seen

    def handle_cast(self, msg: object) -> None:
        assert isinstance(msg, tuple) and msg[0] == "client_batch"
        _, reply_to, batch_id, _kind, items, _priority = msg
        self.seen.append(self.mode)
        if self.mode == "swallow":
            return
        if self.mode == "pause":  # a leader SIGSTOPped for one batch, then back
            self.mode = "lead"
            return
        if self.mode == "redirect":
            results = [("error", "not_leader")] * len(items)
        elif self.mode == "cancel":
            results = [("error", "cancelled")] * len(items)
        else:
            results = ["ok"] * len(items)
        otp.cast(reply_to, ("client_reply", batch_id, results, self.hint))


def test_a_follower_naming_a_leader_that_just_failed_is_not_followed(
    client_node: otp.Node,
) -> None:
    """The old leader is cut off from its followers but not from the client; until they elect
    another one, the followers still name it. Going back to it on their word costs an attempt
    timeout per try; the client asks the other nodes instead and finds the new leader after
    ONE attempt timeout."""
    from waraft.partition import acceptor

    nodes = [otp.Node(f"fake{next(_ids)}@local") for _ in range(3)]
    old, follower, new = (n.id for n in nodes)
    seen: list[str] = []
    name = acceptor.default_name("test", 1)
    for node, mode, hint in zip(
        nodes, ("swallow", "redirect", "lead"), (None, old, new), strict=True
    ):
        otp.start(_FakeGateway, mode, hint, seen, name=name, node=node)
    c = Client(
        [old, new, follower],  # round robin after the old leader's timeout: follower first
        table="test",
        partitions=1,
        node=client_node,
        discover=False,
        attempt_timeout=0.3,
        timeout=5.0,
    )
    try:
        assert c.commit(1, ("write", "test", "k", 1)) == "ok"
        stats = c.stats()
        assert seen[0] == "swallow" and seen.count("swallow") == 1, seen
        assert stats["attempt_timeouts"] == 1 and stats["stale_hints"] >= 1, stats
        assert c.leader(1) == new
    finally:
        c.close()
        for node in nodes:
            node.stop()


def test_a_cancelled_commit_is_asked_again_and_never_answered_cancelled(
    client_node: otp.Node,
) -> None:
    """``cancelled`` answers an appended entry its replica gave up on (truncated, replaced by
    a snapshot, the server stopped): it may have been applied (a review saw one inside the
    very snapshot that cancelled it). The client asks the leader the answer names, and a
    commit that never gets another answer ends ``timeout``, not ``cancelled``, which read as
    "not applied" and invited a second apply."""
    from waraft.partition import acceptor

    nodes = [otp.Node(f"fake{next(_ids)}@local") for _ in range(3)]
    deposed, new, alone = (n.id for n in nodes)
    seen: list[str] = []
    name = acceptor.default_name("test", 1)
    for node, mode, hint in zip(nodes, ("cancel", "lead", "cancel"), (new, new, None), strict=True):
        otp.start(_FakeGateway, mode, hint, seen, name=name, node=node)
    redirected = Client(
        [deposed, new], table="test", partitions=1, node=client_node, discover=False
    )
    stuck = Client([alone], table="test", partitions=1, node=client_node, discover=False)
    try:
        redirected._set_leader(1, deposed)
        assert redirected.commit(1, ("write", "test", "k", 1), timeout=5.0) == "ok"
        assert seen[:2] == ["cancel", "lead"], seen
        assert stuck.commit(1, ("write", "test", "k", 1), timeout=0.5) == ("error", "timeout")
        assert stuck.stats()["retries"] >= 1
    finally:
        redirected.close()
        stuck.close()
        for node in nodes:
            node.stop()


@contextlib.contextmanager
def _stalling_leader_and_redirecting_follower(
    client_node: otp.Node, **kw: object
) -> Iterator[tuple[Client, list[str]]]:
    """A client (0.3 s attempts, 5 s deadline) of two fake gateways of partition 1: the leader
    swallows the first frame (a pause) and answers the rest, the follower redirects to the
    leader; ``seen`` records what each did. Closed and stopped on exit."""
    from waraft.partition import acceptor

    nodes = [otp.Node(f"fake{next(_ids)}@local") for _ in range(2)]
    leader, follower = (n.id for n in nodes)
    seen: list[str] = []
    name = acceptor.default_name("test", 1)
    for node, mode in zip(nodes, ("pause", "redirect"), strict=True):
        otp.start(_FakeGateway, mode, leader, seen, name=name, node=node)
    c = Client(
        [leader, follower],
        table="test",
        partitions=1,
        node=client_node,
        discover=False,
        attempt_timeout=0.3,
        timeout=5.0,
        **kw,  # type: ignore[arg-type]
    )
    try:
        yield c, seen
    finally:
        c.close()
        for node in nodes:
            node.stop()


def test_a_leader_back_from_a_short_pause_is_followed_again(
    client_node: otp.Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader paused for less than an election timeout is still the leader when it resumes,
    and its followers keep naming it: past STALE_HINT their hint is followed again, even while
    the node is still avoided as a suspect (made to last the whole test here)."""
    from waraft import client as client_module

    monkeypatch.setattr(client_module, "STALE_HINT", 0.05)
    monkeypatch.setattr(client_module, "SUSPECT_FOR", 60.0)
    with _stalling_leader_and_redirecting_follower(client_node) as (c, seen):
        assert c.commit(1, ("write", "test", "k", 1)) == "ok"
        assert seen[0] == "pause" and seen[-1] == "lead" and "redirect" in seen, seen
        assert c.stats()["attempt_timeouts"] == 1


class _ScriptedGateway(otp.Process):
    """An acceptor stand-in that records the commands it gets and answers each with
    ``answer(command)``; a packed ``$batch`` entry is answered as a leader does, with one
    result that is the list of its commands' results. ``answer`` returning None swallows the
    whole batch (a leader that never answers)."""

    def init(self, partition: int, log: list[tuple[int, object]], answer: object) -> None:
        self.partition, self.log, self.answer = partition, log, answer

    def handle_cast(self, msg: object) -> None:
        from waraft.services import codec
        from waraft.storage import BATCH

        assert isinstance(msg, tuple) and msg[0] == "client_batch"
        _, reply_to, batch_id, kind, items, _priority = msg
        commands = [item[1] if kind == "commit" else item for item in items]
        packed = len(commands) == 1 and type(commands[0]) is tuple and commands[0][0] == BATCH
        if packed:
            commands = list(codec.unpackb(commands[0][1]))
        self.log.extend((self.partition, tuple(c)) for c in commands)
        answers = [self.answer(tuple(c)) for c in commands]  # type: ignore[operator]
        if any(a is None for a in answers):
            return
        results = [answers] if packed else answers
        otp.cast(reply_to, ("client_reply", batch_id, results, None))


@contextlib.contextmanager
def _scripted(
    client_node: otp.Node, partitions: int, answer: object, **kw: object
) -> Iterator[tuple[Client, list[tuple[int, object]]]]:
    """A client of ``partitions`` scripted gateways on one node (``answer`` gives each
    command's result; None leaves its frame unanswered); closed and stopped on exit."""
    from waraft.partition import acceptor

    node = otp.Node(f"scripted{next(_ids)}@local")
    log: list[tuple[int, object]] = []
    for p in range(1, partitions + 1):
        otp.start(
            _ScriptedGateway, p, log, answer, name=acceptor.default_name("test", p), node=node
        )
    c = Client(
        [node.id],
        table="test",
        partitions=partitions,
        node=client_node,
        discover=False,
        **kw,  # type: ignore[arg-type]
    )
    try:
        yield c, log
    finally:
        c.close()
        node.stop()


@pytest.mark.parametrize("pack", [True, False])
def test_commit_many_routes_every_key_as_partition_for_does(
    client_node: otp.Node, pack: bool
) -> None:
    with _scripted(client_node, 4, lambda cmd: ("ok", cmd[2]), pack=pack) as (c, log):
        keys: list[object] = [f"key{i}" for i in range(40)] + ["ключ", b"raw", ("t", 1), 3]
        futures = c.commit_many([(k, ("write", "test", i)) for i, k in enumerate(keys)])
        # Futures come back in the caller's order, though routing grouped them by partition.
        assert [f.result(5) for f in futures] == [("ok", i) for i in range(len(keys))]
        got = {cmd[2]: partition for partition, cmd in log}  # type: ignore[index]
        want = {i: (k if type(k) is int else partition_for(k, 4)) for i, k in enumerate(keys)}
        assert got == want
        assert len(set(want.values())) == 4


@pytest.mark.parametrize("pack", [True, False])
def test_each_request_of_a_reply_gets_its_own_result_or_error(
    client_node: otp.Node, pack: bool
) -> None:
    """One reply mixing results and final errors: every request gets exactly its own, through
    futures (waited on, with done-callbacks, already done) and through callbacks."""

    def answer(cmd: tuple[object, ...]) -> object:
        i = cmd[2]
        assert isinstance(i, int)
        return ("error", ("badarg", i)) if i % 3 == 0 else ("ok", i)

    def want(i: int) -> object:
        return ("error", ("badarg", i)) if i % 3 == 0 else ("ok", i)

    with _scripted(client_node, 1, answer, pack=pack) as (c, log):
        futures = c.commit_many([(1, ("write", "test", i)) for i in range(30)])
        seen: dict[int, object] = {}
        for i, f in enumerate(futures[:10]):
            f.add_done_callback(lambda fut, i=i: seen.__setitem__(i, fut.result()))
        assert [f.result(5) for f in futures] == [want(i) for i in range(30)]
        assert seen == {i: want(i) for i in range(10)}
        on_result = _Results(30)
        got = on_result.got

        c.commit_many([(1, ("write", "test", 100 + i)) for i in range(30)], callback=on_result)
        assert on_result.wait(5)
        assert got == {i: want(100 + i) for i in range(30)}
        assert len(log) == 60  # final errors are not retried


def test_a_late_request_times_out_while_its_frame_mates_wait(client_node: otp.Node) -> None:
    """Requests with different deadlines in one frame to a leader that never answers: each
    times out at its own deadline, not at the frame's attempt timeout or a frame mate's."""
    import time

    from waraft.client import _Request

    with _scripted(client_node, 1, lambda cmd: None, attempt_timeout=30.0, timeout=30.0) as (
        c,
        log,
    ):
        now = time.monotonic()
        long = _Request(1, "commit", ("write", "test", "long"), "high", now + 20.0)
        short = _Request(1, "commit", ("write", "test", "short"), "high", now + 0.3)
        c._enqueue([long, short])  # one queue operation: one frame
        assert short.future is not None and long.future is not None
        assert short.future.result(3) == ("error", "timeout")
        assert time.monotonic() - now < 2.0
        assert not long.future.done()
        assert c.stats()["batches"] == 1 and len(log) == 2


def test_commit_many_checks_partition_numbers(client_node: otp.Node) -> None:
    c = Client(["x@local"], table="test", partitions=1, node=client_node, discover=False)
    try:
        with pytest.raises(ValueError):
            c.commit_many([("k", ("write", "test", 1)), (2, ("write", "test", 2))])
    finally:
        c.close()


@pytest.mark.parametrize("use_callback", [True, False])
def test_a_burst_is_split_by_the_in_flight_cap_and_the_frame_size(
    client_node: otp.Node, use_callback: bool
) -> None:

    with _scripted(client_node, 1, lambda cmd: ("ok", cmd[2]), max_inflight=700, max_batch=300) as (
        c,
        log,
    ):
        ops = [(1, ("write", "test", i)) for i in range(2500)]
        if use_callback:
            on_result = _Results(len(ops))
            got = on_result.got

            c.commit_many(ops, callback=on_result)
            assert on_result.wait(10)
            results = [got[i] for i in range(len(ops))]
        else:
            results = [f.result(10) for f in c.commit_many(ops)]
        assert results == [("ok", i) for i in range(len(ops))]
        assert [cmd[2] for _, cmd in log] == list(range(len(ops)))  # type: ignore[index]
        stats = c.stats()
        # At most 700 out at once, at most 300 a frame: 2500 / 300 -> at least 9 frames.
        assert 9 <= stats["batches"] <= 100, stats
        assert stats["items_sent"] == 2500 and stats["queued"] == 0
        assert stats["requests"] == 2500


@pytest.mark.parametrize("max_batch", [1000, 1])
def test_a_partition_with_two_batches_in_flight_gathers_its_next_requests_into_one(
    client_node: otp.Node, max_batch: int
) -> None:
    from waraft.client import GATHER_AT

    gate = threading.Event()

    def answer(cmd: tuple[object, ...]) -> object:
        gate.wait(10)  # the gateway holds every frame until the test opens the gate
        return ("ok", cmd[2])

    def held() -> int:
        return sum(len(entries) for entries in c._held.values())

    with _scripted(client_node, 1, answer, max_batch=max_batch) as (c, log):
        futures = [c.commit_async(1, ("write", "test", 0))]
        wait_until(lambda: c.stats()["batches"] == 1, 5)
        futures.append(c.commit_async(1, ("write", "test", 1)))
        wait_until(lambda: c.stats()["batches"] == 2, 5)
        futures += [c.commit_async(1, ("write", "test", i)) for i in range(2, 12)]
        if max_batch == 1:  # no batching wanted: nothing is held back
            wait_until(lambda: c.stats()["batches"] == 12, 5)
        else:
            wait_until(lambda: held() == 10, 5)
            assert c.stats()["batches"] == 2 and c.stats()["partition_holds"] >= 1
        # Enough waiting (GATHER_AT) go without waiting for a batch to return, together.
        more = GATHER_AT - 10
        futures += [c.commit_async(1, ("write", "test", i)) for i in range(12, 12 + more)]
        batches = 3 if max_batch > 1 else 12 + more
        wait_until(lambda: c.stats()["batches"] == batches and held() == 0, 5)
        gate.set()
        results = [f.result(5) for f in futures if f is not None]
        assert results == [("ok", i) for i in range(12 + more)]
        assert c.stats()["batches"] == batches
        assert sorted(cmd[2] for _, cmd in log) == list(range(12 + more))  # type: ignore[index]


def test_gathered_reads_and_commits_never_share_a_batch(client_node: otp.Node) -> None:
    from waraft.client import GATHER_AT

    gate = threading.Event()
    kinds: list[str] = []

    def answer(cmd: tuple[object, ...]) -> object:
        gate.wait(10)
        return ("ok", cmd[2])

    with _scripted(client_node, 1, answer) as (c, log):
        real_cast = c._cast

        def recording_cast(address: tuple[str, str], msg: Any, payload: Any = None) -> bool:
            kinds.append(msg[3])  # ("client_batch", reply_to, batch_id, kind, items, priority)
            return real_cast(address, msg, payload)

        c._cast = recording_cast  # type: ignore[method-assign]
        futures = [c.commit_async(1, ("write", "test", i)) for i in range(2)]
        wait_until(lambda: c.stats()["batches"] >= 1, 5)
        futures.append(c.commit_async(1, ("write", "test", 2)))
        wait_until(lambda: c.stats()["batches"] >= 2, 5)
        reads = [c.read_async(1, ("read", "test", 100 + i)) for i in range(5)]
        wait_until(lambda: sum(len(h) for h in c._held.values()) >= 5, 5)
        # Commits join the held reads ten at a time; once GATHER_AT commits wait they go,
        # as one batch of commits, without the reads.
        chunks = -(-GATHER_AT // 10)
        for n in range(chunks):
            futures += [c.commit_async(1, ("write", "test", 3 + 10 * n + i)) for i in range(10)]
            if n < chunks - 1:
                wait_until(lambda n=n: sum(len(h) for h in c._held.values()) == 15 + 10 * n, 5)
        wait_until(lambda: kinds.count("commit") >= 3, 5)
        assert "read" not in kinds and sum(len(h) for h in c._held.values()) == 5
        gate.set()
        assert all(f is not None and f.result(5)[0] == "ok" for f in futures + reads)
        assert kinds.count("read") >= 1
        assert sorted(cmd[2] for _, cmd in log if cmd[0] == "read") == [100 + i for i in range(5)]  # type: ignore[index]


@pytest.mark.parametrize("pack", [True, False])
def test_commands_of_a_burst_rejected_as_overload_are_retried_one_by_one(
    client_node: otp.Node, pack: bool
) -> None:
    """A leader that is full answers some commands of a frame ``commit_queue_full``: those,
    and only those, are sent again (each still answered once, with its own result)."""
    tries: dict[object, int] = {}

    def answer(cmd: tuple[object, ...]) -> object:
        i = cmd[2]
        tries[i] = tries.get(i, 0) + 1
        assert isinstance(i, int)
        return ("error", "commit_queue_full") if i % 4 == 0 and tries[i] == 1 else ("ok", i)

    with _scripted(client_node, 1, answer, pack=pack) as (c, _log):
        futures = c.commit_many([(1, ("write", "test", i)) for i in range(200)])
        assert [f.result(10) for f in futures] == [("ok", i) for i in range(200)]
        assert tries == {i: 2 if i % 4 == 0 else 1 for i in range(200)}
        assert c.stats()["retries"] == 50


@pytest.mark.parametrize("use_callback", [True, False])
def test_a_burst_to_a_leader_that_never_answers_times_out(
    client_node: otp.Node, use_callback: bool
) -> None:
    import time

    with _scripted(client_node, 1, lambda cmd: None, attempt_timeout=30.0) as (c, log):
        ops = [(1, ("write", "test", i)) for i in range(50)]
        started = time.monotonic()
        if use_callback:
            on_result = _Results(len(ops))
            got = on_result.got

            c.commit_many(ops, timeout=0.3, callback=on_result)
            assert on_result.wait(5)
            results = [got[i] for i in range(len(ops))]
        else:
            results = [f.result(5) for f in c.commit_many(ops, timeout=0.3)]
        assert results == [("error", "timeout")] * len(ops)
        assert time.monotonic() - started < 2.0
        assert len(log) == 50


def test_a_burst_in_flight_to_a_leader_that_stalls_is_retried_elsewhere(
    client_node: otp.Node,
) -> None:
    """The leader swallows the first frame (a pause) and then answers: the frame's attempt
    times out and its commands are sent again, each answered once."""
    with _stalling_leader_and_redirecting_follower(client_node, pack=False) as (c, seen):
        futures = c.commit_many([(1, ("write", "test", i)) for i in range(100)])
        assert [f.result(10) for f in futures] == ["ok"] * 100
        assert seen[0] == "pause" and seen[-1] == "lead", seen
        assert c.stats()["attempt_timeouts"] == 1


def test_close_answers_a_burst_in_flight_and_held(client_node: otp.Node) -> None:

    with _scripted(client_node, 1, lambda cmd: None, max_inflight=10, max_batch=4) as (c, log):
        futures = c.commit_many([(1, ("write", "test", i)) for i in range(30)])
        on_result = _Results(5)
        got = on_result.got

        c.commit_many([(1, ("write", "test", 100 + i)) for i in range(5)], callback=on_result)
        assert wait_until(lambda: len(log) == 10, 5)  # 10 in flight, 25 held
        c.close()
        assert [f.result(5) for f in futures] == [("error", "closed")] * 30
        assert on_result.wait(5) and got == dict.fromkeys(range(5), ("error", "closed"))


@pytest.mark.parametrize("failing", [None, 7, 2])
def test_a_frame_of_several_bursts_and_single_requests_answers_each_its_own(
    client_node: otp.Node, failing: int | None
) -> None:
    """Several bursts and a lone request queued together leave in ONE frame; each command
    gets its own result, also when one of them fails (in either kind of entry)."""
    import time

    from waraft.client import Future, _Group, _Request

    def answer(cmd: tuple[object, ...]) -> object:
        return ("error", "boom") if cmd[2] == failing else ("ok", cmd[2])

    with _scripted(client_node, 1, answer) as (c, log):
        deadline = time.monotonic() + 5.0
        futures = [Future() for _ in range(10)]
        entries = [
            _Group(1, [("write", "test", i) for i in range(5)], range(5), "high", deadline,
                   None, futures[:5]),
            _Request(1, "commit", ("write", "test", 5), "high", deadline, future=futures[5]),
            _Group(1, [("write", "test", i) for i in range(6, 10)], [6, 7, 8, 9], "high",
                   deadline, None, futures[6:]),
        ]  # fmt: skip
        c._enqueue(entries)
        want = [("error", "boom") if i == failing else ("ok", i) for i in range(10)]
        assert [f.result(5) for f in futures] == want
        assert c.stats()["batches"] == 1 and len(log) == 10


def test_a_burst_late_in_a_frame_that_stays_in_flight_is_answered_once(
    client_node: otp.Node,
) -> None:
    """A burst whose deadline passes while its frame waits for a frame mate's later deadline
    is answered ``timeout`` at its deadline, and never again when the frame itself expires."""
    import time

    from waraft.client import _Group, _Request

    with _scripted(client_node, 1, lambda cmd: None, attempt_timeout=30.0) as (c, _log):
        calls: list[tuple[int, object]] = []
        now = time.monotonic()
        burst = _Group(
            1, [("write", "test", i) for i in range(5)], range(5), "high", now + 0.2,
            lambda i, r: calls.append((i, r)), None,
        )  # fmt: skip
        lone = _Request(1, "commit", ("write", "test", "lone"), "high", now + 0.8)
        c._enqueue([burst, lone])
        assert wait_until(lambda: len(calls) == 5, 3)
        assert lone.future is not None and lone.future.result(3) == ("error", "timeout")
        time.sleep(0.3)  # the frame expired with the lone request: nothing more arrives
        assert sorted(calls) == [(i, ("error", "timeout")) for i in range(5)]
        assert c.stats()["batches"] == 1


def test_a_burst_goes_one_command_a_frame_when_max_batch_is_one(client_node: otp.Node) -> None:
    with _scripted(client_node, 1, lambda cmd: ("ok", cmd[2]), max_batch=1) as (c, log):
        futures = c.commit_many([(1, ("write", "test", i)) for i in range(20)])
        futures.append(c.commit_async(1, ("write", "test", 20)))  # type: ignore[arg-type]
        assert [f.result(5) for f in futures] == [("ok", i) for i in range(21)]
        stats = c.stats()
        assert stats["batches"] == 21 and stats["items_sent"] == 21 and len(log) == 21


def test_a_bad_key_in_a_session_burst_takes_no_seq(client_node: otp.Node) -> None:
    """With sessions, ``commit_many`` routes every key before tagging any: a bad key raises
    and leaves no sequence number outstanding (one would hold the acked floor down forever)."""
    seen: list[tuple[object, ...]] = []

    def answer(cmd: tuple[object, ...]) -> object:
        seen.append(cmd)
        return ("ok", 7) if cmd[1] == "register" else "ok"

    with _scripted(client_node, 2, answer, sessions=True) as (c, _log):
        assert c.commit(1, ("write", "test", "first")) == "ok"  # registers session 7
        with pytest.raises(ValueError):
            c.commit_many([(1, ("write", "test", "a")), (3, ("write", "test", "b"))])
        futures = c.commit_many([(1, ("write", "test", "c"))])
        assert [f.result(5) for f in futures] == ["ok"]
        last = seen[-1]
        assert last[:4] == ("$session", "call", 7, 2)  # seq 2: "a" took none
        assert last[4] == 2  # acked floor: every earlier seq settled


def test_the_acked_floor_waits_for_the_oldest_outstanding_seq(client_node: otp.Node) -> None:
    """A call acknowledges every seq below the oldest still outstanding, and no more: a
    commit left unanswered holds the floor until it is settled (here, by its timeout)."""
    import time

    seen: list[tuple[object, ...]] = []

    def answer(cmd: tuple[object, ...]) -> object:
        seen.append(cmd)
        if cmd[1] != "call":
            return ("ok", 7) if cmd[1] == "register" else "ok"
        inner = cmd[5]
        assert isinstance(inner, tuple)
        return None if inner[2] == "slow" else "ok"

    with _scripted(client_node, 1, answer, sessions=True, attempt_timeout=30.0) as (c, _log):
        assert c.commit(1, ("write", "test", "first")) == "ok"  # seq 1
        slow = c.commit_async(1, ("write", "test", "slow"), timeout=0.3)  # seq 2
        time.sleep(0.05)  # in a frame of its own (an unanswered frame swallows its company)
        for key in ("a", "b"):  # seqs 3 and 4, while seq 2 is outstanding
            assert c.commit(1, ("write", "test", key)) == "ok"
            assert seen[-1][3:5] == (3 if key == "a" else 4, 2)
        assert slow.result(5) == ("error", "timeout")
        time.sleep(0.05)
        assert c.commit(1, ("write", "test", "c")) == "ok"
        assert seen[-1][3:5] == (5, 5)  # seq 2 settled: the floor passes it


def test_a_callers_deadline_is_not_taken_for_a_failed_node(client_node: otp.Node) -> None:
    """A frame whose caller's deadline comes before its attempt timeout times out as a
    deadline (``timeouts``), not as an unanswered attempt: the leader stays known and is not
    avoided, so a caller with a short timeout does not send the next request to a follower."""
    import time

    def answer(cmd: tuple[object, ...]) -> object:
        return None if cmd[2] == "slow" else ("ok", cmd[2])

    with _scripted(client_node, 1, answer, attempt_timeout=30.0) as (c, _log):
        assert c.commit(1, ("write", "test", "first")) == ("ok", "first")
        leader = c.leader(1)
        assert leader is not None
        started = time.monotonic()
        assert c.commit(1, ("write", "test", "slow"), timeout=0.2) == ("error", "timeout")
        assert time.monotonic() - started < 2.0
        time.sleep(0.15)  # a few deadline scans after the frame's own expiry
        stats = c.stats()
        assert stats["timeouts"] == 1 and stats["attempt_timeouts"] == 0, stats
        assert c.leader(1) == leader
        assert c._target(1, time.monotonic()) == leader
        assert c.commit(1, ("write", "test", "after")) == ("ok", "after")


def test_an_unanswered_frame_to_a_node_that_keeps_answering_waits_for_its_deadline(
    client_node: otp.Node,
) -> None:
    """A frame past its attempt timeout, to a node that answered other frames in the last half
    attempt timeout, is slow, not lost to a failed node: it waits for its callers' deadline
    (not re-sent, which under overload only adds to the queue) and the node keeps its
    leaderships and its standing, where taking it for failed sent every partition it leads
    through followers and their redirects (a cascade seen at 1000 partitions)."""
    import time

    def answer(cmd: tuple[object, ...]) -> object:
        return None if cmd[2] == "slow" else ("ok", cmd[2])

    with _scripted(client_node, 2, answer, attempt_timeout=0.3, timeout=1.2) as (c, log):
        assert c.commit(1, ("write", "test", "first")) == ("ok", "first")
        assert c.commit(2, ("write", "test", "first")) == ("ok", "first")
        leader = c.leader(1)
        stop = threading.Event()

        def traffic() -> None:  # partition 2 keeps getting answers from the same node
            i = 0
            while not stop.is_set():
                c.commit(2, ("write", "test", i), timeout=1.0)
                i += 1
                time.sleep(0.02)

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        try:
            started = time.monotonic()
            assert c.commit(1, ("write", "test", "slow")) == ("error", "timeout")
            assert time.monotonic() - started >= 1.1  # the deadline, not 0.3 s attempts
        finally:
            stop.set()
            thread.join(5)
        stats = c.stats()
        assert stats["attempt_timeouts"] == 0 and stats["slow_attempts"] >= 2, stats
        assert sum(1 for _p, cmd in log if cmd[2] == "slow") == 1  # never re-sent
        assert c.leader(1) == leader and c._target(1, time.monotonic()) == leader


def test_a_node_that_stops_answering_altogether_is_still_given_up_on(
    client_node: otp.Node,
) -> None:
    """The other side of the rule above: when nothing at all comes back from the node, the
    attempt timeout still counts against it and the frame is retried (here, until the
    deadline: the scripted node is the only one)."""
    import time

    answering = threading.Event()
    answering.set()

    def answer(cmd: tuple[object, ...]) -> object:
        return ("ok", cmd[2]) if answering.is_set() else None

    with _scripted(client_node, 1, answer, attempt_timeout=0.3, timeout=1.2) as (c, log):
        assert c.commit(1, ("write", "test", "first")) == ("ok", "first")
        answering.clear()
        time.sleep(0.2)  # the last answer is older than half an attempt timeout at expiry
        assert c.commit(1, ("write", "test", "lost")) == ("error", "timeout")
        stats = c.stats()
        assert stats["attempt_timeouts"] >= 1 and stats["slow_attempts"] == 0, stats
        assert sum(1 for _p, cmd in log if cmd[2] == "lost") >= 2  # re-sent


def test_a_commit_waiting_for_its_session_register_keeps_its_own_deadline(
    client_node: otp.Node,
) -> None:
    """A review: a 0.5 s commit parked behind a register started by a 10 s commit was
    answered after 10 s; and a register started by a short commit failed every parked
    commit at that short deadline, however long theirs."""
    import time

    registers: list[object] = []

    def answer(cmd: tuple[object, ...]) -> object:
        if cmd[1] == "register":
            registers.append(cmd)
            return None if len(registers) == 1 else ("ok", 7)  # the first goes unanswered
        return "ok"

    with _scripted(client_node, 1, answer, sessions=True, timeout=1.0, attempt_timeout=30.0) as (
        c,
        _log,
    ):
        start = time.monotonic()
        long = c.commit_async(1, ("write", "test", "long"), timeout=8.0)
        short = c.commit_async(1, ("write", "test", "short"), timeout=0.3)
        assert short.result(5) == ("error", "timeout")
        assert time.monotonic() - start < 0.9
        assert not long.done()
        # The first register runs out at the client's 1 s; the long commit, with time left,
        # waits for a second one, which is answered.
        assert long.result(8) == "ok"
        assert len(registers) == 2


@pytest.mark.parametrize("pack", [True, False])
def test_a_reply_too_large_for_one_frame_arrives_in_parts_and_answers_every_read(
    tmp_path: Path, client_node: otp.Node, pack: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads of large values in one batch made one reply larger than the frame limit, dropped
    # whole: no read of the batch was ever answered. Frames of 300 bytes here.
    from waraft.services import replies

    monkeypatch.setattr(replies, "REPLY_FRAME_BYTES", 300)
    split = []
    real = replies._send_parts

    def counted(*args: Any) -> None:
        split.append(args[1])
        real(*args)

    monkeypatch.setattr(replies, "_send_parts", counted)
    with cluster(tmp_path) as nodes:
        c = _client(nodes, client_node, pack=pack)
        try:
            writes = [c.commit_async(1, ("write", "test", i, bytes([i]) * 100)) for i in range(30)]
            assert [f.result(10) for f in writes] == ["ok"] * 30
            reads = [c.read_async(1, ("read", "test", i)) for i in range(30)]
            assert [f.result(10) for f in reads] == [("ok", bytes([i]) * 100) for i in range(30)]
            assert split, "no reply was large enough to be split"
        finally:
            c.close()


def test_a_callers_own_batch_sent_alone_is_answered_when_its_reply_comes_in_parts(
    tmp_path: Path, client_node: otp.Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ``$batch`` of the caller's own is one request whose one result is the list of its
    # commands' answers; split into parts (frames of 300 bytes here), it was answered with
    # parts counting 30 answers for a batch of one, which the client dropped: a timeout.
    from waraft.services import replies

    monkeypatch.setattr(replies, "REPLY_FRAME_BYTES", 300)
    with cluster(tmp_path) as nodes:
        c = _client(nodes, client_node, pack=False)
        try:
            writes = [("write", "test", i, bytes([i]) * 100) for i in range(30)]
            assert [c.commit(1, w) for w in writes] == ["ok"] * 30
            reads = [("read", "test", i) for i in range(30)]
            got = c.read(1, ("$batch", reads), timeout=5)
            assert list(got) == [("ok", bytes([i]) * 100) for i in range(30)]
        finally:
            c.close()


def test_reads_past_the_reply_byte_budget_are_refused_and_retried(
    tmp_path: Path, client_node: otp.Node
) -> None:
    # Reads are admitted by count; 5000 reads of a 1 MiB value made 5 GB of results in one
    # turn of storage. Past raft_max_read_reply_bytes (1 KiB here) a read is answered
    # read_queue_bytes_full, which the client retries.
    with cluster(tmp_path, settings={"raft_max_read_reply_bytes": 1024}) as nodes:
        c = _client(nodes, client_node)
        try:
            assert c.commit(1, ("write", "test", "big", b"b" * 400)) == "ok"
            before = c.stats()["retries"]
            reads = [c.read_async(1, ("read", "test", "big")) for _ in range(20)]
            assert [f.result(20) for f in reads] == [("ok", b"b" * 400)] * 20
            assert c.stats()["retries"] > before  # some were refused and asked again
        finally:
            c.close()


def test_a_reply_part_whose_total_is_not_its_batchs_count_is_dropped(
    client_node: otp.Node,
) -> None:
    # A part claiming a billion answers for a batch of two would have made the client
    # allocate a list of a billion slots.
    import time as _time

    from waraft.client import _Batch

    c = Client(["ghost@local"], table="test", partitions=1, node=client_node, discover=False)
    try:
        batch = _Batch("ghost@local", 1, [], _time.monotonic() + 60, count=2)
        c._inflight[7] = batch
        assert c._on_cast(("client_reply_part", 7, False, 0, 10**9, ["x"], None)) is False
        assert batch.parts is None
        assert c._on_cast(("client_reply_part", 7, False, 0, 2, ["x"], None)) is True
        assert batch.parts is not None and batch.parts[0] == "x"
        del c._inflight[7]
    finally:
        c.close()


def test_an_oversized_batch_is_cut_in_order_into_parts_that_each_shrink() -> None:
    from waraft.client import _parts, _Request

    def req(size: int) -> _Request:
        return _Request(1, "commit", ("write", "t", "k", b"x" * size), "high", 0.0)

    sizes = [100, 300, 300, 50, 600, 10]
    requests = [req(n) for n in sizes]
    parts = _parts(requests, 800)  # cut by estimated bytes (63 besides the value), in order
    assert [[len(r.item[3]) for r in part] for part in parts] == [[100, 300], [300, 50], [600, 10]]
    assert [r for part in parts for r in part] == requests
    # The estimate fits them in one part (it undercounts, say): halves, so cutting ends.
    assert [len(part) for part in _parts(requests, 10_000)] == [3, 3]
    assert [len(part) for part in _parts(requests, None)] == [3, 3]
