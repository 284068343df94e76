"""Durable storage on LMDB (the ``lmdb`` package): the KV commands of ``waraft.storage.memory``.

Layout: ``<partition dir>/storage.lmdb/`` is an LMDB environment (subdirectory mode:
``data.mdb`` and LMDB's ``lock.mdb``) with two named databases: ``kv`` (msgpack key → msgpack
value; the command's table element is ignored, as in WARaft) and ``meta`` (the applied
``position``, the ``config`` with its position — encoded by ``waraft.codec`` so a ``Config``
survives —, the ``label`` and the ``incomplete`` mark). ``<partition dir>/storage.lmdb.lock``
is this provider's own lock file (see "One process" below).

Keys longer than LMDB's key limit (511 bytes encoded) are stored under ``0xc1`` followed by
their BLAKE2b-256 digest (``0xc1`` never starts a msgpack encoding, so the two key spaces cannot
meet), with the full encoded key kept beside the value and checked on every read.

Atomicity: every ``apply_batch`` / ``apply_many`` / ``apply`` / ``apply_config`` is ONE LMDB
write transaction: data, position, config, label and the incomplete mark change together or not
at all. Commands are validated and encoded before the transaction starts (an unknown command,
an unencodable value or an ``InvalidIncompleteReplica`` changes nothing); an exception inside
the transaction aborts it, and the cached metadata is only updated after the commit.

Durability (options ``extra["lmdb_sync"]``, ``extra["lmdb_writemap"]``; set them for a node
with the application setting ``raft_storage_options``):

* default ``lmdb_sync=True`` (``sync=True, metasync=True``) with ``lmdb_writemap=False``: LMDB
  writes the pages with ``pwrite`` and flushes the data pages and then the meta page (the commit
  point: LMDB picks the meta page with the highest transaction id, and writes that id last) at
  every commit — one ``fdatasync`` per applied batch, so a commit that returned survives power
  loss, the environment stays consistent, and a full disk is an ordinary ``lmdb.Error`` (the
  storage actor crashes; the partition restarts once there is room).
* ``lmdb_sync=False``: nothing is flushed. Committed pages are in the kernel's page cache when
  the commit returns, so they survive the death of the process (``kill -9``, a crash) and a
  process killed in the middle of a transaction leaves the previous commit intact (LMDB never
  overwrites the pages of the last two commits). On power loss or a kernel crash recent commits
  can be lost; with ``lmdb_writemap=True`` as well, the environment can even be left corrupt
  (LMDB documents this for ``MDB_NOSYNC`` with ``MDB_WRITEMAP``; LMDB has no checksums to notice
  it): after a host crash in that mode, delete ``storage.lmdb`` and let the replica catch up by
  snapshot.
* ``lmdb_writemap=True`` writes through a shared writable mapping: LMDB sizes ``data.mdb`` to
  the whole map (a sparse file of ``lmdb_map_size``, default 64 GiB of address space, not of
  disk), and a write into a hole the file system cannot allocate (disk full) kills the process
  with ``SIGBUS`` — like a ``kill -9``: the last commit stays intact.

The log holds every committed entry above the storage position (it is never trimmed past
``durable_position()``, here the applied position), so a tail lost to a process crash is
applied again on restart. With ``lmdb_sync=False`` this provider does not track what it has
flushed (``waraft.storage.node_lmdb`` does: its lazy sync), so a power loss after a trim can
lose applied entries that are then in neither place. ``close()`` flushes everything
(``env.sync(force=True)``).

Measured on this project's 2-core machine (packed batches of 1000 writes, 100-byte values,
including decoding the batch): defaults 1.4M writes/s; ``lmdb_sync=False`` 2.6-2.8M/s; SQLite
0.44M/s; the in-memory storage 5.8M/s.

Map size: when a transaction finds the map full (``MapFullError``) it is aborted, the map grows
(at least doubles) and the transaction is retried once.

One process: LMDB itself supports several processes sharing one environment, but this provider
caches the position and the config, so a second writer would silently diverge from it. Opening
therefore takes an exclusive, non-blocking ``flock`` on ``storage.lmdb.lock`` for the life of
the provider; a second opener — in another process or this one — fails at once with
``StorageLockedError`` naming the holder's pid. The lock dies with the process (no stale lock
after ``kill -9``). LMDB's own ``lock.mdb`` stays in use (``lock=True``) and its stale reader
slots and writer mutex are recovered by the next opener.

Snapshots: ``<snapshot dir>/data.mdb`` (a compacted copy made by ``env.copyfd(compact=True)``
inside one read transaction, written under a temporary name, fsynced, renamed), ``checksum``
(size and CRC-32 of ``data.mdb``: LMDB cannot detect a damaged file, and reading a truncated
one would fault) and the shared ``metadata`` file. ``open_snapshot`` verifies the checksum and
reads the snapshot's position from the snapshot itself BEFORE touching the live state, copies
it to ``storage.lmdb.new/`` (fsynced), closes the live environment and swaps directories:
``storage.lmdb`` → ``storage.lmdb.old``, fsync the partition directory, ``storage.lmdb.new`` →
``storage.lmdb``, fsync again, remove ``.old``. Opening rolls an interrupted swap back: with
``storage.lmdb`` missing and ``.old`` present, ``.old`` is renamed back; with both present (the
install passed its commit point), the directory is fsynced before ``.old`` goes; leftover
``.new`` / ``.old`` directories are removed. A crash at any point thus leaves the old or the new
state, never a mix. The fsync after the commit point failing raises ``StorageError``: the state
changed, so neither an error (the state unchanged) nor ``"ok"`` (not yet durable) is true, and
the storage actor's restart reads the position the disk holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, Self

import lmdb
import msgpack

from waraft.core.rpc import clipped_repr
from waraft.core.types import Config, LogPos, is_config_command
from waraft.services.codec import CodecError, packb, unpackb
from waraft.storage.provider import (
    BAD_POSITION,
    CHECKSUM_FILE,
    NOT_FOUND,
    OK,
    ApplyItem,
    InvalidIncompleteReplica,
    StorageError,
    StorageOptions,
    TransactionalStorage,
    UnknownCommandError,
    build_file_durably,
    check_snapshot_checksum,
    command_kind,
    fsync_directory,
    fsync_path,
    is_data_replica,
    refused_at,
    write_metadata,
    write_snapshot_checksum,
)

logger = logging.getLogger(__name__)

ENV_DIR: Final = "storage.lmdb"
LOCK_FILE: Final = "storage.lmdb.lock"
SNAPSHOT_FILE: Final = "data.mdb"
DEFAULT_MAP_SIZE: Final = 64 << 30

_KV: Final = b"kv"
_META: Final = b"meta"
_MAX_DBS: Final = 4
# LMDB's default key limit. Fixed rather than asked from the library, so that every node
# encodes keys alike and snapshots move between builds.
_MAX_RAW_KEY: Final = 511
_LONG_KEY: Final = b"\xc1"
_MIB: Final = 1 << 20

# A write transaction's work: runs of puts (a list, one ``putmulti``) and single deletes (the
# encoded key), in command order.
Op = list[tuple[bytes, bytes]] | bytes
Ops = list[Op]


class StorageLockedError(StorageError):
    """The partition's LMDB storage is already open (in another process or this one)."""


