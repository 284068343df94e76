"""The client's own CPU per committed op: ``waraft.client.Client`` against a stub cluster.

Run: ``.venv/bin/python -m benchmarks.client_bench [--concurrency N] [--duration S] [--repeat R]``.

Scenario a of the harness found the load generator, not the servers, to be the bottleneck
(one client process at ~100 % of a core while three nodes shared 88 %). This isolates the
client: a child process (this module with ``--serve``) is a distribution node whose
"acceptor" for each partition answers every ``client_batch`` at once, in its receive thread,
with what a real leader answers (a packed ``$batch`` entry: one result that is the list of
the commands' results; unpacked: one result per item). No Raft, no storage: whatever CPU this
process spends per op is the client's, plus the harness's generator loop, which drives the
client exactly as in a harness run (``benchmarks.harness.waraft_client.WaraftDriver``: one
``commit_many`` with a callback per loop turn, results drained from a ``SimpleQueue``).

Reported per run (median over ``--repeat``): committed ops/s against the stub, this process's
CPU seconds per op (``time.process_time`` over the window: every thread, the generator loop,
the client's sender thread and distribution's receive thread), and items per batch. The
stub answers instantly, so batches are smaller than against a real cluster (compare the
``items/batch`` column with a harness run's ``client_stats``) and ops/s is bound by the client.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from waraft import otp
from waraft.partition import acceptor
from waraft.services import codec
from waraft.storage import BATCH

TABLE = "kv"
VALUE = b"v" * 100


# ---------------------------------------------------------------------- stub side
def _stub_handler(msg: Any, origin: str) -> bool:
    """Answer a client batch at once with every command "ok" (in dist's receive thread; an
    inline handler is also told who sent it, ``origin``, which a stub does not check)."""
    if type(msg) is not tuple or len(msg) != 6 or msg[0] != "client_batch":
        return False
    _, reply_addr, batch_id, kind, items, _priority = msg
    if kind == "commit" and len(items) == 1 and items[0][1][0] == BATCH:
        results: list[Any] = [["ok"] * len(codec.unpackb(items[0][1][1]))]
    else:
        results = ["ok"] * len(items)
    otp.cast(tuple(reply_addr), ("client_reply", batch_id, results, None))
    return True


def serve(partitions: int) -> None:
    logging.getLogger("waraft").setLevel(logging.ERROR)
    from waraft import distribution as dist
    from waraft.distribution import policy

    policy.open_unlisted_names(True)
    node_id = dist.start("stub@127.0.0.1:0")
    for partition in range(1, partitions + 1):
        dist.set_inline_handler(acceptor.default_name(TABLE, partition), _stub_handler)
    print(f"READY {node_id}", flush=True)
    sys.stdin.read()
    dist.stop()
    os._exit(0)


# ---------------------------------------------------------------------- client side
def run_once(
    node_id: str,
    partitions: int,
    concurrency: int,
    warmup: float,
    duration: float,
    options: dict[str, Any],
    coalesce: bool = True,
) -> dict[str, float]:
    from benchmarks.harness.waraft_client import WaraftDriver
    from benchmarks.harness.wire import OP_WRITE

    driver = WaraftDriver(
        {
            "nodes": [node_id],
            "partitions": partitions,
            "client_options": options,
            "coalesce": coalesce,
        }
    )
    try:
        driver.connect(10.0)
        before = driver.stats()
        keys = [f"key{i:05d}" for i in range(10_000)]
        inflight = done = 0
        token = 0
        start = time.monotonic()
        window_start, window_end = start + warmup, start + warmup + duration
        cpu0 = cpu1 = 0.0
        counted = 0
        stats0: dict[str, int] = before
        in_window = False
        while True:
            now = time.monotonic()
            if not in_window and now >= window_start:
                in_window, cpu0, counted, stats0 = True, time.process_time(), 0, driver.stats()
            if now >= window_end:
                cpu1 = time.process_time()
                stats1 = driver.stats()
                break
            for _ in range(concurrency - inflight):
                token += 1
                driver.submit(OP_WRITE, keys[token % 10_000], VALUE, token)
            inflight = concurrency
            driver.flush()
            completions = driver.poll(0.05)
            inflight -= len(completions)
            done += len(completions)
            if in_window:
                counted += len(completions)
        errors = sum(1 for c in completions if c[2] is not None)
        batches = stats1["batches"] - stats0["batches"]
        items = stats1["items_sent"] - stats0["items_sent"]
        return {
            "ops_s": counted / duration,
            "cpu_us_op": (cpu1 - cpu0) / max(counted, 1) * 1e6,
            "cpu_pct": (cpu1 - cpu0) / duration * 100,
            "items_batch": items / max(batches, 1),
            "errors_last_turn": errors,
        }
    finally:
        driver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8192)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pack", choices=("true", "false"), default="true")
    parser.add_argument(
        "--coalesce",
        choices=("true", "false"),
        default="true",
        help="false: scenario b's client, one commit_async per command, max_batch=1",
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.partitions)
        return
    logging.basicConfig(level=logging.WARNING)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.client_bench",
        "--serve",
        "--partitions",
        str(args.partitions),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"stub did not start: {line!r}")
        node_id = line.split()[1]
        options = {"pack": args.pack == "true"}
        runs = [
            run_once(
                node_id,
                args.partitions,
                args.concurrency,
                args.warmup,
                args.duration,
                options,
                args.coalesce == "true",
            )
            for _ in range(args.repeat)
        ]
        for i, run in enumerate(runs, 1):
            print(
                f"run {i}: {run['ops_s']:>10,.0f} ops/s  {run['cpu_us_op']:6.2f} us CPU/op  "
                f"{run['cpu_pct']:5.1f} % CPU  {run['items_batch']:7.1f} items/batch"
            )
        print(
            f"median: {statistics.median(r['ops_s'] for r in runs):,.0f} ops/s, "
            f"{statistics.median(r['cpu_us_op'] for r in runs):.2f} us client CPU per op "
            f"(concurrency {args.concurrency}, pack={args.pack}, coalesce={args.coalesce}, "
            f"load average "
            f"{os.getloadavg()[0]:.2f})"
        )
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


if __name__ == "__main__":
    main()
