"""Addressing and messaging: ``call``/``cast``/``send``, links, monitors, exit signals, stop.

A *target* is a :class:`Pid`, a name registered on the current node, or ``(name, node_id)``.
A ``(name, node_id)`` on a node that lives in this Python process is delivered directly
(subject to the node link filter); any other node goes through the remote router.

The hot path: ``cast``/``send`` to a Pid with no link filter installed is a type check, a dead
check and one mailbox put; ``call`` adds one lock-backed reply handle and a wait on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from waraft.otp import node as _node
from waraft.otp.errors import CALLING_SELF, KILL, KILLED, NOPROC, NORMAL, TIMEOUT, ExitError
from waraft.otp.mailbox import CALL, CAST, DOWN, EXIT, INFO, STOP, UNSET, Envelope
from waraft.otp.pid import MonitorRef, Pid, Ref
from waraft.otp.reply import LocalReplyTo, ReplyTo
from waraft.otp.signals import (
    die,
    exit_signal,
    link_pair,
    remote_down,
    remote_link_exit,
    unlink_pair,
)

if TYPE_CHECKING:
    from waraft.otp.process import Process

logger = logging.getLogger(__name__)

Target = Pid | str | tuple[str, str]
"""A pid, a name registered on the current node, or ``(name, node_id)``."""


class _Unreachable(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


def self_pid() -> Pid | None:
    """The pid of the calling process, or None outside actors."""
    proc = _node._tls.proc
    return None if proc is None else proc.pid


def _current_process() -> Process:
    proc = _node._tls.proc
    if proc is None:
        raise RuntimeError("this operation needs a calling process (call it from an actor)")
    return proc


def _check_filter(dst: str) -> None:
    fn = _node._link_filter
    if fn is not None:
        src = _node.current().id
        if src != dst and not fn(src, dst):
            raise _Unreachable(dst)


def _resolve(target: Target) -> Pid | tuple[str, str] | None:
    """A local pid, a remote ``(name, node_id)``, or None; raises ``_Unreachable``."""
    if type(target) is Pid:
        if _node._link_filter is not None:
            _check_filter(target.node_id)
        return target
    if isinstance(target, str):
        return _node.current().registry.whereis(target)
    if isinstance(target, tuple) and len(target) == 2:
        name, node_id = target
        here = _node.current()
        if node_id == here.id:
            return here.registry.whereis(name)
        if _node._link_filter is not None:
            _check_filter(node_id)
        other = _node._local.get(node_id)
        if other is not None:
            return other.registry.whereis(name)
        return (name, node_id)
    raise TypeError(f"not a process address: {target!r}")


def whereis_target(target: Target) -> Pid | None:
    """Resolve ``target`` to a live local pid (no link filter), or None."""
    if type(target) is Pid:
        return None if target._dead else target
    try:
        resolved = _resolve(target)
    except _Unreachable:
        return None
    return resolved if isinstance(resolved, Pid) and not resolved._dead else None


# ---------------------------------------------------------------------- messaging API
def cast(target: Target, msg: Any) -> None:
    """Deliver ``msg`` to ``handle_cast``; never raises (dropped if nobody is there)."""
    if type(target) is Pid and _node._link_filter is None:
        if not target._dead:
            target._inbox.put(Envelope(CAST, msg))
    else:
        _deliver(target, CAST, msg, _remote_cast)


def send(target: Target, msg: Any) -> None:
    """Deliver ``msg`` to ``handle_info``; never raises."""
    if type(target) is Pid and _node._link_filter is None:
        if not target._dead:
            target._inbox.put(Envelope(INFO, msg))
    else:
        _deliver(target, INFO, msg, _remote_send)


def _deliver(
    target: Target, kind: int, msg: Any, remote: Callable[[tuple[str, str], Any], None]
) -> None:
    """``cast``/``send`` to anything but a plain pid: resolve it (names, ``(name, node)``,
    the link filter), then one mailbox put or the remote router; dropped if unreachable."""
    try:
        pid = _resolve(target)
    except _Unreachable:
        return
    if isinstance(pid, tuple):
        remote(pid, msg)
    elif pid is not None and not pid._dead:
        pid._inbox.put(Envelope(kind, msg))


def _remote_cast(addr: tuple[str, str], msg: Any) -> None:
    router = _node._remote_router
    if router is not None:
        try:
            router.cast(addr, msg)
        except Exception:
            logger.exception("remote cast to %r failed", addr)


def _remote_send(addr: tuple[str, str], msg: Any) -> None:
    router = _node._remote_router
    send_fn: Callable[[tuple[str, str], Any], bool] | None = getattr(router, "send", None)
    if send_fn is not None:
        try:
            send_fn(addr, msg)
        except Exception:
            logger.exception("remote send to %r failed", addr)


def call(target: Target, request: Any, timeout: float | None = 5.0) -> Any:
    """Send ``request`` to ``handle_call`` and wait for the reply (``timeout`` seconds,
    None = forever). Raises ``ExitError`` with ``"noproc"``, ``"timeout"``,
    ``("nodedown", node)``, ``"calling_self"`` or the callee's exit reason."""
    if type(target) is Pid and _node._link_filter is None:
        pid: Any = target
    else:
        try:
            pid = _resolve(target)
        except _Unreachable as exc:
            raise ExitError(("nodedown", exc.node_id)) from None
        if type(pid) is not Pid:
            if pid is None:
                raise ExitError(NOPROC)
            return _remote_call(pid, request, timeout)
    if pid._dead:
        raise ExitError(NOPROC)
    me = _node._tls.proc
    if me is not None and me.pid is pid:
        raise ExitError(CALLING_SELF)
    from_ = LocalReplyTo()
    pid._inbox.put(Envelope(CALL, request, from_))
    if pid._dead:  # died around our put: its drain may have missed the envelope
        from_.fail(pid._exit_reason)
    return from_.wait(timeout)


