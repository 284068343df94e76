"""A load-generator process: ``python -m benchmarks.harness.loadgen`` with a JSON spec on stdin.

Protocol with the harness (JSON lines): the spec arrives on stdin; the process connects and
prints ``{"event": "ready"}``; the harness answers with the shared window
``{"window": {...}}``; during the run the process prints ``{"event": "progress", ...}`` a few
times a second and at the end ``{"event": "result", ...}``.

Three ways to generate load (the spec's ``mode``):

* ``closed``: ``concurrency`` commands always in flight; each completion sends the next one
  (latency is measured from the actual send, which *is* the intended time in a closed loop);
* ``open``: commands sent on a fixed schedule of ``rate`` per second whatever happens, with at
  most ``max_inflight`` outstanding (later ones wait); latency runs from the scheduled time;
* ``sync``: one blocking call after the other (the one-synchronous-client scenario).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

from benchmarks.harness.driver import Driver
from benchmarks.harness.recorder import Recorder
from benchmarks.harness.workload import OpStream, Window, Workload

PROGRESS_EVERY_NS = 250_000_000


def make_driver(spec: dict[str, Any]) -> Driver:
    system = spec["system"]
    if system == "pysyncobj":
        from benchmarks.harness.pso_client import PySyncObjDriver

        return PySyncObjDriver(
            spec["endpoints"],
            coalesce=bool(spec.get("coalesce", True)),
            retry_after=float(spec.get("retry_after_s", 1.0)),
        )
    if system == "waraft":
        from benchmarks.harness.waraft_client import WaraftDriver

        return WaraftDriver(spec)
    raise ValueError(f"unknown system {system!r}")


class Emitter:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, **fields}) + "\n")
        self.out.flush()


def run_closed(
    driver: Driver, stream: OpStream, rec: Recorder, concurrency: int, emit: Emitter, drain_s: float
) -> None:
    window = rec.window
    end = window.end_ns
    inflight = 0
    done = 0
    next_progress = time.monotonic_ns() + PROGRESS_EVERY_NS
    now = time.monotonic_ns()
    while now < end:
        if inflight < concurrency:
            now = time.monotonic_ns()
            for _ in range(concurrency - inflight):
                op, key, value = stream.next()
                rec.sent(now)
                driver.submit(op, key, value, now)
            inflight = concurrency
            driver.flush()
        completions = driver.poll(0.05)
        now = time.monotonic_ns()
        for op, token, error in completions:
            rec.done(op, token, now, error)
        inflight -= len(completions)
        done += len(completions)
        if now >= next_progress:
            next_progress = now + PROGRESS_EVERY_NS
            emit("progress", done=done, t_ns=now)
    _drain(driver, rec, inflight, drain_s)


def run_open(
    driver: Driver,
    stream: OpStream,
    rec: Recorder,
    rate: float,
    max_inflight: int,
    emit: Emitter,
    drain_s: float,
) -> None:
    window = rec.window
    end = window.end_ns
    interval = max(1, int(1e9 / rate))
    next_send = window.t0_ns
    inflight = 0
    done = 0
    next_progress = time.monotonic_ns() + PROGRESS_EVERY_NS
    now = time.monotonic_ns()
    while now < end:
        sent = 0
        while next_send <= now and next_send < end and inflight < max_inflight:
            op, key, value = stream.next()
            rec.sent(next_send)
            driver.submit(op, key, value, next_send)  # the token is the *scheduled* time
            next_send += interval
            inflight += 1
            sent += 1
        if sent:
            driver.flush()
        wait = (
            max(0.0, (next_send - time.monotonic_ns()) / 1e9) if inflight < max_inflight else 0.05
        )
        completions = driver.poll(min(wait, 0.05))
        now = time.monotonic_ns()
        for op, token, error in completions:
            rec.done(op, token, now, error)
        inflight -= len(completions)
        done += len(completions)
        if now >= next_progress:
            next_progress = now + PROGRESS_EVERY_NS
            emit("progress", done=done, t_ns=now)
    # Scheduled sends that never left because max_inflight was reached are charged as such.
    while next_send < end:
        rec.sent(next_send)
        rec.done(0, next_send, end, "not_sent")
        next_send += interval
    _drain(driver, rec, inflight, drain_s)


def run_sync(
    driver: Driver, stream: OpStream, rec: Recorder, emit: Emitter, timeout: float
) -> None:
    end = rec.window.end_ns
    done = 0
    next_progress = time.monotonic_ns() + PROGRESS_EVERY_NS
    now = time.monotonic_ns()
    while now < end:
        op, key, value = stream.next()
        rec.sent(now)
        error = driver.call(op, key, value, timeout)
        after = time.monotonic_ns()
        rec.done(op, now, after, error)
        now = after
        done += 1
        if now >= next_progress:
            next_progress = now + PROGRESS_EVERY_NS
            emit("progress", done=done, t_ns=now)


def _drain(driver: Driver, rec: Recorder, inflight: int, drain_s: float) -> None:
    """Collect the answers of commands sent before the end (their latency counts)."""
    deadline = time.monotonic() + drain_s
    while inflight > 0 and time.monotonic() < deadline:
        completions = driver.poll(0.05)
        now = time.monotonic_ns()
        for op, token, error in completions:
            rec.done(op, token, now, error)
        inflight -= len(completions)
    rec.unfinished = inflight


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.stdin.readline())
    emit = Emitter(sys.stdout)
    driver = make_driver(spec)
    try:
        driver.connect(float(spec.get("connect_timeout_s", 30.0)))
        emit("ready", pid=os.getpid())
        line = sys.stdin.readline()
        if not line:
            return 1
        window = Window.from_json(json.loads(line)["window"])
        workload = Workload.from_json(spec["workload"])
        stream = OpStream(workload, seed=int(spec.get("client_index", 0)) + 2)
        rec = Recorder(window, int(spec.get("bucket_ns", 100_000_000)))
        # Sleep until t0 so every generator starts together.
        delay = (window.t0_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        mode = spec.get("mode", "closed")
        drain_s = float(spec.get("drain_s", 5.0))
        if mode == "closed":
            run_closed(driver, stream, rec, int(spec["concurrency"]), emit, drain_s)
        elif mode == "open":
            run_open(
                driver,
                stream,
                rec,
                float(spec["rate"]),
                int(spec.get("max_inflight", 10_000)),
                emit,
                drain_s,
            )
        elif mode == "sync":
            run_sync(driver, stream, rec, emit, float(spec.get("request_timeout_s", 10.0)))
        else:
            raise ValueError(f"unknown mode {mode!r}")
        result = rec.result()
        result["client_stats"] = driver.stats()
        emit("result", result=result, pid=os.getpid())
        return 0
    finally:
        driver.close()


if __name__ == "__main__":
    sys.exit(main())
