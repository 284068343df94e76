"""Micro-benchmark of the waraft.otp hot path on both process types, vs pykka tell/ask.

Run: ``.venv/bin/python -m benchmarks.otp_bench [N] [--spawn M] [--schedulers K]``.

For each process type (``thread``: an OS thread per process; ``scheduled``: greenlets on K
scheduler threads) it prints, in microseconds:

* cast-and-handle: a plain thread casts N messages to one process, then a call confirms they
  were all handled ("sender" is what the casting thread paid, "end-to-end" includes handling);
  and the same from a process to a process on the same node, the pattern of a Raft
  partition's actors talking to each other: ``near`` is a process the sender spawned (for the
  scheduled type: on the sender's scheduler thread), ``far`` one started from outside (on the
  other scheduler thread); for the thread type both are another thread;
* call round trip: from a plain thread, and from a process to a near / far process;
* spawn: starting M processes (``init`` returned) from a plain thread and stopping them, per
  process, with the resident memory and OS threads they add; and starting M from a process
  (as a supervisor does: for the scheduled type, on the spawner's scheduler).

``--primitives`` also times the bare suspend/resume mechanisms a process type could be built
on, one round trip between two parties: greenlet switches (what scheduled processes use),
asyncio tasks handing a future to each other (the alternative: every handler would have to
be ``async`` and every call ``await``ed), and two OS threads handing a lock to each other
(what thread processes pay on every call).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import threading
import time
from typing import Any

import greenlet
import pykka

from waraft import otp


class Counter(otp.Process):
    def init(self) -> None:
        self.count = 0

    def handle_cast(self, msg: Any) -> None:
        self.count += 1

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "count":
            return self.count
        return request


class Driver(otp.Process):
    """Runs a loop of casts or calls to another process from inside a process."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "spawn":  # a scheduled child shares this process's scheduler
            return Counter.start()
        if request[0] == "spawn_many":  # as a supervisor starts its children
            t0 = time.perf_counter()
            pids = [Counter.start() for _ in range(request[1])]
            took = time.perf_counter() - t0
            for pid in pids:
                otp.stop(pid)
            return took
        op, target, n = request
        t0 = time.perf_counter()
        if op == "cast":
            for i in range(n):
                otp.cast(target, i)
            t1 = time.perf_counter()
            assert otp.call(target, "count", timeout=60) == n
        else:
            for i in range(n):
                otp.call(target, i)
            t1 = time.perf_counter()
        return t1 - t0, time.perf_counter() - t0


class PykkaCounter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if message == "count":
            return self.count
        self.count += 1
        return message


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _casts(n: int, target: otp.Target) -> tuple[float, float]:
    t0 = time.perf_counter()
    for i in range(n):
        otp.cast(target, i)
    t1 = time.perf_counter()
    assert otp.call(target, "count", timeout=60) == n
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6


def _calls(n: int, pid: otp.Pid) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        otp.call(pid, i)
    return (time.perf_counter() - t0) / n * 1e6


def _spawn(m: int, node: otp.Node) -> tuple[float, float, float, float]:
    gc.collect()
    rss0, threads0 = _rss_kib(), threading.active_count()
    t0 = time.perf_counter()
    pids = [Counter.start(node=node) for _ in range(m)]
    t1 = time.perf_counter()
    rss1, threads1 = _rss_kib(), threading.active_count()
    for pid in pids:
        otp.stop(pid)
    t2 = time.perf_counter()
    return (
        (t1 - t0) / m * 1e6,
        (t2 - t1) / m * 1e6,
        (rss1 - rss0) / m,
        (threads1 - threads0) / m,
    )


