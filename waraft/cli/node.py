"""``waraft node``: run one node (an OS process) serving a table's partitions.

Settings come from a TOML file (``--config``) and flags; flags win. The file may hold every
option at its top level (same names as the flags, with ``_`` for ``-``), a ``[settings]``
table of ``waraft.env`` settings and a ``[dist]`` table of ``waraft.distribution.start`` options::

    name = "n1"
    listen = "127.0.0.1:7001"
    data_dir = "/var/lib/waraft/n1"
    table = "kv"
    partitions = "1-4"            # or [1, 2, 3, 4]
    app = "kvstore"

    [settings]
    raft_election_timeout_ms = 1000

    [dist]
    ping_interval = 0.5
    down_after = 3.0

Start-up: ``waraft.distribution.start(name@host:port)``, settings into ``waraft.env``
(``raft_database`` = the data dir, durable log and storage providers unless ``--memory``), the
node-wide services (``waraft.app``), the ``waraft_admin`` process, then the partitions under
``kernel_sup`` (with ``--app-module M``, ``M.child_spec(app, raft_args)`` builds the
application's supervisor instead of ``waraft.sup.child_spec``). Once serving, one line goes to
stdout: ``READY <node id> pid=<pid>``; logs go to stderr. SIGTERM or SIGINT stop the node cleanly
(the otp node, then distribution) and the process exits 0; a second signal exits at once (1).
SIGHUP re-reads the cluster's keys (``--keys DIR``'s ``cluster.json``: a node added with
``waraft keys add``) without a restart (``waraft.distribution.reload_keys``); a file that
cannot be taken is logged as an error and the keys in use stay.
A node that stops itself (a scheduler thread failed, or ``kernel_sup`` gave up restarting:
``otp.Node.on_failure``) takes the process with it, as a BEAM node halts: distribution is
stopped, so that peers see the node down and elect new leaders instead of trusting a node
that still answers pings but serves nothing, and the process exits 1 after one line on
stderr saying why.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from waraft.cli import common, datadir
from waraft.cli.common import UsageError
from waraft.services import gctune

if TYPE_CHECKING:
    from waraft.otp.node import Node

logger = logging.getLogger(__name__)

MAX_NODE_NAME = 64
"""A node name is a node id's name (``nodeid.is_node_name``) of at most this many characters:
it is part of node ids, key file names and log lines (a review's name with a space passed,
and made ids that other tools split wrongly)."""

NODE_DEFAULT_SETTINGS: dict[str, Any] = {
    "raft_election_pre_vote": True,
    "raft_quiesce_after_ms": 2000,
    "raft_commit_await_round": True,
    "raft_max_log_entries_per_heartbeat": 1000,
}
"""Where ``waraft node`` departs from WARaft's defaults (a ``--set`` or TOML value wins):
pre-vote, so that a member that restarts or was cut off cannot depose a healthy leader by
bumping the term (Raft thesis §9.6); quiescence after 2 s idle, because a node runs under
``waraft.distribution`` whose node liveness wakes the followers of a lost leader (the library
default stays off: in-process nodes have no node liveness); commits that arrive while a
round is unanswered ride on the round its answer starts (one round per round trip under
load instead of one per command: issue 12, at 1000 partitions); up to 1000 entries in one
``append_entries`` instead of WARaft's 15, still within ``raft_max_heartbeat_size`` (1 MiB)
and ``raft_max_bytes_in_flight`` (4 MiB per peer), because a message costs a Python node tens
of microseconds where it costs a BEAM process a pointer copy: with one entry per command, 15
entries a message and 8 messages unanswered capped a follower's pipeline at 120 entries a
round trip, which bounded scenario b and ``pack=false`` (``benchmarks/HOTPATH.md``)."""

DURABLE_LOG = "waraft.log.wal:WalLog"
"""The node-wide write-ahead log (``waraft.log.disk:DiskLog`` stays available per partition)."""
DURABLE_STORAGE = "waraft.storage.node_lmdb:NodeLmdbStorage"
"""One LMDB environment per node with checksummed values (``waraft.storage.lmdb:LmdbStorage``,
an environment per partition, stays available)."""
MEMORY_LOG = "waraft.log.memory:MemoryLog"
MEMORY_STORAGE = "waraft.storage.memory:MemoryStorage"
SHUTDOWN_TIMEOUT = 20.0
"""The bound on stopping a node (SIGTERM/SIGINT to exit): past it the node logs what it is
abandoning (the processes still running), removes the temporary data dir it created, and
exits 1 (``_abandon``)."""


@dataclass
class NodeConfig:
    """Everything ``waraft node`` needs (flags and TOML keys have these names)."""

    name: str = ""
    listen: str = ""
    advertise: str | None = None
    data_dir: str | None = None
    cluster_id: str | None = None
    table: str = common.DEFAULT_TABLE
    partitions: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    app: str | None = None
    app_module: str | None = None
    memory: bool = False
    allow_fault_injection: bool = False
    keys: str | None = None
    insecure: bool = False
    metrics: str | None = None
    max_memory_mb: int | None = None
    gc_threshold: str | list[int] | None = None
    log_level: str = "INFO"
    settings: dict[str, Any] = field(default_factory=dict)
    dist: dict[str, Any] = field(default_factory=dict)

    @property
    def application(self) -> str:
        return self.app or self.table

    def node_id(self) -> str:
        """``name@host:port`` (the advertised host when listening on every interface)."""
        host, port = split_listen(self.listen)
        return f"{self.name}@{self.advertise or host}:{port}"

    def bind(self) -> str | None:
        """The ZeroMQ bind endpoint when it differs from the id's address."""
        if self.advertise is None:
            return None
        host, port = split_listen(self.listen)
        return f"tcp://{host}:{port}"

    def gc(self) -> gctune.Threshold | None:
        """The cyclic GC thresholds to run with (``None``: the interpreter's own)."""
        try:
            return gctune.parse_threshold(self.gc_threshold)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def check(self) -> NodeConfig:
        from waraft.distribution.nodeid import is_node_name

        if len(self.name) > MAX_NODE_NAME or not is_node_name(self.name):
            raise UsageError(
                f"--name is required: a node name of at most {MAX_NODE_NAME} letters, digits, "
                f"'_', '.' and '-' (like n1), got {self.name!r}"[:200]
            )
        if not self.listen:
            raise UsageError("--listen HOST:PORT is required (port 0 picks a free one)")
        split_listen(self.listen)
        if self.metrics is not None:
            split_listen(self.metrics, "--metrics")
        if self.max_memory_mb is not None and (
            type(self.max_memory_mb) is not int or self.max_memory_mb < 0
        ):
            raise UsageError(
                f"max_memory_mb must be a whole number of MiB >= 0, got {self.max_memory_mb!r}"
            )
        self.gc()
        _check_limits_from_env()
        if self.data_dir is None and not self.memory:
            raise UsageError("--data-dir is required (or --memory for a throw-away node)")
        if self.cluster_id is not None:
            from waraft.distribution import nodeid

            try:
                nodeid.check_cluster_id(self.cluster_id)
            except ValueError as exc:
                raise UsageError(f"--cluster-id: {exc}") from None
        from waraft.partition import part_sup

        try:
            part_sup.check_spec({"table": self.table, "partition": self.partitions[0]})
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for key in self.settings:
            common.known_setting(key)
        if "raft_database" in self.settings:
            # Applied after --data-dir, it moved the data elsewhere while the log and the
            # data-dir checks named --data-dir; a restart without it then found nothing.
            raise UsageError("raft_database is set by --data-dir (data_dir in a config file)")
        from waraft.services import env

        try:
            env.check_settings(self.settings)
        except env.BadSetting as exc:
            raise UsageError(str(exc)) from None
        _check_dist(self.dist)
        from waraft.distribution import NodeIdError, parse

        try:
            parse(self.node_id())
        except NodeIdError as exc:
            raise UsageError(str(exc)) from None
        if self.keys is None and not self.insecure and "curve" not in self.dist:
            raise UsageError(
                "give the cluster's keys (--keys DIR, made by 'waraft keys create') or run "
                "without encryption and authentication with --insecure"
            )
        if self.keys is not None and self.insecure:
            raise UsageError("--keys and --insecure exclude each other")
        common.curve_for(self.keys, self.name, "node")  # a missing or wrong key: one line
        return self


