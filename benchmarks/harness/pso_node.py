"""One PySyncObj node process for the comparison: a ``SyncObj`` holding a ``@replicated`` dict,
plus a small request server so that clients outside the cluster can drive it like waraft's.

Run: ``python -m benchmarks.harness.pso_node --raft 127.0.0.1:P --peers A,B --api 127.0.0.1:Q
--api-map RAFT=API,... [--conf JSON] [--journal FILE --dump FILE]``; stops on SIGTERM/SIGINT.

The request server (a ZeroMQ ROUTER, protocol in :mod:`benchmarks.harness.wire`) lives *inside
PySyncObj's own tick thread*: its socket is registered with PySyncObj's poller and it drains and
flushes from an on-tick callback. A command therefore goes from the socket to
``obj.set(..., callback=...)`` and its reply back to the socket without any thread hand-off;
replies produced in one tick leave in one frame per client. This is the cheapest server one can
put in front of PySyncObj, so its numbers are its best, not a straw man. Followers answer
``not_leader`` with the leader's API endpoint (the client redirects, as waraft's does).

The in-leader load generator (PySyncObj's best case: no client, no socket) also runs in the
tick thread: each tick it tops the number of commands in flight up to the concurrency.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.poller import POLL_EVENT_TYPE

from benchmarks.harness import wire
from benchmarks.harness.recorder import Recorder
from benchmarks.harness.workload import OpStream, Window, Workload

log = logging.getLogger("pso_node")

FAIL_NAMES = {
    FAIL_REASON.QUEUE_FULL: "queue_full",
    FAIL_REASON.MISSING_LEADER: "missing_leader",
    FAIL_REASON.DISCARDED: "discarded",
    FAIL_REASON.NOT_LEADER: "not_leader",
    FAIL_REASON.LEADER_CHANGED: "leader_changed",
    FAIL_REASON.REQUEST_DENIED: "request_denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "unknown_outcome",
}


class KV(SyncObj):  # type: ignore[misc, unused-ignore]
    """The replicated dict. Every attribute set after ``SyncObj.__init__`` is replicated state
    (PySyncObj snapshots them), so the request server keeps its state elsewhere."""

    def __init__(self, raft: str, peers: list[str], conf: SyncObjConf) -> None:
        super().__init__(raft, peers, conf)
        self.data: dict[str, bytes] = {}

    @replicated  # type: ignore[misc, untyped-decorator, unused-ignore]
    def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    @replicated  # type: ignore[misc, untyped-decorator, unused-ignore]
    def get(self, key: str) -> bytes | None:
        # Through the log: PySyncObj has no read index or lease, so this is its only
        # linearizable read, the counterpart of waraft's strong read.
        return self.data.get(key)


class InLeaderLoad:
    """Closed-loop load generated in the tick thread of the leader itself."""

    def __init__(self, obj: KV, params: dict[str, Any], reply: Callable[[Any], None]) -> None:
        self.obj = obj
        self.reply = reply
        self.concurrency = int(params["concurrency"])
        self.window = Window.from_json(params["window"])
        self.drain_ns = int(float(params.get("drain_s", 5.0)) * 1e9)
        self.stream = OpStream(Workload.from_json(params["workload"]), seed=1)
        self.recorder = Recorder(self.window, int(params.get("bucket_ns", 100_000_000)))
        self.inflight = 0
        self.finished = False

    def tick(self) -> None:
        now = time.monotonic_ns()
        if now < self.window.t0_ns or self.finished:
            return
        if now < self.window.end_ns:
            obj, rec, stream = self.obj, self.recorder, self.stream
            for _ in range(self.concurrency - self.inflight):
                op, key, value = stream.next()
                sent = time.monotonic_ns()
                rec.sent(sent)
                cb = self._callback(op, sent)
                if op == wire.OP_WRITE:
                    obj.set(key, value, callback=cb)
                else:
                    obj.get(key, callback=cb)
                self.inflight += 1
            return
        if self.inflight == 0 or now >= self.window.end_ns + self.drain_ns:
            self.recorder.unfinished = self.inflight
            self.finished = True
            self.reply(self.recorder.result())

    def _callback(self, op: int, sent: int) -> Callable[[Any, int], None]:
        def done(result: Any, err: int) -> None:
            self.inflight -= 1
            error = None if err == FAIL_REASON.SUCCESS else FAIL_NAMES.get(err, str(err))
            self.recorder.done(op, sent, time.monotonic_ns(), error)

        return done


class RequestServer:
    """The ROUTER in front of a PySyncObj node; every method runs in PySyncObj's tick thread
    (after construction)."""

    def __init__(self, obj: KV, raft: str, api: str, api_map: dict[str, str]) -> None:
        self.obj = obj
        self.raft = raft
        self.api_map = api_map
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(f"tcp://{api}")
        self.fd = self.sock.getsockopt(zmq.FD)
        self.subscribed = False
        self.pending: dict[bytes, list[list[Any]]] = {}
        self.loads: list[InLeaderLoad] = []

    # PySyncObj hooks -----------------------------------------------------------------------

    def on_tick(self) -> None:
        if not self.subscribed:
            # Subscribed from the tick thread: PySyncObj's poller is not thread-safe.
            self.obj._poller.subscribe(
                self.fd, self._on_fd, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
            )
            self.subscribed = True
        if self.loads:
            for load in self.loads:
                load.tick()
            self.loads = [load for load in self.loads if not load.finished]
        # ZeroMQ's FD only signals changes: drain fully before PySyncObj polls again.
        self._drain()
        self._flush()

    def _on_fd(self, descr: int, event_mask: int) -> None:
        self._drain()
        self._flush()

    # requests ------------------------------------------------------------------------------

    def _drain(self) -> None:
        sock = self.sock
        while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            ident = sock.recv(zmq.NOBLOCK)
            frame = sock.recv(zmq.NOBLOCK)
            try:
                kind, body = wire.unpack(frame)
            except Exception:
                log.warning("dropping a malformed frame")
                continue
            if kind == wire.KIND_BATCH:
                self._batch(ident, body)
            elif kind == wire.KIND_STATUS:
                self._send(ident, wire.pack(wire.KIND_STATUS, self.status()))
            elif kind == wire.KIND_LOAD:
                self._start_load(ident, body)

    def _batch(self, ident: bytes, requests: list[list[Any]]) -> None:
        obj = self.obj
        replies = self.pending.get(ident)
        if replies is None:
            replies = self.pending[ident] = []
        if not obj._isLeader():
            leader = obj._getLeader()
            where = self.api_map.get(leader.address) if leader is not None else None
            for req in requests:
                replies.append([req[0], wire.NOT_LEADER, where])
            return
        for rid, op, key, value in requests:
            if op == wire.OP_WRITE:
                obj.set(key, value, callback=self._callback(replies, rid))
            else:
                obj.get(key, callback=self._callback(replies, rid))

    @staticmethod
    def _callback(replies: list[list[Any]], rid: int) -> Callable[[Any, int], None]:
        def done(result: Any, err: int) -> None:
            if err == FAIL_REASON.SUCCESS:
                replies.append([rid, None, result])
            else:
                replies.append([rid, FAIL_NAMES.get(err, str(err)), None])

        return done

    def _flush(self) -> None:
        for ident, replies in self.pending.items():
            if replies:
                self._send(ident, wire.pack(wire.KIND_REPLY, replies))
                replies.clear()

    def _send(self, ident: bytes, payload: bytes) -> None:
        try:
            self.sock.send(ident, zmq.SNDMORE | zmq.NOBLOCK)
            self.sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("reply dropped: client queue full")

    def _start_load(self, ident: bytes, params: dict[str, Any]) -> None:
        if not self.obj._isLeader():
            self._send(ident, wire.pack(wire.KIND_LOAD, {"error": wire.NOT_LEADER}))
            return

        def reply(result: Any) -> None:
            self._send(ident, wire.pack(wire.KIND_LOAD, result))

        self.loads.append(InLeaderLoad(self.obj, params, reply))

    def status(self) -> dict[str, Any]:
        obj = self.obj
        leader = obj._getLeader()
        leader_addr = leader.address if leader is not None else None
        return {
            "self": self.raft,
            "leader": leader_addr,
            "leader_api": self.api_map.get(leader_addr) if leader_addr else None,
            "is_leader": bool(obj._isLeader()),
            "term": int(obj.raftCurrentTerm),
            "commit_index": int(obj.raftCommitIndex),
            "last_applied": int(obj.raftLastApplied),
            "log_len": int(obj._getRaftLogSize()),
            "has_quorum": bool(obj.hasQuorum),
            "ready": bool(obj.isReady()),
        }

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _parse_map(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        raft, _, api = item.partition("=")
        out[raft] = api
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raft", required=True, help="this node's PySyncObj address host:port")
    parser.add_argument("--peers", default="", help="the other nodes' addresses, comma separated")
    parser.add_argument("--api", required=True, help="host:port the request server binds")
    parser.add_argument("--api-map", default="", help="raft=api pairs of every node")
    parser.add_argument("--conf", default="{}", help="SyncObjConf keyword arguments as JSON")
    parser.add_argument("--journal", default=None, help="journal file (durable mode)")
    parser.add_argument("--dump", default=None, help="full dump file (durable mode)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    conf_kwargs: dict[str, Any] = json.loads(args.conf)
    if args.journal:
        conf_kwargs["journalFile"] = args.journal
    if args.dump:
        conf_kwargs["fullDumpFile"] = args.dump
    conf = SyncObjConf(**conf_kwargs)
    peers = [p for p in args.peers.split(",") if p]
    obj = KV(args.raft, peers, conf)
    server = RequestServer(obj, args.raft, args.api, _parse_map(args.api_map))
    obj.addOnTickCallback(server.on_tick)
    print(f"ready raft={args.raft} api={args.api}", file=sys.stderr, flush=True)
    # The tick thread exits when the main thread does, so the main thread waits here.
    while not stop.wait(0.5):
        pass
    obj.destroy()
    deadline = time.monotonic() + 3.0
    while obj.tick_thread_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
