"""Unit tests of node ids and the wire envelope (no sockets)."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.distribution.helpers import colliding_map
from waraft.distribution import envelope, nodeid
from waraft.distribution.envelope import FrameError, Kind
from waraft.services import codec

LIMIT = 1 << 20


@pytest.mark.parametrize(
    ("node_id", "parts"),
    [
        ("n1@127.0.0.1:7001", ("n1", "127.0.0.1", 7001)),
        ("raft@host.example.com:0", ("raft", "host.example.com", 0)),
        ("n2@[::1]:7002", ("n2", "[::1]", 7002)),
        ("n3@[fe80::1%eth0]:7003", ("n3", "[fe80::1%eth0]", 7003)),
        ("kv.client12x3f@my_host-1:0", ("kv.client12x3f", "my_host-1", 0)),
    ],
)
def test_parse_node_ids(node_id: str, parts: tuple[str, str, int]) -> None:
    assert tuple(nodeid.parse(node_id)) == parts
    assert nodeid.make(*parts) == node_id


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "n1",
        "n1@host",
        "@h:1",
        "n1@:1",
        "n1@h:x",
        "n1@h:70000",
        "a/b@h:1",
        "n@[::1:1",
        "a@b@c:1",
        # Node ids come from the network too (routing ids, configs): nothing that would
        # split or forge a log line or an endpoint.
        "n1@a b:1",
        "n1@host\n:1",
        "n1@h;rm:1",
        "n 1@h:1",
        "n1\nforged@h:1",
        "n1@[::1]x]:1",
        "n1@[::1%a b]:1",
    ],
)
def test_reject_malformed_node_ids(bad: str) -> None:
    with pytest.raises(nodeid.NodeIdError):
        nodeid.parse(bad)
    assert not nodeid.is_node_id(bad)


def test_endpoint_and_sender_identity() -> None:
    assert nodeid.endpoint("n1@127.0.0.1:7001") == "tcp://127.0.0.1:7001"
    assert nodeid.endpoint("n2@[::1]:7002") == "tcp://[::1]:7002"
    assert nodeid.sender_of(b"n1@127.0.0.1:7001/ab12.3") == "n1@127.0.0.1:7001"
    for bad in (b"\x00\x01\x02", b"n1@127.0.0.1:7001", b"n1@127.0.0.1:7001/", b"junk/1", b"\xff/1"):
        assert nodeid.sender_of(bad) is None


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (envelope.cast_frame("srv", codec.packb(("m", 1))), (1, Kind.CAST, "srv", ("m", 1))),
        (envelope.info_frame("srv", codec.packb(None)), (1, Kind.INFO, "srv", None)),
        (envelope.call_frame("srv", 7, codec.packb([1])), (1, Kind.CALL, "srv", 7, (1,))),
        (envelope.reply_frame(7, True, codec.packb("v")), (1, Kind.REPLY, 7, "v")),
        (envelope.reply_frame(7, False, codec.packb("noproc")), (1, Kind.FAIL, 7, "noproc")),
        (envelope.ping_frame(3), (1, Kind.PING, 3)),
        (envelope.pong_frame(2**40), (1, Kind.PONG, 2**40)),
        # With the caller's run id (echoed by the answer) and the pinger's session.
        (
            envelope.call_frame("srv", 7, codec.packb("r"), 2**62),
            (1, Kind.CALL, "srv", 7, "r", 2**62),
        ),
        (envelope.reply_frame(7, True, codec.packb("v"), 5), (1, Kind.REPLY, 7, "v", 5)),
        (envelope.reply_frame(7, False, codec.packb("x"), 5), (1, Kind.FAIL, 7, "x", 5)),
        (envelope.ping_frame(3, 2**63 - 1, 2), (1, Kind.PING, 3, 2**63 - 1, 2, None)),
        (envelope.ping_frame(3, 9, 2, 2**63 - 1), (1, Kind.PING, 3, 9, 2, 2**63 - 1)),
        (envelope.pong_frame(3, (9, 0), (8, 1)), (1, Kind.PONG, 3, 9, 0, 8, 1)),
    ],
)
def test_frames_round_trip(frame: bytes, expected: tuple[object, ...]) -> None:
    assert envelope.decode(frame, LIMIT) == expected
    # The concatenated frame is exactly what msgpack makes of the whole array.
    assert frame == msgpack.packb(list(expected), use_bin_type=True)


def test_trailing_fields_of_a_known_kind_are_ignored() -> None:
    frame = codec.packb((1, Kind.CAST, "srv", "msg", "future-field"))
    assert envelope.decode(frame, LIMIT)[:4] == (1, Kind.CAST, "srv", "msg")


@pytest.mark.parametrize(
    ("frame", "counter"),
    [
        (b"", "rx_malformed"),
        (b"\x01\x02\x03", "rx_malformed"),
        (codec.packb({"version": 1}), "rx_malformed"),
        (codec.packb((2, Kind.CAST, "srv", "m")), "rx_bad_version"),
        (codec.packb(("1", Kind.CAST, "srv", "m")), "rx_bad_version"),
        (codec.packb((1, 99, "srv", "m")), "rx_unknown_kind"),
        (codec.packb((1, "cast", "srv", "m")), "rx_unknown_kind"),
        (codec.packb((1, True, "srv", "m")), "rx_unknown_kind"),
        (codec.packb((1, Kind.CAST, "srv")), "rx_malformed"),
        (codec.packb((1, Kind.CAST, 5, "m")), "rx_malformed"),
        (codec.packb((1, Kind.CALL, "srv", "ref", "m")), "rx_malformed"),
        (codec.packb((1, Kind.REPLY, "ref", "v")), "rx_malformed"),
        (envelope.cast_frame("srv", codec.packb("m"))[:-1], "rx_malformed"),  # truncated
        (envelope.cast_frame("srv", b"\xc1"), "rx_malformed"),  # never-used msgpack byte
        (envelope.cast_frame("srv", b"\x91" * 100_000), "rx_malformed"),  # nesting bomb
        (envelope.cast_frame("srv", b"x" * LIMIT), "rx_oversized"),
    ],
)
def test_bad_frames_are_classified(frame: bytes, counter: str) -> None:
    with pytest.raises(FrameError) as info:
        envelope.decode(frame, LIMIT)
    assert info.value.counter == counter


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_never_fails_otherwise_on_garbage(data: bytes) -> None:
    for frame in (data, b"\x94\x01" + data, b"\x95\x01\x02" + data):
        try:
            obj = envelope.decode(frame, LIMIT)
        except FrameError:
            continue
        assert isinstance(obj, tuple) and obj[0] == 1


def test_an_untrusted_frame_with_colliding_map_keys_is_refused_before_the_dict_is_built() -> None:
    """``hash(-1) == hash(-2)``: a map keyed by tuples of them is quadratic to build (20,000
    keys took seconds). It is refused in linear time (from members too, see below); the log
    and storage decode as before (nothing stored can become undecodable), and ordinary maps,
    even with a collision or two, pass."""
    keys = list(itertools.islice(itertools.product((-1, -2), repeat=16), 200))
    frame = envelope.cast_frame("x", colliding_map(20_000, 16))
    with pytest.raises(FrameError) as refused:
        envelope.decode(frame, 1 << 24, untrusted=True)
    assert refused.value.counter == "rx_malformed"
    assert "share a hash" in str(refused.value)
    few = {-1: "a", -2: "b", (0, -1): "c", (0, -2): "d", **{f"k{i}": i for i in range(50)}}
    for trusted in (False, True):
        obj = envelope.decode(envelope.cast_frame("x", codec.packb(few)), 1 << 20, True, trusted)
        assert obj[3] == few
    assert codec.unpackb(codec.packb({k: 0 for k in keys})) == {k: 0 for k in keys}


def test_a_members_frame_with_colliding_map_keys_is_refused_too() -> None:
    """Members' frames are decoded on the same receive thread, before anything looks at
    them: a 420 KB map of 20,000 keys sharing one hash took 7 s to build, so a 16 MB frame
    from one node key would hold the thread, and the GIL, for hours. A wire frame's maps are
    checked whoever sent it (the log and storage still decode as before)."""
    frame = envelope.cast_frame("raft_server_t_1", colliding_map(10_000, 16))
    with pytest.raises(FrameError) as refused:
        envelope.decode(frame, 1 << 24, check_depth=False, untrusted=False)
    assert refused.value.counter == "rx_malformed"
    assert "share a hash" in str(refused.value)


def test_peek_reads_a_frames_head_only() -> None:
    """What the receive thread answers a shed frame from: the kind, the name and the values
    after it, read from the first ``PEEK_BYTES`` whatever follows (a megabyte of junk here,
    which a decode would refuse); the run id a call ends with, read from its last bytes."""
    junk = b"\xc1" * LIMIT  # (0xc1: never used by msgpack)
    run = (1 << 62) + 7
    call = envelope.call_frame("svc", 99, junk, run)
    head = envelope.peek(call)
    assert head is not None and head[:2] == (Kind.CALL, "svc") and head[2].value() == 99
    assert envelope.call_run(call) == run
    assert envelope.call_run(envelope.call_frame("svc", 99, junk)) is None  # (a 5-element call)
    cast = envelope.cast_frame("acc", codec.packb(("client_batch", ("rx", "c@h:1"), 7)) + junk)
    head = envelope.peek(cast)
    assert head is not None and head[:2] == (Kind.CAST, "acc")
    reader = head[2]
    assert reader.array() == 3 and reader.value() == "client_batch"
    assert reader.value() == ("rx", "c@h:1") and reader.value() == 7
    with pytest.raises(codec.CodecError):
        reader.value()  # junk, or past the bytes read: never a decode of the rest
    assert envelope.may_want_answer(call) and envelope.may_want_answer(cast)
    assert envelope.peek(envelope.ping_frame(1)) is None
    for other in (envelope.ping_frame(1), envelope.info_frame("acc", b"\x01")):
        assert not envelope.may_want_answer(other)
    assert envelope.peek(envelope.cast_frame("x" * envelope.PEEK_BYTES, b"\x01")) is None
