"""Records whose fsync failed, to be cut away before a log directory is opened again.

After a failed ``fsync`` the kernel may have marked the dirty pages clean without writing
them: the file still reads back the records from the page cache, and a later ``fsync``
succeeds, so a log reopened in the same process (the way out of a failed sync: close,
reopen) would replay records that may not be on disk as durable. A provider whose sync
fails cuts its files back to what its last successful sync made durable; when that cut
fails too, it leaves it here (``remember``) and the next open of the directory makes it
before replaying (``settle``), or refuses to open.

Only this process's page cache is covered: a new process may still read such records back
(the same as after a kill -9 between a write and its fsync, which recovery's own fsync
settles as well as it can).
"""

from __future__ import annotations

import errno
import os
import threading

from waraft.log.provider import LogWriteError

REMOVE = -1
"""The durable size of a file created since the last successful sync: it goes."""

_lock = threading.Lock()
_pending: dict[str, dict[str, int]] = {}  # directory -> {path: durable size or REMOVE}


def remember(directory: str, path: str, size: int) -> None:
    """Note that ``path`` in ``directory`` must be cut to ``size`` bytes (``REMOVE``: removed)
    before the directory is opened again. A smaller size noted earlier wins."""
    with _lock:
        cuts = _pending.setdefault(os.path.abspath(directory), {})
        cuts[path] = min(cuts.get(path, size), size)


def forget(directory: str) -> None:
    """The cuts noted for ``directory`` were made."""
    with _lock:
        _pending.pop(os.path.abspath(directory), None)


def settle(directory: str) -> None:
    """Make the cuts noted for ``directory`` (durably), newest file first; raises
    ``LogWriteError`` if one cannot be made (the directory must not be opened: it would
    count as durable records whose fsync failed)."""
    directory = os.path.abspath(directory)
    with _lock:
        cuts = dict(_pending.get(directory, {}))
    for path, size in sorted(cuts.items(), reverse=True):
        try:
            _cut(path, size)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LogWriteError(
                exc.errno or errno.EIO,
                f"{path} holds records whose fsync failed and they cannot be cut away ({exc}): "
                "restart the node; if the disk is failing, move the partitions' directories "
                "away to have them rebuilt from healthy replicas",
            ) from exc
        with _lock:
            _pending.get(directory, {}).pop(path, None)
    forget(directory)


def _cut(path: str, size: int) -> None:
    if size == REMOVE:
        os.unlink(path)
        dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
