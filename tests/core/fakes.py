"""In-memory LogView / QueueView fakes and a tiny synchronous cluster harness for core tests."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from waraft.core.config import make_config
from waraft.core.effects import (
    AppendLog,
    Apply,
    Effect,
    PersistState,
    ResetLog,
    Send,
    SetTimeout,
    StateChanged,
    TrimLog,
    TruncateLog,
)
from waraft.core.events import Event, SnapshotOpened, Timeout
from waraft.core.log import combined_budget
from waraft.core.rpc import Payload, RaftRpc
from waraft.core.server import RaftCore
from waraft.core.settings import Settings
from waraft.core.types import (
    Config,
    DurableState,
    Entry,
    Identity,
    LogPos,
    Priority,
    State,
    TimeoutKind,
    is_config_command,
)

TABLE = "test"
ORIGIN = LogPos(0, 0)
BASE = LogPos(1, 1)
PARTITION = 1


def ident(n: int | str) -> Identity:
    """The identity of test node ``n`` (all servers share a name, nodes differ)."""
    return Identity("raft_server_test_1", f"n{n}")


def ids(count: int) -> list[Identity]:
    return [ident(i) for i in range(1, count + 1)]


class FakeLog:
    """A list-backed ``LogView`` that applies the core's log effects."""

    def __init__(self, base: LogPos = ORIGIN, entries: Iterable[Entry] = ()) -> None:
        self.first = base.index
        self.items: list[Entry] = [Entry(base.term)]
        self.items.extend(entries)
        self.refuse_appends = False
        self.node_share = 0  # the partition's share of a node-wide budget (0: none)
        self.trims: list[int] = []
        self.defer_trims = False  # a trim reaches the provider only at land_trims()
        self.deferred: list[int] = []
        self.retained_calls = 0
        self._config: tuple[int, Config] | None = None
        self._scanned = -1

    # LogView
    def first_index(self) -> int:
        return self.first

    def last_index(self) -> int:
        return self.first + len(self.items) - 1

    def term(self, index: int) -> int | None:
        entry = self.get(index)
        return None if entry is None else entry.term

    def get(self, index: int) -> Entry | None:
        if index < self.first or index > self.last_index():
            return None
        return self.items[index - self.first]

    def entries(self, start: int, end: int, max_count: int, max_bytes: int) -> list[Entry]:
        out: list[Entry] = []
        size = 0
        end = min(end, self.last_index())
        index = start
        while index <= end and len(out) < max_count and index >= self.first:
            entry = self.items[index - self.first]
            out.append(entry)
            size += entry_size(entry)
            if size >= max_bytes:
                break
            index += 1
        return out

    def config(self) -> tuple[int, Config] | None:
        # Indexed like a real provider: only entries appended since the last call are scanned.
        last = self.last_index()
        for index in range(max(self._scanned + 1, self.first), last + 1):
            command = self.items[index - self.first].command
            if is_config_command(command):
                self._config = (index, command[1])
        self._scanned = last
        known = self._config
        if known is None or known[0] < self.first:
            return None
        return known

    def can_append(self, count: int, priority: Priority) -> bool:
        return not self.refuse_appends

    def retained_budget(self, max_bytes: int) -> int:
        return combined_budget(max_bytes, self.node_share)

    def retained_from(self, index: int, max_bytes: int) -> int:
        self.retained_calls += 1
        index = min(index, self.last_index())
        total = 0
        for at in range(index, self.first - 1, -1):
            total += entry_size(self.items[at - self.first])
            if total > max_bytes:
                return min(index, at + 1)
        return self.first

    # effects
    def apply(self, effect: Effect) -> None:
        if isinstance(effect, AppendLog):
            assert effect.first_index == self.last_index() + 1, (effect, self.last_index())
            self.items.extend(effect.entries)
        elif isinstance(effect, TruncateLog):
            assert effect.index > self.first
            del self.items[effect.index - self.first :]
            self._config, self._scanned = None, -1
        elif isinstance(effect, ResetLog):
            self.first = effect.position.index
            self.items = [Entry(effect.position.term)]
            self._config, self._scanned = None, -1
        elif isinstance(effect, TrimLog):
            self.trims.append(effect.index)
            if self.defer_trims:
                self.deferred.append(effect.index)
            elif self.first < effect.index <= self.last_index():
                del self.items[: effect.index - self.first]
                self.first = effect.index

    def land_trims(self) -> None:
        """The provider catches up with the trims deferred so far."""
        deferred, self.deferred = self.deferred, []
        for index in deferred:
            if self.first < index <= self.last_index():
                del self.items[: index - self.first]
                self.first = index

    def terms(self) -> list[int]:
        return [e.term for e in self.items]


