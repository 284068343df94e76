"""``make demo``: the kvstore example end to end on a real 3-process cluster.

Run from the repository root: ``python examples/demo.py`` (``--keep`` leaves the data directory
behind). It starts three ``waraft node`` processes on 127.0.0.1 (durable providers, data in a
temporary directory), bootstraps the four partitions, writes and reads keys through different
nodes, prints the status table, SIGKILLs the leader of partition 1, shows the new leader and
the data intact, restarts the killed node and shows it catch up, then stops every node and
checks that no process is left. Exit status 0 when every step checked out.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python examples/demo.py` from a fresh clone

from examples.kvstore import PARTITIONS, TABLE, partition  # noqa: E402
from examples.kvstore.client import KVStore  # noqa: E402
from examples.kvstore.cluster import LocalCluster  # noqa: E402

# Small timeouts so that failover fits in a demo; WARaft's defaults are 5-7.5 s elections.
SETTINGS = {
    "raft_election_timeout_ms": 300,
    "raft_election_timeout_ms_max": 600,
    "raft_heartbeat_interval_ms": 50,
    # A restarted node that has not heard its leader yet must not depose it (Raft §9.6).
    "raft_election_pre_vote": True,
}
DIST: dict[str, Any] = {"ping_interval": 0.2, "down_after": 1.0}
STEP_TIMEOUT = 20.0

_t0 = time.monotonic()


class DemoFailed(Exception):
    """A step did not check out."""


STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


_stopping: dict[str, Any] = {}
"""What a stop signal must clean up: ``root`` (the data directory) and ``cluster``."""


def _on_stop_signal(signum: int, frame: Any) -> None:
    # SIGTERM (timeout, CI cancelling, kill) and SIGHUP (the terminal closed) ended the
    # process at once: no finally ran, and the nodes, in their own sessions, served on.
    # The cleanup runs here and the process leaves with os._exit: unwinding an exception
    # from wherever the signal landed (a thread's start, a lock, a client call) left the
    # demo hanging now and then in a test, and only pids, signals and files are touched.
    ignore_stop_signals()
    os.write(1, f"\ndemo interrupted by {signal.Signals(signum).name}: stopping\n".encode())
    cluster = _stopping.get("cluster")
    if cluster is not None:
        _stop_nodes([n.pid for n in cluster.nodes if n.pid is not None])
    root = _stopping.get("root")
    if root is not None and not _stopping.get("keep"):
        shutil.rmtree(root, ignore_errors=True)
    os._exit(128 + signum)


def _stop_nodes(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM ``pids`` (children of this process), reap them, SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if not _reaped(pid)]
            time.sleep(0.05)


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # reaped already (or not ours)
    return done == pid


def catch_stop_signals() -> None:
    """Make each stop signal stop the nodes, remove the data directory and exit 128 +
    the signal (``_on_stop_signal``)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)


