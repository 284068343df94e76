"""In-memory storage: WARaft's ``wa_raft_storage_ets`` (the default, demo-grade provider).

The key space is a dict keyed by ``row_key(key)``, so that keys are told apart as the durable
providers tell them apart (by their msgpack encoding: ``True``, ``1`` and ``1.0`` are three keys,
a tuple and a list of the same items one); position, config, label and the incomplete mark are
attributes. A snapshot is a directory holding ``data`` (one CRC-framed msgpack document with the
metadata and every key/value pair) and ``metadata`` (position and config, readable without
loading the data); opening one checks the position first.

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
from waraft.core.types import Config, LogPos, is_config_command
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
    """``data`` is keyed by ``row_key``; the document holds the keys themselves."""
    body = packb(
        {
            "position": tuple(position),
            "config": None if config is None else (tuple(config[0]), config[1]),
            "label": label,
            "incomplete": incomplete,
            "data": [(_key_of_row(row), value) for row, value in data.items()],
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
    added state in ``_data``, keyed by ``row_key(key)`` (or override
    ``create_snapshot``/``open_snapshot`` as well), so snapshots carry it. A subclass's own
    ``apply_batch``/``apply_many``, if it has them, must say which command they refuse
    (``refused_at``, ``PartialApplyError``)."""

    blocking_io: ClassVar[bool] = False
    results_encode: ClassVar[bool] = True  # values came through msgpack or check_local_op

    @staticmethod
    def key_identity(key: Any) -> Any:
        """``row_key``: the durable providers' identity (the key's msgpack encoding), cheaper."""
        return row_key(key)

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
            self._data[row_key(command[2])] = command[3]
        elif kind == "delete" and len(command) == 3:
            self._data.pop(row_key(command[2]), None)
        elif kind == "noop_omitted" and command == kind:
            self._incomplete = True
        elif not (kind == "noop" and command == kind):
            raise UnknownCommandError(f"unknown storage command {clipped_repr(command)}")
        if label is not None:
            self._label = label
        self._position = position
        return OK

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
        done = 0
        try:
            for command in commands:
                key = command[2]
                if type(key) is not str:  # a str key is its own row (the usual, kept fast)
                    key = row_key(key)
                if len(command) == 4:
                    data[key] = command[3]
                else:
                    data.pop(key, None)
                done += 1
        except UnknownCommandError as exc:
            # A key msgpack cannot encode: the commands before it are applied, this one is
            # answered with an error (checking each key first would cost every packed batch).
            self._position = position
            raise PartialApplyError([OK] * done, exc) from None
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
            row_key(command[2])

    def apply_config(self, config: Config, position: LogPos) -> Any:
        self.check_config(config)
        self._config = (position, config)
        self._position = position
        return OK

    def read(self, command: Any, position: LogPos) -> Any:
        kind = command_kind(command)
        if kind == "read" and len(command) == 3:
            try:
                return ("ok", self._data[row_key(command[2])])
            except KeyError:
                return NOT_FOUND
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
            data = {row_key(key): value for key, value in doc["data"]}
            label = doc["label"]
            incomplete = bool(doc["incomplete"])
        except (OSError, CodecError, KeyError, TypeError, ValueError) as exc:
            # (UnknownCommandError is a ValueError: a key no write could have stored.)
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
        try:
            seed = {row_key(k): v for k, v in data.items()} if isinstance(data, Mapping) else {}
        except UnknownCommandError as exc:
            return ("error", str(exc))
        config_at = position if config_position is None else config_position
        return otp.blocking(
            cls._write_snapshot, os.fspath(path), position, (config_at, config), None, False, seed
        )


PROVIDER = MemoryStorage
"""The provider this module stands for when a setting names the module."""

__all__ = ["DATA_FILE", "MemoryStorage", "row_key"]


_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def row_key(key: Any) -> Any:
    """What ``MemoryStorage`` keys the row of ``key`` by: equal for two keys exactly when
    their msgpack encodings are (the durable providers' rows), so that the same log leaves the
    same keys in every provider and the storage actor's ``incr``/``append`` finds the row the
    provider has. A ``str`` or an ``int`` msgpack encodes is its own row (Python equality
    agrees with msgpack's there, and these are the usual keys); any other key is its msgpack
    encoding, ``bytes``, never equal to a ``str`` or an ``int``. A Python dict keyed by the
    keys themselves took ``True``, ``1`` and ``1.0`` for one key, and refused a list or a map.

    Raises ``UnknownCommandError`` for a key msgpack cannot encode."""
    kind = type(key)
    if kind is str or (kind is int and _INT_MIN <= key <= _INT_MAX):
        return key
    try:
        return packb(key)
    except CodecError as exc:
        raise UnknownCommandError(
            f"a key msgpack cannot encode: {clipped_repr(key, 200)} ({exc})"[:500]
        ) from None


def _key_of_row(row: Any) -> Any:
    """The key (as msgpack gives it back: a list as a tuple) whose ``row_key`` is ``row``."""
    return unpackb(row) if type(row) is bytes else row
