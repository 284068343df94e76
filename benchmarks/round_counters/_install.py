"""The wrappers behind ``sitecustomize`` (imported only when counting is switched on)."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import sys
import threading
import time
from typing import Any

C: collections.Counter[str] = collections.Counter()


def _count_dataclasses() -> None:
    # Before waraft is imported: every waraft dataclass's __init__ counts its calls.
    original = dataclasses.dataclass

    def wrap(cls: Any) -> Any:
        if getattr(cls, "__module__", "").startswith("waraft") and "__init__" in cls.__dict__:
            init = cls.__init__
            key = "dc:" + cls.__name__

            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                C[key] += 1
                init(self, *args, **kwargs)

            cls.__init__ = __init__
        return cls

    def dataclass(cls: Any = None, /, **kwargs: Any) -> Any:
        if cls is None:
            return lambda c: wrap(original(c, **kwargs))
        return wrap(original(cls, **kwargs))

    dataclasses.dataclass = dataclass  # type: ignore[assignment]


def _counted(module: Any, name: str, key: str) -> None:
    fn = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        C[key] += 1
        return fn(*args, **kwargs)

    setattr(module, name, wrapper)


class _CountingRunQueue(queue.SimpleQueue[Any]):
    owner: int | None = None
    waiting = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        C["runq_put"] += 1
        if threading.get_ident() != self.owner:
            C["runq_put_xthread"] += 1
            if self.waiting:
                C["runq_put_xthread_to_blocked"] += 1
        super().put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self.owner = threading.get_ident()
        if self.empty():
            self.waiting = True
            C["sched_block"] += 1
        try:
            item = super().get(block, timeout)
        finally:
            self.waiting = False
        if item is not None:
            C["sched_runs"] += 1  # two greenlet switches each (into the process and back)
        return item


def _count_otp() -> None:
    from waraft.otp import mailbox, sched, timer

    init = sched.Scheduler.__init__

    def scheduler_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.runq = _CountingRunQueue()

    sched.Scheduler.__init__ = scheduler_init  # type: ignore[method-assign]
    put = sched.SchedInbox.put

    def inbox_put(self: Any, item: Any, block: bool = True, timeout: float | None = None) -> None:
        C["mailbox_put"] += 1
        proc = self._proc
        sched_ = None if proc is None else proc._sched
        if sched_ is not None and threading.get_ident() != sched_.runq.owner:
            C["mailbox_put_xthread"] += 1
        put(self, item, block, timeout)

    sched.SchedInbox.put = inbox_put  # type: ignore[method-assign]
    envelope = mailbox.Envelope.__init__

    def envelope_init(self: Any, *args: Any) -> None:
        C["envelope"] += 1
        envelope(self, *args)

    mailbox.Envelope.__init__ = envelope_init  # type: ignore[method-assign]
    for name in ("send_after", "call_later", "cancel_timer", "_deliver"):
        _counted(timer, name, "timer:" + name)
    deliver = timer._deliver

    def deliver_by_kind(ref: Any) -> None:
        # Which timers fire: a callback's function, or a message's tag (its first element).
        fn = getattr(ref, "_fn", None)
        if fn is not None:
            kind = getattr(fn, "__qualname__", type(fn).__name__)
        else:
            msg = ref._msg
            kind = str(msg[0]) if type(msg) is tuple and msg else type(msg).__name__
        C["timer:fired:" + kind] += 1
        deliver(ref)

    timer._deliver = deliver_by_kind
    postpone = timer.TimerRef.postpone

    def timer_postpone(self: Any, deadline: float) -> None:
        C["timer:postpone"] += 1
        postpone(self, deadline)

    timer.TimerRef.postpone = timer_postpone  # type: ignore[method-assign]


def _count_distribution_and_storage() -> None:
    import waraft.storage as storage
    from waraft.distribution import links, receiver

    handle = receiver.Receiver._handle

    def frame_rx(self: Any, head: Any, frame: Any) -> None:
        C["frame_rx"] += 1
        handle(self, head, frame)

    receiver.Receiver._handle = frame_rx  # type: ignore[method-assign]
    send = links.Outbound.send

    def frame_tx(self: Any, peer: Any, frame: bytes) -> bool:
        C["frame_tx"] += 1
        return send(self, peer, frame)

    links.Outbound.send = frame_tx  # type: ignore[method-assign]
    apply_init = storage.ApplyRequest.__init__

    def apply_request(self: Any, items: Any, size: int) -> None:
        C["applied_entries"] += len(items)  # the denominator: one per committed op per node
        apply_init(self, items, size)

    storage.ApplyRequest.__init__ = apply_request  # type: ignore[method-assign]


def _count_core() -> None:
    from waraft.core import quiesce, replication

    leader_idle = quiesce._leader_idle

    def idle(core: Any) -> int:
        verdict = leader_idle(core)
        C[f"leader_idle={verdict}"] += 1  # 0 busy, 1 idle, 2 idle with a peer down, 3 settled
        return verdict

    quiesce._leader_idle = idle
    replicate = replication.replicate_to_peer
    told: dict[tuple[int, str], int] = {}  # (core, peer node) -> the commit index last sent

    def replicate_to_peer(core: Any, peer: Any, cfg: Any, quiesce: bool = False) -> None:
        # What each AppendEntries carries: entries, only a commit index the peer was not
        # told yet, or nothing new (a heartbeat).
        node, commit_index = peer.node, core.commit_index
        if core.next_indices.get(node, core.first_current_term_log_index) <= core.log.last_index():
            C["ae:entries"] += 1
        elif told.get((id(core), node)) != commit_index:
            C["ae:commit_only"] += 1
        else:
            C["ae:nothing_new"] += 1
        told[(id(core), node)] = commit_index
        replicate(core, peer, cfg, quiesce)

    replication.replicate_to_peer = replicate_to_peer
    for name in ("commit_and_replicate", "replicate_to_peer", "maybe_heartbeat", "catch_up"):
        _counted(replication, name, "repl:" + name)


def _count_durable() -> None:
    # The durable path per round: WAL records queued, waits that parked a process, batches
    # written (one fdatasync each), waiters the I/O thread woke; node LMDB hand-offs to the
    # committer, transactions it ran, and the durable-state stores (term/vote, an fsync each).
    from waraft.log import wal
    from waraft.partition import durable_state
    from waraft.storage import node_lmdb

    submit = wal.WalWriter.submit

    def wal_submit(self: Any, record: bytes, key: str, pin: int) -> int:
        C["wal:record"] += 1
        return submit(self, record, key, pin)

    wal.WalWriter.submit = wal_submit  # type: ignore[method-assign]
    event = wal.Event

    def wal_event() -> Any:
        C["wal:park"] += 1  # a scheduled wait that found its record not yet durable
        return event()

    wal.Event = wal_event  # type: ignore[assignment,misc]
    if hasattr(wal, "suspend"):  # parked waits (no Event) since the batch resume
        park = wal.suspend

        def wal_park(proc: Any) -> None:
            C["wal:park"] += 1
            park(proc)

        wal.suspend = wal_park  # type: ignore[assignment]
    _counted(wal.WalWriter, "_write", "wal:fsync_batch")
    # Syncs by partition servers (one per flush that appended): records per sync is how many
    # appends one WAL record per flush would merge.
    _counted(wal.WalLog, "sync_within", "wal:sync")
    wake = wal.WalWriter._wake

    def wal_wake(self: Any, synced: int | None = None) -> None:
        before = len(self._events) + len(getattr(self, "_parked", ()))
        wake(self, synced)
        C["wal:woken"] += before - len(self._events) - len(getattr(self, "_parked", ()))

    wal.WalWriter._wake = wal_wake  # type: ignore[method-assign]
    _counted(node_lmdb.NodeEnv, "commit", "lmdb:handoff")  # queue and wait (lmdb_sync)
    if hasattr(node_lmdb.NodeEnv, "submit"):  # lazy sync queues, and waits only if needed
        _counted(node_lmdb.NodeEnv, "submit", "lmdb:submit")
        wait = node_lmdb.NodeEnv.wait

        def lmdb_wait(write: Any) -> None:
            if not write.done:
                C["lmdb:park"] += 1  # the write was not committed yet: the caller suspends
            wait(write)

        node_lmdb.NodeEnv.wait = staticmethod(lmdb_wait)  # type: ignore[method-assign,assignment]
    _counted(node_lmdb.NodeEnv, "_transaction", "lmdb:txn")
    _counted(durable_state, "store", "durable_state:store")


def _context_switches() -> tuple[int, int]:
    voluntary = involuntary = 0
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        involuntary += int(line.split()[1])
    except OSError:
        pass
    return voluntary, involuntary


def _dump(directory: str) -> None:
    # Made here (every process writes into it): a missing directory used to lose the run.
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{os.getpid()}.jsonl")
    while True:
        time.sleep(1.0)
        voluntary, involuntary = _context_switches()
        row = {
            "t": time.time(),
            "argv": " ".join(sys.argv[:3]),
            "cpu": time.process_time(),
            "ctx_voluntary": voluntary,
            "ctx_involuntary": involuntary,
            **C,
        }
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def install(directory: str) -> None:
    """Install every wrapper and start the once-a-second writer."""
    _count_dataclasses()
    _count_otp()
    _count_distribution_and_storage()
    _count_core()
    _count_durable()
    threading.Thread(target=_dump, args=(directory,), daemon=True, name="round-counters").start()
