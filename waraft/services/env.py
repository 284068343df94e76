"""Configuration lookup (WARaft's ``wa_raft_env``, digest §7.5 and §7.6).

Erlang keeps settings in per-application environments; so does this module, per node (several
nodes may share one Python process): ``set_env(app, key, value)``, ``unset_env``,
``get_app_env``. WARaft's own application is called ``"waraft"`` here (``RAFT_APP``).

Lookup, as in WARaft:

* A *scope* is an application name (its registered search apps are consulted, see
  ``register_application``), a ``(table, partition)`` pair (the application the partition was
  registered under, ``register_partition``), or an explicit list of application names.
* ``get_env(scope, key, default)`` looks ``key`` up in each search app in order, then in the
  ``"waraft"`` app. A key may be ``(primary, fallback)``: the search apps are asked for
  ``primary`` and the ``"waraft"`` app for ``fallback``.
* ``get_table_env(scope, table, key, default)`` is the same, except that a value of the form
  ``("table_overrides", {table: value}, app_default)`` resolves per table.
* ``raft_config(key)`` reads a global key from the ``"waraft"`` app only, defaulting to
  ``GLOBAL_DEFAULTS``.
* Nothing is cached: every call reads the current values, so settings are live-tunable.
  ``settings_for(app, table)`` resolves a fresh ``waraft.core.settings.Settings``.

Divergence: an application that was never registered searches ``[app]`` (WARaft searches
nothing but ``wa_raft``), and a ``table_overrides`` value in the ``"waraft"`` app resolves per
table too.

Node-local state is keyed by ``waraft.otp.node.current().id``; without ``waraft.otp.node`` every
caller shares ``DEFAULT_NODE_ID``. Mutations take a lock; reads do not.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, Final, TypeAlias

from waraft.core.settings import ELECTION_MAX_WEIGHT, Settings

RAFT_APP: Final = "waraft"
DEFAULT_NODE_ID: Final = "nonode@nohost"
TABLE_OVERRIDES: Final = "table_overrides"

Key: TypeAlias = str | tuple[str, str]
Scope: TypeAlias = str | tuple[str, int] | Sequence[str]

GLOBAL_DEFAULTS: Final[Mapping[str, Any]] = {
    "raft_metrics_module": None,
    "raft_rpc_call_timeout": 10_000,
    "raft_storage_call_timeout": 60_000,
    "raft_max_snapshot_catchup": 5,
    "raft_max_incoming_snapshot_transfers": 5,
    "raft_max_incoming_witness_snapshot_transfers": 10,
    "raft_catchup_rpc_timeout_ms": 5000,
    "raft_transport_threads": 1,
    "transport_idle_timeout_secs": 30,
    "raft_transport_inactive_info_limit": 30,
    "dist_transport_chunk_size": 1024 * 1024,
    "dist_transport_max_inflight": 4,
    "dist_transport_ack_timeout_ms": 5000,  # hard-coded in WARaft
    "raft_transport_scan_interval_ms": 30000,  # hard-coded in WARaft
    "raft_server_message_queue_off_heap": True,
    # Ours (snapshot admission, waraft.transport): free space never promised to an incoming
    # transport (the larger of the two), and incoming transports one peer may hold per pool.
    "raft_transport_disk_reserve_bytes": 1 << 30,
    "raft_transport_disk_reserve_percent": 2.0,
    "raft_max_incoming_transports_per_peer": 2,
}
"""Global keys (read from the ``"waraft"`` app only) and their defaults."""

APP_DEFAULTS: Final[Mapping[str, Any]] = {
    "raft_database": None,  # required: database_path() raises when it is missing
    "raft_leader_eligible": True,
    "raft_election_weight": ELECTION_MAX_WEIGHT,
    "transport_retain_min_secs": 300,
    "raft_distribution_module": "waraft.distribution",
    "raft_log_module": "waraft.log.memory",
    "raft_label_module": None,
    "raft_storage_module": "waraft.storage.memory",
    # Provider-specific options, handed to the storage provider as ``StorageOptions.extra``
    # (e.g. ``{"lmdb_sync": true}`` for ``waraft.storage.node_lmdb``); None: none.
    "raft_storage_options": None,
    "raft_transport_module": "waraft.transport.dist_transport",
    # Not WARaft (issue 13): heartbeats of every partition towards a node travel as one frame
    # per window (``waraft.partition.heartbeats``); False sends each partition's own.
    "raft_coalesced_heartbeats": True,
    "raft_coalesced_heartbeat_window_ms": 20,
}
"""App-scoped keys and their defaults (module keys name Python modules)."""

TABLE_DEFAULTS: Final[Mapping[str, Any]] = {
    **{f.name: f.default for f in fields(Settings) if f.name not in APP_DEFAULTS},
    "raft_snapshot_catchup_overloaded_backoff_ms": 10_000,
    "raft_snapshot_catchup_completed_backoff_ms": 20_000,
    "raft_snapshot_catchup_failed_backoff_ms": 10_000,
    "raft_snapshot_catchup_precheck": False,
    "raft_snapshot_catchup_precheck_timeout_ms": 1000,
    "raft_storage_witness_apply_interval": 5000,
}
"""Table-scoped keys (``table_overrides`` allowed) and their defaults."""

FALLBACK_KEYS: Final[Mapping[str, str]] = {
    "raft_max_pending_applies": "raft_apply_queue_max_size",
    "raft_max_retained_entries": "max_log_rotate_delay",
    "raft_rotate_by_trim_index": "use_trim_index",
    "raft_transport_module": "transport_module",
}
"""Keys whose ``"waraft"``-app lookup uses an older name (WARaft's ``{Primary, Fallback}``)."""

# WARaft's boolean settings compare against one atom: ``=:= true`` (only True enables) or
# ``=/= false`` (anything but False enables).
_ONLY_TRUE: Final = frozenset(
    {
        "raft_election_pre_vote",
        "raft_candidate_buffer_requests",
        "raft_rotate_by_trim_index",
        "raft_snapshot_catchup_precheck",
        "raft_log_heartbeat_binary_entries",
    }
)
_NOT_FALSE: Final = frozenset(
    {
        "raft_leader_eligible",
        "raft_leader_check_quorum",
        "raft_coalesced_heartbeats",
        "raft_session_owners",
    }
)

_MISSING: Final = object()

MAX_SETTING_INT: Final = 2**53
"""The largest integer setting (sizes, counts, milliseconds): far beyond any sane value, and
small enough for every timer and wire format."""

_AT_LEAST_ONE: Final = frozenset(
    {
        "raft_election_timeout_ms",
        "raft_election_timeout_ms_max",
        "raft_heartbeat_interval_ms",
        # At 0 these broke the node instead of meaning anything: no entry was ever applied
        # (and the partitions crashed over "missing" committed entries), or every write or
        # read to a partition it led was refused after a timeout.
        "raft_apply_log_batch_size",
        "raft_max_pending_applies",
        "raft_max_pending_high_priority_commits",
        "raft_max_pending_reads",
        "raft_max_reads_per_batch",
        # At 0 no peer could ever send this node a snapshot: every catch-up refused.
        "raft_max_incoming_transports_per_peer",
    }
)
_OPTIONAL_INT: Final = frozenset({"raft_handover_max_unapplied_entries", "raft_max_log_records"})
_DICT_SETTINGS: Final = frozenset({"raft_storage_options"})
_PERCENT_SETTINGS: Final = frozenset({"raft_transport_disk_reserve_percent"})


class BadSetting(ValueError):
    """A setting with a value of the wrong type or out of range."""


def check_setting(key: str, value: Any) -> None:
    """Check one setting's type and range (its default's type: bool, int >= 0 (>= 1 for the
    election and heartbeat timeouts and the other ``_AT_LEAST_ONE`` limits), str for modules
    and paths; ``raft_election_weight`` in ``0..ELECTION_MAX_WEIGHT``; a percentage, such as
    ``raft_transport_disk_reserve_percent``, a number from 0 to 100). Raises
    :class:`BadSetting` saying what was expected; an unknown key raises it too."""
    for table in (GLOBAL_DEFAULTS, APP_DEFAULTS, TABLE_DEFAULTS):
        if key in table:
            default = table[key]
            break
    else:
        if key not in FALLBACK_KEYS.values():
            raise BadSetting(f"unknown setting {key!r}")
        default = _MISSING
    shown = repr(value)[:60]
    if key in _DICT_SETTINGS:
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(k, str) for k in value)
        ):
            raise BadSetting(f"{key} must be a table (a dict with string keys), got {shown}")
        return
    if isinstance(default, bool):
        if type(value) is not bool:
            raise BadSetting(f"{key} must be true or false, got {shown}")
    elif key in _PERCENT_SETTINGS:
        _check_percent(key, value)
    elif isinstance(default, int) or key in _OPTIONAL_INT or default is _MISSING:
        if value is None and (key in _OPTIONAL_INT or default is _MISSING):
            return
        if type(value) is not int:
            raise BadSetting(f"{key} must be an integer, got {shown}")
        low = 1 if key in _AT_LEAST_ONE else 0
        high = ELECTION_MAX_WEIGHT if key == "raft_election_weight" else MAX_SETTING_INT
        if not low <= value <= high:
            raise BadSetting(f"{key} must be between {low} and {high}, got {value}")
    elif (isinstance(default, str) or default is None) and not (
        (isinstance(value, str) and value) or (value is None and default is None)
    ):
        raise BadSetting(f"{key} must be a non-empty string, got {shown}")


