"""The README "Performance" section, written from a results document so nobody types figures:
``python -m benchmarks table results.json``."""

from __future__ import annotations

import json
from typing import Any

SYSTEM_NAMES = {
    "waraft": "waraft",
    "pysyncobj": "PySyncObj",
    "pysyncobj-inleader": "PySyncObj, load in leader",
}
SCENARIO_NAMES = {
    "a": "a. pipelined",
    "b": "b. one command per request",
    "c": "c. one sync client",
    "d": "d. 5 nodes, pipelined",
    "e": "e. failover",
}


def _num(x: float) -> str:
    return f"{x:,.0f}"


def _ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _machine_line(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    commit = (m.get("git_commit") or "unknown")[:10] + ("+dirty" if m.get("git_dirty") else "")
    pkgs = m.get("packages", {})
    mem = (m.get("memory_bytes") or 0) / 2**30
    return (
        f"{m['cpu_model']}, {m['cores_logical']} logical cores ({m['cores_physical']} physical), "
        f"{mem:.1f} GiB RAM; {m['platform']}; Python {m['python']}; "
        f"waraft {commit}; PySyncObj {pkgs.get('pysyncobj') or 'not installed'}, "
        f"pyzmq {pkgs.get('pyzmq')}; {doc['created']}"
    )


def _in_flight(run: dict[str, Any]) -> str:
    cfg = run["config"]
    if cfg["mode"] == "sync":
        return "1 (sync)"
    text = str(cfg["concurrency"])
    if cfg.get("rate"):
        text += f" @ {cfg['rate']:g}/s"
    return text


def runs_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| scenario | system | nodes | in flight | committed ops/s | p50 ms | p90 ms | p99 ms "
        "| p99.9 ms | servers CPU % | client CPU % | peak RSS/node MiB | errors | elections "
        "| other load (cores) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for run in runs:
        sc = SCENARIO_NAMES.get(run["scenario"], run["scenario"])
        system = SYSTEM_NAMES.get(run["system"], run["system"])
        if run["config"].get("durable"):
            system += " (durable)"
        if run["status"] != "ok":
            lines.append(
                f"| {sc} | {system} | {run['config']['nodes']} | {_in_flight(run)} | failed: "
                f"{run.get('error', '?')[:60]} | | | | | | | | | | |"
            )
            continue
        lat = run["latency_ms"]["all"]
        procs = run["resources"]["processes"]
        servers = [p for p in procs if p["role"] == "server"]
        clients = [p for p in procs if p["role"] == "client"]
        rss = max((p["rss_peak_bytes"] for p in servers), default=0) / 2**20
        lines.append(
            f"| {sc} | {system} | {run['config']['nodes']} | {_in_flight(run)} "
            f"| {_num(run['throughput']['ops_per_s'])} | {_ms(lat['p50_ms'])} "
            f"| {_ms(lat['p90_ms'])} | {_ms(lat['p99_ms'])} | {_ms(lat['p99_9_ms'])} "
            f"| {sum(p['cpu_percent'] for p in servers):.0f} "
            f"| {sum(p['cpu_percent'] for p in clients):.0f} | {rss:.0f} "
            f"| {run['errors_total']} | {run['elections']['elections']} "
            f"| {run['resources']['machine'].get('other_busy_cores', 0.0):.2f} |"
        )
    return lines


def comparison_table(comparisons: list[dict[str, Any]]) -> list[str]:
    if not comparisons:
        return []
    lines = [
        "| scenario | nodes | against | waraft ops/s | other ops/s | waraft / other "
        "| p50 ms waraft | p50 ms other |",
        "|---|--:|---|--:|--:|--:|--:|--:|",
    ]
    for c in comparisons:
        ratio = c["throughput_ratio"]
        lines.append(
            f"| {SCENARIO_NAMES.get(c['scenario'], c['scenario'])}"
            f"{' (durable)' if c.get('durable') else ''} | {c['nodes']} "
            f"| {SYSTEM_NAMES.get(c['against'], c['against'])} | {_num(c['waraft_ops_per_s'])} "
            f"| {_num(c['other_ops_per_s'])} | {f'{ratio:.2f}x' if ratio is not None else 'n/a'} "
            f"| {_ms(c['waraft_p50_ms'])} | {_ms(c['other_p50_ms'])} |"
        )
    return lines


def durability_table(costs: list[dict[str, Any]]) -> list[str]:
    if not costs:
        return []
    lines = [
        "| scenario | nodes | system | memory ops/s | durable ops/s | durable / memory "
        "| server disk writes MiB/s |",
        "|---|--:|---|--:|--:|--:|--:|",
    ]
    for d in costs:
        ratio = d["durable_over_memory"]
        lines.append(
            f"| {SCENARIO_NAMES.get(d['scenario'], d['scenario'])} | {d['nodes']} "
            f"| {SYSTEM_NAMES.get(d['system'], d['system'])} | {_num(d['memory_ops_per_s'])} "
            f"| {_num(d['durable_ops_per_s'])} | {f'{ratio:.2f}' if ratio is not None else 'n/a'} "
            f"| {d['durable_server_disk_write_bytes_per_s'] / 2**20:.1f} |"
        )
    return lines


def failover_table(runs: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in runs if r["status"] == "ok" and r.get("failover")]
    if not rows:
        return []
    lines = [
        "| system | killed | writes succeed again after (s) | longest gap (s) | elections "
        "| ops/s before | ops/s after |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        fo = r["failover"]
        rec = fo["recovery_s"]
        lines.append(
            f"| {SYSTEM_NAMES.get(r['system'], r['system'])} | {fo['killed']} "
            f"| {rec if rec is not None else 'never'} | {fo['max_gap_s']} | {fo['elections']} "
            f"| {_num(fo['ops_per_s_before'])} | {_num(fo['ops_per_s_after'])} |"
        )
    return lines


def _settings_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per distinct (system, settings), naming the scenarios that used them."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in runs:
        system = "PySyncObj" if r["system"].startswith("pysyncobj") else r["system"]
        text = json.dumps(r.get("settings", {}), sort_keys=True)
        scenarios = groups.setdefault((system, text), [])
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    return [
        f"- {system} ({', '.join(scenarios)}): `{text}`"
        for (system, text), scenarios in groups.items()
    ]


def markdown(doc: dict[str, Any], heading: str = "## Performance") -> str:
    runs = doc["runs"]
    ok = [r for r in runs if r["status"] == "ok"]
    first = ok[0]["config"] if ok else None
    out = [
        heading,
        "",
        f"<!-- generated by `python -m benchmarks table` from {doc['schema']} results of "
        f"{doc['created']}; do not edit by hand -->",
        "",
        f"Machine: {_machine_line(doc)}. Reproduce with:",
        "",
        "```sh",
        doc["command"],
        "```",
        "",
    ]
    if first is not None:
        wl = first["workload"]
        mix = "writes only" if wl["read_fraction"] == 0 else f"{wl['read_fraction']:.0%} reads"
        spans = {(r["config"]["warmup_s"], r["config"]["duration_s"]) for r in ok}
        if len(spans) == 1:
            timing = f"{first['warmup_s']:g} s warm-up, then {first['duration_s']:g} s measured"
        else:
            per = sorted({(r["scenario"], r["config"]["duration_s"]) for r in ok})
            timing = f"{first['warmup_s']:g} s warm-up, then measured for " + ", ".join(
                f"{d:g} s ({sc})" for sc, d in per
            )
        modes = {bool(r["config"]["durable"]) for r in ok}
        storage = {
            frozenset({False}): "in-memory",
            frozenset({True}): "durable",
        }.get(frozenset(modes), "in-memory and durable")
        fs = doc["machine"].get("data_filesystem")
        if True in modes and fs:
            storage += f" (data on {fs.get('fstype')}, {fs.get('device')})"
        out += [
            f"Each run: {timing}; {wl['value_size']} B values over {wl['keyspace']:,} keys, "
            f"{mix}; {storage} log and storage; every process (nodes and load generators) on "
            "this one machine. A committed operation is a write acknowledged to the client "
            "after it was committed and applied; latency runs from the (intended) send to that "
            "acknowledgement. CPU is % of one core over the measured window, summed over "
            "processes; *other load* is CPU the machine spent outside the run's processes "
            "(near 0 on a quiet machine; a high value means the figures were disturbed).",
            "",
        ]
    out += runs_table(runs)
    comp = comparison_table(doc.get("comparisons", []))
    if comp:
        out += ["", "waraft against PySyncObj (best of each over the scenario's runs):", ""]
        out += comp
    dur = durability_table(doc.get("durability", []))
    if dur:
        out += ["", "Durable against memory mode (best of each):", ""]
        out += dur
    fo = failover_table(runs)
    if fo:
        out += ["", "Failover (kill -9 of the leader under load):", ""]
        out += fo
    settings = _settings_lines(runs)
    if settings:
        out += ["", "Settings:", "", *settings]
    for skip in doc.get("skipped", []):
        out.append(f"- skipped {skip['system']} in ({skip['scenario']}): {skip['reason']}")
    return "\n".join(out) + "\n"
