"""The transport manager actor, receiving side (WARaft's ``wa_raft_transport`` gen_server).

Registered ``wa_raft_transport`` on every node (under ``waraft.app``). It answers the start
handshake of a peer that wants to send a transport here, with WARaft's admission rules, after
two of ours, on the offering (authenticated) node: a snapshot is refused with ``not_leader``
unless it comes from the leader the partition's server knows, since a snapshot replaces its
data and membership; a ``transfer`` is refused with ``not_member`` unless it comes from a
participant of the partition's current config as its server knows it (the server is asked,
``MEMBERSHIP_TIMEOUT_S``), since it takes the partition's disk and slots.

1. capacity: fewer than ``raft_max_incoming_snapshot_transfers`` (5) running incoming
   transports, or ``raft_max_incoming_witness_snapshot_transfers`` (10) for witness snapshots,
   and fewer than ``raft_max_incoming_transports_per_peer`` (2) of those from the offering
   node, else ``receiver_overloaded``; then the partition provider's optional
   ``transport_accept(meta, incoming_bytes)`` hook (the default provider refuses with
   ``receiver_disk_full`` when the files cannot fit above its disk reserve);
2. an ID this node already knows is a ``duplicate``;
3. every offered path must be relative and stay inside ``<transport_directory>/<ID>``, also
   through any symlink already there; one bad path rejects the whole transport with
   ``invalid_file_path`` before any record or directory exists.

An offer of more than ``MAX_OFFER_FILES`` files, a name longer than ``MAX_OFFER_NAME_BYTES``
or names longer than ``MAX_OFFER_NAMES_BYTES`` together is malformed (``invalid_transport``).
Once an incoming transport ends, its files' records are dropped (their totals stay).

It records file completions (``complete`` casts from this node's own workers on the sending
side and receiving provider, never from the wire; only a file's first outcome counts), and
once every file of an incoming snapshot has arrived it calls
``waraft.server.snapshot_available`` on the partition's server (a failure marks the transport
failed with ``("notify_failed", reason)``). Unlike WARaft's, the call has no deadline and does
not hold the manager: its answer comes as a message when storage has loaded the snapshot. It
also answers the advisory ``may_accept`` precheck and runs the idle scan.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Final

from waraft import otp
from waraft.core import config as core_config
from waraft.core.types import LogPos
from waraft.distribution import policy
from waraft.services import env, info, metrics
from waraft.services import options as partition_options
from waraft.transport.tables import (
    ACTIVE,
    COMPLETED,
    FAILED,
    REQUESTED,
    RUNNING,
    TIMED_OUT,
    Info,
    Tables,
    count,
    delete,
    finish,
    insert,
    mono_ms,
    now_ms,
    setup_tables,
    tables_for,
    transport_info,
    transport_module,
    update,
    update_file_info,
)

logger = logging.getLogger(__name__)

NAME: Final = "wa_raft_transport"
SCAN_INTERVAL_KEY: Final = "raft_transport_scan_interval_ms"  # ours: WARaft hard-codes 30 s
DEFAULT_SCAN_INTERVAL_MS: Final = 30_000

PARTITION_SUBDIRECTORY: Final = "transport"
DEFAULT_MODULE: Final = "waraft.transport.dist_transport"
MAX_OFFER_FILES: Final = 10_000
"""Files one incoming transport may hold; an offer of more is ``invalid_transport``. Every
offered path is resolved and recorded on the manager's scheduler (about 60 us a file), so one
member's 16 MB offer of a million and a half files held it, and every partition on it, for
minutes. A snapshot is a few files."""
MAX_OFFER_NAME_BYTES: Final = 4096
"""The longest file name (UTF-8 bytes) an offer may hold, as PATH_MAX."""
MAX_OFFER_NAMES_BYTES: Final = 1 << 20
"""The bytes all the file names of one offer may take together. Each name is kept, with its
resolved path, while the transport runs: 10,000 names of 1,250 characters, in an offer well
under the frame limit, held 25 MB per transport. A snapshot's few names take a few hundred."""
PER_PEER_KEY: Final = "raft_max_incoming_transports_per_peer"  # ours: WARaft has no such cap
DEFAULT_PER_PEER: Final[int] = env.GLOBAL_DEFAULTS[PER_PEER_KEY]
"""Running incoming transports one node may hold in each pool (the snapshot one, shared with
transfers, and the witness one), so one node cannot take every slot: one member's offers that
it never sent blocked every catch-up of the node until they timed out. Two, not one: a leader
sends a receiver one snapshot per partition it must catch up there (at most
``raft_max_snapshot_catchup``, 5), and its others are answered ``receiver_overloaded`` and
retried after ``raft_snapshot_catchup_overloaded_backoff_ms``."""
MEMBERSHIP_TIMEOUT_S: Final = 2.0
"""How long admission waits for the partition's server to name its config: well within the
sender's handshake (``raft_rpc_call_timeout``, 10 s). An unanswered lookup refuses."""
ENDED_FILE: Final = frozenset({COMPLETED, FAILED})
"""File statuses after which a file's outcome is settled (its first report stands)."""