def _check_limits_from_env() -> None:
    """The process and memory limits the node reads from its environment, checked with the
    other input: a bad value is a usage error naming the variable, not a failed start."""
    from waraft.otp import node

    try:
        node.max_processes_from_env()
        node.max_memory_mb_from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_dist(dist: dict[str, Any]) -> None:
    """The ``[dist]`` table: known keys with numbers in range (as ``DistSettings`` checks)."""
    from waraft.distribution import DistSettings

    known = {f.name: f.default for f in fields(DistSettings)}
    for key, value in dist.items():
        if key == "curve":
            continue
        if key not in known:
            raise UsageError(f"unknown [dist] option {key!r}")
        if type(known[key]) is bool:
            if type(value) is not bool:
                raise UsageError(f"[dist] {key} must be true or false, got {value!r}"[:100])
        elif type(value) not in (int, float) or (
            type(known[key]) is int and type(value) is not int
        ):
            raise UsageError(f"[dist] {key} must be a number, got {value!r}"[:100])
    try:
        DistSettings(**{k: v for k, v in dist.items() if k != "curve"})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"[dist]: {exc}") from None


def _warn_insecure(listen: str) -> None:
    """Say it at every start: a node without keys (``--insecure``) takes anyone who reaches
    its port for a member, and its frames travel in the clear."""
    host, _ = split_listen(listen)
    if host in ("localhost", "::1", "[::1]") or host.startswith("127."):
        reach = "any process on this machine"
    else:
        reach = f"anyone who can reach {host}"
    logger.warning(
        "running WITHOUT encryption or authentication (--insecure): %s can act as a member of "
        "the cluster, read and write every partition and stop this node",
        reach,
    )


