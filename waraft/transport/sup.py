"""The supervisor of the per-peer transport workers (WARaft's ``wa_raft_transport_sup``).

Registered ``wa_raft_transport_sup`` under ``waraft.app``: ``one_for_one``, 5 restarts per
second, no static children. ``get_or_start(node)`` adds, on first use, one
``waraft.transport_target_sup`` per destination node (a temporary child whose id is the node).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from waraft import otp
from waraft.transport import target_sup as transport_target_sup

logger = logging.getLogger(__name__)

NAME: Final = "wa_raft_transport_sup"
FLAGS: Final = {"strategy": "one_for_one", "intensity": 5, "period": 1}


def get_or_start(node: str) -> str:
    """The registered name of the workers' supervisor for ``node``, started if needed.

    Raises ``otp.ExitError`` if this node's transport supervisor is not running, and
    ``RuntimeError`` if the target supervisor cannot start.
    """
    name = transport_target_sup.name(node)
    if otp.whereis(name) is None:
        result = otp.supervisor.start_child(NAME, transport_target_sup.child_spec(node))
        if result[0] != "ok":
            reason = result[1]
            started = isinstance(reason, tuple) and reason and reason[0] == "already_started"
            if not started:
                raise RuntimeError(f"cannot start the transport workers for {node}: {reason!r}")
    return name


def _init() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return dict(FLAGS), []


def start_link() -> otp.Pid:
    """Start the supervisor registered ``wa_raft_transport_sup``."""
    return otp.supervisor.start_link_module(_init, name=NAME)


def child_spec() -> dict[str, Any]:
    """WARaft's child spec: a permanent supervisor."""
    return {
        "id": "wa_raft_transport_sup",
        "start": (start_link, ()),
        "restart": "permanent",
        "shutdown": "infinity",
        "type": "supervisor",
    }


__all__ = ["NAME", "child_spec", "get_or_start", "start_link"]
