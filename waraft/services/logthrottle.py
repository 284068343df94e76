"""At most one log line per interval for one kind of event.

Whatever a peer can cause (a refused handshake, a frame a handler chokes on, a socket error
that repeats every poll) must not cost a log line each: anyone who reaches the port could fill
the disk, and a fault repeating at loop speed would drown everything else. The events are
still counted by their own counters; the line says how many it stands for.
"""

from __future__ import annotations

import time

__all__ = ["LogThrottle"]


class LogThrottle:
    """Lets one line through per ``interval`` seconds and counts the events held back.

    Not locked: threads sharing one instance race only on the counters, which costs at most
    an extra line or a miscounted one, never an error.
    """

    __slots__ = ("_held", "_interval", "_next")

    def __init__(self, interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self._interval = interval
        self._next = 0.0
        self._held = 0

    def ready(self, now: float | None = None) -> int:
        """Record one event. Returns how many events a line written now stands for (this
        one and those held back since the last line), or 0 when no line may be written
        yet."""
        self._held += 1
        if now is None:
            now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self._interval
        held, self._held = self._held, 0
        return held
