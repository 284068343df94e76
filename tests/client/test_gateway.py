"""The acceptor's client gateway: the per-batch aggregator and one reply per batch."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, ident, start_node, wait_until
from waraft import otp
from waraft.core.types import LogPos, Priority
from waraft.distribution import inline as dist_inline
from waraft.partition import acceptor, server
from waraft.partition.acceptor import BatchReply, SingleReply, parse_client_batch, priority_of
from waraft.services.logthrottle import LogThrottle


class Sent:
    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], Any]] = []
        self.event = threading.Event()

    def __call__(self, results: list[Any], hint: Any) -> None:
        self.calls.append((list(results), hint))
        self.event.set()


def test_results_are_sent_once_in_item_order_when_the_last_slot_fills() -> None:
    sent = Sent()
    batch = BatchReply(3, sent, lambda: "n2@h:1")
    slots = [batch.slot(i) for i in range(3)]
    slots[2].reply("c")
    slots[0].reply("a")
    assert sent.calls == [] and batch.remaining == 1
    assert not slots[1].done and slots[0].done
    slots[1].reply("b")
    assert sent.calls == [(["a", "b", "c"], None)]


def test_a_slot_counts_once_and_later_completions_are_ignored() -> None:
    sent = Sent()
    batch = BatchReply(2, sent)
    slot = batch.slot(0)
    slot.reply("first")
    slot.reply("second")
    slot.fail("noproc")
    assert batch.remaining == 1 and sent.calls == []
    batch.slot(1).reply("x")
    assert sent.calls == [(["first", "x"], None)]


def test_errors_carry_the_leader_hint_and_failures_are_mapped() -> None:
    sent = Sent()
    batch = BatchReply(3, sent, lambda: "leader@h:1")
    batch.slot(0).reply(("error", "not_leader"))
    batch.slot(1).fail("timeout")
    batch.slot(2).fail(("weird", 1))
    results, hint = sent.calls[0]
    assert hint == "leader@h:1"
    assert results == [
        ("error", "not_leader"),
        ("error", "timeout"),
        ("error", ("call_error", ("weird", 1))),
    ]


def test_an_empty_batch_is_answered_at_once() -> None:
    sent = Sent()
    BatchReply(0, sent)
    assert sent.calls == [([], None)]


def test_concurrent_fills_send_exactly_once() -> None:
    sent = Sent()
    size = 2000
    batch = BatchReply(size, sent)
    slots = [batch.slot(i) for i in range(size)]
    start = threading.Barrier(4)

    def fill(offset: int) -> None:
        start.wait()
        for i in range(offset, size, 4):
            slots[i].reply(i)
            slots[i].reply(-1)  # a duplicate never counts

    threads = [threading.Thread(target=fill, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(sent.calls) == 1
    assert sent.calls[0][0] == list(range(size))


def test_a_failing_send_does_not_raise_into_the_completing_thread() -> None:
    def boom(results: list[Any], hint: Any) -> None:
        raise RuntimeError("socket gone")

    batch = BatchReply(1, boom)
    batch.slot(0).reply("ok")  # logged, not raised


def _single(monkeypatch: pytest.MonkeyPatch, packed: bool = False) -> tuple[SingleReply, list[Any]]:
    """A one-item batch's handle whose replies land in the returned list (``packed`` too,
    when the handle passes it on as set)."""
    sent: list[Any] = []

    def send(addr: Any, batch_id: int, results: Any, hint: Any, packed: bool = False) -> None:
        sent.append((addr, batch_id, list(results), hint, *(("packed",) if packed else ())))

    monkeypatch.setattr(acceptor, "send_client_reply", send)
    monkeypatch.setattr(acceptor.info, "get_leader", lambda table, partition: "leader@h:1")
    return SingleReply(("c", "n9@h:1"), 7, "kv", 1, packed), sent


def test_a_packed_batchs_handle_says_so_to_the_reply() -> None:
    """A packed client batch is one ``$batch`` item, so its handle is a ``SingleReply``: it
    must pass ``packed`` on, or a reply too large for a frame is not split into the
    commands' answers (``waraft.services.replies``)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        reply, sent = _single(monkeypatch, packed=True)
        reply.reply(["ok", "ok", "ok"])
    assert sent == [(("c", "n9@h:1"), 7, [["ok", "ok", "ok"]], None, "packed")]


