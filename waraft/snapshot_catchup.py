"""Leader-side snapshot catch-up (WARaft's ``wa_raft_snapshot_catchup``).

The coordinator that turns "this follower needs a snapshot" into a snapshot plus a file transfer
is node-wide; until it runs on this node, requests are logged and dropped (the follower keeps
asking on every failed append, so nothing is lost by dropping one).
"""

from __future__ import annotations

import logging
from typing import Any

from waraft.core.types import Identity

logger = logging.getLogger(__name__)


def catchup(options: Any, peer: Identity, witness: bool) -> None:
    """Ask for ``peer`` to be sent a snapshot of ``options``' partition."""
    logger.info(
        "partition %s/%s: %s needs a %ssnapshot, but no catch-up service runs on this node",
        options.table,
        options.partition,
        peer,
        "witness " if witness else "",
    )
