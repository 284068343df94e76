"""Fixtures for the durability tests (real ``waraft node`` processes with the durable
providers, killed with SIGKILL, wiped, corrupted).

As in ``tests.multiprocess``, the test process is a distribution node for the whole module
(``dist_node``), so the suite-wide fixture that stops every otp node after each test is replaced
by a no-op here. Every node process is killed by pid in the cluster fixtures' finalizers.

Tests marked ``slow`` (longer soak versions of the fast defaults) run only with
``WARAFT_SLOW=1`` in the environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.multiprocess.conftest import dist_node

__all__ = ["dist_node"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long soak run, only with WARAFT_SLOW=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("WARAFT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow soak run: set WARAFT_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords and item.path.is_relative_to(os.path.dirname(__file__)):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _stop_otp_nodes() -> Iterator[None]:
    yield
