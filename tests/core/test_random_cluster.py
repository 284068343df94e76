"""A small randomized cluster run over the synchronous harness, checking Raft's safety rules.

The simulator (``waraft.sim``) explores faults far more thoroughly; this is a fast guard that
runs with the core's unit tests: random message loss, reordering and duplication, random
timeouts, crashes that keep only what was persisted, and client commits.
"""

from __future__ import annotations

import random

import pytest

from waraft.core.effects import Apply, PersistState, Send
from waraft.core.events import CommitBatch, Timeout
from waraft.core.server import RaftCore
from waraft.core.settings import Settings
from waraft.core.types import DurableState, Entry, LogPos, State

from .fakes import FakeLog, FakeQueues, ids

SETTINGS = Settings().with_overrides(
    raft_election_timeout_ms=150,
    raft_election_timeout_ms_max=300,
    raft_heartbeat_interval_ms=30,
    raft_commit_batch_interval_ms=0,
    raft_max_log_entries_per_heartbeat=4,
)


class Sim:
    def __init__(self, seed: int, size: int = 3, admin: bool = False) -> None:
        from waraft.core.config import make_config

        self.rng = random.Random(seed)
        self.admin = admin
        self.members = ids(size)
        self.config = make_config(self.members)
        self.now = 0
        self.logs = {m: FakeLog(LogPos(1, 1)) for m in self.members}
        self.durable: dict[object, DurableState | None] = dict.fromkeys(self.members)
        self.applied: dict[object, dict[int, Entry]] = {m: {} for m in self.members}
        self.cores: dict[object, RaftCore] = {}
        self.deadlines: dict[object, int | None] = {}
        self.kinds: dict[object, object] = {}
        self.queue: list[tuple[int, Send]] = []
        self.leaders_by_term: dict[int, object] = {}
        for member in self.members:
            self.boot(member)

    def boot(self, member: object) -> None:
        log = self.logs[member]  # type: ignore[index]
        applied = self.applied[member]
        position = max(applied, default=1)
        core = RaftCore(
            member,  # type: ignore[arg-type]
            "t",
            1,
            SETTINGS,
            log,
            FakeQueues(),
            LogPos(position, log.term(position) or 1),
            (1, self.config),
            self.durable[member],
            self.rng.random,
            self.now,
        )
        self.cores[member] = core
        self.deadlines[member] = None
        self.run(member, core.start(self.now))

    def run(self, member: object, effects: list) -> None:  # type: ignore[type-arg]
        log = self.logs[member]  # type: ignore[index]
        from waraft.core.effects import SetTimeout, StateChanged

        for effect in effects:
            log.apply(effect)
            if isinstance(effect, PersistState):
                self.durable[member] = effect.state
            elif isinstance(effect, Send):
                delay = self.rng.randint(1, 20)
                self.queue.append((self.now + delay, effect))
                if self.rng.random() < 0.05:
                    self.queue.append((self.now + delay + 5, effect))  # duplicate
            elif isinstance(effect, Apply):
                seen = self.applied[member]
                for item in effect.items:
                    assert item.index == max(seen, default=1) + 1, "applies out of order"
                    seen[item.index] = item.entry
            elif isinstance(effect, StateChanged):
                self.deadlines[member] = None
            elif isinstance(effect, SetTimeout):
                self.deadlines[member] = self.now + effect.ms
                self.kinds[member] = effect.kind
        core = self.cores[member]
        if core.state is State.LEADER:
            other = self.leaders_by_term.setdefault(core.current_term, member)
            assert other == member, f"two leaders in term {core.current_term}"

    def step(self) -> None:
        self.now += 1
        due = [item for item in self.queue if item[0] <= self.now]
        self.queue = [item for item in self.queue if item[0] > self.now]
        self.rng.shuffle(due)
        for _, send in due:
            if self.rng.random() < 0.1:
                continue  # lost
            if send.to in self.cores:
                self.run(send.to, self.cores[send.to].handle(send.rpc, self.now))
        for member, deadline in list(self.deadlines.items()):
            if deadline is not None and deadline <= self.now and member in self.cores:
                self.deadlines[member] = None
                core = self.cores[member]
                self.run(member, core.handle(Timeout(self.kinds[member]), self.now))  # type: ignore[arg-type]
        roll = self.rng.random()
        if roll < 0.02:
            leader = next((m for m, c in self.cores.items() if c.state is State.LEADER), None)
            if leader is not None:
                batch = [
                    (None, (self.now, ("cmd", self.now, i))) for i in range(self.rng.randint(1, 5))
                ]
                self.run(leader, self.cores[leader].handle(CommitBatch(batch), self.now))
        elif self.admin and roll < 0.03:
            self.admin_op()
        elif roll < 0.032:
            victim = self.rng.choice(self.members)
            # crash: keep only the durable state, the log (its effects were applied) and storage
            self.applied[victim] = {
                i: e
                for i, e in self.applied[victim].items()
                if i <= self.cores[victim].commit_index
            }
            self.boot(victim)

    def admin_op(self) -> None:
        """Handovers, membership changes, triggered elections and resignations."""
        from waraft.core.events import AdjustConfig, HandoverRequest, Resign, TriggerElection

        leader = next((m for m, c in self.cores.items() if c.state is State.LEADER), None)
        choice = self.rng.randrange(4)
        if choice == 0 and leader is not None:
            self.run(leader, self.cores[leader].handle(HandoverRequest(None, None), self.now))
        elif choice == 1 and leader is not None:
            verb = self.rng.choice(
                ["remove_membership", "promote_participant_if_ready", "demote_to_witness",
                 "remove_witness", "add", "refresh"]
            )  # fmt: skip
            action = "refresh" if verb == "refresh" else (verb, self.rng.choice(self.members))
            self.run(leader, self.cores[leader].handle(AdjustConfig(None, action), self.now))
        elif choice == 2:
            member = self.rng.choice(self.members)
            self.run(member, self.cores[member].handle(TriggerElection(None), self.now))
        elif leader is not None:
            self.run(leader, self.cores[leader].handle(Resign(None), self.now))

    def check(self) -> None:
        # state machine safety: the same entry at an index on every node that applied it
        # (witnesses store stubs, so entries are compared by term and key)
        by_index: dict[int, tuple[int, object]] = {}
        for applied in self.applied.values():
            for index, entry in applied.items():
                seen = (entry.term, entry.key)
                assert by_index.setdefault(index, seen) == seen, f"divergent apply at {index}"
        # log matching on committed prefixes
        commits = {m: c.commit_index for m, c in self.cores.items()}
        for a in self.members:
            for b in self.members:
                upto = min(commits[a], commits[b])
                la, lb = self.logs[a], self.logs[b]
                lo = max(la.first_index(), lb.first_index())
                for i in range(lo, upto + 1):
                    assert la.term(i) == lb.term(i), f"logs differ at {i}"


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_keep_raft_safe(seed: int) -> None:
    sim = Sim(seed)
    for _ in range(3000):
        sim.step()
    sim.check()
    assert sim.leaders_by_term, "no leader was ever elected"
    assert max(len(a) for a in sim.applied.values()) > 1, "nothing was applied"


@pytest.mark.parametrize("seed", range(8))
def test_random_admin_operations_keep_raft_safe(seed: int) -> None:
    sim = Sim(seed, size=5, admin=True)
    for _ in range(3000):
        sim.step()
    sim.check()
    assert max(len(a) for a in sim.applied.values()) > 1, "nothing was applied"
