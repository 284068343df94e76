"""Durable storage on SQLite (standard library): the KV commands of ``waraft.storage.memory``.

Layout: ``<partition dir>/storage.sqlite3`` in WAL mode with two tables, ``kv(k, v)`` (keys and
values as msgpack blobs; the command's table element is ignored, as in WARaft) and
``meta(name, v)`` holding the applied ``position``, the ``config`` with its position, the
``label`` and the ``incomplete`` mark.

Atomicity: ``apply_batch`` runs one transaction for the whole batch — data, position, config and
label change together or not at all (an exception rolls everything back, so position and data
never diverge). ``apply`` and ``apply_config`` are batches of one; the storage actor should hand
whole apply batches to ``apply_batch``.

Durability: ``synchronous=NORMAL`` by default (option ``extra["sqlite_synchronous"]``): in WAL
mode a commit survives a process crash (kill -9) but the last transactions may be lost on power
failure, without corrupting the database. That is safe for Raft: the log holds every committed
entry above the storage position (it is never trimmed past the applied position), so on restart
the lost tail is simply applied again. Use ``"FULL"`` to fsync every batch.

Snapshots: ``<snapshot dir>/data.sqlite3`` written with SQLite's online backup API (then switched
to a self-contained rollback-journal file), ``checksum`` (its size and CRC-32, as the LMDB
providers write theirs: SQLite opens and serves a file with a flipped byte in a value) and the
shared ``metadata`` file. Opening one checks the file against its checksum and its position,
then copies it into the live database with the backup API in one transaction. A snapshot
without a ``checksum`` file (written before this format had one) is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Self

from waraft.core.rpc import clipped_repr
from waraft.core.types import Config, LogPos, is_config_command
from waraft.services.codec import CodecError, packb, unpackb
from waraft.storage.provider import (
    BAD_POSITION,
    NOT_FOUND,
    OK,
    ApplyItem,
    InvalidIncompleteReplica,
    StorageOptions,
    TransactionalStorage,
    UnknownCommandError,
    build_file_durably,
    check_snapshot_checksum,
    command_kind,
    is_data_replica,
    refused_at,
    write_metadata,
    write_snapshot_checksum,
)

logger = logging.getLogger(__name__)

DB_FILE: Final = "storage.sqlite3"
SNAPSHOT_FILE: Final = "data.sqlite3"

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
)
_PUT: Final = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
_DEL: Final = "DELETE FROM kv WHERE k = ?"
_GET: Final = "SELECT v FROM kv WHERE k = ?"
_SET_META: Final = "INSERT OR REPLACE INTO meta (name, v) VALUES (?, ?)"


def _read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    meta = {name: unpackb(value) for name, value in conn.execute("SELECT name, v FROM meta")}
    position = LogPos(*meta["position"]) if "position" in meta else LogPos(0, 0)
    raw_config = meta.get("config")
    config = None if raw_config is None else (LogPos(*raw_config[0]), raw_config[1])
    return {
        "position": position,
        "config": config,
        "label": meta.get("label"),
        "incomplete": bool(meta.get("incomplete", False)),
    }


def _config_blob(position: LogPos, config: Config) -> bytes:
    return packb((tuple(position), config))


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _connect_readonly(path: str) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


class SqliteStorage(TransactionalStorage):
    """Durable KV storage in one SQLite database per partition (see the module docstring).

    Not thread-safe: the storage actor's thread is the only user.
    """

    results_encode: ClassVar[bool] = True

    def __init__(self, options: StorageOptions, directory: str) -> None:
        self.options = options
        self._dir = directory
        os.makedirs(directory, exist_ok=True)
        self._path = os.path.join(directory, DB_FILE)
        synchronous = str(getattr(options, "extra", {}).get("sqlite_synchronous", "NORMAL"))
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad sqlite_synchronous setting {synchronous!r}")
        self._conn = _connect(self._path)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._load_meta()
        except BaseException:
            self._conn.close()
            raise

    def _load_meta(self) -> None:
        self._set_metadata(**_read_meta(self._conn))

    @classmethod
    def open(cls, options: StorageOptions, path: str | os.PathLike[str]) -> Self:
        """Open (or create) ``<path>/storage.sqlite3``."""
        return cls(options, os.fspath(path))

    def close(self) -> None:
        self._conn.close()

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["database"] = self._path
        with contextlib.suppress(OSError):
            status["database_bytes"] = os.path.getsize(self._path)
        return status

    # -- applying -----------------------------------------------------------------------------

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        return self.apply_batch(((command, position, label),))[0]

    def apply_config(self, config: Config, position: LogPos) -> Any:
        return self.apply_batch(((("config", config), position, None),))[0]

    answers_ok: ClassVar[bool] = True  # every command applied answers "ok" (TransactionalStorage)

    def apply_batch(self, items: Sequence[ApplyItem]) -> list[Any]:
        """Apply every item in ONE transaction (all or nothing)."""
        if not items:
            return []
        conn = self._conn
        results: list[Any] = []
        position = self._position
        config = self._config
        label = self._label
        incomplete = self._incomplete
        pending: list[tuple[bytes, ...]] = []
        pending_sql = _PUT
        conn.execute("BEGIN")
        try:
            for number, (command, item_position, item_label) in enumerate(items):
                if is_config_command(command):
                    if incomplete and is_data_replica(self.options.identity, command[1]):
                        raise InvalidIncompleteReplica(self.options.identity)
                    config = (item_position, command[1])
                else:
                    try:
                        kind = command_kind(command)
                    except UnknownCommandError as exc:
                        refused_at(exc, number)
                        raise
                    row: tuple[bytes, ...]
                    if kind == "write" and len(command) == 4:
                        op, row = _PUT, (packb(command[2]), packb(command[3]))
                    elif kind == "delete" and len(command) == 3:
                        op, row = _DEL, (packb(command[2]),)
                    else:
                        op, row = "", ()
                        if kind == "noop_omitted" and command == kind:
                            incomplete = True
                        elif not (kind == "noop" and command == kind):
                            raise refused_at(
                                UnknownCommandError(
                                    f"unknown storage command {clipped_repr(command)}"
                                ),
                                number,
                            )
                    if op:
                        if op is not pending_sql and pending:
                            conn.executemany(pending_sql, pending)
                            pending = []
                        pending_sql = op
                        pending.append(row)
                    if item_label is not None:
                        label = item_label
                results.append(OK)
                position = item_position
            if pending:
                conn.executemany(pending_sql, pending)
            meta = [("position", packb(tuple(position)))]
            if config is not self._config and config is not None:
                meta.append(("config", _config_blob(*config)))
            if label is not self._label:
                meta.append(("label", packb(label)))
            if incomplete != self._incomplete:
                meta.append(("incomplete", packb(incomplete)))
            conn.executemany(_SET_META, meta)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._set_metadata(position, config, label, incomplete)
        return results

    def read(self, command: Any, position: LogPos) -> Any:
        kind = command_kind(command)
        if kind == "read" and len(command) == 3:
            row = self._conn.execute(_GET, (packb(command[2]),)).fetchone()
            return NOT_FOUND if row is None else ("ok", unpackb(row[0]))
        if kind == "noop" and command == kind:
            return OK
        raise UnknownCommandError(f"unknown storage read {clipped_repr(command)}")

    # -- snapshots ----------------------------------------------------------------------------

    def create_snapshot(self, path: str | os.PathLike[str]) -> Any:
        directory = os.fspath(path)

        def copy(temp: str) -> None:
            dest = _connect(temp)
            try:
                self._conn.backup(dest)
                # A self-contained file: no -wal/-shm to carry along with it.
                dest.execute("PRAGMA journal_mode=DELETE")
            finally:
                dest.close()

        try:
            os.makedirs(directory, exist_ok=True)
            build_file_durably(os.path.join(directory, SNAPSHOT_FILE), copy)
            write_snapshot_checksum(directory, SNAPSHOT_FILE)
            write_metadata(directory, "sqlite", self._position, self._config)
        except (OSError, sqlite3.Error, CodecError) as exc:
            logger.error("cannot write snapshot %s: %s", directory, exc)
            return ("error", str(exc))
        return OK

    def open_snapshot(self, path: str | os.PathLike[str], expected: LogPos) -> Any:
        """Check the snapshot's file against its ``checksum`` file (a snapshot without one,
        written before this format had it, is refused), then its position, then copy it into
        the live database. ``("error", reason)`` leaves the live database as it was."""
        directory = os.fspath(path)
        source_path = os.path.join(directory, SNAPSHOT_FILE)
        if not os.path.isfile(source_path):
            return ("error", f"no snapshot database in {directory}")
        try:
            check_snapshot_checksum(directory, SNAPSHOT_FILE)
        except (OSError, CodecError, ValueError) as exc:
            logger.error("cannot open snapshot %s: %s", directory, exc)
            return ("error", f"unreadable snapshot {directory}: {exc}")
        try:
            source = _connect_readonly(source_path)
        except sqlite3.Error as exc:
            return ("error", str(exc))
        try:
            try:
                meta = _read_meta(source)
            except (sqlite3.Error, CodecError, TypeError, ValueError) as exc:
                return ("error", f"unreadable snapshot {source_path}: {exc}")
            if meta["position"] != expected:
                return BAD_POSITION
            config = meta["config"]
            if (
                meta["incomplete"]
                and config is not None
                and is_data_replica(self.options.identity, config[1])
            ):
                raise InvalidIncompleteReplica(self.options.identity)
            try:
                source.backup(self._conn)
            except sqlite3.Error as exc:
                return ("error", f"cannot load snapshot {source_path}: {exc}")
        finally:
            source.close()
        self._load_meta()
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
        directory = os.fspath(path)
        config_at = position if config_position is None else config_position

        def fill(temp: str) -> None:
            conn = _connect(temp)
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("BEGIN")
                if isinstance(data, Mapping) and data:
                    conn.executemany(_PUT, [(packb(k), packb(v)) for k, v in data.items()])
                conn.executemany(
                    _SET_META,
                    [
                        ("position", packb(tuple(position))),
                        ("config", _config_blob(config_at, config)),
                    ],
                )
                conn.execute("COMMIT")
            finally:
                conn.close()

        try:
            os.makedirs(directory, exist_ok=True)
            build_file_durably(os.path.join(directory, SNAPSHOT_FILE), fill)
            write_snapshot_checksum(directory, SNAPSHOT_FILE)
            write_metadata(directory, "sqlite", position, (config_at, config))
        except (OSError, sqlite3.Error, CodecError) as exc:
            logger.error("cannot write empty snapshot %s: %s", directory, exc)
            return ("error", str(exc))
        return OK


PROVIDER = SqliteStorage
"""The provider this module stands for when a setting names the module."""

__all__ = ["DB_FILE", "SNAPSHOT_FILE", "SqliteStorage"]
