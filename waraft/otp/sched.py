"""Scheduled (lightweight) processes: greenlets on a few scheduler threads per node.

Two process types exist (see :func:`set_default_process_type`):

* ``"thread"``: a ``pykka.ThreadingActor`` with an OS thread of its own (the original type).
  Use it for a process that must block: fsync, LMDB/SQLite transactions, socket loops.
* ``"scheduled"`` (the default; ``WARAFT_OTP_PROCESS_TYPE=thread`` switches a whole Python
  process back): the process is a greenlet run by one of its node's *scheduler threads*
  (``Node(schedulers=...)``, default :func:`default_schedulers`). It costs a greenlet and a
  mailbox, not a thread, so a node can hold thousands.

How a scheduled process runs, as BEAM runs its processes:

* Each scheduler thread owns a *run queue* of runnable processes and a *hub* greenlet that
  switches into them one at a time. A process is pinned to the scheduler it was placed on at
  spawn (round robin): a greenlet can only ever run on the thread that created it.
* The mailbox (:class:`SchedInbox`) is a deque plus a "scheduled" flag. A put on an idle
  process's mailbox sets the flag and pushes the process on its run queue; puts on a process
  that is queued or running only append. No lock is held per message beyond the flag's
  non-blocking acquire.
* Fairness: a process that has handled :data:`FAIRNESS_BUDGET` messages in one run goes to
  the back of its run queue, so a busy process cannot starve the others on its scheduler.
* Blocking inside a scheduled process (``call``, ``start``, ``stop``, ``wait_exit``, a
  supervisor waiting for a child, :class:`Event`) does not block the thread: the process
  records a *waker*, switches back to the hub, and the waker (the reply, the event, or the
  timeout armed on the timer service) puts it back on its run queue exactly once. ``call``
  semantics (timeouts, a late reply dropped, ``calling_self``) are those of the thread type.
* Code that blocks the thread (``time.sleep``, a ``threading`` primitive, I/O) stalls every
  process on that scheduler: run it with :func:`blocking` (on the node's I/O threads, the
  process suspended meanwhile) or make the process a thread process. A run longer than
  ``Node(long_hold_ms=...)`` is logged with the process's name and counted
  (:func:`stats` ``["long_holds"]``); a run still going on is reported by a watchdog on the
  timer thread, so a stuck process is never a silent stall.
* An exception escaping the scheduler loop itself (a bug, not a handler crash: handlers crash
  only their process) kills every process on that scheduler with
  ``("scheduler_failed", text)`` and stops the node, logged at CRITICAL; the node's
  :attr:`~waraft.otp.node.Node.failure` and ``on_failure`` hooks tell the embedding program.

* End of turn: :func:`at_turn_end` lets a scheduled process leave work (sending what it
  gathered) to its scheduler thread, which runs it once its run queue is empty (or after
  :data:`TURN_FLUSH_RUNS` runs while it never empties). The partition servers of a node share
  a few schedulers, so what they send to the same peer node in one turn can leave as one frame.

Importing this module starts no thread; a node's schedulers start with its first scheduled
process and stop at the end of ``Node.stop()``.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from _thread import allocate_lock
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import greenlet

from waraft.otp import node as _node
from waraft.otp.threadname import set_os_name
from waraft.otp.timer import call_later, cancel_timer

if TYPE_CHECKING:
    from waraft.otp.pid import Pid
    from waraft.otp.process import Process
    from waraft.otp.timer import TimerRef

logger = logging.getLogger(__name__)

THREAD: Final = "thread"
SCHEDULED: Final = "scheduled"
PROCESS_TYPES: Final = (THREAD, SCHEDULED)

FAIRNESS_BUDGET: Final = 64
"""Messages a scheduled process handles in one run before it yields to the next process.
A yield costs a run-queue put and two greenlet switches (about 1 us); 64 keeps that under 2 %
of the cheapest handler while a run of cheap messages stays well under a millisecond."""

DEFAULT_LONG_HOLD_MS: Final = 100.0
"""A run of one scheduled process longer than this is reported (log + ``long_holds``)."""

_ENV_TYPE: Final = "WARAFT_OTP_PROCESS_TYPE"
_ENV_SCHEDULERS: Final = "WARAFT_OTP_SCHEDULERS"
_ENV_IO_THREADS: Final = "WARAFT_OTP_IO_THREADS"

_default_type: str | None = None


def _check_type(kind: str) -> str:
    if kind not in PROCESS_TYPES:
        raise ValueError(f"unknown process type {kind!r}; expected one of {PROCESS_TYPES}")
    return kind


def set_default_process_type(kind: str | None) -> None:
    """Set the process type of every class that does not choose one (``Process.process_type``)
    on nodes that do not either (``Node(process_type=...)``). None restores the default:
    the ``WARAFT_OTP_PROCESS_TYPE`` environment variable, else ``"scheduled"``."""
    global _default_type
    _default_type = None if kind is None else _check_type(kind)


def default_process_type() -> str:
    """The process-wide default process type (see :func:`set_default_process_type`)."""
    if _default_type is not None:
        return _default_type
    return _check_type(os.environ.get(_ENV_TYPE, SCHEDULED))


def default_schedulers() -> int:
    """Scheduler threads per node: ``WARAFT_OTP_SCHEDULERS``, else ``min(4, max(2, cpus))``.

    Under the GIL only one thread runs Python at a time, so more schedulers add no throughput;
    a second one keeps a node's other processes running (at the interpreter's switch interval)
    while one process holds a scheduler too long, and lets C code that releases the GIL
    overlap. Four caps the threads per node on larger machines.
    """
    env = os.environ.get(_ENV_SCHEDULERS)
    if env:
        return max(1, int(env))
    return min(4, max(2, os.cpu_count() or 2))


# ---------------------------------------------------------------------- waiting
class _Exited(BaseException):
    """Raised in a scheduled process that is resumed after it was killed, from the wait that
    resumed it (a call, :func:`sleep`, :func:`blocking`, :class:`Event`): the handler unwinds
    instead of running on after the process's EXIT and DOWN went out (and after its
    supervisor started its next incarnation). A BaseException, so that a handler's
    ``except Exception`` does not keep it running; the process's own loop catches it."""


