"""Shared tools of the durability tests: background writers that record every acknowledged
write, the checks that every one of them is readable (strongly, and in a given node's own
storage), catch-up waits, and readers/writers of the disk log's segment files.

Node processes come from ``tests.multiprocess.harness`` (``Cluster``, ``NodeProcess``): on
127.0.0.1, a restart reuses the node's port and data directory, and every process is killed by
pid in the fixtures' finalizers.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.multiprocess.conftest import make_cluster
from tests.multiprocess.harness import Cluster, NodeProcess, wait_until
from waraft.client import Client, partition_for

TABLE = "kv"
SEGMENT_HEADER = struct.Struct("<8sQ")  # waraft.log.disk's format, restated to test it
RECORD_HEADER = struct.Struct("<II")
WRITE_TIMEOUT = 20.0
DISK_LOG: dict[str, object] = {"raft_log_module": "waraft.log.disk:DiskLog"}
"""Settings for tests of the per-partition segment-file log (the node's default is the WAL)."""


def cluster_of(root: Path, partitions: Sequence[int], **settings: object) -> Iterator[Cluster]:
    """A bootstrapped 3-node durable cluster (``make_cluster``), killed by pid at the end."""
    yield from make_cluster(root, 3, partitions=tuple(partitions), **settings)


def client_for(nodes: Sequence[str], partitions: int) -> Client:
    return Client(list(nodes), table=TABLE, partitions=partitions, timeout=WRITE_TIMEOUT,
                  attempt_timeout=2.0)  # fmt: skip


class Writers:
    """``threads`` writers, each committing a window of unique keys at a time through
    ``commit_async`` and recording those acknowledged ``"ok"`` (key → value).

    Any other result must be an ``("error", reason)`` (the write may or may not have been
    applied: at least once); anything else is recorded in ``unexpected``.
    """

    def __init__(self, client: Client, prefix: str, threads: int = 4, window: int = 25) -> None:
        self.client = client
        self.prefix = prefix
        self.window = window
        self.acked: dict[str, int] = {}
        self.errors: list[tuple[str, Any]] = []
        self.unexpected: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(w,), name=f"writer-{prefix}{w}", daemon=True)
            for w in range(threads)
        ]

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, w: int) -> None:
        i = 0
        while not self._stop.is_set():
            keys = [f"{self.prefix}{w}-{i + n}" for n in range(self.window)]
            futures = [
                self.client.commit_async(k, ("write", TABLE, k, i + n)) for n, k in enumerate(keys)
            ]
            for n, (key, future) in enumerate(zip(keys, futures, strict=True)):
                assert future is not None
                result = future.result(WRITE_TIMEOUT + 10)
                with self._lock:
                    if result == "ok":
                        self.acked[key] = i + n
                    elif isinstance(result, tuple) and result and result[0] == "error":
                        self.errors.append((key, result))
                    else:
                        self.unexpected.append((key, result))
            i += self.window

    def stop(self) -> None:
        """Stop and wait for the writers (their last window completes or times out)."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(WRITE_TIMEOUT + 15)
        assert not any(t.is_alive() for t in self._threads), "a writer is stuck"

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def snapshot(self) -> dict[str, int]:
        """A copy of the writes acknowledged so far."""
        with self._lock:
            return dict(self.acked)

    def wait_for(self, more: int, timeout: float = 30.0) -> int:
        """Wait until ``more`` further writes are acknowledged; returns the new count. On
        timeout the failure says what this process's client and distribution node saw (the
        writes are this process's, so that is where a stall shows)."""
        target = self.count() + more
        try:
            return int(wait_until(lambda: self.count() >= target and self.count(), timeout=timeout))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self._diagnosis()}") from None

    def _diagnosis(self) -> str:
        from waraft import distribution as dist

        with self._lock:
            errors = self.errors[-5:]
        lines = [
            f"acked {self.count()}, last errors {errors}",
            f"client {self.client.stats()} leaders {self.client.leaders()}",
        ]
        if dist.is_started():
            lines.append(f"dist stats {dist.stats()}")
            lines.extend(f"peer {node} {state}" for node, state in sorted(dist.peers().items()))
        frames = sys._current_frames()
        for thread in threading.enumerate():
            lines.append(f"thread {thread.name}")
            frame = frames.get(thread.ident or 0)
            if thread.name.startswith("dist:") and frame is not None:
                lines.extend(traceback.format_stack(frame)[-4:])
        return "\n".join(lines)


# -- checks ----------------------------------------------------------------------------------------


def strong_read_mismatches(client: Client, expected: dict[str, Any]) -> dict[str, Any]:
    """Keys whose strong (leader) read does not return the expected value."""
    keys = list(expected)
    futures = [client.read_async(k, ("read", TABLE, k)) for k in keys]
    results = [f.result(WRITE_TIMEOUT + 10) for f in futures if f is not None]
    return {k: r for k, r in zip(keys, results, strict=True) if r != ("ok", expected[k])}