def _check_percent(key: str, value: Any) -> None:
    """A percentage: a number (an int will do) from 0 to 100; true/false are not numbers."""
    if type(value) not in (int, float) or not 0 <= value <= 100:
        raise BadSetting(f"{key} must be a number from 0 to 100, got {repr(value)[:60]}")


def check_settings(settings: Mapping[str, Any]) -> None:
    """:func:`check_setting` for each, then the relations between them (an election timeout
    range that is not a range, a heartbeat no shorter than the election timeout)."""
    for key, value in settings.items():
        check_setting(key, value)
    low = settings.get("raft_election_timeout_ms", TABLE_DEFAULTS["raft_election_timeout_ms"])
    high = settings.get(
        "raft_election_timeout_ms_max", TABLE_DEFAULTS["raft_election_timeout_ms_max"]
    )
    beat = settings.get("raft_heartbeat_interval_ms", TABLE_DEFAULTS["raft_heartbeat_interval_ms"])
    if high < low:
        raise BadSetting(
            f"raft_election_timeout_ms_max ({high}) is below raft_election_timeout_ms ({low})"
        )
    if beat >= low:
        raise BadSetting(
            f"raft_heartbeat_interval_ms ({beat}) must be below raft_election_timeout_ms ({low})"
        )


class NoConfiguredDatabasePath(LookupError):
    """``raft_database`` is not set for the scope (WARaft's ``no_configured_database_path``)."""

    def __init__(self, scope: Any) -> None:
        super().__init__(
            f"no_configured_database_path: set the 'raft_database' key for {scope!r} "
            f"(or for the {RAFT_APP!r} application) to the root directory of the Raft data"
        )
        self.scope = scope


