"""Sessions in the simulator: clients retry ambiguous appends through sessions under crashes,
partitions and loss, and every appended value lands exactly once (``check_list_append``); the
checker itself flags double applies, lost and phantom appends and non-prefix reads."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sim.helpers import settle_clients
from waraft.core import sessions
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


def test_a_register_burst_from_one_owner_expires_no_other_clients_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F3 in the simulator: while session clients append under message loss, another
    identity registers sessions in bursts far past the table's bound. The clients' sessions
    are never dropped for it (no ``session_expired``), every replica holds the same table with
    the burst's owner at its own cap, and the appends stay exactly-once."""
    # Small bounds (read when each replica's table is made) so that a burst overflows fast.
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 40)
    monkeypatch.setattr(sessions, "MAX_SESSIONS_PER_OWNER", 10)
    sim = Simulation(
        nodes=3,
        seed=11,
        net=NetConfig(max_delay_ms=20, loss=0.02),
        client=ClientConfig(attempt_timeout_ms=300, sessions=True, max_op_ms=20_000),
    )
    sim.bootstrap()
    sim.await_leader()
    sim.add_clients(3, AppendWorkload())
    sim.run_for(500)
    burst = sessions.register_command(10**6)
    answered = []
    for _ in range(6):
        leader = sim.leader()
        if leader is not None:  # 60 registers at once: more than the whole table holds
            answered += [sim.submit(leader, burst, origin="client:mallory") for _ in range(60)]
        sim.run_for(400)
    settle_clients(sim, 60_000)
    sim.run_until(lambda: len({sim.nodes[n].storage.position for n in sim.node_ids}) == 1, 10_000)
    assert sum(call.done and call.result[0] == "ok" for call in answered) > 100  # a real burst
    assert sim.stats["session_expired"] == 0
    tables = [sim.nodes[n].storage.sessions.dump_view() for n in sim.node_ids]
    assert all(t == tables[0] for t in tables)
    owners = [row[6] if len(row) == 7 else None for row in tables[0][1]]
    assert owners.count("client:mallory") == 10
    assert {o for o in owners if o != "client:mallory"} <= {f"client:c{i}" for i in (1, 2, 3)}
    finals = [_final(sim, n) for n in sim.node_ids]
    assert all(f == finals[0] for f in finals)
    assert check_list_append(sim.history.ops, finals[0]) == []


def test_a_commit_with_an_attempt_that_timed_out_is_never_recorded_as_failed() -> None:
    """The sweep's seed 57315: an attempt sent to a paused leader times out and sits in the
    leader's queue; the retry is refused by a follower (``not_leader``). No log holds the
    command at that moment, but the paused leader appends it when it resumes, and it may
    commit: the simulated client must record the commit as unknown, never as failed (the
    exactly-once checker then flags a "failed append present")."""
    cfg = ClientConfig(attempt_timeout_ms=200, max_attempts=2, sessions=True, think_ms=(50, 50))
    sim = Simulation(nodes=3, seed=3, client=cfg)
    sim.bootstrap()
    leader = sim.await_leader()
    (client,) = sim.add_clients(1, AppendWorkload())
    assert sim.run_until(lambda: client.session is not None and client.op is None, 5_000)
    client.target = leader
    sim.pause(leader)
    assert sim.run_until(lambda: client.op is not None, 1_000)
    op = client.op
    assert op is not None and op.kind == "commit"
    assert sim.run_until(lambda: client.op is not op, 5_000)
    assert client.attempts == 2
    assert op.status is Status.UNKNOWN, (op.status, op.result)
    sim.resume(leader)
    sim.stop_clients()
    settle_clients(sim, 30_000)
    sim.run_until(lambda: len({sim.nodes[n].storage.position for n in sim.node_ids}) == 1, 10_000)
    assert check_list_append(sim.history.ops, _final(sim, sim.node_ids[0])) == []
