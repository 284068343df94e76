"""One partition's supervisor and its options (WARaft's ``wa_raft_part_sup``).

``normalize_spec`` turns a partition's args (``{"table": ..., "partition": ..., providers...}``)
into ``RaftOptions`` the way WARaft builds ``#raft_options{}``: the data directory
``<raft_database>/<table>.<partition>``, WARaft's registered names, and each provider taken from
the args, then the application's settings, then the defaults. The options are kept in a
node-local registry (WARaft's persistent_term) so that ``registered_name`` helpers and the status
table can find them.

The supervisor is ``one_for_all`` with intensity 10 per second over six children started in this
order (and stopped in reverse): queue, storage, log, server, acceptor, transport cleanup.

A partition supervisor that gives up (more restarts than that) exits, and its own supervisor
(``waraft.sup``: a permanent child) starts it again; until the new one has registered its
name, the partition has no process at all. ``is_restarted_by_parent`` tells that window from a
partition stopped for good (see ``waraft.server.is_restarting``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import types
from typing import Any

from waraft import otp
from waraft.core.types import Identity
from waraft.services import env, label
from waraft.services.options import (
    RaftOptions,
    all_options,
    options,
    resolve_module,
    store_options,
)
from waraft.services.queues import Queues

logger = logging.getLogger(__name__)

DEFAULT_LOG_MODULE = "waraft.log.memory:MemoryLog"
DEFAULT_STORAGE_MODULE = "waraft.storage.memory:MemoryStorage"
REQUIRED_ARGS = ("table", "partition")
KNOWN_ARGS = frozenset(
    {
        "table",
        "partition",
        "distribution_module",
        "log_module",
        "label_module",
        "storage_module",
        "transport_module",
    }
)


def default_name(table: str, partition: int) -> str:
    """The partition supervisor's registered name ``raft_sup_<table>_<partition>``."""
    return f"raft_sup_{table}_{partition}"


def default_partition_path(root: str, table: str, partition: int) -> str:
    """``<root>/<table>.<partition>``."""
    return os.path.join(root, f"{table}.{partition}")


_fallback_lock = threading.Lock()
_fallback_roots: dict[str, str] = {}


def registered_name(table: str, partition: int) -> str:
    """The partition supervisor's name (from its options when registered)."""
    opts = options(table, partition)
    return default_name(table, partition) if opts is None else opts.supervisor_name


def registered_partition_path(table: str, partition: int) -> str:
    """The data directory of a registered partition; ``LookupError`` if not registered."""
    opts = options(table, partition)
    if opts is None:
        raise LookupError(f"partition {table}/{partition} is not registered on this node")
    return opts.database


def is_table_name(value: object) -> bool:
    """A table name: a non-empty string of letters, digits and ``_`` (it names registered
    processes, data directories and metrics)."""
    return isinstance(value, str) and bool(value) and value.replace("_", "a").isalnum()


def check_spec(spec: Any) -> dict[str, Any]:
    """Validate one partition's args; raise ``ValueError`` with a clear message."""
    if not isinstance(spec, dict):
        raise ValueError(f"partition args must be a dict, got {spec!r}")
    missing = [k for k in REQUIRED_ARGS if k not in spec]
    if missing:
        raise ValueError(f"partition args {spec!r} lack {missing}")
    unknown = set(spec) - KNOWN_ARGS
    if unknown:
        raise ValueError(f"partition args have unknown keys {sorted(unknown)}")
    table, partition = spec["table"], spec["partition"]
    if not is_table_name(table):
        raise ValueError(f"table must be a non-empty identifier string, got {table!r}")
    if not isinstance(partition, int) or isinstance(partition, bool) or partition < 1:
        raise ValueError(f"partition must be a positive integer, got {partition!r}")
    return spec


def _database_root(application: str) -> str:
    try:
        return env.database_path(application)
    except env.NoConfiguredDatabasePath:
        # WARaft insists on raft_database. The quick start sets nothing, so fall back to a
        # throw-away directory, loudly: nothing written there is meant to survive.
        node = env.current_node_id()
        root = _fallback_roots.get(node)
        if root is not None:
            return root
        # Made off the schedulers (a partition starts on its supervisor's), and outside the
        # lock: a scheduled process suspended in otp.blocking while holding a thread lock
        # would block its scheduler's thread for good when another process there wanted it.
        made = otp.blocking(tempfile.mkdtemp, prefix="waraft-")
        with _fallback_lock:
            root = _fallback_roots.setdefault(node, made)
        if root != made:  # another partition of the node got there first
            otp.blocking(os.rmdir, made)
            return root
        logger.warning(
            "raft_database is not set for application %r; using the temporary "
            "directory %s (set it with waraft.env.set_env(app, 'raft_database', path))",
            application,
            root,
        )
        return root


