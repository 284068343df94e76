"""Lock-free status of the local Raft servers (WARaft's ``wa_raft_info``, digest §7.4 / §2.17).

Routers and clients read a partition's term, leader and status flags here instead of asking
the server. Each node (several may share one Python process) has its own table, keyed like
WARaft's ETS table. Writers replace whole immutable tuples, so a reader always sees a term and
leader (or a state and its flags) that were written together, without taking a lock.

Only the partition's server writes its rows: ``set_current_term_info`` on every term or leader
change, ``set_status`` whenever its state or flags changed, ``clear`` on termination. The flags
are as of the last event the server handled: an awake replica handles one at least every
heartbeat or election timeout, and a quiescent one's flags do not change with time (a leader
whose followers all died stops being live at most one heartbeat after
``raft_max_heartbeat_age_msecs``). ``waraft status`` asks the servers instead, whose status
computes them when asked.
Every function takes an optional ``node`` id (default: the calling thread's node).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from waraft.services.env import current_node_id


class TermInfo(NamedTuple):
    """The latest known term, its leader's node and the node this server voted for."""

    term: int
    leader: str | None
    candidate: str | None


class Status(NamedTuple):
    """A server's state and its liveness flags (§2.17)."""

    state: Any
    live: bool
    lagging: bool
    stale: bool


_lock = threading.Lock()
_tables: dict[str, dict[Any, Any]] = {}


def _table(node: str | None) -> dict[Any, Any]:
    key = current_node_id() if node is None else node
    table = _tables.get(key)
    if table is None:
        with _lock:
            table = _tables.setdefault(key, {})
    return table


def _term_key(table: str, partition: int) -> tuple[str, str, int]:
    return ("current_term_info", table, partition)


def _status_key(table: str, partition: int) -> tuple[str, str, int]:
    return ("status", table, partition)


# -- readers -----------------------------------------------------------------------------------


def get_current_term_info(
    table: str, partition: int, *, node: str | None = None
) -> TermInfo | None:
    """``(term, leader, candidate)`` or ``None`` when the server never published one."""
    info: TermInfo | None = _table(node).get(_term_key(table, partition))
    return info


def get_current_term_and_leader(
    table: str, partition: int, *, node: str | None = None
) -> tuple[int, str | None] | None:
    """``(term, leader)`` written together (never a leader of another term)."""
    info = get_current_term_info(table, partition, node=node)
    return None if info is None else (info.term, info.leader)


def get_current_term(table: str, partition: int, *, node: str | None = None) -> int | None:
    info = get_current_term_info(table, partition, node=node)
    return None if info is None else info.term


def get_leader(table: str, partition: int, *, node: str | None = None) -> str | None:
    info = get_current_term_info(table, partition, node=node)
    return None if info is None else info.leader


def get_status(table: str, partition: int, *, node: str | None = None) -> Status | None:
    """``(state, live, lagging, stale)`` or ``None``."""
    status: Status | None = _table(node).get(_status_key(table, partition))
    return status


def get_state(table: str, partition: int, *, node: str | None = None) -> Any:
    status = get_status(table, partition, node=node)
    return None if status is None else status.state


def get_live(table: str, partition: int, *, node: str | None = None) -> bool:
    """Defaults to ``False`` for an unknown partition."""
    status = get_status(table, partition, node=node)
    return False if status is None else status.live


def get_lagging(table: str, partition: int, *, node: str | None = None) -> bool:
    """Defaults to ``True`` for an unknown partition."""
    status = get_status(table, partition, node=node)
    return True if status is None else status.lagging


def get_stale(table: str, partition: int, *, node: str | None = None) -> bool:
    """Defaults to ``True`` for an unknown partition."""
    status = get_status(table, partition, node=node)
    return True if status is None else status.stale


def get_message_queue_length(name: str, *, node: str | None = None) -> int | None:
    length: int | None = _table(node).get(("message_queue_length", name))
    return length


# -- writers -----------------------------------------------------------------------------------


def set_current_term_info(
    table: str,
    partition: int,
    term: int,
    leader: str | None,
    candidate: str | None,
    *,
    node: str | None = None,
) -> None:
    _table(node)[_term_key(table, partition)] = TermInfo(term, leader, candidate)


def set_status(
    table: str,
    partition: int,
    state: Any,
    live: bool,
    lagging: bool,
    stale: bool,
    *,
    node: str | None = None,
) -> None:
    _table(node)[_status_key(table, partition)] = Status(state, live, lagging, stale)


def set_message_queue_length(name: str, length: int, *, node: str | None = None) -> None:
    _table(node)[("message_queue_length", name)] = length


def clear(table: str, partition: int, name: str, *, node: str | None = None) -> None:
    """Forget a terminating server's status and queue length (its term info stays, as in
    WARaft)."""
    rows = _table(node)
    rows.pop(_status_key(table, partition), None)
    rows.pop(("message_queue_length", name), None)


def clear_node(*, node: str | None = None) -> None:
    """Forget everything published on the node (tests, node shutdown)."""
    key = current_node_id() if node is None else node
    with _lock:
        _tables.pop(key, None)


__all__ = [
    "Status",
    "TermInfo",
    "clear",
    "clear_node",
    "get_current_term",
    "get_current_term_and_leader",
    "get_current_term_info",
    "get_lagging",
    "get_leader",
    "get_live",
    "get_message_queue_length",
    "get_stale",
    "get_state",
    "get_status",
    "set_current_term_info",
    "set_message_queue_length",
    "set_status",
]
