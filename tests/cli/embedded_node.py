"""A service that embeds waraft as the README's "Start partitions from your own supervision
tree" says: distribution plus ``waraft.sup.child_spec`` in its own tree, no ``waraft node``.

``python -m tests.cli.embedded_node NAME PORT DATA KEYS [admin]``: with ``admin``, it adds
``waraft.cli.admin.child_spec`` as well. Prints ``READY <node id>`` and runs until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import waraft
from waraft import otp
from waraft.cli import admin
from waraft.distribution import keys


def main(argv: list[str]) -> None:
    name, port, data, key_dir, *extra = argv
    node_id = waraft.distribution.start(f"{name}@127.0.0.1:{port}", curve=keys.load(key_dir, name))
    waraft.env.set_env("embedded", "raft_database", f"{data}/{name}")
    if extra == ["admin"]:
        otp.supervisor.start_child("kernel_sup", admin.child_spec("embedded"))
    spec = waraft.sup.child_spec("embedded", [{"table": "kv", "partition": 1}])
    otp.supervisor.start_child("kernel_sup", spec)
    stop = threading.Event()

    def on_term(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    print("READY", node_id, flush=True)
    stop.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