def entry_size(entry: Entry) -> int:
    return 16 + len(repr(entry.command))


class FakeQueues:
    """``QueueView`` with settable counters."""

    def __init__(self) -> None:
        self.size = 0
        self.full = False

    def apply_queue_size(self) -> int:
        return self.size

    def apply_queue_full(self) -> bool:
        return self.full


def fixed_rand(value: float = 0.5) -> Callable[[], float]:
    return lambda: value


@dataclass
class Node:
    """One core plus its fake log, queues and what it persisted and applied."""

    core: RaftCore
    log: FakeLog
    queues: FakeQueues
    durable: DurableState | None = None
    applied: list[tuple[int, Entry]] = field(default_factory=list)
    timeout: SetTimeout | None = None
    effects: list[Effect] = field(default_factory=list)

    @property
    def state(self) -> State:
        return self.core.state

    def run(self, effects: list[Effect]) -> list[Effect]:
        """Execute log/persist effects locally; return everything for inspection."""
        for effect in effects:
            self.log.apply(effect)
            if isinstance(effect, PersistState):
                self.durable = effect.state
            elif isinstance(effect, Apply):
                self.applied.extend((item.index, item.entry) for item in effect.items)
            elif isinstance(effect, SetTimeout):
                self.timeout = effect
            elif isinstance(effect, StateChanged):
                self.timeout = None
        self.effects = effects
        return effects

    def handle(self, event: Event, now: int = 0) -> list[Effect]:
        return self.run(self.core.handle(event, now))

    def rpc(
        self, sender: Identity, payload: Payload, term: int | None = None, now: int = 0
    ) -> list[Effect]:
        rpc = RaftRpc(self.core.current_term if term is None else term, sender, payload)
        return self.handle(rpc, now)

    def fire(self, now: int = 0) -> list[Effect]:
        """Fire the armed timeout."""
        assert self.timeout is not None, "no timeout armed"
        kind = self.timeout.kind
        return self.handle(Timeout(kind), now)

    def sends(self, effects: Sequence[Effect] | None = None) -> list[Send]:
        return [e for e in (self.effects if effects is None else effects) if isinstance(e, Send)]

    def of(self, kind: type[Any], effects: Sequence[Effect] | None = None) -> list[Any]:
        return [e for e in (self.effects if effects is None else effects) if isinstance(e, kind)]


