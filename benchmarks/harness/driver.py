"""The interface a load generator drives, one implementation per system under test.

A driver is used from one thread. ``submit`` queues a command (tagged with an opaque integer
token, the harness uses the intended send time); ``flush`` hands what was queued to the system
(one frame per destination when the driver coalesces); ``poll`` waits up to ``timeout`` and
returns the completions ``(op, token, error)`` that arrived, ``error`` None on success or an
error kind. ``call`` is the synchronous form for the one-client latency scenario.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Driver(ABC):
    #: True when several submitted commands may travel in one frame.
    coalesces: bool = True

    @abstractmethod
    def connect(self, timeout: float) -> None:
        """Return when a command can be served (a leader is known), or raise TimeoutError."""

    @abstractmethod
    def submit(self, op: int, key: str, value: bytes | None, token: int) -> None: ...

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Send what ``submit`` queued (drivers that send at once need nothing here)."""

    @abstractmethod
    def poll(self, timeout: float) -> list[tuple[int, int, str | None]]: ...

    @abstractmethod
    def call(self, op: int, key: str, value: bytes | None, timeout: float) -> str | None:
        """One command, synchronously; returns None on success or the error kind."""

    def stats(self) -> dict[str, int]:
        """Counters of the client library (retries, redirects, ...) for the results."""
        return {}

    @abstractmethod
    def close(self) -> None: ...
