"""``waraft node --metrics``: a real (durable) node serves the Prometheus text format at
/metrics."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.multiprocess.harness import ROOT, NodeProcess, child_env, wait_until, waraft_cmd
from waraft.cli import common
from waraft.client import Client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, int]]:
    port = _free_port()
    # Durable (the WAL), so that the fsync histogram has samples.
    extra = ["--insecure", "--partitions", "1-3", "--metrics", f"127.0.0.1:{port}"]
    proc = NodeProcess(tmp_path_factory.mktemp("metrics"), "m1", extra)
    try:
        proc.spawn()
        node_id = proc.wait_ready()
        done = subprocess.run(
            waraft_cmd("bootstrap", "--nodes", node_id, "--partitions", "1-3"),
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env(),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        yield proc, port
    finally:
        proc.kill()


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        family.name: [(dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_a_scrape_parses_and_has_every_partition_and_the_node_figures(
    node: tuple[NodeProcess, int],
) -> None:
    _, port = node
    families = wait_until(
        lambda: (f := _scrape(port)) and len(f["waraft_partition_term"]) == 3 and f
    )
    terms = {s[0]["partition"]: s[1] for s in families["waraft_partition_term"]}
    assert set(terms) == {"1", "2", "3"} and all(term >= 1 for term in terms.values())
    states = {s[0]["partition"]: s[0]["state"] for s in families["waraft_partition_info"]}
    assert set(states.values()) == {"leader"}  # a single-node cluster leads every partition
    commits = {s[0]["partition"]: s[1] for s in families["waraft_partition_commit_index"]}
    applied = {s[0]["partition"]: s[1] for s in families["waraft_partition_applied_index"]}
    assert all(commits[p] >= 1 and applied[p] <= commits[p] for p in commits)
    assert all(value == 1.0 for _, value in families["waraft_partition_up"])
    for name in ("waraft_processes", "waraft_os_threads", "waraft_peers_up"):
        assert name in families, name
    assert families["waraft_processes"][0][1] > 3 * 6  # six processes a partition, at least
    assert families["waraft_scheduler_run_queue"], "one sample per scheduler"
    assert {s[0]["direction"] for s in families["waraft_dist_messages"]} == {"in", "out"}
    # `waraft node` runs with its own collector thresholds, and counts its collections.
    threshold = {s[0]["generation"]: s[1] for s in families["waraft_gc_threshold"]}
    assert threshold == {"0": 20_000.0, "1": 20.0, "2": 20.0}
    assert {s[0]["generation"] for s in families["waraft_gc_collections"]} == {"0", "1", "2"}
    assert "waraft_gc_pause_seconds" in families


def test_commits_reads_log_bytes_fsyncs_and_snapshot_transfers(
    node: tuple[NodeProcess, int],
) -> None:
    proc, port = node
    assert proc.node_id is not None
    table = common.DEFAULT_TABLE
    client = Client([proc.node_id], table=table, partitions=3, timeout=15.0)
    try:
        for i, partition in enumerate((1, 1, 1, 1, 2, 2)):
            assert client.commit(partition, ("write", table, f"k{i}", i)) == "ok"
        assert client.read(1, ("read", table, "k0")) == ("ok", 0)
    finally:
        client.close()
    families = wait_until(
        lambda: (f := _scrape(port)) and sum(v for _, v in f["waraft_partition_commits"]) >= 6 and f
    )
    commits = {s[0]["partition"]: s[1] for s in families["waraft_partition_commits"]}
    reads = {s[0]["partition"]: s[1] for s in families["waraft_partition_reads"]}
    assert commits == {"1": 4.0, "2": 2.0, "3": 0.0}
    assert reads == {"1": 1.0, "2": 0.0, "3": 0.0}
    # A single member elects itself once per partition at bootstrap.
    elections = {s[0]["partition"]: s[1] for s in families["waraft_partition_elections"]}
    assert elections == {"1": 1.0, "2": 1.0, "3": 1.0}
    log_bytes = {s[0]["partition"]: s[1] for s in families["waraft_partition_log_bytes"]}
    # Every partition holds its config entry at least; the busiest holds the most bytes.
    assert log_bytes["3"] > 0 and log_bytes["1"] > log_bytes["2"] > log_bytes["3"]
    quiet = {s[0]["partition"]: s[1] for s in families["waraft_partition_quiescent"]}
    assert set(quiet) == {"1", "2", "3"} and set(quiet.values()) <= {0.0, 1.0}
    # One WAL for the node: cumulative buckets ending in +Inf = count, a positive sum.
    fsync = families["waraft_log_fsync_seconds"]
    logs = {s[0]["log"] for s in fsync}
    assert len(logs) == 1 and str(proc.data_dir) in next(iter(logs))
    buckets = [(s[0]["le"], s[1]) for s in fsync if "le" in s[0]]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == "+Inf" and counts[-1] >= 6
    total = {s[0].get("le", "sum"): s[1] for s in fsync if "le" not in s[0]}
    assert total["sum"] > 0
    # A single node never sends a snapshot: the family is there, with no samples yet.
    assert "waraft_partition_snapshot_transfers" in families
    assert families["waraft_partition_snapshot_transfers"] == []
    # The clients (this test's, the bootstrap tool) are summed, not named: the endpoint
    # answers anyone, and a client key may not list the node's peers (review N).
    peers = {s[0]["peer"]: s[1] for s in families["waraft_peer_rx_messages"]}
    assert list(peers) == ["clients"] and peers["clients"] >= 7, peers


def test_a_bad_or_busy_metrics_address_is_one_line_and_a_failed_start(tmp_path: Path) -> None:
    bad = subprocess.run(
        waraft_cmd("node", "--name", "x", "--listen", "127.0.0.1:0", "--memory", "--insecure",
                   "--metrics", "nowhere"),
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env(),
    )  # fmt: skip
    assert bad.returncode != 0 and "--metrics must be HOST:PORT" in bad.stderr
    assert "Traceback" not in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run(
            waraft_cmd("node", "--name", "y", "--listen", "127.0.0.1:0", "--memory",
                       "--insecure", "--metrics", f"127.0.0.1:{port}"),
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env(),
        )  # fmt: skip
    assert taken.returncode != 0 and f"--metrics 127.0.0.1:{port}" in taken.stderr
    assert "Traceback" not in taken.stderr


def test_quiescence_shows_per_partition_and_per_node(node: tuple[NodeProcess, int]) -> None:
    """A single-member partition quiesces once idle (the node's default is 2 s); the per
    partition gauge and the node's count say so, and the coalescing counters are there."""
    _, port = node

    def quiet() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        f = _scrape(port)
        return f if f["waraft_quiescent_partitions"][0][1] == 3.0 else None

    families = wait_until(quiet, timeout=20)
    assert [value for _, value in families["waraft_partition_quiescent"]] == [1.0, 1.0, 1.0]
    assert families["waraft_heartbeat_frames_received"][0][1] == 0.0  # no peer, no frame
    assert "waraft_heartbeat_frames" in families and "waraft_heartbeat_rpcs" in families
