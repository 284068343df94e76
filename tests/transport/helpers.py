"""Helpers for transport and catch-up tests: in-process nodes with fast timers, file trees,
stand-in chunk receivers and a fault filter that cuts only the file transport."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.partition.helpers import APP, FAST, wait_until
from waraft import otp, transport
from waraft.core.types import Identity, LogPos
from waraft.partition import app, server, sup
from waraft.services import env, info
from waraft.transport import dist_transport

FAST_RAFT = {
    "raft_transport_scan_interval_ms": 100,
    "transport_idle_timeout_secs": 1,
    "dist_transport_ack_timeout_ms": 1000,
}
"""Node-wide (``"waraft"`` app) settings: scans and timeouts short enough for tests."""

FAST_CATCHUP = {
    "raft_snapshot_catchup_completed_backoff_ms": 200,
    "raft_snapshot_catchup_failed_backoff_ms": 200,
    "raft_snapshot_catchup_overloaded_backoff_ms": 200,
}
"""Partition settings: catch-up retries within a test's time budget."""

_ids = itertools.count(1)


def start(
    root: Path,
    name: str,
    partitions: tuple[int, ...] = (1,),
    *,
    settings: dict[str, Any] | None = None,
    raft: dict[str, Any] | None = None,
    **spec: Any,
) -> otp.Node:
    """A node whose node-wide services run with ``FAST_RAFT`` (+ ``raft``) and whose
    partitions of table ``test`` run with the partition tests' fast timers (+ ``settings``).

    Unlike ``tests.partition.helpers.start_node``, the node-wide settings are in place before
    anything starts, and ``wa_raft_app_sup`` is running when this returns.
    """
    node = otp.Node(f"{name}.t{next(_ids)}@local")
    with node.activate():
        env.set_env(APP, "raft_database", str(root / name))
        for key, value in {**FAST, **FAST_CATCHUP, **(settings or {})}.items():
            env.set_env(APP, key, value)
        for key, value in {**FAST_RAFT, **(raft or {})}.items():
            env.set_env(env.RAFT_APP, key, value)
        assert app.ensure_started(node) is not None
        args = [{"table": "test", "partition": p, **spec} for p in partitions]
        result = otp.supervisor.start_child("kernel_sup", sup.child_spec(APP, args))
        assert result[0] == "ok", result
    return node


def set_raft(node: otp.Node, **values: Any) -> None:
    """Change node-wide settings of a running node (read live)."""
    for key, value in values.items():
        env.set_env(env.RAFT_APP, key, value, node=node.id)


def set_app(node: otp.Node, **values: Any) -> None:
    """Change partition settings of a running node."""
    for key, value in values.items():
        env.set_env(APP, key, value, node=node.id)


def follow(target: otp.Node, leader: otp.Node | str, partition: int = 1) -> None:
    """Publish ``leader`` as the leader ``target``'s partition knows, as a heartbeat would: the
    transport manager takes snapshots only from the partition's leader."""
    leader_id = leader if isinstance(leader, str) else leader.id
    info.set_current_term_info("test", partition, 1, leader_id, None, node=target.id)


def admit(target: otp.Node | str, *senders: otp.Node | str, partition: int = 1) -> None:
    """Make ``senders`` the voting members of ``target``'s partition, ``target`` a non-voting
    participant, by bootstrapping its (fresh) replica: the transport manager takes transfers
    only from participants of the partition's config as its server knows it. ``target`` never
    stands for election (it does not vote) and the senders' replicas are not bootstrapped, so
    no Raft traffic follows."""
    name = f"raft_server_test_{partition}"
    target_id = target if isinstance(target, str) else target.id
    members = [Identity(name, s if isinstance(s, str) else s.id) for s in senders]
    config = server.make_config(members, participants=[Identity(name, target_id)])
    assert server.bootstrap((name, target_id), LogPos(1, 1), config) == "ok"


