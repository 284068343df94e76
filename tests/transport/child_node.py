"""A waraft node in its own process for the two-process transport tests.

Usage: ``python child_node.py NODE_ID DATABASE [KEY=VALUE ...]`` (``KEY=VALUE`` pairs are
node-wide ``"waraft"`` settings, integers or floats). Starts distribution, the node-wide
services and partition ``test``/1 of application ``test_app`` (stalled, memory providers), prints
``READY <node id>`` and runs until its stdin closes.
"""

from __future__ import annotations

import os
import sys

from waraft import distribution as dist
from waraft import otp
from waraft.partition import app, sup
from waraft.services import env

APP = "test_app"
FAST = {
    "raft_election_timeout_ms": 300,
    "raft_election_timeout_ms_max": 500,
    "raft_heartbeat_interval_ms": 40,
    "raft_commit_batch_interval_ms": 1,
}


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def main() -> None:
    from waraft.distribution import policy

    policy.open_unlisted_names(True)  # the tests read this node's storage directly
    node_id, database, *settings = sys.argv[1:]
    node_id = dist.start(node_id, ping_interval=0.1, down_after=1.0, connect_timeout=1.0)
    env.set_env(APP, "raft_database", database)
    for key, value in FAST.items():
        env.set_env(APP, key, value)
    for pair in settings:
        key, _, value = pair.partition("=")
        env.set_env(env.RAFT_APP, key, _number(value))
    app.ensure_started()
    spec = sup.child_spec(APP, [{"table": "test", "partition": 1}])
    result = otp.supervisor.start_child("kernel_sup", spec)
    assert result[0] == "ok", result
    print(f"READY {node_id}", flush=True)
    sys.stdin.read()  # until the parent closes the pipe (or dies)
    otp.node.stop_all(timeout=2.0)
    dist.stop()
    os._exit(0)


if __name__ == "__main__":
    main()
