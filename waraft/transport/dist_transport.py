"""The default file transport provider (WARaft's ``wa_raft_dist_transport``).

Chunks travel as ordinary actor calls to the peer's receiver, registered
``wa_raft_dist_transport`` on every node, so they reach an in-process node directly and a node
in another process through ``waraft.distribution``. Payloads are plain msgpack-friendly terms.

Sender (runs inside a ``waraft.transport_worker``): reads the file in
``dist_transport_chunk_size`` (1 MiB) chunks and sends ``("chunk", id, file_id, offset, data)``
requests with at most ``dist_transport_max_inflight`` (4) unacknowledged; each acknowledgement
is awaited at most ``dist_transport_ack_timeout_ms`` (5 s, WARaft's hard-coded wait). A missing
acknowledgement, a refused chunk or a transport that stopped running ends the file with an
error. At the end of the file it calls ``("complete", id, file_id)`` and awaits the answer
like a chunk's (a call, not WARaft's cast: the receiver must know who reports the file done).

Receiver (this module's actor): opens each file lazily (creating its directories, never
following a symlink at the file itself; at most ``MAX_OPEN_FILES`` open at once), writes
every chunk at its offset (rejecting chunks of transports that are not running, chunks
outside the size announced at admission, and chunks that would leave the file in more than
``MAX_RECEIVED_RANGES`` pieces), counting only bytes new to the file (a resent chunk counts
once; a sender's window of chunks may arrive out of order), and on
``complete`` fsyncs the file and its directories up to the transfer root, checks the size,
and reports the file to the local transport manager, once: a second ``complete`` of a file
is refused (``already_completed``). Chunks and completions from another node are taken only
from the node that offered the transport (the authenticated caller, ``not_peer`` otherwise):
a third node cannot write into, or finish early, a snapshot it did not send.

``transport_accept`` refuses a transport with ``receiver_disk_full`` when its bytes (twice a
snapshot's: installing it copies it into the storage) do not fit in the free space of the
destination's file system less what the running incoming transports there still need and
less a reserve kept for the log and the storage (``disk_reserve``).

Divergences: WARaft's receiver opens files in write mode (which truncates a file a restarted
receiver had already written); ours never truncates, so a retried chunk lands at its offset.
WARaft does not fsync received files nor check their sizes; we do both before reporting.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from waraft import otp, transport
from waraft.distribution import policy
from waraft.services import env
from waraft.storage.provider import fsync_directory
from waraft.transport import tables
from waraft.transport.tables import MAX_RECEIVED_RANGES, RECEIVING

logger = logging.getLogger(__name__)

NAME: Final = "wa_raft_dist_transport"
ACK_TIMEOUT_KEY: Final = "dist_transport_ack_timeout_ms"  # ours: WARaft hard-codes 5000
DEFAULT_ACK_TIMEOUT_MS: Final = 5000
ALREADY_COMPLETED: Final = ("error", "already_completed")
"""The receiver's answer for a file it completed before (the sender resent it after a worker
crash): the file is there, checked; nothing more to send."""
COMPLETE_TIMEOUT_S: Final = 60.0
"""How long a sender waits for the receiver to fsync and accept a finished file."""
SWEEP_INTERVAL_MS: Final = 30_000
MAX_OPEN_FILES: Final = 64
"""Received files the receiver keeps open at once; opening one more closes the one opened
first (a later chunk opens it again: writes are positioned, nothing is truncated). Files stay
open from their first chunk to their completion, so a member offering transports of
thousands of files and sending a byte to each took every descriptor the process may open."""


# -- sender ------------------------------------------------------------------------------------


class _Pending(Protocol):
    def wait(self, timeout: float) -> Any: ...


class _LocalPending:
    """An acknowledgement from an in-process node (``otp.send_request``)."""

    __slots__ = ("handle",)

    def __init__(self, handle: otp.ReplyTo) -> None:
        self.handle = handle

    def wait(self, timeout: float) -> Any:
        return otp.wait_response(self.handle, timeout)


class _RemotePending:
    """An acknowledgement from another process: a blocking call on a helper thread, because
    ``otp.send_request`` only reaches in-process nodes."""

    __slots__ = ("future",)

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self.future = future

    def wait(self, timeout: float) -> Any:
        try:
            return self.future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.future.cancel()
            raise otp.ExitError("timeout") from None


@dataclass(slots=True)
class SenderState:
    """Per-worker sender state: the peer and, for remote peers, the helper threads."""

    peer: str
    executor: concurrent.futures.ThreadPoolExecutor | None = None
    sent_chunks: int = field(default=0)

    def request(self, address: tuple[str, str], message: Any, timeout: float) -> _Pending:
        """Send one chunk request without waiting for its reply."""
        if address[1] in otp.node.local_nodes() or otp.node.remote_router() is None:
            return _LocalPending(otp.send_request(address, message))
        if self.executor is None:
            inflight = int(env.raft_config("dist_transport_max_inflight"))
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, inflight), thread_name_prefix="waraft-dist-transport"
            )
        here = otp.node.current()
        return _RemotePending(self.executor.submit(_call_as, here, address, message, timeout))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


def _call_as(node: otp.Node, address: tuple[str, str], message: Any, timeout: float) -> Any:
    with node.activate():
        return otp.call(address, message, timeout)


def transport_init(peer: str) -> tuple[str, SenderState]:
    """A worker's sender state for ``peer``."""
    return ("ok", SenderState(peer))


