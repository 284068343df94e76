"""The kvstore client: read / write / delete, each routed to the key's partition.

As a library (one ``waraft.client.Client`` underneath; many requests may be in flight)::

    from examples.kvstore.client import KVStore
    with KVStore(["n1@127.0.0.1:7201"]) as kv:
        kv.write("user:1", {"name": "ada"})      # "ok"
        kv.read("user:1")                        # ("ok", {"name": "ada"})
        kv.delete("user:1")                      # "ok"
        kv.read("user:1")                        # "not_found"

From the shell::

    python -m examples.kvstore.client --nodes n1@127.0.0.1:7201 write k v
    python -m examples.kvstore.client --nodes n1@127.0.0.1:7201 read k
    python -m examples.kvstore.client --nodes n1@127.0.0.1:7201 delete k

Values given on the command line are JSON when they parse as JSON, else text. Exit status: 0
on success, 1 when the cluster answered with an error (``not_found`` for a read is printed and
exits 1 too), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from examples.kvstore import NUM_PARTITIONS, TABLE, partition
from waraft.cli.common import parse_value
from waraft.client import Client, Future


class KVStore:
    """read / write / delete on table ``kvstore`` through any of ``nodes``."""

    def __init__(self, nodes: Sequence[str], timeout: float = 5.0, **client_kw: Any) -> None:
        self.client = Client(
            nodes, table=TABLE, partitions=NUM_PARTITIONS, timeout=timeout, **client_kw
        )

    def read(self, key: Any) -> Any:
        """A strong read: ``("ok", value)``, ``"not_found"`` or ``("error", reason)``."""
        return self.client.read(partition(key), ("read", TABLE, key))

    def write(self, key: Any, value: Any) -> Any:
        """``"ok"`` once the write is committed and applied, or ``("error", reason)``."""
        return self.client.commit(partition(key), ("write", TABLE, key, value))

    def delete(self, key: Any) -> Any:
        """``"ok"`` once the delete is committed and applied, or ``("error", reason)``."""
        return self.client.commit(partition(key), ("delete", TABLE, key))

    def read_async(self, key: Any) -> Future:
        return self.client.read_async(partition(key), ("read", TABLE, key))

    def write_async(self, key: Any, value: Any) -> Future:
        return self.client.commit_async(partition(key), ("write", TABLE, key, value))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.kvstore.client", description="kvstore read / write / delete"
    )
    parser.add_argument("--nodes", required=True, help="comma-separated node ids")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    sub = parser.add_subparsers(dest="op", required=True)
    sub.add_parser("read", help="print a key's value").add_argument("key")
    write = sub.add_parser("write", help="set a key (the value is JSON or text)")
    write.add_argument("key")
    write.add_argument("value")
    sub.add_parser("delete", help="remove a key").add_argument("key")
    args = parser.parse_args(argv)
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    with KVStore(nodes, timeout=args.timeout) as kv:
        if args.op == "read":
            result = kv.read(args.key)
        elif args.op == "write":
            result = kv.write(args.key, parse_value(args.value))
        else:
            result = kv.delete(args.key)
    if isinstance(result, tuple) and result[0] == "ok":
        print(json.dumps(result[1]) if not isinstance(result[1], str) else result[1])
        return 0
    if result == "ok":
        print("ok")
        return 0
    if result == "not_found":
        print("not_found")
        return 1
    print(f"error: {result!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
