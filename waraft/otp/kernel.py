"""The node's root supervisor, ``kernel_sup`` (started on first use).

Erlang's ``kernel_sup`` is where applications hang their trees; here it is a one_for_one
supervisor registered as ``"kernel_sup"`` on each :class:`~waraft.otp.node.Node`, not linked
to whoever happened to start it. ``supervisor.start_child("kernel_sup", spec)`` starts it if
needed; ``Node.stop()`` stops it first. If it exits while its node runs (its restart
intensity reached, a crash, a kill), the node stops with ``("kernel_sup_exited", reason)``
(:meth:`~waraft.otp.node.Node.on_failure`), as a BEAM node halts when its kernel
application's supervisor dies: a node without its root tree serves nothing.
"""

from __future__ import annotations

from typing import Final

from waraft.otp import node as _node
from waraft.otp.errors import StartError
from waraft.otp.pid import Pid

KERNEL_SUP: Final = "kernel_sup"
# The root outlives flapping children longer than Erlang's default 1 restart / 5 s, like
# wa_raft_app_sup (5 / 1 s); beyond that it stops its tree and the node.
FLAGS: Final = {"strategy": "one_for_one", "intensity": 5, "period": 1}


def kernel_sup(node: _node.Node | None = None) -> Pid:
    """The pid of ``kernel_sup`` on ``node`` (default: current), starting it if needed."""
    from waraft.otp import supervisor

    here = node if node is not None else _node.current()
    pid = here.registry.whereis(KERNEL_SUP)
    if pid is not None:
        return pid
    # No lock around the start: the name is taken before init runs, so of concurrent first
    # users one starts it and the others get ``already_started`` with its pid. (A lock held
    # across the start would block a scheduler thread whose process waits on it.)
    try:
        pid = supervisor.start(dict(FLAGS), [], name=KERNEL_SUP, node=here)
    except StartError as exc:
        reason = exc.reason
        if isinstance(reason, tuple) and reason[0] == "already_started":
            holder: Pid = reason[1]
            return holder
        raise
    here._set_kernel(pid)
    return pid
