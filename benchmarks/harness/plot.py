"""The PNG beside a results document: throughput against concurrency per scenario and system,
latency percentiles of every run, and (for failover runs) throughput over time around the
kill. Matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.harness.table import SYSTEM_NAMES

PCTS = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p99_9_ms", "p99.9"))
COLORS = {"waraft": "tab:blue", "pysyncobj": "tab:orange", "pysyncobj-inleader": "tab:green"}


def plot(doc: dict[str, Any], path: Path) -> Path:
    runs = [r for r in doc["runs"] if r["status"] == "ok"]
    sweep = [r for r in runs if r["config"]["mode"] != "sync" and not r.get("failover")]
    failovers = [r for r in runs if r.get("failover")]
    drawers: list[tuple[Any, list[dict[str, Any]]]] = []
    if sweep:
        drawers.append((_throughput, sweep))
    if runs:
        drawers.append((_latency, runs))
    if failovers:
        drawers.append((_failover, failovers))
    panels = max(1, len(drawers))
    fig, axes = plt.subplots(panels, 1, figsize=(11, 4.2 * panels), squeeze=False)
    for (draw, subset), row in zip(drawers, axes, strict=False):
        draw(row[0], subset)
    if not drawers:
        axes[0][0].text(0.5, 0.5, "no successful run", ha="center", va="center")
    machine = doc["machine"]
    fig.suptitle(
        f"waraft benchmark — {machine['cpu_model']}, {machine['cores_logical']} cores, "
        f"Python {machine['python']}, {doc['created']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput(ax: Any, runs: list[dict[str, Any]]) -> None:
    series: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for r in runs:
        cfg = r["config"]
        key = (r["scenario"], r["system"], cfg["nodes"])
        series.setdefault(key, []).append((cfg["concurrency"], r["throughput"]["ops_per_s"]))
    for (scenario, system, nodes), points in sorted(series.items()):
        points.sort()
        xs, ys = zip(*points, strict=True)
        style = "-o" if scenario != "b" else "--s"
        ax.plot(
            xs,
            ys,
            style,
            color=COLORS.get(system),
            label=f"({scenario}) {SYSTEM_NAMES.get(system, system)}, {nodes} nodes",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("commands in flight (concurrency)")
    ax.set_ylabel("committed ops/s")
    ax.set_title("throughput against concurrency")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)


def _latency(ax: Any, runs: list[dict[str, Any]]) -> None:
    labels = [f"{r['scenario']}:{SYSTEM_NAMES.get(r['system'], r['system'])}\n"
              f"n{r['config']['nodes']} {_conc(r)}" for r in runs]  # fmt: skip
    width = 0.8 / len(PCTS)
    for i, (key, name) in enumerate(PCTS):
        values = [max(r["latency_ms"]["all"][key], 1e-3) for r in runs]
        xs = [j + (i - (len(PCTS) - 1) / 2) * width for j in range(len(runs))]
        ax.bar(xs, values, width, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("latency percentiles per run")
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _conc(run: dict[str, Any]) -> str:
    return "sync" if run["config"]["mode"] == "sync" else f"c{run['config']['concurrency']}"


def _failover(ax: Any, runs: list[dict[str, Any]]) -> None:
    for r in runs:
        tl = r["timeline"]
        step = tl["bucket_s"]
        warmup = r["window"]["warmup_s"]
        xs = [i * step - warmup for i in range(len(tl["ok_per_s"]))]
        label = SYSTEM_NAMES.get(r["system"], r["system"])
        ax.plot(xs, tl["ok_per_s"], color=COLORS.get(r["system"]), label=f"{label} ok/s")
        kill = r["failover"]["kill_at_s"]
        ax.axvline(kill, color=COLORS.get(r["system"]), linestyle=":", alpha=0.7)
        rec = r["failover"]["recovery_s"]
        if rec is not None:
            ax.axvspan(kill, kill + rec, color=COLORS.get(r["system"]), alpha=0.12)
    ax.set_xlabel("seconds from the start of the measured window (dotted: kill -9 of the leader)")
    ax.set_ylabel("committed ops/s (100 ms buckets)")
    ax.set_title("failover")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