# -- node-local stores -------------------------------------------------------------------------

_node_module: Any = None
_node_checked = False


def current_node_id() -> str:
    """The id of the calling thread's node (``DEFAULT_NODE_ID`` without ``waraft.otp.node``)."""
    global _node_module, _node_checked
    if not _node_checked:
        try:
            _node_module = importlib.import_module("waraft.otp.node")
        except ImportError:
            _node_module = None
        _node_checked = True
    if _node_module is None:
        return DEFAULT_NODE_ID
    return str(_node_module.current().id)


class _NodeEnv:
    """One node's application environments and registrations."""

    __slots__ = ("apps", "envs", "generation", "partitions", "settings", "weights")

    def __init__(self) -> None:
        self.envs: dict[str, dict[str, Any]] = {}
        self.apps: dict[str, tuple[str, ...]] = {}
        self.partitions: dict[tuple[str, int], str] = {}
        self.weights: dict[str, int] = {}
        # Bumped by every change made through this module, under _lock: settings_for's cache
        # (by scope and table: the generation it was resolved at, and the result) is valid
        # while the generation is unchanged.
        self.generation = 0
        self.settings: dict[tuple[Any, str], tuple[int, Settings]] = {}


_lock = threading.Lock()
_nodes: dict[str, _NodeEnv] = {}


