"""The wire envelope: one msgpack array per ZeroMQ frame, with a protocol version.

Every message a DEALER sends is exactly one frame (the ROUTER adds the sender's routing id in
front, so the receiver reads exactly two frames). The frame is a msgpack array whose first two
elements are the protocol version and the kind:

====================  =====================================  ===============================
kind                  array                                  delivered as
====================  =====================================  ===============================
``CAST`` (0)          ``[1, 0, name, msg]``                  ``handle_cast(msg)``
``INFO`` (1)          ``[1, 1, name, msg]``                  ``handle_info(msg)``
``CALL`` (2)          ``[1, 2, name, ref, request]``         ``handle_call(request, from_)``
``REPLY`` (3)         ``[1, 3, ref, value]``                 the caller's ``call`` returns
``FAIL`` (4)          ``[1, 4, ref, reason]``                the caller gets ``ExitError``
``PING`` (5)          ``[1, 5, seq]``                        answered with ``PONG``
``PONG`` (6)          ``[1, 6, seq]``                        peer liveness
====================  =====================================  ===============================

The message itself is the *last* element, so a frame is built by concatenating a cached prefix
(array header, version, kind, name) with the message's msgpack encoding: a message encoded once
(``codec.packb``) can be shipped to any number of peers without being encoded again. A receiver
ignores extra trailing elements of a known kind (room for compatible additions); an incompatible
change takes a new version number, and frames of another version are dropped and counted.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final

from waraft.services import codec

VERSION: Final = 1


class Kind(IntEnum):
    """What a frame carries (the second element of the array)."""

    CAST = 0
    INFO = 1
    CALL = 2
    REPLY = 3
    FAIL = 4
    PING = 5
    PONG = 6


# Minimum array length per kind (version and kind included).
_ARITY: Final[dict[int, int]] = {
    Kind.CAST: 4,
    Kind.INFO: 4,
    Kind.CALL: 5,
    Kind.REPLY: 4,
    Kind.FAIL: 4,
    Kind.PING: 3,
    Kind.PONG: 3,
}

_FIXARRAY: Final = 0x90
_MAX_PREFIX_CACHE: Final = 4096


class FrameError(ValueError):
    """A frame that must be dropped; ``counter`` names the statistic it is counted under."""

    def __init__(self, counter: str, detail: str) -> None:
        super().__init__(detail)
        self.counter = counter


def _header(n: int, kind: Kind) -> bytes:
    # Fixarray header, then positive fixints for the version and the kind.
    return bytes((_FIXARRAY | n, VERSION, int(kind)))


# Per kind, registered name -> the encoded ``[version, kind, name`` prefix. Plain dicts keyed
# by str: hashing an IntEnum member would run Python code on every send.
_CAST_PREFIXES: dict[str, bytes] = {}
_INFO_PREFIXES: dict[str, bytes] = {}
_CALL_PREFIXES: dict[str, bytes] = {}


def _prefix(cache: dict[str, bytes], kind: Kind, n: int, name: str) -> bytes:
    prefix = _header(n, kind) + codec.packb(name)
    if len(cache) >= _MAX_PREFIX_CACHE:
        cache.clear()  # names are registered names, so this almost never happens
    cache[name] = prefix
    return prefix


def cast_frame(name: str, payload: bytes) -> bytes:
    """A CAST frame for the registered ``name``; ``payload`` is one msgpack-encoded object."""
    prefix = _CAST_PREFIXES.get(name)
    if prefix is None:
        prefix = _prefix(_CAST_PREFIXES, Kind.CAST, 4, name)
    return prefix + payload


def info_frame(name: str, payload: bytes) -> bytes:
    """An INFO frame (delivered to ``handle_info``); ``payload`` as for :func:`cast_frame`."""
    prefix = _INFO_PREFIXES.get(name)
    if prefix is None:
        prefix = _prefix(_INFO_PREFIXES, Kind.INFO, 4, name)
    return prefix + payload


def call_frame(name: str, ref: int, payload: bytes) -> bytes:
    """A CALL frame; the answer comes back as REPLY or FAIL with the same ``ref``."""
    prefix = _CALL_PREFIXES.get(name)
    if prefix is None:
        prefix = _prefix(_CALL_PREFIXES, Kind.CALL, 5, name)
    return prefix + codec.packb(ref) + payload


_REPLY_HEADER: Final = _header(4, Kind.REPLY)
_FAIL_HEADER: Final = _header(4, Kind.FAIL)


def reply_frame(ref: int, ok: bool, payload: bytes) -> bytes:
    """A REPLY (``ok``) or FAIL frame answering call ``ref``."""
    return (_REPLY_HEADER if ok else _FAIL_HEADER) + codec.packb(ref) + payload


def ping_frame(seq: int) -> bytes:
    """A PING carrying ``seq`` (echoed by the PONG)."""
    return _header(3, Kind.PING) + codec.packb(seq)


def pong_frame(seq: int) -> bytes:
    """The answer to PING ``seq``."""
    return _header(3, Kind.PONG) + codec.packb(seq)


def decode(frame: bytes, max_bytes: int) -> tuple[Any, ...]:
    """Check and decode one frame into its array (a tuple).

    The size and the version are checked before anything is decoded. Raises
    :class:`FrameError` with counter ``"rx_oversized"``, ``"rx_bad_version"``,
    ``"rx_malformed"`` or ``"rx_unknown_kind"``.
    """
    size = len(frame)
    if size > max_bytes:
        raise FrameError("rx_oversized", f"frame of {size} bytes exceeds {max_bytes}")
    if size < 3 or frame[0] & 0xF0 != _FIXARRAY:
        raise FrameError("rx_malformed", "not an envelope array")
    if frame[1] != VERSION:
        raise FrameError("rx_bad_version", f"protocol version byte {frame[1]:#x}")
    try:
        obj = codec.unpackb(frame)
    except codec.CodecError as exc:
        raise FrameError("rx_malformed", str(exc)) from None
    # The header bytes promise a tuple of at least 3 elements with VERSION first.
    kind = obj[1]
    arity = _ARITY.get(kind) if type(kind) is int else None
    if arity is None:
        raise FrameError("rx_unknown_kind", f"unknown kind {kind!r}")
    if len(obj) < arity:
        raise FrameError("rx_malformed", f"{Kind(kind).name} frame with {len(obj)} elements")
    if kind <= Kind.CALL:
        if type(obj[2]) is not str:
            raise FrameError("rx_malformed", "destination name is not a string")
        if kind == Kind.CALL and type(obj[3]) is not int:
            raise FrameError("rx_malformed", "call reference is not an integer")
    elif type(obj[2]) is not int:
        raise FrameError("rx_malformed", "reference is not an integer")
    return obj  # type: ignore[no-any-return]
