"""``Simulation``: N Raft cores over a virtual network and clock, with clients and faults.

Everything is driven by one ``VirtualClock``; one *step* is one scheduled item (a message
arrival, a timeout, a storage batch, a client action, a fault...), or — with
``batch_effects`` — every item due for the same node at the same millisecond. After each step
the ``InvariantChecker`` checks the nodes the step touched; a failure raises
``InvariantViolation`` carrying the seed, the step number and the last steps.

Given the same ``SimConfig`` (seed included) a simulation replays exactly.
"""

from __future__ import annotations

import random
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from waraft.core import config as core_config
from waraft.core.events import (
    AdjustConfig,
    Bootstrap,
    Disable,
    Enable,
    Event,
    HandoverRequest,
    NodeLiveness,
    Promote,
    Resign,
    TriggerElection,
)
from waraft.core.rpc import RaftRpc, procedure_name
from waraft.core.settings import Settings
from waraft.core.types import Config, Identity, LogPos, Priority, State
from waraft.sim.catchup import SnapshotCatchup
from waraft.sim.client import Client, ClientConfig, KVWorkload, Workload, is_error
from waraft.sim.clock import Scheduled, VirtualClock
from waraft.sim.history import History, Status
from waraft.sim.invariants import InvariantChecker, InvariantViolation
from waraft.sim.linearizability import LinearizabilityResult, Model, check_history
from waraft.sim.liveness import LivenessMonitor
from waraft.sim.machine import KVStateMachine, StateMachine
from waraft.sim.network import NetConfig, Network
from waraft.sim.node import CoreCrash, SimNode


def fast_settings(**overrides: Any) -> Settings:
    """WARaft's defaults with timeouts shortened for simulation (election 500-1000 ms,
    heartbeat 50 ms, liveness grace 1.5 s); the ratios stay WARaft's. Quiescence is on
    (after 400 ms idle), driven by the simulated failure detector (``SimConfig.liveness_*``)."""
    base = Settings(
        raft_election_timeout_ms=500,
        raft_election_timeout_ms_max=1000,
        raft_heartbeat_interval_ms=50,
        raft_liveness_grace_period_ms=1500,
        raft_max_heartbeat_age_msecs=6000,
        raft_promotion_grace_period_secs=2,
        raft_handover_timeout_ms=300,
        raft_quiesce_after_ms=400,
    )
    return base.with_overrides(**overrides) if overrides else base


def _default_core_factory(**kwargs: Any) -> Any:
    from waraft.core.server import RaftCore  # imported late: the sim's pieces work without it

    return RaftCore(**kwargs)


