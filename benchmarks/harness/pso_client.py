"""The load generator's side of the PySyncObj request protocol (:mod:`benchmarks.harness.wire`).

One DEALER per node. Commands go to the node believed to lead; ``not_leader`` answers redirect
them (to the endpoint the follower names, or the next node after a short back-off when none is
known) and commands unanswered for ``retry_after`` seconds are re-sent to the next node, as a
client of a Raft cluster must when its leader dies. ``set`` is idempotent, so re-sending is
safe; a command still unanswered after ``give_up_after`` fails with ``timeout``.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from benchmarks.harness import wire
from benchmarks.harness.driver import Driver

_RETRYABLE = {wire.NOT_LEADER, "missing_leader", "leader_changed", "not_leader"}


class _Pending:
    __slots__ = ("deadline", "give_up", "key", "node", "op", "token", "value")

    def __init__(
        self, op: int, key: str, value: bytes | None, token: int, node: int, now: float, t: float
    ) -> None:
        self.op = op
        self.key = key
        self.value = value
        self.token = token
        self.node = node
        self.deadline = now + t
        self.give_up = 0.0


class PySyncObjDriver(Driver):
    def __init__(
        self,
        endpoints: list[str],
        *,
        coalesce: bool = True,
        retry_after: float = 1.0,
        give_up_after: float = 30.0,
        redirect_backoff: float = 0.01,
    ) -> None:
        self.endpoints = list(endpoints)
        self.coalesces = coalesce
        self.retry_after = retry_after
        self.give_up_after = give_up_after
        self.redirect_backoff = redirect_backoff
        self.ctx = zmq.Context()
        self.socks: list[zmq.Socket[bytes]] = []
        self.poller = zmq.Poller()
        for ep in self.endpoints:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.connect(f"tcp://{ep}")
            self.socks.append(sock)
            self.poller.register(sock, zmq.POLLIN)
        self.leader = 0
        self.next_id = 1
        self.pending: dict[int, _Pending] = {}
        self.outbox: dict[int, list[list[Any]]] = {}
        self.delayed: list[tuple[float, int]] = []  # (when, rid) re-sends after a back-off
        self.completions: list[tuple[int, int, str | None]] = []
        self._last_timeout_scan = 0.0
        self.counters = {"frames": 0, "redirects": 0, "retries_after_timeout": 0, "requests": 0}

    # connection ----------------------------------------------------------------------------

    def status(self, node: int, timeout: float = 1.0) -> dict[str, Any] | None:
        """Ask one node for its status over a fresh socket (not on the load path)."""
        return node_status(self.ctx, self.endpoints[node], timeout)

    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(len(self.endpoints)):
                st = self.status(i, timeout=0.5)
                if st and st.get("is_leader") and st.get("ready"):
                    self.leader = i
                    return
            time.sleep(0.05)
        raise TimeoutError("no PySyncObj leader")

    # commands ------------------------------------------------------------------------------

    def submit(self, op: int, key: str, value: bytes | None, token: int) -> None:
        rid = self.next_id
        self.next_id += 1
        now = time.monotonic()
        p = _Pending(op, key, value, token, self.leader, now, self.retry_after)
        p.give_up = now + self.give_up_after
        self.pending[rid] = p
        self.counters["requests"] += 1
        self._queue(rid, p)

    def _queue(self, rid: int, p: _Pending) -> None:
        req = [rid, p.op, p.key, p.value]
        if self.coalesces:
            box = self.outbox.get(p.node)
            if box is None:
                self.outbox[p.node] = [req]
            else:
                box.append(req)
        else:
            self.socks[p.node].send(wire.pack(wire.KIND_BATCH, [req]))
            self.counters["frames"] += 1

    def flush(self) -> None:
        if not self.outbox:
            return
        for node, reqs in self.outbox.items():
            self.socks[node].send(wire.pack(wire.KIND_BATCH, reqs))
        self.counters["frames"] += len(self.outbox)
        self.outbox = {}

    def poll(self, timeout: float) -> list[tuple[int, int, str | None]]:
        self.flush()
        if self.completions:
            timeout = 0.0
        if self.delayed:
            timeout = min(timeout, max(0.0, self.delayed[0][0] - time.monotonic()))
        events = self.poller.poll(int(timeout * 1000))
        for sock, _ in events:
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                kind, body = wire.unpack(frame)
                if kind == wire.KIND_REPLY:
                    self._replies(body)
        now = time.monotonic()
        self._resend_delayed(now)
        if now - self._last_timeout_scan > 0.05:
            self._last_timeout_scan = now
            self._scan_timeouts(now)
        self.flush()
        out, self.completions = self.completions, []
        return out

    def _replies(self, replies: list[list[Any]]) -> None:
        pending = self.pending
        for rid, error, value in replies:
            p = pending.get(rid)
            if p is None:
                continue  # answered already (a re-sent duplicate)
            if error is None:
                del pending[rid]
                self.completions.append((p.op, p.token, None))
            elif error in _RETRYABLE:
                self._redirect(rid, p, value if error == wire.NOT_LEADER else None)
            else:
                del pending[rid]
                self.completions.append((p.op, p.token, str(error)))

    def _redirect(self, rid: int, p: _Pending, where: str | None) -> None:
        self.counters["redirects"] += 1
        now = time.monotonic()
        if where is not None and where in self.endpoints:
            node = self.endpoints.index(where)
            self.leader = node
            p.node = node
            p.deadline = now + self.retry_after
            self._queue(rid, p)
            return
        # No leader known yet (an election is running): try the next node a little later.
        p.node = (p.node + 1) % len(self.endpoints)
        self.delayed.append((now + self.redirect_backoff, rid))

    def _resend_delayed(self, now: float) -> None:
        if not self.delayed or self.delayed[0][0] > now:
            return
        due = [rid for when, rid in self.delayed if when <= now]
        self.delayed = [(when, rid) for when, rid in self.delayed if when > now]
        for rid in due:
            p = self.pending.get(rid)
            if p is not None:
                p.deadline = now + self.retry_after
                self._queue(rid, p)

    def _scan_timeouts(self, now: float) -> None:
        expired = [rid for rid, p in self.pending.items() if p.deadline <= now]
        for rid in expired:
            p = self.pending[rid]
            if now >= p.give_up:
                del self.pending[rid]
                self.completions.append((p.op, p.token, "timeout"))
                continue
            # The node did not answer in time (dead?): move on to the next one.
            self.counters["retries_after_timeout"] += 1
            if p.node == self.leader:
                self.leader = (self.leader + 1) % len(self.endpoints)
            p.node = self.leader
            p.deadline = now + self.retry_after
            self._queue(rid, p)

    def call(self, op: int, key: str, value: bytes | None, timeout: float) -> str | None:
        self.submit(op, key, value, 0)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for _, _, error in self.poll(remaining):
                return error

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    @property
    def outstanding(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        self.ctx.term()


def node_status(ctx: zmq.Context[Any], endpoint: str, timeout: float) -> dict[str, Any] | None:
    """One status request to a PySyncObj node's request server; None when it does not answer."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{endpoint}")
        sock.send(wire.pack(wire.KIND_STATUS, None))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        kind, body = wire.unpack(sock.recv())
        return body if kind == wire.KIND_STATUS else None
    finally:
        sock.close(linger=0)


def run_in_leader_load(
    ctx: zmq.Context[Any], endpoint: str, params: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Ask the leader to generate load in its own process; returns its recorder's result."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{endpoint}")
        sock.send(wire.pack(wire.KIND_LOAD, params))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise TimeoutError(f"in-leader load on {endpoint} did not report")
        kind, body = wire.unpack(sock.recv())
        if kind != wire.KIND_LOAD:
            raise RuntimeError(f"unexpected reply {kind!r}")
        if isinstance(body, dict) and body.get("error"):
            raise RuntimeError(f"in-leader load refused: {body['error']}")
        return body  # type: ignore[no-any-return, unused-ignore]
    finally:
        sock.close(linger=0)
