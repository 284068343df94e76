"""Inline handlers: casts a registered function takes in the receive thread itself.

A cast from another node normally goes receive thread → the target actor's mailbox → the
actor's thread: two threads and a wake-up per message. For a few hot, thread-safe entry points
(the acceptor's client gateway, a client's reply receiver) that hop is most of the cost of a
small request, so they may register a function here that the receive thread calls directly:
``fn(msg, origin)`` returns True when it handled the message, False to have it delivered to
the registered process as usual. ``origin`` is who sent it, as far as the connection tells:
with CURVE, the user id its key authenticated as (``role:name``, the same for every node id
and process of that key); without CURVE, or with keys of the older form (which identify
nobody), the node id the sender claims (no security boundary). The client gateway stamps it
on session registers as their owner (``waraft.core.sessions``). A handler runs on the network
thread: it must be quick, must not block (no ``call``), and must not raise (an exception is
logged and the message dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from waraft.otp.node import Node
    from waraft.services.codec import Peek

logger = logging.getLogger(__name__)

Handler = Callable[[Any, str], bool]
"""``fn(msg, origin)``: see the module docstring."""

_handlers: dict[str, Handler] = {}
_idle: dict[str, Callable[[], None]] = {}
# Names whose idle hook has work to hand on. Only the receive thread adds (from an inline
# handler) and takes, so a node with thousands of registered hooks runs only the few that
# collected something in the last burst, and none at all while no frame arrives.
_due: set[str] = set()


def set_handler(name: str, handler: Handler | None) -> None:
    """Register (or with None, remove) the inline handler of casts to ``name``."""
    if handler is None:
        _handlers.pop(name, None)
    else:
        _handlers[name] = handler


def handler(name: str) -> Handler | None:
    """The inline handler registered for ``name``, if any."""
    return _handlers.get(name)


UnservedHandler = Callable[[str, Any, str], bool]
"""``fn(name, msg, origin)``: see :func:`set_unserved_handler`."""

_unserved: dict[str, UnservedHandler] = {}


def set_unserved_handler(prefix: str, handler: UnservedHandler | None) -> None:
    """Register (or with None, remove) ``handler(name, msg, origin)`` for the casts to names
    starting with ``prefix`` that no process has: the receive thread calls it instead of
    dropping such a cast, so that the layer that owns the names can answer ("no such
    partition here") rather than leave the sender to time out. True: handled. The same rules
    as an inline handler's apply (quick, no blocking, no raising); the cast was admitted by
    the name's rules or by ``policy.allow_prefix``."""
    if handler is None:
        _unserved.pop(prefix, None)
    else:
        _unserved[prefix] = handler


def unserved(name: str, msg: Any, origin: str) -> bool:
    """Hand a cast to ``name``, which no process has, to its prefix's handler; True if one
    took it."""
    took: bool = _by_prefix(_unserved, name, (msg, origin), False, "unserved-name")
    return took


UnservedCallHandler = Callable[[str, Any, "Node"], Any]
"""``fn(name, request, node)``: see :func:`set_unserved_call_handler`."""

_unserved_calls: dict[str, UnservedCallHandler] = {}


class FailCall(NamedTuple):
    """An unserved-call handler's answer that fails the call with ``reason`` (the caller's
    ``otp.call`` raises ``ExitError(reason)``, as for ``noproc``) instead of replying: for a
    call whose answer is data, where no reply value could say "not here right now".
    ``reason`` must encode as msgpack (a string, as exit reasons are)."""

    reason: Any


def set_unserved_call_handler(prefix: str, handler: UnservedCallHandler | None) -> None:
    """Register (or with None, remove) ``handler(name, request, node)`` for the calls to
    names starting with ``prefix`` that no process has on ``node`` (this node: the receive
    thread belongs to none): the call is answered with what the handler returns, failed
    with the reason of a ``FailCall`` it returns, or failed ``noproc`` as before when it
    returns None. So the layer that owns the names can tell a caller more than "no such
    process" (a partition that is restarting), where only this node can know it. The call
    was admitted by the name's rules or by ``policy.allow_prefix``; the handler runs on the
    receive thread (quick, no blocking, no raising: an exception is logged and the call
    failed ``noproc``)."""
    if handler is None:
        _unserved_calls.pop(prefix, None)
    else:
        _unserved_calls[prefix] = handler


def unserved_call(name: str, request: Any, node: Node) -> Any:
    """The answer of ``name``'s prefix handler to a call no process on ``node`` can take;
    a ``FailCall``: fail it with that reason; None: fail it ``noproc``."""
    return _by_prefix(_unserved_calls, name, (request, node), None, "unserved-call")


ShedHandler = Callable[[str, "Peek", str], bool]
"""``fn(name, reader, sender)``: see :func:`set_shed_handler`."""

_shed: dict[str, ShedHandler] = {}


def set_shed_handler(prefix: str, handler: ShedHandler | None) -> None:
    """Register (or with None, remove) ``handler(name, reader, sender)`` for the casts to
    names starting with ``prefix`` that the receive thread sheds, undecoded, because their
    key is over its share of the thread (``receiver``): so the layer that owns a cast that
    expects an answer (a client batch carries its reply address) can answer it at once
    (``("error", "overloaded")``) instead of leaving its sender to time out. ``reader``
    (``codec.Peek``) reads the message's leading values from the frame's first bytes only,
    raising ``CodecError`` past them; ``sender`` is the node id the connection speaks as,
    and an answer may go to that node only (a shed cast was not admitted: no guard checked
    its reply address). True: answered. The receive thread limits how many shed frames per
    key it looks at; the handler must be quick, must not block and must not raise."""
    if handler is None:
        _shed.pop(prefix, None)
    else:
        _shed[prefix] = handler


def shed(name: str, reader: Peek, sender: str) -> bool:
    """Hand a shed cast to ``name`` to its prefix's shed handler; True if one answered it."""
    took: bool = _by_prefix(_shed, name, (reader, sender), False, "shed")
    return took


def _by_prefix(
    handlers: dict[str, Callable[..., Any]],
    name: str,
    args: tuple[Any, ...],
    failed: Any,
    what: str,
) -> Any:
    """``handler(name, *args)`` of the first prefix of ``handlers`` that ``name`` starts
    with; ``failed`` when none does, or when the handler raised (logged: a handler runs on
    the receive thread, which must go on)."""
    for prefix, handler in handlers.items():
        if name.startswith(prefix):
            try:
                return handler(name, *args)
            except Exception:
                logger.exception("the %s handler of %s raised", what, prefix)
                return failed
    return failed


def set_idle_hook(name: str, hook: Callable[[], None] | None) -> None:
    """Register (or remove) ``hook()``, called by the receive thread once it has taken every
    frame that had arrived, before it waits for more, if :func:`idle_work_due` was called for
    ``name`` since: an inline handler that collects work hands it on there, one batch per
    burst of frames."""
    if hook is None:
        _idle.pop(name, None)
        _due.discard(name)
    else:
        _idle[name] = hook


def idle_work_due(name: str) -> None:
    """Ask for ``name``'s idle hook at the end of the current burst (receive thread only:
    call it from the inline handler that collected the work)."""
    _due.add(name)


def has_due_work() -> bool:
    """Whether any idle hook is due (the receive thread's cheap check)."""
    return bool(_due)


def run_idle_hooks() -> None:
    """Called by the receive thread when its socket is drained: run the hooks that are due."""
    if not _due:
        return
    due = list(_due)
    _due.clear()
    for name in due:
        hook = _idle.get(name)
        if hook is None:
            continue
        try:
            hook()
        except Exception:
            logger.exception("the idle hook of %s raised", name)