def make_config(
    members: Iterable[Identity],
    witnesses: Iterable[Identity] = (),
    learners: Iterable[Identity] = (),
) -> Config:
    """A v1 config: ``members`` vote, ``witnesses`` (members or learners) keep no data,
    ``learners`` only receive replication."""
    return core_config.make_config(members, witnesses, participants=learners)


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes a simulation. Two equal configs produce the same run."""

    nodes: int | tuple[str, ...] = 3
    seed: int = 0
    settings: Settings = field(default_factory=fast_settings)
    node_settings: dict[str, Settings] = field(default_factory=dict)  # per-node overrides
    net: NetConfig = field(default_factory=NetConfig)
    table: str = "sim"
    partition: int = 1
    machine: Callable[[], StateMachine] = KVStateMachine
    durable_log: bool = True  # False: the log is lost on a crash (WARaft's ETS log)
    durable_storage: bool = True  # False: storage is lost on a crash (WARaft's ETS storage)
    apply_delay_ms: tuple[int, int] = (0, 3)  # storage picks up queued work after this
    apply_batch: int = 50  # storage tasks per pickup
    batch_effects: bool = False  # hold outward effects until the step's persistence is done
    trim_probability: float = 1.0  # TrimLog is best effort: honour it this often
    strip_on_trim: bool = False  # trimming strips the new first entry to its term
    snapshot_create_ms: tuple[int, int] = (5, 30)
    snapshot_transfer_ms: tuple[int, int] = (10, 80)
    snapshot_retry_ok_ms: int = 200
    snapshot_retry_failed_ms: int = 100
    snapshot_timeout_ms: int = 5000
    max_snapshot_catchup: int = 5
    label_fn: Callable[[Any, Any], Any] | None = None
    core_factory: Callable[..., Any] = _default_core_factory
    client: ClientConfig = field(default_factory=ClientConfig)
    check_invariants: bool = True
    disabled_invariants: frozenset[str] = frozenset()  # e.g. {"monotonic_term"} (tests only)
    trace_size: int = 40
    # The node-level failure detector (``waraft.sim.liveness``): ping interval (0: off) and
    # how long a node may go unanswered before it is reported down.
    liveness_interval_ms: int = 50
    node_down_after_ms: int = 300
    # Drop what a core sends to a node its detector reports down, as the distribution layer
    # drops sends to a peer it marked down (``waraft.distribution.runtime.transmit_to``).
    drop_sends_to_down: bool = True

    def with_(self, **changes: Any) -> SimConfig:
        return replace(self, **changes)


class Call:
    """The reply handle of an administrative call or a direct commit: ``done`` and ``result``."""

    __slots__ = ("done", "label", "result", "time")

    def __init__(self, label: str = "") -> None:
        self.done = False
        self.result: Any = None
        self.label = label
        self.time: int | None = None

    def on_reply(self, value: Any) -> None:
        if not self.done:
            self.done = True
            self.result = value

    def __repr__(self) -> str:
        return f"<call {self.label} {'=> ' + repr(self.result) if self.done else 'pending'}>"


class RecordedCall(Call):
    """A ``Call`` that also records its operation in the simulation's history."""

    __slots__ = ("key", "op", "sim")

    def __init__(self, sim: Simulation, op: Any, key: Any, label: str) -> None:
        super().__init__(label)
        self.sim = sim
        self.op = op
        self.key = key

    def on_reply(self, value: Any) -> None:
        if self.done:
            return
        super().on_reply(value)
        history, now = self.sim.history, self.sim.now
        if not is_error(value):
            history.ok(self.op, value, now)
        elif self.op.kind == "read" or self.key not in self.sim.appended_keys:
            history.fail(self.op, value, now)
        else:
            history.unknown(self.op, value, now)


