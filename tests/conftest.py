"""Shared pytest fixtures for the whole suite.

* Every test ends with all ``waraft.otp`` nodes stopped (if the test used the runtime) and the
  process-wide link filter / remote router / remote signals removed, so no actor outlives its test.
* Every test ends with the root logger's handlers and level as they were: a test that runs a
  CLI command in-process (``setup_logging`` reconfigures the root logger onto the test's
  captured stderr) must not leave later tests' threads logging to a closed stream.
* ``otp_node``: a fresh :class:`waraft.otp.node.Node`, current for the test's thread (actors
  started from the test inherit it); stopped afterwards.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from waraft.otp.node import Node

_node_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _stop_otp_nodes() -> Iterator[None]:
    yield
    node_mod = sys.modules.get("waraft.otp.node")
    if node_mod is not None:
        node_mod.set_link_filter(None)
        node_mod.set_remote_router(None)
        node_mod.set_remote_signals(None)
        node_mod.stop_all(timeout=5.0)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        # Only plain stream handlers a test added (basicConfig's); pytest's own capture
        # handlers come and go with each test phase and are left to pytest.
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def otp_node() -> Iterator[Node]:
    from waraft.otp.node import Node

    node = Node(f"test{next(_node_ids)}@127.0.0.1")
    with node.activate():
        yield node
    node.stop()
