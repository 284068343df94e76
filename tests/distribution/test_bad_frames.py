"""Hostile input sent with raw ZeroMQ sockets changes nothing but the counters."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import zmq

from waraft import distribution as dist
from waraft import otp
from waraft.distribution import envelope, receiver
from waraft.distribution.envelope import Kind
from waraft.services import codec

from .helpers import Child, start_sink, wait_until

LIMIT = 64 * 1024
FAKE = "intruder@127.0.0.1:9"  # a well-formed node id nobody runs


@pytest.fixture
def small_node() -> Iterator[str]:
    node_id = dist.start(
        "parent@127.0.0.1:0",
        max_frame_bytes=LIMIT,
        ping_interval=0.1,
        down_after=0.6,
        connect_timeout=0.6,
    )
    try:
        yield node_id
    finally:
        dist.stop()


def _dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], node_id: str, identity: bytes
) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(dist.nodeid.endpoint(node_id))
    return sock


def _wait_counter(key: str, at_least: int) -> None:
    wait_until(lambda: dist.stats().get(key, 0) >= at_least, what=f"{key} >= {at_least}")


def test_garbage_frames_are_dropped_and_counted(
    small_node: str, raw: zmq.Context[zmq.Socket[bytes]], shared_child: Child
) -> None:
    inbox = start_sink()
    sock = _dealer(raw, small_node, f"{FAKE}/raw".encode())
    good = envelope.cast_frame("sink", codec.packb("after"))
    bad = {
        "rx_malformed": [
            b"garbage",
            b"",
            good[: len(good) // 2],  # truncated
            envelope.cast_frame("sink", b"\xc1"),
            envelope.cast_frame("sink", b"\x91" * 50_000),
            codec.packb((1, Kind.CALL, "sink", "not-a-ref", 1)),
        ],
        "rx_bad_version": [codec.packb((7, Kind.CAST, "sink", "v7"))],
        "rx_unknown_kind": [codec.packb((1, 42, "sink", "?"))],
        "rx_oversized": [envelope.cast_frame("sink", codec.packb(b"x" * LIMIT))],
        "rx_late_replies": [envelope.reply_frame(123456, True, codec.packb("stray"))],
        "rx_noproc": [envelope.cast_frame("nobody", codec.packb("lost"))],
    }
    for frames in bad.values():
        for frame in frames:
            sock.send(frame)
    # Multipart shapes a DEALER of ours never sends: extra frames, REQ-style delimiter.
    sock.send_multipart([good, b"extra"])
    sock.send_multipart([b"", good])
    sock.send(good)
    assert inbox.wait_len(1) == [("cast", "after")]
    stats = dist.stats()
    for key, frames in bad.items():
        expected = len(frames) + (2 if key == "rx_malformed" else 0)
        assert stats.get(key, 0) == expected, key
    # The node still works both ways.
    assert shared_child.call("echo", "alive") == "alive"
    assert shared_child.call("call_to", ("sink", small_node), 1, 5.0) == ("ok", ("sink", 1))


def test_frames_without_a_node_identity_are_dropped(
    small_node: str, raw: zmq.Context[zmq.Socket[bytes]]
) -> None:
    inbox = start_sink()
    anonymous = raw.socket(zmq.DEALER)  # libzmq picks a random binary routing id
    anonymous.setsockopt(zmq.LINGER, 0)
    anonymous.connect(dist.nodeid.endpoint(small_node))
    # (keep every socket referenced: a collected socket is closed before it sends)
    # Also ids whose host would forge a log line or split an endpoint.
    idents = (b"no-node-here/1", b"\xff\xfe/2", b"evil@127.0.0.1\n:1/3", b"evil@a b:1/4")
    socks = [_dealer(raw, small_node, ident) for ident in idents]
    for sock in [*socks, anonymous]:
        sock.send(envelope.cast_frame("sink", codec.packb("x")))
    _wait_counter("rx_bad_identity", 5)
    good = _dealer(raw, small_node, f"{FAKE}/ok".encode())
    good.send(envelope.cast_frame("sink", codec.packb("ok")))
    assert inbox.wait_len(1) == [("cast", "ok")]


def test_frames_beyond_twice_the_limit_cut_the_connection(
    small_node: str, raw: zmq.Context[zmq.Socket[bytes]], shared_child: Child
) -> None:
    sock = _dealer(raw, small_node, f"{FAKE}/big".encode())
    sock.send(b"\x94\x01\x00" + b"x" * (3 * LIMIT))
    _wait_counter("conn_closed", 1)  # libzmq refused it (ZMQ_MAXMSGSIZE)
    assert shared_child.call("call_to", ("nobody", small_node), 1, 5.0) == ("exit", "noproc")


def test_a_raw_call_gets_its_answer_back(
    small_node: str, raw: zmq.Context[zmq.Socket[bytes]]
) -> None:
    # A client that speaks the protocol by hand: its call is answered on its own ROUTER.
    start_sink()
    server = raw.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    me = f"handmade@127.0.0.1:{port}"
    sock = _dealer(raw, small_node, f"{me}/t".encode())
    sock.send(envelope.call_frame("sink", 99, codec.packb("hi")))
    assert server.poll(10_000), "no answer"
    routing_id, frame = server.recv_multipart()
    assert routing_id.decode().startswith(small_node + "/")
    assert envelope.decode(frame, LIMIT) == (1, Kind.REPLY, 99, ("sink", "hi"))
    sock.send(envelope.ping_frame(5))
    # The node's liveness probe may ping this new peer first; skip its PINGs.
    for _ in range(10):
        assert server.poll(10_000), "no pong"
        decoded = envelope.decode(server.recv_multipart()[1], LIMIT)
        if decoded[1] != Kind.PING:
            break
    assert decoded == (1, Kind.PONG, 5)


def test_sending_an_oversized_frame_is_refused_locally(
    small_node: str, shared_child: Child
) -> None:
    big = b"x" * (LIMIT + 1)
    assert dist.cast(shared_child.echo, ("echo", big)) is False
    with pytest.raises(otp.ExitError) as info:
        otp.call(shared_child.echo, ("echo", big), 5.0)
    assert info.value.reason[0] == "frame_too_large"
    assert dist.stats()["tx_oversized"] == 2
    assert shared_child.call("echo", b"x" * (LIMIT // 2)) == b"x" * (LIMIT // 2)


def test_cast_limit_is_the_largest_payload_a_cast_carries(
    small_node: str, shared_child: Child
) -> None:
    # waraft.client keeps its frames within it: a payload one byte larger is dropped.
    addr = ("no_such_name", shared_child.node_id)  # dropped there; sent from here
    assert dist.frame_limit(shared_child.node_id) == LIMIT
    limit = dist.cast_limit(addr)
    assert limit is not None and LIMIT - 64 < limit < LIMIT
    assert dist.cast_limit(("sink", small_node)) is None  # this node: nothing is framed
    fitting = codec.packb(b"x" * (limit - 3))  # bin16: a 3-byte header
    assert len(fitting) == limit
    assert dist.cast_bytes(addr, fitting) is True
    assert dist.stats().get("tx_oversized", 0) == 0
    assert dist.cast_bytes(addr, codec.packb(b"x" * (limit - 2))) is False
    assert dist.stats()["tx_oversized"] == 1


def test_made_up_node_ids_cannot_fill_the_peer_table(
    raw: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # A full table evicts a peer that is down (issue 15), so the made-up peers must stay up
    # for the whole test: they claim a port that accepts connections (a silent ROUTER; a
    # refused connection marks a peer down at once) and down_after is far away.
    silent = raw.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    node_id = dist.start(
        "parent@127.0.0.1:0",
        settings=dist.DistSettings(max_peers=3, ping_interval=0.1, down_after=60.0),
    )
    try:
        inbox = start_sink()
        socks = [_dealer(raw, node_id, f"fake{i}@127.0.0.1:{port}/1".encode()) for i in range(6)]
        for sock in socks:
            sock.send(envelope.cast_frame("sink", codec.packb("x")))
        wait_until(lambda: dist.stats().get("rx_peer_limit", 0) == 3)
        assert len(dist.peers()) == 3 and len(inbox.wait_len(3)) == 3
        assert dist.cast(("sink", f"other@127.0.0.1:{port}"), "x") is False
        assert dist.stats()["tx_peer_limit"] == 1
    finally:
        dist.stop()
        silent.close()


def test_a_handler_failure_per_frame_is_counted_and_logged_once_a_second(
    raw: zmq.Context[zmq.Socket[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A delivery bug that every frame of a peer hits must not cost a log line per frame.
    def broken(*args: object) -> bool:
        raise RuntimeError("delivery bug")

    monkeypatch.setattr(receiver.Receiver, "_admit", broken)
    caplog.set_level(logging.ERROR, logger="waraft.distribution.receiver")
    node_id = dist.start("parent@127.0.0.1:0", ping_interval=0.1, down_after=0.6)
    try:
        started = time.monotonic()
        sock = _dealer(raw, node_id, f"{FAKE}/raw".encode())
        frames = 200
        for i in range(frames):
            sock.send(envelope.cast_frame("sink", codec.packb(i)))
        _wait_counter("rx_handler_errors", frames)
        elapsed = time.monotonic() - started
    finally:
        dist.stop()
    lines = [r.getMessage() for r in caplog.records if "failed to handle" in r.getMessage()]
    assert 1 <= len(lines) <= int(elapsed) + 2, lines
    assert "(1 such failures" in lines[0]
