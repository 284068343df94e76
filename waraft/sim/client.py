"""Simulated clients: they issue commits and strong reads through whichever node they believe
leads, retry on ``not_leader`` / ``notify_redirect`` / admission errors, and record everything in
the simulation's ``History``.

An operation ends ``fail`` only when the simulator knows it cannot have taken effect: a read
that got an error, or a commit every attempt of which was answered with an error while none
of their log keys had been appended to any log (their pending entries were cancelled before
reaching a log). An attempt that timed out may still be in flight or queued at a paused node,
and be appended after the last attempt's error: the commit is then ``unknown`` at best. Any
other error or a timeout makes a commit ``unknown``. After a definite failure the client
retries the same operation (same history record, a new log key per attempt) until it
succeeds, becomes unknown, or runs out of attempts or time.

With sessions (``ClientConfig.sessions``) a client first registers a session (a recorded
commit of ``("$session", "register", n)``) and tags each commit with ``(session, seq)``
(``waraft.core.sessions``). A tagged commit whose outcome is unknown (a timeout, an error after
its entry was appended) is then retried too, with the same ``(session, seq)``: the replicas
apply it once, so the history records the one result. ``AppendWorkload`` makes double applies
visible: checked by ``waraft.sim.check_list_append``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from waraft.core.sessions import EXPIRED, call_command, is_call, register_command
from waraft.core.types import Identity, Priority
from waraft.sim.clock import Scheduled
from waraft.sim.history import Operation

if TYPE_CHECKING:
    from waraft.sim.simulation import Simulation


class Workload(Protocol):
    """Chooses each client's next operation: ``("commit" | "read", command)``."""

    def next_op(self, rng: random.Random, client: int, seq: int) -> tuple[str, Any]: ...


@dataclass(frozen=True, slots=True)
class KVWorkload:
    """Random writes, deletes and strong reads on a few keys; every written value is unique."""

    keys: int = 4
    table: str = "sim"
    write: float = 0.45
    delete: float = 0.05
    # the rest are reads

    def next_op(self, rng: random.Random, client: int, seq: int) -> tuple[str, Any]:
        key = f"k{rng.randrange(self.keys)}"
        roll = rng.random()
        if roll < self.write:
            return "commit", ("write", self.table, key, f"v{client}.{seq}")
        if roll < self.write + self.delete:
            return "commit", ("delete", self.table, key)
        return "read", ("read", self.table, key)


@dataclass(frozen=True, slots=True)
class AppendWorkload:
    """Appends of unique values (``"c<client>.<seq>"``) to a few keys, and strong reads."""

    keys: int = 2
    table: str = "sim"
    append: float = 0.7

    def next_op(self, rng: random.Random, client: int, seq: int) -> tuple[str, Any]:
        key = f"l{rng.randrange(self.keys)}"
        if rng.random() < self.append:
            return "commit", ("append", self.table, key, f"c{client}.{seq}")
        return "read", ("read", self.table, key)