Meta = dict[str, Any]
FileSpec = tuple[int, str, int]  # (file id, relative name, size) as offered by the sender


# -- configuration -----------------------------------------------------------------------------


def default_directory(database: str) -> str:
    """``<database>/transport``: where a partition receives transports."""
    return os.path.join(database, PARTITION_SUBDIRECTORY)


def registered_directory(table: str, partition: int) -> str | None:
    """The receiving directory of a partition registered on this node, or None."""
    options = partition_options.options(table, partition)
    return None if options is None else str(options.transport_directory)


def registered_module(table: Any, partition: Any) -> Any:
    """The partition's transport provider (``waraft.dist_transport`` when none is set)."""
    module = None
    if isinstance(table, str) and isinstance(partition, int):
        options = partition_options.options(table, partition)
        module = None if options is None else options.transport_module
    # ``waraft.transport`` itself is not a provider (WARaft's kvstore example sets it by mistake).
    if module is None or getattr(module, "__name__", None) == "waraft.transport":
        module = partition_options.resolve_module(DEFAULT_MODULE)
    return module


def module_name(module: Any) -> str:
    """How a provider is named in records and on the wire."""
    if isinstance(module, type):
        return f"{module.__module__}:{module.__qualname__}"
    return str(getattr(module, "__name__", module))


# -- path safety -------------------------------------------------------------------------------


