"""The simulator's effects interpreter against a scripted fake core: the effects contract
(order, the persistence-first licence, timers, slots) and crash durability."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from waraft.core.effects import (
    AppendLog,
    CommitCancelled,
    PersistState,
    Reply,
    ResetLog,
    Send,
    SetTimeout,
    StateChanged,
    TrimLog,
    TruncateLog,
)
from waraft.core.events import Timeout
from waraft.core.rpc import RaftRpc, Vote
from waraft.core.types import DurableState, Entry, Identity, LogPos, Priority, State, TimeoutKind
from waraft.sim import InvariantViolation, Simulation
from waraft.sim.simulation import Call

Script = Callable[["FakeCore", Any], list[Any]]


class FakeCore:
    """Records what it was built from and every event; ``script`` decides the effects."""

    instances: ClassVar[list[FakeCore]] = []
    script: Script = staticmethod(lambda core, event: [])  # type: ignore[assignment]

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.self_id: Identity = kwargs["self_id"]
        self.state = State.FOLLOWER
        durable = kwargs["durable"]
        self.current_term = durable.current_term if durable else 0
        self.commit_index = kwargs["storage_position"].index
        self.leader: Identity | None = None
        self.events: list[Any] = []
        FakeCore.instances.append(self)

    def start(self, now: int, peer_nodes: Any = ()) -> list[Any]:
        return []

    def handle(self, event: Any, now: int) -> list[Any]:
        self.events.append((now, event))
        return FakeCore.script(self, event)


@pytest.fixture
def fake() -> type[FakeCore]:
    FakeCore.instances = []
    FakeCore.script = staticmethod(lambda core, event: [])  # type: ignore[assignment]
    return FakeCore


def _sim(**kw: Any) -> Simulation:
    return Simulation(nodes=2, seed=1, core_factory=FakeCore, **kw)


def _poke(sim: Simulation, node: str = "n1") -> Call:
    """Deliver one event (a Timeout) to a node as its own step."""
    return sim.call(node, lambda h: Timeout(TimeoutKind.HEARTBEAT), "poke")


def _vote_rpc(term: int) -> RaftRpc:
    return RaftRpc(term, Identity("raft_server_sim_1", "n1"), Vote(True))


def test_set_timeout_fires_and_state_change_cancels_it(fake: type[FakeCore]) -> None:
    sim = _sim()
    calls = {"n": 0}

    def script(core: FakeCore, event: Any) -> list[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            return [SetTimeout(TimeoutKind.ELECTION, 100)]
        if calls["n"] == 2:
            return [SetTimeout(TimeoutKind.ELECTION, 50)]  # replaces the first
        return []

    fake.script = staticmethod(script)  # type: ignore[assignment]
    _poke(sim)
    sim.run_for(10)
    _poke(sim)
    sim.run_for(200)
    core = fake.instances[0]
    fired = [(t, e) for t, e in core.events if e == Timeout(TimeoutKind.ELECTION)]
    assert [t for t, _ in fired] == [60]  # only the replacement, 50 ms after it was armed

    calls["n"] = 0

    def script2(core: FakeCore, event: Any) -> list[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            return [
                SetTimeout(TimeoutKind.HEARTBEAT, 20),
                StateChanged(State.FOLLOWER, State.CANDIDATE),  # cancels it
            ]
        if calls["n"] == 2:
            return [
                StateChanged(State.CANDIDATE, State.LEADER),
                SetTimeout(TimeoutKind.BATCH_COMMIT, 5),
            ]
        return []

    fake.script = staticmethod(script2)  # type: ignore[assignment]
    before = len(core.events)
    _poke(sim)
    sim.run_for(100)
    assert [e for _, e in core.events[before:]] == [Timeout(TimeoutKind.HEARTBEAT)]
    _poke(sim)
    sim.run_for(100)
    assert core.events[-1] == (core.events[-1][0], Timeout(TimeoutKind.BATCH_COMMIT))


def test_vote_sent_before_it_is_persisted_is_caught_in_order_mode(fake: type[FakeCore]) -> None:
    sim = _sim()
    fake.script = staticmethod(  # type: ignore[assignment]
        lambda core, event: [
            Send(Identity("raft_server_sim_1", "n2"), _vote_rpc(3)),
            PersistState(DurableState(3, "n2")),
        ]
    )
    _poke(sim)
    with pytest.raises(InvariantViolation) as caught:
        sim.run_for(10)
    assert caught.value.invariant == "vote_durability"


def test_batch_mode_persists_before_any_send(fake: type[FakeCore]) -> None:
    sim = _sim(batch_effects=True)
    sent: list[Any] = []
    sim.network.send = lambda s, d, m, label="": sent.append((s, d, m))  # type: ignore[method-assign]
    fake.script = staticmethod(  # type: ignore[assignment]
        lambda core, event: [
            Send(Identity("raft_server_sim_1", "n2"), _vote_rpc(3)),
            PersistState(DurableState(3, "n2")),
        ]
    )
    _poke(sim)
    sim.run_for(10)  # the licence: the send waits for the step's persistence
    assert sent and sim.nodes["n1"].durable == DurableState(3, "n2")


def test_batch_mode_holds_outward_effects_of_same_time_events_until_the_end(
    fake: type[FakeCore],
) -> None:
    sim = _sim(batch_effects=True)
    order: list[str] = []
    sim.network.send = lambda s, d, m, label="": order.append("send")  # type: ignore[method-assign]

    refusal = RaftRpc(0, Identity("raft_server_sim_1", "n1"), Vote(False))

    def script(core: FakeCore, event: Any) -> list[Any]:
        order.append("handle")
        return [Send(Identity("raft_server_sim_1", "n2"), refusal)]

    # two deliveries to n1 at the same millisecond form one step
    fake.script = staticmethod(script)  # type: ignore[assignment]
    for _ in range(2):
        sim.clock.schedule(5, sim.nodes["n1"].handle, Timeout(TimeoutKind.HEARTBEAT), target="n1")
    steps = sim.steps
    sim.run_for(10)
    assert order == ["handle", "handle", "send", "send"]
    assert sim.steps == steps + 1


def test_crash_keeps_exactly_what_was_persisted(fake: type[FakeCore]) -> None:
    entries = [Entry(1, "a", ("write", "t", "x", 1)), Entry(1, "b", ("write", "t", "x", 2))]
    fake.script = staticmethod(  # type: ignore[assignment]
        lambda core, event: [PersistState(DurableState(4, "n1")), AppendLog(1, entries)]
    )
    sim = _sim()
    _poke(sim)
    sim.run_for(5)
    sim.crash("n1")
    sim.restart("n1")
    rebuilt = fake.instances[-1]
    assert rebuilt.kwargs["durable"] == DurableState(4, "n1")
    # the durable log still holds storage's position (0, 0), so reopening keeps its entries
    assert sim.nodes["n1"].log.last_index() == 2


def test_durable_log_survives_and_volatile_log_does_not(fake: type[FakeCore]) -> None:
    entries = [Entry(1, "a", ("write", "t", "x", 1))]
    fake.script = staticmethod(lambda core, event: [AppendLog(1, entries)])  # type: ignore[assignment]
    for durable, expected in ((True, 1), (False, 0)):
        fake.instances = []
        sim = _sim(durable_log=durable)
        _poke(sim)
        sim.run_for(5)
        sim.crash("n1")
        sim.restart("n1")
        assert sim.nodes["n1"].log.last_index() == expected


def test_cancelled_commits_release_their_slot_and_double_answers_are_noted(
    fake: type[FakeCore],
) -> None:
    sim = _sim()
    handle = Call("c")
    fake.script = staticmethod(  # type: ignore[assignment]
        lambda core, event: [
            CommitCancelled(handle, "not_leader", Priority.HIGH),
            CommitCancelled(handle, "not_leader", Priority.HIGH),
        ]
    )
    sim.clock.schedule(
        0, sim.nodes["n1"].accept_commit, handle, ("c", 1), ("write", "t", "x", 1), Priority.HIGH
    )
    sim.run_for(5)
    node = sim.nodes["n1"]
    assert handle.result == ("error", "not_leader")
    assert node.pending[Priority.HIGH] == 0 and not node.admitted
    assert len(node.accounting_errors) == 1


def test_log_effects_that_break_the_contract_are_reported(fake: type[FakeCore]) -> None:
    for effects in (
        [AppendLog(5, [Entry(1, "k", "noop")])],  # a gap
        [TruncateLog(0)],  # would delete the first index
        [ResetLog(LogPos(0, 2))],
    ):
        fake.instances = []
        fake.script = staticmethod(lambda core, event, e=effects: e)  # type: ignore[assignment]
        sim = _sim()
        _poke(sim)
        with pytest.raises(InvariantViolation) as caught:
            sim.run_for(5)
        assert caught.value.invariant == "LogContractError"


def test_trim_never_passes_storage_position(fake: type[FakeCore]) -> None:
    entries = [Entry(1, i, ("write", "t", "x", i)) for i in range(5)]
    fake.script = staticmethod(  # type: ignore[assignment]
        lambda core, event: [AppendLog(1, entries), TrimLog(4)]
    )
    sim = _sim()
    _poke(sim)
    sim.run_for(5)
    assert sim.nodes["n1"].log.first_index() == 0  # storage applied nothing yet
    assert sim.stats["trim_clamped"] == 1


def test_replies_reach_calls(fake: type[FakeCore]) -> None:
    fake.script = staticmethod(  # type: ignore[assignment]
        lambda core, event: [Reply(event.from_, "ok")] if hasattr(event, "from_") else []
    )
    sim = _sim()
    from waraft.core.events import Resign

    assert sim.call_sync("n1", lambda h: Resign(h)) == "ok"


def test_batch_mode_checks_each_vote_against_its_own_events_persistence(
    fake: type[FakeCore],
) -> None:
    """A vote granted for term 18, then a later event of the same batch moves to term 20: the
    vote was durable when granted, so the deferred send is fine."""
    sim = _sim(batch_effects=True)
    scripts = iter(
        [
            [
                PersistState(DurableState(18, "n2")),
                Send(Identity("raft_server_sim_1", "n2"), _vote_rpc(18)),
            ],
            [PersistState(DurableState(20, None))],
        ]
    )
    fake.script = staticmethod(  # type: ignore[assignment]
        lambda core, event: next(scripts) if core.self_id.node == "n1" else []
    )
    for _ in range(2):
        sim.clock.schedule(5, sim.nodes["n1"].handle, Timeout(TimeoutKind.HEARTBEAT), target="n1")
    sim.run_for(10)
    assert sim.nodes["n1"].durable == DurableState(20, None)
    scripts = iter([[Send(Identity("raft_server_sim_1", "n2"), _vote_rpc(18))]])
    sim.clock.schedule(5, sim.nodes["n1"].handle, Timeout(TimeoutKind.HEARTBEAT), target="n1")
    with pytest.raises(InvariantViolation) as caught:
        sim.run_for(10)
    assert caught.value.invariant == "vote_durability"
