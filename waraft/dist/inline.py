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

from collections.abc import Callable
from typing import Any

Handler = Callable[[Any], bool]

_handlers: dict[str, Handler] = {}


def set_handler(name: str, handler: Handler | None) -> None:
    """Register (or with None, remove) the inline handler of casts to ``name``."""
    if handler is None:
        _handlers.pop(name, None)
    else:
        _handlers[name] = handler


def handler(name: str) -> Handler | None:
    """The inline handler registered for ``name``, if any."""
    return _handlers.get(name)
