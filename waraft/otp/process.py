"""Processes: Erlang-style actors on pykka, on a thread each or scheduled.

A :class:`Process` is a pykka actor driven through our own envelopes rather than pykka's
ask/proxy machinery. It is one of two process types (:mod:`~waraft.otp.sched`): ``"thread"``
runs it on an OS thread of its own, as a ``pykka.ThreadingActor``; ``"scheduled"`` runs it as a
greenlet on one of its node's scheduler threads, through the same pykka actor loop (pykka's
``_create_actor_inbox``/``_start_actor_loop`` hooks). The type is ``start(process_type=...)``
if given, else the class attribute ``process_type`` if set, else the node's
(``Node(process_type=...)``), else the process-wide default
(:func:`~waraft.otp.sched.set_default_process_type`). Every rule below holds for both:

* ``call`` puts one envelope carrying a :class:`~waraft.otp.reply.LocalReplyTo` into the
  callee's mailbox and waits on it; ``cast``/``send`` put one envelope and return. Mailboxes
  are ``queue.SimpleQueue`` (thread) or a deque with a run-queue flag (scheduled); no other
  lock is taken per message.
* Let it crash: an exception escaping any handler (call, cast, info, a timer, a next event)
  stops the process with ``("error", "Type: text")``. ``terminate(reason)`` runs, every caller
  still waiting on this process fails with ``ExitError(reason)`` (the call being handled and
  deferred calls included, unless already answered: as ``gen_server:call`` monitors the
  callee), the registered name is released, then links and monitors are told.
* ``terminate`` runs when the process stops itself (``stop_self``), is stopped with
  :func:`stop` (``gen_server:stop``), crashes, or traps exits and gets an exit signal from the
  process that started it with ``start_link`` (its supervisor). It does not run when ``init``
  fails, nor when the process is killed by an exit signal it does not trap, nor on ``kill``
  (as in Erlang).

Python cannot kill a thread (nor a greenlet from another thread), so an exit signal that kills
a process (``"kill"``, or any abnormal reason to a process that does not trap exits) takes
effect *at once* for the rest of the system: the process is marked dead, its name is released,
waiting callers fail (the caller whose call it is handling too), links and monitors get the
reason (``"killed"`` for ``kill``), and a starter still waiting for its ``init`` gets
``StartError(reason)``. What it is running stops as soon as Python allows:

* a scheduled process stops at its next wait (``call``, ``sleep``, ``blocking``, an
  :class:`~waraft.otp.sched.Event`, ``start``/``stop``/``wait_exit``): the wait it is resumed
  from raises a private ``BaseException`` that unwinds the handler (``finally`` blocks run;
  ``except Exception`` does not catch it), so nothing it would have done after that wait
  happens. Code between two waits still runs to the next one.
* a thread process cannot be interrupted: a handler that is running runs to completion (its
  sends still go out), and no further message is handled.

A process that ignores its supervisor's shutdown timeout is killed this way: it is *abandoned*
(logged at error, reported as ``killed``), and if its thread is stuck forever it stays stuck,
as a daemon thread.

A scheduled process must not block its thread (sleep, I/O, ``threading`` waits): ``call``,
``start``, ``stop``, ``wait_exit`` and :class:`~waraft.otp.sched.Event` yield instead. A class
whose code must block sets ``process_type = "thread"``.

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
from typing import TYPE_CHECKING, Any, ClassVar

import pykka

from waraft.otp import node as _node
from waraft.otp import sched as _sched
from waraft.otp import timer as _timer
from waraft.otp.errors import (
    KILLED,
    NORMAL,
    TIMEOUT,
    ExitError,
    RegistrationError,
    StartError,
    error_reason,
)
from waraft.otp.logsafe import LogThrottle, bounded_repr
from waraft.otp.mailbox import (
    CALL,
    CAST,
    DOWN,
    EXIT,
    INFO,
    LINK_EXIT,
    STOP,
    UNSET,
    Envelope,
    as_inbox,
)
from waraft.otp.messaging import (
    CastReply,
    Target,
    call,
    cast,
    demonitor,
    exit,
    is_alive,
    kill,
    link,
    monitor,
    self_pid,
    send,
    send_request,
    stop,
    stop_or_kill,
    unlink,
    wait_exit,
    wait_response,
    whereis_target,
)
from waraft.otp.pid import MonitorRef, Pid, Ref, RemoteLinkEnd, make_ref
from waraft.otp.reply import NOREPLY, LocalReplyTo, ReplyTo, reply
from waraft.otp.signals import die, link_pair, unlink_pair

if TYPE_CHECKING:
    import greenlet

    from waraft.otp.timer import TimerRef

__all__ = [
    "NOREPLY",
    "CastReply",
    "LocalReplyTo",
    "MonitorRef",
    "Pid",
    "Process",
    "Ref",
    "ReplyTo",
    "Target",
    "call",
    "cast",
    "demonitor",
    "exit",
    "is_alive",
    "kill",
    "link",
    "make_ref",
    "monitor",
    "reply",
    "self_pid",
    "send",
    "send_request",
    "start",
    "start_link",
    "stop",
    "stop_or_kill",
    "unlink",
    "wait_exit",
    "wait_response",
    "whereis_target",
]

logger = logging.getLogger(__name__)

_DEFERRED_PRUNE_MIN = 1024
_UNEXPECTED_INFO_LOG = LogThrottle()
"""The default ``handle_info``'s lines, one a second for every process together: what a process
does not expect may come from anything that can send to it (the wire's infos reached it once,
and a client key filled a node's disk with them)."""


class _Boot:
    """What ``start`` hands to the new process."""

    __slots__ = ("args", "kind", "name", "node", "parent", "pid", "ready")

    def __init__(
        self,
        args: tuple[Any, ...],
        name: str | None,
        node: _node.Node,
        parent: Pid | None,
        kind: str | None,
    ) -> None:
        self.args = args
        self.name = name
        self.node = node
        self.parent = parent
        self.kind = kind
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
    _spread_children: bool = False  # set by a supervisor while it starts a child supervisor
    process_type: ClassVar[str | None] = None
    """``"thread"``, ``"scheduled"``, or None for the node's / process-wide default."""

    def __init__(self, boot: _Boot) -> None:
        node = boot.node
        kind = (
            boot.kind
            or type(self).process_type
            or node.process_type
            or _sched.default_process_type()
        )
        # Read by _create_actor_inbox, which pykka's __init__ calls.
        self._sched: _sched.Scheduler | None = _place(node) if kind == _sched.SCHEDULED else None
        self._greenlet: greenlet.greenlet | None = None
        super().__init__()
        self._boot: _Boot | None = boot
        # The starter's handle until init returns: a death before then (a kill, a failed
        # scheduler, node stop) must reach the starter from the killing thread (signals.die),
        # since this process may never run again to report it.
        self._starter: LocalReplyTo | None = boot.ready
        self.pid: Pid = Pid(boot.node, as_inbox(self.actor_inbox), self)
        boot.pid = self.pid
        self.node: _node.Node = boot.node
        self._parent: Pid | None = boot.parent
        self._deferred: set[ReplyTo] = set()
        self._in_call: ReplyTo | None = None  # the call whose handler runs (or ran last)
        self._timers: set[TimerRef] = set()  # armed to itself: cancelled at exit (timer._own)
        self._timers_limit = _timer._OWN_PRUNE_MIN
        self._deferred_limit = _DEFERRED_PRUNE_MIN
        self._next_events: deque[Any] = deque()
        self._monitoring: set[Ref] = set()
        self._stop_reason: Any = UNSET
        if self._sched is not None:
            self.pid._loop_done = _sched.Event()
        self._setup_identity(boot)

    def _setup_identity(self, boot: _Boot) -> None:
        # Runs in the starter's thread before the actor thread exists: a taken name means the
        # new process never runs init, and the parent link exists before init can fail.
        pid = self.pid
        if boot.name is not None:
            try:
                boot.node.registry.register(boot.name, pid)
            except RegistrationError as exc:
                pid._exit_reason = NORMAL
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
        if boot.parent is not None:
            link_pair(pid, boot.parent)

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]  # per instance, not static
        if self._sched is None:
            return queue.SimpleQueue()
        inbox = _sched.SchedInbox()
        inbox._proc = self
        return inbox

    def _start_actor_loop(self) -> None:
        sched = self._sched
        if sched is None:
            super()._start_actor_loop()
        else:
            # The scheduler creates the greenlet in its own thread (a greenlet runs only on
            # the thread that created it) when it first picks the process from its run queue.
            sched.runq.put(self)

    def _scheduled_main(self) -> None:
        """The body of a scheduled process's greenlet: pykka's actor loop."""
        _node._tls.proc = self
        _node._tls.node = self.node
        try:
            self._actor_loop()
        finally:
            done = self.pid._loop_done
            if done is not None:
                done.set()

    # ------------------------------------------------------------------ starting
    @classmethod
    def start(  # type: ignore[override]  # returns a Pid, not a pykka ActorRef
        cls,
        *args: Any,
        name: str | None = None,
        link: bool = False,
        timeout: float | None = None,
        node: _node.Node | None = None,
        process_type: str | None = None,
    ) -> Pid:
        """Start a process running ``init(*args)``; return its pid once ``init`` returned.

        ``name`` registers it on its node (a taken name raises
        ``StartError(("already_started", pid))`` and no thread is started). ``link`` links it
        to the calling process. Raises ``StartError(reason)`` if ``init`` fails or the process
        dies before ``init`` returned (at once, whatever killed it: an exit signal, its
        scheduler failing, node stop), and ``StartError("timeout")`` (after killing it) if
        ``init`` takes longer than ``timeout``.
        ``process_type`` overrides the class's for this process (e.g. ``"thread"`` when the
        arguments make it block).
        """
        return start(
            cls, *args, name=name, link=link, timeout=timeout, node=node, process_type=process_type
        )

    @classmethod
    def start_link(
        cls,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        node: _node.Node | None = None,
        process_type: str | None = None,
    ) -> Pid:
        """``start`` + link to the calling process (a supervisor's child start function)."""
        return start(
            cls, *args, name=name, link=True, timeout=timeout, node=node, process_type=process_type
        )

    # ------------------------------------------------------------------ callbacks
    def init(self, *args: Any) -> None:
        """Runs in the new process before any message; raise to fail the start."""

    def handle_call(self, request: Any, from_: ReplyTo) -> Any:
        """Answer a call: return the reply, or :data:`NOREPLY` and complete ``from_`` later."""
        raise NotImplementedError(f"{type(self).__name__} got an unexpected call: {request!r}")

    def handle_cast(self, msg: Any) -> None:
        """Handle a cast."""
        raise NotImplementedError(f"{type(self).__name__} got an unexpected cast: {msg!r}")

    def handle_info(self, msg: Any) -> None:
        """Handle anything else: timers, ``('EXIT', pid, reason)``,
        ``('DOWN', ref, pid, reason)``, plain sends. The default drops it with a warning: at
        most one line a second over every process (``_UNEXPECTED_INFO_LOG``), naming the
        latest message in a bounded repr and how many the line stands for."""
        count = _UNEXPECTED_INFO_LOG.ready()
        if count:
            logger.warning(
                "%s %r dropped an unexpected message: %s (%d dropped since the last such line)",
                self._tag(),
                self.pid,
                bounded_repr(msg),
                count,
            )

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
        if self._sched is None:
            thread = threading.current_thread()
            thread.name = f"otp:{type(self).__name__}{pid!r}"
            pid._thread = thread
        try:
            self.init(*boot.args)
            if self._stop_reason is not UNSET:
                raise StartError(self._stop_reason)
        except BaseException as exc:
            self._init_failed(boot, exc)
            return
        boot.ready.reply(None)
        self._starter = None
        if self._next_events and not pid._dead:
            try:
                self._drain_next_events()
            except BaseException as exc:
                self._crash(exc)
                return
            self._after_dispatch()

    def _init_failed(self, boot: _Boot, exc: BaseException) -> None:
        if self.pid._dead:  # killed while init ran (e.g. a start timeout): nothing to report
            boot.ready.fail(self.pid._exit_reason)
            return
        if isinstance(exc, StartError):
            reason = exc.reason
            logger.info("%s %r failed to start: %r", type(self).__name__, self.pid, reason)
        else:
            reason = error_reason(exc)
            logger.error("%s %r crashed in init", type(self).__name__, self.pid, exc_info=exc)
        # Like proc_lib: the starter learns the reason from start(), not from an EXIT.
        parent = boot.parent
        if parent is not None:
            unlink_pair(self.pid, parent)
        die(self.pid, reason)
        boot.ready.fail(reason)

    def _handle_receive(self, message: Any) -> Any:
        # Every message of a waraft process is an Envelope: skip pykka's four proxy-message
        # type tests (its own messages, should any come, still take its path).
        if type(message) is Envelope:
            return self.on_receive(message)
        return super()._handle_receive(message)

    def on_receive(self, message: Any) -> Any:
        env: Envelope = message
        if self.pid._dead:
            self._late_cleanup(env)
            return None
        kind = env.kind
        try:
            if kind == CAST:
                self.handle_cast(env.payload)
            elif kind == CALL:
                self._dispatch_call(env.payload, env.from_)  # type: ignore[arg-type]
            elif kind == INFO:
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
        # Recorded so that a death while the handler runs (a kill, an abandon, a failed
        # scheduler, a crash) fails this caller too, as gen_server:call's monitor would. Not
        # cleared after the reply: failing a completed handle does nothing, and one attribute
        # write is all a call pays for it.
        self._in_call = from_
        result = self.handle_call(request, from_)
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
        if kind == LINK_EXIT:
            sender, reason = payload
            pid = self.pid
            with pid._lock:
                linked = sender in pid._links
                pid._links.discard(sender)
            if linked:  # an unlink since it was sent flushes it, as unlink/1 + flush would
                self._on_trapped_exit(sender, reason)
        elif kind == EXIT:
            sender, reason = payload
            self._on_trapped_exit(sender, reason)
        elif kind == DOWN:
            ref, who, reason = payload
            if ref in self._monitoring:  # demonitor flushes, as demonitor(Ref, [flush])
                self._monitoring.discard(ref)
                self._dispatch_info(("DOWN", ref, who, reason))
        elif kind == STOP:
            self._stop_reason = payload

    def _on_trapped_exit(self, sender: Pid | RemoteLinkEnd | None, reason: Any) -> None:
        if sender is not None and sender is self._parent:
            self._stop_reason = reason  # gen_server: an exit from the parent terminates
        else:
            self._dispatch_info(("EXIT", sender, reason))

    def _drain_next_events(self) -> None:
        events = self._next_events
        while events and self._stop_reason is UNSET and not self.pid._dead:
            self.handle_next_event(events.popleft())

    def _after_dispatch(self) -> None:
        if self._stop_reason is not UNSET:
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
            except _sched._Exited:
                pass  # killed while terminate waited (e.g. past its shutdown timeout)
            except BaseException:
                logger.exception("%s %r: terminate(%r) raised", self._tag(), self.pid, reason)
        die(self.pid, reason)
        self._late_cleanup(None)

    def _late_cleanup(self, env: Envelope | None) -> None:
        """The process is dead (maybe killed from another thread): answer what is left."""
        reason = self.pid._exit_reason
        if env is not None and env.kind == CALL and env.from_ is not None:
            env.from_.fail(reason)
        self._fail_callers(reason)
        self.actor_stopped.set()

    def _fail_starter(self, reason: Any) -> None:
        """The process died: if ``init`` had not returned, its starter's ``start`` raises
        ``StartError(reason)`` now (ignored once ``init`` answered). Any thread may call it."""
        starter = self._starter
        if starter is not None:
            self._starter = None
            starter.fail(reason)

    def _fail_callers(self, reason: Any) -> None:
        """Fail every call this process still owes an answer: the one being handled and the
        deferred ones (those already answered ignore it). Any thread may call it."""
        in_call = self._in_call
        if in_call is not None:
            in_call.fail(reason)
        for from_ in list(self._deferred):
            from_.fail(reason)


