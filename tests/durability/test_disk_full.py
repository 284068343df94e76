"""Write errors (issue 7, item 7: "disk full gives a clear error and no corruption").

A full disk is simulated without root: a follower is restarted with ``RLIMIT_FSIZE`` (and
SIGXFSZ ignored), so that a write past the limit fails with ``EFBIG`` as a write to a full disk
fails with ``ENOSPC``. The limit is chosen so that the file that hits it first is known: a disk
log segment (after large values made the segments far larger than anything else), or SQLite's
WAL (which grows by pages, to about 4 MiB before each checkpoint). Then:

* the node reports the failed write in its log (``LogWriteError`` naming the log directory and
  ``EFBIG``; SQLite's ``OperationalError``);
* the rest of the cluster goes on committing;
* after the limit is lifted (the node restarted without it), the node rejoins from its own
  data: no corruption is found on open, and its storage holds every acknowledged write.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.durability.helpers import (
    DISK_LOG,
    Writers,
    client_for,
    cluster_of,
    follower_of_all,
    local_mismatches,
    segments,
    strong_read_mismatches,
    wait_rejoined,
)
from tests.multiprocess.harness import (
    ROOT,
    Cluster,
    NodeProcess,
    _started,
    child_env,
    wait_until,
    waraft_cmd,
)
from waraft.client import Client

PARTITIONS = (1, 2)
MIB = 1024 * 1024
MARGIN = MIB // 4
"""Bytes a file of the limited node may still grow by."""


# Run in the child before it becomes the node (exec), rather than in a preexec_fn, which is
# unsafe in a test process that runs threads. Ignored signals stay ignored across exec: a
# write past the limit fails with EFBIG instead of killing the process with SIGXFSZ.
LAUNCHER = """
import os, resource, signal, sys
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.argv[2], sys.argv[2:])
"""


class LimitedNode(NodeProcess):
    """A node process whose files may not grow past ``limit`` bytes (``RLIMIT_FSIZE``)."""

    limit: int | None = None

    def spawn(self) -> None:
        cmd = waraft_cmd(
            "node", "--name", self.name, "--listen", f"127.0.0.1:{self.port}",
            "--data-dir", str(self.data_dir), *self.extra,
        )  # fmt: skip
        if self.limit is not None:
            cmd = [sys.executable, "-c", LAUNCHER, str(self.limit), *cmd]
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=ROOT,
                env=child_env(),
            )
        _started.add(self.proc.pid)


SQLITE = "waraft.storage.sqlite:SqliteStorage"
TARGETS: dict[str, tuple[dict[str, object], str]] = {
    # target: (cluster settings, what the node's log must show)
    # A disk log segment grows past the limit first (the default storage, LMDB).
    "log": (DISK_LOG, "LogWriteError"),
    # LMDB's data.mdb: small segment files, and a bulk load makes data.mdb the largest file.
    "lmdb": ({"raft_max_log_records_per_file": 50, **DISK_LOG}, "lmdb.Error"),
    # The node-wide WAL file (the node's default log) grows past the limit first.
    # It stalls (new writes refused, retried with backoff) rather than crash the partition.
    "wal": ({}, "refusing new writes"),
    # SQLite's WAL (it grows by pages to about 4 MiB before each checkpoint).
    "sqlite": ({"raft_storage_module": SQLITE}, "OperationalError"),
}


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster(
    tmp_path_factory: pytest.TempPathFactory, dist_node: str, target: str
) -> Iterator[Cluster]:
    settings = TARGETS[target][0]
    yield from cluster_of(tmp_path_factory.mktemp("diskfull"), PARTITIONS, **settings)


def _sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _limit_for(data_dir: Path, target: str) -> int:
    """A file size limit that the target kind of file reaches first."""
    sizes = _sizes(data_dir)
    segs = {k: v for k, v in sizes.items() if k.endswith(".wal")}  # segments, or the WAL
    big = {k: v for k, v in sizes.items() if k.endswith(("-wal", "data.mdb"))}
    others = {k: v for k, v in sizes.items() if k not in segs and k not in big}
    if target in ("log", "wal"):
        # Every storage file stays far below the segments while the node runs limited.
        limit = max(segs.values()) + MARGIN
        assert max({**big, **others}.values()) + 4 * MIB < limit, sizes
    else:
        limit = max({**segs, **others}.values()) + MARGIN
        if target == "sqlite":  # the WAL grows to 4 MiB before a checkpoint: it gets there
            assert limit < 3 * MIB, sizes
        else:  # LMDB's data.mdb already extends past it: new pages go there
            assert max(big.values()) > limit, sizes
    return limit


def _as_limited(cluster: Cluster, index: int) -> LimitedNode:
    old = cluster.nodes[index]
    node = LimitedNode(cluster.root, old.name, old.extra)
    node.port, node.node_id = old.port, old.node_id
    cluster.nodes[index] = node
    return node


def _bulk(client: Client, victim: NodeProcess, size: int) -> None:
    """Overwrite a few keys with large values until every log segment file of ``victim`` is
    over ``size`` bytes: its log files are then much larger than its storage files (the data
    stays small)."""
    blob = "x" * 8192
    round_ = 0

    def grown() -> bool:
        return all(s.stat().st_size > size for p in PARTITIONS for s in segments(victim, p)[-1:])

    while not grown():
        round_ += 1
        futures = [
            client.commit_async(f"bulk{i}", ("write", "kv", f"bulk{i}", f"{round_}{blob}"))
            for i in range(64)
        ]
        assert all(f is not None and f.result(30) == "ok" for f in futures)


def _bulk_wal(client: Client, victim: NodeProcess, size: int) -> None:
    """As ``_bulk``, until the victim's active WAL file is over ``size`` bytes."""
    blob = "x" * 8192
    round_ = 0

    def grown() -> bool:
        files = sorted((victim.data_dir / "wal").glob("*.wal"))
        return bool(files) and files[-1].stat().st_size > size

    while not grown():
        round_ += 1
        futures = [
            client.commit_async(f"bulk{i}", ("write", "kv", f"bulk{i}", f"{round_}{blob}"))
            for i in range(64)
        ]
        assert all(f is not None and f.result(30) == "ok" for f in futures)


