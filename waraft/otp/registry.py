"""Per-node name registry (Erlang ``register``/``whereis``/``unregister``/``registered``).

Each :class:`~waraft.otp.node.Node` owns one :class:`Registry`. A process has at most one
name; the name is released when the process dies, before its links and monitors are told, so a
supervisor restarting it can register the name again. Lookups take no lock.
The module-level functions act on the current node (``node.current()``) unless ``node`` is given.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from waraft.otp.errors import NOPROC, RegistrationError

if TYPE_CHECKING:
    from waraft.otp.node import Node
    from waraft.otp.pid import Pid


class Registry:
    """Names -> pids on one node."""

    __slots__ = ("_lock", "_names", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._names: dict[str, Pid] = {}
        self._lock = threading.Lock()

    def whereis(self, name: str) -> Pid | None:
        """The live process registered as ``name``, or None."""
        pid = self._names.get(name)
        if pid is None or pid._dead:
            return None
        return pid

    def register(self, name: str, pid: Pid) -> None:
        """Register ``pid`` as ``name``; raise :class:`RegistrationError` if that cannot be."""
        if pid.node_id != self.node_id:
            raise RegistrationError(("not_local", pid))
        with self._lock:
            holder = self._names.get(name)
            if holder is not None and not holder._dead:
                raise RegistrationError(("already_registered", holder))
            if pid._dead:
                raise RegistrationError(NOPROC)
            if pid._name is not None:
                raise RegistrationError(("already_named", pid._name))
            self._names[name] = pid
            pid._name = name

    def unregister(self, name: str) -> None:
        """Remove ``name``; raise ``RegistrationError("not_registered")`` if nobody holds it."""
        with self._lock:
            pid = self._names.pop(name, None)
            if pid is None:
                raise RegistrationError("not_registered")
            pid._name = None

    def registered(self) -> list[str]:
        """Every name held by a live process."""
        return [name for name, pid in list(self._names.items()) if not pid._dead]

    def _release(self, name: str, pid: Pid) -> None:
        """Drop ``name`` if ``pid`` still holds it (called when ``pid`` dies)."""
        with self._lock:
            if self._names.get(name) is pid:
                del self._names[name]


def _node(node: Node | None) -> Node:
    if node is not None:
        return node
    from waraft.otp.node import current

    return current()


def register(name: str, pid: Pid | None = None, *, node: Node | None = None) -> None:
    """Register ``pid`` (default: the calling process) under ``name`` on its node."""
    if pid is None:
        from waraft.otp.process import self_pid

        pid = self_pid()
        if pid is None:
            raise RegistrationError(NOPROC)
    target = node if node is not None else pid.node
    target.registry.register(name, pid)


def whereis(name: str, *, node: Node | None = None) -> Pid | None:
    """The live process registered as ``name`` on the (current) node, or None."""
    return _node(node).registry.whereis(name)


def unregister(name: str, *, node: Node | None = None) -> None:
    """Release ``name`` on the (current) node."""
    _node(node).registry.unregister(name)


def registered(*, node: Node | None = None) -> list[str]:
    """The names registered on the (current) node."""
    return _node(node).registry.registered()