def _module(spec: dict[str, Any], application: str, key: str, env_key: Any, default: Any) -> Any:
    if key in spec:
        return resolve_module(spec[key])
    return resolve_module(env.get_env(application, env_key, default))


def _provider(spec: dict[str, Any], application: str, kind: str, default: str) -> Any:
    """The log or storage provider class the spec or the app's settings name. A module
    stands for its ``PROVIDER`` (``waraft.storage.memory``, as WARaft's settings name
    modules); anything but a provider class is refused here, with the setting named, rather
    than failing inside the partition's start (a review got ``AttributeError: ... open``)."""
    from waraft.log.provider import LogProvider
    from waraft.storage.provider import StorageProvider

    base = LogProvider if kind == "log" else StorageProvider
    value = _module(spec, application, f"{kind}_module", f"raft_{kind}_module", default)
    if isinstance(value, types.ModuleType):
        value = getattr(value, "PROVIDER", value)
    if not (isinstance(value, type) and issubclass(value, base)):
        raise ValueError(
            f"{kind}_module (raft_{kind}_module) must name a {base.__name__} class, as "
            f"'package.module:Class', got {value!r}"
        )
    return value


def _label_module(spec: dict[str, Any], application: str) -> Any:
    module = _module(spec, application, "label_module", "raft_label_module", None)
    label.label_function(module)  # a module that cannot label is refused before anything starts
    return module


def normalize_spec(application: str, spec: dict[str, Any]) -> RaftOptions:
    """Build a partition's options as WARaft's ``normalize_spec`` does."""
    spec = check_spec(spec)
    table: str = spec["table"]
    partition: int = spec["partition"]
    database = default_partition_path(_database_root(application), table, partition)
    # Each process's module owns its name, as in WARaft (imported here: they import us).
    from waraft import log, storage
    from waraft.partition import acceptor, queue, server
    from waraft.transport import cleanup as transport_cleanup

    server_name = server.default_name(table, partition)
    settings = env.settings_for(application, table)
    return RaftOptions(
        application=application,
        table=table,
        partition=partition,
        # The identity always uses the default server name, as WARaft's does.
        self_id=Identity(server_name, otp.node.current().id),
        database=database,
        acceptor_name=acceptor.default_name(table, partition),
        log_name=log.default_name(table, partition),
        queue_name=queue.default_name(table, partition),
        server_name=server_name,
        storage_name=storage.default_name(table, partition),
        supervisor_name=default_name(table, partition),
        transport_cleanup_name=transport_cleanup.default_name(table, partition),
        transport_directory=os.path.join(database, "transport"),
        queues=Queues(table, partition, settings),
        log_module=_provider(spec, application, "log", DEFAULT_LOG_MODULE),
        storage_module=_provider(spec, application, "storage", DEFAULT_STORAGE_MODULE),
        label_module=_label_module(spec, application),
        distribution_module=_module(
            spec, application, "distribution_module", "raft_distribution_module", None
        ),
        transport_module=_module(
            spec,
            application,
            "transport_module",
            ("raft_transport_module", "transport_module"),
            None,
        ),
    )


def prepare_spec(application: str, spec: dict[str, Any]) -> RaftOptions:
    """Normalise and register a partition's options without starting it (tests, tools)."""
    opts = normalize_spec(application, spec)
    store_options(opts)
    return opts


def child_specs(opts: RaftOptions) -> list[dict[str, Any]]:
    """The six children in WARaft's start order with its restart types and shutdown times."""
    from waraft import log, storage
    from waraft.partition import acceptor, queue, server
    from waraft.transport import cleanup as transport_cleanup

    return [
        queue.child_spec(opts),
        storage.child_spec(opts),
        log.child_spec(opts),
        server.child_spec(opts),
        acceptor.child_spec(opts),
        transport_cleanup.child_spec(opts),
    ]


