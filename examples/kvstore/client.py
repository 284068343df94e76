"""The kvstore client: read / write / delete / append / incr, each routed to the key's partition.

As a library (one ``waraft.client.Client`` underneath; many requests may be in flight)::

    from examples.kvstore.client import KVStore
    with KVStore(["n1@127.0.0.1:7201"]) as kv:
        kv.write("user:1", {"name": "ada"})      # "ok"
        kv.read("user:1")                        # ("ok", {"name": "ada"})
        kv.delete("user:1")                      # "ok"
        kv.read("user:1")                        # "not_found"
        kv.append("log", "a")                    # "ok" (the value becomes ("a",))
        kv.incr("hits", 2)                       # ("ok", 2)

``append`` and ``incr`` are not idempotent, so ``KVStore`` runs its client with exactly-once
sessions (``waraft.client``, ``sessions=True``): a commit the client retries after an ambiguous
failure is applied once. Pass ``sessions=False`` to turn them off.

From the shell::

    python -m examples.kvstore.client --nodes n1@127.0.0.1:7201 write k v
    python -m examples.kvstore.client --nodes n1@127.0.0.1:7201 read k
    python -m examples.kvstore.client --nodes n1@127.0.0.1:7201 delete k
    python -m examples.kvstore.client --nodes n1@127.0.0.1:7201 append k v
    python -m examples.kvstore.client --nodes n1@127.0.0.1:7201 incr k 5

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
    """read / write / delete / append / incr on table ``kvstore`` through any of ``nodes``."""

    def __init__(self, nodes: Sequence[str], timeout: float = 5.0, **client_kw: Any) -> None:
        client_kw.setdefault("sessions", True)
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

    def append(self, key: Any, value: Any) -> Any:
        """Append ``value`` to the list at ``key`` (a missing key is an empty list): ``"ok"``,
        ``("error", "not_a_list")`` or another ``("error", reason)``."""
        return self.client.commit(partition(key), ("append", TABLE, key, value))

    def incr(self, key: Any, n: int = 1) -> Any:
        """Add ``n`` to the int at ``key`` (missing: 0): ``("ok", new_value)`` or an error."""
        return self.client.commit(partition(key), ("incr", TABLE, key, n))

    def read_async(self, key: Any) -> Future:
        return _made(self.client.read_async(partition(key), ("read", TABLE, key)))

    def write_async(self, key: Any, value: Any) -> Future:
        return _made(self.client.commit_async(partition(key), ("write", TABLE, key, value)))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _made(future: Future | None) -> Future:
    """The future of an async call made without a callback (only a callback makes it None)."""
    assert future is not None
    return future


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
    append = sub.add_parser("append", help="append to the list at a key (JSON or text)")
    append.add_argument("key")
    append.add_argument("value")
    incr = sub.add_parser("incr", help="add an integer to the number at a key")
    incr.add_argument("key")
    incr.add_argument("n", type=int, nargs="?", default=1)
    args = parser.parse_args(argv)
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    with KVStore(nodes, timeout=args.timeout) as kv:
        if args.op == "read":
            result = kv.read(args.key)
        elif args.op == "write":
            result = kv.write(args.key, parse_value(args.value))
        elif args.op == "append":
            result = kv.append(args.key, parse_value(args.value))
        elif args.op == "incr":
            result = kv.incr(args.key, args.n)
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