@pytest.mark.parametrize(
    ("complete", "expected"),
    [
        (lambda r: r.reply("ok"), (["ok"], None)),
        (lambda r: r.reply(("error", "not_leader")), ([("error", "not_leader")], "leader@h:1")),
        (lambda r: r.fail("timeout"), ([("error", "timeout")], "leader@h:1")),
        (lambda r: r.fail(("weird", 1)), ([("error", ("call_error", ("weird", 1)))], "leader@h:1")),
    ],
)
def test_a_one_item_batch_answers_as_a_batch_of_one_would(
    monkeypatch: pytest.MonkeyPatch, complete: Any, expected: tuple[list[Any], Any]
) -> None:
    """``SingleReply`` stands in for ``BatchReply(1)`` and its slot: the same results list,
    hint and exit mapping, sent once; later completions are ignored."""
    reply, sent = _single(monkeypatch)
    complete(reply)
    reply.reply("late")
    reply.fail("noproc")
    assert reply.done
    assert sent == [(("c", "n9@h:1"), 7, *expected)]
    batch_sent = Sent()
    batch = BatchReply(1, batch_sent, lambda: "leader@h:1")
    complete(batch.slot(0))
    assert batch_sent.calls == [expected]


def test_a_one_item_batch_sends_once_under_concurrent_completions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reply, sent = _single(monkeypatch)
    start = threading.Barrier(4)

    def complete(value: int) -> None:
        start.wait()
        reply.reply(value)

    threads = [threading.Thread(target=complete, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(sent) == 1


def test_a_one_item_batch_logs_a_failing_send(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("socket gone")

    reply, _ = _single(monkeypatch)
    monkeypatch.setattr(acceptor, "send_client_reply", boom)
    reply.reply("ok")  # logged, not raised
    assert reply.done


@pytest.mark.parametrize(
    "msg",
    [
        None,
        ("client_batch",),
        ("client_batch", "addr", 1, "commit", [], "high"),
        ("client_batch", ("a", 1), 1, "commit", [], "high"),
        ("client_batch", (1, "n@h:1"), 1, "commit", [], "high"),
        ("client_batch", ("a", "n@h:1", "x"), 1, "commit", [], "high"),
        ("client_batch", ("a", "n@h:1"), "id", "commit", [], "high"),
        ("client_batch", ("a", "n@h:1"), 1, "drop_table", [], "high"),
        ("client_batch", ("a", "n@h:1"), 1, "commit", 5, "high"),
        ("client_batch", ("a", "n@h:1"), 1, "commit", [], "urgent"),
        ("client_batch", ("a", "n@h:1"), 1, "commit", [], ["high"]),
        ("client_batch", ("a", "n@h:1"), 1, "commit", [], None),
    ],
)
def test_malformed_batches_are_recognised(msg: Any) -> None:
    assert parse_client_batch(msg) is None


def test_priority_of_takes_names_and_members_only() -> None:
    assert priority_of("high") is Priority.HIGH and priority_of("low") is Priority.LOW
    assert priority_of(Priority.LOW) is Priority.LOW
    for bad in ("HIGH", "urgent", None, 1, True, ["high"], {"high": 1}):
        with pytest.raises(ValueError):
            priority_of(bad)


def test_a_well_formed_batch_parses() -> None:
    parsed = parse_client_batch(("client_batch", ["c", "n@h:1"], 7, "read", (), "low"))
    assert parsed is not None
    assert parsed[0] == ("c", "n@h:1") and parsed[1] == 7 and parsed[2] == "read"


# -- against a real single-node partition --------------------------------------------------------


class Sink(otp.Process):
    def init(self, inbox: list[Any], event: threading.Event) -> None:
        self.inbox = inbox
        self.event = event

    def handle_cast(self, msg: Any) -> None:
        self.inbox.append(msg)
        self.event.set()


def _single_node(tmp_path: Path, **settings: Any) -> otp.Node:
    node = start_node(tmp_path, "gw", [1], settings)
    config = server.make_config([ident(node)])
    assert server.bootstrap(addr("server", node), LogPos(1, 1), config) == "ok"
    wait_until(lambda: server.status(addr("server", node))["state"] == "leader")
    return node


def _sink(node: otp.Node) -> tuple[tuple[str, str], list[Any], threading.Event]:
    inbox: list[Any] = []
    event = threading.Event()
    with node.activate():
        otp.start(Sink, inbox, event, name="sink")
    return ("sink", node.id), inbox, event


def test_a_commit_batch_is_answered_with_one_cast(tmp_path: Path) -> None:
    node = _single_node(tmp_path)
    reply_addr, inbox, event = _sink(node)
    items = [(b"k%d" % i, ("write", "test", f"key{i}", i)) for i in range(50)]
    items.append("not an op")
    with node.activate():
        acceptor.client_batch(addr("acceptor", node), reply_addr, 41, "commit", items)
    assert event.wait(10)
    assert len(inbox) == 1
    kind, batch_id, results, hint = inbox[0]
    assert (kind, batch_id) == ("client_reply", 41)
    assert results[:50] == ["ok"] * 50
    assert results[50][0] == "error" and results[50][1][0] == "badarg"
    assert hint == node.id  # an error result carries the known leader
    event.clear()
    reads = [("read", "test", "key3"), ("read", "test", "missing")]
    with node.activate():
        acceptor.client_batch(addr("acceptor", node), reply_addr, 42, "read", reads)
    assert event.wait(10)
    assert inbox[1] == ("client_reply", 42, [("ok", 3), "not_found"], None)


def test_rejections_fill_their_slots_at_once(tmp_path: Path) -> None:
    node = _single_node(tmp_path, raft_max_pending_high_priority_commits=3)
    reply_addr, inbox, event = _sink(node)
    items = [(b"k%d" % i, ("write", "test", "k", i)) for i in range(10)]
    with node.activate():
        acceptor.client_batch(addr("acceptor", node), reply_addr, 1, "commit", items)
    assert event.wait(10)
    _, _, results, _ = inbox[0]
    assert results[:3] == ["ok"] * 3
    assert results[3:] == [("error", "commit_queue_full")] * 7


def test_an_acceptor_answers_what_its_nodes_receive_thread_sheds(tmp_path: Path) -> None:
    """A running acceptor has the receive thread answer the client batches it sheds (the
    client key over its share of it: ``tests/distribution/test_receive_budget.py``), and a
    call the callee's receive thread shed maps to the same ``("error", "overloaded")``,
    retried like a full queue, not to an opaque ``call_error``."""
    _single_node(tmp_path)
    assert dist_inline._shed.get(acceptor.NAME_PREFIX) is acceptor._shed_batch
    assert acceptor.map_exit("overloaded") == acceptor.OVERLOADED == ("error", "overloaded")


def test_malformed_gateway_casts_leave_the_acceptor_running(tmp_path: Path) -> None:
    node = _single_node(tmp_path)
    reply_addr, _inbox, event = _sink(node)
    with node.activate():
        before = otp.whereis("raft_acceptor_test_1")
        for junk in [("client_batch",), ("client_batch", 1, 2, 3, 4, 5)]:
            otp.cast(addr("acceptor", node), junk)
        acceptor.client_batch(addr("acceptor", node), reply_addr, 9, "read", [("read", "t", "x")])
    assert event.wait(10)
    with node.activate():
        assert otp.whereis("raft_acceptor_test_1") is before


def test_client_future_waits_calls_back_once_and_times_out() -> None:
    import threading
    from concurrent.futures import TimeoutError as FutureTimeout

    from waraft.client import Future

    future = Future()
    seen: list[Any] = []
    future.add_done_callback(lambda f: seen.append(f.result()))
    with pytest.raises(FutureTimeout):
        future.result(0.01)
    threading.Timer(0.05, future.set_result, ("ok",)).start()
    assert future.result(5) == "ok"
    assert future.result(0) == "ok" and future.done()
    assert future.set_result("again") is False  # completes once
    future.add_done_callback(lambda f: seen.append(("late", f.result())))
    assert seen == ["ok", ("late", "ok")]


def test_replies_completed_together_leave_as_one_frame_per_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from waraft.partition import acceptor

    sent: list[tuple[Any, Any]] = []
    monkeypatch.setattr(acceptor.otp, "cast", lambda addr, msg: sent.append((addr, msg)))
    a, b = ("client_a", "c1@h:1"), ("client_b", "c2@h:1")
    acceptor.send_client_reply(a, 1, ["ok"], None)  # outside a block: at once
    assert sent == [(a, ("client_reply", 1, ["ok"], None))]
    sent.clear()
    with acceptor.coalesced_replies():
        acceptor.send_client_reply(a, 2, ["ok"], None)
        acceptor.send_client_reply(b, 7, ["ok"], None)
        acceptor.send_client_reply(a, 3, [("error", "not_leader")], "n1@h:1")
        assert sent == []
    assert sent == [
        (a, ("client_replies", [(2, ["ok"], None), (3, [("error", "not_leader")], "n1@h:1")])),
        (b, ("client_reply", 7, ["ok"], None)),
    ]


class _Replier(otp.Process):
    """Answers client batches, optionally yielding its scheduler inside a coalescing block."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        target, batch_id, gate = request
        if gate is None:
            acceptor.send_client_reply(target, batch_id, ["ok"], None)
            return "sent"
        with acceptor.coalesced_replies():
            acceptor.send_client_reply(target, batch_id, ["ok"], None)
            gate.wait(5.0)  # an otp.Event: suspends this process, the scheduler runs others
        return "sent"


def test_a_scheduled_process_yielding_in_a_block_keeps_others_replies_out_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(acceptor.otp, "cast", lambda addr, msg: sent.append(msg))
    node = otp.Node("coalesce@t", process_type=otp.SCHEDULED, schedulers=1)
    holder, other = _Replier.start(node=node), _Replier.start(node=node)
    gate = otp.Event()
    handle = otp.send_request(holder, (("c", "c@h:1"), 1, gate))
    assert otp.call(other, (("c", "c@h:1"), 2, None)) == "sent"
    assert sent == [("client_reply", 2, ["ok"], None)]  # not held in the holder's block
    gate.set()
    assert otp.wait_response(handle, 5.0) == "sent"
    assert sent[1:] == [("client_reply", 1, ["ok"], None)]


def test_rejections_and_malformed_casts_are_logged_once_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under overload every batch is rejected, and anyone may send junk: a line a second each.
    # (Fresh throttles: the node-wide ones may have just let a line of an earlier test out.)
    monkeypatch.setattr(acceptor, "_REJECTED_LOG", LogThrottle())
    monkeypatch.setattr(acceptor, "_MALFORMED_LOG", LogThrottle())
    node = _single_node(tmp_path, raft_max_pending_high_priority_commits=1)
    caplog.set_level(logging.WARNING, logger="waraft.partition.acceptor")
    reply_addr, inbox, _event = _sink(node)
    started = time.monotonic()
    batches = 40
    with node.activate():
        for i in range(batches):
            items = [(b"k%d" % j, ("write", "test", "k", j)) for j in range(5)]
            acceptor.client_batch(addr("acceptor", node), reply_addr, i, "commit", items)
            otp.cast(addr("acceptor", node), ("client_batch", i))
            otp.cast(addr("acceptor", node), ("junk", i))
    wait_until(lambda: len(inbox) == batches)
    elapsed = time.monotonic() - started
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    malformed = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    limit = int(elapsed) + 2
    assert 1 <= len(rejected) <= limit, rejected
    assert 1 <= len(malformed) <= limit, malformed
    assert "commit_queue_full" in rejected[0]
    assert all(results[-1] == ("error", "commit_queue_full") for _, _, results, _ in inbox)
