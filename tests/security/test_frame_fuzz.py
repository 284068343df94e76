"""Fuzzing the frame decoder: whatever bytes arrive, ``envelope.decode`` returns a checked
envelope or raises ``FrameError`` (never anything else), and nothing deeper than
``MAX_DEPTH`` gets through."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waraft.core.rpc import RpcDecodeError, from_wire, short_repr
from waraft.distribution import envelope
from waraft.distribution.envelope import MAX_DEPTH, FrameError

LIMIT = 1 << 20

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.floats(allow_nan=False),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def check(frame: bytes) -> None:
    try:
        obj = envelope.decode(frame, LIMIT)
    except FrameError as exc:
        assert exc.counter.startswith("rx_")
        return
    assert type(obj) is tuple and obj[0] == envelope.VERSION
    assert not envelope.too_deep(obj, MAX_DEPTH)
    short_repr(obj)  # what a log line would do with it: bounded, never raises


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_random_bytes(frame: bytes) -> None:
    check(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=8))
def test_random_bytes_behind_a_valid_header(body: bytes, kind: int) -> None:
    check(bytes((0x94, envelope.VERSION, kind)) + body)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=10), values)
def test_random_messages_round_trip_or_are_refused(name: str, msg: Any) -> None:
    frame = envelope.cast_frame(name, msgpack.packb(msg, use_bin_type=True))
    check(frame)
    if depth(msg) + 1 <= MAX_DEPTH:
        assert envelope.decode(frame, LIMIT)[2] == name


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=MAX_DEPTH, max_value=3000), st.sampled_from(["list", "map"]))
def test_deep_nesting_is_refused(levels: int, shape: str) -> None:
    # Written by hand: msgpack's own packer refuses to nest beyond 1024.
    level = b"\x91" if shape == "list" else b"\x81\xa1k"
    frame = envelope.cast_frame("x", level * levels + b"\x00")
    try:
        envelope.decode(frame, LIMIT)
    except FrameError as exc:
        assert exc.counter in ("rx_too_deep", "rx_malformed")
    else:
        raise AssertionError("a frame nested deeper than MAX_DEPTH got through")


@settings(max_examples=300, deadline=None)
@given(values)
def test_rpc_decoding_refuses_cleanly(wire: Any) -> None:
    with contextlib.suppress(RpcDecodeError):
        from_wire(wire, "raft_server_t_1")


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=2**62 + 1, max_value=2**64 - 1))
def test_unpersistable_terms_are_refused(term: int) -> None:
    for wire in (
        ["request_vote", term, "s", "n@h:1", ["normal", 1, 1]],
        ["append_entries", 1, "s", "n@h:1", [0, term, [], 0, 0]],
        ["append_entries", 1, "s", "n@h:1", [0, 0, [[term, "k", ("c",)]], 0, 0]],
    ):
        try:
            from_wire(wire, "s")
        except RpcDecodeError:
            continue
        raise AssertionError(f"term {term} accepted in {wire[0]}")
