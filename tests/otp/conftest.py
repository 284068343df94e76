"""waraft.otp tests: every test must leave no actor thread running."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from waraft.otp import node


@pytest.fixture(autouse=True)
def _no_leaked_actor_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
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
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in leaked if t.is_alive()]
    assert not alive, f"actor threads left running: {alive}"
