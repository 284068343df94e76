"""waraft: WhatsApp's WARaft (Raft consensus) rebuilt in Python on OTP-style actors.

Importing this package starts no thread and imports no sub-package eagerly: sub-packages
(``waraft.otp`` …) are loaded on first attribute access.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

_LAZY_SUBMODULES = frozenset({"otp", "cli"})

__all__ = ["__version__", "cli", "otp"]


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
