"""Snapshot catch-up: WARaft's ``wa_raft_snapshot_catchup`` and file transport, simulated.

On ``RequestSnapshot(peer, witness)`` from a leader, the coordinator (deduplicated per target,
with a cap on concurrent transfers and a retry backoff) waits ``snapshot_create_ms``, copies the
leader's storage at its applied position (a witness snapshot carries only metadata), then waits
``snapshot_transfer_ms`` and, if the target is up and reachable from the source, delivers
``SnapshotAvailable(root, position)`` to it. The target's core then asks its storage to install
it (``InstallSnapshot`` → ``SnapshotOpened``). Snapshots live in ``snapshots`` under their
``root`` name (``sim://<source>/snapshot.<index>.<term>#<n>``). A transfer whose target does
not answer within ``snapshot_timeout_ms`` fails (then ``snapshot_retry_failed_ms`` backoff).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from waraft.core.events import SnapshotAvailable
from waraft.core.types import LogPos
from waraft.sim.storage import Snapshot

if TYPE_CHECKING:
    from waraft.sim.simulation import Simulation

_KEEP_SNAPSHOTS = 32


@dataclass(slots=True)
class Transfer:
    id: int
    source: str
    target: str
    witness: bool
    root: str = ""
    position: LogPos | None = None


class TransferReply:
    """The transport's reply handle for ``SnapshotAvailable``."""

    __slots__ = ("catchup", "transfer")

    def __init__(self, catchup: SnapshotCatchup, transfer: Transfer) -> None:
        self.catchup = catchup
        self.transfer = transfer

    def on_reply(self, value: Any) -> None:
        self.catchup._finished(self.transfer, value)

    def __repr__(self) -> str:
        return f"<transfer {self.transfer.id} {self.transfer.source}->{self.transfer.target}>"


class SnapshotCatchup:
    """The node-wide catch-up coordinator plus the snapshot transport, for the whole cluster."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        self.active: dict[str, Transfer] = {}
        self.backoff: dict[str, int] = {}
        self._ids = 0
        self.requests = 0
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.timed_out = 0

    def request(self, source: str, target: str, witness: bool) -> None:
        sim = self.sim
        cfg = sim.config
        self.requests += 1
        now = sim.clock.now
        if (
            target in self.active
            or self.backoff.get(target, -1) > now
            or len(self.active) >= cfg.max_snapshot_catchup
        ):
            return
        self._ids += 1
        transfer = Transfer(self._ids, source, target, witness)
        self.active[target] = transfer
        self.started += 1
        sim.clock.schedule(
            sim.randint(cfg.snapshot_create_ms),
            self._create,
            transfer,
            target=source,
            label=f"snapshot create for {target}",
        )

    def _create(self, transfer: Transfer) -> None:
        sim = self.sim
        source = sim.nodes[transfer.source]
        if not source.up:
            self._fail(transfer)
            return
        snapshot = source.storage.create_snapshot(witness=transfer.witness)
        position = snapshot.position
        if not snapshot.witness:  # the state it carries, for the receiver's to be compared
            sim.invariants.on_state(transfer.source, position.index, snapshot.digest)
        root = f"sim://{transfer.source}/snapshot.{position.index}.{position.term}#{transfer.id}"
        self.snapshots[root] = snapshot
        while len(self.snapshots) > _KEEP_SNAPSHOTS:
            self.snapshots.popitem(last=False)
        transfer.root = root
        transfer.position = position
        sim.clock.schedule(
            sim.randint(sim.config.snapshot_transfer_ms),
            self._arrive,
            transfer,
            target=transfer.target,
            label=f"snapshot arrives from {transfer.source}",
        )

    def _arrive(self, transfer: Transfer) -> None:
        sim = self.sim
        target = sim.nodes[transfer.target]
        if not target.up or not sim.network.can_reach(transfer.source, transfer.target):
            self._fail(transfer)
            return
        assert transfer.position is not None
        # like WARaft's transport scan: a transfer nobody answers (the target crashed while
        # installing, ...) times out and frees the target for a new one
        sim.clock.schedule(
            sim.config.snapshot_timeout_ms,
            self._expire,
            transfer,
            label=f"snapshot transfer {transfer.id} deadline",
        )
        target.handle(
            SnapshotAvailable(
                TransferReply(self, transfer), transfer.root, transfer.position, transfer.source
            )
        )

    def _expire(self, transfer: Transfer) -> None:
        if self.active.get(transfer.target) is transfer:
            self.timed_out += 1
            self._fail(transfer)

    def _fail(self, transfer: Transfer) -> None:
        self.failed += 1
        self._done(transfer, self.sim.config.snapshot_retry_failed_ms)

    def _finished(self, transfer: Transfer, value: Any) -> None:
        if value == "ok":
            self.completed += 1
            self._done(transfer, self.sim.config.snapshot_retry_ok_ms)
        else:
            self._fail(transfer)

    def _done(self, transfer: Transfer, backoff_ms: int) -> None:
        if self.active.get(transfer.target) is transfer:
            del self.active[transfer.target]
            self.backoff[transfer.target] = self.sim.clock.now + backoff_ms
