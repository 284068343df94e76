"""Child node processes and test doubles for the waraft.distribution tests."""

from __future__ import annotations

import itertools
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import msgpack
import zmq

from waraft import otp
from waraft.distribution import nodeid

CHILD = Path(__file__).with_name("child_node.py")
WAIT = 10.0  # the bound on every wait in these tests
PING = 0.1  # fast liveness so down/up transitions happen within a test's budget
DOWN = 0.6


def colliding_map(count: int, repeat: int = 17) -> bytes:
    """The msgpack encoding of a map of ``count`` keys sharing one hash (tuples of ``repeat``
    -1s and -2s: ``hash(-1) == hash(-2)``), written without building the dict, which is
    quadratic (about 25 s for 40,000 keys: most of what these tests used to take)."""
    keys = itertools.islice(itertools.product((-1, -2), repeat=repeat), count)
    zero = msgpack.packb(0)
    return b"\xdf" + count.to_bytes(4, "big") + b"".join(msgpack.packb(k) + zero for k in keys)


class Child:
    """A node in a child process running ``child_node.py``."""

    def __init__(self, proc: subprocess.Popen[str], node_id: str, log: Path) -> None:
        self.proc = proc
        self.node_id = node_id
        self.log = log

    @property
    def echo(self) -> tuple[str, str]:
        return ("echo", self.node_id)

    def call(self, *request: Any, timeout: float = WAIT) -> Any:
        return otp.call(self.echo, request, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def _read_ready(stdout: IO[str], proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + WAIT
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = stdout.readline()
                if line.startswith("READY "):
                    return line.split()[1]
                if not line and proc.poll() is not None:
                    break
    raise AssertionError("child node did not report READY in time")


def spawn_child(name: str, log: Path, *extra: str) -> Child:
    """Start ``child_node.py`` as ``name@127.0.0.1:<ephemeral>`` (or as ``name`` if it is a
    whole node id) and wait for READY."""
    node_id = name if "@" in name else f"{name}@127.0.0.1:0"
    cmd = [sys.executable, str(CHILD), node_id, "--ping", str(PING)]
    cmd += ["--down", str(DOWN), *extra]
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        node_id = _read_ready(proc.stdout, proc)
    except BaseException:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
        raise AssertionError(f"child failed to start:\n{log.read_text()}") from None
    return Child(proc, node_id, log)


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


def wait_until(pred: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Poll ``pred`` for states nothing signals (counters, peer states) within a deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.005)


def derived_link_ids(seen: bytes, count: int = 32) -> list[bytes]:
    """Routing ids an attacker who saw ``seen`` (one of a node's link ids, e.g. on a PONG)
    would try for that node's other links: ``seen`` itself, and should its tag end in digits
    (a counter), the same tag with 1..``count`` there instead. Link ids used to be
    ``<node>/<per-process value>.<counter>``; those guesses found every one of them."""
    node, _, tag = seen.decode().rpartition("/")
    tag, hash_, cluster = tag.partition("#")
    stem = re.sub(r"\d+$", "", tag)
    found = {seen}
    if stem != tag:
        found.update(f"{node}/{stem}{k}{hash_}{cluster}".encode() for k in range(1, count + 1))
    return sorted(found)


def connect_silently(
    ctx: zmq.Context[Any],
    node_id: str,
    ids: list[bytes],
    curve: tuple[bytes, bytes, bytes] | None = None,
) -> list[zmq.Socket[Any]]:
    """A DEALER to ``node_id`` under each of ``ids``, sending nothing, returned once every one
    has completed its handshake (from then on ``node_id``'s ROUTER has handed it the id).
    ``curve``: (public key, secret key, the node's public key) to connect with CURVE. The
    caller closes the sockets."""
    socks: list[zmq.Socket[Any]] = []
    monitors: list[zmq.Socket[Any]] = []
    try:
        for routing_id in ids:
            sock = ctx.socket(zmq.DEALER)
            socks.append(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
            if curve is not None:
                sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[0])
                sock.setsockopt(zmq.CURVE_SECRETKEY, curve[1])
                sock.setsockopt(zmq.CURVE_SERVERKEY, curve[2])
            monitors.append(sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
            sock.connect(nodeid.endpoint(node_id))
        for monitor in monitors:
            assert monitor.poll(int(WAIT * 1000)), f"a handshake with {node_id} did not complete"
    except BaseException:
        for sock in socks:
            sock.close(0)
        raise
    finally:
        for sock, monitor in zip(socks, monitors, strict=False):
            sock.disable_monitor()
            monitor.close(0)
    return socks
