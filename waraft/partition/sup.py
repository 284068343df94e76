"""The supervisor of an application's partitions (WARaft's ``wa_raft_sup``).

A ``simple_one_for_one`` supervisor (intensity 10 per second) registered ``raft_sup_<app>``:
each child is one partition's ``waraft.part_sup``. ``child_spec(app, args, options)`` is what an
application puts in its own tree (the quick start puts it under ``kernel_sup``); partitions can
also be started and stopped later with ``start_partition`` / ``stop_partition``.
"""

from __future__ import annotations

import logging
from typing import Any

from waraft import otp
from waraft.partition import acceptor, part_sup, server
from waraft.services import env

logger = logging.getLogger(__name__)

FLAGS = {"strategy": "simple_one_for_one", "intensity": 10, "period": 1}


def default_name(application: str) -> str:
    """``raft_sup_<app>``."""
    return f"raft_sup_{application}"


def child_spec(
    application: str,
    raft_args: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The child spec of the application's partition supervisor.

    ``raft_args`` lists the partitions to start with it (``{"table": ..., "partition": ...}``
    plus optional provider modules); ``options`` may give ``config_search_apps``. Arguments are
    checked here so that bad input fails before anything starts.
    """
    args = list(raft_args or [])
    for spec in args:
        part_sup.check_spec(spec)
    opts = dict(options or {})
    unknown = set(opts) - {"config_search_apps"}
    if unknown:
        raise ValueError(f"unknown waraft.sup options {sorted(unknown)}")
    return {
        "id": "wa_raft_sup",
        "start": (start_link, (application, args, opts)),
        "restart": "permanent",
        "shutdown": "infinity",
        "type": "supervisor",
    }


def start_link(
    application: str,
    raft_args: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> otp.Pid:
    """Start ``raft_sup_<app>`` and the given partitions under it.

    As WARaft warns, a partition that fails to start here fails this start after the
    supervisor exists; applications that need clean shutdown ordering pass no partitions and
    call ``start_partition`` later.
    """
    opts = dict(options or {})
    env.register_application(application, opts.get("config_search_apps"))
    part_sup.resolve_module(
        "waraft.partition.app"
    ).ensure_started()  # node-wide transport & catch-up
    with acceptor.starting_partitions():
        acceptor.answer_unserved_partitions()
        server.answer_unserved_calls()
        pid = otp.supervisor.start_link(
            dict(FLAGS), [part_sup.child_spec(application)], name=default_name(application)
        )
        for spec in raft_args or []:
            result = start_partition(pid, spec)
            if result[0] == "error":
                otp.exit(pid, "shutdown")
                raise otp.StartError(result[1])
    return pid


def start_partition(supervisor: otp.Target, spec: dict[str, Any]) -> Any:
    """Start one partition: ``("ok", pid)`` or ``("error", reason)``."""
    part_sup.check_spec(spec)
    return otp.supervisor.start_child(supervisor, [spec])


def start_partition_under_application(application: str, spec: dict[str, Any]) -> Any:
    """``start_partition`` under ``raft_sup_<app>``."""
    return start_partition(default_name(application), spec)


def stop_partition(supervisor: otp.Target, table_or_pid: Any, partition: int | None = None) -> Any:
    """Stop a partition given its supervisor's pid, or its table and partition number.

    ``"ok"``, or ``("error", "not_found")`` when it is not running.
    """
    if partition is None:
        return otp.supervisor.terminate_child(supervisor, table_or_pid)
    pid = otp.whereis(part_sup.registered_name(table_or_pid, partition))
    if pid is None:
        return ("error", "not_found")
    return otp.supervisor.terminate_child(supervisor, pid)


def stop_partition_under_application(
    application: str, table_or_pid: Any, partition: int | None = None
) -> Any:
    """``stop_partition`` under ``raft_sup_<app>``."""
    return stop_partition(default_name(application), table_or_pid, partition)


__all__ = [
    "FLAGS",
    "child_spec",
    "default_name",
    "start_link",
    "start_partition",
    "start_partition_under_application",
    "stop_partition",
    "stop_partition_under_application",
]
