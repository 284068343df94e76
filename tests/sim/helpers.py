"""Helpers shared by the simulator scenario tests (6.824-style ``one()``, leader checks)."""

from __future__ import annotations

from typing import Any

from waraft.core.types import State
from waraft.sim import Simulation
from waraft.sim.simulation import Call

TABLE = "t"


def write(value: Any, key: str = "x") -> tuple[str, str, str, Any]:
    return ("write", TABLE, key, value)


def connected_nodes(sim: Simulation) -> list[str]:
    """Nodes that are up and can talk both ways with at least one other up node, or alone."""
    return [n for n in sim.node_ids if sim.nodes[n].up]


def check_one_leader(sim: Simulation, among: list[str], timeout_ms: int = 10_000) -> str:
    """6.824's ``checkOneLeader``: after ~500 ms (as 6.824 sleeps first, so that a rejoined
    node hears about newer terms), run until exactly one node of ``among`` leads the newest
    term seen among them; returns it."""
    sim.run_for(500)

    def one() -> bool:
        return _leader_of(sim, among) is not None

    assert sim.run_until(one, timeout_ms), f"no single leader among {among}: {sim.describe()}"
    leader = _leader_of(sim, among)
    assert leader is not None
    return leader


def _leader_of(sim: Simulation, among: list[str]) -> str | None:
    leaders = [n for n in among if sim.nodes[n].up and sim.nodes[n].core.state is State.LEADER]
    if not leaders:
        return None
    top = max(sim.term(n) for n in leaders)
    newest = [n for n in leaders if sim.term(n) == top]
    if len(newest) != 1:
        return None
    # a leader that a newer term in its group already deposed does not count
    if any(sim.term(n) > top for n in among if sim.nodes[n].up and _can_talk(sim, n, newest[0])):
        return None
    return newest[0]


def _can_talk(sim: Simulation, a: str, b: str) -> bool:
    return sim.connected(a, b)


def check_no_leader(sim: Simulation, among: list[str]) -> None:
    leaders = [n for n in among if sim.state(n) is State.LEADER]
    assert not leaders, f"unexpected leader(s) {leaders}: {sim.describe()}"


def check_terms_agree(sim: Simulation, among: list[str]) -> int:
    terms = {sim.term(n) for n in among}
    assert len(terms) == 1, f"servers disagree on term: {sim.describe()}"
    return terms.pop()


def index_of(sim: Simulation, command: Any) -> int | None:
    """The log index where ``command`` was committed (first occurrence), if it was."""
    for index in sorted(sim.invariants.committed):
        if sim.invariants.committed[index][0].command == command:
            return index
    return None


def n_committed(sim: Simulation, index: int) -> tuple[int, Any]:
    """6.824's ``nCommitted``: how many nodes applied ``index``, and the command there."""
    entry = sim.invariants.applied.get(index)
    count = sum(1 for node in sim.nodes.values() if node.storage.position.index >= index)
    return count, None if entry is None else entry.command


def one(
    sim: Simulation,
    command: Any,
    expected: int,
    retry: bool = True,
    timeout_ms: int = 10_000,
) -> int:
    """6.824's ``one()``: get ``command`` committed and applied on at least ``expected`` nodes
    (submitting it again to whoever leads now if ``retry``); returns its index."""
    deadline = sim.now + timeout_ms
    submitted = False
    while sim.now < deadline:
        leader = sim.leader()
        if leader is not None and (retry or not submitted):
            call: Call = sim.submit(leader, command)
            submitted = True
            sim.run_until(lambda c=call: c.done, 2000)
            index = index_of(sim, command)
            if index is not None:
                ok = sim.run_until(lambda i=index: n_committed(sim, i)[0] >= expected, 2000)
                if ok:
                    _count, got = n_committed(sim, index)
                    assert got == command, f"index {index} holds {got}, not {command}"
                    return index
                if not retry:
                    break
        else:
            sim.run_for(50)
    raise AssertionError(f"one({command!r}) failed to reach agreement: {sim.describe()}")


def wait_applied(sim: Simulation, index: int, nodes: list[str], timeout_ms: int = 10_000) -> None:
    assert sim.run_until(lambda: all(sim.applied_index(n) >= index for n in nodes), timeout_ms), (
        f"index {index} not applied on {nodes}: {sim.describe()}"
    )


def assert_linearizable(sim: Simulation) -> None:
    """The history is linearizable and the log agrees with every commit's answer."""
    result = sim.check_linearizable()
    assert result.ok is True, result.explain()
    problems = sim.check_acknowledged()
    assert not problems, problems[:5]


def settle_clients(sim: Simulation, timeout_ms: int = 30_000) -> None:
    sim.stop_clients()
    assert sim.run_until(sim.clients_idle, timeout_ms), "clients did not finish"