def transport_terminate(reason: Any, state: SenderState) -> None:
    """The worker is stopping."""
    state.close()


def transport_send(transport_id: int, file_id: int, state: SenderState) -> tuple[Any, ...]:
    """Send one file: ``("ok", state)`` or ``("stop", reason, state)``."""
    info = tables.transport_info(transport_id)
    if info is None:
        return ("stop", ("invalid_transport", transport_id), state)
    file = tables.file_info(transport_id, file_id)
    if file is None:
        return ("stop", ("invalid_file", transport_id, file_id), state)
    try:
        fd = os.open(file["path"], os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        logger.error("transport %s: cannot open %s: %s", transport_id, file["path"], exc)
        return ("stop", ("failed_to_open_file", transport_id, file_id, exc.strerror), state)
    try:
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        error = _send_file(transport_id, file_id, fd, info["peer"], state)
    finally:
        os.close(fd)
    if error is not None:
        logger.warning("transport %s: file %s not sent: %r", transport_id, file_id, error)
        return ("stop", error, state)
    return ("ok", state)


def _send_file(transport_id: int, file_id: int, fd: int, peer: str, state: SenderState) -> Any:
    """The chunk loop with a window of ``dist_transport_max_inflight``; None or an error."""
    chunk_size = max(1, int(env.raft_config("dist_transport_chunk_size")))
    window = max(1, int(env.raft_config("dist_transport_max_inflight")))
    ack_timeout = float(env.raft_config(ACK_TIMEOUT_KEY, DEFAULT_ACK_TIMEOUT_MS)) / 1000.0
    address = (NAME, peer)
    inflight: deque[_Pending] = deque()
    offset = 0
    eof = False
    while True:
        if not eof and len(inflight) < window:
            if not tables.is_running(transport_id):
                return ("not_running", transport_id, tables.transport_info(transport_id, "status"))
            if not _worker_alive():
                return ("worker_stopped", transport_id, file_id)
            try:
                data = os.pread(fd, chunk_size, offset)
            except OSError as exc:
                return ("read_failed", transport_id, file_id, exc.strerror)
            if not data:
                eof = True
                continue
            message = ("chunk", transport_id, file_id, offset, data)
            inflight.append(state.request(address, message, ack_timeout))
            state.sent_chunks += 1
            tables.add_file_bytes(transport_id, file_id, len(data))
            offset += len(data)
            continue
        if not inflight:
            break
        try:
            reply = inflight.popleft().wait(ack_timeout)
        except otp.ExitError as exc:
            if exc.reason == "timeout":
                return ("send_timed_out", transport_id, file_id)
            return ("send_failed", transport_id, file_id, exc.reason)
        if _is_already_completed(reply):
            return None  # sent again after a worker crash, but the receiver has it all
        if reply != "ok":
            reason = reply[1] if isinstance(reply, tuple | list) and len(reply) == 2 else reply
            return ("receiver_error", transport_id, file_id, reason)
    # The receiver fsyncs the whole file before it answers: give that longer than a chunk.
    wait = max(ack_timeout, COMPLETE_TIMEOUT_S)
    try:
        reply = state.request(address, ("complete", transport_id, file_id), wait).wait(wait)
    except otp.ExitError as exc:
        return ("complete_failed", transport_id, file_id, exc.reason)
    if reply != "ok" and not _is_already_completed(reply):
        return ("receiver_error", transport_id, file_id, reply)
    return None


def _is_already_completed(reply: Any) -> bool:
    return isinstance(reply, tuple | list) and tuple(reply) == ALREADY_COMPLETED


def _worker_alive() -> bool:
    """False once the sending worker was killed: its handler runs on (a thread cannot be
    stopped), but the restarted worker sends the file again, so stop streaming it."""
    me = otp.self_pid()
    return me is None or me.is_alive()


# -- admission ---------------------------------------------------------------------------------


RESERVE_BYTES_KEY: Final = "raft_transport_disk_reserve_bytes"  # ours, as the two below
DEFAULT_RESERVE_BYTES: Final[int] = env.GLOBAL_DEFAULTS[RESERVE_BYTES_KEY]
RESERVE_PERCENT_KEY: Final = "raft_transport_disk_reserve_percent"
DEFAULT_RESERVE_PERCENT: Final[float] = env.GLOBAL_DEFAULTS[RESERVE_PERCENT_KEY]
"""Free space admission never promises to a transport: the larger of
``raft_transport_disk_reserve_bytes`` (1 GiB) and ``raft_transport_disk_reserve_percent``
(2 %) of the file system's size. The log and the storage live beside the transport directory
and must go on writing while snapshots arrive; without a reserve one member's offer of all
the free space but 64 MiB was admitted, and nothing else fit."""
INSTALL_COPY_FACTOR: Final = 2
"""Disk space a snapshot needs, in multiples of its size: its files arrive in the transport
directory and installing it copies them into the partition's database (the node's LMDB
environment) before the transport directory is cleaned up."""


def transport_accept(meta: dict[str, Any], incoming_bytes: int) -> Any:
    """Refuse (``receiver_disk_full``) a transport that cannot fit where it would land.

    What it needs (its bytes, twice for a snapshot: ``INSTALL_COPY_FACTOR``) must fit in the
    free space of the destination's file system *less what this node has already promised*
    (the bytes still to arrive of the incoming transports running on that file system, and
    the install copies of their snapshots) *and less the reserve* (``disk_reserve``), so an
    admitted transport never takes the disk below the reserve. Offers are admitted one at a
    time (by the manager), so concurrent catch-ups of several partitions cannot together fill
    the disk that holds the log and the storage. The install copy is counted on the transport
    directory's file system: the storage lives beside it in the default layout.
    """
    directory = transport.registered_directory(meta.get("table", ""), meta.get("partition", 0))
    probe = _existing_ancestor(directory or ".")
    try:
        free, total = _disk_space(probe)
        device = os.stat(probe).st_dev
    except OSError:
        return "ok"
    needed = _needed_bytes(meta, incoming_bytes)
    promised, running = _promised_bytes(device)
    reserve = disk_reserve(total)
    if needed + promised + reserve <= free:
        return "ok"
    logger.warning(
        "refusing a transport of %s/%s (receiver_disk_full): it needs %d bytes (%d incoming%s), "
        "%d running incoming transports still need %d, %d free under %s of which %d are kept "
        "in reserve",
        meta.get("table"), meta.get("partition"), needed, incoming_bytes,
        " + the install copy" if needed > incoming_bytes else "", running, promised, free, probe,
        reserve,
    )  # fmt: skip
    return ("error", "receiver_disk_full")


def disk_reserve(total: int) -> int:
    """Bytes of a file system of ``total`` bytes that admission keeps free (see
    ``DEFAULT_RESERVE_PERCENT``); negative settings count as 0."""
    floor = int(env.raft_config(RESERVE_BYTES_KEY, DEFAULT_RESERVE_BYTES))
    percent = float(env.raft_config(RESERVE_PERCENT_KEY, DEFAULT_RESERVE_PERCENT))
    return max(0, floor, int(total * percent / 100.0))


def _existing_ancestor(path: str) -> str:
    """``path`` or its nearest existing ancestor (a partition's transport directory is made
    on its first transport)."""
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _disk_space(path: str) -> tuple[int, int]:
    """``(free, total)``: the bytes an unprivileged writer may still use on ``path``'s file
    system, and its size."""
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def _needed_bytes(meta: dict[str, Any], size: int) -> int:
    return size * INSTALL_COPY_FACTOR if meta.get("type") == "snapshot" else size


def _promised_bytes(device: int) -> tuple[int, int]:
    """``(bytes, transports)``: what the running incoming transports landing on file system
    ``device`` will still write, their files' missing bytes plus, for snapshots, the install
    copy (the transport stays running until it is installed)."""
    promised = running = 0
    for info, files in tables.running_receives():
        try:
            if os.stat(info["root"]).st_dev != device:
                continue
        except OSError:
            pass  # its directory is gone or unreadable: count it, the safe side
        missing = sum(max(0, f["total_bytes"] - f["completed_bytes"]) for f in files)
        total = sum(f["total_bytes"] for f in files)
        promised += missing + _needed_bytes(info["meta"], total) - total
        running += 1
    return promised, running


# -- receiver ----------------------------------------------------------------------------------


def _receiving(transport_id: int) -> bool:
    """Chunks are written only for a running *incoming* transport (never into the files of
    a transport this node is sending, whatever ID a peer names)."""
    info = tables.transport_info(transport_id)
    return info is not None and info["type"] == "receiver" and info["status"] == tables.RUNNING


class DistTransport(otp.Process):
    """This node's chunk receiver."""

    trap_exit = True
    process_type = otp.THREAD  # writes and fsyncs the chunks it receives

    def init(self) -> None:
        policy.allow(NAME, calls={"chunk": policy.MEMBER, "complete": policy.MEMBER})
        self.fds: dict[tuple[int, int], int] = {}
        # Files this receiver completed whose outcome the manager may not have recorded yet
        # (it learns of it by a cast): a second ``complete`` in that window is refused too.
        self.completed: set[tuple[int, int]] = set()
        self._timer = otp.send_after(SWEEP_INTERVAL_MS, self.pid, "sweep")

    def terminate(self, reason: Any) -> None:
        otp.cancel_timer(self._timer)
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if not isinstance(request, tuple | list) or not request:
            logger.warning("dist transport got an unknown call %r", request)
            return ("error", "unsupported")
        kind = request[0]
        if kind == "chunk" and len(request) == 5:
            return self._from_peer(request[1], from_) or self._write(*request[1:])
        if (
            kind == "complete"
            and len(request) == 3
            and isinstance(request[1], int)
            and isinstance(request[2], int)
        ):
            return self._from_peer(request[1], from_) or self._complete(request[1], request[2])
        logger.warning("dist transport got an unknown call %r", request)
        return ("error", "unsupported")

    def handle_cast(self, msg: Any) -> None:
        logger.warning("dist transport got an unknown cast %r", msg)

    @staticmethod
    def _from_peer(transport_id: Any, from_: otp.ReplyTo) -> Any:
        """None when the caller may touch ``transport_id``'s files, else the refusal.

        A caller on another node is named by its authenticated connection (``from_.node``);
        it must be the node the transport was admitted from. A local caller (no node) is this
        node's own code."""
        caller = getattr(from_, "node", None)
        if caller is None:
            return None
        if not isinstance(transport_id, int):
            return ("error", "invalid_chunk")
        peer = tables.transport_info(transport_id, "peer")
        if peer is not None and peer != caller:
            logger.warning("transport %s: %s is not its peer %s", transport_id, caller, peer)
            return ("error", "not_peer")
        return None

    def handle_info(self, msg: Any) -> None:
        if msg == "sweep":
            self._sweep()
            self._timer = otp.send_after(SWEEP_INTERVAL_MS, self.pid, "sweep")
        elif not (isinstance(msg, tuple) and msg and msg[0] == "EXIT"):
            logger.debug("dist transport dropped %r", msg)

    def _write(self, transport_id: Any, file_id: Any, offset: Any, data: Any) -> Any:
        if not (isinstance(transport_id, int) and isinstance(file_id, int)):
            return ("error", "invalid_chunk")
        file = tables.file_info(transport_id, file_id)
        # A completed file was checked and fsynced: it is never written again (a sender that
        # resends it after a worker crash learns that it is there).
        if file is not None and self._already_completed(transport_id, file_id, file):
            return ALREADY_COMPLETED
        if file is None and _completed_receive(transport_id, file_id):
            return ALREADY_COMPLETED
        if not _receiving(transport_id):
            self._close(transport_id, file_id)
            return ("error", "not_running")
        if file is None:
            return ("error", "invalid_file")
        if not isinstance(data, bytes | bytearray) or not isinstance(offset, int) or offset < 0:
            return ("error", "invalid_chunk")
        if offset + len(data) > file["total_bytes"]:
            return ("error", "chunk_out_of_range")
        end = offset + len(data)
        if len(tables.merged_ranges(file.get("ranges", ()), offset, end)) > MAX_RECEIVED_RANGES:
            return ("error", "chunk_scattered")
        try:
            fd = self._open(transport_id, file_id, file["path"])
            view = memoryview(data)
            at = offset
            while view:
                written = os.pwrite(fd, view, at)
                view = view[written:]
                at += written
        except OSError as exc:
            logger.warning("transport %s: writing file %s failed: %s", transport_id, file_id, exc)
            return ("error", ("write_failed", exc.strerror))
        tables.received_range(transport_id, file_id, offset, end, RECEIVING)
        return "ok"

    def _open(self, transport_id: int, file_id: int, path: str) -> int:
        key = (transport_id, file_id)
        fd = self.fds.get(key)
        if fd is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags, 0o644)
            if len(self.fds) >= MAX_OPEN_FILES:
                self._close(*next(iter(self.fds)))  # the one opened first
            self.fds[key] = fd
        return fd

    def _close(self, transport_id: int, file_id: int) -> None:
        fd = self.fds.pop((transport_id, file_id), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _complete(self, transport_id: int, file_id: int) -> Any:
        """Finish one received file; the answer tells the sender whether it was accepted (the
        manager learns the file's own outcome either way)."""
        file = tables.file_info(transport_id, file_id)
        info = tables.transport_info(transport_id)
        if file is None and _completed_receive(transport_id, file_id):
            return ALREADY_COMPLETED
        if file is None or info is None or info["type"] != "receiver":
            logger.warning("transport %s: completion of unknown file %s", transport_id, file_id)
            return ("error", "invalid_file")
        if self._already_completed(transport_id, file_id, file):
            logger.warning("transport %s: file %s completed again: refused", transport_id, file_id)
            return ALREADY_COMPLETED
        try:
            fd = self._open(transport_id, file_id, file["path"])  # an empty file has no chunk
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                self._close(transport_id, file_id)
            self._sync_directories(os.path.dirname(file["path"]), info["root"])
        except OSError as exc:
            logger.warning("transport %s: finishing file %s failed: %s", transport_id, file_id, exc)
            status: Any = ("sync_failed", exc.strerror)
            transport.complete(transport_id, file_id, status)
            return ("error", status)
        if size != file["total_bytes"] or file["completed_bytes"] != size:
            # The second test: a file of the right size with bytes never written (a sender
            # that skipped a chunk, or a peer's holes) would be read as zeros.
            status = ("size_mismatch", file["completed_bytes"], file["total_bytes"])
            transport.complete(transport_id, file_id, status)
            return ("error", status)
        self.completed.add((transport_id, file_id))
        transport.complete(transport_id, file_id, "ok")
        return "ok"

    def _already_completed(self, transport_id: int, file_id: int, file: tables.Info) -> bool:
        """Whether this incoming file was completed before: its bytes were checked and
        reported once, and reporting them again would count it twice."""
        if (transport_id, file_id) in self.completed:
            return True
        incoming = tables.transport_info(transport_id, "type") == "receiver"
        return bool(incoming and file["status"] == tables.COMPLETED)

    @staticmethod
    def _sync_directories(directory: str, root: str) -> None:
        """fsync every directory from the file's up to the transfer root, and the root's
        parent, so that the new names survive a crash."""
        current = directory
        while current.startswith(root) and current != os.path.dirname(current):
            fsync_directory(current)
            if current == root:
                break
            current = os.path.dirname(current)
        fsync_directory(os.path.dirname(root))

    def _sweep(self) -> None:
        """Close the files of transports that stopped running (cut off or cancelled), and
        forget completions the manager has recorded (or whose transport it forgot)."""
        for transport_id, file_id in list(self.fds):
            if not _receiving(transport_id):
                self._close(transport_id, file_id)
        for key in list(self.completed):
            file = tables.file_info(*key)
            if file is None or file["status"] in (tables.COMPLETED, tables.FAILED):
                self.completed.discard(key)


def _completed_receive(transport_id: int, file_id: int) -> bool:
    """Whether ``file_id`` belongs to an incoming transport that completed (every file
    checked and reported) and has since dropped its files' records: a sender whose worker
    died after its last ``complete`` resends the file, and is answered that it arrived."""
    info = tables.transport_info(transport_id)
    return (
        info is not None
        and info["type"] == "receiver"
        and info["status"] == tables.COMPLETED
        and 1 <= file_id <= info["total_files"]
    )


def start_link() -> otp.Pid:
    """Start this node's chunk receiver, registered ``wa_raft_dist_transport``."""
    pid: otp.Pid = DistTransport.start_link(name=NAME)
    return pid


def child_spec() -> dict[str, Any]:
    """WARaft's child spec: transient, 5 s shutdown."""
    return {
        "id": "wa_raft_dist_transport",
        "start": (start_link, ()),
        "restart": "transient",
        "shutdown": 5000,
    }


__all__ = [
    "NAME",
    "DistTransport",
    "SenderState",
    "child_spec",
    "disk_reserve",
    "start_link",
    "transport_accept",
    "transport_init",
    "transport_send",
    "transport_terminate",
]
