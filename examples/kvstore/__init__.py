"""WARaft's kvstore example in Python: a replicated key-value store of 4 partitions.

* ``examples.kvstore.app`` — the application's supervision tree (``kvstore_sup`` over
  ``waraft.sup``), started by ``waraft node --app-module examples.kvstore.app``;
* ``examples.kvstore.client`` — read / write / delete on top of ``waraft.client``, and a command
  line (``python -m examples.kvstore.client --nodes ... write k v``);
* ``examples.kvstore.cluster`` — a local 3-process cluster (``start | stop | status``).

Keys are routed to partitions with a stable hash: ``partition(key) = crc32(key bytes) % 4 + 1``
(UTF-8 bytes of a str key; see ``waraft.client.stable_hash``), the same on every machine and
every Python version — WARaft's example uses ``erlang:phash2(Key, 4) + 1`` the same way.
"""

from __future__ import annotations

from typing import Any, Final

from waraft.client import partition_for

APP: Final = "kvstore"
TABLE: Final = "kvstore"
NUM_PARTITIONS: Final = 4
PARTITIONS: Final = tuple(range(1, NUM_PARTITIONS + 1))


def partition(key: Any) -> int:
    """The partition (1..4) that owns ``key``."""
    return partition_for(key, NUM_PARTITIONS)


__all__ = ["APP", "NUM_PARTITIONS", "PARTITIONS", "TABLE", "partition"]