def split_listen(listen: str, flag: str = "--listen") -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) → ``(host, port)``."""
    host, colon, port = listen.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{flag} must be HOST:PORT, got {listen!r}")
    return host, int(port)


_FILE_KEYS = {f.name for f in fields(NodeConfig)}


def load_toml(path: str) -> dict[str, Any]:
    """Read a node config file; unknown keys are an error."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"bad TOML in {path}: {exc}") from None
    if isinstance(data.get("node"), dict):  # a [node] table is accepted too
        data = {**data.pop("node"), **data}
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise UsageError(f"unknown keys in {path}: {', '.join(sorted(unknown))}")
    for table_key in ("settings", "dist"):
        if not isinstance(data.get(table_key, {}), dict):
            raise UsageError(f"[{table_key}] in {path} must be a table")
    for key, value in data.items():
        _check_file_type(path, key, value)
    return data


# What each key of a node config file must hold (``settings`` and ``dist`` are checked by
# ``NodeConfig.check``). Checked before anything reads them: ``memory = "false"`` is a truthy
# string, and ran a node on the memory providers.
_TEXT = (str,)
_FILE_TYPES: dict[str, tuple[type, ...]] = {
    "name": _TEXT,
    "listen": _TEXT,
    "advertise": _TEXT,
    "data_dir": _TEXT,
    "cluster_id": _TEXT,
    "table": _TEXT,
    "partitions": (str, int, list),
    "app": _TEXT,
    "app_module": _TEXT,
    "memory": (bool,),
    "allow_fault_injection": (bool,),
    "keys": _TEXT,
    "insecure": (bool,),
    "metrics": _TEXT,
    "max_memory_mb": (int,),
    "gc_threshold": (str, list),
    "log_level": _TEXT,
    "settings": (dict,),
    "dist": (dict,),
}
_TYPE_WORDS = {str: "a string", int: "a whole number", list: "a list", bool: "true or false"}