class Simulation:
    """A deterministic cluster simulation (see the module docstring)."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        config = config or SimConfig()
        if overrides:
            config = config.with_(**overrides)
        self.config = config
        self.rng = random.Random(config.seed)
        self.clock = VirtualClock()
        names = config.nodes
        self.node_ids: list[str] = (
            [f"n{i}" for i in range(1, names + 1)] if isinstance(names, int) else list(names)
        )
        self.network = Network(
            self.clock,
            random.Random(self.rng.getrandbits(64)),
            self._deliver,
            self._is_up,
            config.net,
        )
        self.invariants = InvariantChecker(config.disabled_invariants)
        self.invariants.voters_of = self._voters
        self.history = History()
        self.catchup = SnapshotCatchup(self)
        self.appended_keys: set[Any] = set()
        self.unadmitted_ok: set[Any] = set()  # handles answered without acceptor admission
        self.touched: dict[str, None] = {}
        self.steps = 0
        self.stats: Counter[str] = Counter()
        self.clients: list[Client] = []
        self.unrouted_replies: list[tuple[Any, Any]] = []
        self.state_listeners: list[Callable[[SimNode, Any], None]] = []
        self.trace_hook: Callable[[str], None] | None = None
        self.slow_storage: dict[str, tuple[int, int]] = {}  # node -> storage pickup delay
        self._disconnected: set[str] = set()
        self.witnesses: set[str] = set()
        self._trace: deque[tuple[int, Scheduled]] = deque(maxlen=max(1, config.trace_size))
        self._submits = 0
        self.nodes: dict[str, SimNode] = {}
        for node_id in self.node_ids:
            settings = config.node_settings.get(node_id, config.settings)
            identity = Identity(f"raft_server_{config.table}_{config.partition}", node_id)
            node = SimNode(self, node_id, identity, settings)
            self.nodes[node_id] = node
            self.invariants.register(node_id, node.log)
        self.liveness = LivenessMonitor(
            self, config.liveness_interval_ms, config.node_down_after_ms
        )
        for node in self.nodes.values():
            self._guard(node.start)
        self.liveness.start()

    # -- helpers ---------------------------------------------------------------------------------

    def randint(self, bounds: tuple[int, int]) -> int:
        low, high = bounds
        return low if low >= high else self.rng.randint(low, high)

    def identity(self, node_id: str) -> Identity:
        return self.nodes[node_id].identity

    def identities(self, node_ids: Iterable[str] | None = None) -> list[Identity]:
        ids = self.node_ids if node_ids is None else node_ids
        return [self.nodes[n].identity for n in ids]

    def _voters(self, node_id: str) -> list[str]:
        """The voting members of ``node_id``'s current config (``commit_protected``); none
        when one of them is not a simulated node (the check is then skipped)."""
        core = self.nodes[node_id].core
        if core is None:
            return []
        voters = [peer.node for peer in core.current_config().membership]
        return voters if all(voter in self.nodes for voter in voters) else []

    def _is_up(self, node_id: str) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.up

    @property
    def now(self) -> int:
        return self.clock.now

    # -- message routing -------------------------------------------------------------------------

    def send(self, src: str, dst: str, rpc: RaftRpc) -> None:
        """Route a core's ``Send``. Messages to self are reliable (Erlang's send to self)."""
        if dst not in self.nodes:
            self.stats["sent_to_unknown"] += 1
            return
        if src == dst:
            self.network.sent[src] += 1
            self.clock.schedule(0, self._deliver, src, dst, rpc, target=dst, label="self")
            return
        if self.config.drop_sends_to_down and self.liveness.believes_down(src, dst):
            self.stats["dropped_node_down"] += 1
            return
        self.network.send(src, dst, rpc, label="rpc")

    def _deliver(self, src: str, dst: str, rpc: Any) -> None:
        node = self.nodes[dst]
        if node.up:
            node.handle(rpc)

    def reply(self, handle: Any, value: Any) -> None:
        """Answer a reply handle (``Call``, a client request, the snapshot transport...)."""
        if handle is None:
            return
        on_reply = getattr(handle, "on_reply", None)
        if on_reply is None:
            self.unrouted_replies.append((handle, value))
        else:
            on_reply(value)

    def on_state_changed(self, node: SimNode, effect: Any) -> None:
        self.stats[f"enter_{effect.new.value}"] += 1
        for listener in self.state_listeners:
            listener(node, effect)

    # -- running ---------------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one step; ``False`` when nothing is left to do."""
        clock = self.clock
        item = clock.pop()
        if item is None:
            return False
        self.steps += 1
        self._trace.append((self.steps, item))
        touched = self.touched
        touched.clear()
        try:
            item.fire()
            if self.config.batch_effects and item.target is not None:
                while True:
                    nxt = clock.peek()
                    if nxt is None or nxt.time != item.time or nxt.target != item.target:
                        break
                    clock.pop()
                    self._trace.append((self.steps, nxt))
                    nxt.fire()
            if touched:
                self._end_step()
        except (AssertionError, CoreCrash) as exc:
            raise self._violation(exc) from exc
        if self.trace_hook is not None:
            self.trace_hook(self._describe_step(self.steps, item))
        return True

    def _end_step(self) -> None:
        nodes = self.nodes
        for node_id in list(self.touched):
            nodes[node_id].flush()
        if not self.config.check_invariants:
            return
        check = self.invariants.after_step
        for node_id in self.touched:
            node = nodes[node_id]
            core = node.core
            if core is not None:
                check(node_id, core.state, core.current_term, core.commit_index)
                inflight = getattr(core, "inflight_bytes", None)
                if inflight and core.state is State.LEADER:
                    self.invariants.check_bytes_in_flight(
                        node_id, inflight, core.settings.raft_max_bytes_in_flight
                    )

    def _guard(self, action: Callable[..., None], *args: Any) -> None:
        """Run an action outside ``step`` (setup, restarts from tests) with the same checks."""
        self.touched.clear()
        try:
            action(*args)
            if self.touched:
                self._end_step()
        except (AssertionError, CoreCrash) as exc:
            raise self._violation(exc) from exc

    def run_steps(self, count: int) -> int:
        done = 0
        while done < count and self.step():
            done += 1
        return done

    def run_for(self, ms: int) -> None:
        """Run every step due within the next ``ms`` milliseconds."""
        self.run_until_time(self.clock.now + ms)

    def run_until_time(self, time_ms: int) -> None:
        clock = self.clock
        while True:
            nxt = clock.next_time()
            if nxt is None or nxt > time_ms:
                break
            self.step()
        clock.advance_to(time_ms)

    def run_until(self, predicate: Callable[[], bool], timeout_ms: int = 30_000) -> bool:
        """Step until ``predicate()`` holds (checked after each step) or ``timeout_ms`` passes."""
        if predicate():
            return True
        deadline = self.clock.now + timeout_ms
        clock = self.clock
        while True:
            nxt = clock.next_time()
            if nxt is None or nxt > deadline:
                clock.advance_to(deadline)
                return predicate()
            self.step()
            if predicate():
                return True

    # -- violations and traces -------------------------------------------------------------------

    def _violation(self, exc: BaseException) -> InvariantViolation:
        if isinstance(exc, InvariantViolation):
            violation = exc
        elif isinstance(exc, CoreCrash):
            tb = "".join(traceback.format_exception(exc.error)[-6:])
            violation = InvariantViolation("core_crash", f"{exc}\n{tb}")
        else:
            violation = InvariantViolation(type(exc).__name__, str(exc))
        violation.seed = self.config.seed
        violation.time = self.clock.now
        violation.step = self.steps
        violation.trace = (
            self.trace_lines() + ["nodes:"] + [f"  {node!r}" for node in self.nodes.values()]
        )
        return violation

    def trace_lines(self) -> list[str]:
        return [self._describe_step(step, item) for step, item in self._trace]

    @staticmethod
    def _describe_step(step: int, item: Scheduled) -> str:
        args = item.args
        if item.label in ("rpc", "self") and len(args) == 3:
            detail = describe_rpc(args[2])
            return f"#{step} {item.time}ms {args[0]}->{args[1]} {detail}"
        return f"#{step} {item.time}ms {item.target or '-'} {item.label}"

    # -- queries ---------------------------------------------------------------------------------

    def node(self, node_id: str) -> SimNode:
        return self.nodes[node_id]

    def core(self, node_id: str) -> Any:
        return self.nodes[node_id].core

    def leaders(self) -> list[str]:
        """Up nodes currently in the leader state."""
        return [n.id for n in self.nodes.values() if n.up and n.core.state is State.LEADER]

    def leader(self) -> str | None:
        """The leader of the highest term among up nodes that lead, if any."""
        best: tuple[int, str] | None = None
        for n in self.nodes.values():
            if n.up and n.core.state is State.LEADER:
                key = (n.core.current_term, n.id)
                if best is None or key > best:
                    best = key
        return None if best is None else best[1]

    def state(self, node_id: str) -> State | None:
        node = self.nodes[node_id]
        return node.core.state if node.up else None

    def term(self, node_id: str) -> int:
        node = self.nodes[node_id]
        return node.core.current_term if node.up else -1

    def await_leader(self, timeout_ms: int = 30_000, among: Iterable[str] | None = None) -> str:
        """Run until some up node (of ``among``) is leader; returns it (raises on timeout)."""
        pool = set(self.node_ids if among is None else among)

        def ready() -> bool:
            lead = self.leader()
            return lead is not None and lead in pool

        if not self.run_until(ready, timeout_ms):
            raise AssertionError(f"no leader within {timeout_ms} ms: {self.describe()}")
        lead = self.leader()
        assert lead is not None
        return lead

    def describe(self) -> str:
        return " ".join(repr(n) for n in self.nodes.values())

    # -- faults ----------------------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        """Kill a node: it keeps only what the core had persisted (see ``SimConfig``)."""
        node = self.nodes[node_id]
        if node.up:
            self.stats["crash"] += 1
            node.crash()

    def lose_state(self, node_id: str) -> None:
        """Kill a node and delete its durable state file (term, vote, disable reason), keeping
        its log and storage (``SimNode.lose_state``): ``restart`` brings it back as the shell
        would, ``disabled`` with ``durable_state_missing`` when its log shows a lost term."""
        node = self.nodes[node_id]
        self.crash(node_id)
        self.stats["lose_state"] += 1
        node.lose_state()

    def restart(self, node_id: str) -> None:
        """Start a crashed node again from what it persisted."""
        node = self.nodes[node_id]
        if not node.up:
            self.stats["restart"] += 1
            self._guard(node.start)

    def restart_partition(self, node_id: str) -> None:
        """Restart only the partition on ``node_id`` (its supervisor restarted it; the node
        stays up): it keeps what a crash keeps (see ``SimConfig``: with ``durable_log`` and
        ``durable_storage`` off, like a node with memory providers, it comes back empty and
        stalled), no node liveness event fires anywhere, and the new core is told which
        nodes its node's detector reports down, as the server's ``_sync_liveness`` tells it."""
        node = self.nodes[node_id]
        if not node.up:
            return
        self.stats["restart_partition"] += 1
        node.crash()
        self._guard(node.start, True)
        for subject in sorted(self.liveness.down_for(node_id)):
            self._guard(node.handle, NodeLiveness(subject, False))

    def pause(self, node_id: str) -> None:
        """SIGSTOP a node: it stays up and connected but handles nothing until ``resume``."""
        node = self.nodes[node_id]
        if node.up and not node.paused:
            self.stats["pause"] += 1
            node.pause()

    def resume(self, node_id: str) -> None:
        """SIGCONT: the node handles, in order, everything that arrived while it was paused."""
        node = self.nodes[node_id]
        if node.paused:
            self.stats["resume"] += 1
            self._guard(node.resume)

    def restart_all(self) -> None:
        for node_id in self.node_ids:
            self.restart(node_id)

    def partition(self, *groups: Iterable[str]) -> None:
        """Symmetric partition into ``groups``; nodes in no group are isolated."""
        self.network.partition(*groups, nodes=self.node_ids)

    def disconnect(self, node_id: str) -> None:
        """6.824's ``disconnect``: cut ``node_id`` off; a link works only while both of its
        ends are connected. (``disconnect``/``connect`` rewrite every link: do not mix them
        with ``partition``/``block`` in one test.)"""
        self._disconnected.add(node_id)
        self._apply_disconnected()

    def connect(self, node_id: str) -> None:
        """6.824's ``connect``: undo ``disconnect`` for ``node_id``."""
        self._disconnected.discard(node_id)
        self._apply_disconnected()

    def _apply_disconnected(self) -> None:
        self.network.heal()
        for node_id in sorted(self._disconnected):
            self.network.isolate(node_id, self.node_ids)

    def isolate(self, node_id: str) -> None:
        self.network.isolate(node_id, self.node_ids)

    def block(self, src: str, dst: str) -> None:
        """Asymmetric: ``src`` can no longer reach ``dst``."""
        self.network.block(src, dst)

    def heal(self) -> None:
        self._disconnected.clear()
        self.network.heal()

    def set_net(self, net: NetConfig) -> None:
        self.network.config = net

    def connected(self, a: str, b: str) -> bool:
        return self.network.can_reach(a, b) and self.network.can_reach(b, a)

    # -- administration --------------------------------------------------------------------------

    def call(self, node_id: str, make: Callable[[Call], Event], label: str = "") -> Call:
        """Deliver the event ``make(handle)`` to a node as its own step; returns the handle."""
        handle = Call(label)
        self.unadmitted_ok.add(handle)

        def deliver() -> None:
            node = self.nodes[node_id]
            if node.up:
                node.handle(make(handle))
            else:
                handle.on_reply(("error", "unreachable"))

        self.clock.schedule(0, deliver, target=None, label=f"call {label} on {node_id}")
        return handle

    def call_sync(
        self, node_id: str, make: Callable[[Call], Event], label: str = "", timeout_ms: int = 5000
    ) -> Any:
        """``call`` and run until it is answered; returns the result (raises on timeout)."""
        handle = self.call(node_id, make, label)
        if not self.run_until(lambda: handle.done, timeout_ms):
            raise AssertionError(f"{label} on {node_id}: no answer within {timeout_ms} ms")
        return handle.result

    def cluster_config(
        self,
        members: Iterable[str] | None = None,
        witnesses: Iterable[str] = (),
        learners: Iterable[str] = (),
    ) -> Config:
        ids = self.node_ids if members is None else list(members)
        return make_config(
            self.identities(ids), self.identities(witnesses), self.identities(learners)
        )

    def bootstrap(
        self,
        members: Iterable[str] | None = None,
        witnesses: Iterable[str] = (),
        learners: Iterable[str] = (),
        position: LogPos = LogPos(1, 1),  # noqa: B008 (immutable)
        data: Any = None,
        on: Iterable[str] | None = None,
    ) -> Config:
        """Bootstrap a brand-new cluster: every node of ``on`` (default: the config's
        participants) is bootstrapped at ``position`` with the same config."""
        witnesses = list(witnesses)
        self.witnesses.update(witnesses)
        config = self.cluster_config(members, witnesses, learners)
        targets = [p.node for p in config.participants] if on is None else list(on)
        calls = [
            self.call(n, lambda h: Bootstrap(h, position, config, data), "bootstrap")
            for n in targets
        ]
        self.run_until(lambda: all(c.done for c in calls), 5000)
        for node_id, call in zip(targets, calls, strict=True):
            if call.result != "ok":
                raise AssertionError(f"bootstrap of {node_id} failed: {call.result!r}")
        return config

    def submit(
        self,
        node_id: str,
        command: Any,
        priority: Priority = Priority.HIGH,
        record: bool = False,
        origin: str | None = None,
    ) -> Call:
        """Commit ``command`` through a node's acceptor, as 6.824's ``Start()``; the handle is
        answered with storage's result or an error. ``record`` adds it to the history;
        ``origin``: who the acceptor authenticated the sender as (owner of a register)."""
        self._submits += 1
        key = ("c", "submit", self._submits, 1)
        label = f"commit {command!r}"
        handle: Call
        if record:
            op = self.history.invoke(0, "commit", command, self.now, key=key)
            op.node = node_id
            handle = RecordedCall(self, op, key, label)
        else:
            handle = Call(label)

        def deliver() -> None:
            node = self.nodes[node_id]
            if node.up:
                node.accept_commit(handle, key, command, priority, origin)
            else:
                handle.on_reply(("error", "unreachable"))

        self.clock.schedule(0, deliver, target=None, label=f"submit on {node_id}")
        return handle

    def read(self, node_id: str, command: Any, record: bool = False) -> Call:
        """A strong read through a node's acceptor (``record``: add it to the history)."""
        label = f"read {command!r}"
        handle: Call
        if record:
            op = self.history.invoke(0, "read", command, self.now)
            op.node = node_id
            handle = RecordedCall(self, op, None, label)
        else:
            handle = Call(label)

        def deliver() -> None:
            node = self.nodes[node_id]
            if node.up:
                node.accept_read(handle, command)
            else:
                handle.on_reply(("error", "unreachable"))

        self.clock.schedule(0, deliver, target=None, label=f"read on {node_id}")
        return handle

    def adjust_config(self, node_id: str, action: Any, expected_index: int | None = None) -> Any:
        return self.call_sync(
            node_id, lambda h: AdjustConfig(h, action, expected_index), f"adjust {action}"
        )

    def resign(self, node_id: str) -> Any:
        return self.call_sync(node_id, lambda h: Resign(h), "resign")

    def handover(self, node_id: str, peer: str | None = None) -> Any:
        return self.call_sync(node_id, lambda h: HandoverRequest(h, peer), "handover")

    def trigger_election(self, node_id: str, term: Any = "current") -> Any:
        return self.call_sync(node_id, lambda h: TriggerElection(h, term), "trigger_election")

    def promote(self, node_id: str, term: Any = "next", force: bool = False) -> Any:
        return self.call_sync(node_id, lambda h: Promote(h, term, force), "promote")

    def disable(self, node_id: str, reason: Any = "test") -> Any:
        return self.call_sync(node_id, lambda h: Disable(h, reason), "disable")

    def enable(self, node_id: str) -> Any:
        return self.call_sync(node_id, lambda h: Enable(h), "enable")

    # -- clients ---------------------------------------------------------------------------------

    def add_clients(
        self, count: int, workload: Workload | None = None, cfg: ClientConfig | None = None
    ) -> list[Client]:
        """Start ``count`` clients (default: the KV workload) that run until stopped."""
        new = []
        for _ in range(count):
            client = Client(
                self, len(self.clients) + 1, workload or KVWorkload(), cfg or self.config.client
            )
            self.clients.append(client)
            new.append(client)
            client.start()
        return new

    def stop_clients(self) -> None:
        for client in self.clients:
            client.stop()

    def clients_idle(self) -> bool:
        return all(client.idle for client in self.clients)

    def check_linearizable(
        self, model: Model | None = None, budget: int = 200_000
    ) -> LinearizabilityResult:
        return check_history(self.history.ops, model, budget)

    def check_acknowledged(self) -> list[str]:
        """Commits against the committed log (call once the cluster has settled): every ``ok``
        commit is committed, exactly once; no ``fail`` commit is; no log key is committed at
        two indices. Returns the problems found (empty: all good)."""
        where: dict[Any, list[int]] = {}
        for index, (entry, _) in self.invariants.committed.items():
            key = entry.key
            if type(key) is tuple and key and key[0] == "c":
                where.setdefault(key, []).append(index)
        problems = [f"key {k} committed at {v}" for k, v in where.items() if len(v) > 1]
        for op in self.history.ops:
            if op.kind != "commit" or op.key is None:
                continue
            if op.status is Status.OK and op.key not in where:
                problems.append(f"acknowledged but never committed: {op.line()}")
            elif op.status is Status.FAIL and op.key in where:
                problems.append(f"failed but committed at {where[op.key]}: {op.line()}")
        return problems

    def check_replicas(self) -> None:
        """Every up data replica's state against every other's at the same applied index, as
        after each apply (call once the cluster has settled: a state changed outside of the
        applies, or a replica that applied nothing since loading a snapshot, shows here).
        Raises ``InvariantViolation``."""
        for node in self.nodes.values():
            storage = node.storage
            if node.up and storage.position.index > 0 and storage.is_data_replica():
                self.invariants.on_state(node.id, storage.position.index, storage.state_digest())

    # -- whole-cluster views ---------------------------------------------------------------------

    def applied_index(self, node_id: str) -> int:
        return self.nodes[node_id].storage.position.index

    def committed_command(self, index: int) -> Any:
        seen = self.invariants.committed.get(index)
        return None if seen is None else seen[0].command

    def n_committed(self, index: int) -> tuple[int, Any]:
        """6.824's ``nCommitted``: how many nodes applied ``index`` and the command there."""
        count = 0
        command = None
        for node in self.nodes.values():
            if node.storage.position.index >= index:
                count += 1
        entry = self.invariants.applied.get(index)
        if entry is not None:
            command = entry.command
        return count, command


def describe_rpc(rpc: Any) -> str:
    if not isinstance(rpc, RaftRpc):
        return repr(rpc)
    payload = rpc.payload
    fields = []
    for name in type(payload).__slots__:
        value = getattr(payload, name)
        if name == "entries":
            value = f"[{len(value)}]" if value else "[]"
        elif hasattr(value, "value"):
            value = value.value
        fields.append(f"{name}={value}")
    return f"{procedure_name(payload)} t{rpc.term} from {rpc.sender.node} {' '.join(fields)}"
