"""The node-local registry of partitions' options (WARaft keeps ``#raft_options{}`` in
persistent_term).

``waraft.partition.part_sup`` builds a partition's :class:`RaftOptions` and stores them here
before it starts the partition's processes; anything on the node (the file transport, snapshot
catch-up, the status table) finds a partition's names, directories and providers here without
importing the partition's actors. Provider modules named in configuration are loaded by
:func:`resolve_module`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from waraft.core.types import Identity
from waraft.services import env
from waraft.services.queues import Queues

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RaftOptions:
    """Everything a partition's processes need to know (WARaft's ``#raft_options{}``)."""

    application: str
    table: str
    partition: int
    self_id: Identity
    database: str
    acceptor_name: str
    log_name: str
    queue_name: str
    server_name: str
    storage_name: str
    supervisor_name: str
    transport_cleanup_name: str
    transport_directory: str
    queues: Queues
    log_module: Any
    storage_module: Any
    label_module: Any
    distribution_module: Any
    transport_module: Any

    @property
    def identifier(self) -> tuple[str, str, int]:
        """WARaft's ``#raft_identifier{application, table, partition}``."""
        return (self.application, self.table, self.partition)


_options_lock = threading.Lock()
_options: dict[tuple[str, str, int], RaftOptions] = {}


def options(table: str, partition: int, *, node: str | None = None) -> RaftOptions | None:
    """The options the partition was last started with on this node, if any."""
    return _options.get((node or env.current_node_id(), table, partition))


def all_options(*, node: str | None = None) -> list[RaftOptions]:
    """Every partition known on this node, ordered by (table, partition)."""
    here = node or env.current_node_id()
    found = [o for (n, _, _), o in _options.items() if n == here]
    return sorted(found, key=lambda o: (o.table, o.partition))


def store_options(opts: RaftOptions) -> None:
    """Register (or replace) a partition's options on its node; a changed set is logged."""
    key = (opts.self_id.node, opts.table, opts.partition)
    with _options_lock:
        previous = _options.get(key)
        if previous is not None and _comparable(previous) != _comparable(opts):
            logger.warning(
                "storing changed options for partition %s/%s", opts.table, opts.partition
            )
        _options[key] = opts


def _comparable(opts: RaftOptions) -> tuple[Any, ...]:
    # The queues object is fresh on every normalisation; everything else must match.
    return tuple(getattr(opts, f) for f in RaftOptions.__slots__ if f != "queues")


def resolve_module(value: Any) -> Any:
    """A provider given as a class/object or as ``"package.module:Name"`` text."""
    if not isinstance(value, str):
        return value
    module_name, _, attr = value.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load provider {value!r}: {exc}") from exc


__all__ = ["RaftOptions", "all_options", "options", "resolve_module", "store_options"]
