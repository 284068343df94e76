"""The client front door of a partition (WARaft's ``wa_raft_acceptor``).

The acceptor admits commits and strong reads against the partition's ``Queues`` and hands each
caller's reply handle to the server; it never answers a successful request itself — storage does,
once the entry is applied (or the read's index is reached). Rejections are immediate:
``commit_queue_full``, ``apply_queue_full``, ``read_queue_full``.

Every API function takes the acceptor as a registered name, a pid, or a ``(name, node)`` address
(another node). Call failures are mapped as WARaft maps them: a timeout is
``("error", "timeout")``; a missing process, a node that is down or a process shutting down is
``("error", "unreachable")``; any other exit is ``("error", ("call_error", reason))``.

Besides WARaft's API, ``commit_batch`` / ``read_batch`` casts admit many requests at once and
reach the server as one message: the hot path of the client library and of ``waraft.dist``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from waraft import otp
from waraft.core import events
from waraft.core.types import Priority
from waraft.part_sup import RaftOptions
from waraft.queue import Queues

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0  # raft_rpc_call_timeout, seconds


def default_name(table: str, partition: int) -> str:
    """``raft_acceptor_<table>_<partition>``."""
    return f"raft_acceptor_{table}_{partition}"


def priority_of(value: Any) -> Priority:
    """``"high"`` / ``"low"`` (or a ``Priority``) → ``Priority``; anything else is an error."""
    if isinstance(value, Priority):
        return value
    try:
        return Priority(value)
    except ValueError:
        raise ValueError(f"priority must be 'high' or 'low', got {value!r}") from None


def check_op(op: Any) -> tuple[Any, Any]:
    """A commit op is ``(key, command)`` with a command that is not ``None``."""
    if not isinstance(op, (tuple, list)) or len(op) != 2:
        raise ValueError(f"a commit op is a (key, command) pair, got {op!r}")
    if op[1] is None:
        raise ValueError("a command must not be None")
    return (op[0], op[1])


class Acceptor(otp.Process):
    """Admission control in front of the partition's server."""

    trap_exit = True

    def init(self, options: RaftOptions) -> None:
        self.name = options.acceptor_name
        self.server = options.server_name
        self.queues: Queues = options.queues
        logger.info("acceptor %s starting", self.name)

    def terminate(self, reason: Any) -> None:
        logger.info("acceptor %s terminating: %r", self.name, reason)

    # -- calls ----------------------------------------------------------------------------------

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        kind = request[0]
        if kind == "commit":
            _, op, priority = request
            return self._single(self._commit([(from_, op)], priority))
        if kind == "read":
            _, command, min_index = request
            return self._single(self._read([(from_, command, min_index)]))
        if kind == "adjust_config":
            _, action, index = request
            return self._adjust_config(from_, action, index)
        logger.error("acceptor %s got an unexpected call %r", self.name, request)
        return otp.NOREPLY

    def handle_cast(self, msg: Any) -> None:
        kind = msg[0]
        if kind == "commit_batch":
            self._reject_tail(msg[1], self._commit(msg[1], msg[2]))
        elif kind == "read_batch":
            self._reject_tail(msg[1], self._read(msg[1]))
        elif kind == "adjust_config":
            _, from_, action, index = msg
            result = self._adjust_config(from_, action, index)
            if result is not otp.NOREPLY and from_ is not None:
                from_.reply(result)
        else:
            logger.error("acceptor %s got an unexpected cast %r", self.name, msg)

    # -- admission ------------------------------------------------------------------------------

    def _commit(
        self, items: Sequence[tuple[Any, Any]], priority: Priority
    ) -> tuple[int, str | None]:
        """Admit commits in order and forward the admitted ones to the server in one message.

        Returns how many were admitted and why the rest were rejected.
        """
        admitted, reason = self.queues.commits_started(len(items), priority)
        if admitted:
            batch = items if admitted == len(items) else items[:admitted]
            otp.cast(self.server, events.CommitBatch(batch, priority))
        if reason is not None:
            logger.warning(
                "acceptor %s rejecting %d commits: %s", self.name, len(items) - admitted, reason
            )
        return admitted, reason

    def _read(self, items: Sequence[tuple[Any, Any, int | None]]) -> tuple[int, str | None]:
        """Admit strong reads like ``_commit`` admits commits."""
        admitted, reason = self.queues.reserve_reads(len(items))
        if admitted:
            batch = items if admitted == len(items) else items[:admitted]
            otp.cast(self.server, events.ReadBatch(batch))
        if reason is not None:
            logger.warning(
                "acceptor %s rejecting %d reads: %s", self.name, len(items) - admitted, reason
            )
        return admitted, reason

    def _adjust_config(self, from_: Any, action: Any, index: int | None) -> Any:
        admitted, reason = self.queues.commits_started(1, Priority.HIGH)
        if not admitted:
            return ("error", reason)
        otp.cast(
            self.server,
            events.AdjustConfig(from_, action, expected_index=index, reply_on_apply=True),
        )
        return otp.NOREPLY

    @staticmethod
    def _single(outcome: tuple[int, str | None]) -> Any:
        # The server or storage answers an admitted request; a rejection is answered now.
        admitted, reason = outcome
        return otp.NOREPLY if admitted else ("error", reason)

    @staticmethod
    def _reject_tail(items: Sequence[Any], outcome: tuple[int, str | None]) -> None:
        admitted, reason = outcome
        if reason is None:
            return
        for item in items[admitted:]:
            if item[0] is not None:
                item[0].reply(("error", reason))


