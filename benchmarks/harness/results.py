"""The results document: the machine, the exact command, every run and the comparisons.

``validate`` lists the fields every document must carry (the smoke test uses it, so the schema
and the check cannot drift apart).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness.procs import REPO_ROOT

SCHEMA = "waraft-bench/1"

RUN_FIELDS: dict[str, tuple[str, ...]] = {
    "": (
        "id",
        "scenario",
        "system",
        "status",
        "config",
        "settings",
        "window",
        "throughput",
        "latency_ms",
        "latency_histogram",
        "errors",
        "errors_total",
        "unfinished",
        "elections",
        "resources",
        "timeline",
        "failover",
    ),
    "throughput": ("ops_per_s", "writes_per_s", "reads_per_s", "ops", "sent_in_window"),
    "latency_ms.all": ("count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"),
    "elections": ("terms_before", "terms_after", "elections"),
    "resources": ("window_s", "processes", "machine"),
    "config": (
        "nodes",
        "partitions",
        "concurrency",
        "clients",
        "mode",
        "coalesce",
        "workload",
        "warmup_s",
        "duration_s",
        "durable",
    ),
}
PROCESS_FIELDS = (
    "name",
    "role",
    "pid",
    "cpu_user_s",
    "cpu_system_s",
    "cpu_s",
    "cpu_percent",
    "rss_peak_bytes",
)
FAILOVER_FIELDS = ("killed", "kill_at_s", "recovery_s", "max_gap_s", "elections")
DOC_FIELDS = (
    "schema",
    "created",
    "command",
    "argv",
    "machine",
    "options",
    "runs",
    "comparisons",
    "durability",
    "skipped",
)
MACHINE_FIELDS = (
    "cpu_model",
    "cores_logical",
    "cores_physical",
    "memory_bytes",
    "python",
    "platform",
    "git_commit",
    "packages",
)


def _cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        cpu_model = _cpu_model()
    except OSError:
        cpu_model = platform.processor() or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": cpu_model,
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpu_freq_mhz": getattr(psutil.cpu_freq(), "max", None) if psutil.cpu_freq() else None,
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": {
            name: _version(name)
            for name in ("waraft", "pysyncobj", "pyzmq", "msgpack", "pykka", "psutil", "matplotlib")
        },
    }


def filesystem_of(path: Path) -> dict[str, Any]:
    """The mount holding ``path`` (durable figures depend on what fsync costs there)."""
    path = path.resolve()
    best: Any = None
    for part in psutil.disk_partitions(all=True):
        mount = Path(part.mountpoint)
        if (path == mount or mount in path.parents) and (
            best is None or len(part.mountpoint) > len(best.mountpoint)
        ):
            best = part
    if best is None:
        return {"path": str(path)}
    return {
        "path": str(path),
        "mountpoint": best.mountpoint,
        "fstype": best.fstype,
        "device": best.device,
    }


def command_line(argv: list[str]) -> str:
    """The command as typed to reproduce the run (from the repository root)."""
    return " ".join(["python", "-m", "benchmarks", *map(shlex.quote, argv)])


def new_document(argv: list[str], options: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command_line(argv),
        "argv": list(argv),
        "python_executable": sys.executable,
        "machine": machine_info(),
        "options": options,
        "runs": [],
        "comparisons": [],
        "durability": [],
        "skipped": [],
    }


def write(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} document")
    return doc


def _get(obj: dict[str, Any], dotted: str) -> Any:
    for part in filter(None, dotted.split(".")):
        obj = obj[part]
    return obj


def validate(doc: dict[str, Any]) -> list[str]:
    """Every missing field, as a readable path; empty when the document is complete."""
    missing = [f for f in DOC_FIELDS if f not in doc]
    missing += [f"machine.{f}" for f in MACHINE_FIELDS if f not in doc.get("machine", {})]
    for i, run in enumerate(doc.get("runs", [])):
        if run.get("status") != "ok":
            continue
        for section, fields in RUN_FIELDS.items():
            try:
                obj = _get(run, section)
            except (KeyError, TypeError):
                missing.append(f"runs[{i}].{section}")
                continue
            missing += [
                f"runs[{i}].{section}.{f}".replace("..", ".") for f in fields if f not in obj
            ]
        for j, proc in enumerate(run.get("resources", {}).get("processes", [])):
            missing += [
                f"runs[{i}].resources.processes[{j}].{f}" for f in PROCESS_FIELDS if f not in proc
            ]
        if run.get("config", {}).get("failover_at_s") is not None:
            fo = run.get("failover") or {}
            missing += [f"runs[{i}].failover.{f}" for f in FAILOVER_FIELDS if f not in fo]
    return missing