def _check_file_type(path: str, key: str, value: Any) -> None:
    expected = _FILE_TYPES[key]
    if type(value) in expected:
        return
    words = " or ".join(_TYPE_WORDS.get(t, "a table") for t in expected)
    raise UsageError(f"{key} in {path} must be {words}, got {value!r}"[:200])


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    """Defaults, then the TOML file, then the flags that were given."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_toml(args.config))
    for key in _FILE_KEYS - {"settings", "dist"}:
        given = getattr(args, key, None)
        if given is not None and given is not False:
            values[key] = given
    settings = dict(values.pop("settings", {}))
    for assignment in args.set or []:
        key, value = common.parse_assignment(assignment)
        settings[key] = value
    dist = dict(values.pop("dist", {}))
    flags = common.dist_options(args)
    if args.ping_interval is None and "ping_interval" in dist:
        flags.pop("ping_interval", None)  # derived from --down-after; the file's value wins
    dist.update(flags)
    ping, down = dist.get("ping_interval"), dist.get("down_after")
    if ping is not None and down is not None and not 0 < ping < down:
        raise UsageError("the ping interval must be positive and below down_after")
    if "partitions" in values:
        values["partitions"] = common.parse_partitions(values["partitions"])
    config = NodeConfig(**values, settings=settings, dist=dist)
    return config.check()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "node",
        help="run a node until SIGTERM/SIGINT",
        description="Run one waraft node serving a table's partitions. "
        "Prints 'READY <node id> pid=<pid>' on stdout once serving; logs to stderr.",
    )
    p.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file")
    p.add_argument("--name", help="node name; the node id is NAME@HOST:PORT")
    p.add_argument("--listen", metavar="HOST:PORT", help="endpoint to listen on (port 0: any)")
    p.add_argument(
        "--advertise", metavar="HOST", help="host in the node id (when listening on 0.0.0.0)"
    )
    p.add_argument("--data-dir", metavar="DIR", help="root of the Raft data (raft_database)")
    p.add_argument(
        "--cluster-id",
        metavar="ID",
        help="the cluster this node belongs to (recorded in the data dir; 'waraft bootstrap' "
        "gives one to nodes that have none). Connections of other clusters' nodes are refused",
    )
    p.add_argument("--table", help=f"table name (default: {common.DEFAULT_TABLE})")
    p.add_argument(
        "--partitions",
        metavar="LIST",
        help=f"partitions to serve, e.g. 1-4 (default: {common.DEFAULT_PARTITIONS})",
    )
    p.add_argument("--app", help="application name for settings (default: the table name)")
    p.add_argument(
        "--app-module",
        metavar="MODULE",
        help="module whose child_spec(app, raft_args) builds the app's supervisor",
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="in-memory log and storage (nothing survives a restart)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a waraft.env setting (repeatable), e.g. raft_election_timeout_ms=500; the "
        "memory bounds (README, 'Memory and disk bounds') include "
        "raft_node_max_retained_bytes (default 64 MiB: the log all partitions keep)",
    )
    p.add_argument(
        "--allow-fault-injection",
        action="store_true",
        help="let waraft_admin set_fault/clear_fault (tests and drills only)",
    )
    p.add_argument(
        "--keys",
        metavar="DIR",
        help="the cluster's key directory (made by 'waraft keys create'); uses DIR/NAME.key",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="run without keys: no encryption, any process that reaches the port may talk",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (the metrics extra)",
    )
    p.add_argument(
        "--max-memory-mb",
        type=int,
        metavar="MIB",
        help="refuse to start processes (new partitions, connections) while the node's "
        "resident size is above MIB (default: no limit)",
    )
    p.add_argument(
        "--gc-threshold",
        metavar="A,B,C",
        help="the cyclic garbage collector's thresholds (default: "
        f"{','.join(map(str, gctune.DEFAULT_THRESHOLD))}; 'python' keeps the interpreter's "
        "700,10,10, whose collections cost a busy node 8-19 %% of its CPU)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    common.dist_args(p)
    p.set_defaults(func=run)


class NodeRuntime:
    """A node started in this process: ``start()`` then ``stop()`` (the shell uses it too)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id: str | None = None
        self.node: Node | None = None
        self._temp_dir: str | None = None
        self._metrics: Any = None
        self._lock: int | None = None  # the data dir's lock file, held while the node runs

    def start(self) -> str:
        """Start distribution, settings, services and partitions; return the node id."""
        from waraft import distribution as dist
        from waraft import otp
        from waraft.services import env

        config = self.config
        data_dir = config.data_dir
        if data_dir is None:
            data_dir = self._temp_dir = tempfile.mkdtemp(prefix="waraft-node-")
        _check_writable(data_dir)
        self._lock = _lock_data_dir(data_dir)
        # Checked now, recorded once the node has its address: a start that fails on a busy
        # port must not leave node.json naming an address nothing runs at.
        owner = _claim_data_dir(
            data_dir, config.name, config.node_id(), config.cluster_id, write=False
        )
        # Each incoming connection, log segment, storage file and snapshot costs a
        # descriptor: take what the hard limit allows before the caps on incoming
        # connections are derived from it (half of it; see distribution.conncaps).
        from waraft.distribution.conncaps import raise_fd_limit

        logger.info("descriptor limit: %d", raise_fd_limit())
        dist_kw = dict(config.dist)
        dist_kw["cluster_id"] = owner.cluster
        curve = common.curve_for(config.keys, config.name, "node")
        if curve is not None:
            dist_kw["curve"] = curve
        self.node_id = dist.start(config.node_id(), bind=config.bind(), **dist_kw)
        if curve is None:
            _warn_insecure(config.listen)
        self.node = otp.node.current()
        _claim_data_dir(data_dir, config.name, config.node_id(), owner.cluster)
        if config.max_memory_mb is not None:
            self.node.max_memory_mb = config.max_memory_mb
        app = config.application
        env.set_env(app, "raft_database", os.path.abspath(data_dir))
        env.set_env(app, "raft_log_module", MEMORY_LOG if config.memory else DURABLE_LOG)
        env.set_env(
            app, "raft_storage_module", MEMORY_STORAGE if config.memory else DURABLE_STORAGE
        )
        common.apply_settings(app, {**NODE_DEFAULT_SETTINGS, **config.settings})
        _ensure_app_services()
        from waraft.cli import admin

        result = otp.supervisor.start_child(
            "kernel_sup",
            admin.child_spec(app, config.allow_fault_injection, os.path.abspath(data_dir)),
        )
        _check_started("waraft_admin", result)
        raft_args = [{"table": config.table, "partition": p} for p in config.partitions]
        result = otp.supervisor.start_child("kernel_sup", self._app_spec(app, raft_args))
        _check_started(f"application {app}", result)
        if config.metrics is not None:
            self._serve_metrics(config.metrics)
        logger.info(
            "node %s serving %s partitions %s (data in %s, %s providers)",
            self.node_id,
            config.table,
            config.partitions,
            data_dir,
            "memory" if config.memory else "durable",
        )
        return self.node_id

    def _serve_metrics(self, address: str) -> None:
        from waraft import otp
        from waraft.cli import metrics

        host, port = split_listen(address, "--metrics")
        try:
            self._metrics = metrics.serve(host, port, otp.node.current())
        except ImportError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"--metrics {address}: {exc.strerror or exc}") from None
        logger.info("metrics at http://%s:%d/metrics", host, self._metrics.server_port)

    def _app_spec(self, app: str, raft_args: list[dict[str, Any]]) -> dict[str, Any]:
        module_name = self.config.app_module
        if module_name is None:
            from waraft.partition import sup

            return sup.child_spec(app, raft_args)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # so `--app-module examples.x` works from a checkout
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(f"cannot import --app-module {module_name}: {exc}") from None
        spec: dict[str, Any] = module.child_spec(app, raft_args)
        return spec

    def stop(self) -> None:
        """Stop the otp node (every partition terminates, durable state is synced), then
        distribution."""
        from waraft import distribution as dist
        from waraft import otp

        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
        otp.node.stop_all(timeout=5.0)
        # A node that stopped itself may still be stopping in its own thread (stop_all
        # returned at once): its partitions finish before distribution goes.
        if self.node is not None and not self.node.wait_stopped(SHUTDOWN_TIMEOUT):
            logger.error("node %s still stopping; stopping distribution anyway", self.node_id)
        dist.stop()
        if self._lock is not None:
            os.close(self._lock)  # after the partitions closed their files
            self._lock = None
        self.remove_temp_dir()
        logger.info("node %s stopped", self.node_id)

    def remove_temp_dir(self) -> None:
        """Remove the data dir this runtime created (``--memory`` without ``--data-dir``)."""
        temp, self._temp_dir = self._temp_dir, None
        if temp is not None:
            import shutil

            shutil.rmtree(temp, ignore_errors=True)


