"""The kvstore application's supervision tree (WARaft's ``kvstore_sup``).

``kvstore_sup`` is a ``one_for_one`` supervisor whose one child is ``waraft.sup`` with the four
partitions of table ``kvstore``. ``waraft node --app-module examples.kvstore.app`` puts it under
the node's ``kernel_sup`` (via :func:`child_spec`); an embedding service would call
:func:`start_link` from its own tree instead.
"""

from __future__ import annotations

from typing import Any

from examples.kvstore import PARTITIONS, TABLE
from waraft import otp, sup

NAME = "kvstore_sup"
FLAGS = {"strategy": "one_for_one", "intensity": 1, "period": 5}


def raft_args(partitions: tuple[int, ...] = PARTITIONS) -> list[dict[str, Any]]:
    """One ``{"table", "partition"}`` per partition: Raft clusters are named by both."""
    return [{"table": TABLE, "partition": p} for p in partitions]


def start_link(app: str = "kvstore", args: list[dict[str, Any]] | None = None) -> otp.Pid:
    """Start ``kvstore_sup`` with the partitions' supervisor under it."""
    children = [sup.child_spec(app, args if args is not None else raft_args())]
    return otp.supervisor.start_link(dict(FLAGS), children, name=NAME)


def child_spec(app: str = "kvstore", args: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``kvstore_sup`` as a child of another supervisor (the ``--app-module`` contract)."""
    return {
        "id": NAME,
        "start": (start_link, (app, args)),
        "restart": "permanent",
        "shutdown": "infinity",
        "type": "supervisor",
    }
