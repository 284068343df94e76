"""Fixtures for tests against real node processes.

The test process is a node too (``pytest@127.0.0.1:<ephemeral>``, started once per module) so
that it can reach the cluster. The suite-wide autouse fixture that stops every otp node and the
remote router after each test is replaced here by a no-op: the module's distribution node must
survive from one test to the next. It is stopped when the module ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multiprocess.harness import DOWN, PING, Cluster


@pytest.fixture(autouse=True)
def _stop_otp_nodes() -> Iterator[None]:
    yield


@pytest.fixture(scope="module")
def dist_node() -> Iterator[str]:
    """This process as a distribution node for the module."""
    from waraft import distribution as dist
    from waraft import otp

    node_id = dist.start(
        "pytest@127.0.0.1:0", ping_interval=PING, down_after=DOWN, connect_timeout=DOWN
    )
    try:
        yield node_id
    finally:
        dist.stop()
        otp.node.stop_all(timeout=5.0)


def make_cluster(
    root: Path, size: int = 3, partitions: tuple[int, ...] = (1, 2, 3, 4), **settings: object
) -> Iterator[Cluster]:
    """Start and bootstrap a cluster; kill every node by pid afterwards, whatever happened."""
    cluster = Cluster(root, size, partitions=partitions, settings=dict(settings))
    try:
        cluster.start()
        cluster.bootstrap()
        yield cluster
    finally:
        cluster.kill_all()