def start_link(options: RaftOptions) -> otp.Pid:
    """Start the acceptor registered as ``options.acceptor_name``."""
    pid: otp.Pid = Acceptor.start_link(options, name=options.acceptor_name)
    return pid


def child_spec(options: RaftOptions) -> dict[str, Any]:
    """WARaft's child spec: transient, 30 s shutdown."""
    return {
        "id": "wa_raft_acceptor",
        "start": (start_link, (options,)),
        "restart": "transient",
        "shutdown": 30000,
    }


# -- the API ------------------------------------------------------------------------------------


def call(acceptor: otp.Target, request: Any, timeout: float | None) -> Any:
    """``otp.call`` with WARaft's mapping of call failures to error results."""
    try:
        result = otp.call(acceptor, request, timeout)
    except otp.ExitError as exc:
        return map_exit(exc.reason)
    return result


def map_exit(reason: Any) -> tuple[str, Any]:
    """WARaft's ``call/3`` error mapping."""
    if reason == "timeout":
        return ("error", "timeout")
    if reason in ("noproc", "shutdown", "normal", "killed") or (
        isinstance(reason, tuple) and reason and reason[0] in ("nodedown", "shutdown")
    ):
        return ("error", "unreachable")
    return ("error", ("call_error", reason))


def commit(
    acceptor: otp.Target,
    op: Any,
    timeout: float | None = DEFAULT_TIMEOUT,
    priority: Any = Priority.HIGH,
) -> Any:
    """Replicate ``op = (key, command)`` and return storage's result of applying it."""
    request = ("commit", check_op(op), priority_of(priority))
    return call(acceptor, request, timeout)


def commit_async(
    acceptor: otp.Target, from_: otp.ReplyTo, op: Any, priority: Any = Priority.HIGH
) -> None:
    """Like ``commit`` but the answer goes to ``from_`` (any ``ReplyTo``)."""
    otp.cast(acceptor, ("commit_batch", [(from_, check_op(op))], priority_of(priority)))


def commit_batch(
    acceptor: otp.Target, items: Sequence[tuple[otp.ReplyTo, Any]], priority: Any = Priority.HIGH
) -> None:
    """Many ``commit_async`` at once: one message to the acceptor, one to the server."""
    checked = [(from_, check_op(op)) for from_, op in items]
    otp.cast(acceptor, ("commit_batch", checked, priority_of(priority)))


def read(acceptor: otp.Target, command: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
    """A strong (linearizable) read: the storage's answer once it is up to date."""
    return call(acceptor, ("read", command, None), timeout)


def read_after(
    acceptor: otp.Target,
    command: Any,
    min_index: int | None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Any:
    """A strong read answered only once storage has applied at least ``min_index``."""
    if min_index is not None and (not isinstance(min_index, int) or min_index < 0):
        raise ValueError(f"min_index must be a non-negative integer, got {min_index!r}")
    return call(acceptor, ("read", command, min_index), timeout)


def read_batch(acceptor: otp.Target, items: Sequence[tuple[otp.ReplyTo, Any, int | None]]) -> None:
    """Many strong reads at once, each answered to its own handle."""
    otp.cast(acceptor, ("read_batch", list(items)))


def adjust_config(
    acceptor: otp.Target,
    action: Any,
    index: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Any:
    """Change the membership; answered ``("ok", LogPos)`` once the config entry is applied."""
    return call(acceptor, ("adjust_config", action, index), timeout)


def adjust_config_async(
    acceptor: otp.Target, from_: otp.ReplyTo, action: Any, index: int | None = None
) -> None:
    """``adjust_config`` answered to ``from_``."""
    otp.cast(acceptor, ("adjust_config", from_, action, index))
