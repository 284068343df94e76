"""What idle partitions cost (issue 13): 3 ``waraft node`` processes in memory mode, P partitions.

For each P: start the nodes, bootstrap every partition, wait until idle, then measure per node
over ``--idle`` seconds: OS threads, open fds, RSS, CPU (% of one core), and check that every
partition's term is unchanged over the window. Optionally (``--kill``) kill -9 the node leading
the most partitions and time until every partition it led has a new leader; ``--sigstop``
does the same with SIGSTOP (the node keeps its sockets open but answers nothing), then
SIGCONT.

Usage::

    python -m benchmarks.scale --partitions 4,64,256 --idle 20 [--kill] [--set KEY=VALUE ...]

``--set raft_quiesce_after_ms=0`` measures without quiescence. ``--log-elections`` runs the
nodes at INFO and also times the failover from the survivors' own log lines (``elected
after``, wall clock) instead of only from ``waraft status`` polls, which at 1000 partitions
take several seconds each and load the survivors while they elect. Everything runs through the
public ``waraft`` command (``benchmarks.harness.waraft_cluster``); every process is killed
by pid at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness.procs import ProcessGroup
from benchmarks.harness.waraft_cluster import WaraftCluster

DEFAULT_SETTINGS = {
    "raft_quiesce_after_ms": "2000",
}


def _node_figures(pid: int) -> dict[str, Any]:
    proc = psutil.Process(pid)
    with proc.oneshot():
        return {
            "threads": proc.num_threads(),
            "fds": proc.num_fds(),
            "rss_mb": round(proc.memory_info().rss / 2**20, 1),
            "cpu_s": sum(proc.cpu_times()[:2]),
        }


def measure(
    partitions: int,
    idle: float,
    settle: float,
    kill: bool,
    settings: dict[str, str],
    stop: bool = False,
    log_elections: bool = False,
    quiesce_wait: float = 0.0,
) -> dict[str, Any]:
    # One ``status_all`` call per node asks every server in turn: at 10,000 partitions that
    # takes longer than the CLI's default 3 s, and a node that does not answer in time gives
    # one ``unreachable`` row instead of its 10,000 (counted as not quiescent).
    status_timeout = max(3.0, partitions / 500)
    with tempfile.TemporaryDirectory(prefix="waraft-scale-") as tmp:
        root = Path(tmp)
        with ProcessGroup(root / "logs") as group:
            cluster = WaraftCluster(
                group,
                3,
                partitions,
                root / "data",
                settings=settings,
                log_level="INFO" if log_elections else "WARNING",
            )
            try:
                cluster.start(timeout=120)
                t0 = time.monotonic()
                cluster.bootstrap(timeout=max(60.0, partitions * 0.5))
                bootstrap_s = time.monotonic() - t0
                time.sleep(settle)
                terms_before = cluster.terms(status_timeout)
                before = {p.name: _node_figures(p.pid) for p in cluster.procs}
                w0 = time.monotonic()
                time.sleep(idle)
                window = time.monotonic() - w0
                after = {p.name: _node_figures(p.pid) for p in cluster.procs}
                terms_after = cluster.terms(status_timeout)
                rows = cluster.status(timeout=status_timeout)
                quiet = sum(1 for r in rows if r.get("quiescent"))
                states = quiescence_states(rows, cluster.ids)
                # What this benchmark counted before it scaled the timeout (3 s per node).
                quiet_3s = sum(1 for r in cluster.status(timeout=3.0) if r.get("quiescent"))
                nodes = {}
                for name, fig in after.items():
                    cpu = (fig["cpu_s"] - before[name]["cpu_s"]) / window * 100
                    nodes[name] = {
                        "threads": fig["threads"],
                        "fds": fig["fds"],
                        "rss_mb": fig["rss_mb"],
                        "idle_cpu_pct": round(cpu, 1),
                    }
                changed = sorted(k for k in terms_before if terms_after.get(k) != terms_before[k])
                result: dict[str, Any] = {
                    "partitions": partitions,
                    "bootstrap_s": round(bootstrap_s, 1),
                    "nodes": nodes,
                    "terms_checked": len(terms_before),
                    "terms_changed": changed,
                    "quiescent_replicas": quiet,
                    "replicas": 3 * partitions,
                    "quiescence": states,
                    "quiescent_replicas_at_3s_status_timeout": quiet_3s,
                }
                if quiesce_wait > 0:
                    result["all_quiescent"] = _wait_quiescent(
                        cluster, 3 * partitions, quiesce_wait, status_timeout, t0
                    )
                if stop:
                    result["sigstop_failover"] = _stop_leader(cluster)
                if kill:
                    result["failover"] = _kill_leader(group, cluster, log_elections)
                return result
            finally:
                for proc in cluster.procs:
                    if proc.killed_at is None:
                        group.kill9(proc)


def quiescence_states(rows: list[dict[str, Any]], ids: list[str]) -> dict[str, Any]:
    """Per node: status rows returned, error rows (and their errors), and replicas by
    (state, quiescent), e.g. ``{"leader": [quiescent, awake], "follower": [...]}``."""
    out: dict[str, Any] = {}
    for node in ids:
        mine = [r for r in rows if r.get("node") == node]
        errors = [r for r in mine if "error" in r]
        by_state: dict[str, list[int]] = {}
        for r in mine:
            if "error" in r:
                continue
            pair = by_state.setdefault(str(r.get("state")), [0, 0])
            pair[0 if r.get("quiescent") else 1] += 1
        out[node] = {
            "rows": len(mine) - len(errors),
            "errors": len(errors),
            "error_kinds": sorted({str(r["error"]) for r in errors}),
            "quiescent_awake": by_state,
        }
    return out


def _wait_quiescent(
    cluster: WaraftCluster, replicas: int, limit: float, status_timeout: float, t0: float
) -> dict[str, Any]:
    """Poll status until every replica reports quiescent (or ``limit`` seconds pass): the
    seconds since the bootstrap began, and the counts seen at each poll."""
    seen: list[tuple[float, int]] = []
    deadline = time.monotonic() + limit
    while True:
        rows = cluster.status(timeout=status_timeout)
        quiet = sum(1 for r in rows if r.get("quiescent"))
        at = round(time.monotonic() - t0, 1)
        seen.append((at, quiet))
        if quiet >= replicas:
            return {"after_bootstrap_start_s": at, "polls": seen}
        if time.monotonic() >= deadline:
            return {"after_bootstrap_start_s": None, "polls": seen}
        time.sleep(2.0)


def _stop_leader(cluster: WaraftCluster) -> dict[str, Any]:
    """SIGSTOP the busiest leader node (sockets stay open), time the re-election, SIGCONT."""
    leaders = cluster.leaders()
    victim = cluster.leader_process()
    victim_id = cluster.ids[cluster.procs.index(victim)]
    led = sorted(p for p, node in leaders.items() if node == victim_id)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        return _wait_reelected(cluster, victim_id, led, time.monotonic())
    finally:
        os.kill(victim.pid, signal.SIGCONT)
        time.sleep(3.0)  # let it step down before anything else is measured


def _kill_leader(
    group: ProcessGroup, cluster: WaraftCluster, log_elections: bool = False
) -> dict[str, Any]:
    leaders = cluster.leaders()
    victim = cluster.leader_process()
    victim_id = cluster.ids[cluster.procs.index(victim)]
    led = sorted(p for p, node in leaders.items() if node == victim_id)
    survivors = [p for p in cluster.procs if p is not victim]
    offsets = {p.name: _log_size(p.log_path) for p in survivors}
    killed_wall = time.time()
    result = _wait_reelected(cluster, victim_id, led, group.kill9(victim))
    if log_elections:
        result.update(_elections_from_logs(survivors, offsets, killed_wall, set(led)))
    return result


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*\[\w+\.(\d+)@")


def _log_size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.exists() else 0


def _elections_from_logs(
    survivors: list[Any], offsets: dict[str, int], killed_wall: float, led: set[int]
) -> dict[str, Any]:
    """Seconds from the kill until each partition the victim led logged a won election on a
    survivor (its first, and the last of them), and how many elections were started."""
    elected: dict[int, float] = {}
    started = 0
    for proc in survivors:
        if proc.log_path is None:
            continue
        with open(proc.log_path, "rb") as f:
            f.seek(offsets[proc.name])
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            match = _LOG_TIME.match(line)
            if match is None or int(match.group(2)) not in led:
                continue
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            at = stamp.timestamp() - killed_wall
            if "starts a normal election" in line:
                started += 1
            elif "elected after" in line:
                partition = int(match.group(2))
                elected[partition] = min(elected.get(partition, at), at)
    times = sorted(elected.values())
    return {
        "log_elected": len(times),
        "log_elections_started": started,
        "log_first_elected_s": round(times[0], 2) if times else None,
        "log_median_elected_s": round(times[len(times) // 2], 2) if times else None,
        "log_all_elected_s": round(times[-1], 2) if len(times) == len(led) else None,
    }


def _wait_reelected(
    cluster: WaraftCluster, victim_id: str, led: list[int], killed_at: float
) -> dict[str, Any]:
    deadline = killed_at + 60
    while time.monotonic() < deadline:
        now_leaders = cluster.leaders()
        if all(now_leaders.get(p) not in (None, victim_id) for p in led):
            return {"led": len(led), "all_reelected_s": round(time.monotonic() - killed_at, 2)}
        time.sleep(0.2)
    return {"led": len(led), "all_reelected_s": None}


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| P | node | threads | fds | RSS MB | idle CPU %/core | bootstrap s | terms changed | "
        "quiescent | kill -9 re-elect s | kill -9 from logs s | SIGSTOP re-elect s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fail = r.get("failover", {})
        stopped = r.get("sigstop_failover", {})
        for name, n in r["nodes"].items():
            lines.append(
                f"| {r['partitions']} | {name} | {n['threads']} | {n['fds']} | {n['rss_mb']} | "
                f"{n['idle_cpu_pct']} | {r['bootstrap_s']} | "
                f"{len(r['terms_changed'])}/{r['terms_checked']} | "
                f"{r['quiescent_replicas']}/{r['replicas']} | "
                f"{fail.get('all_reelected_s', '-')} ({fail.get('led', '-')} led) | "
                f"{fail.get('log_all_elected_s', '-')} "
                f"(median {fail.get('log_median_elected_s', '-')}, "
                f"{fail.get('log_elections_started', '-')} elections) | "
                f"{stopped.get('all_reelected_s', '-')} ({stopped.get('led', '-')} led) |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--partitions", default="4,64,256", help="comma-separated P values")
    p.add_argument("--idle", type=float, default=20.0, help="measured idle window, seconds")
    p.add_argument("--settle", type=float, default=5.0, help="wait before measuring, seconds")
    p.add_argument("--kill", action="store_true", help="also kill -9 the busiest leader node")
    p.add_argument(
        "--sigstop", action="store_true", help="also SIGSTOP (then SIGCONT) the busiest leader"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--quiesce-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="after the window, poll status up to S seconds until every replica is quiescent",
    )
    p.add_argument(
        "--log-elections",
        action="store_true",
        help="INFO logs; also time the kill -9 failover from the survivors' log lines",
    )
    args = p.parse_args(argv)
    settings = dict(DEFAULT_SETTINGS)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = value
    results = []
    for count in (int(x) for x in args.partitions.split(",")):
        result = measure(
            count,
            args.idle,
            args.settle,
            args.kill,
            settings,
            args.sigstop,
            args.log_elections,
            args.quiesce_wait,
        )
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"settings: {settings}")
    print(_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
