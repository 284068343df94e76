"""The supervisor of an application's partitions (WARaft's ``wa_raft_sup``).

A ``simple_one_for_one`` supervisor (intensity 10 per second) registered ``raft_sup_<app>``:
each child is one partition's ``waraft.part_sup``. ``child_spec(app, args, options)`` is what an
application puts in its own tree (the quick start puts it under ``kernel_sup``); partitions can
also be started and stopped later with ``start_partition`` / ``stop_partition`` (which finds
a partition among its children in any state: ``PartitionsSupervisor``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

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
        pid = PartitionsSupervisor.start_link(application, name=default_name(application))
        for spec in raft_args or []:
            result = start_partition(pid, spec)
            if result[0] == "error":
                otp.exit(pid, "shutdown")
                raise otp.StartError(result[1])
    return pid


STOP_PARTITION: Final = "stop_partition"
"""The call ``(STOP_PARTITION, pid | (table, partition))`` to ``raft_sup_<app>``."""


class PartitionsSupervisor(otp.supervisor.Supervisor):
    """``raft_sup_<app>``: the simple_one_for_one supervisor of an application's partition
    supervisors, which also stops a partition by its table and number (``stop_partition``).

    It finds the partition among its own children, where it is whatever its state: running,
    being restarted by its one_for_all supervisor, gone after that one gave up with its
    EXIT not handled yet, or with a failed restart to be tried again. Looked up anywhere
    else (the registered name), a partition between two incarnations was not found and then
    started again."""

    def init(self, *args: Any) -> None:
        (application,) = args
        super().init(_flags_and_children, (application,))

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if type(request) is tuple and len(request) == 2 and request[0] == STOP_PARTITION:
            return self._stop_partition(request[1])
        return super().handle_call(request, from_)

    def _stop_partition(self, which: Any) -> Any:
        """Stop and forget the children ``which`` names (terminate_child + delete_child):
        ``"ok"``, or ``("error", "not_found")``. A pid names the incarnation it is, or was
        before a restart still pending; a pid that is none of ours is ``"ok"`` once dead,
        as ``terminate_child`` answers."""
        found = [(key, args) for key, args in self._dynamic_children() if _names(which, key, args)]
        if not found:
            dead = type(which) is otp.Pid and not which.is_alive()
            return "ok" if dead else ("error", "not_found")
        for key, args in found:
            self._stop_dynamic_child(key)
            spec = args[-1]
            # Stopped for good: no longer "restarting" (a supervisor that gave up left the mark).
            part_sup.forget_given_up(self.node.id, spec["table"], spec["partition"])
        return "ok"


def _names(which: Any, key: Any, args: tuple[Any, ...]) -> bool:
    """Whether ``which`` (a pid, or ``(table, partition)``) names the child ``key`` started
    with ``args`` (``(application, spec)``)."""
    if type(which) is otp.Pid:
        return key is which or getattr(key, "old", None) is which
    spec = args[-1]
    return bool((spec["table"], spec["partition"]) == which)


def _flags_and_children(application: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return dict(FLAGS), [part_sup.child_spec(application)]


def start_partition(supervisor: otp.Target, spec: dict[str, Any]) -> Any:
    """Start one partition: ``("ok", pid)`` or ``("error", reason)``."""
    part_sup.check_spec(spec)
    return otp.supervisor.start_child(supervisor, [spec])


def start_partition_under_application(application: str, spec: dict[str, Any]) -> Any:
    """``start_partition`` under ``raft_sup_<app>``."""
    return start_partition(default_name(application), spec)


def stop_partition(supervisor: otp.Target, table_or_pid: Any, partition: int | None = None) -> Any:
    """Stop a partition given its supervisor's pid, or its table and partition number, and
    forget it (``supervisor:terminate_child`` + ``delete_child``): nothing starts it again.

    ``"ok"`` whatever state the partition is in (running, being restarted, or about to be
    restarted after its supervisor gave up); ``("error", "not_found")`` when ``supervisor``
    has no such partition. Afterwards the partition's calls answer ``no_such_partition``.
    """
    if partition is None:
        if type(table_or_pid) is not otp.Pid:
            return ("error", "simple_one_for_one")  # as terminate_child by id answers
        which: Any = table_or_pid
    else:
        which = (table_or_pid, partition)
    return otp.call(supervisor, (STOP_PARTITION, which), None)


def stop_partition_under_application(
    application: str, table_or_pid: Any, partition: int | None = None
) -> Any:
    """``stop_partition`` under ``raft_sup_<app>``."""
    return stop_partition(default_name(application), table_or_pid, partition)


__all__ = [
    "FLAGS",
    "STOP_PARTITION",
    "PartitionsSupervisor",
    "child_spec",
    "default_name",
    "start_link",
    "start_partition",
    "start_partition_under_application",
    "stop_partition",
    "stop_partition_under_application",
]
