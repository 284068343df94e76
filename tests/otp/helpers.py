"""Test doubles for the waraft.otp tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from waraft import otp

WAIT = 5.0  # seconds: the bound on every wait in these tests


class Events:
    """A thread-safe event log that tests can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Any] = []

    def add(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def list(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def wait_for(self, pred: Callable[[list[Any]], bool], timeout: float = WAIT) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: pred(self._items), timeout)
            assert ok, f"condition not met; events: {self._items}"
            return list(self._items)

    def wait_len(self, n: int, timeout: float = WAIT) -> list[Any]:
        return self.wait_for(lambda items: len(items) >= n, timeout)


class Barrier:
    """``n`` parties meet (``wait`` returns True) or time out (False); works in threads and
    scheduled processes alike (the latter yield while they wait)."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._left = n
        self._met = otp.Event()

    def wait(self, timeout: float) -> bool:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self._met.set()
        return self._met.wait(timeout)


def wait_until(pred: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``pred`` (for states nothing signals, e.g. a mailbox length) within a deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


class Worker(otp.Process):
    """A traceable worker: records ``("start", tag)`` and ``("stop", tag, reason)``.

    Calls: ``"ping"`` -> tag, ``"crash"`` raises, ``("block", event)`` waits on the event,
    ``("stop", reason)`` replies then stops. Casts: ``"crash"`` raises, ``("stop", reason)``.
    """

    trap_exit = True

    def init(self, events: Events, tag: Any, *extra: Any) -> None:
        self.events = events
        self.tag = tag
        self.extra = extra
        events.add(("start", tag) if not extra else ("start", tag, *extra))

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "ping":
            return self.tag
        if request == "extra":
            return self.extra
        if request == "crash":
            raise ValueError(f"{self.tag} crashed")
        if isinstance(request, tuple) and request[0] == "block":
            request[1].wait(WAIT)
            return "unblocked"
        if isinstance(request, tuple) and request[0] == "stop":
            self.stop_self(request[1])
            return "stopping"
        raise AssertionError(f"unexpected call {request!r}")

    def handle_cast(self, msg: Any) -> None:
        if msg == "crash":
            raise ValueError(f"{self.tag} crashed")
        if isinstance(msg, tuple) and msg[0] == "stop":
            self.stop_self(msg[1])
            return
        if isinstance(msg, tuple) and msg[0] == "block":
            msg[1].wait(WAIT)
            return
        raise AssertionError(f"unexpected cast {msg!r}")

    def handle_info(self, msg: Any) -> None:
        self.events.add(("info", self.tag, msg))

    def terminate(self, reason: Any) -> None:
        self.events.add(("stop", self.tag, reason))


class Plain(Worker):
    """A Worker that does not trap exits."""

    trap_exit = False


def worker_spec(events: Events, tag: Any, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": tag, "start": (Worker.start_link, (events, tag))}
    spec.update(extra)
    return spec


def starts(events: Events) -> list[Any]:
    return [e[1] for e in events.list() if e[0] == "start"]


def child_pid(sup: otp.Target, child_id: Any) -> otp.Pid:
    for cid, pid, _type, _mods in otp.supervisor.which_children(sup):
        if cid == child_id:
            assert isinstance(pid, otp.Pid), (child_id, pid)
            return pid
    raise AssertionError(f"no child {child_id!r}")


def crash(pid: otp.Pid) -> Any:
    """Crash ``pid`` with a cast and return its exit reason once it is dead."""
    otp.cast(pid, "crash")
    return otp.wait_exit(pid, WAIT)