def _check_alive(proc: Process) -> None:
    """Raise :class:`_Exited` in ``proc`` (just resumed from a wait) if it was killed."""
    if proc.pid._dead:
        raise _Exited(proc.pid._exit_reason)


class _ThreadWaker:
    """Wakes a waiting OS thread (fired at most once by its owner's contract)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()

    def fire(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0))

    def cancel(self) -> bool:
        return False


class _GreenWaker:
    """Puts a suspended scheduled process back on its run queue, exactly once.

    ``fire`` (the awaited event), the timeout and ``cancel`` (the waiter found the event done
    before suspending) race for one claim; only the winner acts, so the process is resumed
    exactly once per suspension and never spuriously.
    """

    __slots__ = ("_claim", "_proc", "_timed_out")

    def __init__(self, proc: Process) -> None:
        self._claim = allocate_lock()
        self._proc = proc
        self._timed_out = False

    def fire(self) -> None:
        if self._claim.acquire(False):
            proc = self._proc
            proc._sched.runq.put(proc)  # type: ignore[union-attr]

    def _expire(self) -> None:
        if self._claim.acquire(False):
            self._timed_out = True
            proc = self._proc
            proc._sched.runq.put(proc)  # type: ignore[union-attr]

    def cancel(self) -> bool:
        """Claim the waker without resuming; False if a fire already resumed the process."""
        return self._claim.acquire(False)

    def wait(self, timeout: float | None) -> bool:
        """Suspend until fired (True) or ``timeout`` seconds passed (False); raises
        :class:`_Exited` if the process was killed meanwhile."""
        timer: TimerRef | None = None
        if timeout is not None:
            timer = call_later(max(timeout, 0.0), self._expire)
        proc = self._proc
        suspend(proc)
        if timer is not None and not self._timed_out:
            cancel_timer(timer)
        _check_alive(proc)
        return not self._timed_out


Waker = _ThreadWaker | _GreenWaker


def scheduled_caller() -> Process | None:
    """The calling scheduled process, or None (a thread process or a plain thread)."""
    proc = _node._tls.proc
    if proc is not None and proc._sched is not None:
        return proc
    return None


def make_waker() -> Waker:
    """A waker for the caller: suspends the calling scheduled process, else blocks the thread."""
    proc = scheduled_caller()
    return _ThreadWaker() if proc is None else _GreenWaker(proc)


TURN_FLUSH_RUNS: Final = 32
"""Process runs after which a scheduler runs its end-of-turn hooks even though its run queue
never emptied: what waits on them waits at most this many runs."""


def at_turn_end(key: Any, fn: Callable[[], None]) -> bool:
    """Run ``fn()`` on the calling scheduled process's scheduler thread when its run queue is
    next empty (or after ``TURN_FLUSH_RUNS`` runs), with the node current; registering ``key``
    again before then changes nothing. ``fn`` must not block, and runs even if the process
    exits meanwhile. False, and nothing registered, when the caller is not a scheduled
    process: it should do the work itself now."""
    proc = scheduled_caller()
    if proc is None:
        return False
    hooks = proc._sched.turn_hooks  # type: ignore[union-attr]
    if key not in hooks:
        hooks[key] = fn
    return True


def suspend(proc: Process) -> None:
    """Switch from ``proc``'s greenlet to its scheduler's hub; returns when it is resumed.

    The thread-local "current process/node" belongs to the thread, which the other processes
    on this scheduler share, so it is saved here and restored on resumption.
    """
    tls = _node._tls
    node, me = tls.node, tls.proc
    sched = proc._sched
    assert sched is not None
    sched.hub.switch()
    tls.node, tls.proc = node, me


def park(proc: Process) -> None:
    """:func:`suspend` for a wait inside a handler whose resumer is not an otp waker (the
    WAL's group commit resumes its parked processes itself): returns once resumed, or raises
    :class:`_Exited` if ``proc`` was killed meanwhile, so that its handler unwinds there as
    it does from any other otp wait."""
    suspend(proc)
    _check_alive(proc)


class _Resume:
    """A run-queue item that resumes several suspended processes of one scheduler at once
    (see :func:`resume_all`)."""

    __slots__ = ("procs",)

    def __init__(self, procs: list[Process]) -> None:
        self.procs = procs


def resume_all(procs: list[Process]) -> None:
    """Put suspended scheduled processes back on their schedulers: one run-queue put per
    scheduler, whatever the number of processes (a group commit that covers many parked
    partition servers wakes each scheduler thread once, not once per server).

    Contract, as for a waker: each process in ``procs`` suspended itself (:func:`suspend`) or
    is about to (it registered itself and then suspends; it runs again only after it did),
    and whoever calls this is the only party that resumes that suspension, once. The caller
    may be any thread."""
    if len(procs) == 1:
        proc = procs[0]
        proc._sched.runq.put(proc)  # type: ignore[union-attr]
        return
    by_sched: dict[Scheduler, list[Process]] = {}
    for proc in procs:
        sched = proc._sched
        assert sched is not None
        group = by_sched.get(sched)
        if group is None:
            by_sched[sched] = [proc]
        else:
            group.append(proc)
    for sched, group in by_sched.items():
        sched.runq.put(group[0] if len(group) == 1 else _Resume(group))


class Event:
    """A one-shot event (set once, never cleared) that both threads and scheduled processes
    can wait on; a waiting scheduled process yields its scheduler. Used for ``Pid._done``."""

    __slots__ = ("_flag", "_lock", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._lock = allocate_lock()
        self._waiters: list[Waker] = []

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._lock:
            if self._flag:
                return
            self._flag = True
            waiters = self._waiters
            self._waiters = []
        for waker in waiters:
            waker.fire()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set; return False if ``timeout`` seconds passed first."""
        if self._flag:
            return True
        if timeout is not None and timeout <= 0:
            return False
        waker = make_waker()
        with self._lock:
            if self._flag:
                return True
            self._waiters.append(waker)
        fired = False
        try:
            fired = waker.wait(timeout)
        finally:  # timed out, or a killed process unwinding (_Exited): stop waiting
            if not fired:
                with self._lock:
                    if waker in self._waiters:
                        self._waiters.remove(waker)
        return self._flag


class _Job:
    __slots__ = ("args", "error", "fn", "kwargs", "result", "waker")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], waker: Waker
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.waker = waker
        self.result: Any = None
        self.error: BaseException | None = None