def ignore_stop_signals() -> None:
    """From the first stop signal on, or once the cleanup began: the cleanup is bounded
    (``LocalCluster.stop``), and a second signal interrupting it would leave nodes behind."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def say(text: str = "") -> None:
    print(f"[{time.monotonic() - _t0:5.1f}s] {text}" if text else "", flush=True)


def step(title: str) -> None:
    print(flush=True)
    say(f"== {title}")


def wait_for(what: str, predicate: Any, timeout: float = STEP_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        time.sleep(0.05)


def rows_by(node_ids: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    from waraft.cli import ops

    return {
        (row["node"], row["partition"]): row
        for row in ops.collect_status(node_ids, timeout=2.0)
        if "error" not in row
    }


def write_keys(kv: KVStore, keys: list[str], tag: str) -> None:
    futures = [kv.write_async(key, f"{tag}:{key}") for key in keys]
    results = [f.result() for f in futures]
    bad = [(k, r) for k, r in zip(keys, results, strict=True) if r != "ok"]
    if bad:
        raise DemoFailed(f"writes failed: {bad[:5]}")


def check_keys(kv: KVStore, expected: dict[str, str]) -> None:
    keys = list(expected)
    results = [f.result() for f in [kv.read_async(key) for key in keys]]
    wrong = [(k, r) for k, r in zip(keys, results, strict=True) if r != ("ok", expected[k])]
    if wrong:
        raise DemoFailed(f"{len(wrong)} keys wrong, e.g. {wrong[:3]}")


def print_status(node_ids: list[str]) -> None:
    from waraft.cli import ops

    for line in ops.format_table(ops.collect_status(node_ids, timeout=2.0)).splitlines():
        print("    " + line)


def print_metrics(cluster: LocalCluster) -> None:
    """What a Prometheus server scraping the nodes sees (a few of n1's samples)."""
    import urllib.request

    for node in cluster.nodes:
        say(
            f"{node.name} serves Prometheus metrics at http://127.0.0.1:{node.metrics_port}/metrics"
        )
    first = cluster.nodes[0]
    url = f"http://127.0.0.1:{first.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=STEP_TIMEOUT) as answer:
        text = answer.read().decode()
    shown = [
        line
        for line in text.splitlines()
        if line.startswith(("waraft_partition_term{", "waraft_partition_info{", "waraft_peers_up"))
    ]
    say(f"{first.name}: {len(text.splitlines())} lines, e.g.")
    for line in shown[:7]:
        say(f"  {line}")


def run(root: Path) -> None:
    from waraft.cli import common, ops
    from waraft.distribution import keys

    # Secure by default: every node, and this process, connects with a key of the cluster
    # (`waraft keys create DIR --nodes n1,n2,n3`); this process acts as the admin.
    key_dir = root / "keys"
    keys.create(key_dir, ["n1", "n2", "n3"])
    # tied: the nodes stop when this process is gone, even after a kill -9.
    cluster = LocalCluster(
        root, 3, base_port=0, settings=SETTINGS, dist=DIST, keys=key_dir, metrics=True, tied=True
    )
    _stopping["cluster"] = cluster
    try:
        step("1. Start 3 node processes (durable: WalLog + NodeLmdbStorage, CURVE keys)")
        say(f"data under {root}, keys in {key_dir}")
        cluster.start()
        for node in cluster.nodes:
            say(f"{node.name} is {node.node_id} (pid {node.pid})")
        ids = cluster.node_ids
        with common.client_node(
            ids,
            keys=str(key_dir),
            key_name="admin",
            **DIST,
            connect_timeout=DIST["down_after"],
        ):
            _scenario(cluster, ids, ops)
    finally:
        ignore_stop_signals()
        step("8. Stop everything")
        for line in cluster.stop(timeout=10.0):
            say(line)
        left = cluster.leftovers()
        if left:
            raise DemoFailed(f"processes left behind: {left}")
        say("no node process left running")


def _scenario(cluster: LocalCluster, ids: list[str], ops: Any) -> None:
    step(f"2. Bootstrap the {len(PARTITIONS)} partitions of table {TABLE!r} on all 3 nodes")
    for result in ops.bootstrap_cluster(ids, TABLE, PARTITIONS, timeout=STEP_TIMEOUT):
        if result.error:
            raise DemoFailed(f"{TABLE}.{result.partition}: {result.error}")
        say(f"{TABLE}.{result.partition}: leader {result.leader} (term {result.term})")

    step("3. Write through n1, read back through n3")
    keys = [f"key-{i:02d}" for i in range(40)]
    expected = {key: f"v1:{key}" for key in keys}
    with KVStore([ids[0]]) as via_n1, KVStore([ids[2]]) as via_n3:
        write_keys(via_n1, keys, "v1")
        say(f"wrote {len(keys)} keys through {ids[0]}")
        check_keys(via_n3, expected)
        say(f"read all {len(keys)} back through {ids[2]}; e.g.")
        for key in keys[:4]:
            say(f"  {key} -> partition {partition(key)} -> {via_n3.read(key)!r}")

    step("4. Status of every partition on every node")
    print_status(ids)
    print_metrics(cluster)

    step("5. SIGKILL the leader of partition 1")
    old_leader, old_term = ops.find_leader(ids, TABLE, 1)
    if old_leader is None:
        raise DemoFailed("partition 1 has no leader")
    victim = ids.index(old_leader)
    led = [p for p in PARTITIONS if ops.find_leader(ids, TABLE, p)[0] == old_leader]
    before = rows_by([old_leader])
    cluster.kill(victim)
    killed_at = time.monotonic()
    say(f"killed {old_leader} (pid {cluster.nodes[victim].pid}), leader of "
        + ", ".join(f"{TABLE}.{p}" for p in led))  # fmt: skip
    survivors = [n for n in ids if n != old_leader]

    def new_leader() -> Any:
        leader, term = ops.find_leader(survivors, TABLE, 1)
        return (leader, term) if leader in survivors and term and term > (old_term or 0) else None

    leader, term = wait_for("a new leader of partition 1", new_leader)
    say(f"new leader of {TABLE}.1: {leader} (term {term}), "
        f"{time.monotonic() - killed_at:.1f} s after the kill")  # fmt: skip
    more = [f"key-{i:03d}" for i in range(40, 240)]
    with KVStore(survivors, timeout=STEP_TIMEOUT) as kv:
        write_keys(kv, more, "v2")
        expected.update({key: f"v2:{key}" for key in more})
        say(f"wrote {len(more)} more keys with {old_leader} down")
        check_keys(kv, expected)
        say(f"all {len(expected)} keys read back intact through the surviving nodes")
    print_status(ids)

    step(f"6. Restart {old_leader} on its data directory")
    cluster.start([victim])
    say(f"{old_leader} is back (pid {cluster.nodes[victim].pid})")

    def caught_up() -> Any:
        rows = rows_by(ids)
        lines = []
        for p in PARTITIONS:
            mine = rows.get((old_leader, p))
            leader_now = next(
                (r for (n, q), r in rows.items() if q == p and r.get("state") == "leader"), None
            )
            if mine is None or leader_now is None or mine["applied"] < leader_now["applied"]:
                return None
            at_kill = before.get((old_leader, p), {}).get("applied", "?")
            lines.append(
                f"{TABLE}.{p}: {old_leader} {mine['state']}, applied {at_kill} at the kill -> "
                f"{mine['applied']} now = leader {leader_now['node']} applied "
                f"{leader_now['applied']}"
            )
        return lines

    for line in wait_for(f"{old_leader} to catch up", caught_up):
        say(line)

    step(f"7. Read every key through {old_leader} only")
    with KVStore([old_leader], timeout=STEP_TIMEOUT) as kv:
        check_keys(kv, expected)
    say(f"all {len(expected)} keys readable (strong reads, redirected to each leader)")
    print_status(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the narration is the output; nodes log to files
    root = Path(tempfile.mkdtemp(prefix="waraft-demo-"))
    print("waraft demo: WARaft's kvstore example on a 3-process cluster (127.0.0.1)", flush=True)
    _stopping.update(root=root, keep=args.keep)
    try:
        catch_stop_signals()
        run(root)
    except (DemoFailed, RuntimeError) as exc:
        print(flush=True)
        say(f"DEMO FAILED: {exc}")
        for log in sorted(root.glob("n*.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- last lines of {log}:", *tail, sep="\n    ")
        return 1
    finally:
        if args.keep:
            say(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(flush=True)
    say("demo complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
