"""``python -m benchmarks run``: the scenarios, each system's cluster, every measurement, the
comparisons, and the files (JSON, PNG, Markdown) at the end."""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import results
from benchmarks.harness.procs import ProcessGroup
from benchmarks.harness.progress import Progress
from benchmarks.harness.resources import ResourceSampler
from benchmarks.harness.runner import Cluster, Measurement, measure
from benchmarks.harness.scenarios import Scenario
from benchmarks.harness.workload import Workload

DEFAULT_DURATION_S = 10.0
STEAL_NOISY_CORES = 0.05  # steal (hypervisor) time that flags a run: 2.5 % of this machine


@dataclass
class Options:
    scenarios: list[Scenario]
    out: Path
    systems: list[str] | None = None
    nodes: list[int] | None = None
    partitions: int = 1
    concurrency: list[int] | None = None
    clients: int | None = None  # None: the scenario's
    rate: float | None = None
    workload: Workload = field(default_factory=Workload)
    duration_s: float | None = None  # None: 10 s, or the scenario's minimum when longer
    warmup_s: float = 3.0
    storage: tuple[str, ...] = ("memory",)  # "memory" and/or "durable", run in this order
    settings: dict[str, str] = field(default_factory=dict)
    client_options: dict[str, Any] = field(default_factory=dict)
    pso_settings: dict[str, Any] = field(default_factory=dict)
    failover_at_s: float | None = None
    plot: bool = True
    progress: bool | None = None
    keep_data: bool = False
    name: str = "results"
    profile: bool = False
    repeat: int = 1  # rounds of the whole plan, one after another (medians across them)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenarios": [s.key for s in self.scenarios],
            "out": str(self.out),
            "systems": self.systems,
            "nodes": self.nodes,
            "partitions": self.partitions,
            "concurrency": self.concurrency,
            "clients": self.clients,
            "rate": self.rate,
            "workload": self.workload.to_json(),
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "storage": list(self.storage),
            "settings": self.settings,
            "pso_settings": self.pso_settings,
            "client_options": self.client_options,
            "failover_at_s": self.failover_at_s,
            "profile": self.profile,
            "repeat": self.repeat,
        }


def pysyncobj_available() -> bool:
    return importlib.util.find_spec("pysyncobj") is not None


def run_suite(opts: Options, argv: list[str]) -> dict[str, Any]:
    progress = Progress(enabled=opts.progress)
    doc = results.new_document(argv, opts.to_json())
    opts.out.mkdir(parents=True, exist_ok=True)
    doc["machine"]["data_filesystem"] = results.filesystem_of(opts.out)
    json_path = opts.out / f"{opts.name}.json"
    progress.note(f"results -> {json_path}")
    # Repeated, the whole plan runs round after round (not each run N times in a row), so
    # the modes and systems compared alternate and share whatever the machine did meanwhile.
    for round_ in range(1, opts.repeat + 1) if opts.repeat > 1 else [0]:
        for scenario in opts.scenarios:
            for durable, nodes, system in _plan(scenario, opts, doc, round_):
                runs = _run_system(scenario, system, nodes, durable, opts, progress, round_)
                for record in runs:
                    doc["runs"].append(record)
                    progress.note(summary_line(record))
                    results.write(doc, json_path)  # partial results survive a crash
    doc["comparisons"] = compare(doc["runs"])
    doc["durability"] = durability_costs(doc["runs"])
    for line in comparison_lines(doc["comparisons"]):
        progress.note(line)
    for d in doc["durability"]:
        progress.note(
            f"[{d['scenario']}] {d['nodes']} nodes, {d['system']} durable / memory: "
            f"{d['durable_ops_per_s']:,.0f} / {d['memory_ops_per_s']:,.0f} ops/s = "
            f"{d['durable_over_memory']}" + _rounds_text(d)
        )
    results.write(doc, json_path)
    from benchmarks.harness.table import markdown

    (opts.out / f"{opts.name}.md").write_text(markdown(doc))
    if opts.plot:
        try:
            from benchmarks.harness.plot import plot

            png = plot(doc, opts.out / f"{opts.name}.png")
            progress.note(f"plot -> {png}")
        except ImportError as exc:
            progress.note(f"no plot: {exc}")
    progress.note(f"table -> {opts.out / (opts.name + '.md')}")
    if not opts.keep_data:
        shutil.rmtree(opts.out / "data", ignore_errors=True)
    return doc


