"""One measurement: a running cluster, load-generator processes (or PySyncObj's in-leader
generator), the shared time window, resource sampling, the progress bar, and the merged result.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.harness.histogram import Histogram
from benchmarks.harness.procs import Managed, ProcessGroup, python_argv
from benchmarks.harness.profile import Profiler
from benchmarks.harness.progress import Progress, track_window
from benchmarks.harness.resources import ResourceSampler
from benchmarks.harness.workload import Window, Workload

START_DELAY_NS = 300_000_000
"""Between handing out the window and t0: every generator is asleep waiting for t0 by then."""


class Cluster(Protocol):
    system: str
    nodes: int

    def loadgen_spec(self) -> dict[str, Any]:
        """What a load generator needs to reach the cluster (merged into its spec)."""
        ...

    def terms(self) -> dict[str, int]:
        """The highest term each partition's live nodes report."""
        ...

    def server_processes(self) -> list[Managed]: ...

    def leader_process(self) -> Managed:
        """The node process leading the most partitions (asked before a failover run)."""
        ...

    def check_alive(self) -> None: ...


@dataclass
class Measurement:
    scenario: str
    system: str  # "waraft", "pysyncobj" or "pysyncobj-inleader"
    nodes: int
    partitions: int
    concurrency: int
    clients: int = 1
    mode: str = "closed"  # closed | open | sync
    rate: float | None = None
    coalesce: bool = True
    workload: Workload = field(default_factory=Workload)
    warmup_s: float = 2.0
    duration_s: float = 5.0
    durable: bool = False
    failover_at_s: float | None = None  # seconds into the measured window
    settings: dict[str, Any] = field(default_factory=dict)
    drain_s: float = 5.0
    request_timeout_s: float = 10.0
    profile: bool = False
    client_options: dict[str, Any] = field(default_factory=dict)
    round: int = 0  # which of ``--repeat`` rounds (0: the run is not repeated)

    @property
    def run_id(self) -> str:
        parts = [self.scenario, self.system, f"n{self.nodes}", f"p{self.partitions}"]
        parts.append("sync" if self.mode == "sync" else f"c{self.concurrency}")
        if self.rate:
            parts.append(f"r{self.rate:g}")
        if self.durable:
            parts.append("durable")
        if self.round:
            parts.append(f"round{self.round}")
        return "-".join(parts)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["workload"] = self.workload.to_json()
        out["id"] = self.run_id
        return out


