"""Fixtures for the waraft.distribution tests: this process as a node, child node processes.

Everything listens on 127.0.0.1 with ephemeral ports. Every child process is killed by pid when
its fixture ends, and every test ends with distribution stopped and no dist thread left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from waraft import distribution as dist
from waraft.distribution import policy

from .helpers import DOWN, PING, Child, spawn_child


@pytest.fixture(autouse=True, scope="module")
def _open_names() -> Iterator[None]:
    """These tests exercise the transport of arbitrary messages between test processes, not
    the allow-list (tests/security does): their names accept every message."""
    policy.open_unlisted_names(True)
    yield
    policy.open_unlisted_names(False)


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


@pytest.fixture
def raw() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context for hand-made sockets, destroyed after the test."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """A ZeroMQ context for hand-made peers (attackers, floods), destroyed at the end."""
    context: zmq.Context[Any] = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)
