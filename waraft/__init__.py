"""waraft: WhatsApp's WARaft (Raft consensus) rebuilt in Python on OTP-style actors.

The quick start, as in WARaft's README::

    >>> import waraft
    >>> spec = waraft.sup.child_spec("test_app", [{"table": "test", "partition": 1}])
    >>> waraft.otp.supervisor.start_child("kernel_sup", spec)

Importing this package starts no thread and loads sub-packages (``waraft.otp``,
``waraft.server``, ...) on first attribute access.
"""

from __future__ import annotations

import importlib
import itertools
import os
from types import ModuleType

from waraft.core.types import Config, Entry, Identity, LogPos

__version__ = "0.1.0"

_LAZY_SUBMODULES = frozenset(
    {
        "acceptor",
        "app",
        "cli",
        "client",
        "codec",
        "core",
        "dist",
        "distribution",
        "durable_state",
        "env",
        "info",
        "label",
        "log",
        "metrics",
        "otp",
        "partition",
        "part_sup",
        "queue",
        "server",
        "services",
        "sim",
        "snapshot_catchup",
        "storage",
        "sup",
        "transport",
    }
)


class Ref(bytes):
    """A unique, msgpack-friendly key (WARaft's ``make_ref()`` keys in commit ops)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"#Ref<{self.hex()}>"


_ref_prefix = os.urandom(8)
_ref_counter = itertools.count(1)


def make_ref() -> Ref:
    """A new unique key: random per process, then a counter (cheap, never repeats)."""
    return Ref(_ref_prefix + next(_ref_counter).to_bytes(8, "big"))


def node() -> str:
    """This node's id (``"nonode@nohost"`` until a node name is set)."""
    from waraft.otp import node as otp_node

    return otp_node.current().id


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)


__all__ = [
    "Config",
    "Entry",
    "Identity",
    "LogPos",
    "Ref",
    "__version__",
    "make_ref",
    "node",
    *sorted(_LAZY_SUBMODULES),
]
