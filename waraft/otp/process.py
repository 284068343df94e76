"""Processes: Erlang-style actors on pykka threads.

A :class:`Process` is a ``pykka.ThreadingActor`` driven through our own envelopes rather than
pykka's ask/proxy machinery, so that the OTP rules hold:

* ``call`` puts one envelope carrying a :class:`~waraft.otp.reply.LocalReplyTo` into the
  callee's mailbox and waits on it; ``cast``/``send`` put one envelope and return. Mailboxes
  are ``queue.SimpleQueue``; no other lock is taken per message.
* Let it crash: an exception escaping any handler (call, cast, info, a timer, a next event)
  stops the process with ``("error", "Type: text")``. ``terminate(reason)`` runs, every caller
  still waiting on this process fails with ``ExitError(reason)`` (deferred calls included,
  unless already answered), the registered name is released, then links and monitors are told.
* ``terminate`` runs when the process stops itself (``stop_self``), is stopped with
  :func:`stop` (``gen_server:stop``), crashes, or traps exits and gets an exit signal from the
  process that started it with ``start_link`` (its supervisor). It does not run when ``init``
  fails, nor when the process is killed by an exit signal it does not trap, nor on ``kill``
  (as in Erlang).

Python cannot kill a thread, so an exit signal that kills a process (``"kill"``, or any
abnormal reason to a process that does not trap exits) takes effect *at once* for the rest of
the system: the process is marked dead, its name is released, waiting callers fail, links and
monitors get the reason (``"killed"`` for ``kill``). Its thread stops at its next message
boundary; a handler that is running at that moment runs to completion (its sends still go
out) and no further message is handled. A process that ignores its supervisor's shutdown
timeout is killed this way: it is *abandoned* (logged at error, reported as ``killed``), and if
its thread is stuck forever it stays stuck, as a daemon thread.

Ordering: messages from one sender to one receiver arrive in order. Exit signals to a process
that traps exits arrive as ``('EXIT', pid, reason)`` messages behind earlier messages; trap
exits with the class attribute ``trap_exit = True`` (or set it in ``init`` before linking).
A process blocked in a ``call`` notices exit signals only when the call returns.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final
from typing import cast as _tcast

import pykka

from waraft.otp import node as _node
from waraft.otp.errors import (
    CALLING_SELF,
    KILL,
    KILLED,
    NOPROC,
    NORMAL,
    TIMEOUT,
    ExitError,
    RegistrationError,
    StartError,
    error_reason,
)
from waraft.otp.pid import MonitorRef, Pid, Ref
from waraft.otp.reply import NOREPLY, LocalReplyTo, ReplyTo

logger = logging.getLogger(__name__)

Target = Pid | str | tuple[str, str]
"""A pid, a name registered on the current node, or ``(name, node_id)``."""

# Envelope kinds. Small ints compare fast in the dispatch chain; the hot ones come first.
_CAST: Final = 0
_CALL: Final = 1
_INFO: Final = 2
_LINK_EXIT: Final = 3
_EXIT: Final = 4
_DOWN: Final = 5
_STOP: Final = 6
_WAKE: Final = 7

_UNSET: Final[Any] = object()
_DEFERRED_PRUNE_MIN = 1024


class _Envelope:
    """One mailbox entry. pykka's loop reads ``.message`` and ``.reply_to``; ``message`` is the
    envelope itself so that one allocation carries kind, payload and reply handle."""

    __slots__ = ("from_", "kind", "payload")
    reply_to: ClassVar[None] = None  # never a pykka future: replies go through ``from_``

    def __init__(self, kind: int, payload: Any, from_: ReplyTo | None = None) -> None:
        self.kind = kind
        self.payload = payload
        self.from_ = from_

    @property
    def message(self) -> _Envelope:
        return self


_WAKE_ENV: Final = _Envelope(_WAKE, None)


def cast_inbox(inbox: object) -> queue.SimpleQueue[Any]:
    """pykka types the inbox as its own protocol; ours is always a SimpleQueue."""
    return _tcast("queue.SimpleQueue[Any]", inbox)


class _Boot:
    """What ``start`` hands to the new process."""

    __slots__ = ("args", "name", "node", "parent", "pid", "ready")

    def __init__(
        self, args: tuple[Any, ...], name: str | None, node: _node.Node, parent: Pid | None
    ) -> None:
        self.args = args
        self.name = name
        self.node = node
        self.parent = parent
        self.pid: Pid | None = None
        self.ready = LocalReplyTo()


class Process(pykka.ThreadingActor):
    """Base class of every actor. Override ``init`` and the ``handle_*`` callbacks.

    Do not override ``__init__``; start with ``MyProc.start(*args)`` /
    ``MyProc.start_link(*args)`` (or the module functions), which call ``init(*args)`` in the
    new thread and return its :class:`Pid` once ``init`` has returned.
    """

    trap_exit: bool = False
    use_daemon_thread: ClassVar[bool] = True

    def __init__(self, boot: _Boot) -> None:
        super().__init__()
        self._boot: _Boot | None = boot
        self.pid: Pid = Pid(boot.node, cast_inbox(self.actor_inbox), self)
        boot.pid = self.pid
        self.node: _node.Node = boot.node
        self.parent: Pid | None = boot.parent
        self._deferred: set[ReplyTo] = set()
        self._deferred_limit = _DEFERRED_PRUNE_MIN
        self._next_events: deque[Any] = deque()
        self._monitoring: set[Ref] = set()
        self._stop_reason: Any = _UNSET
        self._setup_identity(boot)

    def _setup_identity(self, boot: _Boot) -> None:
        # Runs in the starter's thread before the actor thread exists: a taken name means the
        # new process never runs init, and the parent link exists before init can fail.
        pid = self.pid
        if boot.name is not None:
            try:
                boot.node.registry.register(boot.name, pid)
            except RegistrationError as exc:
                pid._dead = True
                holder = exc.reason[1] if isinstance(exc.reason, tuple) else exc.reason
                raise StartError(("already_started", holder)) from None
        try:
            boot.node._adopt(pid)
        except StartError:
            if boot.name is not None:
                boot.node.registry._release(boot.name, pid)
            pid._dead = True
            raise
        parent = boot.parent
        if parent is not None:
            with parent._lock:
                if not parent._dead:
                    parent._links.add(pid)
                    pid._links.add(parent)

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue[Any]:
        return queue.SimpleQueue()

    # ------------------------------------------------------------------ starting
    @classmethod
    def start(  # type: ignore[override]  # returns a Pid, not a pykka ActorRef
        cls,
        *args: Any,
        name: str | None = None,
        link: bool = False,
        timeout: float | None = None,
        node: _node.Node | None = None,
    ) -> Pid:
        """Start a process running ``init(*args)``; return its pid once ``init`` returned.

        ``name`` registers it on its node (a taken name raises
        ``StartError(("already_started", pid))`` and no thread is started). ``link`` links it
        to the calling process. Raises ``StartError(reason)`` if ``init`` fails, and
        ``StartError("timeout")`` (after killing it) if ``init`` takes longer than ``timeout``.
        """
        return start(cls, *args, name=name, link=link, timeout=timeout, node=node)

    @classmethod
    def start_link(
        cls,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        node: _node.Node | None = None,
    ) -> Pid:
        """``start`` + link to the calling process (a supervisor's child start function)."""
        return start(cls, *args, name=name, link=True, timeout=timeout, node=node)

    # ------------------------------------------------------------------ callbacks
    def init(self, *args: Any) -> None:
        """Runs in the new thread before any message; raise to fail the start."""

    def handle_call(self, request: Any, from_: ReplyTo) -> Any:
        """Answer a call: return the reply, or :data:`NOREPLY` and complete ``from_`` later."""
        raise NotImplementedError(f"{type(self).__name__} got an unexpected call: {request!r}")

    def handle_cast(self, msg: Any) -> None:
        """Handle a cast."""
        raise NotImplementedError(f"{type(self).__name__} got an unexpected cast: {msg!r}")

    def handle_info(self, msg: Any) -> None:
        """Handle anything else: timers, ``('EXIT', pid, reason)``,
        ``('DOWN', ref, pid, reason)``, plain sends. The default logs and drops it."""
        logger.warning("%s %r dropped an unexpected message: %r", self._tag(), self.pid, msg)

    def terminate(self, reason: Any) -> None:
        """Clean-up hook; see the module docstring for when it runs."""

    def handle_next_event(self, event: Any) -> None:
        """Handle an event queued with ``next_event`` (see StateMachine)."""
        raise NotImplementedError(f"{type(self).__name__} got a next event: {event!r}")

    # ------------------------------------------------------------------ helpers
    def _tag(self) -> str:
        return type(self).__name__

    def stop_self(self, reason: Any = NORMAL) -> None:
        """Stop after the current handler returns (a call's reply is sent first)."""
        self._stop_reason = reason

    # ------------------------------------------------------------------ pykka hooks
    def on_start(self) -> None:
        boot = self._boot
        assert boot is not None
        self._boot = None
        pid = self.pid
        _node._tls.node = boot.node
        _node._tls.proc = self
        thread = threading.current_thread()
        thread.name = f"otp:{type(self).__name__}{pid!r}"
        pid._thread = thread
        try:
            self.init(*boot.args)
            if self._stop_reason is not _UNSET:
                raise StartError(self._stop_reason)
        except BaseException as exc:
            self._init_failed(boot, exc)
            return
        boot.ready.reply(None)
        if self._next_events and not pid._dead:
            try:
                self._drain_next_events()
            except BaseException as exc:
                self._crash(exc)
                return
            self._after_dispatch()

    def _init_failed(self, boot: _Boot, exc: BaseException) -> None:
        if isinstance(exc, StartError):
            reason = exc.reason
            logger.info("%s %r failed to start: %r", type(self).__name__, self.pid, reason)
        else:
            reason = error_reason(exc)
            logger.error("%s %r crashed in init", type(self).__name__, self.pid, exc_info=exc)
        # Like proc_lib: the starter learns the reason from start(), not from an EXIT.
        parent = boot.parent
        if parent is not None:
            _unlink_pair(self.pid, parent)
        _die(self.pid, reason)
        boot.ready.fail(reason)

    def on_receive(self, message: Any) -> Any:
        env: _Envelope = message
        if self.pid._dead:
            self._late_cleanup(env)
            return None
        kind = env.kind
        try:
            if kind == _CAST:
                self.handle_cast(env.payload)
            elif kind == _CALL:
                self._dispatch_call(env.payload, env.from_)  # type: ignore[arg-type]
            elif kind == _INFO:
                self._dispatch_info(env.payload)
            else:
                self._dispatch_system(kind, env.payload)
            if self._next_events:
                self._drain_next_events()
        except BaseException as exc:
            self._crash(exc)
            return None
        self._after_dispatch()
        return None

    def on_stop(self) -> None:
        # Only reached if someone used pykka's own stop() on this actor.
        if not self.pid._dead:
            self._exit_with_terminate(NORMAL)

    # ------------------------------------------------------------------ dispatch
    def _dispatch_call(self, request: Any, from_: ReplyTo) -> None:
        try:
            result = self.handle_call(request, from_)
        except BaseException:
            self._deferred.add(from_)  # so the crash path fails this caller too
            raise
        if result is NOREPLY:
            deferred = self._deferred
            deferred.add(from_)
            if len(deferred) > self._deferred_limit:
                self._prune_deferred()
        else:
            from_.reply(result)

    def _prune_deferred(self) -> None:
        # Handles completed elsewhere (by another actor) are dropped in bulk: amortised O(1).
        live = {f for f in self._deferred if not f.done}
        self._deferred = live
        self._deferred_limit = max(_DEFERRED_PRUNE_MIN, 2 * len(live))

    def _dispatch_info(self, msg: Any) -> None:
        self.handle_info(msg)

    def _dispatch_system(self, kind: int, payload: Any) -> None:
        if kind == _LINK_EXIT:
            sender, reason = payload
            pid = self.pid
            with pid._lock:
                linked = sender in pid._links
                pid._links.discard(sender)
            if linked:  # an unlink since it was sent flushes it, as unlink/1 + flush would
                self._on_trapped_exit(sender, reason)
        elif kind == _EXIT:
            sender, reason = payload
            self._on_trapped_exit(sender, reason)
        elif kind == _DOWN:
            ref, who, reason = payload
            if ref in self._monitoring:  # demonitor flushes, as demonitor(Ref, [flush])
                self._monitoring.discard(ref)
                self._dispatch_info(("DOWN", ref, who, reason))
        elif kind == _STOP:
            self._stop_reason = payload

    def _on_trapped_exit(self, sender: Pid | None, reason: Any) -> None:
        if sender is not None and sender is self.parent:
            self._stop_reason = reason  # gen_server: an exit from the parent terminates
        else:
            self._dispatch_info(("EXIT", sender, reason))

    def _drain_next_events(self) -> None:
        events = self._next_events
        while events and self._stop_reason is _UNSET and not self.pid._dead:
            self.handle_next_event(events.popleft())

    def _after_dispatch(self) -> None:
        if self._stop_reason is not _UNSET:
            self._exit_with_terminate(self._stop_reason)
        elif self.pid._dead:
            self._late_cleanup(None)

    # ------------------------------------------------------------------ exiting
    def _crash(self, exc: BaseException) -> None:
        reason = error_reason(exc)
        if self.pid._dead:  # killed while the handler ran; nothing more to report
            self._late_cleanup(None)
            return
        logger.error("%s %r crashed: %s", type(self).__name__, self.pid, reason[1], exc_info=exc)
        self._exit_with_terminate(reason)

    def _exit_with_terminate(self, reason: Any) -> None:
        if not self.pid._dead:
            try:
                self.terminate(reason)
            except BaseException:
                logger.exception("%s %r: terminate(%r) raised", self._tag(), self.pid, reason)
        _die(self.pid, reason)
        self._late_cleanup(None)

    def _late_cleanup(self, env: _Envelope | None) -> None:
        """The process is dead (maybe killed from another thread): answer what is left."""
        reason = self.pid._exit_reason
        if env is not None and env.kind == _CALL and env.from_ is not None:
            env.from_.fail(reason)
        for from_ in list(self._deferred):
            from_.fail(reason)
        self.actor_stopped.set()


# ---------------------------------------------------------------------- death and signals
def _die(pid: Pid, reason: Any) -> None:
    """Mark ``pid`` dead with ``reason`` and tell everyone; callable from any thread.

    Non-trapping linked processes die too; the cascade is iterative, not recursive.
    """
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
        for from_ in list(actor._deferred):
            from_.fail(reason)
    _drain(pid, reason)
    pid._inbox.put(_WAKE_ENV)  # an idle thread wakes, sees it is stopped, and ends
    kills: list[tuple[Pid, Any]] = []
    for other in links:
        kill_reason = _exit_signal(other, pid, reason, via_link=True)
        if kill_reason is not _UNSET:
            kills.append((other, kill_reason))
    for ref, watcher in monitors.items():
        if not watcher._dead:
            watcher._inbox.put(_Envelope(_DOWN, (ref, pid, reason)))
    pid._actor = None
    pid._done.set()  # last: whoever waits on it also finds the EXIT/DOWN already queued
    return kills


def _drain(pid: Pid, reason: Any) -> None:
    inbox = pid._inbox
    while True:
        try:
            env = inbox.get_nowait()
        except queue.Empty:
            return
        if isinstance(env, _Envelope):
            if env.kind == _CALL and env.from_ is not None:
                env.from_.fail(reason)
        elif getattr(env, "reply_to", None) is not None:  # a pykka ask/stop on our actor
            dead = pykka.ActorDeadError(f"{pid!r} exited: {reason!r}")
            env.reply_to.set_exception((pykka.ActorDeadError, dead, None))


def _exit_signal(target: Pid, sender: Pid | None, reason: Any, *, via_link: bool) -> Any:
    """Deliver an exit signal; return the reason ``target`` must die with, else ``_UNSET``."""
    if target._dead:
        return _UNSET
    if reason == KILL and not via_link:
        return KILLED
    actor = target._actor
    if actor is None:
        return _UNSET
    if actor.trap_exit:
        kind = _LINK_EXIT if via_link else _EXIT
        target._inbox.put(_Envelope(kind, (sender, reason)))
        return _UNSET
    if reason == NORMAL:
        if via_link and sender is not None:
            with target._lock:
                target._links.discard(sender)
        return _UNSET
    return reason


def _unlink_pair(a: Pid, b: Pid) -> None:
    first, second = (a, b) if a._id < b._id else (b, a)
    with first._lock, second._lock:
        a._links.discard(b)
        b._links.discard(a)


# ---------------------------------------------------------------------- addressing
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
        pid: Any = target
    else:
        try:
            pid = _resolve(target)
        except _Unreachable:
            return
        if type(pid) is not Pid:
            if pid is not None:
                _remote_cast(pid, msg)
            return
    if not pid._dead:
        pid._inbox.put(_Envelope(_CAST, msg))


def send(target: Target, msg: Any) -> None:
    """Deliver ``msg`` to ``handle_info``; never raises."""
    if type(target) is Pid and _node._link_filter is None:
        pid: Any = target
    else:
        try:
            pid = _resolve(target)
        except _Unreachable:
            return
        if type(pid) is not Pid:
            if pid is not None:
                _remote_send(pid, msg)
            return
    if not pid._dead:
        pid._inbox.put(_Envelope(_INFO, msg))


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
    pid._inbox.put(_Envelope(_CALL, request, from_))
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
    :func:`wait_response`). ``waraft.dist`` passes its remote handle here to inject calls
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
    pid._inbox.put(_Envelope(_CALL, request, handle))
    if pid._dead:
        handle.fail(pid._exit_reason)
    return handle


