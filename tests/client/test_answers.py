"""Which reply answers which request, and what a request's final answer says about its
command (applied, not applied, maybe): in process, against scripted gateways."""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.client.test_client import _scripted, _ScriptedGateway
from tests.partition.helpers import wait_until
from waraft import client as client_module
from waraft import otp
from waraft.client import Client
from waraft.partition import acceptor

_ids = itertools.count(1)


@pytest.fixture
def client_node() -> Iterator[otp.Node]:
    node = otp.Node(f"answers{next(_ids)}@local")
    yield node
    node.stop()


class _LateGateway(otp.Process):
    """A leader that was paused while the read of ``"a"`` was in flight: it holds that
    answer, and sends it (late) just before it answers the next read of ``"b"``."""

    def init(self) -> None:
        self.late: list[tuple[Any, Any]] = []

    def handle_cast(self, msg: Any) -> None:
        _, reply_to, batch_id, _kind, items, _priority = msg
        key = items[0][2]
        reply = ("client_reply", batch_id, [("ok", f"VALUE-OF-{key}")], None)
        if key == "a":
            self.late.append((reply_to, reply))
            return
        for to, old in self.late:
            otp.cast(to, old)
        otp.cast(reply_to, reply)


def test_a_late_reply_to_a_closed_client_never_answers_a_new_one(
    client_node: otp.Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Receivers were named after ``id(self)``, which Python reuses once an object is
    collected, and batches numbered from 1: a new client could get a closed one's reply
    address, and the closed client's late answer completed its first batch (a read of "b"
    returned the value of "a"). ``id`` is made constant here to reuse it every time."""
    monkeypatch.setattr(client_module, "id", lambda _obj: 0x5EED, raising=False)
    server = otp.Node(f"late{next(_ids)}@local")
    otp.start(_LateGateway, name=acceptor.default_name("t", 1), node=server)

    def make(timeout: float) -> Client:
        return Client(
            [server.id], table="t", partitions=1, node=client_node, discover=False,
            timeout=timeout,
        )  # fmt: skip

    try:
        old = make(0.2)
        assert old.read(1, ("read", "t", "a")) == ("error", "timeout")
        old.close()
        new = make(5.0)
        try:
            assert new.read(1, ("read", "t", "b")) == ("ok", "VALUE-OF-b")
        finally:
            new.close()
    finally:
        server.stop()


def test_receiver_names_are_never_reused_in_a_process(client_node: otp.Node) -> None:
    names = set()
    for _ in range(20):
        c = Client(["ghost@local"], table="t", partitions=1, node=client_node, discover=False)
        names.add(c.reply_addr)
        c.close()
        del c
        gc.collect()
    assert len(names) == 20


def test_a_reply_from_another_node_than_the_batchs_is_ignored(client_node: otp.Node) -> None:
    """The gateway answers from the node that took the batch; a reply for the batch's number
    from any other node (another cluster's late answer to an earlier holder of this address)
    is not this batch's. The node's own id, or its node key's user id, is."""
    scripted = _scripted(client_node, 1, lambda _cmd: None, timeout=10.0, max_batch=1)
    with scripted as (c, _log):
        node = c.nodes[0]
        futures = [c.read_async(1, ("read", "test", k)) for k in ("x", "y")]
        wait_until(lambda: len(c._inflight) == 2, timeout=5)
        first, second = sorted(c._inflight)
        forged = ("client_reply", first, [("ok", "forged")], None)
        assert c._on_cast(forged, "other@local") is False
        assert c._on_cast(forged, "node:other") is False
        assert not futures[0].done() and first in c._inflight
        assert c._on_cast(("client_reply", first, [("ok", "x")], None), node) is True
        name = node.partition("@")[0]
        assert c._on_cast(("client_reply", second, [("ok", "y")], None), f"node:{name}")
        assert [f.result(5) for f in futures] == [("ok", "x"), ("ok", "y")]


def test_a_reply_part_from_another_node_is_ignored(client_node: otp.Node) -> None:
    with _scripted(client_node, 1, lambda _cmd: None, timeout=10.0) as (c, _log):
        future = c.read_async(1, ("read", "test", "x"))
        wait_until(lambda: len(c._inflight) == 1, timeout=5)
        (bid,) = c._inflight
        part = ("client_reply_part", bid, False, 0, 1, [("ok", "forged")], None)
        assert c._on_cast(part, "other@local") is False
        assert c._inflight[bid].parts is None
        assert c._on_cast((*part[:5], [("ok", "x")], None), c.nodes[0]) is True
        assert future.result(5) == ("ok", "x")


def _first_swallowed(then: Any) -> Any:
    """A gateway answer: session registers get session 42; the first attempt of anything
    else is swallowed (applied by the leader, its reply lost), later ones answered ``then``."""
    attempts: list[Any] = []

    def answer(command: tuple[Any, ...]) -> Any:
        if command[:2] == ("$session", "register"):
            return ("ok", 42)
        attempts.append(command)
        return None if len(attempts) == 1 else then

    return answer


@pytest.mark.parametrize(
    ("sessions", "then", "expected"),
    [
        # A refusal of the retry says nothing of the first attempt: maybe applied.
        (True, ("error", ("call_error", "killed")), ("error", "timeout")),
        (False, ("error", ("call_error", "killed")), ("error", "timeout")),
        (True, ("error", "storage_quarantined"), ("error", "timeout")),
        # In a session, storage's answer is the recorded result of the one application.
        (True, ("error", "bad_position"), ("error", "bad_position")),
        # Without one, storage's answer to the retry says nothing of the first attempt.
        (False, ("error", "bad_position"), ("error", "timeout")),
    ],
)
def test_a_final_error_after_an_unanswered_attempt_is_maybe_applied(
    client_node: otp.Node, sessions: bool, then: Any, expected: Any
) -> None:
    """The last branch of the error handling passed a later attempt's error straight on,
    though the contract reads any error outside AT_MOST_ONCE as "not applied": a caller
    resubmitted a commit its first, unanswered attempt had applied."""
    answer = _first_swallowed(then)
    kw = {"sessions": sessions, "attempt_timeout": 0.2, "timeout": 5.0}
    with _scripted(client_node, 1, answer, **kw) as (c, _log):
        assert c.commit(1, ("write", "test", "k", "v")) == expected
        assert c.stats()["attempt_timeouts"] == 1


def test_commit_stalled_is_retried_and_after_an_unanswered_attempt_answers_timeout(
    client_node: otp.Node,
) -> None:
    """``commit_stalled`` fails commits before they are appended (a log that cannot write):
    retried like a full queue. A commit applied by an unanswered attempt and then only
    answered ``commit_stalled`` ends ``timeout``, never ``commit_stalled``."""
    stalls: list[Any] = []

    def stall_once(command: tuple[Any, ...]) -> Any:
        stalls.append(command)
        return ("error", "commit_stalled") if len(stalls) == 1 else "ok"

    with _scripted(client_node, 1, stall_once) as (c, _log):
        assert c.commit(1, ("write", "test", "k", "v"), timeout=5.0) == "ok"
        assert len(stalls) == 2
    answer = _first_swallowed(("error", "commit_stalled"))
    kw = {"sessions": True, "attempt_timeout": 0.2, "timeout": 1.0}
    with _scripted(client_node, 1, answer, **kw) as (c, _log):
        assert c.commit(1, ("write", "test", "k", "v")) == ("error", "timeout")


class _SheddingGateway(_ScriptedGateway):
    """A node whose receive thread sheds the first ``shed`` batches (the client's key over
    its share of that thread): each answered with ONE ``("error", "overloaded")``, as
    ``acceptor._shed_batch`` answers, whatever the batch holds; later ones answered "ok"."""

    def init(self, partition: int, log: list[tuple[int, object]], shed: int) -> None:  # type: ignore[override]
        super().init(partition, log, lambda _cmd: "ok")
        self.shed = shed

    def handle_cast(self, msg: object) -> None:
        if self.shed:
            self.shed -= 1
            assert isinstance(msg, tuple)
            otp.cast(msg[1], ("client_reply", msg[2], [acceptor.OVERLOADED], None))
            return
        super().handle_cast(msg)


@pytest.mark.parametrize(("pack", "count"), [(True, 1), (True, 5), (False, 5)])
def test_a_shed_batch_is_retried_after_a_backoff_not_a_timeout(
    client_node: otp.Node, pack: bool, count: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that sheds a batch answers it ``overloaded`` at once, one error for all its
    requests (their items were never read): each is retried after a backoff, like a full
    queue, and succeeds once the key is back in credit, long before the attempt timeout. It
    ended the request with ``overloaded`` (count 1, or packed), or, for an unpacked batch,
    was taken for an unreadable reply (maybe applied)."""
    server = otp.Node(f"shedding{next(_ids)}@local")
    log: list[tuple[int, object]] = []
    otp.start(_SheddingGateway, 1, log, 2, name=acceptor.default_name("t", 1), node=server)
    c = Client(
        [server.id], table="t", partitions=1, node=client_node, discover=False,
        pack=pack, attempt_timeout=30.0, timeout=10.0,
    )  # fmt: skip
    try:
        start = time.monotonic()
        futures = c.commit_many([(1, ("write", "t", f"k{i}", i)) for i in range(count)])
        assert [f.result(10) for f in futures] == ["ok"] * count
        assert time.monotonic() - start < 5.0  # answered, not timed out
        assert c.stats()["retries"] >= 2  # (two batches shed, of whatever size)
        assert sorted(cmd[3] for _, cmd in log) == list(range(count))  # type: ignore[index]
        assert c.stats().get("attempt_timeouts", 0) == 0
        assert "results" not in caplog.text  # ("a reply for 5 requests had 1 results")
    finally:
        c.close()
        server.stop()


class _GarbledGateway(otp.Process):
    """A node whose replies the client cannot read (no result for the commands sent)."""

    def handle_cast(self, msg: Any) -> None:
        _, reply_to, batch_id, _kind, _items, _priority = msg
        otp.cast(reply_to, ("client_reply", batch_id, [], None))


def test_a_commit_answered_only_unreadable_replies_ends_timeout(client_node: otp.Node) -> None:
    """The node took the attempt and its answer could not be read: applied or not, nobody
    knows. It ended ``("error", "bad_reply")``, read as "not applied"."""
    server = otp.Node(f"garbled{next(_ids)}@local")
    otp.start(_GarbledGateway, name=acceptor.default_name("t", 1), node=server)
    c = Client([server.id], table="t", partitions=1, node=client_node, discover=False)
    try:
        assert c.commit(1, ("write", "t", "k", "v"), timeout=0.5) == ("error", "timeout")
        assert c.stats()["retries"] >= 1
    finally:
        c.close()
        server.stop()


class _PackedAsStringGateway(otp.Process):
    """A node answering a packed frame's one result with the string ``"ok"`` (a buggy or
    mismatched storage), not a list of results."""

    def handle_cast(self, msg: Any) -> None:
        _, reply_to, batch_id, _kind, items, _priority = msg
        packed = len(items) == 1 and items[0][1][0] == "$batch"
        otp.cast(reply_to, ("client_reply", batch_id, ["ok"] if packed else [], None))


def test_a_packed_result_that_is_not_a_list_is_a_bad_reply(client_node: otp.Node) -> None:
    """A packed frame answered ``["ok"]`` completed two commits with ``"o"`` and ``"k"``
    (a frame of two is packed no more: ``MIN_PACKED``; three are)."""
    server = otp.Node(f"packed{next(_ids)}@local")
    otp.start(_PackedAsStringGateway, name=acceptor.default_name("t", 1), node=server)
    c = Client([server.id], table="t", partitions=1, node=client_node, discover=False)
    try:
        futures = c.commit_many([(1, ("write", "t", k, 1)) for k in "abc"], timeout=0.5)
        # Unreadable, and the node may have applied them: maybe applied (timeout).
        assert [f.result(5) for f in futures] == [("error", "timeout")] * 3
    finally:
        c.close()
        server.stop()


def test_close_removes_the_receivers_policy_rule() -> None:
    """Each client over the distribution lets nodes cast replies to its receiver (a policy
    rule); close left the rule behind, one per client ever made."""
    from waraft.distribution import policy

    c = Client(["n1@127.0.0.1:1"], table="t", partitions=1, discover=False)
    name = c.reply_addr[0]
    reply = ("client_reply", 1, ["ok"], None)
    try:
        assert policy.rule_for(name, False, reply) is not None
    finally:
        c.close()
    assert name not in policy._rules


class _SilentServer(otp.Process):
    """A partition server that never answers a call (a stopped node's)."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return otp.NOREPLY


def test_refresh_leaders_keeps_to_its_timeout(client_node: otp.Node) -> None:
    """Without an admin process the client asks each partition's server, and gave every one
    of those calls the whole per-node timeout: 8 partitions on a node that answers nothing
    took 8 times ``timeout``."""
    import time

    from waraft.partition import server

    silent = otp.Node(f"silent{next(_ids)}@local")
    for p in range(1, 9):
        otp.start(_SilentServer, name=server.default_name("t", p), node=silent)
    c = Client([silent.id], table="t", partitions=8, node=client_node, discover=False)
    try:
        started = time.monotonic()
        with client_node.activate():
            assert c.refresh_leaders(0.5) == {}
        assert time.monotonic() - started < 2.0
    finally:
        c.close()
        silent.stop()


def test_reply_too_large_is_final_and_maybe_applied(client_node: otp.Node) -> None:
    """A result no frame can carry is answered ``reply_too_large``: not retried, not taken for
    a failed node (it waited out the deadline, counted attempt timeouts and forgot the
    node's leaderships), and for a commit one of the maybe-applied answers."""
    from waraft.client import AT_MOST_ONCE
    from waraft.services.replies import REPLY_TOO_LARGE

    assert REPLY_TOO_LARGE in AT_MOST_ONCE
    with _scripted(client_node, 1, lambda _cmd: REPLY_TOO_LARGE, timeout=5.0) as (c, log):
        c._set_leader(1, c.nodes[0])
        assert c.read(1, ("read", "test", "big")) == REPLY_TOO_LARGE
        assert c.commit(1, ("write", "test", "big", 1)) == REPLY_TOO_LARGE
        stats = c.stats()
        assert len(log) == 2 and stats["retries"] == 0 and stats["attempt_timeouts"] == 0
        assert c.leader(1) == c.nodes[0]