def _node_env(node: str | None) -> _NodeEnv:
    key = current_node_id() if node is None else node
    env = _nodes.get(key)
    if env is None:
        with _lock:
            env = _nodes.setdefault(key, _NodeEnv())
    return env


def set_env(app: str, key: str, value: Any, *, node: str | None = None) -> None:
    """Set ``key`` in application ``app``'s environment (Erlang's ``application:set_env``)."""
    env = _node_env(node)
    with _lock:
        env.generation += 1
        env.envs.setdefault(app, {})[key] = value


def set_envs(app: str, values: Mapping[str, Any], *, node: str | None = None) -> None:
    """Set several keys of ``app`` at once."""
    env = _node_env(node)
    with _lock:
        env.generation += 1
        env.envs.setdefault(app, {}).update(values)


def unset_env(app: str, key: str, *, node: str | None = None) -> None:
    """Remove ``key`` from ``app``'s environment (no error when it is not set)."""
    env = _node_env(node)
    with _lock:
        env.generation += 1
        app_env = env.envs.get(app)
        if app_env is not None:
            app_env.pop(key, None)


def get_app_env(app: str, key: str, default: Any = None, *, node: str | None = None) -> Any:
    """``key`` from ``app``'s own environment only (Erlang's ``application:get_env/3``)."""
    app_env = _node_env(node).envs.get(app)
    if app_env is None:
        return default
    return app_env.get(key, default)


def clear(*, node: str | None = None) -> None:
    """Forget every environment, registration and override of the node (tests)."""
    key = current_node_id() if node is None else node
    with _lock:
        _nodes.pop(key, None)


# -- registrations -----------------------------------------------------------------------------


def register_application(
    app: str, search_apps: Sequence[str] | None = None, *, node: str | None = None
) -> None:
    """Record ``app``'s config search apps (``waraft.sup`` does this; default ``[app]``)."""
    env = _node_env(node)
    with _lock:
        env.generation += 1
        env.apps[app] = tuple(search_apps) if search_apps is not None else (app,)


def unregister_application(app: str, *, node: str | None = None) -> None:
    env = _node_env(node)
    with _lock:
        env.generation += 1
        env.apps.pop(app, None)


def register_partition(table: str, partition: int, app: str, *, node: str | None = None) -> None:
    """Record which application runs ``(table, partition)`` (for ``(table, partition)`` scopes)."""
    env = _node_env(node)
    with _lock:
        env.generation += 1
        env.partitions[(table, partition)] = app


def is_partition_registered(table: str, partition: int, *, node: str | None = None) -> bool:
    """Whether ``(table, partition)`` was ever started on the node (``register_partition``;
    a partition that stopped or is restarting stays registered)."""
    return (table, partition) in _node_env(node).partitions


def partition_named(name: str, prefix: str) -> tuple[str, int] | None:
    """The ``(table, partition)`` that a per-partition process name ``<prefix><table>_<n>``
    (``default_name`` of a partition's processes) names; None if ``name`` names none. The
    names come from the network (calls and casts to processes that do not exist): ASCII
    digits only (``"²".isdigit()`` is true, ``int`` refuses it), at most 20 of them."""
    if not name.startswith(prefix):
        return None
    table, _, number = name[len(prefix) :].rpartition("_")
    if not table or not number.isascii() or not number.isdigit() or len(number) > 20:
        return None
    return table, int(number)


def unregister_partition(table: str, partition: int, *, node: str | None = None) -> None:
    env = _node_env(node)
    with _lock:
        env.generation += 1
        env.partitions.pop((table, partition), None)


