"""The transport records of this node (WARaft's ``wa_raft_transport_transports`` and
``wa_raft_transport_files`` ETS tables, and the manager's receive counters).

Several nodes may live in one Python process, so there is one ``Tables`` per node id, created by
``setup_tables`` when ``waraft.app`` starts (WARaft's application supervisor owns the tables).
Every access holds the node's lock; readers get copies. The record layout is documented in
``waraft.transport``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final

from waraft import otp
from waraft.services import metrics

logger = logging.getLogger(__name__)

REQUESTED: Final = "requested"
RUNNING: Final = "running"
COMPLETED: Final = "completed"
CANCELLED: Final = "cancelled"
TIMED_OUT: Final = "timed_out"
FAILED: Final = "failed"
ACTIVE: Final = frozenset({REQUESTED, RUNNING})
SENDING: Final = "sending"  # file statuses, besides requested / completed / failed
RECEIVING: Final = "receiving"

Info = dict[str, Any]


class Tables:
    """One node's transport and file records (WARaft's two public ETS tables and counters).

    Every access holds ``lock``; readers get copies.
    """

    __slots__ = (
        "active_receives",
        "active_witness_receives",
        "files",
        "lock",
        "modules",
        "notify",
        "queues",
        "touched",
        "transports",
    )

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.transports: dict[int, Info] = {}
        self.files: dict[tuple[int, int], Info] = {}
        self.queues: dict[int, deque[int]] = {}
        self.modules: dict[int, Any] = {}
        self.notify: dict[int, otp.ReplyTo] = {}
        self.touched: dict[int, int] = {}  # monotonic ms of the last update (idle detection)
        self.active_receives = 0
        self.active_witness_receives = 0


_registry_lock = threading.Lock()
_registry: dict[str, Tables] = {}


def setup_tables(node: str | None = None) -> None:
    """Create fresh tables for ``node`` (default: current). ``waraft.app`` does this at start,
    as WARaft's application supervisor owns the ETS tables."""
    key = node or otp.node.current().id
    with _registry_lock:
        live = otp.node.local_nodes()
        for stale in [n for n in _registry if n not in live and n != key]:
            del _registry[stale]  # nodes stopped in this process: drop their records
        _registry[key] = Tables()


def tables_for(node: str | None = None) -> Tables | None:
    """The tables of ``node`` (default: current), or None before ``setup_tables``."""
    return _registry.get(node or otp.node.current().id)


def now_ms() -> int:
    """Wall-clock milliseconds (``start_ts`` / ``end_ts``)."""
    return time.time_ns() // 1_000_000


def mono_ms() -> int:
    """Monotonic milliseconds (activity stamps)."""
    return time.monotonic_ns() // 1_000_000


def count(table: Any, name: str) -> None:
    """Count a ``("raft", table, name)`` metric."""
    metrics.get().count(metrics.key(str(table), name))


# -- reading -----------------------------------------------------------------------------------


def transports() -> list[int]:
    """The IDs of every transport this node knows about."""
    t = tables_for()
    if t is None:
        return []
    with t.lock:
        return list(t.transports)


def transport_info(transport_id: int, item: str | None = None) -> Any:
    """A copy of the transport's record, or None; with ``item``, that field (or None)."""
    t = tables_for()
    if t is None:
        return None
    with t.lock:
        info = t.transports.get(transport_id)
        if info is None:
            return None
        return info.get(item) if item is not None else dict(info)


def file_info(transport_id: int, file_id: int) -> Info | None:
    """A copy of a file's record, or None."""
    t = tables_for()
    if t is None:
        return None
    with t.lock:
        info = t.files.get((transport_id, file_id))
        return None if info is None else dict(info)


def is_running(transport_id: int) -> bool:
    """True while the transport's status is ``running`` (providers check this between chunks)."""
    return bool(transport_info(transport_id, "status") == RUNNING)


def running_receives() -> list[tuple[Info, list[Info]]]:
    """Copies of every running incoming transport's record with its files' records."""
    t = tables_for()
    if t is None:
        return []
    found = []
    with t.lock:
        for transport_id, info in _running(t, "receiver"):
            files = (t.files.get((transport_id, i)) for i in range(1, info["total_files"] + 1))
            found.append((dict(info), [dict(f) for f in files if f is not None]))
    return found


def _running(t: Tables, kind: str) -> Iterator[tuple[int, Info]]:
    """The running transports of ``kind`` (``sender`` or ``receiver``). Caller holds
    ``t.lock``."""
    for transport_id, info in t.transports.items():
        if info["type"] == kind and info["status"] == RUNNING:
            yield transport_id, info


