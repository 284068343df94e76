"""Benchmark of links and monitors across two OS processes on loopback.

Run: ``.venv/bin/python -m benchmarks.remote_signals_bench [--monitors N] [--repeat R]``.

This process is node ``sig_a``; a child process (this module with ``--serve``) is node
``sig_b`` with a ``target`` process and a ``spawner`` that starts named victims on request.
Measured (medians of ``--repeat`` runs):

* ``noproc`` round trip: ``monitor(("nobody", b))`` until its ``DOWN`` arrives (p50/p99);
* exit to ``DOWN``: a call makes a monitored remote victim stop; time from the call until the
  ``DOWN`` with its reason arrives (p50/p99; includes the call);
* install rate: N monitors on ``("target", b)`` from one process, until the child holds all N
  (monitors/s), then N demonitors until it holds none;
* kill -9 with N monitors and N links installed: time from SIGKILL until every ``DOWN`` and
  every ``EXIT`` (``noconnection``) has been delivered, and both tables here are empty.

Figures: see ``benchmarks/README.md`` (remote signals).
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

from waraft import distribution as dist
from waraft import otp

SETTINGS: dict[str, Any] = dict(ping_interval=0.5, down_after=5.0, connect_timeout=5.0)


# ---------------------------------------------------------------------- server side
class Idle(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "stop":
            self.stop_self("bench_exit")
        return "ok"


class Spawner(otp.Process):
    """``("spawn", name)`` starts a victim; ``("held",)`` is how many links and monitors other
    nodes hold on this node's processes."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request[0] == "held":
            stats = dist.stats()
            return stats.get("remote_monitors_in", 0) + stats.get("remote_links_in", 0)
        otp.start(Idle, name=request[1])
        return "ok"


def serve() -> None:
    logging.getLogger("waraft").setLevel(logging.ERROR)
    from waraft.distribution import policy

    policy.open_unlisted_names(True)  # the bench's own processes accept every message
    node_id = dist.start("sig_b@127.0.0.1:0", **SETTINGS)
    otp.start(Idle, name="target")
    otp.start(Spawner, name="spawner")
    print(f"READY {node_id}", flush=True)
    sys.stdin.read()
    dist.stop()


# ---------------------------------------------------------------------- client side
class Watcher(otp.Process):
    """Monitors/links on request and counts DOWN/EXIT messages, waking a waiter at a target."""

    trap_exit = True

    def init(self) -> None:
        self.got = 0
        self.want = -1
        self.done = otp.Event()
        self.refs: list[otp.MonitorRef] = []

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        op = request[0]
        if op == "expect":
            self.got, self.want, self.done = 0, request[1], otp.Event()
            return self.done
        if op == "monitor":
            for _ in range(request[2]):
                self.refs.append(otp.monitor(request[1]))
            return len(self.refs)
        if op == "demonitor_all":
            for ref in self.refs:
                otp.demonitor(ref)
            self.refs = []
            return "ok"
        if op == "link":
            otp.link(request[1])
            return "ok"
        raise ValueError(request)

    def handle_info(self, msg: Any) -> None:
        self.got += 1
        if self.got == self.want:
            self.done.set()


def _child() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "benchmarks.remote_signals_bench", "--serve"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        os.kill(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"child did not start: {line!r}")
    return proc, line.split()[1]


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6


def _wait(pred: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.001)


def run_once(n: int) -> dict[str, float]:
    proc, node_b = _child()
    out: dict[str, float] = {}
    try:
        w = otp.start(Watcher)
        # noproc round trips
        samples = []
        for _ in range(300):
            done = otp.call(w, ("expect", 1))
            t = time.perf_counter()
            otp.call(w, ("monitor", ("nobody", node_b), 1))
            done.wait(10)
            samples.append(time.perf_counter() - t)
        out["noproc_p50_us"], out["noproc_p99_us"] = _pct(samples, 0.5), _pct(samples, 0.99)
        # exit -> DOWN
        samples = []
        for i in range(200):
            name = f"victim{i}"
            otp.call(("spawner", node_b), ("spawn", name), 10)
            done = otp.call(w, ("expect", 1))
            otp.call(w, ("monitor", (name, node_b), 1))
            _wait(lambda: _held(node_b) >= 1)  # installed there before it is stopped
            t = time.perf_counter()
            otp.call((name, node_b), "stop", 10)
            done.wait(10)
            samples.append(time.perf_counter() - t)
        out["exit_down_p50_us"], out["exit_down_p99_us"] = _pct(samples, 0.5), _pct(samples, 0.99)
        # install / cancel rate
        t = time.perf_counter()
        otp.call(w, ("monitor", ("target", node_b), n), 120)
        _wait(lambda: _held(node_b) >= n)
        out["install_per_s"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        otp.call(w, ("demonitor_all",), 120)
        _wait(lambda: _held(node_b) == 0)
        out["cancel_per_s"] = n / (time.perf_counter() - t)
        # kill -9 with n monitors and n links (one link per linking process)
        otp.call(w, ("monitor", ("target", node_b), n), 120)
        linkers = [otp.start(Watcher) for _ in range(n // 10)]
        for linker in linkers:
            otp.call(linker, ("link", ("target", node_b)))
        _wait(lambda: _held(node_b) >= n + len(linkers))
        done = otp.call(w, ("expect", n))
        link_events = [otp.call(linker, ("expect", 1)) for linker in linkers]
        t = time.perf_counter()
        os.kill(proc.pid, signal.SIGKILL)
        done.wait(60)
        for event in link_events:
            event.wait(60)
        stats = dist.stats()
        assert stats["remote_monitors_out"] == 0 and stats["remote_links_out"] == 0
        out["kill9_all_delivered_ms"] = (time.perf_counter() - t) * 1e3
        out["kill9_links"] = float(len(linkers))
    finally:
        _kill(proc)
    return out


def _held(node_b: str) -> int:
    return int(otp.call(("spawner", node_b), ("held",), 10))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--monitors", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    logging.getLogger("waraft").setLevel(logging.ERROR)
    from waraft.distribution import policy

    policy.open_unlisted_names(True)
    dist.start("sig_a@127.0.0.1:0", **SETTINGS)
    try:
        runs = [run_once(args.monitors) for _ in range(args.repeat)]
    finally:
        otp.node.stop_all(2.0)
        dist.stop()
    for key in runs[0]:
        values = [run[key] for run in runs]
        print(f"{key:28s} median {statistics.median(values):12.1f}   runs {values}")


if __name__ == "__main__":
    main()