def search_apps(scope: Scope, *, node: str | None = None) -> tuple[str, ...]:
    """The applications consulted (before ``"waraft"``) for ``scope``."""
    env = _node_env(node)
    if isinstance(scope, str):
        return env.apps.get(scope, (scope,))
    if (
        isinstance(scope, tuple)
        and len(scope) == 2
        and isinstance(scope[0], str)
        and isinstance(scope[1], int)
    ):
        app = env.partitions.get((scope[0], scope[1]))
        return () if app is None else env.apps.get(app, (app,))
    return tuple(str(a) for a in scope)


# -- lookup ------------------------------------------------------------------------------------


def _split(key: Key) -> tuple[str, str]:
    if isinstance(key, tuple):
        return key[0], key[1]
    return key, key


def _resolve_table(value: Any, table: str) -> Any:
    if (
        isinstance(value, tuple | list)
        and len(value) == 3
        and value[0] == TABLE_OVERRIDES
        and isinstance(value[1], Mapping)
    ):
        return value[1].get(table, value[2])
    return value


def _lookup(scope: Scope, key: Key, table: str | None, node: str | None) -> Any:
    primary, fallback = _split(key)
    env = _node_env(node)
    envs = env.envs
    for app in search_apps(scope, node=node):
        app_env = envs.get(app)
        if app_env is not None:
            value = app_env.get(primary, _MISSING)
            if value is not _MISSING:
                return value if table is None else _resolve_table(value, table)
    raft_env = envs.get(RAFT_APP)
    if raft_env is None:
        return _MISSING
    value = raft_env.get(fallback, _MISSING)
    if value is _MISSING or table is None:
        return value
    return _resolve_table(value, table)


def lookup_env(scope: Scope, key: Key, *, node: str | None = None) -> tuple[bool, Any]:
    """WARaft's ``get_env/2``: ``(True, value)`` or ``(False, None)``."""
    value = _lookup(scope, key, None, node)
    return (False, None) if value is _MISSING else (True, value)


def get_env(scope: Scope, key: Key, default: Any = None, *, node: str | None = None) -> Any:
    """WARaft's ``get_env/3`` (search apps, then the ``"waraft"`` app, then ``default``)."""
    value = _lookup(scope, key, None, node)
    return default if value is _MISSING else value


def lookup_table_env(
    scope: Scope, table: str, key: Key, *, node: str | None = None
) -> tuple[bool, Any]:
    """WARaft's ``get_table_env/3``: ``(True, value)`` or ``(False, None)``."""
    value = _lookup(scope, key, table, node)
    return (False, None) if value is _MISSING else (True, value)


def get_table_env(
    scope: Scope, table: str, key: Key, default: Any = None, *, node: str | None = None
) -> Any:
    """WARaft's ``get_table_env/4``: like ``get_env`` with ``table_overrides`` resolved."""
    value = _lookup(scope, key, table, node)
    return default if value is _MISSING else value


def raft_config(key: str, default: Any = _MISSING, *, node: str | None = None) -> Any:
    """A global key from the ``"waraft"`` app (WARaft's ``?RAFT_CONFIG``), defaulting to
    ``GLOBAL_DEFAULTS[key]`` (``None`` for unknown keys) unless ``default`` is given."""
    if default is _MISSING:
        default = GLOBAL_DEFAULTS.get(key)
    return get_app_env(RAFT_APP, key, default, node=node)


def _key(name: str) -> Key:
    fallback = FALLBACK_KEYS.get(name)
    return name if fallback is None else (name, fallback)


def _normalise(name: str, value: Any) -> Any:
    if name in _ONLY_TRUE:
        return value is True
    if name in _NOT_FALSE:
        return value is not False
    return value


def app_setting(scope: Scope, name: str, *, node: str | None = None) -> Any:
    """An app-scoped key with its fallback name and ``APP_DEFAULTS`` default."""
    return _normalise(name, get_env(scope, _key(name), APP_DEFAULTS.get(name), node=node))


