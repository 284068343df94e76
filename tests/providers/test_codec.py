"""waraft.codec: msgpack only, tuples back, Config as an extension type, clear errors."""

from __future__ import annotations

import threading

import pytest

from waraft.core.types import Config, Entry, Identity, LogPos
from waraft.services.codec import CodecError, packb, unpackb

from .helpers import A, B, C, make_config


def test_commands_and_named_tuples_round_trip_equal() -> None:
    for value in [
        ("write", "t", "k", 1),
        ("read", "t", ("composite", 1)),
        "noop",
        LogPos(3, 4),
        Entry(1, ("$noop", 5), ("write", "t", "k", b"bytes"), None),
        {"a": (1, 2), (1, "x"): None},
        2**63 - 1,
        -5,
        1.25,
        True,
        None,
        "text",
        b"raw",
    ]:
        assert unpackb(packb(value)) == value
    # Lists come back as tuples, at any depth.
    assert unpackb(packb([1, [2, 3]])) == (1, (2, 3))
    assert isinstance(unpackb(packb([1, 2])), tuple)


def test_config_survives_anywhere() -> None:
    config = make_config(A, B, witness=(C,))
    command = ("config", config)
    decoded = unpackb(packb(Entry(3, "key", command, "label")))
    assert decoded[2] == command
    got = decoded[2][1]
    assert isinstance(got, Config)
    assert all(isinstance(i, Identity) for i in got.membership + got.participants + got.witness)
    assert unpackb(packb({"nested": [config]})) == {"nested": (config,)}


def test_errors_are_codec_errors() -> None:
    with pytest.raises(CodecError):
        packb(object())
    with pytest.raises(CodecError):
        packb({1: {object()}})
    assert packb(1) == b"\x01"  # a failed pack leaves the thread's packer usable
    for bad in (b"", b"\x92\x01", b"\xc1", packb(1) + b"\x00"):
        with pytest.raises(CodecError):
            unpackb(bad)
    with pytest.raises(CodecError, match="exceeds"):
        unpackb(packb("x" * 100), max_size=10)
    assert isinstance(CodecError("x"), ValueError)


def test_packers_are_per_thread() -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(2000):
                value = ("write", "t", n, i, "x" * (i % 50))
                assert unpackb(packb(value)) == value
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors


def _nested_empties(count: int, depth: int) -> bytes:
    deep: object = ()
    for _ in range(depth):
        deep = (deep,)
    return packb(tuple(deep for _ in range(count)))


def test_untrusted_input_holding_more_values_than_the_limit_is_refused() -> None:
    """msgpack's cost follows values, not bytes: a 14 MB client frame of nested empty tuples
    took seconds and 620 MB to decode. Untrusted input stops at ``MAX_UNTRUSTED_OBJECTS``
    values (nested containers, a single long array or map from its header, extension
    payloads); trusted input (members, the log, storage) decodes as before."""
    import msgpack

    from waraft.services.codec import MAX_UNTRUSTED_OBJECTS

    limit = MAX_UNTRUSTED_OBJECTS
    nested = _nested_empties(limit // 20 + 1, 20)
    flat = packb(tuple(range(limit + 1)))
    maps = packb([{} for _ in range(limit // 2)] + [{1: 2} for _ in range(limit // 4)])
    config = msgpack.ExtType(1, msgpack.packb([1, [["a", "n"]] * (limit // 3 + 1), [], []]))
    for data in (nested, flat, maps, packb(("x", config))):
        assert unpackb(data) is not None  # trusted: no limit
        with pytest.raises(CodecError, match=f"more than {limit} values|exceeds max_"):
            unpackb(data, untrusted=True)
    fits = _nested_empties(limit // 21, 20)
    assert unpackb(fits, untrusted=True) == unpackb(fits)
    batch = tuple(
        (i, ("write", "kv", i, {"f": [1, 2.5, None]}), make_config(A, B)) for i in range(2000)
    )
    assert unpackb(packb(batch), untrusted=True) == unpackb(packb(batch))