def on(node: otp.Node, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` with ``node`` current (its tables, registry and settings)."""
    with node.activate():
        return fn(*args, **kwargs)


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative name -> content) under ``root``."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` as relative name -> content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def sample_tree() -> dict[str, bytes]:
    """Nested directories, an empty file, binary data, a file of many chunks."""
    return {
        "top.txt": b"top level\n",
        "empty": b"",
        "a/b/c/deep.bin": bytes(range(256)) * 3,
        "a/sibling": os.urandom(5000),
        "big.dat": os.urandom(300_000),
    }


def status(node: otp.Node, transport_id: int) -> Any:
    return on(node, transport.transport_info, transport_id, "status")


def wait_status(node: otp.Node, transport_id: int, *statuses: str, timeout: float = 10.0) -> str:
    """Wait until the transport's record on ``node`` reaches one of ``statuses``."""
    found: str = wait_until(
        lambda: (s := status(node, transport_id)) in statuses and s,
        timeout=timeout,
    )
    return found


def receiver_ids(node: otp.Node) -> list[int]:
    """The IDs of the incoming transports ``node`` knows about, oldest first."""
    with node.activate():
        ids = transport.transports()
        return sorted(i for i in ids if transport.transport_info(i, "type") == "receiver")


def sender_ids(node: otp.Node) -> list[int]:
    with node.activate():
        ids = transport.transports()
        return sorted(i for i in ids if transport.transport_info(i, "type") == "sender")


def offer(
    node: otp.Node,
    transport_id: int,
    files: list[tuple[int, str, int]],
    *,
    meta: dict[str, Any] | None = None,
    sender: str = "fake@sender",
) -> Any:
    """Make a start handshake with ``node``'s manager directly, as a (possibly hostile) peer."""
    request = (
        "transport",
        transport_id,
        sender,
        "waraft.transport.dist_transport",
        meta or {"type": "transfer", "table": "test", "partition": 1},
        files,
    )
    return otp.call((transport.NAME, node.id), request)


def snapshot_meta(index: int = 5, term: int = 1, witness: bool = False) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "table": "test",
        "partition": 1,
        "position": (index, term),
        "witness": witness,
    }


# -- a stand-in chunk receiver -----------------------------------------------------------------


class ChunkLog:
    """What a ``HoldingReceiver`` saw, shared with the test thread."""

    def __init__(self, hold: bool = True) -> None:
        self.cond = threading.Condition()
        self.hold = hold
        self.chunks: list[tuple[int, int, int, int]] = []  # (id, file, offset, size)
        self.waiting: list[otp.ReplyTo] = []
        self.completions: list[Any] = []

    def wait_chunks(self, count: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.chunks) >= count, timeout)

    def release(self, count: int = 1) -> None:
        """Acknowledge the ``count`` oldest held chunks."""
        with self.cond:
            handles, self.waiting = self.waiting[:count], self.waiting[count:]
        for handle in handles:
            handle.reply("ok")

    def release_all(self) -> None:
        with self.cond:
            self.hold = False
        self.release(len(self.waiting))


class HoldingReceiver(otp.Process):
    """Stands in for ``wa_raft_dist_transport``: records chunks and, while ``log.hold``, keeps
    their acknowledgements back."""

    def init(self, log: ChunkLog) -> None:
        self.log = log

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request[0] == "complete":
            with self.log.cond:
                self.log.completions.append(request)
                self.log.cond.notify_all()
            return "ok"
        _, transport_id, file_id, offset, data = request
        with self.log.cond:
            self.log.chunks.append((transport_id, file_id, offset, len(data)))
            self.log.cond.notify_all()
            if self.log.hold:
                self.log.waiting.append(from_)
                return otp.NOREPLY
        return "ok"


class GatedReceiver(dist_transport.DistTransport):
    """The real chunk receiver (it writes every chunk and completes every file) that, while
    ``log.hold``, keeps back its ``"ok"`` answers; other answers go out at once."""

    def init(self, log: ChunkLog) -> None:  # type: ignore[override]
        super().init()
        self.log = log

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        answer = super().handle_call(request, from_)
        with self.log.cond:
            if request[0] == "chunk":
                _, transport_id, file_id, offset, data = request
                self.log.chunks.append((transport_id, file_id, offset, len(data)))
            else:
                self.log.completions.append((*request, answer))
            self.log.cond.notify_all()
            if self.log.hold and answer == "ok":
                self.log.waiting.append(from_)
                return otp.NOREPLY
        return answer


def replace_receiver(
    node: otp.Node, log: ChunkLog, receiver: type[otp.Process] = HoldingReceiver
) -> otp.Pid:
    """Stop ``node``'s chunk receiver and register ``receiver`` (a ``HoldingReceiver``, or a
    ``GatedReceiver``) in its place."""
    result = otp.supervisor.terminate_child((app.NAME, node.id), "wa_raft_dist_transport")
    assert result == "ok", result
    pid: otp.Pid = receiver.start(log, name=dist_transport.NAME, node=node)
    return pid


# -- cutting the file transport only -----------------------------------------------------------


class ChunkCutter:
    """A link filter that lets ``allow`` chunk requests through from transport workers to
    ``dst``, then drops the workers' traffic while ``cut`` is set. Raft traffic and the start
    handshake (which do not come from worker threads) always pass."""

    def __init__(self, dst: str, allow: int) -> None:
        self.dst = dst
        self.allow = allow
        self.seen = 0
        self.dropped = 0
        self.cut = True
        self.lock = threading.Lock()

    def __call__(self, src: str, dst: str) -> bool:
        if dst != self.dst or not threading.current_thread().name.startswith("otp:TransportWorker"):
            return True
        with self.lock:
            self.seen += 1
            if self.cut and self.seen > self.allow:
                self.dropped += 1
                return False
        return True

    def install(self) -> None:
        otp.node.set_link_filter(self)

    def heal(self) -> None:
        with self.lock:
            self.cut = False