def table_setting(scope: Scope, table: str, name: str, *, node: str | None = None) -> Any:
    """A table-scoped key with its fallback name and ``TABLE_DEFAULTS`` default."""
    value = get_table_env(scope, table, _key(name), TABLE_DEFAULTS.get(name), node=node)
    return _normalise(name, value)


def database_path(scope: Scope, *, node: str | None = None) -> str:
    """The root data directory (``raft_database``); raises ``NoConfiguredDatabasePath``."""
    found, root = lookup_env(scope, "raft_database", node=node)
    if not found or root is None:
        raise NoConfiguredDatabasePath(scope)
    return str(root)


def election_weight(scope: Scope, *, node: str | None = None) -> int:
    """The election weight (0 to 10): the override for the first search app, else the setting."""
    apps = search_apps(scope, node=node)
    if apps:
        override = _node_env(node).weights.get(apps[0])
        if override is not None:
            return override
    return int(get_env(apps, "raft_election_weight", ELECTION_MAX_WEIGHT, node=node))


def set_election_weight_override(app: str, weight: int, *, node: str | None = None) -> None:
    """Override ``app``'s election weight (WARaft keeps it in a persistent_term)."""
    if not 0 <= weight <= ELECTION_MAX_WEIGHT:
        raise ValueError(f"election weight must be within 0..{ELECTION_MAX_WEIGHT}")
    env = _node_env(node)
    with _lock:
        env.generation += 1
        env.weights[app] = weight


def clear_election_weight_override(app: str, *, node: str | None = None) -> None:
    env = _node_env(node)
    with _lock:
        env.generation += 1
        env.weights.pop(app, None)


_APP_SCOPED_SETTINGS: Final = ("raft_leader_eligible", "raft_election_weight")
_TABLE_SCOPED_SETTINGS: Final = tuple(
    f.name for f in fields(Settings) if f.name not in _APP_SCOPED_SETTINGS
)


def settings_for(scope: Scope, table: str, *, node: str | None = None) -> Settings:
    """Every ``Settings`` field resolved now for ``scope`` (an app, usually) and ``table``.

    Remembered until the node's environment next changes through this module (``set_env``,
    registrations, overrides): resolving every field walks the search apps per field, about
    0.3 ms, and each partition server re-resolves once a second. A value mutated in place
    (a table's dict changed without ``set_env``) is not seen until the next change."""
    env = _node_env(node)
    key = (scope, table) if isinstance(scope, (str, tuple)) else None
    if key is not None:
        cached = env.settings.get(key)
        if cached is not None and cached[0] == env.generation:
            return cached[1]
    generation = env.generation
    settings = _resolve_settings(scope, table, node)
    if key is not None:
        env.settings[key] = (generation, settings)
    return settings


def _resolve_settings(scope: Scope, table: str, node: str | None) -> Settings:
    values: dict[str, Any] = {
        "raft_leader_eligible": app_setting(scope, "raft_leader_eligible", node=node),
        "raft_election_weight": election_weight(scope, node=node),
    }
    for name in _TABLE_SCOPED_SETTINGS:
        values[name] = table_setting(scope, table, name, node=node)
    return Settings(**values)


__all__ = [
    "APP_DEFAULTS",
    "DEFAULT_NODE_ID",
    "FALLBACK_KEYS",
    "GLOBAL_DEFAULTS",
    "RAFT_APP",
    "TABLE_DEFAULTS",
    "TABLE_OVERRIDES",
    "BadSetting",
    "Key",
    "NoConfiguredDatabasePath",
    "Scope",
    "app_setting",
    "check_setting",
    "check_settings",
    "clear",
    "clear_election_weight_override",
    "current_node_id",
    "database_path",
    "election_weight",
    "get_app_env",
    "get_env",
    "get_table_env",
    "is_partition_registered",
    "lookup_env",
    "lookup_table_env",
    "partition_named",
    "raft_config",
    "register_application",
    "register_partition",
    "search_apps",
    "set_election_weight_override",
    "set_env",
    "set_envs",
    "table_setting",
    "unregister_application",
    "unregister_partition",
    "unset_env",
]
