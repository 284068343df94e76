"""msgpack encoding for everything waraft writes to disk or the wire (never pickle).

* Arrays decode as tuples (``use_list=False``), so commands such as ``("write", "t", "k", 1)``
  and NamedTuples (``LogPos``, ``Identity``, ``Entry``) compare equal after a round trip.
* Strings decode as ``str`` (``raw=False``); map keys may be any hashable value
  (``strict_map_key=False``).
* ``waraft.core.types.Config`` travels as msgpack extension type ``CONFIG_EXT`` (1) whose payload
  is ``[version, membership, participants, witness]`` with identities as ``[name, node]``; it
  decodes back to a ``Config`` holding ``Identity`` tuples wherever it appears.
* Every failure raises ``CodecError`` (a ``ValueError``).

Thread safety: each thread packs with its own ``msgpack.Packer`` (reusing one is ~35% faster
than ``msgpack.packb`` for small objects, and a Packer keeps an internal buffer that must not be
shared between threads).
"""

from __future__ import annotations

import threading
from typing import Any, Final

import msgpack

from waraft.core.types import Config, Identity

CONFIG_EXT: Final = 1


class CodecError(ValueError):
    """Data that cannot be encoded, or bytes that are not a valid encoding."""


def _default(obj: Any) -> Any:
    if isinstance(obj, Config):
        body = (
            obj.version,
            [tuple(i) for i in obj.membership],
            [tuple(i) for i in obj.participants],
            [tuple(i) for i in obj.witness],
        )
        # A separate packer: the calling thread's packer is in the middle of a pack.
        return msgpack.ExtType(CONFIG_EXT, msgpack.packb(body))
    raise TypeError(f"cannot encode {type(obj).__name__!r} with msgpack")


def _identities(raw: Any) -> tuple[Identity, ...]:
    return tuple(Identity(str(name), str(node)) for name, node in raw)


