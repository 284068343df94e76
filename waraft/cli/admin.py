"""The node admin process ``waraft_admin`` that ``waraft node`` registers.

It answers calls from tools and clients on other nodes (``otp.call(("waraft_admin", node),
request)``) so that one round trip tells them about the whole node:

======================================  ====================================================
request                                 answer
======================================  ====================================================
``("ping",)``                           ``{"node", "pid", "app", "partitions", "uptime_s",
                                        "version", "fault_injection", "cluster"}``
``("partitions",)``                     ``[(table, partition), ...]`` running here
``("leaders", table)``                  ``{partition: leader node id}`` (from ``waraft.info``,
                                        no call to any server)
``("status_all",)``                     one status row per partition (see :func:`status_row`;
                                        to a client key, at most ``STATUS_CACHE_INTERVAL`` old)
``("bootstrap", table, partition,       ``waraft.server.bootstrap`` of the local replica
(index, term), config)``                (the position is rebuilt as a ``LogPos`` here)
``("bootstrap_many", table, [p, ...],   the same for many partitions, each with every node
(index, term), [node, ...], [p, ...])`` of the list as a member, then an election on the
                                        partitions of the last list; one result each
``("cluster", id)``                     make this node a node of cluster ``id`` (recorded in
                                        its data dir): ``("ok", id)``, or ``("error",
                                        "other_cluster", its id)``; ``("cluster", None)``
                                        answers ``("ok", its id or None)``
``("reload_keys",)``                    re-read the node's ``cluster.json``
                                        (``distribution.reload_keys``): ``("ok", {"added":
                                        [...], "replaced": [...]})`` or ``("error", "keys",
                                        why)``, the keys in use unchanged
``("dist_stats",)`` / ``("dist_peers",)``  ``distribution.stats()`` / ``distribution.peers()``
``("heartbeat_stats",)``                coalesced heartbeat frames sent per peer node and
                                        received (``waraft.partition.heartbeats.stats()``)
``("set_fault", nodes, inbound, outbound)``  ``distribution.set_fault(...)`` → ``"ok"``
``("clear_fault",)``                    ``distribution.clear_fault()`` → ``"ok"``
======================================  ====================================================

Who may ask (``waraft.distribution.policy``, with keys): ``ping``, ``partitions``, ``leaders``
and ``status_all`` need the client right; the bootstrap, cluster, key reload, fault-injection,
distribution and heartbeat requests the admin right. All are rate limited per sender and per node.

``status_all`` asks every local server for its status (11-40 us a partition on the
schedulers), and the admin rate limit alone let any client key make a node run 200 collections
a second: at 1000 partitions, more CPU than the node has. A caller with only the client right
is therefore answered from the last collection when it began less than
``STATUS_CACHE_INTERVAL`` ago. Callers with the admin or member right, local callers
(``/metrics``, which collects at most once a second itself) and senders without keys get a new
collection each time, which the client callers after them share. However many client keys
ask, their calls cost at most one collection per interval; what they are told is at most that
old.

The fault-injection requests exist for tests and drills and are refused with
``("error", "fault_injection_disabled")`` unless the node was started with
``--allow-fault-injection``. Unknown requests get ``("error", "unknown_request")``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from waraft import __version__, otp
from waraft.cli import datadir
from waraft.core.types import Identity, LogPos
from waraft.distribution import nodeid, policy
from waraft.distribution.reply import RemoteReplyTo
from waraft.partition import part_sup, server
from waraft.services import info
from waraft.services.recent import Recent

logger = logging.getLogger(__name__)

NAME: Final = "waraft_admin"
STATUS_TIMEOUT: Final = 2.0
BOOTSTRAP_IN_FLIGHT: Final = 16
STATUS_CACHE_INTERVAL: Final = 1.0
"""Seconds a ``status_all`` collection is served to callers with only the client right: the
bound of the ``/metrics`` page (``MIN_COLLECT_INTERVAL``), and shorter than the default 2 s
between two redraws of ``waraft status --watch``."""


def status_row(status: dict[str, Any]) -> dict[str, Any]:
    """The fields of a server status that status tables show (plain msgpack-able values).

    ``live``, ``lagging`` and ``stale`` are the server's flags when it answered (its status
    computes them then), not the ones it last published in ``waraft.info``, which are as of
    the last event it handled (the flags also change with time alone). A status without them
    (a server of an older version) gives a row without them (shown as ``?``)."""
    config = status.get("config") or {}
    members = [str(member[1]) for member in config.get("membership", ())]
    row = {
        "node": status.get("id"),
        "table": status.get("table"),
        "partition": status.get("partition"),
        "state": status.get("state"),
        "term": status.get("current_term"),
        "voted_for": _node_of(status.get("voted_for")),
        "leader": status.get("leader_id"),
        "commit": status.get("commit_index"),
        "applied": status.get("last_applied"),
        "log_first": status.get("log_first"),
        "log_last": status.get("log_last"),
        # Admitted commits not applied yet, and strong reads waiting (admission counters).
        "pending_commits": status.get("commit_queue_high", status.get("pending_high")),
        "pending_reads": status.get("read_queue", 0),
        "apply_queue": status.get("inflight_applies"),
        "queued": status.get("queued"),
        "config_index": status.get("config_index"),
        "members": members,
        "witness": bool(status.get("witness")),
        # Idle and silent (issue 13): no heartbeats, no election timer until woken.
        "quiescent": bool(status.get("quiescent")),
        "disable_reason": _plain(status.get("disable_reason")),
        # Damaged storage emptied and waiting for a snapshot (issue 14).
        "storage_quarantine": status.get("storage_quarantine"),
        # Group commits of a durable log (None for the in-memory one).
        "log_fsyncs": (status.get("log_status") or {}).get("fsyncs"),
        # Group commits of the node's WAL (None for other logs): one counter per node that
        # every partition on it reports, so a sum over partitions would count it P times.
        "wal_fsyncs": (status.get("log_status") or {}).get("wal_fsyncs"),
        "log_bytes": (status.get("log_status") or {}).get("bytes"),
        # Totals since the partition started, for rate() on the metrics endpoint.
        "commits_total": status.get("commits_applied"),
        "reads_total": status.get("reads_admitted"),
        "elections_total": status.get("elections_started"),
        # A leader's participants that stopped answering it (disabled, down, cut off), and
        # how many, for a gauge: a partition running on fewer replicas than its config.
        "unresponsive": [str(node) for node in status.get("unresponsive") or ()],
        "unresponsive_peers": len(status.get("unresponsive") or ()),
    }
    for flag in ("live", "lagging", "stale"):
        if flag in status:
            row[flag] = bool(status[flag])
    return row


def _node_of(identity: Any) -> Any:
    if isinstance(identity, (tuple, list)) and len(identity) == 2:
        return identity[1]
    return identity


RESTARTING: Final = "restarting"
"""A status row's ``error`` for a partition its node runs but is restarting (the server's
status failed ``server.RESTARTING``): shown as its state, worth asking again shortly."""


def status_error(reason: Any) -> Any:
    """A status row's ``error`` for a server whose status call failed with ``reason``:
    ``RESTARTING`` for a partition the node is bringing back, else the reason as plain
    data (``noproc``: a partition stopped here)."""
    return RESTARTING if reason == server.RESTARTING else _plain(reason)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


class StatusCache(Recent[list[dict[str, Any]]]):
    """The last ``status_all`` collection, for one admin process (one request at a time), at
    most ``STATUS_CACHE_INTERVAL`` old unless asked ``fresh`` (see ``Recent``)."""

    def __init__(
        self,
        collect: Callable[[], list[dict[str, Any]]],
        interval: float = STATUS_CACHE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(collect, interval, clock)


def wants_fresh_status(from_: object) -> bool:
    """Whether the caller behind ``from_`` gets a new ``status_all`` collection: anyone but a
    remote caller with neither the admin nor the member right (a client key)."""
    if not isinstance(from_, RemoteReplyTo):
        return True
    return policy.ADMIN in from_.rights or policy.MEMBER in from_.rights


class NodeAdmin(otp.Process):
    """Answers the admin requests in the module docstring."""

    def init(self, app: str, allow_faults: bool, data_dir: str | None = None) -> None:
        self.app = app
        self.allow_faults = allow_faults
        self.data_dir = data_dir  # where the node's cluster is recorded (None: nowhere)
        self.started = time.monotonic()
        self.status_cache = StatusCache(self._collect_status)
        read = policy.Rule(policy.CLIENT, limited=True)
        write = policy.Rule(policy.ADMIN, limited=True)
        policy.allow(
            NAME,
            calls={
                **{verb: read for verb in ("ping", "partitions", "leaders", "status_all")},
                # Operators' views: every connected peer, other clients' ids and addresses
                # among them, which is no client's business.
                **{verb: write for verb in ("dist_stats", "dist_peers", "heartbeat_stats")},
                **{
                    verb: write
                    for verb in (
                        "bootstrap",
                        "bootstrap_many",
                        "cluster",
                        "reload_keys",
                        "set_fault",
                        "clear_fault",
                    )
                },
            },
        )

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if not isinstance(request, tuple) or not request or not isinstance(request[0], str):
            return ("error", "unknown_request")
        handler = _HANDLERS.get(request[0])
        if handler is None:
            return ("error", "unknown_request")
        args = request[1:]
        if request[0] in _ANSWERS_DEPEND_ON_CALLER:
            args = (from_, *args)
        try:
            return handler(self, *args)
        except (TypeError, ValueError, KeyError, IndexError):
            # Arguments come from the wire: a malformed call is answered, never a crash of
            # this process (repeated, the restarts would go over its supervisor's limit).
            return ("error", "badarg")

    def _ping(self) -> dict[str, Any]:
        return {
            "node": self.node.id,
            "pid": os.getpid(),
            "app": self.app,
            "partitions": self._partitions(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "version": __version__,
            "fault_injection": self.allow_faults,
            "cluster": _cluster_id(),
        }

    def _partitions(self) -> list[tuple[str, int]]:
        return [(o.table, o.partition) for o in part_sup.all_options(node=self.node.id)]

    def _leaders(self, table: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for t, partition in self._partitions():
            if t == table:
                leader = info.get_leader(t, partition)
                if leader is not None:
                    out[partition] = leader
        return out

    def _status_all(self, from_: otp.ReplyTo | None = None) -> list[dict[str, Any]]:
        # The rows are kept for the client callers after this one, so nobody may change
        # them: a remote caller gets them encoded, and the one local caller (``/metrics``)
        # only reads them.
        return self.status_cache.get(fresh=wants_fresh_status(from_))

    def _collect_status(self) -> list[dict[str, Any]]:
        """One status row per local partition, asking each server (see the module docstring)."""
        rows = []
        for table, partition in self._partitions():
            name = server.default_name(table, partition)
            try:
                status = server.status(name, timeout=STATUS_TIMEOUT)
            except otp.ExitError as exc:
                rows.append(
                    {
                        "node": self.node.id,
                        "table": table,
                        "partition": partition,
                        "error": status_error(exc.reason),
                    }
                )
                continue
            rows.append(status_row(status))
        return rows

    def _bootstrap(self, table: str, partition: int, position: Any, config: Any) -> Any:
        # Run locally: a LogPos crossing the wire arrives as a plain tuple, and the server's
        # bootstrap needs the named tuple.
        index, term = position
        name = server.default_name(table, partition)
        try:
            return server.bootstrap(name, LogPos(int(index), int(term)), config)
        except otp.ExitError as exc:
            return ("error", ("call_error", _plain(exc.reason)))
        except ValueError as exc:
            return ("error", ("badarg", str(exc)))

    def _bootstrap_many(
        self, table: str, partitions: Any, position: Any, nodes: Any, elect: Any = ()
    ) -> Any:
        """Bootstrap ``table``'s ``partitions`` on this node in one call, each with the config
        of every node in ``nodes`` as voting members, then trigger an election on each of the
        ``elect`` partitions that bootstrapped here: what ``waraft bootstrap`` would otherwise
        send as one rate-limited admin call per partition. One result per partition, in
        order: ``(partition, bootstrap result, election result or None)``.

        Up to ``BOOTSTRAP_IN_FLIGHT`` bootstraps (and as many elections) are in flight at
        once: each mostly waits for the disk, and one after another they took 16 ms each at
        3000 partitions per node (49 s for the node's share of the cluster bootstrap)."""
        wanted = {int(p) for p in elect}
        try:
            members = _member_nodes(nodes)
            index, term = position
            pos = LogPos(int(index), int(term))
        except (TypeError, ValueError) as exc:
            return [(int(p), ("error", ("badarg", str(exc))), None) for p in partitions]
        results: list[tuple[int, Any, Any]] = []
        booting: deque[tuple[int, int, otp.ReplyTo | None, Any]] = deque()
        electing: deque[tuple[int, otp.ReplyTo]] = deque()

        def collect_election() -> None:
            at, handle = electing.popleft()
            try:
                elected = otp.wait_response(handle, server.DEFAULT_TIMEOUT)
            except otp.ExitError as exc:
                elected = ("error", _plain(exc.reason))
            partition, answer, _ = results[at]
            results[at] = (partition, answer, elected)

        def collect_bootstrap() -> None:
            at, partition, handle, answer = booting.popleft()
            if handle is not None:
                try:
                    answer = otp.wait_response(handle, server.STORAGE_TIMEOUT)
                except otp.ExitError as exc:
                    if exc.reason == "noproc":  # as ``server.bootstrap`` answers it
                        answer = server.unserved_answer(server.default_name(table, partition))
                    else:
                        answer = ("error", ("call_error", _plain(exc.reason)))
            results[at] = (partition, answer, None)
            if answer == "ok" and partition in wanted:
                name = server.default_name(table, partition)
                electing.append((at, server.trigger_election_request(name)))
                if len(electing) >= BOOTSTRAP_IN_FLIGHT:
                    collect_election()

        for raw in partitions:
            partition = int(raw)
            name = server.default_name(table, partition)
            handle: otp.ReplyTo | None = None
            answer: Any = None
            try:
                config = server.make_config([Identity(name, node) for node in members])
                handle = server.bootstrap_request(name, pos, config)
            except ValueError as exc:
                answer = ("error", ("badarg", str(exc)))
            results.append((partition, answer, None))
            booting.append((len(results) - 1, partition, handle, answer))
            if len(booting) >= BOOTSTRAP_IN_FLIGHT:
                collect_bootstrap()
        while booting:
            collect_bootstrap()
        while electing:
            collect_election()
        return results

    def _cluster(self, wanted: Any = None) -> Any:
        """Make this node a node of cluster ``wanted`` (None: just tell which it is). It is
        recorded in the data dir before the node refuses other clusters' connections, so a
        restart keeps it; a node's cluster never changes."""
        from waraft import distribution as dist

        current = dist.cluster_id()
        if wanted is None:
            return ("ok", current)
        cluster = nodeid.check_cluster_id(wanted)
        if current is not None and current != cluster:
            return ("error", "other_cluster", current)
        if current is None:
            if self.data_dir is not None:
                try:
                    otp.blocking(datadir.join, self.data_dir, cluster)
                except datadir.DataDirError as exc:
                    return ("error", "data_dir", str(exc))
            dist.set_cluster_id(cluster)
        return ("ok", cluster)

    def _reload_keys(self) -> Any:
        """Re-read this node's ``cluster.json`` from its own key directory
        (``distribution.reload_keys``). The request carries nothing: which keys count is
        decided by the file on this machine, never by the caller."""
        from waraft import distribution as dist
        from waraft.distribution import keys

        try:
            changes = otp.blocking(dist.reload_keys)
        except (keys.KeysError, RuntimeError) as exc:
            logger.error("keys not reloaded: %s", exc)
            return ("error", "keys", str(exc))
        return ("ok", {"added": list(changes.added), "replaced": list(changes.replaced)})

    def _dist_stats(self) -> dict[str, int]:
        from waraft import distribution as dist

        return dist.stats()

    def _heartbeat_stats(self) -> dict[str, Any]:
        from waraft.partition import heartbeats

        return heartbeats.stats()

    def _dist_peers(self) -> dict[str, Any]:
        from waraft import distribution as dist

        return dist.peers()

    def _set_fault(self, nodes: Any = (), inbound: Any = (), outbound: Any = ()) -> Any:
        if not self.allow_faults:
            return ("error", "fault_injection_disabled")
        from waraft import distribution as dist

        logger.warning("fault injection: cut %s, inbound %s, outbound %s", nodes, inbound, outbound)
        dist.set_fault(list(nodes), inbound=list(inbound), outbound=list(outbound))
        return "ok"

    def _clear_fault(self) -> Any:
        if not self.allow_faults:
            return ("error", "fault_injection_disabled")
        from waraft import distribution as dist

        logger.warning("fault injection cleared")
        dist.clear_fault()
        return "ok"


_HANDLERS: Final[dict[str, Any]] = {
    "ping": NodeAdmin._ping,
    "partitions": NodeAdmin._partitions,
    "leaders": NodeAdmin._leaders,
    "status_all": NodeAdmin._status_all,
    "bootstrap": NodeAdmin._bootstrap,
    "bootstrap_many": NodeAdmin._bootstrap_many,
    "cluster": NodeAdmin._cluster,
    "reload_keys": NodeAdmin._reload_keys,
    "dist_stats": NodeAdmin._dist_stats,
    "dist_peers": NodeAdmin._dist_peers,
    "heartbeat_stats": NodeAdmin._heartbeat_stats,
    "set_fault": NodeAdmin._set_fault,
    "clear_fault": NodeAdmin._clear_fault,
}


_ANSWERS_DEPEND_ON_CALLER: Final = frozenset({"status_all"})
"""Requests whose handler takes the caller's reply handle (its rights) first."""


def _cluster_id() -> str | None:
    from waraft import distribution as dist

    return dist.cluster_id() if dist.is_started() else None


def _member_nodes(nodes: Any) -> list[str]:
    """The node ids of a ``bootstrap_many`` call; raises ``ValueError`` unless it is a
    non-empty list of well-formed node ids. (``str()`` of anything was taken: a typo became a
    member nobody runs, in a config the replicas then refuse to bootstrap over.)"""
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, (list, tuple)) or not nodes:
        raise ValueError(f"the members are a non-empty list of node ids, got {nodes!r}")
    for node in nodes:
        if not isinstance(node, str):
            raise ValueError(f"a member is a node id (name@host:port), got {node!r}")
        nodeid.parse(node)  # NodeIdError (a ValueError) names what is wrong
    return list(nodes)