class _ClientProc:
    """One load-generator process and the JSON lines it prints."""

    def __init__(self, managed: Managed) -> None:
        self.managed = managed
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.done = 0
        self.result: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        stdout = self.managed.popen.stdout
        assert stdout is not None
        for raw in stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("event") == "progress":
                self.done = int(event["done"])
            elif event.get("event") == "result":
                self.result = event["result"]
            self.events.put(event)
        self.events.put({"event": "eof"})

    def send(self, obj: dict[str, Any]) -> None:
        stdin = self.managed.popen.stdin
        assert stdin is not None
        stdin.write((json.dumps(obj) + "\n").encode())
        stdin.flush()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"{self.managed.name} not ready after {timeout:.0f}s:\n"
                    f"{self.managed.log_tail()}"
                ) from None
            if event["event"] == "ready":
                return
            if event["event"] == "eof":
                raise RuntimeError(f"{self.managed.name} exited:\n{self.managed.log_tail()}")


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def measure(
    m: Measurement,
    cluster: Cluster,
    group: ProcessGroup,
    sampler: ResourceSampler,
    progress: Progress,
    connect_timeout: float = 60.0,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Run one measurement against a ready cluster and return its result record."""
    profiler = Profiler(
        group,
        profile_dir or group.log_dir / "profiles" / m.run_id,
        on_spawn=lambda spy: sampler.track(spy.name, "profiler", spy.pid, born_in_window=True),
    )
    bucket_ns = 1_000_000 if m.failover_at_s is not None else 100_000_000
    label = f"[{m.scenario}] {m.system} n={m.nodes} " + (
        "sync" if m.mode == "sync" else f"c={m.concurrency}"
    )
    for proc in cluster.server_processes():
        if proc.killed_at is None:
            sampler.track(proc.name, "server", proc.pid)
    terms_before = cluster.terms()
    fsyncs_before = _fsyncs(cluster)
    if m.system == "pysyncobj-inleader":
        raw_results, window, kill = _run_in_leader(
            m, cluster, sampler, progress, label, bucket_ns, profiler
        )
        client_procs: list[_ClientProc] = []
    else:
        client_procs = _start_clients(m, cluster, group, sampler, bucket_ns, connect_timeout)
        # Asked before the window opens: a status query during it would cost measured CPU.
        victim = cluster.leader_process() if m.failover_at_s is not None else None
        window = Window(
            time.monotonic_ns() + START_DELAY_NS, int(m.warmup_s * 1e9), int(m.duration_s * 1e9)
        )
        sampler.set_window(window.start_ns, window.end_ns)
        for c in client_procs:
            c.send({"window": window.to_json()})
        if m.profile:
            targets = cluster.server_processes() + [c.managed for c in client_procs]
            profiler.schedule(targets, window.start_ns, m.duration_s)
        kill = _maybe_failover(m, victim, group, window)
        track_window(
            progress,
            label,
            window.t0_ns,
            window.warmup_ns,
            window.duration_ns,
            lambda: sum(c.done for c in client_procs),
            lambda: all(c.result is not None or not c.managed.alive() for c in client_procs),
        )
        for c in client_procs:
            c.managed.popen.wait(timeout=30)
            c.thread.join(5.0)
        raw_results = []
        for c in client_procs:
            if c.result is None:
                raise RuntimeError(f"{c.managed.name} gave no result:\n{c.managed.log_tail()}")
            raw_results.append(c.result)
    sampler.wait_window_end()
    killed = kill.result() if kill is not None else None
    profile = profiler.collect() if m.profile else None
    terms_after = cluster.terms()
    fsyncs_after = _fsyncs(cluster)
    resources = sampler.report()
    for done in [c.managed for c in client_procs] + profiler.profilers():
        sampler.untrack(done.pid)
    record = _merge(m, raw_results, window)
    record["elections"] = _elections(terms_before, terms_after)
    record["log_fsyncs"] = _fsync_rate(fsyncs_before, fsyncs_after)
    record["resources"] = resources
    record["profile"] = profile
    if killed is not None:
        record["failover"] = _failover(raw_results, window, killed, record["elections"])
    return record


def _start_clients(
    m: Measurement,
    cluster: Cluster,
    group: ProcessGroup,
    sampler: ResourceSampler,
    bucket_ns: int,
    connect_timeout: float,
) -> list[_ClientProc]:
    n = max(1, m.clients)
    shares = _split(m.concurrency, n) if m.mode != "sync" else [1] * n
    rates = [m.rate / n if m.rate else None] * n
    procs: list[_ClientProc] = []
    for i in range(n):
        spec = {
            **cluster.loadgen_spec(),
            "system": cluster.system,
            "client_index": i,
            "concurrency": shares[i],
            "mode": m.mode,
            "rate": rates[i],
            "max_inflight": max(shares[i], 1) if m.rate else None,
            "coalesce": m.coalesce,
            "workload": m.workload.to_json(),
            "bucket_ns": bucket_ns,
            "drain_s": m.drain_s,
            "request_timeout_s": m.request_timeout_s,
            "connect_timeout_s": connect_timeout,
            "client_options": m.client_options,
        }
        managed = group.spawn(
            f"{m.run_id}-client{i + 1}",
            python_argv("benchmarks.harness.loadgen"),
            role="client",
            stdin=subprocess.PIPE,
            stdout_pipe=True,
        )
        proc = _ClientProc(managed)
        proc.send(spec)
        procs.append(proc)
    for proc in procs:
        proc.wait_ready(connect_timeout + 10)
        sampler.track(proc.managed.name, "client", proc.managed.pid)
    return procs


class _Deferred:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def result(self, timeout: float = 60.0) -> Any:
        if not self._event.wait(timeout):
            raise TimeoutError("background step did not finish")
        if self._error is not None:
            raise self._error
        return self._value


def _maybe_failover(
    m: Measurement, victim: Managed | None, group: ProcessGroup, window: Window
) -> _Deferred | None:
    if m.failover_at_s is None or victim is None:
        return None
    deferred = _Deferred()
    at_ns = window.start_ns + int(m.failover_at_s * 1e9)

    def kill() -> None:
        try:
            time.sleep(max(0.0, (at_ns - time.monotonic_ns()) / 1e9))
            at = group.kill9(victim)
            deferred.set((victim.name, int(at * 1e9)))
        except BaseException as exc:  # reported by result()
            deferred.fail(exc)

    threading.Thread(target=kill, name="bench-failover", daemon=True).start()
    return deferred


def _run_in_leader(
    m: Measurement,
    cluster: Cluster,
    sampler: ResourceSampler,
    progress: Progress,
    label: str,
    bucket_ns: int,
    profiler: Profiler,
) -> tuple[list[dict[str, Any]], Window, _Deferred | None]:
    from benchmarks.harness.pso_client import run_in_leader_load

    window = Window(
        time.monotonic_ns() + START_DELAY_NS, int(m.warmup_s * 1e9), int(m.duration_s * 1e9)
    )
    sampler.set_window(window.start_ns, window.end_ns)
    params = {
        "concurrency": m.concurrency,
        "window": window.to_json(),
        "workload": m.workload.to_json(),
        "bucket_ns": bucket_ns,
        "drain_s": m.drain_s,
    }
    leader = cluster.leader_endpoint()  # type: ignore[attr-defined] # PySyncObj only
    box = _Deferred()

    def run() -> None:
        import zmq

        ctx = zmq.Context()
        try:
            box.set(run_in_leader_load(ctx, leader, params, m.warmup_s + m.duration_s + 60))
        except BaseException as exc:
            box.fail(exc)
        finally:
            ctx.term()

    threading.Thread(target=run, name="bench-inleader", daemon=True).start()
    if m.profile:
        profiler.schedule(cluster.server_processes(), window.start_ns, m.duration_s)
    committed = _commit_counter(cluster) if progress.enabled else (lambda: 0)
    track_window(
        progress,
        label,
        window.t0_ns,
        window.warmup_ns,
        window.duration_ns,
        committed,
        lambda: box._event.is_set(),
    )
    return [box.result()], window, None


def _commit_counter(cluster: Cluster) -> Callable[[], int]:
    """The leader's commit index, for the progress bar of in-leader runs (one status request
    per redraw, only when the bar is shown)."""
    status = cluster.status  # type: ignore[attr-defined] # PySyncObj only
    leader = cluster.wait_leader()  # type: ignore[attr-defined]
    last = [0]

    def committed() -> int:
        st = status(leader, 0.2)
        if st is not None:
            last[0] = int(st["commit_index"])
        return last[0]

    return committed


# -- merging ------------------------------------------------------------------------------------


def _merge(m: Measurement, results: list[dict[str, Any]], window: Window) -> dict[str, Any]:
    seconds = window.duration_ns / 1e9
    latency = {"write": Histogram(), "read": Histogram()}
    ok = {"write": 0, "read": 0}
    errors: dict[str, int] = {}
    errors_outside: dict[str, int] = {}
    sent = unfinished = 0
    client_stats: dict[str, int] = {}
    bucket_ns = int(results[0]["timeline"]["bucket_ns"]) if results else 100_000_000
    length = max((len(r["timeline"]["ok"]) for r in results), default=0)
    tl_ok = [0] * length
    tl_err = [0] * length
    for r in results:
        for op in ("write", "read"):
            latency[op].merge(Histogram.from_json(r["latency"][op]))
            ok[op] += int(r["ok"][op])
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + int(n)
        for kind, n in r.get("errors_outside_window", {}).items():
            errors_outside[kind] = errors_outside.get(kind, 0) + int(n)
        for key, value in r.get("client_stats", {}).items():
            client_stats[key] = client_stats.get(key, 0) + int(value)
        sent += int(r["sent_in_window"])
        unfinished += int(r["unfinished"])
        for i, n in enumerate(r["timeline"]["ok"]):
            tl_ok[i] += n
        for i, n in enumerate(r["timeline"]["err"]):
            tl_err[i] += n
    both = Histogram()
    both.merge(latency["write"])
    both.merge(latency["read"])
    total_ok = ok["write"] + ok["read"]
    record: dict[str, Any] = {
        "id": m.run_id,
        "config": m.describe(),
        "window": {
            "warmup_s": window.warmup_ns / 1e9,
            "duration_s": seconds,
            # time.monotonic() (system-wide on Linux) when the measured window opened: lets
            # tools that sample the processes from outside (thread_cpu) find the window.
            "start_monotonic_s": window.start_ns / 1e9,
        },
        "throughput": {
            "ops_per_s": round(total_ok / seconds, 1) if seconds else 0.0,
            "writes_per_s": round(ok["write"] / seconds, 1) if seconds else 0.0,
            "reads_per_s": round(ok["read"] / seconds, 1) if seconds else 0.0,
            "ops": total_ok,
            "sent_in_window": sent,
        },
        "latency_ms": {
            "all": both.summary_ms(),
            "write": latency["write"].summary_ms(),
            "read": latency["read"].summary_ms(),
        },
        "latency_histogram": both.to_json(),
        "errors": errors,
        "errors_total": sum(errors.values()),
        "errors_outside_window": errors_outside,
        "unfinished": unfinished,
        "client_stats": client_stats,
        "timeline": _coarse_timeline(tl_ok, tl_err, bucket_ns),
        "failover": None,
    }
    return record


def _coarse_timeline(ok: list[int], err: list[int], bucket_ns: int) -> dict[str, Any]:
    """Per 100 ms, in operations per second, from t0 (warm-up included)."""
    factor = max(1, 100_000_000 // bucket_ns)
    scale = 1e9 / (bucket_ns * factor)
    ok_out = [round(sum(ok[i : i + factor]) * scale) for i in range(0, len(ok), factor)]
    err_out = [round(sum(err[i : i + factor]) * scale) for i in range(0, len(err), factor)]
    return {"bucket_s": bucket_ns * factor / 1e9, "ok_per_s": ok_out, "errors_per_s": err_out}


def _fsyncs(cluster: Any) -> tuple[int, int] | None:
    """(log fsyncs so far, monotonic ns) for clusters that report them (waraft's durable log)."""
    count = getattr(cluster, "fsyncs", lambda: None)()
    return None if count is None else (count, time.monotonic_ns())


def _fsync_rate(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> dict[str, Any] | None:
    """Log group commits over the measurement (warm-up and window included: counted from
    status queries made just before the load starts and just after it ends)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    seconds = (after[1] - before[1]) / 1e9
    total = after[0] - before[0]
    return {"fsyncs": total, "seconds": round(seconds, 3), "per_s": round(total / seconds, 1)}


def _elections(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    count = 0
    for partition, term in after.items():
        if partition in before:
            count += max(0, term - before[partition])
    return {"terms_before": before, "terms_after": after, "elections": count}


def _failover(
    results: list[dict[str, Any]],
    window: Window,
    killed: tuple[str, int],
    elections: dict[str, Any],
) -> dict[str, Any]:
    """Recovery after the kill from the merged fine (1 ms) timeline of successes."""
    name, kill_ns = killed
    bucket_ns = int(results[0]["timeline"]["bucket_ns"])
    length = max(len(r["timeline"]["ok"]) for r in results)
    ok = [0] * length
    for r in results:
        for i, n in enumerate(r["timeline"]["ok"]):
            ok[i] += n
    kill_bucket = (kill_ns - window.t0_ns) // bucket_ns
    first_after = next((i for i in range(kill_bucket + 1, length) if ok[i]), None)
    last_before = next((i for i in range(kill_bucket, -1, -1) if ok[i]), None)
    # The longest stretch without any success from shortly before the kill to the end.
    longest = run = 0
    for i in range(max(0, kill_bucket - 100), length):
        run = 0 if ok[i] else run + 1
        longest = max(longest, run)
    recovery = None if first_after is None else (first_after - kill_bucket) * bucket_ns / 1e9
    # Throughput before the kill (the second before it) and after recovery (the second after).
    per_s = 1e9 / bucket_ns
    span = int(per_s)
    before = ok[max(0, kill_bucket - span) : kill_bucket]
    after_start = (first_after or length) + span // 2
    after = ok[after_start : after_start + span]
    return {
        "killed": name,
        "kill_at_s": round((kill_ns - window.start_ns) / 1e9, 3),
        "recovery_s": round(recovery, 3) if recovery is not None else None,
        "last_success_before_kill_s": (
            round((kill_bucket - last_before) * bucket_ns / 1e9, 3)
            if last_before is not None
            else None
        ),
        "max_gap_s": round(longest * bucket_ns / 1e9, 3),
        "ops_per_s_before": round(sum(before) * per_s / max(1, len(before))),
        "ops_per_s_after": round(sum(after) * per_s / max(1, len(after))) if after else 0,
        "elections": elections["elections"],
        "resolution_s": bucket_ns / 1e9,
    }