def bench_type(kind: str, n: int, m: int, schedulers: int | None) -> None:
    # The driver's loops are long runs on purpose: no long-hold reports for them.
    node = otp.Node(f"bench_{kind}", process_type=kind, schedulers=schedulers, long_hold_ms=60_000)
    with node.activate():
        try:
            pid = Counter.start(name="bench_counter")
            send_us, e2e_us = _casts(n, pid)
            print(
                f"[{kind:9}] cast thread->proc   : sender {send_us:6.2f}, end-to-end {e2e_us:6.2f}"
            )
            driver = Driver.start()
            near = otp.call(driver, "spawn")  # scheduled: the driver's own scheduler
            far = Counter.start()  # scheduled: round robin puts it on the next scheduler
            for label, target in (("near", near), ("far", far)):
                sent, done = otp.call(driver, ("cast", target, n), timeout=600)
                print(
                    f"[{kind:9}] cast proc->proc {label:4}: sender {sent / n * 1e6:6.2f}, "
                    f"end-to-end {done / n * 1e6:6.2f}"
                )
            k = max(1, n // 10)
            print(f"[{kind:9}] call thread->proc   : {_calls(k, pid):6.2f} per call")
            for label, target in (("near", near), ("far", far)):
                _, took = otp.call(driver, ("call", target, k), timeout=600)
                print(f"[{kind:9}] call proc->proc {label:4}: {took / k * 1e6:6.2f} per call")
            start_us, stop_us, kib, threads = _spawn(m, node)
            print(
                f"[{kind:9}] spawn {m} from a thread: start {start_us:6.1f}, stop "
                f"{stop_us:6.1f}; +{kib:5.1f} KiB RSS and +{threads:4.2f} OS threads per process"
            )
            took = otp.call(driver, ("spawn_many", m), timeout=600)
            print(f"[{kind:9}] spawn {m} from a process: start {took / m * 1e6:6.1f} per process")
        finally:
            node.stop()


def bench_pykka(n: int) -> None:
    ref = PykkaCounter.start()
    try:
        t0 = time.perf_counter()
        for i in range(n):
            ref.tell(i)
        t1 = time.perf_counter()
        assert ref.ask("count", timeout=60) == n
        t2 = time.perf_counter()
        k = max(1, n // 10)
        t3 = time.perf_counter()
        for i in range(k):
            ref.ask(i)
        t4 = time.perf_counter()
    finally:
        ref.stop()
    print(
        f"[pykka    ] tell thread->actor: sender {(t1 - t0) / n * 1e6:6.2f}, "
        f"end-to-end {(t2 - t0) / n * 1e6:6.2f}"
    )
    print(f"[pykka    ] ask  thread->actor: {(t4 - t3) / k * 1e6:6.2f} per call")


def _greenlet_round_trip(n: int) -> float:
    hub = greenlet.getcurrent()

    def peer() -> None:
        while True:
            hub.switch()

    g = greenlet.greenlet(peer)
    t0 = time.perf_counter()
    for _ in range(n):
        g.switch()
    return (time.perf_counter() - t0) / n * 1e6


def _asyncio_round_trip(n: int) -> float:
    async def run() -> float:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

        async def peer() -> None:
            while True:
                (await inbox.get()).set_result(None)

        task = loop.create_task(peer())
        t0 = time.perf_counter()
        for _ in range(n):
            done = loop.create_future()
            inbox.put_nowait(done)
            await done
        took = time.perf_counter() - t0
        task.cancel()
        return took / n * 1e6

    return asyncio.run(run())


def _thread_round_trip(n: int) -> float:
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()

    def peer() -> None:
        for _ in range(n):
            ping.acquire()
            pong.release()

    thread = threading.Thread(target=peer)
    thread.start()
    t0 = time.perf_counter()
    for _ in range(n):
        ping.release()
        pong.acquire()
    took = time.perf_counter() - t0
    thread.join()
    return took / n * 1e6


def bench_primitives(n: int) -> None:
    print(f"[primitive] greenlet switch there and back : {_greenlet_round_trip(n):6.2f}")
    print(f"[primitive] asyncio task future round trip : {_asyncio_round_trip(n):6.2f}")
    print(
        f"[primitive] thread lock handoff round trip : {_thread_round_trip(max(1, n // 10)):6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("n", nargs="?", type=int, default=200_000, help="messages per test")
    parser.add_argument("--spawn", type=int, default=1000, help="processes to spawn")
    parser.add_argument("--schedulers", type=int, default=None, help="scheduler threads")
    parser.add_argument("--types", default="thread,scheduled", help="process types to run")
    parser.add_argument("--primitives", action="store_true", help="time suspend/resume kinds")
    args = parser.parse_args()
    print("microseconds per message / call / process")
    if args.primitives:
        bench_primitives(args.n)
    for kind in args.types.split(","):
        bench_type(kind, args.n, args.spawn, args.schedulers)
    bench_pykka(args.n)
    otp.node.stop_all()


if __name__ == "__main__":
    main()
