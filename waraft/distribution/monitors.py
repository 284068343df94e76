"""Links and monitors across nodes: Erlang's distribution signals over ZeroMQ.

``otp.monitor((name, node))`` and ``otp.link((name, node))`` on a node outside this OS
process end up here (installed as ``waraft.otp``'s :class:`~waraft.otp.node.RemoteSignals`).
Both nodes keep a table of what crosses between them, and talk through casts to the reserved
name :data:`SIGNALS`, handled in the receive thread (an inline handler: no actor, no hop).
Only members may send them, each message names its sender's own node (a policy guard), and
every field is checked; nothing in them names a callable, a module or a file.

=========================================  ==================================================
message (element 1 is always the sender)   meaning
=========================================  ==================================================
``("monitor", node, ref_id, name)``        monitor ``name`` here for the watcher ``ref_id``
``("demonitor", node, ref_id)``            cancel it
``("down", node, ref_id, reason)``         the monitored process exited (``noproc`` if none)
``("link", node, pid_id, name)``           process ``pid_id`` there links with ``name`` here
``("unlink", node, pid_id, name)``         remove that link
``("exit", node, pid_id, name, reason)``   the linker ``pid_id`` exited: signal ``name``
``("link_exit", node, name, pid_id, r)``   ``name`` (linked by ``pid_id``) exited
=========================================  ==================================================

When liveness marks a peer ``down`` (a lost TCP connection at once, silence after
``down_after``), every monitor towards it delivers ``DOWN`` with ``"noconnection"``, every link
across to it delivers an exit signal ``"noconnection"`` to its local end, and everything the
peer had installed here is removed: neither table keeps anything for a lost node.
``dist.stop()`` does the same for every peer.

The answers to a request (``DOWN``/exit ``noproc`` for a name not registered here, or for a
process already dead) go out even while the requesting node is down here but has sent frames
since: it is running, and may be up on its side already (see ``peers``).

Signals never block: one that cannot be queued (peer down, its queue full) is counted as
``signals_dropped``; a monitor or link whose request cannot be sent fails at once with
``"noconnection"``. Ordering is per sending thread, as for any message: an exit signal sent
from the dying process's own thread follows its earlier messages. A process killed from
another thread has its exit and demonitor signals sent from that thread, so they may overtake
its own link or monitor request: a demonitor that arrives first is remembered (a tombstone per
monitor reference, which is never reused) and cancels the late monitor; an exit that overtakes
its link leaves that link installed (and counted in ``remote_links_in``) until the linked
process exits or the node is lost. Other nodes may hold at most :data:`MAX_INSTALLED` links and
monitors here, and no one node more than :data:`MAX_INSTALLED_PER_NODE` (one member cannot use
up the room the others' monitors need).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Final

from waraft.distribution import envelope, policy
from waraft.otp.messaging import NOCONNECTION
from waraft.otp.pid import MonitorRef, Pid, Ref, RemoteLinkEnd, RemotePid, RemoteWatcher
from waraft.otp.signals import remote_down, remote_link_exit
from waraft.services import codec

if TYPE_CHECKING:
    from waraft.distribution.runtime import Dist

TOMBSTONES: Final = 4096
"""Monitors cancelled before they were installed that are remembered (see ``_on_demonitor``)."""

logger = logging.getLogger(__name__)

SIGNALS: Final = "dist_signals"
"""The reserved name that link and monitor traffic between nodes is addressed to."""

NOPROC: Final = "noproc"
SYSTEM_LIMIT: Final = "system_limit"
MAX_INSTALLED: Final = 1_000_000
"""Links and monitors other nodes may hold on this node's processes, all nodes together;
beyond it a request fails at once (``DOWN``/exit ``system_limit``) so that a member cannot
grow this node's memory without bound."""
MAX_INSTALLED_PER_NODE: Final = 100_000
"""Of those, what one node may hold (a client node monitors a few processes per partition)."""
_TAGS: Final = ("monitor", "demonitor", "down", "link", "unlink", "exit", "link_exit")
# Each message's shape after the tag and the sender: the type of every further element
# (None: any encodable value, i.e. an exit reason).
_SHAPES: Final[dict[str, tuple[type | None, ...]]] = {
    "monitor": (int, str),
    "demonitor": (int,),
    "down": (int, None),
    "link": (int, str),
    "unlink": (int, str),
    "exit": (int, str, None),
    "link_exit": (str, int, None),
}


