"""Sessions in the simulator: clients retry ambiguous appends through sessions under crashes,
partitions and loss, and every appended value lands exactly once (``check_list_append``); the
checker itself flags double applies, lost and phantom appends and non-prefix reads."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sim.helpers import settle_clients
from waraft.sim import (
    AppendWorkload,
    ClientConfig,
    KVModel,
    NetConfig,
    Operation,
    Simulation,
    Status,
    check_history,
    check_list_append,
)

KEYS = ("l0", "l1")


def _final(sim: Simulation, node: str) -> dict[str, Any]:
    data = sim.nodes[node].storage.machine.data  # type: ignore[attr-defined]
    return {key: data.get(key, ()) for key in KEYS}


def _run(seed: int, sessions: bool) -> Simulation:
    sim = Simulation(
        nodes=3,
        seed=seed,
        net=NetConfig(max_delay_ms=20, loss=0.05),
        client=ClientConfig(attempt_timeout_ms=300, sessions=sessions, max_op_ms=20_000),
    )
    sim.bootstrap()
    sim.await_leader()
    sim.add_clients(4, AppendWorkload())
    for round_ in range(4):
        sim.run_for(700)
        leader = sim.leader()
        if round_ % 2 == 0 and leader is not None:
            sim.crash(leader)
            sim.run_for(600)
            sim.restart(leader)
        else:
            sim.isolate(sim.node_ids[round_ % 3])
            sim.run_for(600)
            sim.heal()
    settle_clients(sim, 60_000)
    sim.run_until(lambda: len({sim.nodes[n].storage.position for n in sim.node_ids}) == 1, 10_000)
    return sim


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_retried_appends_apply_exactly_once_under_faults(seed: int) -> None:
    sim = _run(seed, sessions=True)
    assert sim.stats["session_retries"] > 0, "no ambiguous append was retried: a weak test"
    finals = [_final(sim, n) for n in sim.node_ids]
    assert all(f == finals[0] for f in finals)
    assert check_list_append(sim.history.ops, finals[0]) == []
    assert sim.history.count(Status.OK, "commit") > 20
    result = check_history(sim.history.ops, KVModel(), budget=300_000)
    assert result.ok is not False, result.explain()


def _op(i: int, kind: str, command: Any, status: Status, result: Any = None) -> Operation:
    return Operation(
        i, 1, kind, command, i * 10, status=status, complete_ms=i * 10 + 5, result=result
    )


def test_the_list_append_checker_flags_every_kind_of_anomaly() -> None:
    ok = Status.OK
    ops = [
        _op(0, "commit", ("append", "t", "k", "a"), ok, "ok"),
        _op(1, "commit", ("append", "t", "k", "b"), ok, "ok"),
        _op(2, "commit", ("append", "t", "k", "c"), Status.FAIL, ("error", "x")),
        _op(3, "commit", ("append", "t", "k", "d"), Status.UNKNOWN, ("error", "timeout")),
        _op(4, "read", ("read", "t", "k"), ok, ("ok", ("a",))),
    ]
    assert check_list_append(ops, {"k": ("a", "b")}) == []
    assert check_list_append(ops, {"k": ("a", "b", "d")}) == []  # unknown: may be present
    found = check_list_append(ops, {"k": ("a", "b", "a")})
    assert any(v.startswith("duplicate") for v in found)
    assert any(v.startswith("lost") for v in check_list_append(ops, {"k": ("a",)}))
    assert any(v.startswith("failed") for v in check_list_append(ops, {"k": ("a", "b", "c")}))
    assert any(v.startswith("phantom") for v in check_list_append(ops, {"k": ("a", "b", "z")}))
    assert any(v.startswith("read not") for v in check_list_append(ops, {"k": ("b", "a")}))
