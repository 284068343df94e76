"""Micro-benchmark of the waraft.otp hot path: cast, send-by-name, call, vs pykka tell/ask.

Run: ``.venv/bin/python -m benchmarks.otp_bench [N]``. Prints microseconds per message:
"sender" is the cost paid by the casting thread, "end-to-end" includes the receiver handling
every message (the throughput bound of one sender -> one actor stream).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pykka

from waraft import otp


class Counter(otp.Process):
    def init(self) -> None:
        self.count = 0

    def handle_cast(self, msg: Any) -> None:
        self.count += 1

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "count":
            return self.count
        return request


class PykkaCounter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if message == "count":
            return self.count
        self.count += 1
        return message


def _casts(n: int, target: otp.Target) -> tuple[float, float]:
    t0 = time.perf_counter()
    for i in range(n):
        otp.cast(target, i)
    t1 = time.perf_counter()
    assert otp.call(target, "count", timeout=60) == n
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6


def _calls(n: int, pid: otp.Pid) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        otp.call(pid, i)
    return (time.perf_counter() - t0) / n * 1e6


def _pykka(n: int) -> tuple[float, float, float]:
    ref = PykkaCounter.start()
    try:
        t0 = time.perf_counter()
        for i in range(n):
            ref.tell(i)
        t1 = time.perf_counter()
        assert ref.ask("count", timeout=60) == n
        t2 = time.perf_counter()
        m = max(1, n // 10)
        t3 = time.perf_counter()
        for i in range(m):
            ref.ask(i)
        t4 = time.perf_counter()
    finally:
        ref.stop()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6, (t4 - t3) / m * 1e6


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else 200_000
    try:
        pid = Counter.start(name="bench_counter")
        send_us, e2e_us = _casts(n, pid)
        print(f"cast to Pid      : sender {send_us:6.2f} us/msg, end-to-end {e2e_us:6.2f} us/msg")
        otp.stop(pid)
        pid = Counter.start(name="bench_counter")
        send_us, e2e_us = _casts(n, "bench_counter")
        print(f"cast to name     : sender {send_us:6.2f} us/msg, end-to-end {e2e_us:6.2f} us/msg")
        call_us = _calls(max(1, n // 10), pid)
        print(f"call round trip  : {call_us:6.2f} us/call")
        tell_us, tell_e2e, ask_us = _pykka(n)
        print(f"pykka tell       : sender {tell_us:6.2f} us/msg, end-to-end {tell_e2e:6.2f} us/msg")
        print(f"pykka ask        : {ask_us:6.2f} us/call")
    finally:
        otp.node.stop_all()


if __name__ == "__main__":
    main(sys.argv)