@dataclass(frozen=True, slots=True)
class MixedWorkload:
    """Registers and lists at once (the sweep's session scenarios): unique writes, deletes and
    reads on ``k<i>`` (checked for linearizability) and unique appends and reads on ``l<i>``
    (checked Elle-style for double applies by ``check_list_append``)."""

    keys: int = 2
    lists: int = 2
    table: str = "sim"
    append: float = 0.4
    write: float = 0.25
    delete: float = 0.03
    # the rest are reads, half of them of a list

    def next_op(self, rng: random.Random, client: int, seq: int) -> tuple[str, Any]:
        roll = rng.random()
        if roll < self.append:
            key = f"l{rng.randrange(self.lists)}"
            return "commit", ("append", self.table, key, f"c{client}.{seq}")
        if roll < self.append + self.write:
            return "commit", (
                "write",
                self.table,
                f"k{rng.randrange(self.keys)}",
                f"v{client}.{seq}",
            )
        if roll < self.append + self.write + self.delete:
            return "commit", ("delete", self.table, f"k{rng.randrange(self.keys)}")
        if rng.random() < 0.5:
            return "read", ("read", self.table, f"l{rng.randrange(self.lists)}")
        return "read", ("read", self.table, f"k{rng.randrange(self.keys)}")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Timing of simulated clients (virtual milliseconds)."""

    think_ms: tuple[int, int] = (0, 40)
    delay_ms: tuple[int, int] = (0, 2)  # client <-> node, each way
    attempt_timeout_ms: int = 1500
    max_op_ms: int = 6000
    max_attempts: int = 10
    retry_backoff_ms: tuple[int, int] = (5, 60)
    priority: Priority = Priority.HIGH
    sessions: bool = False  # tag commits with (session, seq) and retry unknown outcomes
    session_expire_after: int = 100_000  # applied entries


_MOVE_ON = frozenset({"not_leader", "cancelled", "unreachable", "timeout"})


def is_error(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and value[0] == "error"


class ClientRequest:
    """The reply handle (``from_``) of one attempt of one operation."""

    __slots__ = ("attempt", "client", "command", "key", "op", "target")

    def __init__(
        self, client: Client, op: Operation, attempt: int, key: Any, target: str, command: Any
    ):
        self.client = client
        self.op = op
        self.attempt = attempt
        self.key = key
        self.target = target
        self.command = command  # what is sent: op.command, or it tagged with a session

    def on_reply(self, value: Any) -> None:
        self.client._reply_in_flight(self, value)

    def __repr__(self) -> str:
        return f"<c{self.client.id} op{self.op.id}.{self.attempt}>"


class Client:
    """One client with at most one operation in flight."""

    def __init__(self, sim: Simulation, client_id: int, workload: Workload, cfg: ClientConfig):
        self.sim = sim
        self.id = client_id
        self.origin = f"client:c{client_id}"  # its authenticated identity (session owner)
        self.workload = workload
        self.cfg = cfg
        self.rng = random.Random(sim.rng.getrandbits(64))
        self.target = self.rng.choice(sim.node_ids)
        self.op: Operation | None = None
        self.req: ClientRequest | None = None
        self.attempts = 0
        self.seq = 0
        self.session: int | None = None
        self.session_seq = 0
        self.sent: Any = None  # the current operation's command as sent
        self.unanswered = False  # an attempt of the current operation timed out
        self.stopped = False
        self._timeout: Scheduled | None = None

    def _delay(self, bounds: tuple[int, int]) -> int:
        low, high = bounds
        return low if low >= high else self.rng.randint(low, high)

    def start(self) -> None:
        self.sim.clock.schedule(self._delay(self.cfg.think_ms), self._issue, label=f"c{self.id}")

    def stop(self) -> None:
        """Issue no new operation (the one in flight finishes)."""
        self.stopped = True

    @property
    def idle(self) -> bool:
        return self.op is None

    def _issue(self) -> None:
        if self.stopped or self.op is not None:
            return
        if self.cfg.sessions and self.session is None:
            kind, command = "commit", register_command(self.cfg.session_expire_after)
            self.sent = command
        else:
            self.seq += 1
            kind, command = self.workload.next_op(self.rng, self.id, self.seq)
            self.sent = command
            if self.cfg.sessions and kind == "commit" and self.session is not None:
                self.session_seq += 1
                # One operation in flight: every earlier seq is settled, so acked = seq.
                seq = self.session_seq
                self.sent = call_command(self.session, seq, seq, command)
        self.op = self.sim.history.invoke(self.id, kind, command, self.sim.clock.now)
        self.attempts = 0
        self.unanswered = False
        self._attempt()

    def _attempt(self) -> None:
        op = self.op
        if op is None:
            return
        self.attempts += 1
        key = ("c", self.id, op.id, self.attempts) if op.kind == "commit" else None
        req = ClientRequest(self, op, self.attempts, key, self.target, self.sent)
        self.req = req
        op.node = self.target
        op.key = key
        clock = self.sim.clock
        clock.schedule(
            self._delay(self.cfg.delay_ms),
            self._arrive,
            req,
            target=self.target,
            label=f"c{self.id} {op.kind} {op.command!r}",
        )
        self._timeout = clock.schedule(
            self.cfg.attempt_timeout_ms, self._timed_out, req, label=f"c{self.id} timeout"
        )

    def _arrive(self, req: ClientRequest) -> None:
        node = self.sim.nodes[req.target]
        if not node.up or node.core is None:
            req.on_reply(("error", "unreachable"))
        elif req.op.kind == "commit":
            node.accept_commit(req, req.key, req.command, self.cfg.priority, self.origin)
        else:
            node.accept_read(req, req.op.command)

    def _reply_in_flight(self, req: ClientRequest, value: Any) -> None:
        self.sim.clock.schedule(
            self._delay(self.cfg.delay_ms), self._on_reply, req, value, label=f"c{self.id} reply"
        )

    def _finish(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        self.op = None
        self.req = None
        if not self.stopped:
            self.sim.clock.schedule(
                self._delay(self.cfg.think_ms), self._issue, label=f"c{self.id} next"
            )

    def _on_reply(self, req: ClientRequest, value: Any) -> None:
        if req is not self.req or self.op is None:
            return  # a late answer to an attempt we gave up on
        op = self.op
        history = self.sim.history
        now = self.sim.clock.now
        if value == EXPIRED and self._tagged(req):
            self.sim.stats["session_expired"] += 1
            self.session = None  # re-registered before the next operation
            history.unknown(op, value, now)
            self._finish()
            return
        if not is_error(value):
            command = op.command
            if type(command) is tuple and command[:2] == ("$session", "register"):
                self.session = value[1]
            history.ok(op, value, now)
            self._finish()
            return
        self._retarget(req, value[1])
        # Definite only if every attempt was answered and none reached a log (a tagged
        # operation's earlier attempts may have been appended even when this one was not).
        # An attempt that timed out is not settled by what the logs hold now: it may sit in a
        # paused node's queue and be appended (and committed) after this answer.
        appended = self.sim.appended_keys
        definite = op.kind == "read" or not (
            self.unanswered
            or any(
                ("c", self.id, op.id, attempt) in appended
                for attempt in range(1, self.attempts + 1)
            )
        )
        if not definite and not self._tagged(req):
            history.unknown(op, value, now)
            self._finish()
            return
        if self._may_retry(now):
            if not definite:
                self.sim.stats["session_retries"] += 1
            self._schedule_retry()
            return
        if definite:
            history.fail(op, value, now)
        else:
            history.unknown(op, value, now)
        self._finish()

    def _tagged(self, req: ClientRequest) -> bool:
        """Whether ``req`` carries a ``(session, seq)`` (retrying it is safe)."""
        return is_call(req.command)

    def _may_retry(self, now: int) -> bool:
        op = self.op
        assert op is not None
        return self.attempts < self.cfg.max_attempts and now - op.invoke_ms < self.cfg.max_op_ms

    def _schedule_retry(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        self.req = None
        self.sim.clock.schedule(
            self._delay(self.cfg.retry_backoff_ms), self._attempt, label=f"c{self.id} retry"
        )

    def _timed_out(self, req: ClientRequest) -> None:
        if req is not self.req or self.op is None:
            return
        self._timeout = None
        self._retarget(req, "timeout")
        self.unanswered = True
        if self._tagged(req) and self._may_retry(self.sim.clock.now):
            self.sim.stats["session_retries"] += 1
            self._schedule_retry()  # the same (session, seq): applied at most once
            return
        self.sim.history.unknown(self.op, ("error", "timeout"), self.sim.clock.now)
        self._finish()

    def _retarget(self, req: ClientRequest, reason: Any) -> None:
        hint: str | None = None
        if isinstance(reason, tuple) and len(reason) == 2 and reason[0] == "notify_redirect":
            peer = reason[1]
            hint = peer.node if isinstance(peer, Identity) else str(peer)
        elif reason not in _MOVE_ON:
            return  # admission errors: the same node, a little later
        elif reason == "not_leader" or reason == "cancelled":  # cancelled: deposed after appending
            node = self.sim.nodes[req.target]
            leader = node.core.leader if node.up and node.core is not None else None
            if leader is not None:
                hint = leader.node
        if hint is None or hint == req.target or hint not in self.sim.nodes:
            others = [n for n in self.sim.node_ids if n != req.target]
            hint = self.rng.choice(others) if others else req.target
        self.target = hint