def local_mismatches(
    node: str, expected: dict[str, Any], partitions: int, chunk: int | None = None
) -> dict[str, Any]:
    """Keys whose value in ``node``'s own storage (a local read through its storage actor
    over distribution, no Raft involved) is not the expected one. Read ``chunk`` keys at a
    time, by default as many as one read may hold (``raft_max_reads_per_batch``)."""
    from waraft import storage
    from waraft.core.settings import Settings

    chunk = chunk or Settings().raft_max_reads_per_batch

    by_partition: dict[int, list[str]] = {}
    for key in expected:
        by_partition.setdefault(partition_for(key, partitions), []).append(key)
    wrong: dict[str, Any] = {}
    for partition, keys in sorted(by_partition.items()):
        name = storage.default_name(TABLE, partition)
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            command = ("$batch", [("read", TABLE, k) for k in part])
            results = storage.read((name, node), command)
            for key, result in zip(part, results, strict=True):
                if result != ("ok", expected[key]):
                    wrong[key] = result
    return wrong


def wait_local_complete(
    node: str, expected: dict[str, Any], partitions: int, timeout: float = 15.0
) -> None:
    """Wait until ``node``'s own storage holds every expected write (it may still be applying
    the tail); fails with a sample of the missing ones."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = local_mismatches(node, expected, partitions)
        if not wrong:
            return
        if time.monotonic() > deadline:
            sample = dict(list(wrong.items())[:5])
            raise AssertionError(f"{node} lacks {len(wrong)} acknowledged writes, e.g. {sample}")
        time.sleep(0.1)


def leader_commits(cluster: Cluster) -> dict[int, int]:
    """Each partition's commit index at its (agreed) leader, now."""
    commits: dict[int, int] = {}
    for partition in cluster.partitions:
        leader, _ = wait_until(lambda p=partition: cluster.leader(p), timeout=30)
        row = wait_until(lambda p=partition, n=leader: cluster.rows([n]).get((n, p)))
        commits[partition] = int(row["commit"])
    return commits


def wait_caught_up(cluster: Cluster, index: int, timeout: float = 30.0) -> dict[int, int]:
    """Wait until node ``index`` follows every partition and has applied at least what each
    leader had committed when this was called; returns those commit indexes."""
    node = cluster.ids[index]
    target = leader_commits(cluster)

    def done() -> bool:
        rows = cluster.rows([node])
        for partition, commit in target.items():
            row = rows.get((node, partition))
            if row is None or row["applied"] is None or row["applied"] < commit:
                return False
            if row["state"] not in ("follower", "leader"):
                return False
        return True

    wait_until(done, timeout=timeout)
    return target


def wait_rejoined(
    cluster: Cluster, index: int, expected: dict[str, Any], timeout: float = 40.0
) -> None:
    """Wait until node ``index`` is caught up (``wait_caught_up``) and its own storage holds
    every write of ``expected``."""
    wait_caught_up(cluster, index, timeout=timeout)
    wait_local_complete(cluster.ids[index], expected, len(cluster.partitions))


def follower_of_all(cluster: Cluster) -> int:
    """The index of a node that leads no partition, once the cluster converged (bootstrap
    leaves one so with two partitions on three nodes)."""
    wait_until(cluster.converged, timeout=30)
    leaders = {wait_until(lambda p=p: cluster.leader(p))[0] for p in cluster.partitions}
    return next(i for i, node in enumerate(cluster.ids) if node not in leaders)


def settled(cluster: Cluster, writers: Writers) -> dict[str, int]:
    """Once ``writers`` stopped: none of their writes failed unexpectedly; waits for the
    cluster to converge and returns the acknowledged writes."""
    assert writers.unexpected == [], writers.unexpected[:5]
    acked = writers.snapshot()
    wait_until(cluster.converged, timeout=30)
    return acked


def row_of(cluster: Cluster, index: int, partition: int) -> dict[str, Any]:
    node = cluster.ids[index]
    row: dict[str, Any] = wait_until(lambda: cluster.rows([node]).get((node, partition)))
    return row


_BECAME_LEADER = re.compile(r"Server\[(\S+)@(\S+), term (\d+)\] becomes leader")


def assert_one_leader_per_term(nodes: Sequence[NodeProcess]) -> int:
    """Election safety, from the nodes' logs (every start of every node appends to the same
    file): no two nodes ever became leader of a partition in the same term (a node that forgot
    its vote or term across kill -9 could let that happen). Returns how many elections were
    won."""
    winners: dict[tuple[str, int], set[str]] = {}
    for node in nodes:
        for match in _BECAME_LEADER.finditer(node.log_path.read_text(errors="replace")):
            key = (match.group(1), int(match.group(3)))
            winners.setdefault(key, set()).add(match.group(2))
    twice = {key: who for key, who in winners.items() if len(who) > 1}
    assert twice == {}, f"two leaders in one term: {twice}"
    return len(winners)


# -- the disk log's files ----------------------------------------------------------------------


def partition_dir(node: NodeProcess, partition: int) -> Path:
    return node.data_dir / f"{TABLE}.{partition}"


def segments(node: NodeProcess, partition: int) -> list[Path]:
    """The log segment files of ``node``'s replica of ``partition``, oldest first."""
    return sorted((partition_dir(node, partition) / "log").glob("*.wal"))


def records(path: Path) -> list[tuple[int, int]]:
    """``(offset, total length)`` of every CRC-valid record in a segment file."""
    data = path.read_bytes()
    pos, found = SEGMENT_HEADER.size, []
    while pos + RECORD_HEADER.size <= len(data):
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        body = pos + RECORD_HEADER.size
        if body + length > len(data) or zlib.crc32(data[body : body + length]) != crc:
            break
        found.append((pos, RECORD_HEADER.size + length))
        pos = body + length
    return found


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