def transport_module(transport_id: int) -> Any:
    """The provider object handling this transport on this node, or None."""
    t = tables_for()
    return None if t is None else t.modules.get(transport_id)


def update_file_info(transport_id: int, file_id: int, fn: Callable[[Info], Info]) -> str:
    """Replace a file's record with ``fn(copy)``: ``"ok"`` or ``"not_found"``.

    Any change counts as activity of the transport (for the idle timeout).
    """
    t = tables_for()
    if t is None:
        return "not_found"
    with t.lock:
        key = (transport_id, file_id)
        info = t.files.get(key)
        if info is None:
            return "not_found"
        new = fn(dict(info))
        if new != info:
            t.files[key] = new
            t.touched[transport_id] = mono_ms()
        return "ok"


def add_file_bytes(transport_id: int, file_id: int, count: int, status: str | None = None) -> str:
    """Add ``count`` to a file's ``completed_bytes`` (and set ``status`` if given)."""

    def bump(info: Info) -> Info:
        info["completed_bytes"] = info.get("completed_bytes", 0) + count
        if status is not None:
            info["status"] = status
        return info

    return update_file_info(transport_id, file_id, bump)


MAX_RECEIVED_RANGES: Final = 64
"""Separate byte ranges an incoming file may hold at once (``merged_ranges``). A sender
keeps ``dist_transport_max_inflight`` chunks of a file in flight, answered from a thread
pool, so a few land ahead of a gap; a peer scattering a file in thousands of pieces would
make this record, and each chunk's merge, as large."""


def merged_ranges(
    ranges: tuple[tuple[int, int], ...], start: int, end: int
) -> tuple[tuple[int, int], ...]:
    """``ranges`` (sorted, disjoint ``(start, end)`` byte ranges) with ``[start, end)`` added,
    overlapping and touching ranges joined."""
    out: list[tuple[int, int]] = []
    for low, high in ranges:
        if high < start or low > end:
            out.append((low, high))
        else:
            start, end = min(start, low), max(end, high)
    out.append((start, end))
    out.sort()
    return tuple(out)


def received_range(
    transport_id: int, file_id: int, start: int, end: int, status: str | None = None
) -> str:
    """An incoming file now holds bytes ``[start, end)``: its ``ranges`` gain them and its
    ``completed_bytes`` is the number of bytes the ranges cover (and ``status`` is set if
    given). A chunk written again (a resend after a sending worker died, a repeat) adds
    nothing: disk admission reads ``completed_bytes`` as what the file no longer needs
    (``dist_transport._promised_bytes``), and counted twice it admitted past the reserve."""

    def advance(info: Info) -> Info:
        ranges = merged_ranges(info.get("ranges", ()), start, end)
        info["ranges"] = ranges
        info["completed_bytes"] = sum(high - low for low, high in ranges)
        if status is not None:
            info["status"] = status
        return info

    return update_file_info(transport_id, file_id, advance)


def pop_file(transport_id: int, worker: otp.Pid | None = None) -> tuple[str, int] | str:
    """The next queued file of a running transport: ``("ok", file_id)``, ``"empty"``, or
    ``"not_found"`` (unknown, or no longer running).

    With ``worker`` (the sending worker's pid), the file is marked ``sending`` by it in the
    same step, so that ``take_up`` can tell a file whose worker died; a worker that is no
    longer alive (killed while its handler ran on) gets ``"not_found"``."""
    t = tables_for()
    if t is None:
        return "not_found"
    with t.lock:
        queue = t.queues.get(transport_id)
        info = t.transports.get(transport_id)
        if queue is None or info is None or info["status"] != RUNNING:
            return "not_found"
        if worker is not None and not worker.is_alive():
            return "not_found"
        if not queue:
            return "empty"
        file_id = queue.popleft()
        if worker is not None:
            mark = {"status": SENDING, "start_ts": now_ms(), "worker": worker}
            update_file_info(transport_id, file_id, lambda i: {**i, **mark})
        return ("ok", file_id)


def take_up(peer: str) -> list[tuple[int, Any]]:
    """For a (re)started worker sending to ``peer``: every running outgoing transport to it,
    as ``(id, table)``.

    A file that a dead worker was sending (it crashed or was killed mid-file) is queued again,
    first, with its byte count reset: it is sent again from its start, which is safe because
    the receiver writes every chunk at its offset and never truncates, and answers
    ``already_completed`` if it had the whole file already. Files of live workers (siblings
    that started first) are left alone."""
    t = tables_for()
    if t is None:
        return []
    found = []
    with t.lock:
        for transport_id, info in _running(t, "sender"):
            if info["peer"] != peer:
                continue
            orphans = _orphaned_files(t, transport_id, info["total_files"])
            queue = t.queues.setdefault(transport_id, deque())
            queue.extendleft(reversed(orphans))
            found.append((transport_id, info["meta"].get("table")))
    return found


