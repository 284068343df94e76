"""The workers sending to one peer node (WARaft's ``wa_raft_transport_target_sup``).

Registered ``raft_transport_target_sup_<node>``: ``one_for_all``, 5 restarts per second, with
``raft_transport_threads`` (1) ``waraft.transport_worker`` children. With several workers, the
files of one transport are sent in parallel.
"""

from __future__ import annotations

from typing import Any, Final

from waraft import otp
from waraft.services import env
from waraft.transport import worker as transport_worker

FLAGS: Final = {"strategy": "one_for_all", "intensity": 5, "period": 1}


def name(node: str) -> str:
    """``raft_transport_target_sup_<node>``."""
    return f"raft_transport_target_sup_{node}"


def _init(node: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    threads = max(1, int(env.raft_config("raft_transport_threads")))
    children = [transport_worker.child_spec(node, number) for number in range(1, threads + 1)]
    return dict(FLAGS), children


def start_link(node: str) -> otp.Pid:
    """Start the workers' supervisor for ``node``."""
    return otp.supervisor.start_link_module(_init, node, name=name(node))


def child_spec(node: str) -> dict[str, Any]:
    """A temporary supervisor child whose id is the destination node."""
    return {
        "id": node,
        "start": (start_link, (node,)),
        "restart": "temporary",
        "shutdown": "infinity",
        "type": "supervisor",
    }


__all__ = ["child_spec", "name", "start_link"]