def make_node(
    n: int | str,
    members: Sequence[Identity] | None = None,
    *,
    witnesses: Sequence[Identity] = (),
    participants: Sequence[Identity] = (),
    settings: Settings | None = None,
    entries: Iterable[Entry] = (),
    base: LogPos = BASE,
    applied: int | None = None,
    term: int | None = None,
    voted_for: str | None = None,
    durable: DurableState | None = None,
    storage_config: tuple[int, Config] | bool | None = True,
    rand: Callable[[], float] | None = None,
    now: int = 0,
    start: bool = True,
    label_fn: Callable[[Any, Any], Any] | None = None,
) -> Node:
    """A started core whose storage sits at ``base`` (or ``applied``) with the config."""
    members = list(members) if members is not None else ids(3)
    cfg = make_config(members, witnesses, participants=participants)
    log = FakeLog(base, entries)
    queues = FakeQueues()
    position_index = base.index if applied is None else applied
    position = LogPos(position_index, log.term(position_index) or 0)
    if storage_config is True:
        stored: tuple[int, Config] | None = (base.index, cfg)
    elif storage_config is False:
        stored = None
    else:
        stored = storage_config
    if durable is None and (term is not None or voted_for is not None):
        durable = DurableState(term if term is not None else position.term, voted_for)
    core = RaftCore(
        ident(n),
        TABLE,
        PARTITION,
        settings or Settings(),
        log,
        queues,
        position,
        stored,
        durable,
        rand or random.Random(hash(str(n)) & 0xFFFF).random,
        now,
        label_fn=label_fn,
    )
    node = Node(core, log, queues, durable)
    if start:
        node.run(core.start(now))
    return node


def entries_of(terms: Sequence[int], *, first_index: int = 2) -> list[Entry]:
    """Plain command entries with the given terms (commands name their index)."""
    return [Entry(t, ("k", i), ("cmd", i)) for i, t in enumerate(terms, start=first_index)]


class Cluster:
    """Cores wired together by a synchronous, FIFO, optionally lossy message queue."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = {node.core.self_id: node for node in nodes}
        self.queue: deque[Send] = deque()
        self.now = 0
        self.dropped: set[Identity] = set()  # messages to or from these are lost
        self.blocked: set[tuple[Identity, Identity]] = set()

    def node(self, n: int | str) -> Node:
        return self.nodes[ident(n)]

    def run(self, node: Node, effects: list[Effect]) -> None:
        node.run(effects)
        for effect in effects:
            if isinstance(effect, Send):
                self.queue.append(effect)

    def handle(self, n: int | str, event: Event) -> None:
        node = self.node(n)
        self.run(node, node.core.handle(event, self.now))

    def fire(self, n: int | str) -> None:
        node = self.node(n)
        assert node.timeout is not None
        self.run(node, node.core.handle(Timeout(node.timeout.kind), self.now))

    def deliver(self, limit: int = 100_000) -> int:
        """Deliver queued messages until quiet; returns how many were delivered."""
        count = 0
        while self.queue and count < limit:
            send = self.queue.popleft()
            sender = send.rpc.sender
            if sender in self.dropped or send.to in self.dropped:
                continue
            if (sender, send.to) in self.blocked:
                continue
            target = self.nodes.get(send.to)
            if target is None:
                continue
            count += 1
            self.run(target, target.core.handle(send.rpc, self.now))
        return count

    def leaders(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.state is State.LEADER]


def open_snapshot(
    node: Node, effect: Any, *, error: Any = None, config: Any = None
) -> list[Effect]:
    """Answer an ``InstallSnapshot`` effect as storage would."""
    cfg = config
    if cfg is None and effect.config is not None:
        cfg = (effect.position.index, effect.config)
    event = SnapshotOpened(effect.from_, effect.purpose, effect.position, error, cfg)
    return node.handle(event)


def settings(**overrides: Any) -> Settings:
    return Settings().with_overrides(**overrides)


def leader_timeout() -> Timeout:
    return Timeout(TimeoutKind.HEARTBEAT)


def make_leader(count: int = 3, **kwargs: Any) -> Node:
    """Node 1 of a ``count``-member cluster, elected with node 2's vote (peers are not run)."""
    from waraft.core.rpc import Vote

    members = kwargs.pop("members", None) or ids(count)
    node = make_node(1, members, **kwargs)
    if node.state is not State.LEADER:
        node.fire(kwargs.get("now", 0))
        for peer in members:
            if node.state is State.CANDIDATE and peer != node.core.self_id:
                node.rpc(peer, Vote(True), now=kwargs.get("now", 0))
    assert node.state is State.LEADER, node.state
    return node
