"""Death and exit signals (internal): what happens, in any thread, when a process exits.

``die(pid, reason)`` is the single exit path: mark the pid dead (reason first, so lock-free
readers that see ``_dead`` also see why), release its name, fail every caller still waiting
on it (queued calls, the call being handled, deferred ones), wake its thread so it can end,
then tell links and monitors, set ``_done`` (whoever waits on ``_done`` finds the EXIT/DOWN
messages already queued), and last, if ``init`` had not returned, fail its starter's
``start`` with the reason. Linked processes that do not trap exits die in turn; the
cascade is a loop, not a recursion.

Links and monitors across nodes: a dying process whose link set holds a remote end, or whose
monitors include a :class:`~waraft.otp.pid.RemoteWatcher`, hands them to the installed
:class:`~waraft.otp.node.RemoteSignals` (which sends them on without blocking), and so do the
remote monitors it held itself (cancelled, as Erlang drops a dead process's monitors). What
comes back from other nodes enters through :func:`remote_down` and :func:`remote_link_exit`.
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from typing import Any

import pykka

from waraft.otp import node as _node
from waraft.otp.errors import KILL, KILLED, NORMAL
from waraft.otp.mailbox import CALL, DOWN, EXIT, LINK_EXIT, UNSET, WAKE_ENV, Envelope
from waraft.otp.pid import MonitorRef, Pid, Ref, RemoteLinkEnd
from waraft.otp.timer import cancel_own

logger = logging.getLogger(__name__)


def die(pid: Pid, reason: Any) -> None:
    """Make ``pid`` exit with ``reason`` now (no-op if it already exited)."""
    work: deque[tuple[Pid, Any]] = deque([(pid, reason)])
    while work:
        victim, why = work.popleft()
        work.extend(_finalize(victim, why))


def _finalize(pid: Pid, reason: Any) -> list[tuple[Pid, Any]]:
    with pid._lock:
        if pid._dead:
            return []
        pid._exit_reason = reason
        pid._dead = True
        links = pid._links
        pid._links = set()
        monitors = pid._monitors
        pid._monitors = {}
    actor = pid._actor
    name = pid._name
    if name is not None:
        pid._node.registry._release(name, pid)
    pid._node._forget(pid)
    if actor is not None:
        actor.actor_stopped.set()
        pykka.ActorRegistry.unregister(actor.actor_ref)
        actor._fail_callers(reason)
        cancel_own(actor)
    _drain(pid, reason)
    pid._inbox.put(WAKE_ENV)  # an idle thread wakes, sees it is stopped, and ends
    kills: list[tuple[Pid, Any]] = []
    remote = _node._remote_signals
    for other in links:
        if type(other) is not Pid:
            if remote is not None:
                _safely(remote.exited, pid, other, reason)
            continue
        kill_reason = exit_signal(other, pid, reason, via_link=True)
        if kill_reason is not UNSET:
            kills.append((other, kill_reason))
    for ref, watcher in monitors.items():
        if type(watcher) is not Pid:
            if remote is not None:
                _safely(remote.down, watcher, ref, pid, reason)
        elif not watcher._dead:
            watcher._inbox.put(Envelope(DOWN, (ref, pid, reason)))
    if remote is not None and actor is not None and actor._monitoring:
        for ref in list(actor._monitoring):
            if isinstance(ref, MonitorRef) and ref._remote is not None:
                _safely(remote.demonitor, ref)
    pid._actor = None
    pid._done.set()
    if actor is not None:
        # Last, as _init_failed always did: a starter still waiting for init (whatever killed
        # the process: its scheduler failing, an exit signal, node stop) hears of it now and
        # finds the name released and the EXIT/DOWN already sent.
        actor._fail_starter(reason)
    return kills


def _safely(fn: Any, *args: Any) -> None:
    # A failing carrier must not stop the rest of a process's exit from happening.
    try:
        fn(*args)
    except Exception:
        logger.exception("remote signal %s failed", getattr(fn, "__name__", fn))


def remote_down(watcher: Pid, ref: Ref, who: tuple[str, str], reason: Any) -> None:
    """Deliver ``('DOWN', ref, who, reason)`` to ``watcher`` for a monitor across nodes
    (dropped if ``watcher`` is dead or has demonitored ``ref`` by the time it is handled)."""
    if not watcher._dead:
        watcher._inbox.put(Envelope(DOWN, (ref, who, reason)))


def remote_link_exit(pid: Pid, end: RemoteLinkEnd, reason: Any) -> None:
    """The remote ``end`` linked with ``pid`` exited with ``reason`` (or its node was lost:
    ``"noconnection"``): act as a local exit signal over the link would. Ignored unless
    ``end`` is still in ``pid``'s link set (an unlink since then wins)."""
    with pid._lock:
        if pid._dead or end not in pid._links:
            return
        actor = pid._actor
        if actor is None or not actor.trap_exit:
            # Gone before dying, so this death is not reported back along the same link.
            pid._links.discard(end)
    kill_reason = exit_signal(pid, end, reason, via_link=True)
    if kill_reason is not UNSET:
        die(pid, kill_reason)


def _drain(pid: Pid, reason: Any) -> None:
    inbox = pid._inbox
    while True:
        try:
            env = inbox.get_nowait()
        except queue.Empty:
            return
        if isinstance(env, Envelope):
            if env.kind == CALL and env.from_ is not None:
                env.from_.fail(reason)
        elif getattr(env, "reply_to", None) is not None:  # someone used pykka's ask/stop
            dead = pykka.ActorDeadError(f"{pid!r} exited: {reason!r}")
            env.reply_to.set_exception((pykka.ActorDeadError, dead, None))


def exit_signal(
    target: Pid, sender: Pid | RemoteLinkEnd | None, reason: Any, *, via_link: bool
) -> Any:
    """Deliver an exit signal; return the reason ``target`` must die with, else ``UNSET``.

    The trap decision is taken here, at delivery, so an EXIT message queues behind the
    sender's earlier messages (per-pair FIFO holds).
    """
    if target._dead:
        return UNSET
    if reason == KILL and not via_link:
        return KILLED
    actor = target._actor
    if actor is None:
        return UNSET
    if actor.trap_exit:
        kind = LINK_EXIT if via_link else EXIT
        target._inbox.put(Envelope(kind, (sender, reason)))
        return UNSET
    if reason == NORMAL:
        if via_link and sender is not None:
            with target._lock:
                target._links.discard(sender)
        return UNSET
    return reason


def unlink_pair(a: Pid, b: Pid) -> None:
    """Remove the link between ``a`` and ``b`` (locks taken in pid order)."""
    first, second = (a, b) if a._id < b._id else (b, a)
    with first._lock, second._lock:
        a._links.discard(b)
        b._links.discard(a)


def link_pair(a: Pid, b: Pid) -> bool:
    """Link ``a`` and ``b``; False (and no link) if either is dead."""
    first, second = (a, b) if a._id < b._id else (b, a)
    with first._lock, second._lock:
        if a._dead or b._dead:
            return False
        a._links.add(b)
        b._links.add(a)
        return True
