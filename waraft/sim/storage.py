"""``SimStorage``: the simulated storage server of one node (WARaft's ``wa_raft_storage``).

It owns the node's replicated ``StateMachine`` and everything storage keeps next to it (the
applied position, the config and its index, the last label, the witness flag), plus the apply
queue that the core's ``QueueView`` sees. Work arrives as tasks in one FIFO, as messages arrive
in the storage process's mailbox: apply items, immediate reads, snapshot installs and snapshot
creations are handled strictly in the order they were queued. The node drains the FIFO after a
configurable delay (``SimStorage.drain``).

Raft commands are handled here, as WARaft's storage server does: ``noop`` and ``noop_omitted``
only advance the position, ``(CONFIG, Config)`` updates the config (result ``("ok", LogPos)``),
and a witness skips users' commands. As the real storage actor, it refuses to go on with
missing data: a config making a replica whose data is a witness's (``incomplete``) a data
replica, or a witness's stub (``noop_omitted``) reaching a data replica, is not applied; the
replica applies nothing more and its core goes ``stalled`` (``StorageHost.storage_incomplete``)
until a snapshot brings the data. Everything else goes to the state machine, through the
exactly-once session table (``waraft.core.sessions``, as the real storage actor does): a
``("$session", ...)`` command registers or closes a session, or applies its inner command once
per ``(session, seq)`` and answers a retry with the recorded result. The table is part of
snapshots and survives crashes with durable storage.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from waraft.core.config import is_data_replica
from waraft.core.effects import ApplyItem
from waraft.core.sessions import Apply, Done, SessionTable
from waraft.core.types import (
    NOOP,
    NOOP_OMITTED,
    Config,
    Entry,
    Identity,
    LogPos,
    Priority,
    is_config_command,
)
from waraft.sim.log import approx_size
from waraft.sim.machine import StateMachine


class StorageError(AssertionError):
    """Storage was asked for something impossible (an out-of-order apply: a core bug)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A storage snapshot: what a snapshot directory holds (``data`` is ``None`` for witness
    snapshots, which carry only metadata)."""

    position: LogPos
    config: tuple[int, Config] | None
    label: Any
    data: Any
    digest: int  # state_digest of the data and sessions it holds (0 for a witness snapshot)
    witness: bool = False
    sessions: Any = None  # SessionTable.dump() (None: no sessions)


class StorageHost(Protocol):
    """Callbacks from storage into its node."""

    def storage_reply(self, to: Any, value: Any, *, commit: Priority | None, read: bool) -> None:
        """Answer a caller; release its commit slot (priority) or read slot."""

    def storage_applied(self, index: int, entry: Entry, witness: bool) -> None:
        """An entry was applied (for the invariant checker)."""

    def storage_incomplete(self, reason: str) -> None:
        """Storage lacks data the applied log says this replica holds: it applies nothing
        more until a snapshot is loaded (the core should go ``stalled``)."""


class SimStorage:
    """Simulated storage; also the node's ``QueueView`` (the apply-queue counters)."""

    def __init__(
        self,
        identity: Identity,
        machine_factory: Callable[[], StateMachine],
        host: StorageHost,
        max_pending_applies: Callable[[], int],
        max_pending_apply_bytes: Callable[[], int],
    ) -> None:
        self.identity = identity
        self.machine_factory = machine_factory
        self.machine = machine_factory()
        self.host = host
        self._max_applies = max_pending_applies
        self._max_apply_bytes = max_pending_apply_bytes
        self.position = LogPos(0, 0)
        self.config: tuple[int, Config] | None = None
        self.label: Any = None
        self.witness = False
        self.incomplete = False  # holds a witness's data: a stub, a skipped command, a snapshot
        self.awaiting_data: str | None = None  # see _lacks_data_for
        self.sessions = SessionTable()
        self.tasks: deque[tuple[Any, ...]] = deque()
        self.apply_count = 0
        self.apply_bytes = 0
        self._reads: list[tuple[int, int, Any, Any]] = []  # (read_index, seq, from_, command)
        self._read_seq = 0
        self.applied_total = 0

    # -- QueueView -------------------------------------------------------------------------------

    def apply_queue_size(self) -> int:
        return self.apply_count

    def apply_queue_full(self) -> bool:
        return (
            self.apply_count >= self._max_applies() or self.apply_bytes >= self._max_apply_bytes()
        )

    # -- state -----------------------------------------------------------------------------------

    def read_queue_size(self) -> int:
        return len(self._reads)

    def waiting_reads(self) -> list[tuple[int, Any]]:
        """The strong reads waiting for their index: ``(read_index, from_)``."""
        return [(read_index, from_) for read_index, _, from_, _ in self._reads]

    def is_data_replica(self) -> bool:
        """Whether this replica's state is compared with the others': not a witness, and
        complete unless its config makes it a data replica all the same (which the checks
        in ``apply_item`` and ``open_snapshot`` prevent: compared, a gap shows)."""
        return not self.witness and (not self.incomplete or self._holds_data())

    def _holds_data(self) -> bool:
        """Whether the applied config makes this replica a data replica."""
        config = self.config
        return config is not None and is_data_replica(self.identity, config[1])

    def lose_volatile(self) -> None:
        """A crash: the queues go (data, position and config survive in durable storage)."""
        self.tasks.clear()
        self.apply_count = 0
        self.apply_bytes = 0
        self._reads.clear()
        self.awaiting_data = None  # the replay after a restart meets the same entry again

    def wipe(self) -> None:
        """A crash with volatile storage: everything goes."""
        self.lose_volatile()
        self.position = LogPos(0, 0)
        self.config = None
        self.label = None
        self.witness = False
        self.incomplete = False
        self.sessions = SessionTable()
        self.machine.restore(None)

    def _set_config(self, config: tuple[int, Config] | None) -> None:
        self.config = config
        self.witness = config is not None and self.identity in config[1].witness

    # -- enqueueing (from effects) ---------------------------------------------------------------

    def enqueue_apply(self, items: Any) -> None:
        for item in items:
            size = approx_size(item.entry)
            self.apply_count += 1
            self.apply_bytes += size
            self.tasks.append(("apply", item, size))

    def enqueue_read_now(self, from_: Any, command: Any) -> None:
        self.tasks.append(("read_now", from_, command))

    def enqueue(self, task: tuple[Any, ...]) -> None:
        self.tasks.append(task)

    def submit_read(self, read_index: int, from_: Any, command: Any) -> None:
        """A strong read, answered once storage applies an entry at or past ``read_index``."""
        self._read_seq += 1
        heapq.heappush(self._reads, (read_index, self._read_seq, from_, command))

    def cancel_reads(self, reason: Any) -> None:
        reads, self._reads = self._reads, []
        for _, _, from_, _ in sorted(reads):
            self.host.storage_reply(from_, ("error", reason), commit=None, read=True)

    # -- the storage process ---------------------------------------------------------------------

    def apply_item(self, item: ApplyItem, size: int) -> None:
        """Apply one committed entry (WARaft's ``storage apply`` handling)."""
        self.apply_count -= 1
        self.apply_bytes -= size
        if self.awaiting_data is not None:
            return  # applied by the snapshot it waits for
        index, entry = item.index, item.entry
        position = self.position
        if index == position.index:
            # a re-apply of the current position only serves delayed reads
            self._serve_reads()
            return
        if index != position.index + 1:
            raise StorageError(
                f"{self.identity.node}: out of order apply of {index} at position {position.index}"
            )
        command = entry.command
        new_position = LogPos(index, entry.term)
        result: Any
        if command is None:
            raise StorageError(f"{self.identity.node}: apply of the base entry at {index}")
        if self._lacks_data_for(index, command):
            return
        if isinstance(command, tuple) and len(command) == 2 and command[0] == "config":
            self._set_config((index, command[1]))
            result = ("ok", new_position)
        elif command in (NOOP, NOOP_OMITTED):
            if command == NOOP_OMITTED:
                self.incomplete = True
            result = "ok"
        elif self.witness:
            self.incomplete = True  # as the real storage's first skipped entry makes it
            result = "ok"
        else:
            decision = self.sessions.begin(command, index)
            if isinstance(decision, Apply):
                result = self.machine.apply(decision.command, index, entry.term)
                if decision.session is not None:
                    self.sessions.finish(decision.session, decision.seq, result)
            elif isinstance(decision, Done):
                result = decision.result
            else:  # a duplicate inside one entry cannot happen: one command per entry
                result = self.sessions.result(decision.session, decision.seq)
        self.position = new_position
        if entry.label is not None:
            self.label = entry.label
        self.applied_total += 1
        self.host.storage_applied(index, entry, self.witness)
        if item.reply_to is not None:
            self.host.storage_reply(item.reply_to, result, commit=item.priority, read=False)
        self._serve_reads()

    def _lacks_data_for(self, index: int, command: Any) -> bool:
        """The real storage's ``check_config`` and its refusal of a stub on a data replica:
        True (and waiting for a snapshot) when applying ``command`` would make this replica
        a data replica missing data."""
        if command == NOOP_OMITTED and self._holds_data():
            reason = f"holds a witness's stub of committed entry {index}"
        elif (
            is_config_command(command)
            and self.incomplete
            and is_data_replica(self.identity, command[1])
        ):
            reason = "holds incomplete data"
        else:
            return False
        self.awaiting_data = reason
        self.host.storage_incomplete(f"invalid_incomplete_replica: {reason}")
        return True

    def _serve_reads(self) -> None:
        reads = self._reads
        index = self.position.index
        while reads and reads[0][0] <= index:
            _, _, from_, command = heapq.heappop(reads)
            self.host.storage_reply(from_, self.machine.read(command), commit=None, read=True)

    def read_now(self, from_: Any, command: Any) -> None:
        self.host.storage_reply(from_, self.machine.read(command), commit=None, read=True)

    def state_digest(self) -> int:
        """A digest of the replicated state: the machine's data and the session table. Equal
        on replicas in the same state (data replicas at the same applied index must be), so
        the invariant checker compares replicas by it; computed from the state itself, never
        carried over, so a replica whose state diverged (a retry applied twice, a lossy
        snapshot restore, a non-deterministic machine) differs."""
        return state_digest(self.machine.snapshot(), self.sessions.dump_view())

    # -- snapshots -------------------------------------------------------------------------------

    def create_snapshot(self, witness: bool = False) -> Snapshot:
        """A snapshot at the current position (witness snapshots carry no data)."""
        data = None if witness else self.machine.snapshot()
        sessions = None if witness else self.sessions.dump_view()
        return Snapshot(
            position=self.position,
            config=self.config,
            label=self.label,
            data=data,
            digest=0 if witness else state_digest(data, sessions),
            witness=witness or self.incomplete,
            sessions=sessions,
        )

    def make_empty_snapshot(self, position: LogPos, config: Config | None, data: Any) -> Snapshot:
        """Bootstrap / promote: an empty snapshot with ``config`` and ``data`` at ``position``."""
        machine = self.machine_factory()
        machine.load_initial(data)
        return Snapshot(
            position=position,
            config=None if config is None else (position.index, config),
            label=None,
            data=machine.snapshot(),
            digest=state_digest(machine.snapshot(), SessionTable().dump_view()),
        )

    def open_snapshot(self, snapshot: Snapshot, expected: LogPos) -> Any:
        """Load ``snapshot``; returns ``None`` or an error reason (state unchanged on error)."""
        if snapshot.position != expected:
            return "bad_position"
        if (
            snapshot.witness
            and snapshot.config is not None
            and is_data_replica(self.identity, snapshot.config[1])
        ):
            return "invalid_incomplete_replica"
        self.awaiting_data = None
        self.position = snapshot.position
        self._set_config(snapshot.config)
        self.label = snapshot.label
        self.incomplete = snapshot.witness
        self.sessions = SessionTable.load(snapshot.sessions)
        self.machine.restore(snapshot.data)
        self._serve_reads()
        return None


def state_digest(data: Any, sessions: Any) -> int:
    """A digest of a machine's ``snapshot()`` and a session table's ``dump_view()``, the same
    for equal states whatever the order their dicts were filled in (a restored snapshot's
    dict is in the sender's order)."""
    try:
        if isinstance(data, dict):
            return hash((tuple(sorted(data.items())), sessions))
        return hash((data, sessions))
    except TypeError:  # unorderable keys or unhashable values (a user's machine)
        return hash(repr(_canonical((data, sessions))))


def _canonical(value: Any) -> Any:
    """``value`` with its dicts and sets in a fixed order and its lists as tuples."""
    if isinstance(value, dict):
        items = [(_canonical(k), _canonical(v)) for k, v in value.items()]
        return ("dict", tuple(sorted(items, key=repr)))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((_canonical(v) for v in value), key=repr)))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    return value
