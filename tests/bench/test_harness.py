"""Unit tests of the benchmark harness's pure parts: histogram, mix, recorder window rules,
failover analysis, comparisons, the Markdown table and the results schema check."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import cli, results, suite
from benchmarks.harness.histogram import Histogram, bucket_bounds, bucket_index
from benchmarks.harness.progress import Progress
from benchmarks.harness.recorder import Recorder
from benchmarks.harness.runner import Measurement, _failover, _merge
from benchmarks.harness.scenarios import SCENARIOS
from benchmarks.harness.suite import Options, _plan, compare, durability_costs
from benchmarks.harness.table import markdown
from benchmarks.harness.wire import OP_READ, OP_WRITE
from benchmarks.harness.workload import OpStream, Window, Workload, parse_mix


def test_bucket_bounds_contain_their_values() -> None:
    rng = random.Random(7)
    values = [0, 1, 255, 256, 257, 511, 512, 10**6, 2**40 + 12345]
    values += [rng.randrange(1, 10**11) for _ in range(2000)]
    for value in values:
        low, high = bucket_bounds(bucket_index(value))
        assert low <= value < high
        assert (high - low) <= max(1, value // 128 + 1)  # below 1 % relative width


def test_percentiles_match_sorted_samples_within_precision() -> None:
    rng = random.Random(3)
    samples = [int(rng.lognormvariate(13, 1.2)) for _ in range(20_000)]
    hist = Histogram()
    hist.record_many(samples)
    ordered = sorted(samples)
    for pct in (50.0, 90.0, 99.0, 99.9, 100.0):
        exact = ordered[max(0, -(-len(ordered) * pct // 100) - 1).__int__()]
        got = hist.percentile(pct)
        assert exact <= got <= exact * 1.01 + 1
    assert hist.total == len(samples)
    assert hist.min == ordered[0] and hist.max == ordered[-1]


def test_merge_and_json_round_trip() -> None:
    a, b = Histogram(), Histogram()
    a.record_many([5, 500, 50_000])
    b.record_many([7, 7_000_000])
    a.merge(Histogram.from_json(b.to_json()))
    assert a.total == 5 and a.min == 5 and a.max == 7_000_000
    assert a.percentile(100) == 7_000_000
    assert Histogram().percentile(50) == 0


@pytest.mark.parametrize(
    ("text", "reads"),
    [("write=1,read=0", 0.0), ("write=9,read=1", 0.1), ("read=1", 1.0), ("write=3, read=1", 0.25)],
)
def test_parse_mix(text: str, reads: float) -> None:
    assert parse_mix(text) == pytest.approx(reads)


@pytest.mark.parametrize("text", ["write=0,read=0", "update=1", "write=-1,read=2", "write"])
def test_parse_mix_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mix(text)


def test_op_stream_keeps_the_mix_and_the_value_size() -> None:
    stream = OpStream(Workload(value_size=33, read_fraction=0.25, keyspace=100))
    ops = [stream.next() for _ in range(1000)]
    assert sum(op == OP_READ for op, _, _ in ops) == 250
    assert all(len(v) == 33 for op, _, v in ops if op == OP_WRITE and v is not None)
    assert len({k for _, k, _ in ops}) == 100


def test_recorder_counts_only_the_window() -> None:
    window = Window(t0_ns=0, warmup_ns=1000, duration_ns=1000)
    rec = Recorder(window, bucket_ns=100)
    rec.done(OP_WRITE, 100, 900, None)  # warm-up: not counted, no latency
    rec.done(OP_WRITE, 900, 1100, None)  # completes in window: counted, sent before: no latency
    rec.done(OP_WRITE, 1200, 1500, None)  # counted, latency 300
    rec.done(OP_WRITE, 1900, 2300, None)  # sent in window, completes after: latency, not counted
    rec.done(OP_WRITE, 1300, 1400, "timeout")
    res = rec.result()
    assert res["ok"]["write"] == 2
    assert res["errors"] == {"timeout": 1}
    lat = Histogram.from_json(res["latency"]["write"])
    assert lat.total == 2 and lat.min == 300 and lat.max == 400
    assert sum(res["timeline"]["ok"]) == 3  # the timeline ends with the window


def _timeline(ok: list[int], bucket_ns: int) -> dict[str, Any]:
    return {
        "ok": {"write": 0, "read": 0},
        "ok_outside_window": 0,
        "sent_in_window": 0,
        "unfinished": 0,
        "errors": {},
        "latency": {"write": Histogram().to_json(), "read": Histogram().to_json()},
        "timeline": {"bucket_ns": bucket_ns, "ok": ok, "err": [0] * len(ok)},
    }


def test_failover_recovery_from_the_fine_timeline() -> None:
    ms = 1_000_000
    ok = [10] * 1000 + [0] * 1500 + [10] * 1000  # 1.5 s without any success after 1 s
    window = Window(t0_ns=0, warmup_ns=500 * ms, duration_ns=3000 * ms)
    fo = _failover([_timeline(ok, ms)], window, ("n1", 1000 * ms), {"elections": 1})
    assert fo["killed"] == "n1"
    assert fo["kill_at_s"] == 0.5
    assert fo["recovery_s"] == 1.5
    assert fo["max_gap_s"] == 1.5
    assert fo["ops_per_s_before"] == 10_000
    assert fo["elections"] == 1


def _run(scenario: str, system: str, nodes: int, ops: float, p50: float) -> dict[str, Any]:
    m = Measurement(scenario=scenario, system=system, nodes=nodes, partitions=1, concurrency=8)
    window = Window(0, 10**9, 10**9)
    record = _merge(m, [_timeline([0] * 20, 100_000_000)], window)
    record.update(
        scenario=scenario,
        system=system,
        status="ok",
        settings={},
        elections={"terms_before": {}, "terms_after": {}, "elections": 0},
        resources={"window_s": 1.0, "processes": [], "machine": {"cores": 2}},
    )
    record["throughput"]["ops_per_s"] = ops
    record["latency_ms"]["all"]["p50_ms"] = p50
    return record


def test_compare_pairs_runs_of_the_same_scenario_and_size() -> None:
    runs = [
        _run("a", "waraft", 3, 3000.0, 1.0),
        _run("a", "waraft", 3, 4000.0, 2.0),
        _run("a", "pysyncobj", 3, 1000.0, 4.0),
        _run("a", "waraft", 1, 9000.0, 0.5),
        _run("a", "pysyncobj-inleader", 1, 3000.0, 1.0),
    ]
    comparisons = {(c["nodes"], c["against"]): c for c in compare(runs)}
    assert comparisons[(3, "pysyncobj")]["throughput_ratio"] == 4.0
    assert comparisons[(3, "pysyncobj")]["p50_latency_ratio"] == 2.0
    assert comparisons[(1, "pysyncobj-inleader")]["throughput_ratio"] == 3.0
    assert (1, "pysyncobj") not in comparisons


def test_table_and_schema_of_a_synthetic_document() -> None:
    doc = results.new_document(["run", "--scenario", "a"], {})
    doc["runs"] = [_run("a", "waraft", 3, 1234.0, 1.5), _run("a", "pysyncobj", 3, 617.0, 3.0)]
    doc["comparisons"] = compare(doc["runs"])
    assert results.validate(doc) == []
    text = markdown(doc)
    assert "python -m benchmarks run --scenario a" in text
    assert "| a. pipelined | waraft | 3 | 8 | 1,234 |" in text
    assert "2.00x" in text
    del doc["runs"][0]["latency_ms"]["all"]["p99_ms"]
    del doc["machine"]["git_commit"]
    assert set(results.validate(doc)) == {"runs[0].latency_ms.all.p99_ms", "machine.git_commit"}


def test_durability_costs_pair_memory_and_durable_runs() -> None:
    memory = _run("a", "waraft", 3, 40_000.0, 1.0)
    durable = _run("a", "waraft", 3, 25_000.0, 2.0)
    durable["config"]["durable"] = True
    durable["resources"]["processes"] = [
        {"role": "server", "disk_write_bytes": 3 * 2**20},
        {"role": "client", "disk_write_bytes": 2**30},
    ]
    lone = _run("a", "pysyncobj", 3, 9_000.0, 1.0)
    costs = durability_costs([memory, durable, lone])
    assert len(costs) == 1
    assert costs[0]["durable_over_memory"] == 0.625
    assert costs[0]["durable_server_disk_write_bytes_per_s"] == 3 * 2**20  # over a 1 s window
    assert {c["nodes"] for c in compare([memory, durable])} == set()  # no PySyncObj: no pair


def _round(run: dict[str, Any], k: int, durable: bool = False) -> dict[str, Any]:
    run["config"]["round"] = k
    run["config"]["durable"] = durable
    return run


def test_repeated_rounds_give_each_rounds_ratio_and_their_median() -> None:
    # --repeat: each round's durable run against the same round's memory run, not the best of
    # one mode against the best of the other (a lucky memory round would set every ratio).
    runs = [
        _round(_run("a", "waraft", 3, 3000.0, 1.0), 1),
        _round(_run("a", "waraft", 3, 1800.0, 1.0), 1, durable=True),  # 0.6
        _round(_run("a", "waraft", 3, 2000.0, 1.0), 2),
        _round(_run("a", "waraft", 3, 1900.0, 1.0), 2, durable=True),  # 0.95
        _round(_run("a", "waraft", 3, 2400.0, 1.0), 3),
        _round(_run("a", "waraft", 3, 1800.0, 1.0), 3, durable=True),  # 0.75
        _round(_run("a", "waraft", 3, 9999.0, 1.0), 4),  # its durable run failed: no ratio
        _round(_run("a", "waraft", 3, 10.0, 1.0), 4, durable=True),
        _round(_run("a", "pysyncobj", 3, 1000.0, 2.0), 1),
        _round(_run("a", "pysyncobj", 3, 4000.0, 2.0), 2),
    ]
    runs[7]["status"] = "failed"
    cost = durability_costs(runs)[0]
    assert cost["round_ratios"] == [0.6, 0.95, 0.75]
    assert cost["median_ratio"] == 0.75
    assert cost["durable_over_memory"] == 0.19  # best of each mode: 1900 / 9999
    vs = {c["durable"]: c for c in compare(runs)}[False]
    assert vs["round_ratios"] == [3.0, 0.5] and vs["median_ratio"] == 1.75
    # Runs that were not repeated have no rounds.
    single = [_run("a", "waraft", 3, 2.0, 1.0), _round(_run("a", "waraft", 3, 1.0, 1.0), 0, True)]
    (cost,) = durability_costs(single)
    assert cost["durable_over_memory"] == 0.5 and "round_ratios" not in cost


def test_repeated_rounds_run_their_plan_in_alternating_order() -> None:
    # Round 1 as the options give it, round 2 reversed, round 3 as round 1: neither mode (nor
    # cluster size) always runs second. A single run (round 0) keeps the given order.
    opts = Options(
        scenarios=[SCENARIOS["a"]],
        out=Path("unused"),
        systems=["waraft"],
        nodes=[1, 3],
        storage=("memory", "durable"),
    )
    given = [(False, 1, "waraft"), (False, 3, "waraft"), (True, 1, "waraft"), (True, 3, "waraft")]
    doc: dict[str, Any] = {"skipped": []}
    plans = [_plan(SCENARIOS["a"], opts, doc, round_) for round_ in range(4)]
    assert plans == [given, given, given[::-1], given]


@pytest.mark.parametrize("keep", [False, True])
def test_each_clusters_data_dir_goes_when_the_cluster_stops_unless_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    # The cluster and the measurement are stubs: the cluster writes into its data dir as the
    # nodes would, and each measurement notes which clusters' data dirs exist while it runs.
    seen: list[list[str]] = []
    data_root = tmp_path / "data"

    def clusters_on_disk() -> list[str]:
        return sorted(p.name.rsplit("-", 1)[0] for p in data_root.iterdir())

    @contextmanager
    def cluster(*args: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
        data_dir: Path = args[5]
        (data_dir / "n1").mkdir(parents=True)
        (data_dir / "n1" / "wal").write_bytes(b"x" * 100)
        yield object(), {}

    def one(m: Measurement, *args: Any) -> dict[str, Any]:
        seen.append(clusters_on_disk())
        return {"id": m.run_id}

    monkeypatch.setattr(suite, "_cluster", cluster)
    monkeypatch.setattr(suite, "_one", one)
    opts = Options(scenarios=[SCENARIOS["a"]], out=tmp_path, concurrency=[8], keep_data=keep)
    progress = Progress(io.StringIO(), enabled=False)
    ids = []
    for round_, durable in ((1, False), (1, True), (2, True)):
        runs = suite._run_system(SCENARIOS["a"], "waraft", 3, durable, opts, progress, round_)
        ids += [r["id"] for r in runs]
    assert ids == [
        "a-waraft-n3-p1-c8-round1",
        "a-waraft-n3-p1-c8-durable-round1",
        "a-waraft-n3-p1-c8-durable-round2",
    ]
    first, second, third = (
        "a-waraft-n3-round1",
        "a-waraft-n3-durable-round1",
        "a-waraft-n3-durable-round2",
    )
    if keep:
        # Every cluster's files stay, under its own name.
        assert seen == [[first], [second, first], [second, third, first]]
        assert clusters_on_disk() == [second, third, first]
    else:
        # Each cluster ran on a disk holding only its own files.
        assert seen == [[first], [second], [third]]
        assert clusters_on_disk() == []


def test_a_repeated_run_is_named_by_its_round_and_repeat_must_be_positive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = Measurement(scenario="a", system="waraft", nodes=3, partitions=1, concurrency=8)
    assert m.run_id == "a-waraft-n3-p1-c8"
    m.round = 2
    assert m.run_id == "a-waraft-n3-p1-c8-round2"
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as exited:
            cli.main(["run", "--repeat", bad])
        assert exited.value.code == 2
        assert "expected a whole number of at least 1" in capsys.readouterr().err


def test_fsync_total_counts_the_node_wal_once_per_node() -> None:
    """Every partition of a node reports its node's WAL counter: summing the rows would
    multiply the group commits by the partitions; a per-partition log's counts do add up."""
    from benchmarks.harness.waraft_cluster import fsync_total

    wal_rows: list[dict[str, Any]] = [
        {"node": "n1", "partition": 1, "log_fsyncs": None, "wal_fsyncs": 40},
        {"node": "n1", "partition": 2, "log_fsyncs": None, "wal_fsyncs": 41},
        {"node": "n2", "partition": 1, "log_fsyncs": None, "wal_fsyncs": 7},
        {"node": "n3", "error": "timeout"},
    ]
    assert fsync_total(wal_rows) == 41 + 7
    disk_rows: list[dict[str, Any]] = [
        {"node": "n1", "partition": 1, "log_fsyncs": 5},
        {"node": "n1", "partition": 2, "log_fsyncs": 6},
    ]
    assert fsync_total(disk_rows) == 11
    assert fsync_total([{"node": "n1", "partition": 1, "log_fsyncs": None}]) is None


