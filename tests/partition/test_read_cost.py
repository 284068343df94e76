"""What a client's reads may cost a node (review N, bug 2): bounded in reads per request
(``raft_max_reads_per_batch``), admitted by count (``raft_max_pending_reads``) whichever way
they come, and served in turns of bounded work.

One client key sent ~20 frames a second, each a storage ``read`` of a ``$batch`` of 50,000
reads: storage served each in one turn, nothing bounded how many waited in its mailbox, the
leader grew to 3.4 GB, held a scheduler for 21 s and was deposed."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path
from typing import Any

from tests.partition.helpers import addr, ident, start_node, state, wait_until
from waraft import otp, storage
from waraft.core.settings import DEFAULT_MAX_READS_PER_BATCH
from waraft.core.types import LogPos
from waraft.distribution import policy
from waraft.distribution.reply import RemoteReplyTo
from waraft.otp import messaging
from waraft.partition import acceptor, part_sup, server
from waraft.services.queues import READ_QUEUE_FULL, Queues

LIMIT = DEFAULT_MAX_READS_PER_BATCH
CLIENT = policy.Sender("app.mallory@127.0.0.1:1", frozenset({policy.CLIENT}))


def _single(tmp_path: Path, settings: dict[str, Any] | None = None) -> otp.Node:
    node = start_node(tmp_path, "n1", [1], settings=settings)
    config = server.make_config([ident(node)])
    assert server.bootstrap(addr("server", node), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node) == "leader")
    return node


def _queues(node: otp.Node) -> Queues:
    queues: Queues = part_sup.all_options(node=node.id)[0].queues
    return queues


def _reads(count: int) -> tuple[str, tuple[Any, ...]]:
    return ("$batch", tuple(("read", "test", f"nokey{i}") for i in range(count)))


class _Answers:
    """Collects the answers of calls made as the receive thread makes them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: list[tuple[bool, Any]] = []

    def put(self, ok: bool, value: Any) -> None:
        with self.lock:
            self.answers.append((ok, value))

    def count(self) -> int:
        with self.lock:
            return len(self.answers)


def _remote_call(node: otp.Node, name: str, request: Any, answers: _Answers) -> None:
    """``request`` to ``name`` as the distribution's receive thread hands a client's call:
    through the name's allow-list rule (its guard), then into the mailbox with a
    ``RemoteReplyTo``; a refusal is answered at once, as the receiver answers it."""
    dist = types.SimpleNamespace(
        send_reply=lambda peer, ref, ok, value, run=None: answers.put(ok, value),
    )
    peer = types.SimpleNamespace(node_id=CLIENT.node_id)
    handle = RemoteReplyTo(dist, peer, 1, "client:mallory", CLIENT.rights)  # type: ignore[arg-type]
    if not policy.admits(policy.rule_for(name, True, request), CLIENT, request):
        handle.fail("refused")
        return
    pid = node.registry.whereis(name)
    assert pid is not None
    messaging.send_request(pid, request, handle)


def _call(node: otp.Node, name: str, request: Any) -> Any:
    answers = _Answers()
    _remote_call(node, name, request, answers)
    wait_until(lambda: answers.count() == 1)
    ok, value = answers.answers[0]
    assert ok, value
    return value


def _is_badarg(answer: Any) -> bool:
    return (
        type(answer) is tuple
        and answer[0] == "error"
        and answer[1][0] == "badarg"
        and "raft_max_reads_per_batch" in answer[1][1]
    )


def test_a_read_batch_over_the_limit_is_refused(tmp_path: Path) -> None:
    """A ``$batch`` of more than ``raft_max_reads_per_batch`` reads is refused with
    ``badarg`` naming the setting, from the storage's ``read`` call and the acceptor's; one
    at the limit is served whole."""
    node = _single(tmp_path)
    name = storage.default_name("test", 1)
    over = _call(node, name, ("read", _reads(LIMIT + 1)))
    assert _is_badarg(over), str(over)[:200]
    at = _call(node, name, ("read", _reads(LIMIT)))
    assert isinstance(at, list) and len(at) == LIMIT and set(at) == {storage.NOT_FOUND}
    strong = _call(node, acceptor.default_name("test", 1), ("read", _reads(LIMIT + 1), None))
    assert _is_badarg(strong), str(strong)[:200]
    with node.activate():
        assert _is_badarg(acceptor.read(addr("acceptor", node), _reads(LIMIT + 1)))
        at = acceptor.read(addr("acceptor", node), _reads(LIMIT))
    assert isinstance(at, list) and len(at) == LIMIT
    assert _queues(node).read_queue_size() == 0