def _plan(
    scenario: Scenario, opts: Options, doc: dict[str, Any], round_: int = 0
) -> list[tuple[bool, int, str]]:
    """(durable, cluster size, system) of a scenario's clusters, in run order: the order the
    options give, reversed in the even rounds of a repeated run (round 1 memory then durable,
    round 2 durable then memory, ...), so that neither side of a comparison always runs
    second, after its partner warmed or loaded the machine, and a drift over the run weighs on
    both sides alike."""
    chosen = [s for s in scenario.systems if opts.systems is None or s in opts.systems]
    if not pysyncobj_available():
        for system in [s for s in chosen if s.startswith("pysyncobj")]:
            doc["skipped"].append(
                {"scenario": scenario.key, "system": system, "reason": "pysyncobj not installed"}
            )
        chosen = [s for s in chosen if not s.startswith("pysyncobj")]
    plan = [
        (mode == "durable", nodes, system)
        for mode in opts.storage
        for nodes in (opts.nodes or [scenario.nodes])
        for system in chosen
    ]
    return plan[::-1] if round_ % 2 == 0 and round_ > 0 else plan


def _measurements(
    scenario: Scenario, system: str, nodes: int, durable: bool, opts: Options, round_: int = 0
) -> list[Measurement]:
    concurrencies = [1] if scenario.mode == "sync" else (opts.concurrency or scenario.concurrency)
    duration = opts.duration_s
    if duration is None:
        duration = max(DEFAULT_DURATION_S, scenario.min_duration_s)
    out = []
    for concurrency in concurrencies:
        out.append(
            Measurement(
                scenario=scenario.key,
                system=system,
                nodes=nodes,
                partitions=opts.partitions if system == "waraft" else 1,
                concurrency=concurrency,
                clients=1
                if system == "pysyncobj-inleader" or scenario.mode == "sync"
                else (opts.clients or scenario.clients),
                mode=scenario.mode if not opts.rate or scenario.mode == "sync" else "open",
                rate=opts.rate if scenario.mode != "sync" else None,
                coalesce=scenario.coalesce,
                workload=opts.workload,
                warmup_s=opts.warmup_s,
                duration_s=duration,
                durable=durable,
                profile=opts.profile,
                client_options=dict(opts.client_options) if system == "waraft" else {},
                failover_at_s=(
                    (opts.failover_at_s if opts.failover_at_s is not None else duration / 3)
                    if scenario.failover
                    else None
                ),
                round=round_,
            )
        )
    return out


def _run_system(
    scenario: Scenario,
    system: str,
    nodes: int,
    durable: bool,
    opts: Options,
    progress: Progress,
    round_: int = 0,
) -> Iterator[dict[str, Any]]:
    plan = _measurements(scenario, system, nodes, durable, opts, round_)
    # A failover breaks the cluster: each of those measurements gets a fresh one.
    groups = [[m] for m in plan] if scenario.failover else [plan]
    for group_plan in groups:
        first = group_plan[0]
        tag = f"{scenario.key}-{system}-n{first.nodes}" + ("-durable" if durable else "")
        tag += f"-round{round_}" if round_ else ""
        log_dir = opts.out / "logs" / tag
        data_dir = opts.out / "data" / f"{tag}-{int(time.time() * 1000)}"
        sampler = ResourceSampler()
        sampler.track("harness", "harness", os.getpid())
        sampler.start()
        try:
            with ProcessGroup(log_dir) as procs:
                done = 0
                try:
                    with _cluster(system, scenario, first, opts, procs, data_dir, progress) as c:
                        cluster, settings = c
                        for m in group_plan:
                            m.settings = settings
                            record = _one(m, cluster, procs, sampler, progress, log_dir)
                            done += 1
                            yield record
                except Exception as exc:  # the cluster did not start (or stop)
                    for m in group_plan[done:]:
                        yield _failed(m, exc, log_dir)
        finally:
            sampler.stop()
            if not opts.keep_data:
                # Each cluster starts on the same disk: without its predecessors' files, their
                # writeback or their page cache (a durable run at 1000 partitions leaves
                # about 50 MB; a repeated run would pile them up until the end).
                shutil.rmtree(data_dir, ignore_errors=True)


