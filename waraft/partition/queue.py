"""One partition's queue process (WARaft's ``wa_raft_queue``).

The admission counters and the strong-read queue it stands for are a ``Queues`` object
(:mod:`waraft.services.queues`, re-exported here) shared by the acceptor, server and storage.

The ``queue`` actor itself owns nothing but its place in the partition's supervision tree: it is
the first child, so a restart of the group resets every counter and drops every queued read, as
WARaft's does.
"""

from __future__ import annotations

import logging
from typing import Any

from waraft import otp
from waraft.services.queues import APPLY_QUEUE_FULL, COMMIT_QUEUE_FULL, READ_QUEUE_FULL, Queues

logger = logging.getLogger(__name__)


def default_name(table: str, partition: int) -> str:
    """WARaft's registered name ``raft_queue_<table>_<partition>``."""
    return f"raft_queue_{table}_{partition}"


class QueueProcess(otp.Process):
    """The partition's first child: resets the shared ``Queues`` when (re)started."""

    def init(self, queues: Queues) -> None:
        queues.reset()
        self.queues = queues
        logger.debug("queue %s_%s started", queues.table, queues.partition)


def start_link(options: Any) -> otp.Pid:
    """Start the queue process of the partition described by ``options`` (``RaftOptions``)."""
    pid: otp.Pid = QueueProcess.start_link(options.queues, name=options.queue_name)
    return pid


def child_spec(options: Any) -> dict[str, Any]:
    """WARaft's child spec: transient, 1 s shutdown."""
    return {
        "id": "wa_raft_queue",
        "start": (start_link, (options,)),
        "restart": "transient",
        "shutdown": 1000,
    }


__all__ = [
    "APPLY_QUEUE_FULL",
    "COMMIT_QUEUE_FULL",
    "READ_QUEUE_FULL",
    "QueueProcess",
    "Queues",
    "child_spec",
    "default_name",
    "start_link",
]