def wait_response(handle: ReplyTo, timeout: float | None = 5.0) -> Any:
    """Wait for a :func:`send_request` reply; raises ``ExitError`` like :func:`call`."""
    if not isinstance(handle, LocalReplyTo):
        raise TypeError("only local reply handles can be waited on")
    return handle.wait(timeout)


# ---------------------------------------------------------------------- starting
def start(
    cls: type[Process],
    *args: Any,
    name: str | None = None,
    link: bool = False,
    timeout: float | None = None,
    node: _node.Node | None = None,
) -> Pid:
    """Start ``cls`` (see :meth:`Process.start`)."""
    here = node if node is not None else _node.current()
    parent = self_pid() if link else None
    boot = _Boot(args, name, here, parent)
    # pykka's start builds the object (our __init__ registers the name and may refuse) and
    # starts the thread, whose on_start runs init.
    super(Process, cls).start(boot)
    pid = boot.pid
    assert pid is not None
    try:
        boot.ready.wait(timeout)
    except ExitError as exc:
        if exc.reason == TIMEOUT and boot.ready._value is TIMEOUT:
            # init overran: kill it, as proc_lib does; drop the parent link first so the
            # starter hears about it from this exception only.
            if parent is not None:
                _unlink_pair(pid, parent)
            _die(pid, KILLED)
            raise StartError(TIMEOUT) from None
        raise StartError(exc.reason) from None
    return pid