def _one(
    m: Measurement,
    cluster: Cluster,
    procs: ProcessGroup,
    sampler: ResourceSampler,
    progress: Progress,
    log_dir: Path,
) -> dict[str, Any]:
    try:
        record = measure(
            m,
            cluster,
            procs,
            sampler,
            progress,
            profile_dir=log_dir.parent.parent / "profiles" / m.run_id,
        )
    except Exception as exc:
        progress.done()
        return _failed(m, exc, log_dir)
    record.update(
        {
            "scenario": m.scenario,
            "system": m.system,
            "status": "ok",
            "settings": m.settings,
            "logs": str(log_dir),
        }
    )
    # Stable key order for readers of the JSON.
    head = ("id", "scenario", "system", "status")
    return {k: record[k] for k in head} | {k: v for k, v in record.items() if k not in head}


def _failed(m: Measurement, exc: BaseException, log_dir: Path) -> dict[str, Any]:
    return {
        "id": m.run_id,
        "scenario": m.scenario,
        "system": m.system,
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
        "config": m.describe(),
        "settings": m.settings,
        "logs": str(log_dir),
    }


@contextmanager
def _cluster(
    system: str,
    scenario: Scenario,
    m: Measurement,
    opts: Options,
    procs: ProcessGroup,
    data_dir: Path,
    progress: Progress,
) -> Iterator[tuple[Cluster, dict[str, Any]]]:
    started = time.monotonic()
    cluster: Any
    if system == "waraft":
        from benchmarks.harness.waraft_cluster import WaraftCluster

        cluster = WaraftCluster(
            procs,
            m.nodes,
            m.partitions,
            data_dir,
            durable=m.durable,
            settings={**scenario.waraft_settings, **opts.settings},
        )
        settings: dict[str, Any] = cluster.describe_settings()
        settings["client"] = _client_description(scenario, opts)
        progress.note(
            f"[{scenario.key}] starting waraft: {m.nodes} nodes, {m.partitions} partition(s), "
            + ("durable" if m.durable else "memory")
        )
        cluster.start()
        cluster.bootstrap()
    else:
        from benchmarks.harness.pso_cluster import PySyncObjCluster

        conf = {**scenario.pso_conf, **opts.pso_settings}
        cluster = PySyncObjCluster(procs, m.nodes, conf, data_dir if m.durable else None)
        settings = {"SyncObjConf": conf, "journal": m.durable}
        progress.note(
            f"[{scenario.key}] starting PySyncObj: {m.nodes} nodes"
            + (", journal" if m.durable else "")
        )
        cluster.start()
        cluster.wait_leader()
    progress.note(f"[{scenario.key}] cluster ready in {time.monotonic() - started:.1f}s")
    try:
        yield cluster, settings
    finally:
        cluster.stop()


def _client_description(scenario: Scenario, opts: Options) -> dict[str, Any]:
    """How the load generators use ``waraft.client.Client`` (defaults are the library's)."""
    options = dict(opts.client_options)
    if not scenario.coalesce:
        options["max_batch"] = 1
    return {
        "options": options,
        "api": "commit"
        if scenario.mode == "sync"
        else "commit_many"
        if scenario.coalesce
        else "commit_async",
    }


# -- reporting ------------------------------------------------------------------------------------


