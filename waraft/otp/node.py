"""Nodes: independent runtimes (registry, ``kernel_sup``, identity) inside one Python process.

Erlang keeps one registry per node. Tests run several "nodes" in one Python process, so the
registry, the root supervisor and the node id belong to a :class:`Node`, and a call or cast to
``(name, node_id)`` whose node lives in this process is delivered directly: that *is* the
in-process distribution. ``set_link_filter`` cuts traffic between two local nodes for fault
injection; ``set_remote_router`` plugs in the transport to nodes in other processes
(``waraft.distribution``) and ``set_remote_signals`` the carrier of links and monitors to them.

Which node is "current": inside an actor, the actor's node; elsewhere, the node activated for
this thread with ``with some_node.activate():``; else the process default node, created lazily
as ``nonode@nohost`` unless ``set_default``/``start_default`` chose another.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol

from waraft.otp.registry import Registry

if TYPE_CHECKING:
    from waraft.otp.pid import MonitorRef, Pid, Ref, RemoteLinkEnd, RemoteWatcher
    from waraft.otp.process import Process
    from waraft.otp.sched import IoPool, SchedulerPool

logger = logging.getLogger(__name__)

DEFAULT_NODE_ID = "nonode@nohost"
DEFAULT_MAX_PROCESSES = 262_144
"""Erlang's default process limit; ``WARAFT_OTP_MAX_PROCESSES`` overrides it."""
MEMORY_CHECK_INTERVAL = 0.1
"""Seconds a resident-size reading is reused: a bootstrap spawns thousands of processes, and
reading ``/proc`` for each would cost more than the spawn."""


def resident_bytes() -> int | None:
    """This OS process's resident set size (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


LinkFilter = Callable[[str, str], bool]


class RemoteRouter(Protocol):
    """Carries calls and casts to nodes outside this Python process (``waraft.distribution``).

    ``cast`` returns False when the message could not be sent. ``call`` raises
    ``ExitError`` like a local call (``("nodedown", node)``, ``"timeout"``, ``"noproc"``, ...).
    A router may also offer ``send(addr, msg) -> bool`` for ``handle_info`` delivery; without
    it, ``send`` to a remote address is dropped. It may offer ``frame_limit(node_id) -> int |
    None``, the largest frame a message to that node can travel in (None: no limit).
    """

    def cast(self, addr: tuple[str, str], msg: Any) -> bool: ...

    def call(self, addr: tuple[str, str], request: Any, timeout: float | None) -> Any: ...


class RemoteSignals(Protocol):
    """Carries links, monitors and exit signals to nodes outside this Python process
    (``waraft.distribution``), as Erlang's distribution does.

    Every method may be called from any thread, including one that is finalizing a dying
    process, so none may block or raise. The implementation reports back through
    :func:`waraft.otp.signals.remote_down` and :func:`waraft.otp.signals.remote_link_exit`.
    """

    def monitor(self, watcher: Pid, ref: MonitorRef, addr: tuple[str, str]) -> None:
        """Ask ``addr``'s node to monitor it for ``watcher``; a ``DOWN`` for ``ref`` follows."""
        ...

    def demonitor(self, ref: MonitorRef) -> None:
        """Cancel the remote monitor ``ref`` (no ``DOWN`` will be delivered for it)."""
        ...

    def link(self, pid: Pid, addr: tuple[str, str]) -> None:
        """Link local ``pid`` (whose link set already holds ``addr``) with remote ``addr``."""
        ...

    def unlink(self, pid: Pid, addr: tuple[str, str]) -> None:
        """Remove the link between local ``pid`` and remote ``addr``."""
        ...

    def exited(self, pid: Pid, end: RemoteLinkEnd, reason: Any) -> None:
        """Local ``pid``, linked with the remote ``end``, exited with ``reason``."""
        ...

    def down(self, watcher: RemoteWatcher, ref: Ref, pid: Pid, reason: Any) -> None:
        """Local ``pid``, monitored by the remote ``watcher``, exited with ``reason``."""
        ...


