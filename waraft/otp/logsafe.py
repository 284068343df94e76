"""Logging what others sent: at most one line per interval, and a repr of bounded size.

Whatever a peer can cause (a refused handshake, a frame a handler chokes on, a socket error
that repeats every poll, a message a process does not expect) must not cost a log line each:
anyone who reaches the port could fill the disk, and a fault repeating at loop speed would
drown everything else. The events are still counted by their own counters; the line says how
many it stands for (:class:`LogThrottle`), and shows the value it is about within a bounded
size (:func:`bounded_repr`). They live in the runtime, the lowest layer, so that processes
use them as well as everything above (``waraft.core`` has its own ``short_repr`` for RPCs:
the two layers import nothing from each other).
"""

from __future__ import annotations

import reprlib
import time
from typing import Any, Final

__all__ = ["REPR_CHARS", "LogThrottle", "bounded_repr"]

REPR_CHARS: Final = 200
"""Longest text :func:`bounded_repr` returns."""
_DEPTH: Final = 3
_ITEMS: Final = 6
_SCALAR_CHARS: Final = 80


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


class _Bounded(reprlib.Repr):
    """``reprlib``'s limits, plus bytes cut before their repr is made (``reprlib`` makes the
    whole repr of a type it has no method for, then cuts it: 16 MB of text for 4 MiB)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = _DEPTH
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = _ITEMS
        self.maxset = self.maxfrozenset = self.maxdeque = _ITEMS
        self.maxstring = self.maxlong = self.maxother = _SCALAR_CHARS

    def repr_bytes(self, x: bytes, level: int) -> str:
        return self._cut(bytes(x[: self.maxstring]), len(x))

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return self._cut(bytearray(x[: self.maxstring]), len(x))

    def _cut(self, head: bytes | bytearray, length: int) -> str:
        text = repr(head)
        if len(text) > self.maxstring:  # up to 4 characters a byte
            text = text[: self.maxstring - 3] + "..."
        return text if length <= len(head) else f"{text} ({length} bytes)"


_REPR: Final = _Bounded()


def bounded_repr(value: Any) -> str:
    """A repr of ``value`` for a log line: at most ``REPR_CHARS`` characters, containers
    shown 3 levels deep and 6 items wide, long strings and bytes cut before their repr is
    made; never raises (a failing ``__repr__`` gives ``<type name>``)."""
    try:
        text = _REPR.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= REPR_CHARS else text[: REPR_CHARS - 3] + "..."
