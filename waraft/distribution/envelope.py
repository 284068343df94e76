"""The wire envelope: one msgpack array per ZeroMQ frame, with a protocol version.

Every message a DEALER sends is exactly one frame (the ROUTER adds the sender's routing id in
front, so the receiver reads exactly two frames). The frame is a msgpack array whose first two
elements are the protocol version and the kind:

====================  =====================================  ===============================
kind                  array                                  delivered as
====================  =====================================  ===============================
``CAST`` (0)          ``[1, 0, name, msg]``                  ``handle_cast(msg)``
``INFO`` (1)          ``[1, 1, name, msg]``                  ``handle_info(msg)``
``CALL`` (2)          ``[1, 2, name, ref, request, run]``    ``handle_call(request, from_)``
``REPLY`` (3)         ``[1, 3, ref, value, run]``            the caller's ``call`` returns
``FAIL`` (4)          ``[1, 4, ref, reason, run]``           the caller gets ``ExitError``
``PING`` (5)          ``[1, 5, seq, run, epoch, to]``        answered with ``PONG``
``PONG`` (6)          ``[1, 6, seq, run, epoch, r, e]``      peer liveness
====================  =====================================  ===============================

The message itself is the element after the fixed fields, so a frame is built by concatenating a
cached prefix (array header, version, kind, name) with the message's msgpack encoding (and, for
a call, the caller's ``run``): a message encoded once (``codec.packb``) can be shipped to any
number of peers without being encoded again. A receiver ignores extra trailing elements of a
known kind (room for compatible additions); an incompatible change takes a new version number,
and frames of another version are dropped and counted.

The trailing elements are such additions, optional on the wire (senders of older builds and
hand-made clients omit them):

* ``run`` of a CALL is the caller's run id (``Dist.run_id``, random per start of the
  distribution); the REPLY/FAIL echoes it, and a caller drops an answer naming another run: a
  node restarted under the same id never takes the answer to its previous run's call for one
  of its own.
* ``run, epoch`` of a PING are the pinging node's run id and its *session epoch* for the pinged
  node (how many times it has found that node down, see ``peers``); the PONG echoes them and
  adds the answering node's own run id and epoch for the pinger (``r, e``). ``to`` of a PING
  is the pinged node's run id as last heard of by the pinger (nil if none): an epoch that
  counts downs of a previous run of the pinged node is no news to a new run of it.
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

MAX_DEPTH: Final = 32
"""Deepest nesting of arrays and maps a frame may carry (the envelope counts as one level).