def test_durable_cluster_names_the_node_default_providers(tmp_path: Any) -> None:
    """Durable mode runs ``waraft node`` without ``--memory`` (its WAL and node LMDB), and
    says so; ``--settings`` selects the per-partition providers instead."""
    from benchmarks.harness.procs import ProcessGroup
    from benchmarks.harness.waraft_cluster import WaraftCluster

    group = ProcessGroup(tmp_path / "logs")
    durable = WaraftCluster(group, 1, 1, tmp_path, durable=True)
    assert "--memory" not in durable.node_argv(0)
    assert "WalLog" in durable.providers() and "NodeLmdbStorage" in durable.providers()
    old = WaraftCluster(
        group, 1, 1, tmp_path, durable=True, settings={"raft_log_module": "waraft.log.disk:DiskLog"}
    )
    assert "DiskLog" in old.providers()
    assert "raft_log_module=waraft.log.disk:DiskLog" in old.node_argv(0)
    assert WaraftCluster(group, 1, 1, tmp_path).providers() == "memory"


def test_steal_time_is_recorded_and_flags_the_run() -> None:
    """The hypervisor's steal time is the only sign of a slower VM: the sampler reports it per
    window and the run's line calls the run noisy."""
    from collections import namedtuple

    from benchmarks.harness.resources import ResourceSampler
    from benchmarks.harness.suite import summary_line

    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal")
    sampler = ResourceSampler()
    sampler.set_window(0, 2 * 10**9)  # 2 s
    sampler._machine_begin = Times(10.0, 0.0, 5.0, 100.0, 0.0, 0.0, 0.0, 7.0)
    sampler._machine_end = Times(12.0, 0.0, 5.5, 101.0, 0.0, 0.0, 0.0, 7.4)
    machine = sampler.report()["machine"]
    assert machine["steal_cores"] == 0.2
    assert machine["busy_cores"] == 1.25  # steal is not counted as busy

    run = _run("a", "waraft", 3, 3000.0, 1.0)
    run["id"] = "a-waraft"
    run["errors_total"] = 0
    assert "NOISY" not in summary_line(run)
    run["resources"]["machine"]["steal_cores"] = machine["steal_cores"]
    assert "the hypervisor took 0.2 cores (steal)" in summary_line(run)