# -- encoding -----------------------------------------------------------------------------------


def _new_packer() -> Callable[[Any], bytes]:
    # No ``default``: anything msgpack cannot carry natively (a Config, say) raises, and the
    # caller falls back to waraft.codec, whose encoding of native values is byte-identical.
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    pack: Callable[[Any], bytes] = packer.pack
    return pack


def _long_entry(key: bytes, value: bytes) -> tuple[bytes, bytes]:
    """The stored form of an entry whose encoded key exceeds LMDB's key limit."""
    return _long_key(key), packb((key, value))


def _long_key(key: bytes) -> bytes:
    return _LONG_KEY + hashlib.blake2b(key, digest_size=32).digest()


def _stored_key(key: bytes) -> bytes:
    return key if len(key) <= _MAX_RAW_KEY else _long_key(key)


def _encode_ops(commands: Sequence[Any], pack: Callable[[Any], bytes]) -> Ops | None:
    """Encode plain writes/deletes; ``None`` as soon as a command is anything else."""
    ops: Ops = []
    run: list[tuple[bytes, bytes]] = []
    for command in commands:
        if type(command) is tuple:
            size = len(command)
            if size == 4 and command[0] == "write":
                key = pack(command[2])
                if len(key) <= _MAX_RAW_KEY:
                    run.append((key, pack(command[3])))
                else:
                    run.append(_long_entry(key, pack(command[3])))
                continue
            if size == 3 and command[0] == "delete":
                if run:
                    ops.append(run)
                    run = []
                ops.append(_stored_key(pack(command[2])))
                continue
        return None
    if run:
        ops.append(run)
    return ops


