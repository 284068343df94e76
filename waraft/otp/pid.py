"""Process identifiers and references.

A :class:`Pid` names one process for its whole life and after it: once the process is dead the
pid keeps its exit reason, sends to it are dropped and calls to it fail with ``noproc``. Pids
compare by identity (one object per process) and belong to this Python process only; remote
processes are addressed as ``(name, node_id)``. A process on another node that linked itself to
one of ours is seen here as a :class:`RemotePid` (the sender of its ``EXIT`` messages).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from waraft.otp.sched import Event

if TYPE_CHECKING:
    from waraft.otp.mailbox import Inbox
    from waraft.otp.node import Node
    from waraft.otp.process import Process

_pid_ids = itertools.count(1)
_ref_ids = itertools.count(1)


class Pid:
    """Handle of one process; safe to share between threads.

    The private fields hold the process's signal state (links, monitors, exit reason). They are
    guarded by ``_lock`` except ``_dead``/``_exit_reason``, which are written once, reason first,
    so that a lock-free reader that sees ``_dead`` also sees the reason.
    """

    __slots__ = (
        "__weakref__",
        "_actor",
        "_dead",
        "_done",
        "_exit_reason",
        "_id",
        "_inbox",
        "_links",
        "_lock",
        "_loop_done",
        "_monitors",
        "_name",
        "_node",
        "_thread",
        "node_id",
    )

    def __init__(self, node: Node, inbox: Inbox, actor: Process) -> None:
        self._id = next(_pid_ids)
        self.node_id: str = node.id
        self._node = node
        self._inbox = inbox
        self._actor: Process | None = actor
        self._lock = threading.Lock()
        self._dead = False
        self._exit_reason: Any = None
        # Local pids, plus the far ends of links across nodes (see RemoteLinkEnd).
        self._links: set[Pid | RemoteLinkEnd] = set()
        # Local watchers, plus RemoteWatcher for monitors installed from other nodes.
        self._monitors: dict[Ref, Pid | RemoteWatcher] = {}
        self._done = Event()  # scheduled processes wait on it without holding a thread
        self._name: str | None = None
        self._thread: threading.Thread | None = None  # thread processes
        self._loop_done: Event | None = None  # scheduled processes: set when the greenlet ends

    def __repr__(self) -> str:
        return f"<{self.node_id}.{self._id}>"

    def is_alive(self) -> bool:
        """False once the process has exited (or was killed/abandoned)."""
        return not self._dead

    @property
    def exit_reason(self) -> Any:
        """The exit reason, or None while the process is alive."""
        return self._exit_reason if self._dead else None

    @property
    def name(self) -> str | None:
        """The registered name, if any."""
        return self._name

    @property
    def node(self) -> Node:
        """The node the process runs on."""
        return self._node


class Ref:
    """A unique reference (Erlang ``make_ref()``): equal only to itself, hashable."""

    __slots__ = ("_id",)

    def __init__(self) -> None:
        self._id = next(_ref_ids)

    def __repr__(self) -> str:
        return f"#Ref<{self._id}>"


class MonitorRef(Ref):
    """The reference returned by ``monitor``; remembers the monitored process (a local pid,
    or the ``(name, node_id)`` of a process on another node)."""

    __slots__ = ("_remote", "_target")

    def __init__(self, target: Pid | None, remote: tuple[str, str] | None = None) -> None:
        super().__init__()
        self._target = target
        self._remote = remote


@dataclass(frozen=True, slots=True)
class RemotePid:
    """A process on another node, known by its node and its number there: the sender of the
    ``('EXIT', RemotePid, reason)`` a process gets when a remote process linked to it exits.
    Compares by value."""

    node_id: str
    id: int

    def __repr__(self) -> str:
        return f"<{self.node_id}.{self.id}>"


@dataclass(frozen=True, slots=True)
class RemoteWatcher:
    """A monitor installed by a process on ``node_id``; ``ref_id`` names it there."""

    node_id: str
    ref_id: int


RemoteLinkEnd: TypeAlias = RemotePid | tuple[str, str]
"""The far end of a link across nodes, as kept in a local pid's link set: a
:class:`RemotePid` on the process that was linked to by name, ``(name, node_id)`` on the
process that called ``link((name, node_id))``."""


def make_ref() -> Ref:
    """A new unique reference."""
    return Ref()
