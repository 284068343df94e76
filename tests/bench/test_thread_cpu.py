"""benchmarks.thread_cpu: per-thread CPU per op from /proc snapshots."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

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
    assert "all nodes: 5000.0 us" in text
    assert "otp:io" in text and "1000.0        0.0" in text


@contextlib.contextmanager
def _named_thread(name: str, sleeps: int = 0) -> Iterator[None]:
    """A thread that names itself ``name`` for the OS, sleeps ``sleeps`` times (each timed
    wait that sleeps is a voluntary context switch), then waits until the block ends."""
    ready, done = threading.Event(), threading.Event()

    def body() -> None:
        from waraft import otp

        otp.set_os_name(name)
        for _ in range(sleeps):
            done.wait(0.001)
        ready.set()
        done.wait(5.0)

    thread = threading.Thread(target=body)
    thread.start()
    try:
        assert ready.wait(5.0)
        yield
    finally:
        done.set()
        thread.join()


def test_the_sampler_reads_this_process_threads_with_their_os_names() -> None:
    with _named_thread("probe:cpu"):
        names = {name for _, _, name in thread_cpu._threads(os.getpid()).values()}
        assert "probe:cpu" in names


def test_the_steady_window_is_placed_from_the_window_start_the_harness_recorded() -> None:
    # Clients connected for 20 s after the load generator started: the recorded start wins.
    window = {"warmup_s": 3.0, "duration_s": 10.0, "start_monotonic_s": 123.0}
    assert thread_cpu.steady_window(window, load_started=100.0) == (124.0, 132.0)
    # Results without it (older harness): counted from the load generator's start.
    older = {"warmup_s": 3.0, "duration_s": 10.0}
    assert thread_cpu.steady_window(older, load_started=100.0) == (104.0, 112.0)


def test_context_switches_per_op_are_summed_by_thread_name_and_reported() -> None:
    snaps = [
        {"t": 1.0, "switches": {100: {1: (10, 1, "otp:io"), 2: (5, 0, "otp:sched:0")}}},
        {
            "t": 3.0,
            "switches": {100: {1: (1010, 201, "otp:io"), 2: (2005, 0, "otp:sched:0")}},
        },
    ]
    table = thread_cpu.switches_per_op(snaps, 0.5, 3.5, 500.0)  # 1000 ops
    assert table[100]["otp:io"] == (1.0, 0.2)
    assert table[100]["otp:sched:0"] == (2.0, 0.0)
    text = thread_cpu.report_switches(table, {100: {"otp:io": (1.0, 0.0)}})
    assert "all nodes: 3.00 voluntary, 0.20 involuntary" in text


def test_the_sampler_reads_this_process_threads_context_switches() -> None:
    with _named_thread("probe:sw", sleeps=20):
        rows = {name: (v, n) for v, n, name in thread_cpu._switches(os.getpid()).values()}
        assert rows["probe:sw"][0] >= 20
