"""A real full disk under a follower: ``make full-disk-drill`` (root only: it mounts a tmpfs).

Three durable nodes on 127.0.0.1 (``tests.multiprocess.harness.Cluster``); the data directory
of n2 is a small tmpfs (``--size``, default 24 MiB). Writes of 4 KB values fill it; after
``--full`` seconds the tmpfs is remounted bigger (room returns). The drill then checks, and
prints ``PASS`` or ``FAIL`` with the reasons:

1. n2 stayed up, and no partition of it restarted (no ``failed to start`` in its log);
2. within ``--catch-up`` seconds of room returning, every partition of n2 has applied as far
   as its leader (a follower left far behind is caught up by a snapshot);
3. the same after n2 is killed (-9) and restarted.

It also prints how many snapshot installs n2 refused (a leader retries them).

Unlike ``tests/durability/test_disk_full.py`` (a file-size limit: only the files that reach it
fail) and ``tests/partition/test_enospc.py`` (injected errors), every write of the node finds
the disk full here: the WAL, the durable state, the node's LMDB, received snapshot files.
Every process it starts is killed by pid, and the tmpfs is unmounted, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.durability.helpers import TABLE, client_for
from tests.multiprocess.harness import DOWN, PING, Cluster
from waraft import distribution as dist

PARTITIONS = (1, 2)
VALUE = "x" * 4000


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(cluster: Cluster, mount: Path, seconds: float) -> int:
    """Commit 4 KB values for ``seconds``; the number acknowledged."""
    client = client_for(cluster.ids, len(PARTITIONS))
    acked, i, started = 0, 0, time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            keys = [f"k{i + n}" for n in range(50)]
            futures = [client.commit_async(k, ("write", TABLE, k, VALUE)) for k in keys]
            acked += sum(1 for f in futures if f is not None and f.result(30) == "ok")
            i += 50
    finally:
        client.close()
    print(f"filled: {acked} writes acknowledged, {_free(mount) // 1024} KiB free on n2")
    return acked


def _caught_up(cluster: Cluster, node: str, within: float) -> str | None:
    """None once every partition of ``node`` has applied as far as its leader, else why not."""
    deadline = time.monotonic() + within
    behind = "no status"
    while time.monotonic() < deadline:
        rows = cluster.rows()
        behind = ""
        for partition in PARTITIONS:
            mine = rows.get((node, partition))
            leader = cluster.leader(partition)
            theirs = rows.get((leader[0], partition)) if leader else None
            if mine is None or theirs is None:
                behind += f" p{partition}: no status or leader;"
            elif mine["applied"] < theirs["commit"]:
                behind += f" p{partition}: applied {mine['applied']} of {theirs['commit']};"
        if not behind:
            return None
        time.sleep(1.0)
    return behind.strip()


def drill(root: Path, size: str, full_s: float, catch_up_s: float) -> list[str]:
    """Run the drill under ``root``; the failures (empty: passed)."""
    mount = root / "n2"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    failures: list[str] = []
    dist.start("drill@127.0.0.1:0", ping_interval=PING, down_after=DOWN, connect_timeout=DOWN)
    cluster = Cluster(root, partitions=PARTITIONS)
    try:
        cluster.start()
        cluster.bootstrap()
        _fill(cluster, mount, full_s)
        n2 = cluster.nodes[1]
        node = cluster.ids[1]
        if not n2.alive():
            failures.append("n2 exited while its disk was full")
        if "failed to start" in n2.log_path.read_text():
            failures.append("a partition of n2 failed to restart while its disk was full")
        subprocess.run(["mount", "-o", "remount,size=2g", str(mount)], check=True)
        print(f"room returned: {_free(mount) // 1024} KiB free on n2")
        behind = _caught_up(cluster, node, catch_up_s)
        if behind:
            failures.append(f"n2 not caught up {catch_up_s:.0f} s after room returned:{behind}")
        n2.kill()
        n2.spawn()
        n2.wait_ready()
        behind = _caught_up(cluster, node, catch_up_s)
        if behind:
            failures.append(f"n2 not caught up {catch_up_s:.0f} s after its restart: {behind}")
        refused = n2.log_path.read_text().count("cannot install snapshot")
        if refused:
            # Expected while the disk is full; not once room has returned.
            print(f"n2 refused {refused} snapshot install(s) (each retried by its leader)")
    finally:
        cluster.kill_all()
        dist.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="24m", help="the tmpfs under n2 (default 24m)")
    parser.add_argument("--full", type=float, default=10.0, help="seconds of writes (10)")
    parser.add_argument("--catch-up", type=float, default=60.0, help="seconds allowed (60)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the drill mounts a tmpfs: run it as root", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="waraft-full-disk-"))
    failures = drill(root, args.size, args.full, args.catch_up)
    print("\n".join(f"FAIL: {f}" for f in failures) or "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
