"""The benchmark's own request protocol between load generators and PySyncObj node processes
(waraft is driven through :mod:`waraft.client` and never sees these frames).

One ZeroMQ DEALER per (client, node) talks to a ROUTER in each node process. Every frame is one
msgpack array ``[kind, body]``:

* ``["b", [[req_id, op, key, value], ...]]`` a batch of commands; the reply is
  ``["r", [[req_id, error, value], ...]]`` with ``error`` None on success or an error kind
  (``"not_leader"`` carries the leader's API endpoint, or None, as ``value``);
* ``["s", None]`` status; the reply is ``["s", {...}]``;
* ``["l", params]`` run the in-leader load generator; the reply ``["l", result]`` comes when the
  run is over.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

OP_WRITE: Final = 0
OP_READ: Final = 1

KIND_BATCH: Final = "b"
KIND_REPLY: Final = "r"
KIND_STATUS: Final = "s"
KIND_LOAD: Final = "l"

NOT_LEADER: Final = "not_leader"


def pack(kind: str, body: Any) -> bytes:
    return msgpack.packb([kind, body], use_bin_type=True)  # type: ignore[no-any-return, unused-ignore]


def unpack(frame: bytes) -> tuple[str, Any]:
    kind, body = msgpack.unpackb(frame, raw=False, use_list=True)
    return str(kind), body
