"""Pluggable replicated state machines for the simulator.

A simulation replicates one ``StateMachine`` per node. Raft-level commands (``noop``,
``noop_omitted``, config entries) never reach it: the simulated storage handles those, as
WARaft's storage server does before calling its provider. Only users' commands do.

The default is ``KVStateMachine``, the twin of WARaft's ETS storage provider:
``("write", table, key, value)`` → ``"ok"``, ``("delete", table, key)`` → ``"ok"`` and, as
reads, ``("read", table, key)`` → ``("ok", value)`` or ``"not_found"``, ``"noop"`` → ``"ok"``.
(``table`` is carried but ignored, as in WARaft.) It also has the storage actor's two
non-idempotent commands (``waraft.storage.is_derived_command``): ``("append", table, key, v)``
→ ``"ok"`` (the value becomes a tuple with ``v`` at its end) and ``("incr", table, key, n)`` →
``("ok", new_value)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from waraft.core.types import NOOP


class UnknownCommand(ValueError):
    """The state machine does not understand a command (WARaft's provider would crash)."""


class StateMachine(ABC):
    """What a user's replicated state machine provides to the simulator.

    Implementations must be deterministic functions of the commands they are given.
    """

    @abstractmethod
    def apply(self, command: Any, index: int, term: int) -> Any:
        """Apply a committed command at log position ``(index, term)``; return its result."""

    @abstractmethod
    def read(self, command: Any) -> Any:
        """Answer a read command from the current state, without side effects."""

    @abstractmethod
    def snapshot(self) -> Any:
        """An independent copy of the data (later changes must not affect it)."""

    @abstractmethod
    def restore(self, data: Any) -> None:
        """Replace the data with a copy of a ``snapshot()`` result."""

    def load_initial(self, data: Any) -> None:
        """Bootstrap: start from the user's initial ``data`` (``None``: empty)."""
        self.restore(data)


class KVStateMachine(StateMachine):
    """An in-memory key/value store with WARaft's ETS provider command shapes."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}

    def apply(self, command: Any, index: int, term: int) -> Any:
        if command == NOOP:
            return "ok"
        if isinstance(command, tuple):
            if len(command) == 4 and command[0] == "write":
                self.data[command[2]] = command[3]
                return "ok"
            if len(command) == 3 and command[0] == "delete":
                self.data.pop(command[2], None)
                return "ok"
            if len(command) == 4 and command[0] == "append":
                current = self.data.get(command[2], ())
                if not isinstance(current, tuple):
                    return ("error", "not_a_list")
                self.data[command[2]] = (*current, command[3])
                return "ok"
            if len(command) == 4 and command[0] == "incr":
                current = self.data.get(command[2], 0)
                if type(current) is not int or type(command[3]) is not int:
                    return ("error", "not_an_integer")
                self.data[command[2]] = current + command[3]
                return ("ok", current + command[3])
        raise UnknownCommand(command)

    def read(self, command: Any) -> Any:
        if command == NOOP:
            return "ok"
        if isinstance(command, tuple) and len(command) == 3 and command[0] == "read":
            key = command[2]
            if key in self.data:
                return ("ok", self.data[key])
            return "not_found"
        raise UnknownCommand(command)

    def snapshot(self) -> Any:
        return dict(self.data)

    def restore(self, data: Any) -> None:
        self.data = dict(data) if data else {}

    def load_initial(self, data: Any) -> None:
        # WARaft's bootstrap passes provider-specific data; a dict seeds the table.
        self.data = dict(data) if isinstance(data, dict) else {}