def start_link(app: str, allow_faults: bool = False, data_dir: str | None = None) -> otp.Pid:
    """Start the admin process registered ``waraft_admin``."""
    pid: otp.Pid = NodeAdmin.start_link(app, allow_faults, data_dir, name=NAME)
    return pid


def child_spec(app: str, allow_faults: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    """A permanent worker for ``kernel_sup`` (or any supervisor): ``waraft_admin`` for
    ``app``'s partitions.

    ``waraft node`` starts it itself. A service that embeds waraft in its own tree
    (``waraft.sup.child_spec``) adds it too, once per node, after
    ``waraft.distribution.start``: without it ``waraft bootstrap``, ``waraft status`` and the
    shell's helpers find no ``waraft_admin`` there and say so. ``allow_faults`` enables the
    fault-injection requests (tests and drills). ``data_dir`` holds the ``node.json``
    (``waraft.cli.datadir.claim``) where the cluster id ``waraft bootstrap`` gives the node is
    recorded, for the service to pass back as ``distribution.start(..., cluster_id=...)`` at
    its next start; None keeps it in memory only."""
    return {
        "id": NAME,
        "start": (start_link, (app, allow_faults, data_dir)),
        "restart": "permanent",
        "shutdown": 5000,
    }


def call(node: str, *request: Any, timeout: float = 5.0) -> Any:
    """``otp.call`` to the admin process of ``node``."""
    return otp.call((NAME, node), tuple(request), timeout)