def _config(body: Any) -> Config:
    version, membership, participants, witness = body
    return Config(
        version=int(version),
        membership=_identities(membership),
        participants=_identities(participants),
        witness=_identities(witness),
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == CONFIG_EXT:
        return _config(msgpack.unpackb(data, use_list=False))
    return msgpack.ExtType(code, data)


_local = threading.local()


def _new_packer() -> Any:
    packer = msgpack.Packer(default=_default, use_bin_type=True, autoreset=True)
    _local.packer = packer
    return packer


def packb(obj: Any) -> bytes:
    """Encode ``obj``; raises ``CodecError`` for values msgpack cannot carry."""
    try:
        packer = _local.packer
    except AttributeError:
        packer = _new_packer()
    try:
        data: bytes = packer.pack(obj)
    except Exception as exc:
        raise CodecError(f"cannot encode value: {exc}") from exc
    return data


def array_header(count: int) -> bytes:
    """msgpack's header of an array of ``count`` items, as ``packb`` writes it: with the
    items' own encodings after it, the same bytes as ``packb`` of the whole list (for
    building a message from parts encoded once)."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


MAX_KEY_COLLISIONS: Final = 4
"""Keys of one map (decoded with ``untrusted=True``) that may share a hash with another."""


def _checked_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A map of untrusted data, refused when its keys' hashes collide.

    Keys that share a hash make building the dict quadratic: ``hash(-1) == hash(-2)``, so do
    tuples of them, and ints ``2**61 - 1`` apart (``str`` and ``bytes`` hashes are seeded per
    process, so an attacker cannot aim at them). One 840 KB frame of such a map held a node's
    receive thread, and the GIL, for 21 s. Hashing every key first is linear; a map with more
    than ``MAX_KEY_COLLISIONS`` keys whose hashes repeat is refused before it is built."""
    if len(pairs) > MAX_KEY_COLLISIONS + 1:
        hashes = {hash(key) for key, _ in pairs}
        if len(pairs) - len(hashes) > MAX_KEY_COLLISIONS:
            raise ValueError(f"{len(pairs) - len(hashes)} map keys share a hash with another")
    return dict(pairs)


MAX_UNTRUSTED_OBJECTS: Final = 1_000_000
"""Values (arrays, maps and everything inside them, extension payloads included) that one
input decoded with ``untrusted=True`` may hold. A constant, not a setting: a ``$batch``
payload is decoded with it at apply on every replica, which must all answer alike."""


class _Untrusted:
    """The hooks of one untrusted decode: they count the values built so far and stop the
    decode past ``MAX_UNTRUSTED_OBJECTS``.

    msgpack's cost and memory follow the number of values, not bytes: an empty array is one
    byte on the wire and a 56-byte tuple in memory, and a 14 MB client frame of nested empty
    tuples took 4.3 s and 620 MB to decode on a node's receive thread (a review's finding).
    A container's items are counted when msgpack finishes it (every value but the outermost
    is an item of one container), so a decode stops within one container of the limit;
    ``max_array_len`` / ``max_map_len`` refuse a single container above it from its header,
    before its items are built."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_UNTRUSTED_OBJECTS

    def _take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise ValueError(f"more than {MAX_UNTRUSTED_OBJECTS} values")

    def array(self, items: tuple[Any, ...]) -> tuple[Any, ...]:
        self._take(len(items))
        return items

    def map(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        self._take(2 * len(pairs))
        return _checked_map(pairs)

    def ext(self, code: int, data: bytes) -> Any:
        if code == CONFIG_EXT:
            return _config(self.decode(data))
        return msgpack.ExtType(code, data)

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        return msgpack.unpackb(
            data,
            use_list=False,
            raw=False,
            strict_map_key=False,
            ext_hook=self.ext,
            list_hook=self.array,
            object_pairs_hook=self.map,
            max_array_len=MAX_UNTRUSTED_OBJECTS,
            max_map_len=MAX_UNTRUSTED_OBJECTS,
        )


def unpackb(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int | None = None,
    untrusted: bool = False,
    checked_maps: bool = False,
) -> Any:
    """Decode one complete msgpack object; raises ``CodecError`` on bad, short or extra bytes.

    ``max_size`` rejects inputs longer than that many bytes before decoding anything.
    ``untrusted`` (frames from peers that are not members, and clients' ``$batch`` payloads)
    refuses maps whose keys' hashes collide (``_checked_map``) and inputs holding more than
    ``MAX_UNTRUSTED_OBJECTS`` values (``_Untrusted``); data already admitted (logs, storage,
    members' frames) is decoded without these checks, so nothing stored can become
    undecodable. ``checked_maps`` refuses colliding map keys alone (every wire frame, members'
    too: one node key's 16 MB map would otherwise hold the receive thread for hours).
    """
    if max_size is not None and len(data) > max_size:
        raise CodecError(f"encoded value of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        if untrusted and len(data) > MAX_UNTRUSTED_OBJECTS:
            # Every value takes a byte at least, so only inputs longer than the limit can
            # pass it: the counting hooks (a call per array) stay off the usual small frames.
            return _Untrusted().decode(data)
        return msgpack.unpackb(
            data,
            use_list=False,
            raw=False,
            strict_map_key=False,
            ext_hook=_ext_hook,
            object_pairs_hook=_checked_map if untrusted or checked_maps else None,
        )
    except Exception as exc:
        raise CodecError(f"invalid msgpack data: {type(exc).__name__}: {exc}") from exc


class Peek:
    """The leading values of msgpack data, read one by one without decoding the rest.

    Built over a prefix of the data (the caller bounds it): reading past the prefix, or a
    value of another type than asked for, raises ``CodecError``, so a reader never costs more
    than its prefix whatever the data holds. Used where a full decode is what must be
    avoided (the receive thread answering a frame it sheds)."""

    __slots__ = ("_unpacker",)

    def __init__(self, prefix: bytes | bytearray | memoryview) -> None:
        self._unpacker = msgpack.Unpacker(use_list=False, raw=False, strict_map_key=False)
        self._unpacker.feed(prefix)

    def array(self) -> int:
        """The element count of the next value, an array (whose elements come next)."""
        try:
            return int(self._unpacker.read_array_header())
        except Exception as exc:
            raise CodecError(f"no array header: {type(exc).__name__}: {exc}") from None

    def value(self) -> Any:
        """The next value, whole (so a small one: it must end within the prefix)."""
        try:
            return self._unpacker.unpack()
        except Exception as exc:
            raise CodecError(f"no complete value: {type(exc).__name__}: {exc}") from None


__all__ = ["CONFIG_EXT", "MAX_UNTRUSTED_OBJECTS", "CodecError", "Peek", "packb", "unpackb"]