_LINKABLE: set[str] = set()


def allow_link(name: str) -> None:
    """Let processes on other nodes link to the process registered as ``name``.

    A remote link to any other name is answered ``noproc``: an exit signal through a link
    kills a process that does not trap exits (and a partition's processes sit under a
    one_for_all supervisor), so a member that could link to any registered name could restart
    any partition at will. Monitors only observe, and stay open to every member."""
    _LINKABLE.add(name)


def allow_signals() -> None:
    """Put the signal messages on the allow-list: members only, each naming its sender."""
    rule = policy.Rule(policy.MEMBER, guard=policy.same_node(1))
    policy.allow(SIGNALS, casts=dict.fromkeys(_TAGS, rule))


def _well_formed(msg: Any) -> bool:
    shape = _SHAPES.get(msg[0]) if type(msg[0]) is str else None
    if shape is None or len(msg) != 2 + len(shape):
        return False
    return all(
        kind is None or type(value) is kind for kind, value in zip(shape, msg[2:], strict=True)
    )


class DistSignals:
    """This node's side of every link and monitor across nodes (thread safe).

    Tables are changed under one lock; otp is only called outside it, because delivering an
    exit can kill a process whose own links call back into this object.
    """

    def __init__(self, dist: Dist) -> None:
        self._dist = dist
        self._me = dist.node_id
        self._registry = dist.otp_node.registry
        self._lock = threading.Lock()
        # Never reused, not even by a restarted node with the same id (a random start), so a
        # tombstone can never cancel a later monitor.
        self._ref_ids = itertools.count(int.from_bytes(os.urandom(5), "big") + 1)
        self._closed = False
        self.max_installed = MAX_INSTALLED
        self.max_installed_per_node = MAX_INSTALLED_PER_NODE
        self._in_per_node: dict[str, int] = {}  # links + monitors held here, per node
        # Ours, towards other nodes: monitors by ref id, and links (node, name, local pid id).
        self._out_monitors: dict[int, tuple[Pid, MonitorRef, tuple[str, str]]] = {}
        self._ref_id_of: dict[MonitorRef, int] = {}
        self._out_links: dict[tuple[str, str, int], Pid] = {}
        # Theirs, on our processes: monitors (node, ref id), links (node, their pid id, name)
        # plus the reverse index a dying local process is found by.
        self._in_monitors: dict[tuple[str, int], tuple[Pid, Ref]] = {}
        self._in_links: dict[tuple[str, int, str], Pid] = {}
        self._in_link_names: dict[tuple[str, int, int], str] = {}
        self._tombstones: dict[tuple[str, int], None] = {}

    # ------------------------------------------------------------------ sending
    def _send(self, node_id: str, msg: tuple[Any, ...], answer: bool = False) -> bool:
        """Send ``msg`` to ``node_id``'s :data:`SIGNALS`; ``answer``: it answers a request
        the node just sent (``Dist.transmit_answer``: not dropped while the node is down
        here but running)."""
        try:
            payload = codec.packb(msg)
        except codec.CodecError:
            # An exit reason that cannot travel goes as its repr, as a reason still must.
            payload = codec.packb((*msg[:-1], repr(msg[-1])))
        frame = envelope.cast_frame(SIGNALS, payload)
        dist = self._dist
        if dist.transmit_answer(node_id, frame) if answer else dist.transmit(node_id, frame):
            return True
        self._dist.counters.incr("signals_dropped")
        return False

    # ------------------------------------------------------------------ RemoteSignals
    def monitor(self, watcher: Pid, ref: MonitorRef, addr: tuple[str, str]) -> None:
        """Ask ``addr``'s node to monitor it; ``DOWN`` noconnection at once if unreachable."""
        name, node_id = addr
        with self._lock:
            closed = self._closed
            if not closed:
                ref_id = next(self._ref_ids)
                self._out_monitors[ref_id] = (watcher, ref, addr)
                self._ref_id_of[ref] = ref_id
        if closed or not self._send(node_id, ("monitor", self._me, ref_id, name)):
            if not closed:
                self._drop_out_monitor(ref)
            remote_down(watcher, ref, addr, NOCONNECTION)

    def _drop_out_monitor(self, ref: MonitorRef) -> int | None:
        with self._lock:
            ref_id = self._ref_id_of.pop(ref, None)
            if ref_id is not None:
                self._out_monitors.pop(ref_id, None)
        return ref_id

    def demonitor(self, ref: MonitorRef) -> None:
        """Forget ``ref`` here and ask its node to drop the monitor."""
        ref_id = self._drop_out_monitor(ref)
        if ref_id is not None and ref._remote is not None:
            self._send(ref._remote[1], ("demonitor", self._me, ref_id))

    def link(self, pid: Pid, addr: tuple[str, str]) -> None:
        """Link ``pid`` with ``addr``; an exit ``noconnection`` at once if unreachable."""
        name, node_id = addr
        key = (node_id, name, pid._id)
        with self._lock:
            closed = self._closed
            if not closed:
                self._out_links[key] = pid
        if closed or not self._send(node_id, ("link", self._me, pid._id, name)):
            with self._lock:
                self._out_links.pop(key, None)
            remote_link_exit(pid, addr, NOCONNECTION)

    def unlink(self, pid: Pid, addr: tuple[str, str]) -> None:
        """Remove the link of ``pid`` with ``addr`` on both nodes."""
        name, node_id = addr
        with self._lock:
            known = self._out_links.pop((node_id, name, pid._id), None) is not None
        if known:
            self._send(node_id, ("unlink", self._me, pid._id, name))

    def exited(self, pid: Pid, end: RemoteLinkEnd, reason: Any) -> None:
        """Local ``pid`` exited: tell the far end of its link ``end``."""
        if isinstance(end, RemotePid):
            with self._lock:
                name = self._in_link_names.pop((end.node_id, end.id, pid._id), None)
                linked = None
                if name is not None:
                    linked = self._in_links.pop((end.node_id, end.id, name), None)
                if linked is not None:
                    self._held(end.node_id, -1)
            if name is not None:
                self._send(end.node_id, ("link_exit", self._me, name, end.id, reason))
            return
        name, node_id = end
        with self._lock:
            known = self._out_links.pop((node_id, name, pid._id), None) is not None
        if known:
            self._send(node_id, ("exit", self._me, pid._id, name, reason))

    def down(self, watcher: RemoteWatcher, ref: Ref, pid: Pid, reason: Any) -> None:
        """Local ``pid`` monitored from another node exited: send that node its ``DOWN``."""
        with self._lock:
            known = self._in_monitors.pop((watcher.node_id, watcher.ref_id), None) is not None
            if known:
                self._held(watcher.node_id, -1)
        if known:
            self._send(watcher.node_id, ("down", self._me, watcher.ref_id, reason))

    # ------------------------------------------------------------------ receiving
    def handle(self, msg: Any, origin: str | None = None) -> bool:
        """Inline handler of casts to :data:`SIGNALS` (receive thread; already admitted by the
        policy, so ``msg[1]`` is the sender's node). Malformed ones are counted and dropped."""
        if not _well_formed(msg):
            self._dist.counters.incr("rx_bad_signals")
            return True
        tag, node_id = msg[0], msg[1]
        if tag == "monitor":
            self._on_monitor(node_id, msg[2], msg[3])
        elif tag == "demonitor":
            self._on_demonitor(node_id, msg[2])
        elif tag == "down":
            self._on_down(node_id, msg[2], msg[3])
        elif tag == "link":
            self._on_link(node_id, msg[2], msg[3])
        elif tag == "unlink":
            self._on_unlink(node_id, msg[2], msg[3])
        elif tag == "exit":
            self._on_exit(node_id, msg[2], msg[3], msg[4])
        else:
            self._on_link_exit(node_id, msg[2], msg[3], msg[4])
        return True

    def _held(self, node_id: str, delta: int) -> None:
        """Count a link or monitor ``node_id`` holds here (+1) or gave up (-1); under the
        lock."""
        held = self._in_per_node.get(node_id, 0) + delta
        if held > 0:
            self._in_per_node[node_id] = held
        else:
            self._in_per_node.pop(node_id, None)

    def _full(self, node_id: str) -> bool:
        full = (
            len(self._in_monitors) + len(self._in_links) >= self.max_installed
            or self._in_per_node.get(node_id, 0) >= self.max_installed_per_node
        )
        if full:
            self._dist.counters.incr("rx_signals_over_limit")
        return full

    def _on_monitor(self, node_id: str, ref_id: int, name: str) -> None:
        pid = self._registry.whereis(name)
        key = (node_id, ref_id)
        if pid is None or self._closed or self._full(node_id):
            reason = NOPROC if pid is None or self._closed else SYSTEM_LIMIT
            self._send(node_id, ("down", self._me, ref_id, reason), answer=True)
            return
        local_ref = Ref()
        # Recorded before it is installed: a death in between finds (and pops) the entry.
        with self._lock:
            if self._tombstones.pop(key, 0) is None:
                return  # its demonitor came first: never install it
            if key not in self._in_monitors:
                self._held(node_id, 1)
            self._in_monitors[key] = (pid, local_ref)
        with pid._lock:
            alive = not pid._dead
            if alive:
                pid._monitors[local_ref] = RemoteWatcher(node_id, ref_id)
        if not alive:
            with self._lock:
                if self._in_monitors.pop(key, None) is not None:
                    self._held(node_id, -1)
            self._send(node_id, ("down", self._me, ref_id, pid._exit_reason), answer=True)

    def _on_demonitor(self, node_id: str, ref_id: int) -> None:
        key = (node_id, ref_id)
        with self._lock:
            entry = self._in_monitors.pop(key, None)
            if entry is not None:
                self._held(node_id, -1)
            else:
                # Unknown: the DOWN crossed it, or it overtook its own monitor (sent from the
                # thread of a watcher killed by another thread). Remembered, so that a late
                # monitor request is not installed for nobody.
                tombstones = self._tombstones
                tombstones[key] = None
                if len(tombstones) > TOMBSTONES:
                    del tombstones[next(iter(tombstones))]
        if entry is not None:
            pid, local_ref = entry
            with pid._lock:
                pid._monitors.pop(local_ref, None)

    def _on_down(self, node_id: str, ref_id: int, reason: Any) -> None:
        with self._lock:
            entry = self._out_monitors.get(ref_id)
            if entry is None or entry[2][1] != node_id:
                entry = None  # unknown, or a node answering for another node's process
            else:
                del self._out_monitors[ref_id]
                self._ref_id_of.pop(entry[1], None)
        if entry is None:
            self._dist.counters.incr("rx_stale_signals")
            return
        watcher, ref, addr = entry
        remote_down(watcher, ref, addr, reason)

    def _on_link(self, node_id: str, pid_id: int, name: str) -> None:
        pid = self._registry.whereis(name) if name in _LINKABLE else None
        if pid is None or self._closed or self._full(node_id):
            reason = NOPROC if pid is None or self._closed else SYSTEM_LIMIT
            self._send(node_id, ("link_exit", self._me, name, pid_id, reason), answer=True)
            return
        end = RemotePid(node_id, pid_id)
        with self._lock:
            if self._in_links.get((node_id, pid_id, name)) is None:
                self._held(node_id, 1)
            self._in_links[(node_id, pid_id, name)] = pid
            self._in_link_names[(node_id, pid_id, pid._id)] = name
        with pid._lock:
            alive = not pid._dead
            if alive:
                pid._links.add(end)
        if not alive:
            self._forget_in_link(node_id, pid_id, name, pid)
            self._send(node_id, ("link_exit", self._me, name, pid_id, pid._exit_reason), True)

    def _forget_in_link(self, node_id: str, pid_id: int, name: str, pid: Pid) -> bool:
        with self._lock:
            known = self._in_links.pop((node_id, pid_id, name), None) is not None
            if known:
                self._held(node_id, -1)
            self._in_link_names.pop((node_id, pid_id, pid._id), None)
        return known

    def _on_unlink(self, node_id: str, pid_id: int, name: str) -> None:
        pid = self._in_links.get((node_id, pid_id, name))
        if pid is not None and self._forget_in_link(node_id, pid_id, name, pid):
            with pid._lock:
                pid._links.discard(RemotePid(node_id, pid_id))

    def _on_exit(self, node_id: str, pid_id: int, name: str, reason: Any) -> None:
        pid = self._in_links.get((node_id, pid_id, name))
        if pid is not None and self._forget_in_link(node_id, pid_id, name, pid):
            remote_link_exit(pid, RemotePid(node_id, pid_id), reason)
        else:
            self._dist.counters.incr("rx_stale_signals")

    def _on_link_exit(self, node_id: str, name: str, pid_id: int, reason: Any) -> None:
        with self._lock:
            pid = self._out_links.pop((node_id, name, pid_id), None)
        if pid is None:
            self._dist.counters.incr("rx_stale_signals")
            return
        remote_link_exit(pid, (name, node_id), reason)

    # ------------------------------------------------------------------ node loss
    def node_down(self, node_id: str) -> None:
        """``node_id`` is lost: ``noconnection`` to every local end of a monitor or link
        with it, and everything it had installed here removed."""
        self._fire(lambda node: node == node_id)

    def close(self) -> None:
        """Distribution is stopping: every node is lost at once, and nothing new is taken."""
        with self._lock:
            self._closed = True
        self._fire(lambda node: True)

    def _fire(self, lost: Any) -> None:
        with self._lock:
            downs = [(k, v) for k, v in self._out_monitors.items() if lost(v[2][1])]
            for ref_id, (_, ref, _) in downs:
                del self._out_monitors[ref_id]
                self._ref_id_of.pop(ref, None)
            out_links = [(k, v) for k, v in self._out_links.items() if lost(k[0])]
            for link_key, _ in out_links:
                del self._out_links[link_key]
            in_monitors = [(k, v) for k, v in self._in_monitors.items() if lost(k[0])]
            for monitor_key, _ in in_monitors:
                del self._in_monitors[monitor_key]
                self._held(monitor_key[0], -1)
            for tomb in [k for k in self._tombstones if lost(k[0])]:
                del self._tombstones[tomb]
            in_links = [(k, v) for k, v in self._in_links.items() if lost(k[0])]
            for in_key, pid in in_links:
                del self._in_links[in_key]
                self._held(in_key[0], -1)
                self._in_link_names.pop((in_key[0], in_key[1], pid._id), None)
        for _, (watcher, ref, addr) in downs:
            remote_down(watcher, ref, addr, NOCONNECTION)
        for _, (pid, local_ref) in in_monitors:
            with pid._lock:
                pid._monitors.pop(local_ref, None)
        for (node, name, _), pid in out_links:
            remote_link_exit(pid, (name, node), NOCONNECTION)
        for (node, pid_id, _), pid in in_links:
            remote_link_exit(pid, RemotePid(node, pid_id), NOCONNECTION)

    # ------------------------------------------------------------------ introspection
    def counts(self) -> dict[str, int]:
        """Table sizes: ``remote_monitors_out/in``, ``remote_links_out/in``, and the most
        links and monitors any one node holds here (``remote_in_most_by_one_node``)."""
        with self._lock:
            return {
                "remote_in_most_by_one_node": max(self._in_per_node.values(), default=0),
                "remote_monitors_out": len(self._out_monitors),
                "remote_monitors_in": len(self._in_monitors),
                "remote_links_out": len(self._out_links),
                "remote_links_in": len(self._in_links),
            }
