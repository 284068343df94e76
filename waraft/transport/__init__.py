"""The node-wide file transport: moving snapshots between nodes (WARaft's ``wa_raft_transport*``).

This package owns the transport's public API and record tables (here, ``wa_raft_transport``),
its manager process (``manager``), the worker supervisors and workers that move files
(``sup``, ``target_sup``, ``worker``), the per-partition cleanup of old transfers (``cleanup``),
the ZeroMQ file provider (``dist_transport``) and snapshot catch-up (``snapshot_catchup``). It
finds partitions through the options registry (``waraft.services.options``) and never imports
the partition's actors.

A *transport* moves every regular file under a directory to a peer node. Each side keeps a
record of it: the sender's (``type`` ``"sender"``) and the receiver's (``"receiver"``), under the
same ID, in this node's transport tables, which any thread may read (WARaft's public ETS
tables). A record is a plain dict:

* transport: ``type``, ``status`` (requested | running | completed | cancelled | timed_out |
  failed), ``peer``, ``module`` (the provider's name), ``meta``, ``root``, ``start_ts`` and
  ``end_ts`` (wall-clock ms), ``total_files``, ``completed_files``, ``error``;
* file: ``status`` (requested | sending | receiving | completed | failed), ``name`` (relative,
  ``/``-separated), ``path``, ``mtime``, ``start_ts``, ``end_ts``, ``total_bytes``,
  ``completed_bytes``, ``error``; on the sending side ``worker``, the pid of the worker
  sending it (a worker restarted after a crash sends again the files of dead workers).

``meta`` is ``{"type": "transfer", "table", "partition"}`` or, for snapshots,
``{"type": "snapshot", "table", "partition", "position", "witness"}``.

Sending (``start_transfer`` and friends, run in the caller's thread): list the files, record
them, then make the synchronous start handshake with the peer's manager (``raft_rpc_call_timeout``,
10 s). If the peer accepts, the file IDs are queued and the per-peer workers
(``waraft.transport_sup``) are told; each worker pops a file and hands it to the provider
(``waraft.dist_transport`` by default), then reports it with ``complete``.

Receiving (the manager actor, registered ``wa_raft_transport``): who may offer (a snapshot
only the partition's leader, ``not_leader``; a transfer only a participant of its config,
``not_member``), admission control (``raft_max_incoming_snapshot_transfers`` 5,
``raft_max_incoming_witness_snapshot_transfers`` 10, at most
``raft_max_incoming_transports_per_peer`` 2 of each from one node -> ``receiver_overloaded``;
the provider's optional ``transport_accept`` hook, e.g. ``receiver_disk_full`` below the
default provider's disk reserve), duplicate IDs, and every peer-supplied path must stay
inside the destination ``<transport_directory>/<ID>`` (absolute paths, ``..`` escapes and
symlink escapes reject the whole transport with ``invalid_file_path``, before anything is
written). When every
file of a snapshot transport has arrived, the manager calls ``waraft.server.snapshot_available``
on the partition's server (a failure marks the transport failed with ``("notify_failed", r)``).

The records live in ``waraft.transport_tables`` and the manager actor in
``waraft.transport_manager``; this module is the public API and the sending side.

Every ``raft_transport_scan_interval_ms`` (30 s) the manager times out running transports idle
for ``transport_idle_timeout_secs`` (30) and forgets the oldest finished records beyond
``raft_transport_inactive_info_limit`` (30).

Divergences from WARaft, on purpose:

* The sender's start handshake runs in the caller's thread, not inside the manager, so two
  managers never wait on each other (two nodes starting transports to each other at once would
  otherwise both stall for the call timeout) and a slow peer never blocks incoming admissions.
  The tables are lock-protected, so records stay consistent.
* A cancelled, failed or timed-out transport stops handing out files, and the default provider
  stops sending between chunks (WARaft lets queued files drain).
* Symlinks under a sender's root are skipped, not followed: a snapshot holds regular files, and
  following a link could ship a file from outside the root.
* The receiver consults its *own* registered provider for the partition (``transport_accept``,
  ``transport_complete``); the sender's provider name is recorded but never imported, so a peer
  cannot make this node load code by name.
* IDs are ``microseconds * 1000 + random(1000)``: unique like WARaft's, but small enough for a
  64-bit msgpack integer.
"""

from __future__ import annotations

import logging
import os
import random
import stat
import time
from collections import deque
from typing import Any

from waraft import otp
from waraft.core.types import LogPos
from waraft.services import env
from waraft.transport.manager import (
    NAME,
    TransportManager,
    child_spec,
    default_directory,
    module_name,
    registered_directory,
    registered_module,
    resolve_transport_files,
    safe_relative_path,
    start_link,
)
from waraft.transport.tables import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    FAILED,
    REQUESTED,
    RUNNING,
    TIMED_OUT,
    Tables,
    add_file_bytes,
    count,
    file_info,
    finish,
    insert,
    is_running,
    now_ms,
    pop_file,
    setup_tables,
    tables_for,
    transport_info,
    transport_module,
    transports,
    update,
    update_file_info,
)

