"""Shared pytest fixtures for the whole suite.

* Every test ends with all ``waraft.otp`` nodes stopped (if the test used the runtime) and the
  process-wide link filter / remote router / remote signals removed, so no actor outlives its test.
* ``otp_node``: a fresh :class:`waraft.otp.node.Node`, current for the test's thread (actors
  started from the test inherit it); stopped afterwards.
"""

from __future__ import annotations

import itertools
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


@pytest.fixture
def otp_node() -> Iterator[Node]:
    from waraft.otp.node import Node

    node = Node(f"test{next(_node_ids)}@127.0.0.1")
    with node.activate():
        yield node
    node.stop()
