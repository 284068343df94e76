"""What one node-liveness report costs a node with many quiescent partitions, in one process.

Run: ``.venv/bin/python -m benchmarks.liveness_fanout_bench [--partitions P] [--reports K]
[--idle S]``.

One ``otp`` node runs P single-member partitions (memory log and storage, the defaults),
bootstrapped, elected and quiescent. The distribution's detector reports every peer that
comes and goes, including the throw-away client node of each ``waraft status`` or
``waraft bootstrap`` run. The benchmark passes K up/down reports of such a node (one in no
partition's config) to the node's listener, ``waraft.partition.app._fan_out_liveness``, and
prints the CPU seconds of this process (all threads) until every server has handled what it
was sent, per report and per server:

* ``listener``: what the node does now (the report reaches no server);
* ``to every server``: a ``NodeLiveness`` cast to every local server, which is what the
  listener did before ``server.member_nodes`` (each server wakes, steps its core, which
  records the node as down and goes back to sleep).

With ``--idle S`` it first prints this process's CPU over S seconds in which nothing happens
(what P quiescent partitions cost a node by themselves: no peers, no clients), after
``--settle`` seconds (35: past every partition's first transport cleanup scan, 30 s after
its start).

CPU time of this process only, so other load on the machine changes the figures little.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from waraft import otp
from waraft.core.events import NodeLiveness
from waraft.core.types import Identity, LogPos
from waraft.otp import sched
from waraft.partition import app, server, sup
from waraft.services import env

APP = "liveness_bench"
TABLE = "bench"


def _start(root: Path, partitions: int) -> otp.Node:
    node = otp.Node("bench@local")
    with node.activate():
        env.set_env(APP, "raft_database", str(root))
        env.set_env(APP, "raft_quiesce_after_ms", 200)
        args = [{"table": TABLE, "partition": p} for p in range(1, partitions + 1)]
        result = otp.supervisor.start_child("kernel_sup", sup.child_spec(APP, args))
        assert result[0] == "ok", result
        for p in range(1, partitions + 1):
            name = server.default_name(TABLE, p)
            config = server.make_config([Identity(name, node.id)])
            assert server.bootstrap(name, LogPos(1, 1), config) == "ok"
            server.trigger_election(name)
    return node


def _quiescent(node: otp.Node, partitions: int) -> int:
    with node.activate():
        return sum(
            1
            for p in range(1, partitions + 1)
            if server.status(server.default_name(TABLE, p), timeout=10)["quiescent"]
        )


def _drained(node: otp.Node) -> None:
    """Until no scheduler has a runnable process twice in a row, 10 ms apart."""
    calm = 0
    while calm < 2:
        time.sleep(0.01)
        calm = calm + 1 if not any(sched.stats(node)["run_queue"]) else 0


def _cpu(node: otp.Node, reports: int, fan_out: bool, partitions: int) -> float:
    with node.activate():
        names = [n for n in otp.registered() if n.startswith("raft_server_")]
        assert len(names) == partitions
        _drained(node)
        start = time.process_time()
        for i in range(reports):
            client = f"cli-{i}@127.0.0.1:{40000 + i}"
            for up in (True, False):
                if fan_out:
                    event = NodeLiveness(client, up)
                    for name in names:
                        otp.cast(name, event)
                else:
                    app._fan_out_liveness(client, up)
        _drained(node)
        return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--partitions", type=int, default=1000)
    p.add_argument("--reports", type=int, default=10, help="client nodes that come and go")
    p.add_argument(
        "--idle", type=float, default=0.0, help="also: CPU over this many idle seconds first"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=35.0,
        help="wait before the idle window (past the transport cleanups' first scans, 30 s)",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="waraft-liveness-bench-") as tmp:
        node = _start(Path(tmp), args.partitions)
        try:
            deadline = time.monotonic() + 120
            while _quiescent(node, args.partitions) < args.partitions:
                if time.monotonic() > deadline:
                    raise SystemExit("partitions did not quiesce within 120 s")
                time.sleep(0.5)
            if args.idle > 0:
                time.sleep(args.settle)
                start = time.process_time()
                time.sleep(args.idle)
                idle = time.process_time() - start
                print(
                    f"idle: {idle / args.idle * 100:.2f} % of a core over {args.idle:.0f} s, "
                    f"{idle / args.idle / args.partitions * 1e6:.2f} us/s per partition",
                    flush=True,
                )
            reports = 2 * args.reports
            for label, fan_out in (("listener", False), ("to every server", True)) * 2:
                cpu = _cpu(node, args.reports, fan_out, args.partitions)
                print(
                    f"{label:>16}: {cpu:.3f} s CPU for {reports} reports, "
                    f"{cpu / reports * 1e3:.2f} ms per report, "
                    f"{cpu / reports / args.partitions * 1e6:.1f} us per server per report",
                    flush=True,
                )
            print(f"quiescent after: {_quiescent(node, args.partitions)}/{args.partitions}")
        finally:
            node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
