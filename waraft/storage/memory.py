"""In-memory storage: WARaft's ``wa_raft_storage_ets`` (the default, demo-grade provider).

The key space is a dict; position, config, label and the incomplete mark are attributes. A
snapshot is a directory holding ``data`` (one CRC-framed msgpack document with the metadata and
every key/value pair) and ``metadata`` (position and config, readable without loading the data);
opening one checks the position first.

The provider runs in a scheduled storage actor (``blocking_io`` False), so its snapshot file
work (encoding, writing, fsync, reading) goes through ``otp.blocking``: on the node's I/O
threads, not on a scheduler that every other partition of the node shares.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Self

from waraft import otp
from waraft.core.rpc import clipped_repr
from waraft.core.types import Config, LogPos, is_config_command, is_hashable
from waraft.services.codec import CodecError, packb, unpackb
from waraft.storage.provider import (
    BAD_POSITION,
    NOT_FOUND,
    OK,
    InvalidIncompleteReplica,
    PartialApplyError,
    StorageOptions,
    StorageProvider,
    UnknownCommandError,
    batch_refusal,
    command_kind,
    is_data_replica,
    refused_at,
    write_file_durably,
    write_metadata,
)

logger = logging.getLogger(__name__)

DATA_FILE: Final = "data"
_MAGIC: Final = b"WRAFTSS1"
_HEADER: Final = struct.Struct("<8sIQ")  # magic, crc32(body), len(body)


def _encode_snapshot(
    position: LogPos,
    config: tuple[LogPos, Config] | None,
    label: Any,
    incomplete: bool,
    data: Mapping[Any, Any],
) -> bytes:
    body = packb(
        {
            "position": tuple(position),
            "config": None if config is None else (tuple(config[0]), config[1]),
            "label": label,
            "incomplete": incomplete,
            "data": list(data.items()),
        }
    )
    return _HEADER.pack(_MAGIC, zlib.crc32(body), len(body)) + body


def _decode_snapshot(raw: bytes) -> dict[str, Any]:
    if len(raw) < _HEADER.size:
        raise CodecError("snapshot data file is truncated")
    magic, crc, length = _HEADER.unpack_from(raw)
    body = memoryview(raw)[_HEADER.size :]
    if magic != _MAGIC:
        raise CodecError("not a waraft memory snapshot")
    if len(body) != length:
        raise CodecError(f"snapshot data holds {len(body)} bytes, expected {length}")
    if zlib.crc32(body) != crc:
        raise CodecError("snapshot data CRC mismatch")
    doc = unpackb(body)
    if not isinstance(doc, dict):
        raise CodecError("snapshot data is not a map")
    return doc


def _read_snapshot(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        return _decode_snapshot(f.read())


class MemoryStorage(StorageProvider):
    """WARaft's ETS storage in Python (not durable: a restart comes back empty).

    A state machine of one's own may subclass it: override ``apply`` (and ``read``) for the
    commands it adds and hand every other command to ``super()``; ``apply_batch`` and
    ``apply_many`` then reach the subclass's ``apply`` for them (packed ``$batch`` entries
    too: only plain writes and deletes take ``apply_many``'s inline fast path). Keep the
    added state in ``_data`` (or override ``create_snapshot``/``open_snapshot`` as well), so
    snapshots carry it. A subclass's own ``apply_batch``/``apply_many``, if it has them,
    must say which command they refuse (``refused_at``, ``PartialApplyError``)."""

    blocking_io: ClassVar[bool] = False
    results_encode: ClassVar[bool] = True  # values came through msgpack or check_local_op

    @staticmethod
    def key_identity(key: Any) -> Any:
        """The key itself: the rows are a dict keyed by the keys, so two keys name one row
        when Python finds them equal (``True``, ``1`` and ``1.0`` are one key here, three in
        the durable providers, which key rows by the msgpack encoding). The storage actor
        derives ``incr``/``append`` by it, so that it finds the row this provider would.
        ``UnknownCommandError`` for an unhashable key (a map), which every write, delete and
        read of it gets as well."""
        if not is_hashable(key):
            raise UnknownCommandError(_unhashable(key))
        return key

    def __init__(self, options: StorageOptions) -> None:
        self.options = options
        self._data: dict[Any, Any] = {}
        self._set_metadata(LogPos(0, 0), None, None, False)

    @classmethod
    def open(cls, options: StorageOptions, path: str | os.PathLike[str] | None = None) -> Self:
        """A fresh, empty storage (``path`` is unused: nothing survives a restart)."""
        return cls(options)

    def close(self) -> None:
        self._data = {}

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["keys"] = len(self._data)
        return status

    # -- applying -----------------------------------------------------------------------------

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        if is_config_command(command):
            return self.apply_config(command[1], position)
        kind = command_kind(command)
        if kind == "write" and len(command) == 4:
            self._data[_key(command)] = command[3]
        elif kind == "delete" and len(command) == 3:
            self._data.pop(_key(command), None)
        elif kind == "noop_omitted" and command == kind:
            self._incomplete = True
        elif not (kind == "noop" and command == kind):
            raise UnknownCommandError(f"unknown storage command {clipped_repr(command)}")
        if label is not None:
            self._label = label
        self._position = position
        return OK

    def apply_batch(self, items: Sequence[tuple[Any, LogPos, Any]]) -> list[Any]:
        """``StorageProvider.apply_batch`` with plain writes stored inline (what ``apply`` does
        with them, without its dispatch: the storage actor's hot path); everything else, and
        every command of a subclass with its own ``apply``, goes through ``apply``."""
        if type(self).apply is not MemoryStorage.apply:
            return super().apply_batch(items)
        results: list[Any] = []
        append = results.append
        data = self._data
        for command, position, label in items:
            try:
                if type(command) is tuple and len(command) == 4 and command[0] == "write":
                    try:
                        data[command[2]] = command[3]
                    except TypeError:  # an unhashable key: apply() refuses it
                        append(self.apply(command, position, label))
                        continue
                    if label is not None:
                        self._label = label
                    self._position = position
                    append(OK)
                elif is_config_command(command):
                    append(self.apply_config(command[1], position))
                else:
                    append(self.apply(command, position, label))
            except UnknownCommandError as exc:
                raise batch_refusal(results, exc)  # noqa: B904 (its own cause, if another)
        return results

    def apply_many(self, commands: Sequence[Any], position: LogPos, label: Any = None) -> list[Any]:
        # The hot path of packed client batches: plain writes and deletes inline, anything
        # else through apply().
        for command in commands:
            if not (
                type(command) is tuple
                and (
                    (len(command) == 4 and command[0] == "write")
                    or (len(command) == 3 and command[0] == "delete")
                )
            ):
                return self._apply_mixed(commands, position, label)
        data = self._data
        try:
            for command in commands:
                if len(command) == 4:
                    data[command[2]] = command[3]
                else:
                    data.pop(command[2], None)
        except TypeError:
            # An unhashable key (a map from the wire): the commands before it are applied,
            # this one is answered with an error (hashing each key first would cost the hot
            # path of every packed batch).
            done = next(i for i, c in enumerate(commands) if not is_hashable(c[2]))
            self._position = position
            raise PartialApplyError(
                [OK] * done, UnknownCommandError(_unhashable(commands[done]))
            ) from None
        if label is not None:
            self._label = label
        self._position = position
        return [OK] * len(commands)

    def _apply_mixed(self, commands: Sequence[Any], position: LogPos, label: Any) -> list[Any]:
        """``apply_many`` of a ``$batch`` holding more than plain writes and deletes."""
        if type(self).apply is not MemoryStorage.apply:
            # A subclass's own commands: only its apply() knows them (a static check refused
            # the first of every packed batch). Applied in order, one by one: a refusal says
            # how many were applied (``PartialApplyError``), which the storage actor handles.
            return self.apply_batch([(command, position, label) for command in commands])
        # Every command is checked first, so a bad one changes nothing.
        for number, command in enumerate(commands):
            try:
                self._check(command)
            except UnknownCommandError as exc:
                refused_at(exc, number)
                raise
        return [self.apply(command, position, label) for command in commands]

    @staticmethod
    def _check(command: Any) -> None:
        """Raise ``UnknownCommandError`` unless ``apply`` knows ``command``."""
        if is_config_command(command):
            return
        kind = command_kind(command)
        known = (
            (kind == "write" and len(command) == 4)
            or (kind == "delete" and len(command) == 3)
            or (kind in ("noop", "noop_omitted") and command == kind)
        )
        if not known:
            raise UnknownCommandError(f"unknown storage command {clipped_repr(command)}")
        if kind in ("write", "delete"):
            _key(command)

    def apply_config(self, config: Config, position: LogPos) -> Any:
        self.check_config(config)
        self._config = (position, config)
        self._position = position
        return OK

    def read(self, command: Any, position: LogPos) -> Any:
        kind = command_kind(command)
        if kind == "read" and len(command) == 3:
            try:
                return ("ok", self._data[command[2]])
            except KeyError:
                return NOT_FOUND
            except TypeError:
                raise UnknownCommandError(_unhashable(command)) from None
        if kind == "noop" and command == kind:
            return OK
        raise UnknownCommandError(f"unknown storage read {clipped_repr(command)}")

    # -- snapshots ----------------------------------------------------------------------------

    def create_snapshot(self, path: str | os.PathLike[str]) -> Any:
        # The storage actor is suspended meanwhile, so nothing changes ``_data`` under the
        # encoder on the I/O thread.
        return otp.blocking(
            self._write_snapshot,
            os.fspath(path),
            self._position,
            self._config,
            self._label,
            self._incomplete,
            self._data,
        )

    @staticmethod
    def _write_snapshot(
        path: str,
        position: LogPos,
        config: tuple[LogPos, Config] | None,
        label: Any,
        incomplete: bool,
        data: Mapping[Any, Any],
    ) -> Any:
        try:
            blob = _encode_snapshot(position, config, label, incomplete, data)
            os.makedirs(path, exist_ok=True)
            write_file_durably(os.path.join(path, DATA_FILE), blob)
            write_metadata(path, "memory", position, config)
        except (OSError, CodecError) as exc:
            logger.error("cannot write snapshot %s: %s", path, exc)
            return ("error", str(exc))
        return OK

    def open_snapshot(self, path: str | os.PathLike[str], expected: LogPos) -> Any:
        try:
            doc = otp.blocking(_read_snapshot, os.path.join(os.fspath(path), DATA_FILE))
            position = LogPos(*doc["position"])
            raw_config = doc["config"]
            config = None if raw_config is None else (LogPos(*raw_config[0]), raw_config[1])
            data = dict(doc["data"])
            label = doc["label"]
            incomplete = bool(doc["incomplete"])
        except (OSError, CodecError, KeyError, TypeError, ValueError) as exc:
            logger.error("cannot open snapshot %s: %s", path, exc)
            return ("error", str(exc))
        if position != expected:
            return BAD_POSITION
        if incomplete and config is not None and is_data_replica(self.options.identity, config[1]):
            # Checked before swapping: the state stays as it was.
            raise InvalidIncompleteReplica(self.options.identity)
        self._data = data
        self._set_metadata(position, config, label, incomplete)
        return OK

    @classmethod
    def make_empty_snapshot(
        cls,
        options: StorageOptions,
        path: str | os.PathLike[str],
        position: LogPos,
        config: Config,
        data: Any,
        *,
        config_position: LogPos | None = None,
    ) -> Any:
        seed = dict(data) if isinstance(data, Mapping) else {}
        config_at = position if config_position is None else config_position
        return otp.blocking(
            cls._write_snapshot, os.fspath(path), position, (config_at, config), None, False, seed
        )


PROVIDER = MemoryStorage
"""The provider this module stands for when a setting names the module."""

__all__ = ["DATA_FILE", "MemoryStorage"]


def _unhashable(command: Any) -> str:
    return f"a key must be hashable (a map is not): {clipped_repr(command, 500)}"[:500]


def _key(command: Any) -> Any:
    """``command``'s key; ``UnknownCommandError`` if it cannot be one: a map from the wire
    raised ``TypeError`` in the storage actor, which crashed on the committed entry."""
    key = command[2]
    if not is_hashable(key):
        raise UnknownCommandError(_unhashable(command))
    return key