FLAGS = {"strategy": "one_for_all", "intensity": 10, "period": 1}

_given_up: dict[tuple[str, str, int], otp.Pid] = {}
"""``(node id, table, partition)`` of a partition whose supervisor gave up -> the supervisor
that started it, which restarts it: set as the old one stops, dropped once a new one runs.
Read without a lock (the receive thread asks); written by the partition's supervisors."""


def is_restarted_by_parent(table: str, partition: int, node: str) -> bool:
    """Whether the partition's supervisor on ``node`` gave up and the supervisor that
    started it is alive, so will start it again (a permanent child, ``child_spec``): the
    window in which the partition has no process. False once a new one runs, and when
    nothing will bring it back (that supervisor gave up too, or was stopped)."""
    parent = _given_up.get((node, table, partition))
    return parent is not None and parent.is_alive()


def forget_given_up(node: str, table: str, partition: int) -> None:
    """The partition on ``node`` was stopped for good (``waraft.sup.stop_partition``): its
    supervisor's parent will not start it again, whatever mark one that gave up left."""
    _given_up.pop((node, table, partition), None)


class PartitionSupervisor(otp.supervisor.Supervisor):
    """The ``one_for_all`` supervisor of one partition's processes. Only its stop differs:
    one that gave up (or crashed) leaves the pid of its parent, which will start it again,
    in ``_given_up``."""

    def init(self, *args: Any) -> None:
        opts, parent = args
        self._given_up_key = (self.node.id, opts.table, opts.partition)
        self._parent_pid: otp.Pid | None = parent
        super().init(_flags_and_children, (opts,))

    def terminate(self, reason: Any) -> None:
        # Noted while the name is still held (it is released after terminate), so that a
        # caller finds one or the other. A stop its parent ordered (or the node's) is
        # ``shutdown`` too, but nothing brings the partition back after it.
        key = self._given_up_key
        restarted = self.gave_up or not otp.is_normal_exit(reason)
        if restarted and self._parent_pid is not None:
            _given_up[key] = self._parent_pid
        else:
            _given_up.pop(key, None)
        super().terminate(reason)


def _flags_and_children(opts: RaftOptions) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return dict(FLAGS), child_specs(opts)


def start_link(application: str, spec: dict[str, Any]) -> otp.Pid:
    """Start the partition's supervisor (registered ``raft_sup_<table>_<partition>``). Run
    by its own supervisor (as start functions are), whose pid it keeps as its parent's."""
    opts = normalize_spec(application, spec)
    store_options(opts)
    env.register_partition(opts.table, opts.partition, application)
    from waraft.partition import acceptor  # (part_sup is imported by acceptor's importers)

    acceptor.note_start()  # others may follow: see acceptor.STARTUP_GRACE
    # The supervisor that starts a partition runs on a scheduler: a directory made there
    # on a slow or hung disk stalled every process of that scheduler (DESIGN.md: blocking
    # work runs on the I/O threads).
    otp.blocking(os.makedirs, opts.database, exist_ok=True)
    pid = PartitionSupervisor.start_link(opts, otp.self_pid(), name=opts.supervisor_name)
    # Its name answers for the partition now. (A failed start leaves the mark: the parent
    # retries a restart, or gives up and so stops counting as alive.)
    forget_given_up(pid.node_id, opts.table, opts.partition)
    return pid


def child_spec(application: str) -> dict[str, Any]:
    """The template child of ``waraft.sup``'s simple_one_for_one supervisor."""
    return {
        "id": "wa_raft_part_sup",
        "start": (start_link, (application,)),
        "restart": "permanent",
        "shutdown": "infinity",
        "type": "supervisor",
    }


__all__ = [
    "DEFAULT_LOG_MODULE",
    "DEFAULT_STORAGE_MODULE",
    "FLAGS",
    "KNOWN_ARGS",
    "REQUIRED_ARGS",
    "PartitionSupervisor",
    "RaftOptions",
    "all_options",
    "check_spec",
    "child_spec",
    "child_specs",
    "default_name",
    "default_partition_path",
    "forget_given_up",
    "is_restarted_by_parent",
    "normalize_spec",
    "options",
    "prepare_spec",
    "registered_name",
    "registered_partition_path",
    "resolve_module",
    "start_link",
]
