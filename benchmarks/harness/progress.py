"""A one-line progress bar on stderr, redrawn in place; silent when stderr is not a terminal
(CI logs and pipes get one plain line per phase instead)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 28


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._last_len = 0

    def note(self, text: str) -> None:
        """A permanent line (phase changes, results), shown with or without a terminal."""
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            self.stream.flush()

    def bar(self, label: str, fraction: float, detail: str) -> None:
        if not self.enabled:
            return
        fraction = min(1.0, max(0.0, fraction))
        filled = int(BAR_WIDTH * fraction)
        line = (
            f"{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}% {detail}"
        )
        with self._lock:
            pad = max(0, self._last_len - len(line))
            self.stream.write("\r" + line + " " * pad)
            self.stream.flush()
            self._last_len = len(line)

    def done(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        if self.enabled and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0


def track_window(
    progress: Progress,
    label: str,
    t0_ns: int,
    warmup_ns: int,
    duration_ns: int,
    completed: Callable[[], int],
    finished: Callable[[], bool],
    interval: float = 0.2,
) -> None:
    """Redraw the bar until ``finished()``: phase, elapsed time and the current ops/s."""
    total = warmup_ns + duration_ns
    last_done, last_t = completed(), time.monotonic_ns()
    rate = 0.0
    while not finished():
        time.sleep(interval)
        now = time.monotonic_ns()
        done = completed()
        if now > last_t:
            rate = 0.7 * rate + 0.3 * (done - last_done) * 1e9 / (now - last_t)
        last_done, last_t = done, now
        elapsed = now - t0_ns
        if elapsed < 0:
            phase = "starting"
        elif elapsed < warmup_ns:
            phase = f"warm-up {elapsed / 1e9:4.1f}/{warmup_ns / 1e9:.0f}s"
        elif elapsed < total:
            phase = f"measure {(elapsed - warmup_ns) / 1e9:4.1f}/{duration_ns / 1e9:.0f}s"
        else:
            phase = "draining"
        progress.bar(label, elapsed / total if total else 1.0, f"{phase} {rate:9.0f} ops/s")
    progress.done()
