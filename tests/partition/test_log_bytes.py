"""Log retention is bounded in bytes (issue 14): a single-replica partition written far past
``raft_max_retained_bytes`` keeps its in-memory (and WAL) log within the budget plus what is
still on its way to storage; the partitions of a node together keep about
``raft_node_max_retained_bytes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, ident, start_node, state, wait_until
from waraft import otp
from waraft.core.types import LogPos
from waraft.partition import acceptor, server

BUDGET = 200_000
SLACK = 150_000


def _write(node: otp.Node, start: int, count: int, value: str, partition: int = 1) -> None:
    handles = [otp.LocalReplyTo() for _ in range(count)]
    items = [
        (h, (i, ("write", "t", i, value)))
        for i, h in zip(range(start, start + count), handles, strict=True)
    ]
    acceptor.commit_batch(addr("acceptor", node, partition), items)
    assert [h.wait(10) for h in handles] == ["ok"] * count


@pytest.mark.parametrize("log_module", ["waraft.log.memory:MemoryLog", "waraft.log.wal:WalLog"])
def test_the_log_keeps_at_most_its_byte_budget(tmp_path: Path, log_module: str) -> None:
    settings: dict[str, Any] = {"raft_max_retained_bytes": BUDGET}
    node = start_node(tmp_path, "n1", [1], settings=settings, log_module=log_module)
    config = server.make_config([ident(node, 1)])
    assert server.bootstrap(addr("server", node, 1), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node, 1) == "leader")
    value = "v" * 1000
    for batch in range(10):  # ~1.2 MB of entries: six times the budget
        _write(node, batch * 100, 100, value)

    def held() -> int:
        status = otp.call(addr("log", node, 1), ("status",), 5.0)
        return int(status["bytes"])

    # Trims never pass what storage has applied, and a write batch lands between rotations:
    # the log may hold one batch (~120 kB here) beyond the budget, never the whole history.
    wait_until(lambda: held() <= BUDGET + SLACK)
    status = otp.call(addr("log", node, 1), ("status",), 5.0)
    assert status["first_index"] > 500  # old entries went, by bytes (entry rules keep 2M)
    assert acceptor.read(addr("acceptor", node), ("read", "t", 999)) == ("ok", value)


NODE_BUDGET = 150_000
PARTITIONS = 6
BATCH = 20  # entries per write: each partition may hold about one batch beyond its share


@pytest.mark.parametrize("log_module", ["waraft.log.memory:MemoryLog", "waraft.log.wal:WalLog"])
def test_the_partitions_of_a_node_share_one_byte_budget(tmp_path: Path, log_module: str) -> None:
    # Each partition's own bound stays at its 8 MiB default: only the node's budget binds.
    settings: dict[str, Any] = {"raft_node_max_retained_bytes": NODE_BUDGET}
    parts = list(range(1, PARTITIONS + 1))
    node = start_node(tmp_path, "n1", parts, settings=settings, log_module=log_module)
    for p in parts:
        config = server.make_config([ident(node, p)])
        assert server.bootstrap(addr("server", node, p), LogPos(1, 1), config) == "ok"
    for p in parts:
        wait_until(lambda p=p: state(node, p) == "leader")  # type: ignore[misc]
    value = "v" * 1000
    for round_ in range(12):  # ~2 MB of entries over the node: 14 times its budget
        for p in parts:
            _write(node, round_ * BATCH, BATCH, value, p)

    def statuses() -> list[dict[str, Any]]:
        return [otp.call(addr("log", node, p), ("status",), 5.0) for p in parts]

    def held() -> int:
        return sum(int(s["bytes"]) for s in statuses())

    wait_until(lambda: held() <= NODE_BUDGET + PARTITIONS * BATCH * 1500)
    rows = statuses()
    assert all(r["node_retained_budget"] == NODE_BUDGET for r in rows)
    assert rows[0]["node_retained_bytes"] == held()  # the pool counts exactly the node's logs
    assert all(r["first_index"] > 100 for r in rows)  # every partition trimmed, not just one
    for p in parts:
        got = acceptor.read(addr("acceptor", node, p), ("read", "t", 12 * BATCH - 1))
        assert got == ("ok", value)