def start_link(
    cls: type[Process],
    *args: Any,
    name: str | None = None,
    timeout: float | None = None,
    node: _node.Node | None = None,
) -> Pid:
    """``start`` + link to the calling process."""
    return start(cls, *args, name=name, link=True, timeout=timeout, node=node)


# ---------------------------------------------------------------------- links and monitors
def link(target: Target) -> None:
    """Link the calling process with ``target`` (both directions).

    Linking to a process that does not exist delivers an exit signal ``noproc`` to the caller
    (an ``('EXIT', target, 'noproc')`` message if it traps exits).
    """
    me = _current_process().pid
    pid = whereis_target(target)
    if pid is me:
        return
    if pid is not None:
        first, second = (me, pid) if me._id < pid._id else (pid, me)
        with first._lock, second._lock:
            if not pid._dead:
                me._links.add(pid)
                pid._links.add(me)
                return
    dead_sender = pid if pid is not None else None
    if _current_process().trap_exit:
        me._inbox.put(_Envelope(_EXIT, (dead_sender, NOPROC)))
    else:
        _die(me, NOPROC)


def unlink(target: Target) -> None:
    """Remove the link between the caller and ``target``; an EXIT from it not yet handled
    is dropped (``unlink`` + flush)."""
    me = _current_process().pid
    pid = target if type(target) is Pid else whereis_target(target)
    if pid is not None and pid is not me:
        _unlink_pair(me, pid)


def monitor(target: Target) -> MonitorRef:
    """Monitor ``target``: ``('DOWN', ref, pid, reason)`` arrives in ``handle_info`` when it
    exits; ``reason`` is ``"noproc"`` at once if it does not exist."""
    proc = _current_process()
    pid = target if type(target) is Pid else whereis_target(target)
    ref = MonitorRef(pid)
    proc._monitoring.add(ref)
    if pid is not None:
        with pid._lock:
            if not pid._dead:
                pid._monitors[ref] = proc.pid
                return ref
    who: Any = pid if pid is not None else target
    proc.pid._inbox.put(_Envelope(_DOWN, (ref, who, NOPROC)))
    return ref


def demonitor(ref: Ref) -> bool:
    """Stop monitoring; a DOWN for ``ref`` not yet handled is dropped. True if it was active."""
    proc = _current_process()
    active = ref in proc._monitoring
    proc._monitoring.discard(ref)
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
    kill_reason = _exit_signal(pid, self_pid(), reason, via_link=False)
    if kill_reason is not _UNSET:
        _die(pid, kill_reason)


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
    pid._inbox.put(_Envelope(_STOP, reason))
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
            _die(pid, KILLED)