class _ThreadState(threading.local):
    node: Node | None = None
    proc: Process | None = None


_tls = _ThreadState()
_nodes_lock = threading.RLock()
_local: dict[str, Node] = {}
_default: Node | None = None
_remote_router: RemoteRouter | None = None
_remote_signals: RemoteSignals | None = None
# Read lock-free on every cross-node send; None (the common case) costs one global lookup.
_link_filter: LinkFilter | None = None
_atexit_installed = False


MAX_PROCESSES_VAR: Final = "WARAFT_OTP_MAX_PROCESSES"
MAX_MEMORY_VAR: Final = "WARAFT_OTP_MAX_MEMORY_MB"


def limit_from_env(variable: str, default: int, minimum: int) -> int:
    """The whole number the environment variable ``variable`` holds (``default`` when unset
    or blank); :class:`ValueError` naming the variable and its value when it is not a whole
    number of at least ``minimum`` (a bare ``int()`` error named neither)."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{variable} must be a whole number >= {minimum}, got {text!r}"[:200])
    return value


def max_processes_from_env() -> int:
    """``WARAFT_OTP_MAX_PROCESSES`` (at least 1), else ``DEFAULT_MAX_PROCESSES``."""
    return limit_from_env(MAX_PROCESSES_VAR, DEFAULT_MAX_PROCESSES, 1)


def max_memory_mb_from_env() -> int:
    """``WARAFT_OTP_MAX_MEMORY_MB`` (MiB, 0: no limit), else 0."""
    return limit_from_env(MAX_MEMORY_VAR, 0, 0)


class Node:
    """A runtime instance: ``id``, ``registry``, its processes and its ``kernel_sup``.

    ``process_type`` (``"thread"``/``"scheduled"``, None = the process-wide default) is the
    type of processes whose class does not choose one; ``schedulers`` the number of scheduler
    threads for scheduled processes (None = ``sched.default_schedulers()``), started with the
    first one; ``long_hold_ms`` when a scheduled process's run is reported as too long;
    ``io_threads`` the threads that run ``otp.blocking`` calls (None =
    ``sched.default_io_threads()``), started with the first one; ``max_processes`` the live
    processes beyond which a start fails with
    ``StartError(("system_limit", text))`` (None = ``WARAFT_OTP_MAX_PROCESSES`` or 262,144);
    ``max_memory_mb`` the resident size of the OS process beyond which a start fails the same
    way (None = ``WARAFT_OTP_MAX_MEMORY_MB``, else 0: no limit). Running processes are not
    touched: like BEAM's process limit, it refuses new work instead of killing old.

    A node stops itself when it cannot go on, as BEAM halts: a scheduler thread failed
    (``("scheduler_failed", text)``), the timer thread every node shares failed
    (``("timer_failed", text)``: every local node stops) or ``kernel_sup`` exited
    (``("kernel_sup_exited", reason)``, e.g. its restart intensity was reached).
    :attr:`failure` then says why, and the hooks given to :meth:`on_failure` are called: the
    embedding program must learn of it, since what it runs around the node (distribution, a
    metrics server) would otherwise keep answering for a node that serves nothing.
    """

    def __init__(
        self,
        name: str,
        *,
        process_type: str | None = None,
        schedulers: int | None = None,
        long_hold_ms: float | None = None,
        max_processes: int | None = None,
        io_threads: int | None = None,
        max_memory_mb: int | None = None,
    ) -> None:
        from waraft.otp import sched

        self.name = name
        self.id = name
        self.process_type = None if process_type is None else sched._check_type(process_type)
        self._n_schedulers = schedulers
        self._long_hold_ms = sched.DEFAULT_LONG_HOLD_MS if long_hold_ms is None else long_hold_ms
        if long_hold_ms is not None and not long_hold_ms > 0:
            raise ValueError(f"long_hold_ms must be > 0, not {long_hold_ms!r}")
        if max_processes is None:
            max_processes = max_processes_from_env()
        self.max_processes = max_processes
        if max_memory_mb is None:
            max_memory_mb = max_memory_mb_from_env()
        if max_memory_mb < 0:
            raise ValueError(f"max_memory_mb must be >= 0, not {max_memory_mb}")
        self.max_memory_mb = max_memory_mb
        self._rss_reading: tuple[float, int | None] = (-MEMORY_CHECK_INTERVAL, None)
        self._pool: SchedulerPool | None = None
        self._n_io_threads = io_threads
        self._io: IoPool | None = None
        self._io_closed = False  # stop() has taken ``_io`` to stop: none may be started after
        self.registry = Registry(name)
        self._lock = threading.Lock()
        # Insertion-ordered set of live processes, so stop() can go in reverse start order.
        self._procs: dict[Pid, None] = {}
        self._alive = True
        self._kernel: Pid | None = None  # kernel_sup once started: its exit stops the node
        self._failure: Any = None
        self._failure_hooks: list[Callable[[Any], None]] = []
        self._stopped = threading.Event()
        with _nodes_lock:
            if name in _local:
                raise ValueError(f"a node named {name!r} already exists in this process")
            _local[name] = self
            _install_atexit()

    def __repr__(self) -> str:
        return f"Node({self.id!r})"

    @property
    def alive(self) -> bool:
        """False once :meth:`stop` has begun."""
        return self._alive

    @property
    def failure(self) -> Any:
        """None, or why the node stopped itself (see the class docstring)."""
        return self._failure

    def on_failure(self, hook: Callable[[Any], None]) -> None:
        """Have ``hook(reason)`` called once if the node stops itself on a failure; at once,
        in the caller's thread, if it already has. It is called in the thread that saw the
        failure, while the node is being stopped: it must not block (set an event, and do the
        work in the thread that waits on it). An exception it raises is logged."""
        with self._lock:
            reason = self._failure
            if reason is None:
                self._failure_hooks.append(hook)
                return
        _call_hook(hook, reason)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`stop` (whoever called it) has finished; False on timeout."""
        return self._stopped.wait(timeout)

    def _fail(self, reason: Any, before_stop: Callable[[], None] | None = None) -> None:
        """The node cannot go on: record why (starts are refused from now on), run
        ``before_stop`` (always, even if the node had already failed), then stop the node from
        a thread of its own (stopping joins threads the caller may be one of) and tell the
        hooks. The first failure is the one reported: what ``before_stop`` causes (the
        processes it kills may include ``kernel_sup``) is not another."""
        with self._lock:
            first = self._failure is None
            if first:
                self._failure = reason
                hooks, self._failure_hooks = self._failure_hooks, []
        if before_stop is not None:
            before_stop()
        if not first:
            return
        logger.critical("node %s failed (%r): stopping it", self.id, reason)
        threading.Thread(target=self.stop, name=f"otp:stop:{self.id}", daemon=True).start()
        for hook in hooks:
            _call_hook(hook, reason)

    def _set_kernel(self, pid: Pid) -> None:
        """``pid`` is this node's ``kernel_sup``: from now on its exit stops the node."""
        self._kernel = pid
        if pid._dead:  # it exited before we looked: _forget did not know it yet
            self._kernel_exited(pid)

    def _kernel_exited(self, pid: Pid) -> None:
        # Only while the node runs: stop() itself stops kernel_sup first.
        if self._alive:
            self._fail(("kernel_sup_exited", pid._exit_reason))

    @contextmanager
    def activate(self) -> Iterator[Node]:
        """Make this node current for the calling thread inside the ``with`` block."""
        previous = _tls.node
        _tls.node = self
        try:
            yield self
        finally:
            _tls.node = previous

    def processes(self) -> list[Pid]:
        """The live processes of this node, in start order."""
        with self._lock:
            return list(self._procs)

    def _scheduler_pool(self) -> SchedulerPool:
        """The node's scheduler threads, started on first use."""
        pool = self._pool
        if pool is not None:
            return pool
        from waraft.otp import sched

        with self._lock:
            if self._pool is None:
                count = self._n_schedulers or sched.default_schedulers()
                self._pool = sched.SchedulerPool(self, count, self._long_hold_ms)
            return self._pool

    def _io_pool(self) -> IoPool | None:
        """The node's I/O threads for ``otp.blocking``, started on first use; None once
        ``stop`` has come to stopping them and there were none: threads started then would
        never be stopped (a process still running past its stop, say on a scheduler thread
        the stop gave up on, calls ``blocking`` on its own thread then)."""
        io = self._io
        if io is not None:
            return io
        from waraft.otp import sched

        with self._lock:
            if self._io is None and not self._io_closed:
                self._io = sched.IoPool(self, self._n_io_threads or sched.default_io_threads())
            return self._io

    def _adopt(self, pid: Pid) -> None:
        from waraft.otp.errors import StartError

        with self._lock:
            if not self._alive:
                raise StartError("node_stopped")
            if self._failure is not None:
                raise StartError(self._failure)
            if len(self._procs) >= self.max_processes:
                raise StartError(
                    (
                        "system_limit",
                        f"node {self.id} already runs {len(self._procs)} processes "
                        f"(max_processes={self.max_processes})",
                    )
                )
            if self.max_memory_mb:
                self._check_memory()
            self._procs[pid] = None

    def _check_memory(self) -> None:
        """Refuse a start while the OS process's resident size exceeds ``max_memory_mb``."""
        from waraft.otp.errors import StartError

        now = time.monotonic()
        taken_at, rss = self._rss_reading
        if now - taken_at >= MEMORY_CHECK_INTERVAL:
            rss = resident_bytes()
            self._rss_reading = (now, rss)
        if rss is not None and rss > self.max_memory_mb << 20:
            raise StartError(
                (
                    "system_limit",
                    f"node {self.id} uses {rss >> 20} MiB resident "
                    f"(max_memory_mb={self.max_memory_mb})",
                )
            )

    def _forget(self, pid: Pid) -> None:
        with self._lock:
            self._procs.pop(pid, None)
        if pid is self._kernel:
            self._kernel_exited(pid)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop ``kernel_sup`` (and its tree), then every other process, newest first.

        Each process gets ``timeout`` seconds to run ``terminate``; one that does not stop is
        killed (abandoned). Waits up to ``timeout`` more for the threads and greenlets to
        finish, then ends the scheduler threads. Idempotent: a second call returns at once
        (:meth:`wait_stopped` waits for the first to finish).
        """
        from waraft.otp import process

        with self._lock:
            if not self._alive:
                return
            self._alive = False
            snapshot = list(self._procs)
        kernel = self.registry.whereis("kernel_sup")
        if kernel is not None:
            process.stop_or_kill(kernel, "shutdown", timeout)
        # Roots first, newest first: a supervisor stops its own children in its order, and a
        # child stopped behind its supervisor's back would only be restarted.
        for pid in reversed(self.processes()):
            if _is_root(pid):
                process.stop_or_kill(pid, "shutdown", timeout)
        for pid in reversed(self.processes()):
            process.stop_or_kill(pid, "shutdown", timeout)
        deadline = time.monotonic() + timeout
        _join_threads(snapshot, timeout)
        pool = self._pool
        if pool is not None:
            pool.stop(deadline)
        with self._lock:
            self._io_closed = True  # a pool started past this point would never be stopped
            io = self._io
        if io is not None:
            io.stop(deadline)
        global _default
        with _nodes_lock:
            if _local.get(self.id) is self:
                del _local[self.id]
            if _default is self:
                _default = None
        self._stopped.set()


def _call_hook(hook: Callable[[Any], None], reason: Any) -> None:
    try:
        hook(reason)
    except Exception:  # one hook's bug must not keep the others (or the stop) from running
        logger.exception("node failure hook %r raised", hook)


def _is_root(pid: Pid) -> bool:
    actor = pid._actor
    if actor is None:
        return False
    parent = actor._parent
    return parent is None or parent._dead


def _join_threads(pids: list[Pid], timeout: float) -> None:
    """Wait (bounded) for the threads and greenlets of ``pids`` to end."""
    deadline = time.monotonic() + timeout
    me = threading.current_thread()
    caller = _tls.proc
    for pid in pids:
        thread = pid._thread
        if thread is not None:
            if thread is me:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.error("thread of %r still running after node stop (abandoned)", pid)
        elif (
            pid._loop_done is not None
            and (caller is None or caller.pid is not pid)
            and not pid._loop_done.wait(max(0.0, deadline - time.monotonic()))
        ):
            logger.error("%r still running after node stop (abandoned)", pid)


def current() -> Node:
    """The calling actor's node, else this thread's active node, else the default node."""
    node = _tls.node
    if node is not None:
        return node
    return default()


def default() -> Node:
    """The process default node, created on first use (``nonode@nohost``)."""
    global _default
    node = _default
    if node is not None and node._alive:
        return node
    with _nodes_lock:
        if _default is None or not _default._alive:
            existing = _local.get(DEFAULT_NODE_ID)
            _default = existing if existing is not None else Node(DEFAULT_NODE_ID)
        return _default


def set_default(node: Node) -> None:
    """Make ``node`` the process default node."""
    global _default
    with _nodes_lock:
        _default = node


def start_default(node_id: str) -> Node:
    """Create a node called ``node_id`` and make it the default node."""
    node = Node(node_id)
    set_default(node)
    return node


def local_nodes() -> dict[str, Node]:
    """Every node alive in this Python process, keyed by id."""
    with _nodes_lock:
        return dict(_local)


def get(node_id: str) -> Node | None:
    """The local node with this id, or None."""
    return _local.get(node_id)


def set_remote_router(router: RemoteRouter | None) -> None:
    """Install (or remove, with None) the router for nodes outside this process."""
    global _remote_router
    _remote_router = router


def remote_router() -> RemoteRouter | None:
    """The installed remote router, if any."""
    return _remote_router


def set_remote_signals(signals: RemoteSignals | None) -> None:
    """Install (or remove, with None) the carrier of links and monitors to other processes."""
    global _remote_signals
    _remote_signals = signals


def remote_signals() -> RemoteSignals | None:
    """The installed carrier of remote links and monitors, if any."""
    return _remote_signals


def set_link_filter(fn: LinkFilter | None) -> None:
    """Install a fault-injection filter between local nodes (None removes it).

    ``fn(src_node_id, dst_node_id)`` returning False drops casts and sends from ``src`` to
    ``dst`` and makes calls fail at once with ``ExitError(("nodedown", dst))``. Links,
    monitors and exit signals are not filtered.
    """
    global _link_filter
    _link_filter = fn


def link_filter() -> LinkFilter | None:
    """The installed link filter, if any."""
    return _link_filter


def stop_all(timeout: float = 5.0) -> None:
    """Stop every local node (tests call this between cases; also run at interpreter exit)."""
    for node in list(local_nodes().values()):
        try:
            node.stop(timeout)
        except Exception:
            logger.exception("stopping %r failed", node)


def _install_atexit() -> None:
    # Actor threads are daemons so a stuck actor cannot hang interpreter exit; stopping the
    # nodes at exit still gives every terminate() a bounded chance to run.
    global _atexit_installed
    if not _atexit_installed:
        _atexit_installed = True
        atexit.register(stop_all, 2.0)
