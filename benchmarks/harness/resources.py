"""CPU and memory of every process of a run, sampled with psutil from a background thread.

CPU is the difference of ``user`` and ``system`` times between the start and the end of the
measured window (snapshots taken at those instants, not at sampling ticks), also as a percentage
of one core. Memory is the peak RSS seen by sampling every ``interval`` seconds over the whole
run (warm-up included): a short spike between two samples can be missed, which the README says.
A process that dies (killed in the failover scenario) keeps its last sample.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil


@dataclass
class _Tracked:
    name: str
    role: str
    pid: int
    proc: psutil.Process
    rss_peak: int = 0
    rss_first: int = 0
    # (user s, system s, bytes written to storage, bytes read from storage)
    begin: tuple[float, float, int, int] | None = None
    end: tuple[float, float, int, int] | None = None
    last: tuple[float, float, int, int] | None = None
    threads_peak: int = 0
    gone: bool = False
    ctx_switches: dict[str, int] = field(default_factory=dict)


class ResourceSampler:
    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._tracked: list[_Tracked] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_ns: int | None = None
        self._end_ns: int | None = None
        self._machine_begin: Any = None
        self._machine_end: Any = None

    def track(self, name: str, role: str, pid: int, born_in_window: bool = False) -> None:
        """Follow ``pid`` (again and again is fine: a process is tracked once).
        ``born_in_window``: the process started after the window opened, so all its CPU so far
        belongs to the window."""
        with self._lock:
            if any(t.pid == pid for t in self._tracked):
                return
        with contextlib.suppress(psutil.Error):
            tracked = _Tracked(name, role, pid, psutil.Process(pid))
            if born_in_window:
                tracked.begin = (0.0, 0.0, 0, 0)
            with self._lock:
                self._tracked.append(tracked)
            self._sample(tracked)

    def set_window(self, start_ns: int, end_ns: int) -> None:
        """The measured window (``time.monotonic_ns``); may be set again for the next one."""
        with self._lock:
            self._start_ns, self._end_ns = start_ns, end_ns
            self._machine_begin = self._machine_end = None
            for t in self._tracked:
                t.begin = t.end = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic_ns()
            with self._lock:
                tracked = list(self._tracked)
                start, end = self._start_ns, self._end_ns
                begun = self._machine_begin is not None
                ended = self._machine_end is not None
            if start is not None and end is not None:
                if not begun and now >= start:
                    self._snapshot("begin", tracked)
                if not ended and now >= end:
                    self._snapshot("end", tracked)
            for t in tracked:
                self._sample(t)
            wake = time.monotonic_ns() + int(self.interval * 1e9)
            with self._lock:
                if self._start_ns is not None and self._machine_begin is None:
                    wake = min(wake, self._start_ns)
                if self._end_ns is not None and self._machine_end is None:
                    wake = min(wake, self._end_ns)
            self._stop.wait(max(0.0, (wake - time.monotonic_ns()) / 1e9))

    def _snapshot(self, which: str, tracked: list[_Tracked]) -> None:
        machine = psutil.cpu_times()
        for t in tracked:
            cpu = self._cpu(t)
            if cpu is None:
                cpu = t.last
            if which == "begin":
                if t.begin is None:
                    t.begin = cpu
            else:
                t.end = cpu
        with self._lock:
            if which == "begin":
                self._machine_begin = machine
            else:
                self._machine_end = machine

    @staticmethod
    def _cpu(t: _Tracked) -> tuple[float, float, int, int] | None:
        if t.gone:
            return None
        try:
            times = t.proc.cpu_times()
            try:
                io = t.proc.io_counters()
                written, read = int(io.write_bytes), int(io.read_bytes)
            except (psutil.AccessDenied, AttributeError):
                written = read = 0
        except psutil.Error:
            t.gone = True
            return None
        # Children of the process are not counted (no node forks, except PySyncObj's dump
        # writer when a dump file is configured).
        t.last = (times.user, times.system, written, read)
        return t.last

    def _sample(self, t: _Tracked) -> None:
        if t.gone:
            return
        try:
            with t.proc.oneshot():
                rss = t.proc.memory_info().rss
                threads = t.proc.num_threads()
                self._cpu(t)
        except psutil.Error:
            t.gone = True
            return
        if t.rss_first == 0:
            t.rss_first = rss
        t.rss_peak = max(t.rss_peak, rss)
        t.threads_peak = max(t.threads_peak, threads)

    def wait_window_end(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._machine_end is not None:
                    return
            time.sleep(0.02)

    def report(self) -> dict[str, Any]:
        """Per process and machine totals for the last window."""
        with self._lock:
            start, end = self._start_ns, self._end_ns
            tracked = list(self._tracked)
            mb, me = self._machine_begin, self._machine_end
        seconds = (end - start) / 1e9 if start is not None and end is not None else 0.0
        processes: list[dict[str, Any]] = []
        for t in tracked:
            user = system = 0.0
            written = read = 0
            final = t.end if t.end is not None else t.last  # a killed process: its last sample
            if t.begin is not None and final is not None:
                user = max(0.0, final[0] - t.begin[0])
                system = max(0.0, final[1] - t.begin[1])
                written = max(0, final[2] - t.begin[2])
                read = max(0, final[3] - t.begin[3])
            cpu = user + system
            processes.append(
                {
                    "name": t.name,
                    "role": t.role,
                    "pid": t.pid,
                    "cpu_user_s": round(user, 3),
                    "cpu_system_s": round(system, 3),
                    "cpu_s": round(cpu, 3),
                    "cpu_percent": round(100.0 * cpu / seconds, 1) if seconds else 0.0,
                    "rss_peak_bytes": t.rss_peak,
                    "rss_start_bytes": t.rss_first,
                    "threads_peak": t.threads_peak,
                    "disk_write_bytes": written,
                    "disk_read_bytes": read,
                    "exited": t.gone,
                }
            )
        machine: dict[str, Any] = {"cores": psutil.cpu_count(logical=True)}
        if mb is not None and me is not None:
            busy = (me.user - mb.user) + (me.system - mb.system) + (me.nice - mb.nice)
            busy += getattr(me, "softirq", 0.0) - getattr(mb, "softirq", 0.0)
            busy += getattr(me, "irq", 0.0) - getattr(mb, "irq", 0.0)
            idle = (me.idle - mb.idle) + (getattr(me, "iowait", 0.0) - getattr(mb, "iowait", 0.0))
            total = busy + idle
            machine["busy_percent"] = round(100.0 * busy / total, 1) if total > 0 else 0.0
            machine["busy_cores"] = round(busy / seconds, 2) if seconds else 0.0
            # Time the hypervisor gave this VM's CPUs to someone else: invisible in every
            # other figure, and a run with it measured a slower machine than its neighbours.
            steal = getattr(me, "steal", 0.0) - getattr(mb, "steal", 0.0)
            machine["steal_cores"] = round(max(0.0, steal) / seconds, 2) if seconds else 0.0
        by_role: dict[str, float] = {}
        for p in processes:
            by_role[p["role"]] = by_role.get(p["role"], 0.0) + p["cpu_s"]
        machine["cpu_s_by_role"] = {k: round(v, 3) for k, v in by_role.items()}
        if "busy_cores" in machine and seconds:
            # CPU the machine spent outside the processes of this run (other jobs, the
            # harness itself, the kernel): a noisy neighbour makes the figures unreliable.
            ours = sum(by_role.values()) / seconds
            machine["other_busy_cores"] = round(max(0.0, machine["busy_cores"] - ours), 2)
        return {"window_s": round(seconds, 3), "processes": processes, "machine": machine}

    def untrack(self, pid: int) -> None:
        with self._lock:
            self._tracked = [t for t in self._tracked if t.pid != pid]