def _config_blob(position: LogPos, config: Config) -> bytes:
    return packb((tuple(position), config))


def _position_row(position: LogPos) -> tuple[bytes, bytes]:
    """The ``meta`` row of the applied position (``_read_meta`` decodes it)."""
    return (b"position", packb(tuple(position)))


def _label_row(label: Any) -> tuple[bytes, bytes]:
    """The ``meta`` row of the label; raises ``CodecError`` for a label msgpack cannot carry."""
    return (b"label", packb(label))


def _meta_items(
    position: LogPos,
    config: tuple[LogPos, Config] | None,
    label: Any,
    incomplete: bool,
    old: tuple[tuple[LogPos, Config] | None, Any, bool] | None,
) -> list[tuple[bytes, bytes]]:
    """The ``meta`` rows to write; only those that changed from ``old`` (all when ``None``)."""
    items = [_position_row(position)]
    if config is not None and (old is None or config is not old[0]):
        items.append((b"config", _config_blob(*config)))
    if old is None or label is not old[1]:
        items.append(_label_row(label))
    if old is None or incomplete != old[2]:
        items.append((b"incomplete", packb(incomplete)))
    return items


def _read_meta(env: lmdb.Environment, db: Any) -> dict[str, Any]:
    with env.begin(db=db) as txn:
        raw = {name: txn.get(name) for name in (b"position", b"config", b"label", b"incomplete")}
    position = LogPos(*unpackb(raw[b"position"])) if raw[b"position"] is not None else LogPos(0, 0)
    config = None
    if raw[b"config"] is not None:
        at, value = unpackb(raw[b"config"])
        config = (LogPos(*at), value)
    return {
        "position": position,
        "config": config,
        "label": None if raw[b"label"] is None else unpackb(raw[b"label"]),
        "incomplete": raw[b"incomplete"] is not None and bool(unpackb(raw[b"incomplete"])),
    }


# -- transactions -------------------------------------------------------------------------------


def _write_txn(
    env: lmdb.Environment, kv: Any, meta: Any, ops: Ops, meta_items: list[tuple[bytes, bytes]]
) -> None:
    """Apply ``ops`` and ``meta_items`` in one write transaction (aborted on any exception)."""
    txn = env.begin(write=True)
    try:
        cursor = txn.cursor(kv)
        for op in ops:
            if type(op) is list:
                cursor.putmulti(op)
            else:
                txn.delete(op, db=kv)  # type: ignore[arg-type]
        for name, value in meta_items:
            txn.put(name, value, db=meta)
        txn.commit()
    except BaseException:
        # A failed commit already released the transaction; abort is then a no-op.
        with contextlib.suppress(lmdb.Error):
            txn.abort()
        raise