class IoPool:
    """A node's I/O threads: they run :func:`blocking` calls of scheduled processes (BEAM's
    dirty schedulers). Started on first use; ``Node(io_threads=...)`` or
    ``WARAFT_OTP_IO_THREADS`` (default 4) threads, so that several partitions' fsyncs can be
    in flight at once while the schedulers keep running.

    Once ``stop`` has begun the pool takes no more jobs (``submit`` answers False): the node
    stops them after its processes had their time to stop, and a process that comes to a
    blocking call later (a terminate that ran late) must not queue it for threads that are
    gone. Every job taken before is run before the threads end."""

    def __init__(self, node: _node.Node, count: int) -> None:
        self.node = node
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders ``submit`` against the stop's sentinels
        self.stopped = False
        self.threads = [
            threading.Thread(target=self._run, name=f"otp:io:{node.id}:{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        set_os_name("otp:io")
        jobs = self.jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn(*job.args, **job.kwargs)
            except BaseException as exc:
                job.error = exc
            finally:
                job.waker.fire()

    def submit(self, job: _Job) -> bool:
        """Queue ``job`` for the threads; False (not queued) once ``stop`` has begun."""
        with self._lock:
            if self.stopped:
                return False
            self.jobs.put(job)
            return True

    def stop(self, deadline: float) -> None:
        with self._lock:
            # Under the lock: a job queued after the sentinels would never run.
            self.stopped = True
            for _ in self.threads:
                self.jobs.put(None)
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.error("%s still running a blocking call after node stop", thread.name)


def default_io_threads() -> int:
    """I/O threads per node: ``WARAFT_OTP_IO_THREADS``, else 4."""
    env = os.environ.get(_ENV_IO_THREADS)
    return max(1, int(env)) if env else 4


def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)``, which may block (fsync, a file or database call), and
    return its result or raise its exception.

    In a scheduled process it runs on the node's I/O threads while the process is suspended,
    so the scheduler keeps running the node's other processes; the process handles nothing
    else meanwhile, exactly as if it had called ``fn`` itself. Elsewhere (a thread process, a
    plain thread) it is a plain call, and so it is once the node has begun to stop its I/O
    threads (``IoPool.submit``), or has stopped without ever starting them (``Node._io_pool``:
    threads started then would never be stopped): a process still running then (a terminate
    that came late in the node's shutdown) would otherwise wait for ever, and what it was
    releasing (a file lock, an environment, a writer) would stay held. ``fn`` runs outside
    any process: it must not rely on ``self_pid()`` or the current node.
    """
    proc = scheduled_caller()
    if proc is None:
        return fn(*args, **kwargs)
    waker = _GreenWaker(proc)
    job = _Job(fn, args, kwargs, waker)
    pool = proc.node._io_pool()
    if pool is None or not pool.submit(job):
        return fn(*args, **kwargs)  # the node's I/O threads are stopping or gone
    waker.wait(None)
    if job.error is not None:
        raise job.error
    return job.result


def sleep(seconds: float) -> None:
    """Sleep without holding a scheduler: a scheduled process yields, a thread sleeps."""
    proc = scheduled_caller()
    if proc is None:
        time.sleep(seconds)
    else:
        _GreenWaker(proc).wait(seconds)


# ---------------------------------------------------------------------- mailbox
class SchedInbox:
    """The mailbox of a scheduled process (see the module docstring).

    ``_flag`` is held while the process is on a run queue or running (and before it first
    starts); whoever acquires it from idle must queue the process. ``get`` is called only by
    the process itself, in its greenlet, through pykka's actor loop.
    """

    __slots__ = ("_flag", "_items", "_left", "_proc")

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._flag = allocate_lock()
        self._flag.acquire()  # not idle yet: the spawn queues it
        self._proc: Process | None = None
        self._left = FAIRNESS_BUDGET

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self._items.append(item)
        if self._flag.acquire(False):
            proc = self._proc
            assert proc is not None and proc._sched is not None
            proc._sched.runq.put(proc)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        items = self._items
        proc = self._proc
        assert proc is not None
        while True:
            if self._left <= 0 and items:
                # Budget spent and more to do: to the back of the run queue (flag kept).
                sched = proc._sched
                assert sched is not None
                sched.runq.put(proc)
                suspend(proc)
                self._left = FAIRNESS_BUDGET
            try:
                # Pop, not test-then-pop: a dying process's mailbox is drained from other
                # threads (signals.die), so it can empty between a test and a pop.
                item = items.popleft()
            except IndexError:
                pass
            else:
                self._left -= 1
                return item
            self._flag.release()
            if items and self._flag.acquire(False):
                continue  # a put raced with going idle; we still own the flag
            # Idle: the next put that takes the flag queues us, and the hub resumes us here.
            suspend(proc)
            self._left = FAIRNESS_BUDGET

    def get_nowait(self) -> Any:
        try:
            return self._items.popleft()
        except IndexError:
            raise queue.Empty from None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items


# ---------------------------------------------------------------------- schedulers
_STOP: Final[Any] = None


class Scheduler:
    """One scheduler thread: a run queue and a hub greenlet that runs processes from it."""

    def __init__(self, pool: SchedulerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.runq: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.hub: greenlet.greenlet = greenlet.getcurrent()  # replaced in the thread
        self.current: Process | None = None
        self.since = 0.0
        self.reported = False
        # at_turn_end: hooks by key, and process runs since the first of them was registered
        self.turn_hooks: dict[Any, Callable[[], None]] = {}
        self.turn_runs = 0
        self.thread = threading.Thread(
            target=self._main, name=f"otp:sched:{pool.node.id}:{index}", daemon=True
        )

    def __repr__(self) -> str:
        return f"<scheduler {self.index} of {self.pool.node.id}>"

    def _main(self) -> None:
        set_os_name(f"otp:sched:{self.index}")
        try:
            self._loop()
        except BaseException as exc:
            self.pool._scheduler_failed(self, exc)

    def _loop(self) -> None:
        self.hub = greenlet.getcurrent()
        runq = self.runq
        tls = _node._tls
        limit = self.pool.long_hold
        clock = time.monotonic
        resumed: deque[Process] = deque()  # the rest of a _Resume batch, run before the queue
        while True:
            if resumed:
                proc = resumed.popleft()
            else:
                proc = runq.get()
                if proc is _STOP:
                    self._run_turn_hooks()
                    return
                if proc.__class__ is _Resume:
                    resumed.extend(proc.procs)
                    proc = resumed.popleft()
            g = proc._greenlet
            if g is None:
                g = proc._greenlet = greenlet.greenlet(proc._scheduled_main)
            self.since = start = clock()
            self.reported = False
            self.current = proc
            g.switch()
            held = clock() - start
            self.current = None
            tls.proc = None
            tls.node = None
            if held > limit:
                self.pool._long_hold(proc, held, self, finished=True)
            if self.turn_hooks:
                self.turn_runs += 1
                if self.turn_runs >= TURN_FLUSH_RUNS or (not resumed and runq.empty()):
                    self._run_turn_hooks()

    def _run_turn_hooks(self) -> None:
        hooks = self.turn_hooks
        if not hooks:
            return
        self.turn_hooks = {}
        self.turn_runs = 0
        # The node current by hand, as the timer thread does: Node.activate's generator
        # context manager costs more than a one-send hook (this runs about once per round).
        tls = _node._tls
        previous = tls.node
        tls.node = self.pool.node
        try:
            for fn in hooks.values():
                try:
                    fn()
                except Exception:  # one hook's bug must not cost the others or the scheduler
                    logger.exception("end-of-turn hook %r raised", fn)
        finally:
            tls.node = previous


class SchedulerPool:
    """A node's scheduler threads, started with its first scheduled process."""

    def __init__(self, node: _node.Node, count: int, long_hold_ms: float) -> None:
        self.node = node
        self.long_hold = long_hold_ms / 1000.0
        self.schedulers = [Scheduler(self, i) for i in range(count)]
        self._next = itertools.count()
        self.long_holds = 0
        self._watchdog: TimerRef | None = None
        self._stopped = False
        self._lock = threading.Lock()
        for sched in self.schedulers:
            sched.thread.start()
        self._arm_watchdog()

    def assign(self) -> Scheduler:
        """The scheduler a new process is pinned to (round robin)."""
        return self.schedulers[next(self._next) % len(self.schedulers)]

    # -------------------------------------------------------------- reporting
    def _arm_watchdog(self) -> None:
        from waraft.otp.timer import call_later

        with self._lock:
            if not self._stopped:
                self._watchdog = call_later(self.long_hold, self._watch)

    def _watch(self) -> None:
        # Runs on the timer thread: reports a run still in progress (a stuck or looping
        # process) once per run; the hub reports the final length when it returns.
        now = time.monotonic()
        for sched in self.schedulers:
            proc = sched.current
            if proc is not None and not sched.reported and now - sched.since > self.long_hold:
                sched.reported = True
                self._long_hold(proc, now - sched.since, sched, finished=False)
        self._arm_watchdog()

    def _long_hold(self, proc: Process, held: float, sched: Scheduler, *, finished: bool) -> None:
        who = _describe(proc)
        if finished and sched.reported:
            logger.warning("%s released %r after %.0f ms", who, sched, held * 1e3)
            return
        with self._lock:
            self.long_holds += 1
        logger.warning(
            "%s %s %r for %.0f ms (long_hold_ms=%.0f): it blocks every process on that "
            "scheduler; blocking code belongs in a thread process (process_type = 'thread')",
            who,
            "held" if finished else "is holding",
            sched,
            held * 1e3,
            self.long_hold * 1e3,
        )

    def stats(self) -> dict[str, Any]:
        return {
            "schedulers": len(self.schedulers),
            "run_queue": [s.runq.qsize() for s in self.schedulers],
            "long_holds": self.long_holds,
        }

    # -------------------------------------------------------------- faults and stopping
    def _scheduler_failed(self, sched: Scheduler, exc: BaseException) -> None:
        # The exception may have left the failed process as this thread's "current" one.
        _node._tls.proc = None
        _node._tls.node = None
        reason = ("scheduler_failed", f"{type(exc).__name__}: {exc}")
        logger.critical(
            "%r crashed (%s: %s); killing its processes and stopping node %s",
            sched,
            type(exc).__name__,
            exc,
            self.node.id,
            exc_info=exc,
        )
        self.node._fail(reason, lambda: self._kill_stranded(sched, reason))

    def _kill_stranded(self, sched: Scheduler, reason: Any) -> None:
        from waraft.otp.signals import die

        stranded = [
            pid
            for pid in self.node.processes()
            if pid._actor is not None and pid._actor._sched is sched
        ]
        for pid in stranded:
            die(pid, reason)
            # Their greenlets can never run again (this thread is ending): nobody should wait
            # for those loops to end.
            if pid._loop_done is not None:
                pid._loop_done.set()

    def stop(self, deadline: float) -> None:
        """Let the schedulers finish what is queued, then end their threads (bounded)."""
        from waraft.otp.timer import cancel_timer

        with self._lock:
            self._stopped = True
            if self._watchdog is not None:
                cancel_timer(self._watchdog)
        for sched in self.schedulers:
            sched.runq.put(_STOP)
        me = threading.current_thread()
        for sched in self.schedulers:
            if sched.thread is me:
                continue
            sched.thread.join(max(0.0, deadline - time.monotonic()))
            if sched.thread.is_alive():
                logger.error(
                    "%r still running %r after node stop (abandoned)", sched, sched.current
                )


def _describe(proc: Process) -> str:
    """``Class name <pid>`` (the registered name, if any, says which of many it is: one of a
    thousand partition servers, say ``raft_server_kv_7``)."""
    pid = proc.pid
    name = pid.name
    kind = type(proc).__name__
    return f"{kind} {pid!r}" if name is None else f"{kind} {name} {pid!r}"


def stats(node: _node.Node | None = None) -> dict[str, Any]:
    """Scheduler figures of ``node`` (default: current): ``schedulers`` (threads),
    ``run_queue`` (runnable processes per scheduler), ``long_holds`` (runs reported as too
    long), ``failure`` (None, or why the node stopped itself: ``Node.failure``),
    ``processes`` (live processes of either type)."""
    here = node if node is not None else _node.current()
    pool = here._pool
    out: dict[str, Any] = (
        pool.stats() if pool is not None else {"schedulers": 0, "run_queue": [], "long_holds": 0}
    )
    out["failure"] = here.failure
    out["processes"] = len(here.processes())
    return out


def wait_loop_end(pid: Pid, timeout: float | None) -> bool:
    """Wait until ``pid``'s loop (its thread or greenlet) has ended; False on timeout."""
    thread = pid._thread
    if thread is not None:
        thread.join(timeout)
        return not thread.is_alive()
    ended = pid._loop_done
    return ended is None or ended.wait(timeout)