def _load_distinct(cluster: Cluster, count: int) -> None:
    """``count`` distinct keys with 4 KiB values, one log entry each (small log entries,
    several MiB of storage)."""
    with Client(cluster.ids, table="kv", partitions=len(PARTITIONS), pack=False) as client:
        futures = [
            client.commit_async(f"big{i}", ("write", "kv", f"big{i}", f"{i}" + "y" * 4096))
            for i in range(count)
        ]
        assert all(f is not None and f.result(60) == "ok" for f in futures)


def test_a_full_disk_fails_cleanly_and_the_node_rejoins_intact(
    cluster: Cluster, target: str
) -> None:
    error = TARGETS[target][1]
    victim = follower_of_all(cluster)
    victim_id = cluster.ids[victim]
    client = client_for(cluster.ids, len(PARTITIONS))
    try:
        if target == "log":
            _bulk(client, cluster.nodes[victim], 10 * MIB)
        elif target == "wal":
            _bulk_wal(client, cluster.nodes[victim], 10 * MIB)
        elif target == "lmdb":
            _load_distinct(cluster, 1500)
        with Writers(client, "f") as writers:
            writers.wait_for(2000)
            cluster.nodes[victim].kill()
            node = _as_limited(cluster, victim)
            # A fresh stderr log for the limited run: the limit applies to it as well.
            node.log_path = cluster.root / f"{node.name}-limited.log"
            node.limit = _limit_for(node.data_dir, target)
            cluster.start([victim])
            text = wait_until(lambda: _write_error(node.log_path), timeout=40)
            # The others go on committing without it.
            writers.wait_for(1000, timeout=40)
            node.kill()
            node.limit = None
            node.log_path = cluster.root / f"{node.name}-after.log"
            cluster.start([victim])
            acked = writers.snapshot()
            wait_rejoined(cluster, victim, acked)
        assert writers.unexpected == []
        acked = writers.snapshot()
        assert error in text, text[-3000:]
        if target in ("log", "wal"):  # the error names the cause and the log's directory
            assert "File too large" in text and str(node.data_dir) in text, text[-3000:]
        after = node.log_path.read_text()
        # Nothing corrupt was left behind (a torn tail is legitimate: SIGKILL may land in the
        # middle of a write of the partition that had room).
        assert "quarantined" not in after and "disabled" not in after, after[-3000:]
        wait_until(cluster.converged, timeout=30)
        assert local_mismatches(victim_id, acked, len(PARTITIONS)) == {}
        assert strong_read_mismatches(client, acked) == {}
    finally:
        client.close()


def _write_error(log: Path) -> str | None:
    text = log.read_text(errors="replace")
    found = ("LogWriteError", "OperationalError", "lmdb.Error", "Error: mdb_", "refusing new")
    return text if any(word in text for word in found) else None
