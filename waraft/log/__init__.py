"""The partition's Raft log (WARaft's ``wa_raft_log``): the log actor and the provider interface.

The providers are ``waraft.log.memory.MemoryLog`` (WARaft's ETS log, the default),
``waraft.log.wal.WalLog`` (one write-ahead log per node shared by every partition, with group
commit: ``waraft node``'s durable log) and ``waraft.log.disk.DiskLog`` (durable segment files
per partition), all behind ``waraft.log.provider``.

As in WARaft, the log *actor* only serialises the destructive operations — open, reset,
truncate (calls) and trim, flush (casts, run asynchronously so rotation never stalls the
server). Appends and reads go straight from the server's thread to the provider it got back from
``open``.

A log that fails verification when it is opened (``LogCorruptionError``) is *quarantined*: the
files are left untouched, the server gets an empty in-memory stand-in together with the error,
and comes up ``disabled`` with the reason, so the replica neither serves nor votes on bad data
while the rest of the node runs on. To recover, stop the partition, move its data directory
away and start it again: it comes back ``stalled`` and is caught up by a snapshot.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from waraft import otp
from waraft.core.types import LogPos
from waraft.log.memory import MemoryLog
from waraft.log.provider import (
    LogCorruptionError,
    LogError,
    LogPositionError,
    LogProvider,
    LogWriteError,
    is_config_entry,
)
from waraft.services import env

logger = logging.getLogger(__name__)

TRIM_RETRY_MS: Final = 1000
"""A trim held back by storage's durable position is tried again after this long (a lazily
synced storage flushes at least once a second by default)."""
TRIM_RETRIES: Final = 10
"""Retries in a row that gain nothing before a held-back trim waits for the next rotation."""
STALLED_SYNC_WAIT: Final = 1.0
"""Seconds the final sync at termination (and a ``flush``) waits on a log whose writes are
stalled (a full disk) before going on without it: the actor must stop within its shutdown
time, or its partition could not restart (see ``LogServer.terminate``)."""


def default_name(table: str, partition: int) -> str:
    """``raft_log_<table>_<partition>``."""
    return f"raft_log_{table}_{partition}"


class LogServer(otp.Process):
    """Owns the partition's log provider and runs its destructive operations."""

    trap_exit = True

    def init(self, options: Any) -> None:
        self.name: str = options.log_name
        settings = env.settings_for(options.application, options.table)
        self.storage_name: str = options.storage_name
        provider_cls = options.log_module
        self.corruption: str | None = None
        try:
            self.provider: LogProvider = provider_cls.open(options.database, settings)
        except LogCorruptionError as exc:
            logger.error("log %s is corrupt and quarantined: %s", self.name, exc)
            self.corruption = str(exc)
            self.provider = MemoryLog.open(None, settings)
        self._held_back = 0  # the highest trim index storage's durable position held back
        self._held_at = 0  # how far that trim got
        self._idle_retries = 0
        self._retry: otp.TimerRef | None = None
        logger.info("log %s opened %s", self.name, type(self.provider).__name__)

    def terminate(self, reason: Any) -> None:
        """Sync and close the provider. On a full disk the sync would wait for room, and an
        actor that outlives its shutdown time is abandoned with its provider still open (the
        node's WAL then refused every later open of the partition, and the restarts took the
        node's supervisors down); so it waits at most ``STALLED_SYNC_WAIT`` and closes. What
        was queued is still written, in order, once there is room; none of it was
        acknowledged (only a sync that returned lets the server acknowledge), and the next
        server of the partition syncs before it sends anything.

        The close runs on the node's I/O threads (``otp.blocking``): the node WAL's last
        partition to close stops its writer (a final batch, its fsync, the files closed). It
        has returned before the actor exits, so the partition's next log actor opens after it."""
        provider = getattr(self, "provider", None)
        if provider is not None:
            self._sync_bounded("final sync")
            otp.blocking(provider.close)

    def _sync_bounded(self, what: str) -> None:
        try:
            if not self.provider.sync_within(STALLED_SYNC_WAIT):
                logger.warning(
                    "log %s: %s skipped: writes stalled (a full disk); they are written "
                    "once there is room",
                    self.name, what,
                )  # fmt: skip
        except LogError:
            logger.exception("log %s: %s failed", self.name, what)

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        kind = request[0]
        provider = self.provider
        if kind == "open":
            position: LogPos = request[1]
            if self.corruption is None and provider.open_at(position):
                logger.info("log %s reset to %s to match storage", self.name, position)
            return (provider, self.corruption)
        if kind == "reset":
            provider.reset(request[1])
            return "ok"
        if kind == "truncate":
            provider.truncate(request[1])
            return "ok"
        if kind == "status":
            return provider.status()
        logger.warning("log %s got an unexpected call %r", self.name, request)
        return ("error", "unknown_request")

    def handle_cast(self, msg: Any) -> None:
        kind = msg[0]
        if kind == "trim":
            self._trim(msg[1])
        elif kind == "flush":
            self._sync_bounded("flush")
        else:
            logger.warning("log %s got an unexpected cast %r", self.name, msg)

    def handle_info(self, msg: Any) -> None:
        if msg == ("trim_retry",):
            self._retry = None
            if self._held_back:
                self._trim(self._held_back)
        elif type(msg) is tuple and len(msg) == 2 and msg[0] == "wal_failed":
            # The node's WAL failed with records of this partition not durable: its log in
            # memory may be ahead of the disk. The partition restarts (once) and reopens it
            # from disk through the WAL's new writer (``waraft.log.wal.WalWriter._replace``).
            logger.error("log %s: the node's WAL failed (%s); restarting", self.name, msg[1])
            self.stop_self(("wal_failed", msg[1]))
        else:
            super().handle_info(msg)

    def _trim(self, index: int) -> None:
        """Rotation: drop entries below ``index``, but never past storage's *durable*
        position (``StorageProvider.durable_position``: what it applied as of its last flush),
        so that a restart, even after a power loss, finds storage's position in the log and
        applies everything after it again (WARaft's rule is the applied position; the core's
        rotate index can run ahead of the storage actor, and a lazily synced storage behind
        that). A trim held back is retried on a timer until it completes, so the entries kept
        for it are freed about one storage flush later, not at the next rotation."""
        index = max(index, self._held_back)
        try:
            durable: LogPos = otp.call(self.storage_name, ("durable_position",), 60.0)
        except otp.ExitError as exc:
            logger.warning("log %s: no trim, storage unreachable: %r", self.name, exc.reason)
            return
        target = min(index, durable.index)
        try:
            self.provider.trim(target)
        except LogError as exc:  # best effort, as WARaft's: a failed trim is only logged
            logger.warning("log %s: trim to %s failed: %s", self.name, target, exc)
        if target >= index:
            self._held_back = 0
            return
        self._idle_retries = 0 if target > self._held_at else self._idle_retries + 1
        self._held_back, self._held_at = index, target
        if self._retry is None and self._idle_retries < TRIM_RETRIES:
            self._retry = otp.send_after(TRIM_RETRY_MS, self.pid, ("trim_retry",))


def start_link(options: Any) -> otp.Pid:
    """Start the log actor registered as ``options.log_name``: scheduled for a provider that
    never blocks (the memory log), on a thread of its own for one that does I/O."""
    blocking = getattr(options.log_module, "blocking_io", True)
    pid: otp.Pid = LogServer.start_link(
        options, name=options.log_name, process_type=otp.THREAD if blocking else None
    )
    return pid


def child_spec(options: Any) -> dict[str, Any]:
    """WARaft's child spec: permanent, 30 s shutdown."""
    return {
        "id": "wa_raft_log",
        "start": (start_link, (options,)),
        "restart": "permanent",
        "shutdown": 30000,
    }


__all__ = [
    "LogCorruptionError",
    "LogError",
    "LogPositionError",
    "LogProvider",
    "LogServer",
    "LogWriteError",
    "child_spec",
    "default_name",
    "is_config_entry",
    "start_link",
]
