"""What one client read may make storage build: every read a client reaches storage with is
charged to ``raft_max_read_reply_bytes``, however it gets there.

A read is a ``$batch`` of reads when the client wants: one frame (16 MiB) holds a million
reads of one key, and with a 1 MiB value behind that key storage built a terabyte of
results for one message (the node ran out of memory). The strong reads storage serves in
turns were charged to the budget; the paths below were not."""

from __future__ import annotations

import queue
import types
from pathlib import Path
from typing import Any

from tests.partition.helpers import addr, ident, start_node, state, wait_until
from waraft import otp, storage
from waraft.core.types import LogPos
from waraft.distribution.reply import RemoteReplyTo
from waraft.otp import messaging
from waraft.partition import acceptor, server

BUDGET = 1024
VALUE = b"b" * 400
READS = 20  # 8,000 bytes of results without a budget


def _single(tmp_path: Path) -> otp.Node:
    node = start_node(tmp_path, "n1", [1], settings={"raft_max_read_reply_bytes": BUDGET})
    config = server.make_config([ident(node)])
    assert server.bootstrap(addr("server", node), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node) == "leader")
    assert acceptor.commit(addr("acceptor", node), ("k", ("write", "test", "big", VALUE))) == "ok"
    return node


def _many_reads() -> tuple[str, list[Any]]:
    return ("$batch", [("read", "test", "big")] * READS)


def _within_budget(results: Any) -> None:
    assert isinstance(results, list) and len(results) == READS, results
    served = [r for r in results if r == ("ok", VALUE)]
    refused = [r for r in results if r == storage.READ_BYTES_FULL_ERROR]
    assert len(served) + len(refused) == READS, results
    assert served and refused, f"{len(served)} reads of {len(VALUE)} bytes served"
    assert (len(served) - 1) * len(VALUE) <= BUDGET


def _remote_call(node: otp.Node, name: str, request: Any) -> Any:
    """``request`` delivered to ``name`` as the receive thread delivers a call from another
    node (a ``RemoteReplyTo``); the value it is answered with."""
    answers: queue.Queue[tuple[bool, Any]] = queue.Queue()
    dist = types.SimpleNamespace(
        send_reply=lambda peer, ref, ok, value, run=None: answers.put((ok, value)),
    )
    peer = types.SimpleNamespace(node_id="app.mallory@127.0.0.1:1")
    handle = RemoteReplyTo(dist, peer, 1, "client:mallory")  # type: ignore[arg-type]
    pid = node.registry.whereis(name)
    assert pid is not None
    messaging.send_request(pid, request, handle)
    ok, value = answers.get(timeout=5)
    assert ok, value
    return value


def test_a_local_read_from_the_wire_is_charged_to_the_reply_budget(tmp_path: Path) -> None:
    """The storage actor's ``read`` call is on the allow-list for clients (a local,
    non-consistent read): it read a ``$batch`` whole, with no budget."""
    node = _single(tmp_path)
    name = storage.default_name("test", 1)
    _within_budget(_remote_call(node, name, ("read", _many_reads())))


def test_a_strong_read_answered_at_once_is_charged_to_the_reply_budget(tmp_path: Path) -> None:
    """A strong read the leader answers at once (a sole member, or a leader lease:
    ``ReadNow``) was read whole, with no budget, where the same read queued behind a
    position was charged to it. The acceptor's ``read`` call and the client gateway's read
    batches are open to clients."""
    node = _single(tmp_path)
    _within_budget(acceptor.read(addr("acceptor", node), _many_reads()))
    _within_budget(
        _remote_call(node, acceptor.default_name("test", 1), ("read", _many_reads(), None))
    )
