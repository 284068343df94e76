"""Users test their own state machine with the simulator: a replicated counter, its client
workload and its sequential model for the linearizability checker."""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

from tests.sim.helpers import settle_clients
from waraft.sim import (
    ClientConfig,
    NetConfig,
    Operation,
    Simulation,
    StateMachine,
    Status,
    check_history,
)


class Counter(StateMachine):
    """``("add", n)`` adds and returns the new total; the read ``"get"`` returns it."""

    def __init__(self) -> None:
        self.total = 0

    def apply(self, command: Any, index: int, term: int) -> Any:
        verb, amount = command
        assert verb == "add"
        self.total += amount
        return ("ok", self.total)

    def read(self, command: Any) -> Any:
        assert command == "get"
        return ("ok", self.total)

    def snapshot(self) -> Any:
        return self.total

    def restore(self, data: Any) -> None:
        self.total = data or 0


class CounterWorkload:
    def next_op(self, rng: random.Random, client: int, seq: int) -> tuple[str, Any]:
        if rng.random() < 0.6:
            return "commit", ("add", rng.randint(1, 5))
        return "read", "get"


class CounterModel:
    def partition(self, op: Operation) -> Hashable | None:
        return "counter"

    def init(self) -> Hashable:
        return 0

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        assert isinstance(state, int)
        if op.kind == "read":
            return op.result == ("ok", state), state
        new = state + op.command[1]
        return (op.status is not Status.OK or op.result == ("ok", new)), new


def test_a_user_state_machine_replicates_and_stays_linearizable() -> None:
    sim = Simulation(
        nodes=3,
        seed=21,
        machine=Counter,
        net=NetConfig(max_delay_ms=10, loss=0.02),
        client=ClientConfig(attempt_timeout_ms=3000),
    )
    sim.bootstrap()
    sim.await_leader()
    sim.add_clients(2, CounterWorkload())
    for victim in ("n1", "n2", "n3"):
        sim.run_for(1500)
        sim.crash(victim)
        sim.run_for(800)
        sim.restart(victim)
    settle_clients(sim)
    result = check_history(sim.history.ops, CounterModel(), budget=500_000)
    assert result.ok is True, result.explain()
    sim.run_until(lambda: len({sim.nodes[n].storage.position for n in sim.node_ids}) == 1, 5000)
    totals = {sim.nodes[n].storage.machine.total for n in sim.node_ids}  # type: ignore[attr-defined]
    assert len(totals) == 1 and totals.pop() > 0
    assert sim.history.count(Status.OK, "commit") > 20
