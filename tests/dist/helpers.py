"""Test doubles for the waraft.dist tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from waraft import otp

WAIT = 10.0


class Inbox:
    """A thread-safe list of received messages that tests can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[Any]], bool], timeout: float = WAIT) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: pred(self.items), timeout)
            assert ok, f"condition not met; got {self.items[:20]!r} ({len(self.items)} items)"
            return list(self.items)

    def wait_len(self, n: int, timeout: float = WAIT) -> list[Any]:
        return self.wait_for(lambda items: len(items) >= n, timeout)


class Sink(otp.Process):
    """Records ``("cast", msg)`` and ``("info", msg)`` in the inbox given to ``init``;
    answers calls with ``("sink", request)``."""

    def init(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def handle_cast(self, msg: Any) -> None:
        self.inbox.add(("cast", msg))

    def handle_info(self, msg: Any) -> None:
        self.inbox.add(("info", msg))

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return ("sink", request)


def start_sink(name: str = "sink") -> Inbox:
    """Start a :class:`Sink` registered as ``name`` on the current node; return its inbox."""
    inbox = Inbox()
    otp.start(Sink, inbox, name=name)
    return inbox