# ---------------------------------------------------------------------- starting
def _place(node: _node.Node) -> _sched.Scheduler:
    """The scheduler of a new scheduled process on ``node``.

    As BEAM does, a process spawned by a scheduled process of the same node shares its
    scheduler: they exchange messages without waking another thread (a call in-thread costs
    about a tenth of a call across scheduler threads, benchmarks/otp_bench.py). Spawns from
    elsewhere, and child supervisors (whole subtrees), go round robin over the schedulers.
    """
    spawner = _node._tls.proc
    if (
        spawner is not None
        and spawner._sched is not None
        and spawner.node is node
        and not spawner._spread_children
    ):
        return spawner._sched
    return node._scheduler_pool().assign()


def start(
    cls: type[Process],
    *args: Any,
    name: str | None = None,
    link: bool = False,
    timeout: float | None = None,
    node: _node.Node | None = None,
    process_type: str | None = None,
) -> Pid:
    """Start ``cls`` (see :meth:`Process.start`)."""
    here = node if node is not None else _node.current()
    parent = self_pid() if link else None
    kind = None if process_type is None else _sched._check_type(process_type)
    boot = _Boot(args, name, here, parent, kind)
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
                unlink_pair(pid, parent)
            die(pid, KILLED)
            raise StartError(TIMEOUT) from None
        raise StartError(exc.reason) from None
    return pid


def start_link(
    cls: type[Process],
    *args: Any,
    name: str | None = None,
    timeout: float | None = None,
    node: _node.Node | None = None,
    process_type: str | None = None,
) -> Pid:
    """``start`` + link to the calling process."""
    return start(
        cls, *args, name=name, link=True, timeout=timeout, node=node, process_type=process_type
    )