def _remote_call(addr: tuple[str, str], request: Any, timeout: float | None) -> Any:
    router = _node._remote_router
    if router is None:
        raise ExitError(("nodedown", addr[1]))
    return router.call(addr, request, timeout)


def send_request(target: Target, request: Any, from_: ReplyTo | None = None) -> ReplyTo:
    """Deliver a call without waiting (``gen_server:send_request``).

    The reply completes ``from_`` (a new :class:`LocalReplyTo` if None; wait on it with
    :func:`wait_response`). ``waraft.distribution`` passes its remote handle here to inject calls
    from other nodes. Delivery failures complete the handle with ``fail``.
    """
    handle: ReplyTo = LocalReplyTo() if from_ is None else from_
    try:
        pid = _resolve(target)
    except _Unreachable as exc:
        handle.fail(("nodedown", exc.node_id))
        return handle
    if pid is None:
        handle.fail(NOPROC)
        return handle
    if isinstance(pid, tuple):
        handle.fail(("nodedown", pid[1]))  # remote requests go through the router's call
        return handle
    if pid._dead:
        handle.fail(NOPROC)
        return handle
    pid._inbox.put(Envelope(CALL, request, handle))
    if pid._dead:
        handle.fail(pid._exit_reason)
    return handle


class CastReply(ReplyTo):
    """A reply handle whose outcome comes back as a message: completing it casts
    ``wrap(ok, value)`` to ``target`` (``ok`` False: the request failed, ``value`` is the
    reason). For a process that must not wait on a call that takes as long as the callee's
    work does (a snapshot copied or loaded): it ``send_request``s with this handle and keeps
    serving, and reads the answer in its mailbox, where a callee's death delivers it too."""

    __slots__ = ("_target", "_wrap")

    def __init__(self, target: Target, wrap: Callable[[bool, Any], Any]) -> None:
        super().__init__()
        self._target = target
        self._wrap = wrap

    def _complete(self, ok: bool, value: Any) -> None:
        cast(self._target, self._wrap(ok, value))


def wait_response(handle: ReplyTo, timeout: float | None = 5.0) -> Any:
    """Wait for a :func:`send_request` reply; raises ``ExitError`` like :func:`call`."""
    if not isinstance(handle, LocalReplyTo):
        raise TypeError("only local reply handles can be waited on")
    return handle.wait(timeout)


# ---------------------------------------------------------------------- links and monitors
NOCONNECTION = "noconnection"
"""The reason of a DOWN or link exit when the other process's node is lost or unreachable."""


def _remote_addr(target: Target) -> tuple[str, str] | None:
    """``target`` as ``(name, node_id)`` if it is a process on a node outside this Python
    process (links and monitors ignore the link filter, as in Erlang)."""
    if isinstance(target, tuple) and len(target) == 2:
        name, node_id = target
        if node_id != _node.current().id and node_id not in _node._local:
            return (name, node_id)
    return None


def link(target: Target) -> None:
    """Link the calling process with ``target`` (both directions).

    Linking to a process that does not exist delivers an exit signal ``noproc`` to the caller
    (an ``('EXIT', target, 'noproc')`` message if it traps exits). ``target`` may be a
    ``(name, node_id)`` on another node: exits then travel both ways over the distribution,
    a lost node counts as an exit with ``"noconnection"``, and the caller sees that process
    as ``(name, node_id)`` in its ``EXIT`` messages.
    """
    proc = _current_process()
    me = proc.pid
    addr = _remote_addr(target)
    if addr is not None:
        _link_remote(proc, addr)
        return
    pid = target if type(target) is Pid else whereis_target(target)
    if pid is me or (pid is not None and link_pair(me, pid)):
        return
    if proc.trap_exit:
        me._inbox.put(Envelope(EXIT, (pid, NOPROC)))
    else:
        die(me, NOPROC)


def _link_remote(proc: Process, addr: tuple[str, str]) -> None:
    me = proc.pid
    remote = _node._remote_signals
    with me._lock:
        known = addr in me._links
        if not known:
            me._links.add(addr)
    if known:
        return
    if remote is not None:
        remote.link(me, addr)
    else:  # no distribution: the node is as unreachable as a lost one
        remote_link_exit(me, addr, NOCONNECTION)