logger = logging.getLogger(__name__)

Meta = dict[str, Any]


def _rpc_timeout() -> float:
    return float(env.raft_config("raft_rpc_call_timeout")) / 1000.0


# -- sending -----------------------------------------------------------------------------------


def collect_files(root: str) -> list[tuple[int, str, str, int, int]]:
    """Every regular file under ``root``: ``(file_id, relative_name, path, mtime, size)``.

    Names use ``/``; IDs count from 1 in sorted walk order. Symlinks and special files are
    skipped (logged). Raises ``OSError`` if ``root`` or a directory under it cannot be read.
    """
    found: list[tuple[str, str, int, int]] = []
    pending: list[str] = [""]
    while pending:
        relative = pending.pop()
        directory = os.path.join(root, relative) if relative else root
        with os.scandir(directory) as entries:
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(name)
                elif stat.S_ISREG(st.st_mode):
                    found.append((name, entry.path, int(st.st_mtime), st.st_size))
                else:
                    logger.warning("transport skips %s: not a regular file", entry.path)
    found.sort()
    return [(i, name, path, mtime, size) for i, (name, path, mtime, size) in enumerate(found, 1)]


def _make_id(t: Tables) -> int:
    while True:
        candidate = (time.time_ns() // 1000) * 1000 + random.randrange(1000)
        if candidate not in t.transports:
            return candidate


def _start(
    peer: str, meta: Meta, root: str, notify: otp.ReplyTo | None, timeout: float | None
) -> Any:
    """Start a sending transport; ``("ok", id)`` or ``("error", reason)``."""
    t = tables_for()
    if t is None:
        return ("error", "not_started")
    table = meta.get("table")
    count(table, "transport.start")
    try:
        files = collect_files(root)
    except OSError as exc:
        logger.warning("transport of %s to %s cannot list its files: %s", root, peer, exc)
        count(table, "transport.start.error")
        return ("error", "failed")
    module = registered_module(meta.get("table"), meta.get("partition"))
    started = now_ms()
    with t.lock:
        transport_id = _make_id(t)
        insert(
            t,
            transport_id,
            {
                "type": "sender",
                "status": REQUESTED,
                "peer": peer,
                "module": module_name(module),
                "meta": dict(meta),
                "root": root,
                "start_ts": started,
                "total_files": len(files),
                "completed_files": 0,
            },
        )
        t.modules[transport_id] = module
        for file_id, name, path, mtime, size in files:
            t.files[(transport_id, file_id)] = {
                "status": REQUESTED,
                "name": name,
                "path": path,
                "mtime": mtime,
                "total_bytes": size,
                "completed_bytes": 0,
            }
    logger.info(
        "transport %s: sending %s (%d files) to %s: %r", transport_id, root, len(files), peer, meta
    )
    offer = [(file_id, name, size) for file_id, name, _, _, size in files]
    handshake = _rpc_timeout() if timeout is None else min(timeout, _rpc_timeout())
    try:
        answer = otp.call(
            (NAME, peer),
            (
                "transport",
                transport_id,
                otp.node.current().id,
                module_name(module),
                dict(meta),
                offer,
            ),
            handshake,
        )
    except otp.ExitError as exc:
        logger.warning(
            "transport %s: start handshake with %s failed: %r", transport_id, peer, exc.reason
        )
        count(table, "transport.start.error")
        error = ("start", exc.reason)
        with t.lock:
            update(t, transport_id, lambda i: finish(i, FAILED, error))
        return ("error", "failed")
    if answer != "ok":
        reason = answer[1] if isinstance(answer, tuple | list) and len(answer) == 2 else answer
        logger.warning("transport %s: %s rejected it: %r", transport_id, peer, reason)
        count(
            table,
            f"transport.rejected.{reason}" if isinstance(reason, str) else "transport.rejected",
        )
        with t.lock:
            update(t, transport_id, lambda i: finish(i, FAILED, ("rejected", reason)))
        return ("error", reason)
    return _run(t, transport_id, peer, table, len(files), notify)


def _run(
    t: Tables, transport_id: int, peer: str, table: Any, total: int, notify: otp.ReplyTo | None
) -> Any:
    with t.lock:
        if notify is not None:
            t.notify[transport_id] = notify
        if total == 0:
            update(t, transport_id, lambda i: finish(i, COMPLETED))
            return ("ok", transport_id)
        t.queues[transport_id] = deque(range(1, total + 1))
        update(t, transport_id, lambda i: {**i, "status": RUNNING})
    try:
        from waraft.transport import sup as transport_sup

        supervisor = transport_sup.get_or_start(peer)
        workers = [c[1] for c in otp.supervisor.which_children(supervisor)]
    except (otp.ExitError, otp.StartError, RuntimeError) as exc:
        logger.error("transport %s: cannot start workers for %s: %r", transport_id, peer, exc)
        error = ("workers", repr(exc))
        with t.lock:
            update(t, transport_id, lambda i: finish(i, FAILED, error))
        return ("error", "failed")
    for worker in workers:
        if isinstance(worker, otp.Pid):
            otp.cast(worker, ("notify", transport_id, table))
    return ("ok", transport_id)


def start_transfer(
    peer: str, table: str, partition: int, root: str, timeout: float | None = 10.0
) -> Any:
    """Send every file under ``root`` to ``peer``'s ``<transport_directory>/<ID>`` of the
    partition; returns ``("ok", id)`` once the peer accepted, or ``("error", reason)``."""
    meta = {"type": "transfer", "table": table, "partition": partition}
    return _start(peer, meta, root, None, timeout)


def transfer(peer: str, table: str, partition: int, root: str, timeout: float | None) -> Any:
    """``start_transfer`` and wait until it ended: ``("ok", id)`` whatever the final status
    (read it with ``transport_info``), as WARaft's. ``ExitError("timeout")`` after ``timeout``."""
    waiter = otp.LocalReplyTo()
    meta = {"type": "transfer", "table": table, "partition": partition}
    started = _start(peer, meta, root, waiter, timeout)
    if started[0] != "ok":
        return started
    return waiter.wait(timeout)


def _snapshot_meta(table: str, partition: int, position: LogPos, witness: bool) -> Meta:
    return {
        "type": "snapshot",
        "table": table,
        "partition": partition,
        "position": tuple(position),
        "witness": bool(witness),
    }


def start_snapshot_transfer(
    peer: str,
    table: str,
    partition: int,
    position: LogPos,
    root: str,
    witness: bool,
    timeout: float | None = 10.0,
) -> Any:
    """Send the snapshot directory ``root`` (at ``position``) to ``peer``; once received, its
    manager installs it through ``snapshot_available``. ``("ok", id)`` | ``("error", r)``."""
    meta = _snapshot_meta(table, partition, position, witness)
    return _start(peer, meta, root, None, timeout)


def transfer_snapshot(
    peer: str,
    table: str,
    partition: int,
    position: LogPos,
    root: str,
    witness: bool,
    timeout: float | None,
) -> Any:
    """``start_snapshot_transfer`` and wait until it ended (see ``transfer``)."""
    waiter = otp.LocalReplyTo()
    meta = _snapshot_meta(table, partition, position, witness)
    started = _start(peer, meta, root, waiter, timeout)
    if started[0] != "ok":
        return started
    return waiter.wait(timeout)


def may_accept(peer: str, witness: bool, timeout: float | None = 1.0) -> Any:
    """Advisory: could ``peer`` take one more incoming snapshot now? ``"ok"``,
    ``("error", "receiver_overloaded")``, or ``("error", "unsupported")`` when it cannot say."""
    try:
        answer = otp.call((NAME, peer), ("may_accept", bool(witness)), timeout)
    except otp.ExitError:
        return ("error", "unsupported")
    if answer == "ok":
        return "ok"
    if isinstance(answer, tuple | list) and tuple(answer) == ("error", "receiver_overloaded"):
        return ("error", "receiver_overloaded")
    return ("error", "unsupported")


def cancel(transport_id: int, reason: Any = "cancelled") -> Any:
    """Stop a running transport: ``"ok"`` (also when it already ended) or
    ``("error", "not_found")``."""
    t = tables_for()
    if t is None:
        return ("error", "not_found")
    logger.info("transport %s: cancelled: %r", transport_id, reason)
    with t.lock:
        found = update(
            t,
            transport_id,
            lambda i: finish(i, CANCELLED, ("cancelled", reason)) if i["status"] == RUNNING else i,
        )
    return "ok" if found is not None else ("error", "not_found")


def complete(transport_id: int, file_id: int, status: Any) -> None:
    """A file finished (``"ok"``) or failed (anything else): tell this node's manager."""
    otp.cast(NAME, ("complete", transport_id, file_id, status))


def transfer_end_time(name: str, running: Any = None) -> Any:
    """For the cleanup actor: when the transport whose ID is the directory ``name`` ended
    (wall-clock seconds), ``running`` while it is active, None when unknown."""
    try:
        transport_id = int(name)
    except ValueError:
        return None
    info = transport_info(transport_id)
    if info is None:
        return None
    if info["status"] in ACTIVE:
        return running
    return float(info.get("end_ts", info["start_ts"])) / 1000.0


def scan(manager: otp.Target = NAME) -> Any:
    """Run the manager's idle scan now (tests, tools); returns the IDs that timed out."""
    return otp.call(manager, ("scan",))


__all__ = [
    "ACTIVE",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "NAME",
    "REQUESTED",
    "RUNNING",
    "TIMED_OUT",
    "TransportManager",
    "add_file_bytes",
    "cancel",
    "child_spec",
    "collect_files",
    "complete",
    "default_directory",
    "file_info",
    "is_running",
    "may_accept",
    "module_name",
    "pop_file",
    "registered_directory",
    "registered_module",
    "resolve_transport_files",
    "safe_relative_path",
    "scan",
    "setup_tables",
    "start_link",
    "start_snapshot_transfer",
    "start_transfer",
    "transfer",
    "transfer_end_time",
    "transfer_snapshot",
    "transport_info",
    "transport_module",
    "transports",
    "update_file_info",
]
