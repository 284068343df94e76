"""The node-wide services every partition relies on (WARaft's ``wa_raft_app_sup``).

A ``one_for_one`` supervisor (5 restarts per second) registered ``wa_raft_app_sup`` under the
node's ``kernel_sup``. Starting it creates this node's transport tables (WARaft's application
supervisor owns those ETS tables) and then, in order:

* ``wa_raft_transport`` — the transport manager (``waraft.transport``);
* ``wa_raft_transport_sup`` — the per-peer sending workers (``waraft.transport_sup``);
* ``wa_raft_dist_transport`` — the default provider's chunk receiver (``waraft.dist_transport``);
* ``wa_raft_snapshot_catchup`` — the leader-side catch-up coordinator
  (``waraft.snapshot_catchup``).

``ensure_started()`` starts it once per node; ``waraft.sup.start_link`` calls it, so any node
that runs a partition also runs these.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

from waraft import distribution, otp, transport
from waraft.core.events import NodeLiveness
from waraft.partition import heartbeats, part_sup, server
from waraft.services import env, metrics
from waraft.transport import dist_transport, snapshot_catchup
from waraft.transport import sup as transport_sup

logger = logging.getLogger(__name__)

NAME: Final = "wa_raft_app_sup"
FLAGS: Final = {"strategy": "one_for_one", "intensity": 5, "period": 1}


def _init() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _install_metrics()
    distribution.add_peer_listener(_fan_out_liveness)
    heartbeats.install()
    transport.setup_tables()
    children = [
        transport.child_spec(),
        transport_sup.child_spec(),
        dist_transport.child_spec(),
        snapshot_catchup.child_spec(),
    ]
    return dict(FLAGS), children


def _install_metrics() -> None:
    """Install the metrics sink named by ``raft_metrics_module`` (as WARaft's app start does)."""
    configured = env.raft_config("raft_metrics_module", None)
    if configured is None:
        return
    sink = part_sup.resolve_module(configured)
    metrics.install(sink() if isinstance(sink, type) else sink)
    logger.info("metrics go to %r", configured)


_SERVER_PREFIX: Final = "raft_server_"


def _fan_out_liveness(node_id: str, up: bool) -> None:
    """Node-level liveness for every local partition server (quiescence reads it).

    Called on a distribution thread (liveness, or receive) when a peer stops answering pings
    (killed, cut off, or stopped), ends the session itself, or answers again; each server
    gets a ``NodeLiveness`` cast, unless the peer is in no local partition's config
    (``server.member_nodes``). Every report is recorded first (``server.note_liveness``): a
    server that names the node later reads it.
    """
    local = otp.node.current().id
    server.note_liveness(local, node_id, up)  # for a server that names the node later
    if node_id not in server.member_nodes(local):
        # Not in any local partition's config (a CLI or client node): no server needs it.
        return
    event = NodeLiveness(node_id, up)
    for name in otp.registered():
        if name.startswith(_SERVER_PREFIX):
            otp.cast(name, event)


def start_link() -> otp.Pid:
    """Start the supervisor registered ``wa_raft_app_sup`` and its four services."""
    return otp.supervisor.start_link_module(_init, name=NAME)


def child_spec() -> dict[str, Any]:
    """A permanent supervisor child (for ``kernel_sup``)."""
    return {
        "id": NAME,
        "start": (start_link, ()),
        "restart": "permanent",
        "shutdown": "infinity",
        "type": "supervisor",
    }


def ensure_started(node: otp.Node | None = None) -> otp.Pid | None:
    """Start ``wa_raft_app_sup`` under ``kernel_sup`` on ``node`` (default: current) unless it
    runs; returns its pid.

    Called from inside an actor (typically a supervisor starting partitions, possibly
    ``kernel_sup`` itself, which cannot be called from its own thread), the start is handed to
    a helper thread and None is returned at once: waiting could deadlock on a supervisor that is
    busy starting us. Until it runs, snapshot requests are dropped (the leader asks again) and
    incoming transports are refused (the sender retries).
    """
    here = node if node is not None else otp.node.current()
    pid = here.registry.whereis(NAME)
    if pid is not None:
        return pid
    if otp.self_pid() is not None:
        thread = threading.Thread(
            target=_start_under_kernel, args=(here,), name="waraft-app-start", daemon=True
        )
        thread.start()
        return None
    return _start_under_kernel(here)


def _start_under_kernel(node: otp.Node) -> otp.Pid | None:
    with node.activate():
        try:
            result = otp.supervisor.start_child("kernel_sup", child_spec())
            if result == ("error", "already_present"):
                result = otp.supervisor.restart_child("kernel_sup", NAME)
        except (otp.ExitError, otp.StartError) as exc:
            logger.warning("cannot start %s on %s: %r", NAME, node.id, exc)
            return None
    if result[0] == "ok":
        pid: otp.Pid | None = result[1]
        return pid
    reason = result[1]
    if isinstance(reason, tuple) and reason and reason[0] == "already_started":
        started: otp.Pid = reason[1]
        return started
    logger.error("cannot start %s on %s: %r", NAME, node.id, reason)
    return None


__all__ = ["NAME", "child_spec", "ensure_started", "start_link"]
