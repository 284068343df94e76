"""CPU per committed op of every thread of every waraft node, over a harness run.

Run one harness run through it (one scenario, waraft only):

    python -m benchmarks.thread_cpu -- run --scenario c --systems waraft --duration 8 \
        --warmup 2 --no-plot --no-progress --out DIR

It starts the harness as a child, samples ``/proc/<pid>/task/<tid>/stat`` (user and system
ticks) and ``comm`` of every ``waraft node`` process twice a second, and when the run is over
prints, per node and per thread name, the CPU microseconds per committed op: the CPU rate
over the steady middle of the measured window (from one second after the warmup ends to one
second before the window ends, located from the window start the harness records) divided by the
run's ops/s from ``DIR/results.json``. The runtime names its threads for the OS
(``waraft.otp.threadname``): ``otp:sched:N``, ``otp:io``, ``otp:timer``, ``dist:recv``,
``dist:liveness``, ``raft:heartbeats``, and in durable mode ``wal:io``, ``lmdb:commit`` and
``lmdb:sync``; ZeroMQ names its own ``ZMQbg/IO/0`` and ``ZMQbg/Reaper``. Nodes are listed
busiest first (in scenario c: the leader). A second table gives each thread's voluntary and
involuntary context switches per op (``status`` in the same directory): which thread's sleeps
and wake-ups make up a node's switches.

A measuring tool with no effect on the run beyond its own ~1 % of a core; figures are per op,
so a loaded machine moves them less than throughput, but note the harness's *other load*.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
INTERVAL = 0.5


def _children(parent: int) -> dict[int, bytes]:
    """pid -> command line of ``parent``'s child processes (the harness starts the nodes and
    the load generator itself: another run's processes, still stopping, are not taken)."""
    found: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if int(stat[stat.rfind(")") + 2 :].split()[1]) != parent:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
    return found


Row = tuple[int, int, str]


def _each_thread(pid: int, read: Callable[[str], Row | None]) -> dict[int, Row]:
    """tid -> ``read(task_dir)`` for each of ``pid``'s threads (empty if gone; a thread that
    ended while read, or whose row is None, is left out)."""
    out: dict[int, Row] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            row = read(f"/proc/{pid}/task/{tid}")
        except OSError:
            continue
        if row is not None:
            out[int(tid)] = row
    return out


def _cpu_row(task: str) -> Row:
    with open(f"{task}/stat") as f:
        stat = f.read()
    with open(f"{task}/comm") as f:
        name = f.read().strip()
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]), int(fields[12]), name


def _switches_row(task: str) -> Row | None:
    with open(f"{task}/status") as f:
        status = f.read()
    # "Name:\totp:io" -> {"Name": "\totp:io"}
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        return (
            int(fields["voluntary_ctxt_switches"]),
            int(fields["nonvoluntary_ctxt_switches"]),
            fields["Name"].strip(),
        )
    except (KeyError, ValueError):
        return None


def _threads(pid: int) -> dict[int, Row]:
    """tid -> (user ticks, system ticks, OS name) of ``pid``'s threads (empty if gone)."""
    return _each_thread(pid, _cpu_row)


def _switches(pid: int) -> dict[int, Row]:
    """tid -> (voluntary, involuntary context switches, OS name) of ``pid``'s threads: which
    thread's sleeping and waking makes up a process's switches per op (empty if gone)."""
    return _each_thread(pid, _switches_row)


def sample(harness: subprocess.Popen[bytes]) -> tuple[list[dict[str, Any]], float | None]:
    """Snapshots of the nodes' threads while ``harness`` runs, and when the load generator
    was first seen (``time.monotonic()`` seconds, the clock of the harness's window)."""
    snaps: list[dict[str, Any]] = []
    load_started: float | None = None
    nodes: list[int] = []
    while harness.poll() is None:
        now = time.monotonic()
        lines = _children(harness.pid)
        if load_started is None:  # every node is up once the load starts: then fixed
            nodes = sorted(
                p for p, c in lines.items() if b"waraft.cli" in c and b" node " in c + b" "
            )
        if load_started is None and any(b"benchmarks.harness.loadgen" in c for c in lines.values()):
            load_started = now
        if nodes:
            snaps.append(
                {
                    "t": now,
                    "nodes": {p: _threads(p) for p in nodes},
                    "switches": {p: _switches(p) for p in nodes},
                }
            )
        time.sleep(INTERVAL)
    return snaps, load_started


def per_op(
    snaps: list[dict[str, Any]], start: float, end: float, ops_per_s: float
) -> dict[int, dict[str, tuple[float, float]]]:
    """pid -> thread name -> (user, system) CPU microseconds per op between ``start`` and
    ``end`` (the snapshots nearest inside them). Threads of one name are summed."""
    return _per_op(snaps, start, end, ops_per_s, "nodes", 1e6 / TICK)


def switches_per_op(
    snaps: list[dict[str, Any]], start: float, end: float, ops_per_s: float
) -> dict[int, dict[str, tuple[float, float]]]:
    """pid -> thread name -> (voluntary, involuntary) context switches per op, as
    ``per_op``."""
    return _per_op(snaps, start, end, ops_per_s, "switches", 1.0)