def _write_growing(
    env: lmdb.Environment, kv: Any, meta: Any, ops: Ops, meta_items: list[tuple[bytes, bytes]]
) -> None:
    """``_write_txn``, growing the map and retrying once if it is full."""
    try:
        _write_txn(env, kv, meta, ops, meta_items)
    except lmdb.MapFullError:
        current = env.info()["map_size"]
        payload = sum(len(name) + len(value) for name, value in meta_items)
        for op in ops:
            payload += sum(len(k) + len(v) for k, v in op) if type(op) is list else len(op)
        # Pages, branch pages and the free list cost more than the payload: leave room.
        wanted = max(2 * current, current + 4 * payload)
        new_size = -(-wanted // _MIB) * _MIB
        logger.warning(
            "LMDB map %s is full at %d bytes: growing to %d", env.path(), current, new_size
        )
        env.set_mapsize(new_size)
        _write_txn(env, kv, meta, ops, meta_items)


# -- files --------------------------------------------------------------------------------------


def _inspect_snapshot(directory: str) -> dict[str, Any]:
    """The metadata stored inside a snapshot's ``data.mdb``, after checking the file whole.

    Raises ``OSError`` / ``lmdb.Error`` / ``CodecError`` / ``ValueError`` if it is not.
    """
    data_path = os.path.join(directory, SNAPSHOT_FILE)
    size = check_snapshot_checksum(directory, SNAPSHOT_FILE)
    env = lmdb.open(
        data_path,
        subdir=False,
        readonly=True,
        lock=False,
        max_dbs=_MAX_DBS,
        map_size=max(size, _MIB),
    )
    try:
        # Reading past the end of a mapped file faults the process: check before any page.
        info = env.info()
        if (info["last_pgno"] + 1) * env.stat()["psize"] > size:
            raise ValueError(f"{data_path} is shorter than its database")
        return _read_meta(env, env.open_db(_META, create=False))
    finally:
        env.close()


def _acquire_lock(path: str) -> int:
    """An exclusive ``flock`` on ``path`` (an open fd that holds it), or ``StorageLockedError``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StorageLockedError(
            f"LMDB storage {os.path.dirname(path)} is already open (lock {path} held by pid "
            f"{holder}): a partition's storage has one user"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    # The holder's pid, for the message above (informative only: the flock is the lock).
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _recover_swap(directory: str) -> None:
    """Finish what an interrupted ``open_snapshot`` left: roll back or clean up."""
    live = os.path.join(directory, ENV_DIR)
    old = live + ".old"
    new = live + ".new"
    if not os.path.isdir(live) and os.path.isdir(old):
        # Killed between the two renames: the old state is complete, the install never returned.
        logger.warning("LMDB storage %s: rolling back an interrupted snapshot install", live)
        os.rename(old, live)
        fsync_directory(directory)
    elif os.path.isdir(live) and os.path.lexists(old):
        # Past the commit point, the fsync after it not done (a crash) or failed (EIO): made
        # durable before ``.old`` goes, or a power loss could keep that removal and lose the
        # rename, leaving neither state (``.new`` is then discarded as a staging leftover).
        fsync_directory(directory)
    for leftover in (new, old):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


class LmdbStorage(TransactionalStorage):
    """Durable KV storage in one LMDB environment per partition (see the module docstring).

    Not thread-safe: the storage actor's thread is the only user.

    Options (``options.extra``): ``lmdb_sync`` (bool, default True: a commit survives power
    loss), ``lmdb_map_size`` (initial map size in bytes, default 64 GiB), ``lmdb_writemap``
    (bool, default False).
    """

    results_encode: ClassVar[bool] = True

    def __init__(self, options: StorageOptions, directory: str) -> None:
        self.options = options
        extra = getattr(options, "extra", None) or {}
        self._sync = bool(extra.get("lmdb_sync", True))
        self._writemap = bool(extra.get("lmdb_writemap", False))
        self._map_size = int(extra.get("lmdb_map_size", DEFAULT_MAP_SIZE))
        if self._map_size <= 0:
            raise ValueError(f"bad lmdb_map_size {self._map_size!r}")
        self._dir = directory
        self._path = os.path.join(directory, ENV_DIR)
        self._pack = _new_packer()
        self._env: lmdb.Environment | None = None
        os.makedirs(directory, exist_ok=True)
        self._lock_fd: int | None = _acquire_lock(os.path.join(directory, LOCK_FILE))
        try:
            _recover_swap(directory)
            self._open_env()
        except BaseException:
            self.close()
            raise

    def _open_env(self) -> None:
        os.makedirs(self._path, mode=0o755, exist_ok=True)
        env = lmdb.open(
            self._path,
            map_size=self._map_size,
            subdir=True,
            max_dbs=_MAX_DBS,
            sync=self._sync,
            metasync=self._sync,
            writemap=self._writemap,
            lock=True,
            mode=0o644,
            max_spare_txns=1,
        )
        try:
            self._kv = env.open_db(_KV)
            self._meta = env.open_db(_META)
            meta = _read_meta(env, self._meta)
        except BaseException:
            env.close()
            raise
        self._env = env
        self._set_metadata(**meta)

    @property
    def env(self) -> lmdb.Environment:
        """The open LMDB environment (``StorageError`` once closed)."""
        if self._env is None:
            raise StorageError(f"LMDB storage {self._path} is closed")
        return self._env

    @classmethod
    def open(cls, options: StorageOptions, path: str | os.PathLike[str]) -> Self:
        """Open (or create) ``<path>/storage.lmdb``; ``StorageLockedError`` if it is in use."""
        return cls(options, os.fspath(path))

    def close(self) -> None:
        """Flush, close the environment and release the lock (idempotent)."""
        env, self._env = self._env, None
        if env is not None:
            try:
                env.sync(True)
            except lmdb.Error as exc:
                logger.error("LMDB storage %s: final sync failed: %s", self._path, exc)
            env.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def status(self) -> dict[str, Any]:
        status = super().status()
        env = self.env
        info = env.info()
        page = env.stat()["psize"]
        with env.begin() as txn:
            entries = txn.stat(self._kv)["entries"]
        status.update(
            {
                "database": self._path,
                "entries": entries,
                "map_size": info["map_size"],
                "map_used_bytes": (info["last_pgno"] + 1) * page,
                "sync": self._sync,
                "writemap": self._writemap,
            }
        )
        with contextlib.suppress(OSError):
            # Allocated bytes: with writemap the file is sparse and as long as the map.
            status["database_bytes"] = os.stat(os.path.join(self._path, "data.mdb")).st_blocks * 512
        return status

    # -- applying -----------------------------------------------------------------------------

    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        return self.apply_batch(((command, position, label),))[0]

    def apply_config(self, config: Config, position: LogPos) -> Any:
        return self.apply_batch(((("config", config), position, None),))[0]

    def apply_many(self, commands: Sequence[Any], position: LogPos, label: Any = None) -> list[Any]:
        """The commands of one ``$batch`` entry in one transaction; plain writes and deletes
        (all encoded before the transaction starts) take a fast path."""
        try:
            ops = _encode_ops(commands, self._pack)
        except Exception:
            self._pack = _new_packer()  # a value msgpack needs waraft.codec for (or rejects)
            ops = None
        if ops is None:
            return self.apply_batch([(command, position, label) for command in commands])
        self._commit(
            ops, position, self._config, self._label if label is None else label, self._incomplete
        )
        return [OK] * len(commands)

    answers_ok: ClassVar[bool] = True  # every command applied answers "ok" (TransactionalStorage)

    def apply_batch(self, items: Sequence[ApplyItem]) -> list[Any]:
        """Apply every item in ONE transaction (all or nothing)."""
        if not items:
            return []
        plain = self._encode_plain(items)
        if plain is not None:
            self._commit(plain[0], items[-1][1], self._config, plain[1], self._incomplete)
            return [OK] * len(items)
        position = self._position
        config = self._config
        label = self._label
        incomplete = self._incomplete
        ops: Ops = []
        run: list[tuple[bytes, bytes]] = []
        encode = self._encode
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
                if kind == "write" and len(command) == 4:
                    key = encode(command[2])
                    value = encode(command[3])
                    run.append(
                        (key, value) if len(key) <= _MAX_RAW_KEY else _long_entry(key, value)
                    )
                elif kind == "delete" and len(command) == 3:
                    if run:
                        ops.append(run)
                        run = []
                    ops.append(_stored_key(encode(command[2])))
                elif kind == "noop_omitted" and command == kind:
                    incomplete = True
                elif not (kind == "noop" and command == kind):
                    raise refused_at(
                        UnknownCommandError(f"unknown storage command {clipped_repr(command)}"),
                        number,
                    )
                if item_label is not None:
                    label = item_label
            position = item_position
        if run:
            ops.append(run)
        self._commit(ops, position, config, label, incomplete)
        return [OK] * len(items)

    def _encode_plain(self, items: Sequence[ApplyItem]) -> tuple[Ops, Any] | None:
        """The ops and the resulting label of ``items`` when every command is a plain write
        or delete (a tuple, as decoded from the log), else None (``apply_batch``'s general
        loop then handles them). Every committed command of a durable partition comes through
        here once per replica, so the checks are inlined: the general loop's per-command
        ``is_config_command``, ``command_kind`` and ``_encode`` calls were a third of its
        time. A value the plain packer cannot encode also gives None (the general loop uses
        waraft.codec for it)."""
        pack = self._pack
        label = self._label
        ops: Ops = []
        run: list[tuple[bytes, bytes]] = []
        try:
            for command, _, item_label in items:
                if type(command) is not tuple:
                    return None
                size = len(command)
                if size == 4 and command[0] == "write":
                    key = pack(command[2])
                    value = pack(command[3])
                    run.append(
                        (key, value) if len(key) <= _MAX_RAW_KEY else _long_entry(key, value)
                    )
                elif size == 3 and command[0] == "delete":
                    if run:
                        ops.append(run)
                        run = []
                    ops.append(_stored_key(pack(command[2])))
                else:
                    return None
                if item_label is not None:
                    label = item_label
        except Exception:
            self._pack = _new_packer()  # as in _encode: a fresh packer after a failed pack
            return None
        if run:
            ops.append(run)
        return ops, label

    def _encode(self, value: Any) -> bytes:
        try:
            return self._pack(value)
        except Exception:
            self._pack = _new_packer()
            return packb(value)  # a Config inside, say; raises CodecError if unencodable

    def _commit(
        self,
        ops: Ops,
        position: LogPos,
        config: tuple[LogPos, Config] | None,
        label: Any,
        incomplete: bool,
    ) -> None:
        meta = _meta_items(
            position, config, label, incomplete, (self._config, self._label, self._incomplete)
        )
        self._write(ops, meta)
        self._set_metadata(position, config, label, incomplete)

    def _write(self, ops: Ops, meta: list[tuple[bytes, bytes]]) -> None:
        """Commit ``ops`` and ``meta`` in one transaction (``NodeLmdbStorage``: a group commit)."""
        _write_growing(self.env, self._kv, self._meta, ops, meta)

    def _lookup(self, stored_key: bytes) -> bytes | None:
        """The stored bytes at ``stored_key`` (``NodeLmdbStorage`` checks their checksum)."""
        with self.env.begin(db=self._kv) as txn:
            raw: bytes | None = txn.get(stored_key)
        return raw

    def read(self, command: Any, position: LogPos) -> Any:
        kind = command_kind(command)
        if kind == "read" and len(command) == 3:
            key = self._encode(command[2])
            raw = self._lookup(_stored_key(key))
            if raw is None:
                return NOT_FOUND
            if len(key) > _MAX_RAW_KEY:
                stored_key, raw = unpackb(raw)
                if stored_key != key:
                    return NOT_FOUND
            return ("ok", unpackb(raw))
        if kind == "noop" and command == kind:
            return OK
        raise UnknownCommandError(f"unknown storage read {clipped_repr(command)}")

    # -- snapshots ----------------------------------------------------------------------------

    def create_snapshot(self, path: str | os.PathLike[str]) -> Any:
        directory = os.fspath(path)

        def copy(temp: str) -> None:
            with open(temp, "wb") as f:
                # One read transaction: the copy sits exactly at the last commit, our position.
                self.env.copyfd(f.fileno(), compact=True)

        try:
            os.makedirs(directory, exist_ok=True)
            target = os.path.join(directory, SNAPSHOT_FILE)
            build_file_durably(target, copy)
            write_snapshot_checksum(directory, SNAPSHOT_FILE)
            write_metadata(directory, "lmdb", self._position, self._config)
        except (OSError, lmdb.Error, CodecError) as exc:
            logger.error("cannot write snapshot %s: %s", directory, exc)
            return ("error", str(exc))
        return OK

    def _checked_snapshot(self, directory: str, expected: LogPos) -> Any:
        """None when ``directory`` holds a readable snapshot at ``expected`` that this replica
        may take; otherwise the answer to give (``BAD_POSITION``, ``("error", reason)``).
        Raises ``InvalidIncompleteReplica`` for an incomplete snapshot offered to a data
        replica (shared with ``NodeLmdbStorage``: the snapshot format is the same)."""
        try:
            meta = _inspect_snapshot(directory)
        except (OSError, lmdb.Error, CodecError, TypeError, ValueError) as exc:
            logger.error("cannot open snapshot %s: %s", directory, exc)
            return ("error", f"unreadable snapshot {directory}: {exc}")
        if meta["position"] != expected:
            return BAD_POSITION
        config = meta["config"]
        if (
            meta["incomplete"]
            and config is not None
            and is_data_replica(self.options.identity, config[1])
        ):
            raise InvalidIncompleteReplica(self.options.identity)
        return None

    def open_snapshot(self, path: str | os.PathLike[str], expected: LogPos) -> Any:
        directory = os.fspath(path)
        checked = self._checked_snapshot(directory, expected)
        if checked is not None:
            return checked
        new = self._path + ".new"
        try:
            shutil.rmtree(new, ignore_errors=True)
            os.mkdir(new, 0o755)
            copied = os.path.join(new, SNAPSHOT_FILE)
            # A copy, not a link: the live environment writes into its file in place.
            shutil.copyfile(os.path.join(directory, SNAPSHOT_FILE), copied)
            fsync_path(copied)
            fsync_directory(new)
        except OSError as exc:
            shutil.rmtree(new, ignore_errors=True)
            logger.error("cannot stage snapshot %s: %s", directory, exc)
            return ("error", f"cannot stage snapshot {directory}: {exc}")
        result = self._swap_in(new)
        if result != OK:
            return result
        if self._position != expected:
            raise StorageError(
                f"snapshot {directory} installed at {self._position}, expected {expected}"
            )
        return OK

    def _swap_in(self, new: str) -> Any:
        """Replace the live environment by the staged one in ``new`` (see the module docstring).

        ``"ok"``; ``("error", reason)`` when the renames fail and the old state is back in
        place; raises ``StorageError`` when not even that could be done, or when the fsync
        after the commit point fails (see ``_commit_swap``).
        """
        old = self._path + ".old"
        env, self._env = self._env, None
        if env is not None:
            env.close()
        try:
            os.rename(self._path, old)
            fsync_directory(self._dir)
            os.rename(new, self._path)  # the commit point
        except OSError as exc:
            logger.error("LMDB storage %s: snapshot swap failed: %s", self._path, exc)
            try:
                _recover_swap(self._dir)
                self._open_env()
            except BaseException as again:
                raise StorageError(f"cannot restore {self._path}: {again}") from again
            return ("error", f"cannot install snapshot: {exc}")
        self._commit_swap(old)
        self._open_env()
        return OK

    def _commit_swap(self, old: str) -> None:
        """Make the commit point's rename durable, then remove the old state in ``old``.

        A failed fsync raises ``StorageError`` (the storage actor restarts), leaving both
        states on disk. Not ``("error", ...)``: the new state is live, and the caller would
        keep the old position over it. Not ``"ok"`` either: the log would be reset to the
        snapshot's position and entries acknowledged past it, while a power loss could
        still undo the rename (the open then rolls back to ``.old``), leaving the storage
        below the log. The restart's open (``_recover_swap``) fsyncs again before removing
        ``.old``: the partition comes back at the snapshot's position only once that is
        durable, and a disk that keeps failing keeps it from starting."""
        try:
            fsync_directory(self._dir)
        except OSError as exc:
            logger.error("LMDB storage %s: snapshot swap not durable: %s", self._path, exc)
            raise StorageError(f"snapshot installed in {self._path}, not durably: {exc}") from exc
        shutil.rmtree(old, ignore_errors=True)

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
        try:
            run: list[tuple[bytes, bytes]] = []
            if isinstance(data, Mapping):
                for key, value in data.items():
                    k, v = packb(key), packb(value)
                    run.append((k, v) if len(k) <= _MAX_RAW_KEY else _long_entry(k, v))
            meta = _meta_items(position, (config_at, config), None, False, None)
            payload = sum(len(k) + len(v) for k, v in run)

            def fill(temp: str) -> None:
                # Written in place (no writemap: the file only grows as pages are used).
                env = lmdb.open(
                    temp,
                    subdir=False,
                    lock=False,
                    writemap=False,
                    sync=False,
                    metasync=False,
                    max_dbs=_MAX_DBS,
                    map_size=-(-(4 * payload + _MIB) // _MIB) * _MIB,
                    mode=0o644,
                )
                try:
                    _write_growing(env, env.open_db(_KV), env.open_db(_META), [run], meta)
                    env.sync(True)
                finally:
                    env.close()

            os.makedirs(directory, exist_ok=True)
            target = os.path.join(directory, SNAPSHOT_FILE)
            build_file_durably(target, fill)
            write_snapshot_checksum(directory, SNAPSHOT_FILE)
            write_metadata(directory, "lmdb", position, (config_at, config))
        except (OSError, lmdb.Error, CodecError) as exc:
            logger.error("cannot write empty snapshot %s: %s", directory, exc)
            return ("error", str(exc))
        return OK


PROVIDER = LmdbStorage
"""The provider this module stands for when a setting names the module."""

__all__ = [
    "CHECKSUM_FILE",
    "DEFAULT_MAP_SIZE",
    "ENV_DIR",
    "LOCK_FILE",
    "SNAPSHOT_FILE",
    "LmdbStorage",
    "StorageLockedError",
]