def summary_line(run: dict[str, Any]) -> str:
    if run["status"] != "ok":
        return f"  {run['id']}: FAILED {run['error']} (logs: {run.get('logs')})"
    lat = run["latency_ms"]["all"]
    servers = [p for p in run["resources"]["processes"] if p["role"] == "server"]
    cpu = sum(p["cpu_percent"] for p in servers)
    rss = max((p["rss_peak_bytes"] for p in servers), default=0) / 2**20
    text = (
        f"  {run['id']}: {run['throughput']['ops_per_s']:,.0f} ops/s  "
        f"p50 {lat['p50_ms']:.2f} p99 {lat['p99_ms']:.2f} p99.9 {lat['p99_9_ms']:.2f} ms  "
        f"servers {cpu:.0f}% CPU, peak RSS {rss:.0f} MiB  "
        f"errors {run['errors_total']}  elections {run['elections']['elections']}"
    )
    fsyncs = run.get("log_fsyncs")
    if fsyncs:
        text += f"  log fsyncs {fsyncs['per_s']:,.0f}/s"
    other = run["resources"]["machine"].get("other_busy_cores", 0.0)
    if other > 0.25:
        text += f"  | NOISY: other processes used {other} cores"
    steal = run["resources"]["machine"].get("steal_cores", 0.0)
    if steal > STEAL_NOISY_CORES:
        text += f"  | NOISY: the hypervisor took {steal} cores (steal)"
    fo = run.get("failover")
    if fo:
        text += f"  | killed {fo['killed']}, writes back after {fo['recovery_s']} s"
    return text


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """waraft against PySyncObj per scenario and cluster size: the best throughput of each over
    the concurrency levels, the ratio, p50/p99 of those runs, recovery times for failovers."""
    out = []
    groups = dict.fromkeys(_group(r) for r in runs)
    for sc, nodes, durable in groups:
        ok = [r for r in runs if _group(r) == (sc, nodes, durable) and r["status"] == "ok"]
        best: dict[str, dict[str, Any]] = {}
        for r in ok:
            cur = best.get(r["system"])
            if cur is None or r["throughput"]["ops_per_s"] > cur["throughput"]["ops_per_s"]:
                best[r["system"]] = r
        ours = best.get("waraft")
        if ours is None:
            continue
        for other in ("pysyncobj", "pysyncobj-inleader"):
            theirs = best.get(other)
            if theirs is None:
                continue
            a = ours["throughput"]["ops_per_s"]
            b = theirs["throughput"]["ops_per_s"]
            entry: dict[str, Any] = {
                "scenario": sc,
                "nodes": nodes,
                "durable": durable,
                "against": other,
                "waraft_run": ours["id"],
                "other_run": theirs["id"],
                "waraft_ops_per_s": a,
                "other_ops_per_s": b,
                "throughput_ratio": round(a / b, 3) if b else None,
                "waraft_p50_ms": ours["latency_ms"]["all"]["p50_ms"],
                "other_p50_ms": theirs["latency_ms"]["all"]["p50_ms"],
                "waraft_p99_ms": ours["latency_ms"]["all"]["p99_ms"],
                "other_p99_ms": theirs["latency_ms"]["all"]["p99_ms"],
            }
            p50 = entry["waraft_p50_ms"]
            entry["p50_latency_ratio"] = round(entry["other_p50_ms"] / p50, 3) if p50 else None
            if ours.get("failover") and theirs.get("failover"):
                entry["waraft_recovery_s"] = ours["failover"]["recovery_s"]
                entry["other_recovery_s"] = theirs["failover"]["recovery_s"]
            entry.update(
                _per_round(runs, partial(_in_pair, (sc, nodes, durable), other), _is_waraft)
            )
            out.append(entry)
    return out


def _group(run: dict[str, Any]) -> tuple[str, int, bool]:
    return run["scenario"], int(run["config"]["nodes"]), bool(run["config"]["durable"])