def _per_op(
    snaps: list[dict[str, Any]],
    start: float,
    end: float,
    ops_per_s: float,
    key: str,
    scale: float,
) -> dict[int, dict[str, tuple[float, float]]]:
    inside = [s for s in snaps if start <= s["t"] <= end]
    if len(inside) < 2:
        raise SystemExit(f"only {len(inside)} snapshots in the steady window: a longer --duration")
    first, last = inside[0], inside[-1]
    seconds = last["t"] - first["t"]
    ops = ops_per_s * seconds
    result: dict[int, dict[str, tuple[float, float]]] = {}
    for pid, threads in last[key].items():
        before = first[key].get(pid, {})
        rows: dict[str, tuple[float, float]] = {}
        for tid, (user, system, name) in threads.items():
            u0, s0, _ = before.get(tid, (0, 0, name))
            u, s = rows.get(name, (0.0, 0.0))
            rows[name] = (u + (user - u0) * scale / ops, s + (system - s0) * scale / ops)
        result[pid] = rows
    return result


def steady_window(window: dict[str, Any], load_started: float) -> tuple[float, float]:
    """The steady middle ``(start, end)`` of a run's measured window, in ``time.monotonic()``
    seconds: one second in from each end. The window's own start when the harness recorded
    it (``start_monotonic_s``): clients connect for seconds at 1000 partitions, and a window
    counted from the load generator's start took in the connecting and left out most of the
    load (a fifth of the CPU per op). Older results: from the load generator's start."""
    opened = float(window.get("start_monotonic_s", load_started + window["warmup_s"]))
    return opened + 1.0, opened + float(window["duration_s"]) - 1.0


def report(table: dict[int, dict[str, tuple[float, float]]], min_us: float = 0.1) -> str:
    """Per node, the threads with at least ``min_us`` of CPU per op, to 0.1 us: a fast machine
    at 64 partitions spends 15 us per op over all nodes, so whole microseconds hid the WAL's
    and LMDB's threads, and the user/system split, altogether."""
    lines = ["node  thread            user us/op  sys us/op  total"]
    order = sorted(table, key=lambda p: -sum(u + s for u, s in table[p].values()))
    grand = 0.0
    for i, pid in enumerate(order):
        rows = table[pid]
        node_total = sum(u + s for u, s in rows.values())
        grand += node_total
        for name, (u, s) in sorted(rows.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
            if u + s >= min_us:
                lines.append(f"{i:<5} {name:<17} {u:10.1f} {s:10.1f} {u + s:6.1f}")
        lines.append(f"{i:<5} {'(node total)':<17} {'':>10} {'':>10} {node_total:6.1f}")
    lines.append(f"all nodes: {grand:.1f} us of CPU per committed op")
    return "\n".join(lines)


def report_switches(
    table: dict[int, dict[str, tuple[float, float]]],
    cpu: dict[int, dict[str, tuple[float, float]]],
    min_per_op: float = 0.01,
) -> str:
    """Context switches per op by node and thread; nodes numbered as in ``report(cpu)``."""
    lines = ["node  thread            voluntary/op  involuntary/op"]
    order = sorted(cpu, key=lambda p: -sum(u + s for u, s in cpu[p].values()))
    grand = [0.0, 0.0]
    for i, pid in enumerate(order):
        rows = table.get(pid, {})
        for name, (v, n) in sorted(rows.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
            if v + n >= min_per_op:
                lines.append(f"{i:<5} {name:<17} {v:12.2f} {n:15.2f}")
        grand[0] += sum(v for v, _ in rows.values())
        grand[1] += sum(n for _, n in rows.values())
    lines.append(f"all nodes: {grand[0]:.2f} voluntary, {grand[1]:.2f} involuntary switches per op")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harness", nargs=argparse.REMAINDER, help="-- then the harness args")
    args = parser.parse_args(argv)
    harness_args = [a for a in args.harness if a != "--"] if args.harness else []
    if "--out" not in harness_args:
        raise SystemExit("pass --out DIR to the harness (its results.json gives ops/s)")
    out = Path(harness_args[harness_args.index("--out") + 1])
    child = subprocess.Popen([sys.executable, "-m", "benchmarks", *harness_args])
    snaps, load_started = sample(child)
    if child.returncode != 0:
        raise SystemExit(f"the harness failed ({child.returncode})")
    results = json.loads((out / "results.json").read_text())
    runs = [r for r in results["runs"] if r.get("system") == "waraft"]
    if len(runs) != 1 or load_started is None:
        raise SystemExit("run exactly one waraft scenario through this tool")
    run = runs[0]
    start, end = steady_window(run["window"], load_started)
    ops_per_s = float(run["throughput"]["ops_per_s"])
    table = per_op(snaps, start, end, ops_per_s)
    print(f"{run['id']}: {ops_per_s:,.0f} ops/s; steady window {end - start:.1f} s")
    switches = switches_per_op(snaps, start, end, ops_per_s)
    print(report(table))
    print(report_switches(switches, table))
    (out / "thread_cpu.json").write_text(
        json.dumps({str(p): rows for p, rows in table.items()}, indent=1)
    )
    (out / "thread_switches.json").write_text(
        json.dumps({str(p): rows for p, rows in switches.items()}, indent=1)
    )


if __name__ == "__main__":
    main()