def _orphaned_files(t: Tables, transport_id: int, total: int) -> list[int]:
    """The files of a transport marked ``sending`` by a worker that is dead, put back to
    ``requested``. Caller holds ``t.lock``."""
    orphans = []
    for file_id in range(1, total + 1):
        file = t.files.get((transport_id, file_id))
        if file is None or file["status"] != SENDING:
            continue
        worker = file.get("worker")
        if worker is not None and worker.is_alive():
            continue
        orphans.append(file_id)
        update_file_info(
            transport_id,
            file_id,
            lambda i: {**i, "status": REQUESTED, "completed_bytes": 0, "worker": None},
        )
    if orphans:
        logger.warning(
            "transport %s: files %s were being sent by a worker that died: queued again",
            transport_id,
            orphans,
        )
    return orphans


def update(t: Tables, transport_id: int, fn: Callable[[Info], Info]) -> Info | None:
    """Apply ``fn`` to a copy of the record, store the result, keep the receive counters and
    answer a waiting ``transfer`` once the transport ended. Caller holds ``t.lock``."""
    old = t.transports.get(transport_id)
    if old is None:
        return None
    new = fn(dict(old))
    if new == old:
        return old
    if new["type"] == "receiver" and new["status"] not in ACTIVE and old["status"] in ACTIVE:
        _summarize_files(t, transport_id, new)
    t.transports[transport_id] = new
    t.touched[transport_id] = mono_ms()
    _count_receives(t, old, new)
    if new["status"] not in ACTIVE:
        t.queues.pop(transport_id, None)
        waiter = t.notify.pop(transport_id, None)
        if waiter is not None:
            waiter.reply(("ok", transport_id))
    return new


def _summarize_files(t: Tables, transport_id: int, info: Info) -> None:
    """An incoming transport ended: forget its files' records, keeping their totals in
    ``info`` (``total_bytes``, ``received_bytes``). Caller holds ``t.lock``.

    Each record holds the offered name and its resolved path, and finished transports are
    kept until ``raft_transport_inactive_info_limit`` newer ones end: a member's offers of
    many files with long names pinned hundreds of MB after they ended. Nothing reads a file
    of a transport that ended: its chunks and completions are refused."""
    total = received = 0
    for file_id in range(1, info["total_files"] + 1):
        file = t.files.pop((transport_id, file_id), None)
        if file is not None:
            total += file["total_bytes"]
            received += file["completed_bytes"]
    info["total_bytes"] = total
    info["received_bytes"] = received


def insert(t: Tables, transport_id: int, info: Info) -> None:
    """Add a new record. Caller holds ``t.lock``."""
    t.transports[transport_id] = info
    t.touched[transport_id] = mono_ms()
    _count_receives(t, None, info)


def _count_receives(t: Tables, old: Info | None, new: Info) -> None:
    if new["type"] != "receiver":
        return
    was = old is not None and old["status"] == RUNNING
    now = new["status"] == RUNNING
    if was == now:
        return
    step = 1 if now else -1
    if new["meta"].get("witness"):
        t.active_witness_receives += step
    else:
        t.active_receives += step


def finish(info: Info, status: str, error: Any = None) -> Info:
    """``info`` ended with ``status`` (and ``error``) now."""
    info["status"] = status
    info["end_ts"] = now_ms()
    if error is not None:
        info["error"] = error
    return info


def delete(t: Tables, transport_id: int) -> None:
    """Forget a transport and its files. Caller holds ``t.lock``."""
    info = t.transports.pop(transport_id, None)
    if info is None:
        return
    for file_id in range(1, info["total_files"] + 1):
        t.files.pop((transport_id, file_id), None)
    for table in (t.queues, t.modules, t.notify, t.touched):
        table.pop(transport_id, None)


__all__ = [
    "ACTIVE",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "MAX_RECEIVED_RANGES",
    "RECEIVING",
    "REQUESTED",
    "RUNNING",
    "SENDING",
    "TIMED_OUT",
    "Info",
    "Tables",
    "add_file_bytes",
    "count",
    "delete",
    "file_info",
    "finish",
    "insert",
    "is_running",
    "merged_ranges",
    "mono_ms",
    "now_ms",
    "pop_file",
    "received_range",
    "running_receives",
    "setup_tables",
    "tables_for",
    "take_up",
    "transport_info",
    "transport_module",
    "transports",
    "update",
    "update_file_info",
]
