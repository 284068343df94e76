"""Term, vote and disable reason kept across restarts (WARaft's ``wa_raft_durable_state``).

File ``<partition dir>/state``: a 16-byte header — magic ``WRAFTDS1``, body length (u32 LE),
CRC32 of the body (u32 LE) — followed by the msgpack body ``[current_term, voted_for,
disable_reason]``.

``store`` writes ``state.temp``, fsyncs it, renames it over ``state`` and fsyncs the directory,
so a crash leaves either the old or the new state and a stored vote is durable before it is
answered (WARaft renames without fsync; we fsync, as DESIGN.md says). ``load`` returns ``None``
only when there is no state file: a truncated, corrupt or malformed file raises
``DurableStateError`` — never an empty state, which could let a replica vote twice in a term.
A leftover ``state.temp`` (a crash before the rename) is ignored.

A store whose directory fsync failed after the rename (``RenameNotDurableError``) leaves a
state this process reads back from the page cache although, after a power loss, the directory
may still name the old file: the failed store's vote would then be answered by a restarted
server with nothing durable behind it. Such a directory is remembered in this process (as
``waraft.log.unsynced`` does for log records whose fsync failed), and the next ``load`` of it
stores what it reads again, completely, before returning it; if that fails too, ``load``
raises. A retried fsync (``sync``) never clears the mark: after a failed fsync the kernel may
report success without writing anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from typing import Final

from waraft.core.types import DurableState
from waraft.services.codec import CodecError, packb, unpackb
from waraft.storage.provider import (
    DISK_FULL_ERRNOS,
    RenameNotDurableError,
    fsync_path,
    write_file_durably,
)

logger = logging.getLogger(__name__)

STATE_FILE: Final = "state"
TEMP_FILE: Final = "state.temp"
MAGIC: Final = b"WRAFTDS1"
HEADER: Final = struct.Struct("<8sII")

# Partition directories (absolute) whose last store may not be durable: see the module doc.
_not_durable: set[str] = set()
_not_durable_lock = threading.Lock()


def _mark_not_durable(directory: str, not_durable: bool) -> None:
    key = os.path.abspath(directory)
    with _not_durable_lock:
        if not_durable:
            _not_durable.add(key)
        else:
            _not_durable.discard(key)


def _is_not_durable(directory: str) -> bool:
    with _not_durable_lock:
        return os.path.abspath(directory) in _not_durable


class DurableStateError(Exception):
    """The state file exists but cannot be trusted (or cannot be written).

    ``disk_full`` is True when ``store`` failed only for lack of room (``ENOSPC``,
    ``EDQUOT``): the old state is intact and the same store succeeds once there is room."""

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


def encode(state: DurableState) -> bytes:
    """The state file's bytes for ``state``."""
    try:
        body = packb((state.current_term, state.voted_for, state.disable_reason))
    except CodecError as exc:
        raise DurableStateError(f"cannot encode durable state {state!r}: {exc}") from exc
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def decode(data: bytes, path: str = STATE_FILE) -> DurableState:
    """Parse a state file's bytes; raises ``DurableStateError`` naming ``path``."""
    if len(data) < HEADER.size:
        raise DurableStateError(f"state file {path} is truncated ({len(data)} bytes)")
    magic, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DurableStateError(f"state file {path} has a bad header (not a waraft state file)")
    body = data[HEADER.size :]
    if len(body) != length:
        raise DurableStateError(
            f"state file {path} holds {len(body)} body bytes, its header says {length}"
        )
    if zlib.crc32(body) != crc:
        raise DurableStateError(f"state file {path} fails its CRC check")
    try:
        fields = unpackb(body)
    except CodecError as exc:
        raise DurableStateError(f"state file {path} has an undecodable body: {exc}") from exc
    if type(fields) is not tuple or len(fields) != 3:
        raise DurableStateError(f"state file {path} does not hold [term, voted_for, reason]")
    term, voted_for, disable_reason = fields
    if type(term) is not int or term < 0:
        raise DurableStateError(f"state file {path} has an invalid current_term {term!r}")
    if voted_for is not None and type(voted_for) is not str:
        raise DurableStateError(f"state file {path} has an invalid voted_for {voted_for!r}")
    return DurableState(term, voted_for, disable_reason)


def store(partition_path: str | os.PathLike[str], state: DurableState) -> None:
    """Durably replace the partition's state file; raises ``DurableStateError`` on failure
    (after which ``state`` may be what this process reads back, but it is not durable: the
    next ``load`` in this process stores it again before trusting it)."""
    directory = os.fspath(partition_path)
    data = encode(state)
    temp = os.path.join(directory, TEMP_FILE)
    try:
        os.makedirs(directory, exist_ok=True)
        write_file_durably(os.path.join(directory, STATE_FILE), data, temp)
    except OSError as exc:
        if isinstance(exc, RenameNotDurableError):
            _mark_not_durable(directory, True)
        disk_full = exc.errno in DISK_FULL_ERRNOS
        if not disk_full:  # a full disk is retried, and logged once, by the server
            logger.error("cannot store durable state in %s: %s", directory, exc)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise DurableStateError(
            f"cannot store durable state in {directory}: {exc}",
            disk_full=disk_full,
        ) from exc
    # Complete: the directory names this file durably, whatever an earlier store left.
    _mark_not_durable(directory, False)


def load(partition_path: str | os.PathLike[str]) -> DurableState | None:
    """The stored state, ``None`` when there is no state file (a new replica). When the last
    store in this process did not complete (see the module doc), the state read is stored
    again first; ``DurableStateError`` if that fails (the state cannot be trusted)."""
    directory = os.fspath(partition_path)
    path = os.path.join(directory, STATE_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        _mark_not_durable(directory, False)  # removed since: nothing left to trust
        return None
    except OSError as exc:
        raise DurableStateError(f"cannot read state file {path}: {exc}") from exc
    state = decode(data, path)
    if _is_not_durable(directory):
        _store_again(directory, state)
    return state


def _store_again(directory: str, state: DurableState) -> None:
    """Make ``state``, read back after a store that did not complete, durable."""
    path = os.path.join(directory, STATE_FILE)
    try:
        store(directory, state)
    except DurableStateError as exc:
        raise DurableStateError(
            f"state file {path} was read back after a store that failed, and storing it "
            f"again failed ({exc}): its term and vote may not be durable"
        ) from exc
    logger.warning(
        "state file %s: its last store had failed after the rename; stored it again "
        "(term %d) before trusting it",
        path,
        state.current_term,
    )


def sync(partition_path: str | os.PathLike[str]) -> None:
    """fsync the state file if it exists (WARaft calls this on server termination; ``store``
    already syncs, so this is only a belt-and-braces flush). It never makes a state trusted:
    a directory whose last store did not complete stays so (a retried fsync may report
    success without writing), and a failed fsync here marks it so, then raises ``OSError``
    (the next ``load`` in this process stores the state again)."""
    directory = os.fspath(partition_path)
    path = os.path.join(directory, STATE_FILE)
    try:
        fsync_path(path)
    except FileNotFoundError:
        pass
    except OSError:
        _mark_not_durable(directory, True)
        raise


__all__ = [
    "STATE_FILE",
    "TEMP_FILE",
    "DurableStateError",
    "decode",
    "encode",
    "load",
    "store",
]
