"""Inline handlers: casts a registered function takes in the receive thread itself.

A cast from another node normally goes receive thread → the target actor's mailbox → the
actor's thread: two threads and a wake-up per message. For a few hot, thread-safe entry points
(the acceptor's client gateway, a client's reply receiver) that hop is most of the cost of a
small request, so they may register a function here that the receive thread calls directly:
``fn(msg)`` returns True when it handled the message, False to have it delivered to the
registered process as usual. A handler runs on the network thread: it must be quick, must not
block (no ``call``), and must not raise (an exception is logged and the message dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Handler = Callable[[Any], bool]

_handlers: dict[str, Handler] = {}
_idle: dict[str, Callable[[], None]] = {}


def set_handler(name: str, handler: Handler | None) -> None:
    """Register (or with None, remove) the inline handler of casts to ``name``."""
    if handler is None:
        _handlers.pop(name, None)
    else:
        _handlers[name] = handler


def handler(name: str) -> Handler | None:
    """The inline handler registered for ``name``, if any."""
    return _handlers.get(name)


def set_idle_hook(name: str, hook: Callable[[], None] | None) -> None:
    """Register (or remove) ``hook()``, called by the receive thread whenever it has taken
    every frame that had arrived, before it waits for more: an inline handler that collects
    work can hand it on there, one batch per burst of frames."""
    if hook is None:
        _idle.pop(name, None)
    else:
        _idle[name] = hook


def run_idle_hooks() -> None:
    """Called by the receive thread when its socket is drained."""
    for hook in list(_idle.values()):
        try:
            hook()
        except Exception:
            logger.exception("an inline idle hook raised")