Python code that walks a decoded value (``repr`` when it is logged, equality, hashing) recurses
once per level; a 1 KB frame nested 1000 deep would otherwise raise ``RecursionError`` wherever
it is first looked at. Nothing waraft sends nests deeper than about 8."""

# Bytes that can start an array or a map in msgpack (fixarray, fixmap, array16/32, map16/32).
# Every level of nesting needs one of them, so a frame holding at most MAX_DEPTH such bytes
# cannot be too deep and is not walked at all (a C-speed count instead of a Python walk).
_CONTAINER_BYTES: Final = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_CONTAINER: Final = bytes(b for b in range(256) if b not in _CONTAINER_BYTES)


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


_CALL_RUN_PREFIXES: dict[str, bytes] = {}


def call_frame(name: str, ref: int, payload: bytes, run: int | None = None) -> bytes:
    """A CALL frame; the answer comes back as REPLY or FAIL with the same ``ref`` (and
    ``run``, the caller's run id, when given)."""
    if run is None:
        prefix = _CALL_PREFIXES.get(name)
        if prefix is None:
            prefix = _prefix(_CALL_PREFIXES, Kind.CALL, 5, name)
        return prefix + codec.packb(ref) + payload
    prefix = _CALL_RUN_PREFIXES.get(name)
    if prefix is None:
        prefix = _prefix(_CALL_RUN_PREFIXES, Kind.CALL, 6, name)
    return prefix + codec.packb(ref) + payload + codec.packb(run)


_REPLY_HEADER: Final = _header(4, Kind.REPLY)
_FAIL_HEADER: Final = _header(4, Kind.FAIL)
_REPLY_RUN_HEADER: Final = _header(5, Kind.REPLY)
_FAIL_RUN_HEADER: Final = _header(5, Kind.FAIL)


def reply_frame(ref: int, ok: bool, payload: bytes, run: int | None = None) -> bytes:
    """A REPLY (``ok``) or FAIL frame answering call ``ref`` of the caller's run ``run``
    (None: the call carried none)."""
    if run is None:
        return (_REPLY_HEADER if ok else _FAIL_HEADER) + codec.packb(ref) + payload
    header = _REPLY_RUN_HEADER if ok else _FAIL_RUN_HEADER
    return header + codec.packb(ref) + payload + codec.packb(run)


def ping_frame(
    seq: int, run: int | None = None, epoch: int = 0, to_run: int | None = None
) -> bytes:
    """A PING carrying ``seq`` and, when ``run`` is given, the sender's run id and session
    epoch for the receiver (echoed by the PONG) and the receiver's run the epoch counts downs
    of (``to_run``; None when the sender has heard of no run of it)."""
    if run is None:
        return _header(3, Kind.PING) + codec.packb(seq)
    fields = (seq, run, epoch, to_run)
    return _header(6, Kind.PING) + b"".join(codec.packb(v) for v in fields)


def pong_frame(
    seq: int, echo: tuple[int, int] | None = None, own: tuple[int, int] = (0, 0)
) -> bytes:
    """The answer to PING ``seq``: with the ping's (run, epoch) as ``echo`` when it had them,
    followed by the answering node's own (run, epoch) for the pinger."""
    if echo is None:
        return _header(3, Kind.PONG) + codec.packb(seq)
    fields = (seq, *echo, *own)
    return _header(7, Kind.PONG) + b"".join(codec.packb(v) for v in fields)


def trailing_int(obj: tuple[Any, ...], index: int) -> int | None:
    """Element ``index`` of a decoded frame if it is there and an integer, else None (an
    optional trailing field: absent from older senders' frames, ignored when malformed)."""
    if len(obj) > index:
        value = obj[index]
        if type(value) is int:
            return value
    return None


def too_deep(obj: Any, limit: int) -> bool:
    """Whether ``obj`` (a decoded msgpack value) nests tuples/dicts more than ``limit`` deep.

    Iterative, so it cannot itself run out of stack."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        if depth > limit:
            return True
        children = value.values() if type(value) is dict else value
        if type(value) is dict:
            for key in value:
                if type(key) is tuple:
                    push((key, depth + 1))
        for child in children:
            kind = type(child)
            if kind is tuple or kind is dict:
                push((child, depth + 1))
    return False


def is_deep(frame: bytes, value: Any) -> bool:
    """Whether ``value`` (the message decoded from ``frame``) nests deeper than the
    :data:`MAX_DEPTH` a frame allows (the envelope being one level). C-speed for frames with
    few containers; a walk of ``value`` otherwise (about 2.5 times a decode)."""
    if len(frame.translate(None, _NOT_CONTAINER)) <= MAX_DEPTH:
        return False
    return too_deep(value, MAX_DEPTH - 1)


PEEK_BYTES: Final = 1024
"""Bytes of a frame :func:`peek` reads at most: room for the fixed fields and the leading
values of the message (registered names and node ids are short), whatever the frame's size."""

_UINT64: Final = 0xCF


def may_want_answer(frame: bytes) -> bool:
    """Whether a frame's kind byte says CALL or CAST, whose sender may wait for an answer
    (a cast that carries its reply address); one byte read, nothing decoded."""
    return len(frame) > 2 and (frame[2] == Kind.CALL or frame[2] == Kind.CAST)


def peek(frame: bytes) -> tuple[int, str, codec.Peek] | None:
    """The kind and destination name of a CAST, INFO or CALL frame, read from its first
    :data:`PEEK_BYTES` only, and a reader at the element after the name (a call's ``ref``,
    else the message); None for another kind or a frame whose head does not read as one.
    Nothing past the head is decoded or checked (see :func:`decode` for that): for the
    receive thread answering a frame it will not decode (``receiver``)."""
    if len(frame) < 3 or frame[0] & 0xF0 != _FIXARRAY or frame[1] != VERSION:
        return None
    kind = frame[2]
    if kind > Kind.CALL or frame[0] & 0x0F < _ARITY[kind]:
        return None
    reader = codec.Peek(memoryview(frame)[3:PEEK_BYTES])
    try:
        name = reader.value()
    except codec.CodecError:
        return None
    return (kind, name, reader) if type(name) is str else None


def call_run(frame: bytes) -> int | None:
    """The caller's run id a CALL frame ends with, read from its last bytes without decoding
    the request before it; None if the frame has none, or none read that way.

    ``Dist.run_id`` always encodes as a uint64 (``0xcf`` and 8 bytes: bit 62 is set), so a
    waraft caller's run is read exactly. A hand-made caller's other integer gets an answer
    without one, which the caller accepts (references start at a random 62-bit number each
    run, so an answer cannot complete another run's call by its reference); or, should the
    bytes before its short run read as a uint64, a wrong one, which the caller drops: that
    call times out, as every shed call did before they were answered."""
    if frame[0] & 0x0F >= _ARITY[Kind.CALL] + 1 and len(frame) >= 9 and frame[-9] == _UINT64:
        return int.from_bytes(frame[-8:], "big")
    return None


def decode(
    frame: bytes, max_bytes: int, check_depth: bool = True, untrusted: bool = False
) -> tuple[Any, ...]:
    """Check and decode one frame into its array (a tuple).

    The size and the version are checked before anything is decoded. Raises
    :class:`FrameError` with counter ``"rx_oversized"``, ``"rx_bad_version"``,
    ``"rx_malformed"``, ``"rx_too_deep"`` (nested deeper than :data:`MAX_DEPTH`) or
    ``"rx_unknown_kind"``. ``check_depth=False`` leaves the depth to the caller
    (:func:`is_deep`): the receive thread checks it only where it matters, after admission.
    ``untrusted``: a frame from a peer that is not a member (its values are counted, see
    ``codec.unpackb``). A map whose keys' hashes collide is ``rx_malformed`` whoever sent
    it: building it is quadratic, and a member's frame is decoded on the same receive
    thread as everyone's.
    """
    size = len(frame)
    if size > max_bytes:
        raise FrameError("rx_oversized", f"frame of {size} bytes exceeds {max_bytes}")
    if size < 3 or frame[0] & 0xF0 != _FIXARRAY:
        raise FrameError("rx_malformed", "not an envelope array")
    if frame[1] != VERSION:
        raise FrameError("rx_bad_version", f"protocol version byte {frame[1]:#x}")
    try:
        obj = codec.unpackb(frame, untrusted=untrusted, checked_maps=True)
    except codec.CodecError as exc:
        raise FrameError("rx_malformed", str(exc)) from None
    if check_depth and is_deep(frame, obj):
        raise FrameError("rx_too_deep", f"nested deeper than {MAX_DEPTH} levels")
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
