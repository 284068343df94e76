"""benchmarks.thread_cpu: per-thread CPU per op from /proc snapshots."""

from __future__ import annotations

import os
import threading

from benchmarks import thread_cpu

T = thread_cpu.TICK


def _snap(t: float, ticks: dict[int, tuple[int, int, str]]) -> dict[str, object]:
    return {"t": t, "nodes": {100: ticks}}


def test_cpu_per_op_uses_the_snapshots_inside_the_window_and_sums_threads_by_name() -> None:
    snaps = [
        _snap(0.0, {1: (0, 0, "dist:recv"), 2: (0, 0, "otp:sched:0")}),
        # window: t=1 .. t=3 (2 s at 500 ops/s = 1000 ops)
        _snap(1.0, {1: (T, 0, "dist:recv"), 2: (T, T, "otp:sched:0"), 3: (0, 0, "otp:io")}),
        _snap(
            3.0,
            {
                1: (2 * T, 0, "dist:recv"),
                2: (3 * T, 2 * T, "otp:sched:0"),
                3: (T // 2, 0, "otp:io"),
                4: (T // 2, 0, "otp:io"),
            },
        ),
        _snap(9.0, {1: (50 * T, 0, "dist:recv"), 2: (50 * T, 0, "otp:sched:0")}),
    ]
    table = thread_cpu.per_op(snaps, 0.5, 3.5, 500.0)[100]
    assert table["dist:recv"] == (1000.0, 0.0)  # 1 s of CPU over 1000 ops
    assert table["otp:sched:0"] == (2000.0, 1000.0)
    assert table["otp:io"] == (1000.0, 0.0)  # a thread born inside counts from zero, summed
    text = thread_cpu.report({100: table})
    assert "all nodes: 5000 us" in text


def test_the_sampler_reads_this_process_threads_with_their_os_names() -> None:
    ready, done = threading.Event(), threading.Event()

    def body() -> None:
        from waraft import otp

        otp.set_os_name("probe:cpu")
        ready.set()
        done.wait(5.0)

    thread = threading.Thread(target=body)
    thread.start()
    try:
        assert ready.wait(5.0)
        names = {name for _, _, name in thread_cpu._threads(os.getpid()).values()}
        assert "probe:cpu" in names
    finally:
        done.set()
        thread.join()


def test_the_steady_window_is_placed_from_the_window_start_the_harness_recorded() -> None:
    # Clients connected for 20 s after the load generator started: the recorded start wins.
    window = {"warmup_s": 3.0, "duration_s": 10.0, "start_monotonic_s": 123.0}
    assert thread_cpu.steady_window(window, load_started=100.0) == (124.0, 132.0)
    # Results without it (older harness): counted from the load generator's start.
    older = {"warmup_s": 3.0, "duration_s": 10.0}
    assert thread_cpu.steady_window(older, load_started=100.0) == (104.0, 112.0)