def unlink(target: Target) -> None:
    """Remove the link between the caller and ``target``; an EXIT from it not yet handled
    is dropped (``unlink`` + flush)."""
    me = _current_process().pid
    addr = _remote_addr(target)
    if addr is not None:
        with me._lock:
            known = addr in me._links
            me._links.discard(addr)
        remote = _node._remote_signals
        if known and remote is not None:
            remote.unlink(me, addr)
        return
    pid = target if type(target) is Pid else whereis_target(target)
    if pid is not None and pid is not me:
        unlink_pair(me, pid)


def monitor(target: Target) -> MonitorRef:
    """Monitor ``target``: ``('DOWN', ref, pid, reason)`` arrives in ``handle_info`` when it
    exits; ``reason`` is ``"noproc"`` at once if it does not exist.

    For a ``(name, node_id)`` on another node, the ``DOWN`` names that address and its reason
    is the process's exit reason, ``"noproc"`` if no process has that name there, or
    ``"noconnection"`` if the node is lost (or was never reachable)."""
    proc = _current_process()
    addr = _remote_addr(target)
    if addr is not None:
        ref = MonitorRef(None, addr)
        proc._monitoring.add(ref)
        remote = _node._remote_signals
        if remote is not None:
            remote.monitor(proc.pid, ref, addr)
        else:
            remote_down(proc.pid, ref, addr, NOCONNECTION)
        return ref
    pid = target if type(target) is Pid else whereis_target(target)
    ref = MonitorRef(pid)
    proc._monitoring.add(ref)
    if pid is not None:
        with pid._lock:
            if not pid._dead:
                pid._monitors[ref] = proc.pid
                return ref
    who: Any = pid if pid is not None else target
    proc.pid._inbox.put(Envelope(DOWN, (ref, who, NOPROC)))
    return ref


def demonitor(ref: Ref) -> bool:
    """Stop monitoring; a DOWN for ``ref`` not yet handled is dropped. True if it was active."""
    proc = _current_process()
    active = ref in proc._monitoring
    proc._monitoring.discard(ref)
    if isinstance(ref, MonitorRef) and ref._remote is not None:
        remote = _node._remote_signals
        if active and remote is not None:
            remote.demonitor(ref)
        return active
    target = ref._target if isinstance(ref, MonitorRef) else None
    if target is not None:
        with target._lock:
            target._monitors.pop(ref, None)
    return active


def exit(target: Target, reason: Any) -> None:
    """Send an exit signal (Erlang ``exit/2``).

    ``"kill"`` is untrappable: the target dies at once with ``"killed"`` (see the module
    docstring for what that means for its thread). Otherwise a target that traps exits gets
    ``('EXIT', sender, reason)`` (and, from its parent, terminates); one that does not dies
    with ``reason`` unless it is ``"normal"``.
    """
    pid = whereis_target(target)
    if pid is None:
        return
    kill_reason = exit_signal(pid, self_pid(), reason, via_link=False)
    if kill_reason is not UNSET:
        die(pid, kill_reason)


def kill(target: Target) -> None:
    """``exit(target, "kill")``."""
    exit(target, KILL)


# ---------------------------------------------------------------------- lifecycle
def is_alive(target: Target) -> bool:
    """True if ``target`` names a live local process."""
    return whereis_target(target) is not None


def wait_exit(pid: Pid, timeout: float | None = None) -> Any:
    """Block until ``pid`` has exited and return its exit reason; ``ExitError("timeout")``
    if it is still alive after ``timeout`` seconds. For tests and shutdown code."""
    if not pid._done.wait(timeout):
        raise ExitError(TIMEOUT)
    return pid._exit_reason


def stop(target: Target, reason: Any = NORMAL, timeout: float | None = None) -> None:
    """Stop a process the orderly way (``gen_server:stop``): it finishes the message in hand,
    runs ``terminate(reason)`` and exits with ``reason``; returns when it is dead.

    Raises ``ExitError("noproc")`` if it is not alive, ``ExitError("timeout")`` if it has not
    exited after ``timeout`` seconds (it is left running), and ``ExitError(actual)`` if it
    exited with another reason.
    """
    pid = whereis_target(target)
    if pid is None:
        raise ExitError(NOPROC)
    if pid is self_pid():
        raise ExitError(CALLING_SELF)
    pid._inbox.put(Envelope(STOP, reason))
    if not pid._done.wait(timeout):
        raise ExitError(TIMEOUT)
    actual = pid._exit_reason
    if actual != reason:
        raise ExitError(actual)


def stop_or_kill(pid: Pid, reason: Any, timeout: float) -> None:
    """:func:`stop` with a deadline; a process still running after it is killed (abandoned)."""
    if pid._dead or pid is self_pid():
        return
    try:
        stop(pid, reason, timeout)
    except ExitError as exc:
        if exc.reason == TIMEOUT:
            logger.error(
                "%r did not stop within %.1f s; killed and abandoned (its thread keeps running)",
                pid,
                timeout,
            )
            die(pid, KILLED)