def durability_costs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Durable against memory mode for each (scenario, nodes, system) measured both ways: the
    best throughput of each and their ratio (issue 7 asks for at least one half)."""
    best: dict[tuple[str, int, str, bool], dict[str, Any]] = {}
    for r in runs:
        if r["status"] != "ok":
            continue
        key = (r["scenario"], int(r["config"]["nodes"]), r["system"], bool(r["config"]["durable"]))
        cur = best.get(key)
        if cur is None or r["throughput"]["ops_per_s"] > cur["throughput"]["ops_per_s"]:
            best[key] = r
    out = []
    for (sc, nodes, system, durable), run in best.items():
        if durable:
            continue
        other = best.get((sc, nodes, system, True))
        if other is None:
            continue
        mem = run["throughput"]["ops_per_s"]
        dur = other["throughput"]["ops_per_s"]
        written = sum(
            p.get("disk_write_bytes", 0)
            for p in other["resources"]["processes"]
            if p["role"] == "server"
        )
        entry = {
            "scenario": sc,
            "nodes": nodes,
            "system": system,
            "memory_run": run["id"],
            "durable_run": other["id"],
            "memory_ops_per_s": mem,
            "durable_ops_per_s": dur,
            "durable_over_memory": round(dur / mem, 3) if mem else None,
            "durable_server_disk_write_bytes_per_s": round(written / other["window"]["duration_s"]),
        }
        entry.update(_per_round(runs, partial(_in_modes, (sc, nodes, system)), _is_durable))
        out.append(entry)
    return out


def _round_of(run: dict[str, Any]) -> int:
    return int(run["config"].get("round") or 0)


def _is_waraft(run: dict[str, Any]) -> bool:
    return bool(run["system"] == "waraft")


def _is_durable(run: dict[str, Any]) -> bool:
    return bool(run["config"]["durable"])


def _in_pair(group: tuple[str, int, bool], other: str, run: dict[str, Any]) -> bool:
    """Whether ``run`` is of the waraft-against-``other`` comparison of ``group``."""
    return _group(run) == group and run["system"] in ("waraft", other)


def _in_modes(key: tuple[str, int, str], run: dict[str, Any]) -> bool:
    """Whether ``run`` is of the durable-against-memory comparison of ``key``."""
    return (run["scenario"], int(run["config"]["nodes"]), run["system"]) == key


def _per_round(
    runs: list[dict[str, Any]],
    belongs: Callable[[dict[str, Any]], bool],
    is_first: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """With ``--repeat``: among the runs ``belongs`` accepts, the ratio of each round's best
    run for which ``is_first`` holds to its best run for which it does not (the durable to
    the memory run, or waraft to PySyncObj), and their median: a single round's ratio moves
    more than most changes do. Empty when the runs were not repeated."""
    best: dict[tuple[int, bool], float] = {}
    for r in runs:
        if r["status"] != "ok" or _round_of(r) == 0 or not belongs(r):
            continue
        slot = (_round_of(r), is_first(r))
        best[slot] = max(best.get(slot, 0.0), r["throughput"]["ops_per_s"])
    ratios = [
        round(best[(k, True)] / best[(k, False)], 3)
        for k in sorted({k for k, _ in best})
        if best.get((k, True)) is not None and best.get((k, False))
    ]
    if not ratios:
        return {}
    return {"round_ratios": ratios, "median_ratio": round(statistics.median(ratios), 3)}


def _rounds_text(entry: dict[str, Any]) -> str:
    ratios = entry.get("round_ratios")
    if not ratios:
        return ""
    listed = ", ".join(f"{r:g}" for r in ratios)
    return f"; median of {len(ratios)} rounds {entry['median_ratio']:g} ({listed})"


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    lines = []
    for c in comparisons:
        ratio = c["throughput_ratio"]
        text = (
            f"[{c['scenario']}] {c['nodes']} nodes{', durable' if c.get('durable') else ''}, "
            f"waraft / {c['against']}: "
            f"{c['waraft_ops_per_s']:,.0f} / {c['other_ops_per_s']:,.0f} ops/s = "
            f"{ratio if ratio is not None else 'n/a'}x"
        )
        if c.get("p50_latency_ratio") is not None:
            text += (
                f"; p50 {c['waraft_p50_ms']:.2f} vs {c['other_p50_ms']:.2f} ms"
                f" (PySyncObj/waraft {c['p50_latency_ratio']}x)"
            )
        if "waraft_recovery_s" in c:
            text += f"; recovery {c['waraft_recovery_s']} vs {c['other_recovery_s']} s"
        lines.append(text + _rounds_text(c))
    return lines
