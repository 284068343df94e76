"""Fixtures for the waraft.dist tests: this process as a node, child node processes.

Everything listens on 127.0.0.1 with ephemeral ports. Every child process is killed by pid when
its fixture ends, and every test ends with distribution stopped and no dist thread left.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from waraft import dist, otp

CHILD = Path(__file__).with_name("child_node.py")
WAIT = 10.0  # the bound on every wait in these tests
PING = 0.1  # fast liveness so down/up transitions happen within a test's budget
DOWN = 0.6


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
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
        raise AssertionError(f"child failed to start:\n{log.read_text()}") from None
    return Child(proc, node_id, log)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Factory of child nodes; all of them are killed (by pid) at the end of the test."""
    children: list[Child] = []

    def _spawn(name: str = "child", *extra: str) -> Child:
        log = tmp_path / f"{name.partition('@')[0]}-{len(children)}.log"
        child = spawn_child(name, log, *extra)
        children.append(child)
        return child

    yield _spawn
    for child in children:
        child.kill()


@pytest.fixture(scope="module")
def shared_child(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    """One child node for a whole module (its tests must leave it usable)."""
    child = spawn_child("shared", tmp_path_factory.mktemp("dist") / "shared.log")
    yield child
    child.kill()


def _dist_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dist:")]


@pytest.fixture
def node() -> Iterator[str]:
    """This process as node ``parent@127.0.0.1:<ephemeral>`` with fast liveness."""
    node_id = dist.start(
        "parent@127.0.0.1:0", ping_interval=PING, down_after=DOWN, connect_timeout=DOWN
    )
    try:
        yield node_id
    finally:
        dist.stop()
        assert not [t for t in _dist_threads() if t.is_alive() and t.name != "dist:term"]