def _check_writable(data_dir: str) -> None:
    """Create ``data_dir`` and write a probe file in it, so a bad data dir is one usage error
    at start rather than a storage failure later (root passes permission bits, so probe)."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError(f"data dir {data_dir} is not a directory")
    try:
        os.makedirs(data_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".waraft-probe-", dir=data_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"data dir {data_dir} is not writable: {exc.strerror or exc}") from None


LOCK_FILE = "node.lock"
"""The file in a data dir that a running ``waraft node`` holds an exclusive lock on."""


def _lock_data_dir(data_dir: str) -> int:
    """Lock ``data_dir`` for this process (an exclusive ``flock`` on its ``node.lock``, which
    the kernel releases when the process dies, however): a second node started on the
    directory of a running one is refused before it changes anything. It used to rewrite
    node.json, then fail on the storage's own lock with a nested tuple for a message.
    Returns the open lock file, to close at stop."""
    import fcntl

    path = os.path.join(data_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsageError(f"data dir {data_dir}: cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise UsageError(
            f"data dir {data_dir} is in use by a running node"
            + (f" (pid {holder})" if holder.isdigit() else "")
            + ": stop it first, or give this node its own --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above, nothing else
    return fd


def _claim_data_dir(
    data_dir: str, name: str, node_id: str, cluster: str | None = None, *, write: bool = True
) -> datadir.Owner:
    """``datadir.claim``, its refusals as usage errors (exit 2 with one line)."""
    try:
        return datadir.claim(data_dir, name, node_id, cluster, write=write)
    except datadir.DataDirError as exc:
        raise UsageError(str(exc)) from None


def _ensure_app_services() -> None:
    try:
        app_module = importlib.import_module("waraft.partition.app")
    except ImportError:
        return
    ensure = getattr(app_module, "ensure_started", None)
    if ensure is not None:
        ensure()


def _check_started(what: str, result: Any) -> None:
    if not (isinstance(result, tuple) and result and result[0] == "ok"):
        raise RuntimeError(f"{what} did not start: {result!r}")


def run(args: argparse.Namespace) -> int:
    """The ``waraft node`` command."""
    config = config_from_args(args)
    common.setup_logging(config.log_level, config.name)
    stop = threading.Event()
    signals = {"count": 0}
    failures: list[Any] = []

    def on_failure(reason: Any) -> None:  # in the failing thread: only wake the main one
        failures.append(reason)
        stop.set()

    def on_signal(signum: int, frame: Any) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            os._exit(1)  # asked twice: do not wait for a clean stop
        logger.info("got %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    hangup = threading.Event()
    # Only noted here: the reload reads files and takes locks, which a signal handler
    # interrupting the main thread at any point must not do.
    signal.signal(signal.SIGHUP, lambda signum, frame: hangup.set())
    # This process is the node's own: tune its collector before the partitions allocate
    # anything (the freeze keeps the start-up objects out of every full collection).
    gctune.tune(config.gc())
    gctune.watch_pauses()
    runtime = NodeRuntime(config)
    try:
        node_id = runtime.start()
    except UsageError:
        stop_quietly(runtime)
        raise
    except Exception as exc:
        # One line for the operator; the traceback only with --log-level DEBUG.
        logger.debug("node failed to start", exc_info=True)
        stop_quietly(runtime)
        print(f"waraft node: failed to start: {exc}", file=sys.stderr)
        return 1
    assert runtime.node is not None
    runtime.node.on_failure(on_failure)  # called at once if it already failed
    print(f"READY {node_id} pid={os.getpid()}", flush=True)
    while not stop.wait(0.5):
        if hangup.is_set():
            hangup.clear()
            reload_keys()
    if failures:
        print(f"waraft node: node {node_id} failed, exiting: {failures[0]!r}", file=sys.stderr)
    started = time.monotonic()
    watchdog = threading.Timer(SHUTDOWN_TIMEOUT, _abandon, args=(runtime,))
    watchdog.daemon = True
    watchdog.start()
    runtime.stop()
    watchdog.cancel()
    logger.info("stopped in %.1f s (bound %.0f s)", time.monotonic() - started, SHUTDOWN_TIMEOUT)
    return 1 if failures else 0


def reload_keys() -> None:
    """SIGHUP: re-read the cluster's keys; a refusal is logged, never fatal."""
    from waraft import distribution as dist
    from waraft.distribution import keys

    try:
        dist.reload_keys()  # logs what changed
    except (keys.KeysError, RuntimeError) as exc:
        logger.error("SIGHUP: keys not reloaded: %s", exc)


def _abandon(runtime: NodeRuntime) -> None:
    """The shutdown bound passed: say what is left behind, clean what we own, exit 1 now."""
    from waraft import otp

    left = [pid for node in otp.node.local_nodes().values() for pid in node.processes()]
    logger.error(
        "shutdown exceeded %.0f s: abandoning %d processes still running%s",
        SHUTDOWN_TIMEOUT,
        len(left),
        f" (first: {', '.join(map(repr, left[:5]))})" if left else "",
    )
    runtime.remove_temp_dir()
    logging.shutdown()
    os._exit(1)


def stop_quietly(runtime: NodeRuntime) -> None:
    try:
        runtime.stop()
    except Exception:
        logger.exception("stopping after a failed start failed")