def safe_relative_path(name: Any, root: str) -> str | None:
    """``root`` joined with ``name`` if ``name`` is a relative path that stays inside ``root``
    (after ``..`` and after any symlink already under ``root``), else None."""
    if not isinstance(name, str) or not name or "\x00" in name or os.path.isabs(name):
        return None
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        return None
    path = os.path.join(root, *parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        return None  # a symlink under root points outside it (or at root itself)
    return path


def resolve_transport_files(
    root: str, files: list[FileSpec]
) -> list[tuple[int, str, str, int]] | None:
    """Every offered file resolved under ``root`` as ``(file_id, name, path, size)``, or None
    if any one is unsafe (so that the whole transport is rejected, nothing written)."""
    resolved = []
    seen: set[str] = set()
    for file_id, name, size in files:
        path = safe_relative_path(name, root)
        if path is None or path in seen:
            return None
        seen.add(path)
        resolved.append((file_id, name, path, size))
    return resolved


def _valid_offer(transport_id: Any, meta: Any, files: Any) -> list[FileSpec] | None:
    if not isinstance(transport_id, int) or transport_id <= 0 or not isinstance(meta, dict):
        return None
    if meta.get("type") not in ("transfer", "snapshot"):
        return None
    if not isinstance(meta.get("table"), str) or not isinstance(meta.get("partition"), int):
        return None
    if meta["type"] == "snapshot":
        position = meta.get("position")
        if not isinstance(position, tuple | list) or len(position) != 2:
            return None
        if not all(isinstance(v, int) and v >= 0 for v in position):
            return None
    if not isinstance(files, list | tuple) or len(files) > MAX_OFFER_FILES:
        return None
    offer: list[FileSpec] = []
    name_bytes = 0
    for item in files:
        if not isinstance(item, tuple | list) or len(item) != 3:
            return None
        file_id, name, size = item
        if not isinstance(file_id, int) or not isinstance(size, int) or size < 0:
            return None
        length = len(name.encode("utf-8", "surrogatepass")) if isinstance(name, str) else 0
        name_bytes += length
        if length > MAX_OFFER_NAME_BYTES or name_bytes > MAX_OFFER_NAMES_BYTES:
            return None
        offer.append((file_id, name, size))
    if sorted(f[0] for f in offer) != list(range(1, len(offer) + 1)):
        return None
    return offer


# -- the manager actor -------------------------------------------------------------------------


class TransportManager(otp.Process):
    """This node's transport manager: admits incoming transports, records file completions,
    installs received snapshots and times out idle transports."""

    trap_exit = True

    def init(self) -> None:
        if tables_for() is None:
            setup_tables()
        # Members offer transports (for themselves only); the module a transport is handled
        # with is always the partition's own, never the offer's. File completions come only
        # from this node's own receiver (never from the wire).
        policy.allow(
            NAME,
            calls={
                "transport": policy.Rule(policy.MEMBER, guard=policy.same_node(2)),
                "may_accept": policy.MEMBER,
            },
        )
        self._timer = self._schedule_scan()
        # Received snapshots whose server is installing them (see ``_received``).
        self._installing: dict[int, str] = {}  # transport ID -> server name

    def terminate(self, reason: Any) -> None:
        otp.cancel_timer(self._timer)

    def _schedule_scan(self) -> otp.TimerRef:
        interval = env.raft_config(SCAN_INTERVAL_KEY, DEFAULT_SCAN_INTERVAL_MS)
        return otp.send_after(float(interval), self.pid, "scan")

    @property
    def tables(self) -> Tables:
        t = tables_for()
        if t is None:  # the app supervisor restarted and rebuilt them under us
            setup_tables()
            t = tables_for()
        assert t is not None
        return t

    # -- messages --------------------------------------------------------------------------

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        kind = request[0] if isinstance(request, tuple | list) and request else request
        if kind == "transport" and len(request) == 6:
            return self._receive(*request[1:])
        if kind == "may_accept" and len(request) == 2:
            # A remote caller is named by its connection; it is asked about its own share too.
            return self._check_capacity(bool(request[1]), getattr(from_, "node", None))
        if kind == "scan":
            return self._scan()
        logger.warning("transport manager got an unknown call %r", request)
        return ("error", "unsupported")

    def handle_cast(self, msg: Any) -> None:
        if isinstance(msg, tuple) and len(msg) == 4 and msg[0] == "complete":
            self._complete(msg[1], msg[2], msg[3])
        elif type(msg) is _Notified:  # never from the wire: no codec builds one
            self._notified(msg)
        else:
            logger.warning("transport manager got an unknown cast %r", msg)

    def handle_info(self, msg: Any) -> None:
        if msg == "scan":
            self._scan()
            self._timer = self._schedule_scan()
        elif not (isinstance(msg, tuple) and msg and msg[0] == "EXIT"):
            logger.debug("transport manager dropped %r", msg)

    # -- admission -------------------------------------------------------------------------

    def _check_capacity(self, witness: bool, peer: str | None = None) -> Any:
        """``"ok"``, or ``receiver_overloaded`` when the pool an offer would take a slot of
        (witness snapshots have their own) is full, or ``peer`` (None: not counted) already
        holds ``raft_max_incoming_transports_per_peer`` of its slots."""
        t = self.tables
        with t.lock:
            if witness:
                limit = env.raft_config("raft_max_incoming_witness_snapshot_transfers")
                active = t.active_witness_receives
            else:
                limit = env.raft_config("raft_max_incoming_snapshot_transfers")
                active = t.active_receives
            held = 0 if peer is None else _running_from(t, peer, witness)
        if active >= int(limit):
            return ("error", "receiver_overloaded")
        per_peer = int(env.raft_config(PER_PEER_KEY, DEFAULT_PER_PEER))
        if held >= per_peer:
            logger.warning(
                "%s already sends %d transports here (%s %d): receiver_overloaded",
                peer, held, PER_PEER_KEY, per_peer,
            )  # fmt: skip
            return ("error", "receiver_overloaded")
        return "ok"

    def _receive(self, transport_id: Any, peer: Any, module: Any, meta: Any, files: Any) -> Any:
        offer = _valid_offer(transport_id, meta, files)
        if offer is None:
            logger.warning(
                "transport manager rejects a malformed offer %r from %r", transport_id, peer
            )
            return ("error", "invalid_transport")
        meta = dict(meta)
        table, partition = meta["table"], meta["partition"]
        if meta["type"] == "snapshot":
            meta["position"] = LogPos(*meta["position"])
            meta["witness"] = bool(meta.get("witness", False))
        else:
            # Only a snapshot goes to the witness pool: a transfer claiming it would take a
            # slot of each pool from one member (reviewed, R1).
            meta.pop("witness", None)
        refusal = _sender_refusal(transport_id, str(peer), meta)
        if refusal is not None:
            return refusal
        t = self.tables
        admission = self._check_capacity(bool(meta.get("witness", False)), str(peer))
        provider = registered_module(table, partition)
        if admission == "ok":
            admission = _accept_hook(provider, meta, sum(size for _, _, size in offer))
        with t.lock:
            duplicate = transport_id in t.transports
        if duplicate:
            logger.warning("transport %s offered again by %s", transport_id, peer)
            return ("error", "duplicate")
        if admission != "ok":
            count(table, "transport.receive.rejected")
            logger.warning("transport %s from %s refused: %r", transport_id, peer, admission)
            return admission
        directory = registered_directory(table, partition)
        if directory is None:
            return ("error", "unknown_partition")
        root = os.path.join(directory, str(transport_id))
        resolved = resolve_transport_files(root, offer)
        if resolved is None:
            count(table, "transport.receive.rejected")
            logger.warning("transport %s from %s refused: invalid file path", transport_id, peer)
            return ("error", "invalid_file_path")
        return self._admit(t, transport_id, str(peer), str(module), meta, root, resolved, provider)

    def _admit(
        self,
        t: Tables,
        transport_id: int,
        peer: str,
        module: str,
        meta: Meta,
        root: str,
        resolved: list[tuple[int, str, str, int]],
        provider: Any,
    ) -> Any:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            logger.error("transport %s: cannot create %s: %s", transport_id, root, exc)
            return ("error", "failed")
        count(meta["table"], "transport.receive")
        if meta["type"] == "snapshot":  # per partition, for the metrics endpoint
            metrics.count_partition(meta["table"], meta["partition"], "snapshot_catchup.receive")
        logger.info(
            "transport %s: receiving %d files from %s into %s",
            transport_id,
            len(resolved),
            peer,
            root,
        )
        with t.lock:
            insert(
                t,
                transport_id,
                {
                    "type": "receiver",
                    "status": RUNNING,
                    "peer": peer,
                    "module": module,
                    "meta": meta,
                    "root": root,
                    "start_ts": now_ms(),
                    "total_files": len(resolved),
                    "completed_files": 0,
                },
            )
            t.modules[transport_id] = provider
            for file_id, name, path, size in resolved:
                t.files[(transport_id, file_id)] = {
                    "status": REQUESTED,
                    "name": name,
                    "path": path,
                    "total_bytes": size,
                    "completed_bytes": 0,
                }
        if not resolved:
            self._received(transport_id)
        return "ok"

    # -- completion ------------------------------------------------------------------------

    def _complete(self, transport_id: int, file_id: int, status: Any) -> None:
        """Record a file's outcome and, when it was the last file, the transport's.

        Only a file's first outcome counts: a second report of the same file (a peer that
        completes it twice, a worker that resent it after a crash) changes nothing, so that a
        transport completes only when every one of its files has arrived."""
        t = self.tables
        ok = status == "ok"
        with t.lock:
            info = t.transports.get(transport_id)
            file = t.files.get((transport_id, file_id))
            if info is None or file is None:
                logger.warning("transport %s: completion of unknown file %s", transport_id, file_id)
                return
            if file["status"] in ENDED_FILE:
                logger.warning(
                    "transport %s: file %s reported again (%r), it already ended %s",
                    transport_id, file_id, status, file["status"],
                )  # fmt: skip
                return
            update_file_info(transport_id, file_id, lambda i: _file_ended(i, status))
            count(
                info["meta"].get("table"), "transport.file.done" if ok else "transport.file.error"
            )
            if not self._count_file(t, transport_id, info, file_id, status):
                return
        self._received(transport_id)

    @staticmethod
    def _count_file(t: Tables, transport_id: int, info: Info, file_id: int, status: Any) -> bool:
        """Count a file's first outcome into its running transport (caller holds ``t.lock``);
        True when it was the last file of an incoming transport, which is then to be
        handed over (``_received``)."""
        if info["status"] != RUNNING:
            return False  # cancelled, failed or timed out meanwhile: the outcome stands
        done = info["completed_files"] + 1
        if status != "ok":
            logger.warning("transport %s: file %s failed: %r", transport_id, file_id, status)
            error = ("file", file_id, status)
            update(t, transport_id, lambda i: finish({**i, "completed_files": done}, FAILED, error))
            return False
        update(t, transport_id, lambda i: {**i, "completed_files": done})
        if done < info["total_files"]:
            return False
        if info["type"] == "sender":
            update(t, transport_id, lambda i: finish(i, COMPLETED))
            return False
        return True

    def _received(self, transport_id: int) -> None:
        """Every file of an incoming transport is here: notify, then record the outcome.

        The status stays ``running`` while the server installs the snapshot, as in WARaft
        (where the notification runs inside the record update), so the admission counters
        keep counting it and the idle scan leaves it alone (``_installing``). The server's
        answer comes as a message (``_notified``), with no deadline: the install takes as
        long as the partition is large (a 60 s call gave up on partitions of a few million
        rows and marked the transport failed while the install went on), and this manager,
        shared by every partition of the node, keeps serving meanwhile. The server answers
        or dies, and a dead server's deferred calls fail."""
        info = transport_info(transport_id)
        if info is None:
            return
        provider = transport_module(transport_id)
        hook = getattr(provider, "transport_complete", None)
        if hook is not None:
            try:
                hook(transport_id)
            except Exception:
                logger.exception(
                    "transport %s: the provider's completion hook failed", transport_id
                )
        target, outcome = _install_target(transport_id, info)
        if target is None:  # nothing to install, or nobody to install it
            self._record_outcome(transport_id, outcome)
            return
        meta = info["meta"]
        # The sender goes along: the server installs only its current leader's snapshot.
        request = ("snapshot_available", info["root"], meta["position"], info["peer"])
        self._installing[transport_id] = target
        reply = otp.CastReply(self.pid, lambda ok, value: _Notified(transport_id, ok, value))
        otp.send_request(target, request, reply)

    def _notified(self, msg: _Notified) -> None:
        """The server answered (or failed) the ``snapshot_available`` of ``_received``."""
        name = self._installing.pop(msg.transport_id, None)
        if name is None:
            return
        answer = msg.value if msg.ok else ("error", msg.value)
        self._record_outcome(msg.transport_id, _install_outcome(msg.transport_id, name, answer))

    def _record_outcome(self, transport_id: int, result: Any) -> None:
        t = self.tables
        with t.lock:
            if result == "ok":
                update(
                    t,
                    transport_id,
                    lambda i: finish(i, COMPLETED) if i["status"] == RUNNING else i,
                )
            else:
                update(
                    t,
                    transport_id,
                    lambda i: (
                        finish(i, FAILED, ("notify_failed", result[1]))
                        if i["status"] == RUNNING
                        else i
                    ),
                )

    # -- scan ------------------------------------------------------------------------------

    def _scan(self) -> list[int]:
        """Time out idle transports and forget the oldest finished ones; returns the IDs that
        timed out."""
        t = self.tables
        idle_ms = float(env.raft_config("transport_idle_timeout_secs")) * 1000.0
        limit = int(env.raft_config("raft_transport_inactive_info_limit"))
        now = mono_ms()
        timed_out = []
        with t.lock:
            for transport_id, info in list(t.transports.items()):
                if transport_id in self._installing:
                    continue  # idle while its server installs it, for as long as that takes
                if info["status"] == RUNNING and now - t.touched.get(transport_id, now) >= idle_ms:
                    timed_out.append(transport_id)
                    update(t, transport_id, lambda i: finish(i, TIMED_OUT))
            inactive = sorted(i for i, info in t.transports.items() if info["status"] not in ACTIVE)
            for transport_id in inactive[: max(0, len(inactive) - limit)]:
                delete(t, transport_id)
        for transport_id in timed_out:
            logger.warning("transport %s timed out (idle)", transport_id)
        return timed_out


def _file_ended(info: Info, status: Any) -> Info:
    """A file's record once its outcome ``status`` (``"ok"`` or a failure) is known."""
    info["end_ts"] = now_ms()
    if status == "ok":
        info["status"] = COMPLETED
    else:
        info["status"] = FAILED
        info["error"] = status
    return info


def _accept_hook(provider: Any, meta: Meta, incoming_bytes: int) -> Any:
    hook = getattr(provider, "transport_accept", None)
    if hook is None:
        return "ok"
    try:
        answer = hook(meta, incoming_bytes)
    except Exception as exc:
        logger.exception("the transport provider's accept hook failed")
        return ("error", ("accept_failed", repr(exc)))
    if answer == "ok":
        return "ok"
    if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "error":
        return answer
    return ("error", answer)


@dataclass(frozen=True, slots=True)
class _Notified:
    """The server's answer to a received snapshot's ``snapshot_available`` (``ok`` False:
    the call failed, ``value`` is the exit reason)."""

    transport_id: int
    ok: bool
    value: Any


def _install_target(transport_id: int, info: Info) -> tuple[str | None, Any]:
    """``(server, None)``: the server to notify of a received snapshot; or ``(None,
    outcome)`` when there is none to notify: ``"ok"`` for a transfer (nothing to install),
    ``("error", "not_registered")`` when the partition is not on this node."""
    meta = info["meta"]
    if meta.get("type") != "snapshot":
        logger.info("transport %s finished: %s (nothing to install)", transport_id, info["root"])
        return None, "ok"
    options = partition_options.options(meta["table"], meta["partition"])
    if options is None:
        logger.warning(
            "transport %s: partition %s/%s is not on this node",
            transport_id,
            meta["table"],
            meta["partition"],
        )
        return None, ("error", "not_registered")
    name: str = options.server_name
    return name, None


def _install_outcome(transport_id: int, name: str, answer: Any) -> Any:
    """``"ok"`` or ``("error", reason)`` from the server's answer, logged."""
    info = transport_info(transport_id)
    position = None if info is None else info["meta"].get("position")
    if answer == "ok":
        logger.info("transport %s: %s installed the snapshot at %s", transport_id, name, position)
        return "ok"
    logger.warning(
        "transport %s: %s did not install the snapshot at %s: %r",
        transport_id, name, position, answer,
    )  # fmt: skip
    if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "error":
        return answer
    return ("error", answer)


def _offered_by_leader(table: str, partition: int, peer: str) -> bool:
    """Whether ``peer`` (the authenticated sender) leads the partition as its server sees it.

    The cheap first gate, before any byte is written: a snapshot replaces a replica's data and
    membership, so only the leader of the replica's current term may push one. The server
    checks again when the snapshot is complete (leadership may have moved meanwhile).
    """
    known = info.get_current_term_info(table, partition)
    return known is not None and known.leader == peer


def _sender_refusal(transport_id: int, peer: str, meta: Meta) -> Any:
    """None when ``peer`` may offer this transport, else the refusal (counted and logged): a
    snapshot only from the partition's leader (``not_leader``), a transfer only from a
    participant of its config (``not_member``). A transfer to a partition that is not here
    passes: it is refused ``unknown_partition`` further on."""
    table, partition = meta["table"], meta["partition"]
    if meta["type"] == "snapshot":
        if _offered_by_leader(table, partition, peer):
            return None
        refusal, why = ("error", "not_leader"), "a snapshot of %s/%s but is not its leader"
    else:
        if _offered_by_member(table, partition, peer) is not False:
            return None
        refusal, why = ("error", "not_member"), "a transfer to %s/%s but is not in its config"
        count(table, "transport.receive.not_member")
    count(table, "transport.receive.rejected")
    logger.warning("transport %s: %s offers " + why, transport_id, peer, table, partition)
    return refusal


def _offered_by_member(table: str, partition: int, peer: str) -> bool | None:
    """Whether ``peer`` (the authenticated sender) participates in the partition's current
    config as its server knows it (the newest config entry in its log, or its storage's);
    None when the partition is not on this node.

    A transfer lands in the partition's transport directory and holds one of the node's
    incoming slots and part of its disk until it ends or idles out: only the nodes the
    partition replicates with may offer one. A replica that knows no config yet takes
    transfers from nobody (it must take Raft RPCs from a leader it does not know yet, but
    joining needs no transfer: a snapshot comes from its leader). A server that does not
    answer within ``MEMBERSHIP_TIMEOUT_S`` refuses too (the sender may retry).
    """
    options = partition_options.options(table, partition)
    if options is None:
        return None
    try:
        config = otp.call(options.server_name, ("current_config",), MEMBERSHIP_TIMEOUT_S)
        return any(member.node == peer for member in core_config.participants(config))
    except (otp.ExitError, ValueError, AttributeError) as exc:
        logger.warning("%s/%s: cannot read the config of its server: %r", table, partition, exc)
        return False


def _running_from(t: Tables, peer: str, witness: bool) -> int:
    """How many running incoming transports of the pool ``witness`` names ``peer`` sent
    (caller holds ``t.lock``): a handful of running records among at most
    ``raft_transport_inactive_info_limit`` finished ones."""
    return sum(
        1
        for info in t.transports.values()
        if info["type"] == "receiver"
        and info["status"] == RUNNING
        and info["peer"] == peer
        and bool(info["meta"].get("witness")) == witness
    )


def start_link() -> otp.Pid:
    """Start this node's manager, registered ``wa_raft_transport``."""
    pid: otp.Pid = TransportManager.start_link(name=NAME)
    return pid


def child_spec() -> dict[str, Any]:
    """WARaft's child spec: permanent, 5 s shutdown."""
    return {
        "id": "wa_raft_transport",
        "start": (start_link, ()),
        "restart": "permanent",
        "shutdown": 5000,
    }
