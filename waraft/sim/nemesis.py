"""Randomized fault schedules (the nemesis) and randomized scenarios for seed sweeps.

``Nemesis`` injects faults into a running ``Simulation`` at seeded random times: crashes and
restarts (of any node or of the leader), symmetric partitions, isolating the leader, one-way
link cuts, network quality changes, slow storage, administrative actions (resign, handover,
trigger_election), disable/enable, membership changes (remove a member, add it back), and the
loss of a node's durable state file (``lose_state``: its term and vote; an operator enables it
later and it recovers a term from the voters, ``waraft.core.term_recovery``), and rolling
isolations of successive leaders, each cut off soon after it takes office while the one
before comes back (the Raft paper's Figure 8, ``Nemesis._start_rolling``). Every fault is
undone later, and ``calm()`` undoes everything at once.

``random_scenario(seed)`` derives a whole scenario (cluster size, witnesses, settings, storage
durability, effect batching, network, clients, which faults) from one seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from waraft.core.events import AdjustConfig
from waraft.core.types import State
from waraft.sim.client import ClientConfig, KVWorkload, MixedWorkload, Workload
from waraft.sim.network import NetConfig
from waraft.sim.simulation import SimConfig, Simulation, fast_settings


@dataclass(frozen=True)
class NemesisConfig:
    """Which faults, how often (virtual ms) and with what weights."""

    interval_ms: tuple[int, int] = (100, 1200)
    downtime_ms: tuple[int, int] = (50, 2500)
    partition_ms: tuple[int, int] = (200, 3000)
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "crash": 3.0,
            "crash_leader": 2.0,
            "partition": 2.0,
            "isolate_leader": 2.0,
            "one_way": 1.0,
            "flaky_net": 1.0,
            "slow_storage": 0.5,
            "log_stall": 0.5,
            "resign": 0.5,
            "handover": 1.0,
            "trigger_election": 0.5,
            "disable": 0.3,
            "membership": 0.7,
            "pause_leader": 1.0,
            "restart_partition": 1.0,
        }
    )

    # The chance, at each fault, that a node also loses its state file (``lose_state``). It is
    # drawn from a generator of its own, apart from the weighted faults: a run in which no
    # state file is lost makes exactly the choices it made before this fault existed (seeds
    # named in commits and tests still replay).
    lose_state: float = 0.08

    # The chance, at each fault, that a rolling isolation of leaders starts
    # (``Nemesis._start_rolling``: the schedule of the Raft paper's Figure 8). Off by default:
    # the sweep runs rolling isolations in a phase of their own after the mixed faults
    # (``Nemesis.rolling_phase``), so the mixed faults of every seed stay what they were.
    # Drawn from a generator of its own, as ``lose_state``.
    rolling_isolation: float = 0.0

    def without(self, *kinds: str) -> NemesisConfig:
        return replace(
            self,
            weights={k: w for k, w in self.weights.items() if k not in kinds},
            lose_state=0.0 if "lose_state" in kinds else self.lose_state,
            rolling_isolation=0.0 if "rolling_isolation" in kinds else self.rolling_isolation,
        )

    def kinds(self) -> list[str]:
        """The faults this config may inject."""
        extra = ["lose_state"] if self.lose_state > 0 else []
        extra += ["rolling_isolation"] if self.rolling_isolation > 0 else []
        return sorted([k for k, w in self.weights.items() if w] + extra)


@dataclass
class _Rolling:
    """A rolling isolation in progress: ``victim`` is the leader cut off last (``None`` until
    the first cut); ``left`` leaders are still to be cut off; ``generation`` tells a stale
    timer from the current one."""

    victim: str | None
    left: int
    generation: int = 0
    cutting: bool = False  # a cut of the newest leader is scheduled


class Nemesis:
    """Injects faults into ``sim`` until ``calm()``."""

    def __init__(
        self, sim: Simulation, config: NemesisConfig | None = None, seed: int | None = None
    ) -> None:
        self.sim = sim
        self.config = config or NemesisConfig()
        self.rng = random.Random(sim.rng.getrandbits(64) if seed is None else seed)
        # lose_state's own (see ``NemesisConfig.lose_state``): it leaves ``rng``'s draws as
        # they were
        base = sim.config.seed if seed is None else seed
        self.loss_rng = random.Random(base * 7919 + 71)
        # rolling_isolation's own, for the same reason
        self.rolling_rng = random.Random(base * 7919 + 83)
        self.rolling: _Rolling | None = None
        sim.state_listeners.append(self._on_state_changed)
        self.active = False
        self.base_net = sim.network.config
        self.log: list[str] = []
        self.removed: list[str] = []  # nodes taken out of the config
        self.disabled: set[str] = set()
        self.lost: set[str] = set()  # nodes that lost their state file, until they recovered
        self._kinds = [k for k, w in self.config.weights.items() if w > 0]
        self._weights = [self.config.weights[k] for k in self._kinds]
        self._actions: dict[str, Callable[[], None]] = {
            "crash": self._crash_any,
            "crash_leader": self._crash_leader,
            "partition": self._partition,
            "isolate_leader": self._isolate_leader,
            "one_way": self._one_way,
            "flaky_net": self._flaky_net,
            "slow_storage": self._slow_storage,
            "log_stall": self._log_stall,
            "resign": self._resign,
            "handover": self._handover,
            "trigger_election": self._trigger_election,
            "disable": self._disable,
            "membership": self._membership,
            "pause_leader": self._pause_leader,
            "restart_partition": self._restart_partition,
        }

    # -- scheduling ------------------------------------------------------------------------------

    def start(self) -> None:
        self.active = True
        self._schedule_next()

    def _delay(self, bounds: tuple[int, int], rng: random.Random | None = None) -> int:
        low, high = bounds
        return low if low >= high else (rng or self.rng).randint(low, high)

    def _schedule_next(self) -> None:
        if self.active and (self._kinds or self.config.rolling_isolation > 0):
            self.sim.clock.schedule(
                self._delay(self.config.interval_ms), self._act, label="nemesis"
            )

    def _later(self, delay: int, action: Callable[[], None], label: str) -> None:
        self.sim.clock.schedule(delay, self._guarded, action, label=f"nemesis: {label}")

    def _guarded(self, action: Callable[[], None]) -> None:
        if self.active:
            action()

    def _note(self, text: str) -> None:
        line = f"{self.sim.now}ms {text}"
        self.log.append(line)
        if self.sim.trace_hook is not None:
            self.sim.trace_hook(f"nemesis: {line}")

    def _act(self) -> None:
        if not self.active:
            return
        if self.rolling is not None:
            # A rolling isolation runs alone: a crash, partition or heal of other faults would
            # cut or reconnect its nodes out of turn and spoil its schedule.
            self._schedule_next()
            return
        if self._kinds:
            kind = self.rng.choices(self._kinds, self._weights)[0]
            self._actions[kind]()
        chance = self.config.lose_state
        if chance > 0 and self.loss_rng.random() < chance:
            self._lose_state()
        rolling = self.config.rolling_isolation
        if rolling > 0 and self.rolling_rng.random() < rolling:
            self._start_rolling()
        self._schedule_next()

    def calm(self) -> None:
        """Stop injecting and undo every fault: heal, restore the network and storage speed,
        enable disabled nodes, restart crashed ones."""
        self.active = False
        sim = self.sim
        sim.heal()
        sim.set_net(self.base_net)
        sim.slow_storage.clear()
        for node in sim.nodes.values():
            node.log.refuse_append = None
        for node_id in sim.node_ids:
            sim.resume(node_id)
        sim.restart_all()
        # after the restarts: a disabled node that was down keeps its (persisted) reason
        for node in sim.nodes.values():
            if node.core is not None and node.core.state is State.DISABLED:
                sim.call(node.id, _enable, "enable")
        self.disabled.clear()
        self.lost.clear()
        self.rolling = None
        self._note("calm")

    # -- helpers ---------------------------------------------------------------------------------

    def _members(self) -> list[str]:
        return [n for n in self.sim.node_ids if n not in self.removed]

    def _member_sets(self) -> list[list[str]]:
        """The voting members of every config some up node currently uses (a change may be
        appended on some nodes only): data-loss checks must hold for each of them."""
        seen: dict[tuple[str, ...], None] = {}
        for node in self.sim.nodes.values():
            if node.up and node.core is not None:
                members = tuple(p.node for p in node.core.current_config().membership)
                if members:
                    seen[members] = None
        return [list(m) for m in seen] or [self._members()]

    def _impaired(self, node_id: str) -> bool:
        node = self.sim.nodes[node_id]
        return (
            not node.up
            or node_id in self.disabled
            or node.core.state in (State.STALLED, State.DISABLED)
        )

    def _can_lose_data(self, node_id: str) -> bool:
        """May ``node_id`` lose its log (a volatile crash, or disable → enable → snapshot)?

        Raft is only safe when acknowledged entries are never forgotten. A replica that comes
        back stalled and is caught up from a snapshot below what it had acknowledged forgets
        them (WARaft resets the log to the snapshot position), so this only happens while
        every entry it holds is also held by a majority of the other members, and while enough
        healthy voters remain to elect the leader that will send it the snapshot.
        """
        sim = self.sim
        node = sim.nodes[node_id]
        if not node.up or self._impaired(node_id):
            return False
        last = node.log.last_index()
        term = node.log.term(last)
        for members in self._member_sets():
            majority = len(members) // 2 + 1
            healthy = [m for m in members if m != node_id and not self._impaired(m)]
            if len(healthy) < majority:
                return False
            holders = 0
            for other_id in healthy:
                other = sim.nodes[other_id]
                if other.log.term(last) == term or other.storage.position.index >= last:
                    holders += 1
            if holders < majority:
                return False
        return True

    def _can_crash(self, node_id: str) -> bool:
        sim = self.sim
        if not sim.nodes[node_id].up:
            return False
        if sim.config.durable_log and sim.config.durable_storage:
            return True
        return self._can_lose_data(node_id)

    # -- the faults ------------------------------------------------------------------------------

    def _crash(self, node_id: str) -> None:
        if not self._can_crash(node_id):
            return
        self.sim.crash(node_id)
        self._note(f"crash {node_id}")

        def restart() -> None:
            self.sim.restart(node_id)
            self._note(f"restart {node_id}")

        self._later(self._delay(self.config.downtime_ms), restart, f"restart {node_id}")

    # -- rolling isolation (Figure 8) ------------------------------------------------------------

    def rolling_phase(self) -> None:
        """Inject rolling isolations only, one after another (a new one within 50-300 ms of
        the last one's end), until ``calm()``: the sweep's Figure 8 phase. Call it on a calm
        nemesis; it draws from ``rolling_rng`` only."""
        self.config = replace(
            self.config, interval_ms=(50, 300), weights={}, lose_state=0.0, rolling_isolation=1.0
        )
        self._kinds, self._weights = [], []
        self.active = True
        self.sim.clock.schedule(
            self._delay(self.config.interval_ms, self.rolling_rng), self._act, label="nemesis"
        )

    def _start_rolling(self) -> None:
        """Cut off a run of leaders one after the other, each soon after it takes office, and
        let the one cut off before back in: the schedule of the Raft paper's Figure 8.

        The current leader is isolated once it holds an entry of its term that no follower
        acknowledged yet; each next leader (2 to 4 of them) is isolated soon after it takes
        office (within 4 network delays, when its first entries reached a few followers at
        most, or within 200 ms, when a backlog may have reached more), and the leader
        isolated before it is reconnected. So entries of several terms sit on minorities at
        the same indices, and a leader that comes back with an older term's entry may
        replicate it to a majority before its own term's entries: exactly when committing by
        counting replicas is unsafe (§5.4.2), as a next leader of the newer term could
        overwrite it (``InvariantChecker``: ``commit_protected`` at the commit,
        ``leader_completeness`` at that election). Links are cut, not nodes: it works with
        volatile logs too. Other faults wait meanwhile (``_act``); a run ends 50 ms to 1 s
        after the last cut's successor takes office, or 3 s after a cut no leader followed.
        """
        leader = self.sim.leader()
        if self.rolling is not None or leader is None:
            return
        rng = self.rolling_rng
        self.rolling = _Rolling(victim=None, left=rng.randint(2, 4))
        self._note(f"rolling isolation: waiting for {leader} to append")
        self._await_unreplicated(leader, self.rolling, self.sim.now + 300)

    def _await_unreplicated(self, leader: str, rolling: _Rolling, deadline: int) -> None:
        """Cut ``leader`` off as soon as its log ends with an entry of its term that no
        follower acknowledged (or at ``deadline``)."""
        if self.rolling is not rolling or not self.active:
            return
        core = self.sim.nodes[leader].core
        if core is None or core.state is not State.LEADER:
            self._end_rolling(rolling)  # it is gone already; no run this time
            return
        last = core.log.last_index()
        acked = max(core.match_indices.values(), default=0)
        if (last > acked and core.log.term(last) == core.current_term) or self.sim.now >= deadline:
            self._cut(leader, rolling)
        else:
            self._later(1, lambda: self._await_unreplicated(leader, rolling, deadline), "await")

    def _on_state_changed(self, node: Any, effect: Any) -> None:
        """A new leader during a rolling isolation: schedule its cut (at most one pending)."""
        rolling = self.rolling
        if rolling is None or effect.new is not State.LEADER or node.id == rolling.victim:
            return
        if rolling.victim is None or rolling.cutting:
            return
        if rolling.left <= 0:
            self._end_rolling(rolling, self._delay((50, 1000), self.rolling_rng))
            return
        rolling.cutting = True
        # Short: its first entries reach a few followers at most. Long: a backlog of older
        # entries reaches a majority first, one message at a time when messages are small.
        rng = self.rolling_rng
        delay = rng.randint(0, rng.choice([4 * self.base_net.max_delay_ms, 200]))
        self._later(delay, lambda: self._cut(node.id, rolling), f"cut {node.id}")

    def _cut(self, node_id: str, rolling: _Rolling) -> None:
        """Isolate ``node_id``, reconnect the previous victim; give up if no leader follows."""
        if self.rolling is not rolling:
            return
        sim = self.sim
        previous = rolling.victim
        sim.isolate(node_id)
        if previous is not None and previous != node_id:
            self._reconnect(previous, but=node_id)
        rolling.victim = node_id
        rolling.left -= 1
        rolling.cutting = False
        rolling.generation += 1
        self._note(f"rolling isolation: isolate {node_id}, reconnect {previous}")
        generation = rolling.generation

        def give_up() -> None:
            if self.rolling is rolling and rolling.generation == generation:
                self._end_rolling(rolling)

        self._later(3000, give_up, "rolling isolation timeout")

    def _reconnect(self, node_id: str, but: str | None = None) -> None:
        """Undo ``node_id``'s isolation, except towards ``but`` (the node cut off now)."""
        network = self.sim.network
        for other in self.sim.node_ids:
            if other != node_id and other != but:
                network.unblock(node_id, other)
                network.unblock(other, node_id)

    def _end_rolling(self, rolling: _Rolling, delay: int = 0) -> None:
        """Reconnect the last victim after ``delay`` and end the run."""

        def end() -> None:
            if self.rolling is not rolling:
                return
            self.rolling = None
            if rolling.victim is not None:
                self._reconnect(rolling.victim)
            self._note(f"rolling isolation over: reconnect {rolling.victim}")

        if delay:
            rolling.cutting = True  # no more cuts meanwhile
            self._later(delay, end, "rolling isolation end")
        else:
            end()

    def _restart_partition(self) -> None:
        """Restart one replica's partition while its node stays up (its supervisor
        restarted it): no node liveness event, and without durable providers it comes back
        empty (``Simulation.restart_partition``)."""
        node_id = self.rng.choice(self.sim.node_ids)
        if not self._can_crash(node_id):
            return
        self.sim.restart_partition(node_id)
        self._note(f"restart partition {node_id}")

    def _crash_any(self) -> None:
        self._crash(self.rng.choice(self.sim.node_ids))

    def _crash_leader(self) -> None:
        leader = self.sim.leader()
        if leader is not None:
            self._crash(leader)

    def _pause_leader(self) -> None:
        """SIGSTOP the leader (up and connected, answering nothing), SIGCONT it later."""
        leader = self.sim.leader()
        if leader is None:
            return
        self.sim.pause(leader)
        self._note(f"pause {leader}")

        def resume() -> None:
            self.sim.resume(leader)
            self._note(f"resume {leader}")

        self._later(self._delay(self.config.downtime_ms), resume, f"resume {leader}")

    def _heal_later(self) -> None:
        def heal() -> None:
            self.sim.heal()
            if self.rolling is not None and self.rolling.victim is not None:
                self.sim.isolate(self.rolling.victim)  # a rolling isolation's cut stays
            self._note("heal")

        self._later(self._delay(self.config.partition_ms), heal, "heal")

    def _partition(self) -> None:
        ids = list(self.sim.node_ids)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        self.sim.partition(ids[:cut], ids[cut:])
        self._note(f"partition {sorted(ids[:cut])} | {sorted(ids[cut:])}")
        self._heal_later()

    def _isolate_leader(self) -> None:
        leader = self.sim.leader()
        if leader is not None:
            self.sim.isolate(leader)
            self._note(f"isolate {leader}")
            self._heal_later()

    def _one_way(self) -> None:
        ids = self.sim.node_ids
        for _ in range(self.rng.randint(1, len(ids))):
            src, dst = self.rng.sample(ids, 2)
            self.sim.block(src, dst)
            self._note(f"block {src}->{dst}")
        self._heal_later()

    def _flaky_net(self) -> None:
        rng = self.rng
        net = NetConfig(
            min_delay_ms=1,
            max_delay_ms=rng.choice([5, 20, 60]),
            loss=rng.choice([0.05, 0.2, 0.4]),
            duplicate=rng.choice([0.0, 0.05, 0.2]),
            reorder=rng.choice([0.0, 0.2]),
            reorder_delay_ms=rng.choice([50, 300]),
        )
        self.sim.set_net(net)
        self._note(f"net {net}")

        def restore() -> None:
            self.sim.set_net(self.base_net)
            self._note("net restored")

        self._later(self._delay(self.config.partition_ms), restore, "net restore")

    def _slow_storage(self) -> None:
        node_id = self.rng.choice(self.sim.node_ids)
        self.sim.slow_storage[node_id] = (20, 200)
        self._note(f"slow storage {node_id}")

        def restore() -> None:
            self.sim.slow_storage.pop(node_id, None)

        self._later(self._delay(self.config.partition_ms), restore, f"storage {node_id} back")

    def _log_stall(self) -> None:
        """The log refuses relaxed appends for a while (WARaft's ``skipped``: the leader answers
        pending commits with ``commit_stalled``, followers reject appends)."""
        node_id = self.rng.choice(self.sim.node_ids)
        log = self.sim.nodes[node_id].log
        log.refuse_append = _refuse_all
        self._note(f"log stall {node_id}")

        def restore() -> None:
            log.refuse_append = None

        self._later(self._delay(self.config.partition_ms), restore, f"log {node_id} back")

    def _resign(self) -> None:
        leader = self.sim.leader()
        if leader is not None:
            self.sim.call(leader, _resign, "resign")
            self._note(f"resign {leader}")

    def _handover(self) -> None:
        leader = self.sim.leader()
        if leader is not None:
            peers = [n for n in self._members() if n != leader]
            peer = self.rng.choice([None, *peers])
            self.sim.call(leader, lambda h: _handover(h, peer), "handover")
            self._note(f"handover {leader} -> {peer}")

    def _trigger_election(self) -> None:
        node_id = self.rng.choice(self._members())
        self.sim.call(node_id, _trigger, "trigger_election")
        self._note(f"trigger_election {node_id}")

    def _disable(self) -> None:
        candidates = [n for n in self.sim.node_ids if n not in self.disabled]
        node_id = self.rng.choice(candidates)
        if not self._can_lose_data(node_id):
            return
        self.disabled.add(node_id)
        self.sim.call(node_id, _disable, "disable")
        self._note(f"disable {node_id}")
        self._enable_later(node_id, self.rng)

    def _enable_later(self, node_id: str, rng: random.Random) -> None:
        """An operator enables ``node_id`` (in ``disabled``) after a downtime (drawn from
        ``rng``)."""

        def enable() -> None:
            if node_id not in self.disabled:
                return
            if not self.sim.nodes[node_id].up:  # down: try again once it is back
                self._later(200, enable, f"enable {node_id} (retry)")
                return
            self.disabled.discard(node_id)
            self.sim.call(node_id, _enable, "enable")
            self._note(f"enable {node_id}")

        self._later(self._delay(self.config.downtime_ms, rng), enable, f"enable {node_id}")

    def _lose_state(self) -> None:
        """Crash a member and delete its durable state file, keeping its log and storage; it
        restarts after a downtime as the shell starts it (``disabled``,
        ``durable_state_missing``, see ``SimNode.lose_state``) and an operator enables it
        later: it then takes no part until every voter told it its term
        (``waraft.core.term_recovery``)."""
        rng = self.loss_rng
        node_id = rng.choice(self._members())
        if not self._can_lose_state(node_id):
            return
        sim = self.sim
        if self.lost:
            sim.stats["lose_state_concurrent"] += 1  # another is still recovering its term
        sim.lose_state(node_id)
        self.lost.add(node_id)
        self.disabled.add(node_id)  # down, then disabled: impaired until enabled
        self._note(f"lose state {node_id}")

        def restart() -> None:
            sim.restart(node_id)
            node = sim.nodes[node_id]
            if node.up and node.core.state is State.DISABLED:
                sim.stats["lose_state_disabled"] += 1
                self._note(f"restart {node_id}: state file lost, disabled")
                self._enable_later(node_id, rng)
            else:  # no entry at all: it started as a new replica
                self._note(f"restart {node_id}: state file lost, a new replica")
                self.disabled.discard(node_id)

        self._later(self._delay(self.config.downtime_ms, rng), restart, f"restart {node_id}")

    def _can_lose_state(self, node_id: str) -> bool:
        """May ``node_id`` lose its state file now? Only with a durable log (a crash that also
        loses the log leaves a replica the shell cannot tell from a new one, a wipe an operator
        must replace), and while a majority of every config in use stays healthy without it.
        A replica up and enabled that is still recovering from such a loss counts as healthy
        here: it recovers once every voter told it a term, the one losing its state now too
        (each tells the other the term its log ends in, ``term_recovery``)."""
        sim = self.sim
        if not (sim.config.durable_log and sim.config.durable_storage):
            return False
        self.lost = {n for n in self.lost if not self._recovered(n)}
        if node_id in self.lost or self._impaired(node_id):
            return False
        for members in self._member_sets():
            healthy = [m for m in members if m != node_id and self._healthy_but_for_loss(m)]
            if len(healthy) < len(members) // 2 + 1:
                return False
        return True

    def _healthy_but_for_loss(self, node_id: str) -> bool:
        """Not impaired, or impaired only by recovering a lost state file (up and enabled)."""
        if not self._impaired(node_id):
            return True
        node = self.sim.nodes[node_id]
        return node_id in self.lost and node.up and node_id not in self.disabled

    def _recovered(self, node_id: str) -> bool:
        """Has ``node_id``, which lost its state file, recovered a term (up, enabled, and no
        longer ``term_lost``)?"""
        node = self.sim.nodes[node_id]
        core = node.core
        return (
            node.up
            and node_id not in self.disabled
            and core.state is not State.DISABLED
            and not core.term_lost
        )

    def _membership(self) -> None:
        sim = self.sim
        leader = sim.leader()
        if leader is None:
            return
        if self.removed and (self.rng.random() < 0.6 or len(self._members()) <= 3):
            node_id = self.removed[0]
            if not self._config_stays_live(add=node_id):
                return
            verb = "add_witness" if node_id in sim.witnesses else "add"
            action = (verb, sim.identity(node_id))
            handle = sim.call(leader, lambda h: AdjustConfig(h, action), "adjust_config")
            self._track_config(handle, lambda: self.removed.remove(node_id))
            self._note(f"adjust {verb} {node_id} via {leader}")
        elif len(self._members()) > 3:
            node_id = self.rng.choice([n for n in self._members() if n != leader])
            if not self._config_stays_live(remove=node_id):
                return
            action = ("remove", sim.identity(node_id))
            handle = sim.call(leader, lambda h: AdjustConfig(h, action), "adjust_config")
            self._track_config(handle, lambda: self.removed.append(node_id))
            self._note(f"adjust remove {node_id} via {leader}")

    def _config_stays_live(self, add: str | None = None, remove: str | None = None) -> bool:
        """Would every config in use, changed so, keep a majority of healthy voters? (A stalled
        replica does not vote and only a leader can bring it back.)"""
        for members in self._member_sets():
            changed = {m for m in members if m != remove} | ({add} if add else set())
            healthy = [m for m in changed if not self._impaired(m)]
            if len(healthy) < len(changed) // 2 + 1:
                return False
        return True

    def _track_config(self, handle: Any, on_ok: Callable[[], None]) -> None:
        # the change takes effect once appended: the ("ok", pos) reply says it was
        def check() -> None:
            if handle.done:
                if isinstance(handle.result, tuple) and handle.result[0] == "ok":
                    on_ok()
            else:
                self.sim.clock.schedule(10, check, label="nemesis: config reply")

        self.sim.clock.schedule(10, check, label="nemesis: config reply")


def _refuse_all(count: int, priority: Any) -> bool:
    return True


def counter_label(last: Any, command: Any) -> Any:
    """A label function for scenarios: each labelled entry carries the next integer."""
    return 1 if last is None else last + 1


def _resign(h: Any) -> Any:
    from waraft.core.events import Resign

    return Resign(h)


def _handover(h: Any, peer: str | None) -> Any:
    from waraft.core.events import HandoverRequest

    return HandoverRequest(h, peer)


def _trigger(h: Any) -> Any:
    from waraft.core.events import TriggerElection

    return TriggerElection(h)


def _disable(h: Any) -> Any:
    from waraft.core.events import Disable

    return Disable(h, "nemesis")


def _enable(h: Any) -> Any:
    from waraft.core.events import Enable

    return Enable(h)


# -- randomized scenarios --------------------------------------------------------------------


FIGURE_8_STEPS = 1000
"""Steps of the sweep's Figure 8 phase, run after the mixed faults (``Scenario``)."""


@dataclass(frozen=True)
class Scenario:
    """Everything a sweep run needs, derived from its seed."""

    seed: int
    config: SimConfig
    witnesses: tuple[str, ...]
    clients: int
    workload: Workload
    nemesis: NemesisConfig
    sessions: bool = False  # clients with exactly-once sessions and list appends
    # Steps of rolling isolations only (``Nemesis.rolling_phase``), after the mixed faults'
    # steps: appended, so the run up to there is what it was before the phase existed.
    figure_8_steps: int = FIGURE_8_STEPS

    def describe(self) -> str:
        c = self.config
        s = c.settings
        n = c.nodes if isinstance(c.nodes, int) else len(c.nodes)
        return (
            f"nodes={n} witnesses={list(self.witnesses)} durable_log={c.durable_log} "
            f"durable_storage={c.durable_storage} batch_effects={c.batch_effects} "
            f"pre_vote={s.raft_election_pre_vote} check_quorum={s.raft_leader_check_quorum} "
            f"lease={s.raft_leader_read_lease_ms} batch={s.raft_commit_batch_interval_ms}ms "
            f"per_hb={s.raft_max_log_entries_per_heartbeat} "
            f"catchup>{s.raft_snapshot_catchup_threshold} keep={s.log_rotation_keep} "
            f"net=loss {c.net.loss} dup {c.net.duplicate} reorder {c.net.reorder} "
            f"labels={c.label_fn is not None} "
            f"clients={self.clients} keys={getattr(self.workload, 'keys', '?')} "
            f"sessions={self.sessions} "
            f"faults={self.nemesis.kinds()}"
        )


SESSION_SHARE = 0.4
"""The share of sweep seeds whose clients use exactly-once sessions (see ``Scenario``)."""


def random_scenario(seed: int) -> Scenario:
    """A seeded random mix of cluster shape, settings, durability, network and faults."""
    rng = random.Random(seed * 7919 + 17)
    nodes = rng.choice([3, 3, 3, 4, 5, 5])
    witnesses: tuple[str, ...] = ()
    if nodes >= 4 and rng.random() < 0.4:
        witnesses = (f"n{nodes}",)
    settings = fast_settings(
        raft_election_pre_vote=rng.random() < 0.5,
        raft_leader_check_quorum=rng.random() < 0.5,
        raft_leader_read_lease_ms=rng.choice([0, 0, 0, 200]),
        raft_commit_batch_interval_ms=rng.choice([0, 2, 2, 10]),
        raft_commit_batch_max=rng.choice([1, 15, 15, 100]),
        raft_max_log_entries_per_heartbeat=rng.choice([1, 3, 15, 15, 100]),
        raft_apply_log_batch_size=rng.choice([1, 5, 200]),
        raft_snapshot_catchup_threshold=rng.choice([5, 30, 100_000]),
        raft_max_log_records_per_file=rng.choice([10, 50, 200_000]),
        raft_max_log_records=rng.choice([20, 100, None]),
        raft_max_retained_entries=rng.choice([100, 1_500_000]),
        raft_candidate_buffer_requests=rng.random() < 0.3,
        raft_handover_timeout_ms=rng.choice([100, 300, 600]),
        raft_max_handover_log_entries=rng.choice([10, 200]),
        raft_max_bytes_in_flight=rng.choice([0, 200, 2000, 4 * 1024 * 1024]),
        raft_max_retained_bytes=rng.choice([0, 3000, 8 * 1024 * 1024]),
    )
    # Drawn from a generator of its own (as sessions below: the scenarios seeds named in
    # commits replay stay what they were). A sim node holds one partition, so the node-wide
    # retained-bytes budget is its log's whole share; 2500 bytes trims every few entries.
    node_bytes = random.Random(seed * 7919 + 37).choice([0, 2500, 64 * 1024 * 1024])
    settings = settings.with_overrides(raft_node_max_retained_bytes=node_bytes)
    # Issue 12's commit pacing (commits wait for the unanswered round), half the seeds; its own
    # generator too, for the same reason.
    await_round = random.Random(seed * 7919 + 53).random() < 0.5
    settings = settings.with_overrides(raft_commit_await_round=await_round)
    volatile = rng.random() < 0.2
    net = NetConfig(
        min_delay_ms=1,
        max_delay_ms=rng.choice([2, 5, 15]),
        loss=rng.choice([0.0, 0.0, 0.01, 0.05]),
        duplicate=rng.choice([0.0, 0.0, 0.02]),
        reorder=rng.choice([0.0, 0.05, 0.2]),
        reorder_delay_ms=rng.choice([20, 100]),
    )
    config = SimConfig(
        nodes=nodes,
        seed=seed,
        settings=settings,
        net=net,
        durable_log=not volatile,
        durable_storage=not volatile,
        batch_effects=rng.random() < 0.5,
        apply_delay_ms=rng.choice([(0, 0), (0, 3), (0, 20)]),
        apply_batch=rng.choice([1, 10, 50]),
        trim_probability=rng.choice([1.0, 0.5]),
        strip_on_trim=rng.random() < 0.3,
        client=ClientConfig(attempt_timeout_ms=rng.choice([800, 1500, 3000])),
        label_fn=counter_label if rng.random() < 0.3 else None,
    )
    nemesis = NemesisConfig(interval_ms=rng.choice([(100, 600), (200, 1500), (500, 3000)]))
    if nodes < 4:
        nemesis = nemesis.without("membership")
    clients = rng.randint(2, 5)
    workload: Workload = KVWorkload(keys=rng.randint(1, 6))
    # Drawn from a generator of its own so that the scenarios of seeds without sessions stay
    # what they were before sessions were added (seeds named in commits still replay).
    sessions = random.Random(seed * 7919 + 29).random() < SESSION_SHARE
    if sessions:
        # Session clients retry ambiguous commits with the same (session, seq): appends make a
        # double apply visible. A short expiry (in applied entries) makes some sessions expire
        # mid-run, so re-registration is exercised too.
        expire = random.Random(seed * 7919 + 31).choice([50, 400, 100_000])
        config = replace(
            config,
            client=replace(config.client, sessions=True, session_expire_after=expire),
        )
        workload = MixedWorkload(keys=max(1, workload.keys // 2))  # type: ignore[attr-defined]
    return Scenario(
        seed=seed,
        config=config,
        witnesses=witnesses,
        clients=clients,
        workload=workload,
        nemesis=nemesis,
        sessions=sessions,
    )
