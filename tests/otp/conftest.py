"""waraft.otp tests: every test runs on both process types and must leave no actor thread
(nor scheduler thread) running."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from waraft import otp
from waraft.otp import node


@pytest.fixture(autouse=True, params=[otp.THREAD, otp.SCHEDULED])
def process_type(request: pytest.FixtureRequest) -> Iterator[str]:
    """The node-wide default process type of the test (classes that do not choose one)."""
    before = set(threading.enumerate())
    kind: str = request.param
    otp.set_default_process_type(kind)
    try:
        yield kind
    finally:
        otp.set_default_process_type(None)
        node.set_link_filter(None)
        node.set_remote_router(None)
        node.stop_all(timeout=5.0)
    deadline = time.monotonic() + 5.0
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith("otp:") and t.name != "otp:timer"
    ]
    for thread in leaked:
        _join(thread, deadline)
    alive = [t.name for t in leaked if t.is_alive()]
    assert not alive, f"actor threads left running: {alive}"


def _join(thread: threading.Thread, deadline: float) -> None:
    """Join ``thread`` by ``deadline``. A thread is listed by ``threading.enumerate`` a moment
    before it counts as started, and joining it then raises (a node's stop thread, started
    as the test ended, did once): wait for the start first."""
    while True:
        try:
            thread.join(max(0.0, deadline - time.monotonic()))
            return
        except RuntimeError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.001)