def test_queued_reads_from_one_caller_are_refused_past_the_bound(tmp_path: Path) -> None:
    """One caller queues many storage reads of a full batch each, faster than storage
    serves them: past ``raft_max_pending_reads`` reads they are refused (at the door, or
    ``read_queue_full``) instead of piling up, every one is answered, and another client's
    commit goes through meanwhile."""
    node = _single(tmp_path)
    name = storage.default_name("test", 1)
    queues = _queues(node)
    bound = queues.settings.raft_max_pending_reads
    request = ("read", _reads(LIMIT))
    answers = _Answers()
    calls = 200
    for _ in range(calls):
        _remote_call(node, name, request, answers)
    with node.activate():
        started = time.monotonic()
        result = acceptor.commit(addr("acceptor", node), ("k", ("write", "test", "k", 1)))
        took = time.monotonic() - started
    assert result == "ok"
    assert took < 5.0, took
    wait_until(lambda: answers.count() == calls, timeout=30)
    served = [v for ok, v in answers.answers if ok and isinstance(v, list)]
    refused = [v for ok, v in answers.answers if v in ("refused", ("error", READ_QUEUE_FULL))]
    assert len(served) + len(refused) == calls, answers.answers[:3]
    assert refused, f"all {calls} batches of {LIMIT} reads were taken ({bound} at most)"
    assert all(len(v) == LIMIT for v in served)
    wait_until(lambda: queues.read_queue_size() == 0)


def test_reads_ready_together_are_served_in_turns(tmp_path: Path) -> None:
    """Reads storage reaches at once (queued behind a position) are served about
    ``raft_max_reads_per_batch`` a turn: the storage answers a status call while most of
    them still wait, then serves the rest."""
    node = _single(tmp_path)
    queues = _queues(node)
    name = storage.default_name("test", 1)
    batches = 20
    answers: list[Any] = []
    lock = threading.Lock()

    class Handle(otp.ReplyTo):
        def _complete(self, ok: bool, value: Any) -> None:
            with lock:
                answers.append(value)

    with node.activate():
        position = storage.position(name)
        for _ in range(batches):
            # Reached once the write below is applied: all ready in the same turn.
            queues.submit_read(position.index + 1, Handle(), _reads(LIMIT))
        assert acceptor.commit(addr("acceptor", node), ("k", ("write", "test", "k", 1))) == "ok"
        status = storage.status(name)
        with lock:
            answered = len(answers)
    assert status["last_applied"] > position.index
    assert answered < batches, "every read was served in the turn of the apply"
    wait_until(lambda: len(answers) == batches)
    assert all(isinstance(a, list) and len(a) == LIMIT for a in answers)


def test_a_batch_read_is_charged_by_its_reads(tmp_path: Path) -> None:
    """Admission counts every read of a ``$batch`` (a packed one by its array header), and
    its answer gives them all back."""
    from waraft.core.settings import Settings
    from waraft.services import codec
    from waraft.services.queues import read_count

    packed = ("$batch", codec.packb([("read", "t", i) for i in range(300)]))
    assert read_count(packed) == 300 and read_count(_reads(20)) == 20
    assert read_count(("read", "t", "k")) == 1
    queues = Queues("t", 1, Settings(raft_max_pending_reads=500))
    taken, reason = queues.admit_reads([(otp.DISCARD, packed, None)] * 2)
    assert len(taken) == 1 and reason == READ_QUEUE_FULL
    assert queues.read_queue_size() == 300
    queues.submit_read(0, taken[0][0], packed)
    ((handle, _),) = queues.take_reads(0)
    handle.reply("done")
    assert queues.read_queue_size() == 0


def test_a_client_packs_at_most_the_limit_into_one_read(tmp_path: Path) -> None:
    """``waraft.client`` with a ``max_batch`` above the limit still gets every read answered:
    it packs at most ``MAX_PACKED_READS`` reads into one ``$batch``."""
    from waraft.client import MAX_PACKED_READS, Client

    assert MAX_PACKED_READS == LIMIT
    node = _single(tmp_path)
    client_node = otp.Node("readcost-client@local")
    c = Client([node.id], table="test", partitions=1, node=client_node, max_batch=5 * LIMIT)
    try:
        futures = [c.read_async(1, ("read", "test", f"k{i}")) for i in range(3 * LIMIT)]
        assert {f.result(20) for f in futures} == {storage.NOT_FOUND}
    finally:
        c.close()
        client_node.stop()
