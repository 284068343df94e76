"""``python -m benchmarks``: ``run`` the scenarios, ``table`` (README section from a results
JSON), ``plot`` (the PNG again from a results JSON)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness.procs import REPO_ROOT
from benchmarks.harness.scenarios import ALL_SYSTEMS, SCENARIOS, resolve
from benchmarks.harness.workload import Workload, parse_mix


def _assignment(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="waraft benchmark harness (waraft and PySyncObj side by side)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run scenarios and write JSON, PNG and Markdown",
        description="Scenarios: "
        + "; ".join(f"{s.key}: {s.title}" for s in SCENARIOS.values())
        + ". Defaults per scenario are in benchmarks/README.md.",
    )
    run.add_argument(
        "--scenario",
        action="append",
        default=None,
        help="a, b, c, d, e or all (repeatable or comma separated; default: a)",
    )
    run.add_argument(
        "--systems",
        default=None,
        help=f"comma separated subset of {','.join(ALL_SYSTEMS)} (default: the scenario's)",
    )
    run.add_argument(
        "--nodes",
        type=int,
        nargs="+",
        choices=(1, 3, 5),
        default=None,
        help="cluster sizes, one cluster per value (default: the scenario's, 3; 5 for d)",
    )
    run.add_argument("--partitions", type=int, default=1, help="waraft partitions (default 1)")
    run.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=None,
        help="commands in flight, one run per value (default: the scenario's)",
    )
    run.add_argument(
        "--clients",
        type=int,
        default=None,
        help="load-generator processes sharing the concurrency (default: the scenario's)",
    )
    run.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: total commands per second on a fixed schedule "
        "(latency from the scheduled time); default closed loop",
    )
    run.add_argument("--value-size", type=int, default=100, help="value bytes (default 100)")
    run.add_argument(
        "--mix",
        default="write=1,read=0",
        help="write/read weights, e.g. write=9,read=1 (reads are strong reads)",
    )
    run.add_argument("--keyspace", type=int, default=10_000, help="distinct keys (default 10000)")
    run.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds (default 10; 15 for the failover scenario)",
    )
    run.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds (default 3)")
    run.add_argument(
        "--storage",
        choices=("memory", "durable", "both"),
        default=None,
        help="waraft's providers: memory (default), durable (waraft node's defaults: the "
        "node-wide WAL and one LMDB environment per node, fsynced; the per-partition ones with "
        "--settings raft_log_module=waraft.log.disk:DiskLog "
        "raft_storage_module=waraft.storage.lmdb:LmdbStorage; PySyncObj: its journal) or both "
        "(each measurement in both modes, with the ratio)",
    )
    run.add_argument("--durable", action="store_true", help="same as --storage durable")
    run.add_argument(
        "--failover-at",
        type=float,
        default=None,
        help="(e) seconds into the window to kill the leader (default duration/3)",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default benchmarks/results/<UTC time>)",
    )
    run.add_argument("--name", default="results", help="file stem of the outputs")
    run.add_argument(
        "--settings",
        type=_assignment,
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="waraft settings for every node (waraft node --set KEY=VALUE)",
    )
    run.add_argument(
        "--pso-settings",
        type=_assignment,
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="PySyncObj SyncObjConf overrides (JSON values)",
    )
    run.add_argument(
        "--client-options",
        type=_assignment,
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="keyword arguments of waraft.client.Client (JSON values), e.g. pack=false",
    )
    run.add_argument("--no-plot", action="store_true", help="skip the PNG")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    run.add_argument("--keep-data", action="store_true", help="keep the nodes' data dirs")
    run.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run the whole plan N times, round after round (the modes and systems compared "
        "alternate), and report each round's ratios and their median (default 1)",
    )
    run.add_argument(
        "--profile",
        action="store_true",
        help="py-spy profiles of every node and client over the measured window "
        "(slows the run; figures of profiled runs are for finding time, not for the table)",
    )
    run.set_defaults(func=cmd_run)

    table = sub.add_parser("table", help="the README Performance section from a results JSON")
    table.add_argument("results", type=Path)
    table.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    table.add_argument("--heading", default="## Performance")
    table.set_defaults(func=cmd_table)

    plot = sub.add_parser("plot", help="draw the PNG of a results JSON again")
    plot.add_argument("results", type=Path)
    plot.add_argument("--out", type=Path, default=None)
    plot.set_defaults(func=cmd_plot)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _storage(args: argparse.Namespace) -> tuple[str, ...]:
    choice = args.storage or ("durable" if args.durable else "memory")
    return ("memory", "durable") if choice == "both" else (choice,)


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmarks.harness.suite import Options, run_suite

    try:
        scenarios = resolve(args.scenario or ["a"])
        read_fraction = parse_mix(args.mix)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    systems = None
    if args.systems:
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = set(systems) - set(ALL_SYSTEMS)
        if unknown:
            print(f"error: unknown systems {sorted(unknown)}", file=sys.stderr)
            return 2
    out = args.out
    if out is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = REPO_ROOT / "benchmarks" / "results" / stamp
    opts = Options(
        scenarios=scenarios,
        out=out,
        systems=systems,
        nodes=args.nodes,
        partitions=args.partitions,
        concurrency=args.concurrency,
        clients=None if args.clients is None else max(1, args.clients),
        rate=args.rate,
        workload=Workload(
            value_size=args.value_size, read_fraction=read_fraction, keyspace=args.keyspace
        ),
        duration_s=args.duration,
        warmup_s=args.warmup,
        storage=_storage(args),
        settings=dict(args.settings),
        pso_settings={k: _json_value(v) for k, v in args.pso_settings},
        client_options={k: _json_value(v) for k, v in args.client_options},
        failover_at_s=args.failover_at,
        plot=not args.no_plot,
        progress=args.progress,
        keep_data=args.keep_data,
        name=args.name,
        profile=args.profile,
        repeat=args.repeat,
    )
    doc = run_suite(opts, argv)
    failed = [r for r in doc["runs"] if r["status"] != "ok"]
    return 1 if failed or not doc["runs"] else 0


def cmd_table(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmarks.harness import results
    from benchmarks.harness.table import markdown

    text = markdown(results.load(args.results), heading=args.heading)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


def cmd_plot(args: argparse.Namespace, argv: list[str]) -> int:
    from benchmarks.harness import results
    from benchmarks.harness.plot import plot

    out = args.out or args.results.with_suffix(".png")
    print(plot(results.load(args.results), out))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    return int(args.func(args, argv))
