"""Smoke run of the benchmark harness: a tiny load on 1- and 3-node clusters in memory mode,
through the real command (``python -m benchmarks run``), checking that the results document
carries every field and that the PNG, the Markdown table and the ``table`` command agree.
No performance figure is asserted. The PySyncObj side runs when the package is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psutil", reason="the harness samples CPU and RSS with psutil (bench extra)")

from benchmarks.harness import results

REPO = Path(__file__).resolve().parents[2]
HAS_PYSYNCOBJ = importlib.util.find_spec("pysyncobj") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
SYSTEMS = ["waraft", "pysyncobj", "pysyncobj-inleader"] if HAS_PYSYNCOBJ else ["waraft"]


def _bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    proc = _bench(
        "run",
        "--scenario", "a",
        "--nodes", "1", "3",
        "--systems", ",".join(SYSTEMS),
        "--concurrency", "8",
        "--warmup", "0.2",
        "--duration", "0.5",
        "--keyspace", "100",
        "--no-progress",
        # Faster first election (PySyncObj's default timeout is 0.4-1.4 s).
        "--pso-settings", "raftMinTimeout=0.2", "raftMaxTimeout=0.4",
        "--out", str(out),
        timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, f"harness failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def failover(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Scenario e with short election timeouts, so that the window sees the recovery."""
    out = tmp_path_factory.mktemp("failover")
    systems = ["waraft", "pysyncobj"] if HAS_PYSYNCOBJ else ["waraft"]
    proc = _bench(
        "run",
        "--scenario", "e",
        "--systems", ",".join(systems),
        "--concurrency", "8",
        "--warmup", "0.2",
        "--duration", "4",  # PySyncObj took over 2.2 s to recover once with tests running beside
        "--failover-at", "0.3",
        "--keyspace", "100",
        "--no-progress",
        "--no-plot",
        "--settings", "raft_election_timeout_ms=300", "raft_election_timeout_ms_max=600",
        "--pso-settings", "raftMinTimeout=0.3", "raftMaxTimeout=0.6",
        "--out", str(out),
        timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, f"harness failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return dict(json.loads((out / "results.json").read_text()))


@pytest.mark.timeout(110)
def test_failover_kills_the_leader_and_writes_resume(failover: dict[str, Any]) -> None:
    assert results.validate(failover) == []
    for run in failover["runs"]:
        fo = run["failover"]
        killed = [p for p in run["resources"]["processes"] if p["name"] == fo["killed"]]
        assert killed and killed[0]["role"] == "server", run["id"]
        assert fo["recovery_s"] is not None, f"{run['id']}: no write succeeded after the kill"
        assert run["elections"]["elections"] >= 1, run["id"]


@pytest.mark.timeout(110)
def test_results_carry_every_field(smoke: tuple[Path, dict[str, Any]]) -> None:
    _, doc = smoke
    assert results.validate(doc) == []
    assert [r["status"] for r in doc["runs"]] == ["ok"] * len(doc["runs"])
    assert doc["command"].startswith("python -m benchmarks run --scenario a")
    for run in doc["runs"]:
        roles = {p["role"] for p in run["resources"]["processes"]}
        assert "server" in roles
        assert ("client" in roles) == (run["system"] != "pysyncobj-inleader")
        assert run["latency_ms"]["all"]["count"] == run["latency_histogram"]["total"]


@pytest.mark.timeout(110)
def test_waraft_ran_on_one_and_three_nodes(smoke: tuple[Path, dict[str, Any]]) -> None:
    _, doc = smoke
    sizes = sorted(r["config"]["nodes"] for r in doc["runs"] if r["system"] == "waraft")
    assert sizes == [1, 3]


@pytest.mark.timeout(110)
def test_pysyncobj_side(smoke: tuple[Path, dict[str, Any]]) -> None:
    if not HAS_PYSYNCOBJ:
        pytest.skip("pysyncobj is not installed (pip install -e '.[bench]')")
    _, doc = smoke
    for system in ("pysyncobj", "pysyncobj-inleader"):
        sizes = sorted(r["config"]["nodes"] for r in doc["runs"] if r["system"] == system)
        assert sizes == [1, 3], system
    pairs = {(c["nodes"], c["against"]) for c in doc["comparisons"]}
    assert pairs == {(n, s) for n in (1, 3) for s in ("pysyncobj", "pysyncobj-inleader")}


@pytest.mark.timeout(110)
def test_outputs_and_table_command(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, _ = smoke
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("## Performance")
    if HAS_MATPLOTLIB:
        assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = _bench("table", str(out / "results.json"), timeout=60)
    assert table.returncode == 0, table.stderr
    assert table.stdout == markdown


@pytest.mark.timeout(110)
def test_no_process_left_behind(smoke: tuple[Path, dict[str, Any]]) -> None:
    import psutil

    _, doc = smoke
    pids = {
        p["pid"]
        for run in doc["runs"]
        for p in run["resources"]["processes"]
        if p["role"] in ("server", "client")
    }
    alive = [pid for pid in pids if psutil.pid_exists(pid) and _is_ours(pid)]
    assert alive == []


def _is_ours(pid: int) -> bool:
    import psutil

    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return "benchmarks.harness" in cmdline or "waraft.cli" in cmdline
