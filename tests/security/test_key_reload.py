"""Adding and replacing keys of a running keyed cluster (review O, finding 5).

A keyed (CURVE) cluster had no way to take a new node without downtime: ``waraft keys create``
refused the existing directory, running nodes never re-read ``cluster.json``, and a node added
by hand to the file stayed stalled until every node that might lead was restarted. Now
``waraft keys add`` adds the key in place and the running nodes take it on SIGHUP or on
``waraft keys reload`` (the admin right); a file they cannot take is refused and changes
nothing; a replaced key's open connections are refused. One 3-node cluster (one partition)
is shared by the module, in the order of the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.multiprocess.harness import (
    ROOT,
    WAIT,
    Cluster,
    NodeProcess,
    child_env,
    wait_until,
    waraft_cmd,
)
from tests.security.attacker import CALM
from waraft import distribution as dist
from waraft import otp
from waraft.client import Client
from waraft.core.types import Identity
from waraft.distribution import keys
from waraft.partition import server

NAME = server.default_name("kv", 1)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        waraft_cmd(*args), cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys") / "keys"
    keys.create(root, ["n1", "n2", "n3"], ["client", "mallory"], ["admin"])
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, key_dir: Path) -> Iterator[Cluster]:
    """The cluster, watched from this process with the admin key."""
    dist.start(
        f"{keys.process_name('admin', 'pytest')}@127.0.0.1:0",
        curve=keys.load(key_dir, "admin"),
        ping_interval=0.2,
        down_after=0.8,
        connect_timeout=0.8,
    )
    cluster = Cluster(
        tmp_path_factory.mktemp("rekey"), 3, partitions=(1,), settings=CALM, keys=str(key_dir)
    )
    try:
        cluster.start()
        cluster.bootstrap()
        wait_until(cluster.converged)
        yield cluster
    finally:
        for node in cluster.nodes:
            node.kill()
        extra = getattr(cluster, "extra_nodes", [])
        for node in extra:
            node.kill()
        dist.stop()
        otp.node.stop_all(timeout=5.0)


def _reload_all(cluster: Cluster) -> list[Any]:
    return [cluster.admin(i, "reload_keys") for i in range(len(cluster.nodes))]


def _commit(cluster: Cluster, value: str) -> None:
    client = Client(cluster.ids, table="kv", partitions=1, timeout=15.0, discover=False)
    try:
        assert client.commit(1, ("write", "kv", "k", value)) == "ok"
    finally:
        client.close()


def test_a_cluster_json_a_node_cannot_take_is_refused_and_changes_nothing(
    cluster: Cluster, key_dir: Path
) -> None:
    path = key_dir / keys.CLUSTER_FILE
    good = path.read_text()
    identities = json.loads(good)["identities"]
    try:
        path.write_text("{not json")
        for answer in _reload_all(cluster):
            assert answer[:2] == ("error", "keys") and "not valid JSON" in answer[2], answer
        dropped = {k: v for k, v in identities.items() if v[1] != "mallory"}
        path.write_text(json.dumps({"identities": dropped}))
        for answer in _reload_all(cluster):
            assert answer[:2] == ("error", "keys"), answer
            assert "no longer lists client mallory" in answer[2], answer
    finally:
        path.write_text(good)
    # The keys in use are still exactly the file's: nothing to take, and the cluster works.
    assert _reload_all(cluster) == [("ok", {"added": (), "replaced": ()})] * 3  # msgpack: tuples
    _commit(cluster, "after-refused-reloads")
    wait_until(cluster.converged)


def test_a_node_added_with_keys_add_joins_the_running_cluster_after_a_reload(
    cluster: Cluster, key_dir: Path
) -> None:
    added = run_cli("keys", "add", str(key_dir), "--nodes", "n4")
    assert added.returncode == 0, added.stderr
    assert (key_dir / "n4.key").exists()
    ids = cluster.ids
    assert dist.reload_keys().added == ("node n4",)  # this process, through the API
    n4 = NodeProcess(cluster.root, "n4", cluster.nodes[0].extra)
    cluster.extra_nodes = [n4]  # type: ignore[attr-defined]  # killed by the fixture
    n4.spawn()
    n4_id = n4.wait_ready()
    # Added before the nodes reload, as in the review: the leader's links to n4 and its
    # probe are made (and fail their handshakes) with the keys of before.
    leader = wait_until(lambda: cluster.leader(1))[0]
    answer = server.adjust_config((NAME, leader), ("add_participant", Identity(NAME, n4_id)))
    assert answer[0] == "ok", answer
    _commit(cluster, "before-reload")
    # n1 and n2 through the admin request, n3 by SIGHUP.
    reloaded = run_cli(
        "keys", "reload", "--nodes", ",".join(ids[:2]), "--keys", str(key_dir), "--as", "admin"
    )
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    assert reloaded.stdout.count("ok, added node n4") == 2, reloaded.stdout
    n3 = cluster.nodes[2]
    n3.signal(signal.SIGHUP)
    wait_until(lambda: "added node n4" in n3.log_path.read_text(errors="replace"))
    assert n3.alive()
    _commit(cluster, "after-reload")

    def caught_up() -> bool:
        rows = cluster.rows([*ids, n4_id])
        lead = [r for (_, p), r in rows.items() if p == 1 and r["state"] == "leader"]
        mine = rows.get((n4_id, 1))
        return bool(lead and mine and mine["applied"] >= lead[0]["commit"] > 0)

    wait_until(caught_up, timeout=WAIT)


_CLIENT = """
import sys
from waraft import distribution as dist, otp
from waraft.distribution import keys
from waraft.cli import admin
dist.start(keys.process_name("mallory", "t") + "@127.0.0.1:0",
           curve=keys.load(sys.argv[1], "mallory"), ping_interval=0.2, down_after=0.8)
def ping():
    try:
        return "ok" if admin.call(sys.argv[2], "ping", timeout=3.0)["node"] else "?"
    except otp.ExitError as exc:
        return f"refused {exc.reason!r}"
print("FIRST", ping(), flush=True)
try:
    print("RELOAD allowed", admin.call(sys.argv[2], "reload_keys", timeout=3.0), flush=True)
except otp.ExitError as exc:
    print("RELOAD refused", repr(exc.reason), flush=True)
sys.stdin.readline()
print("SECOND", ping(), flush=True)
dist.stop()
otp.node.stop_all(timeout=2.0)
"""


def test_a_replaced_keys_open_connections_are_refused_after_the_reload(
    cluster: Cluster, key_dir: Path
) -> None:
    n1 = cluster.ids[0]
    old = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, str(key_dir), n1],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert old.stdout is not None and old.stdin is not None
        assert old.stdout.readline().split() == ["FIRST", "ok"]
        # A client key may not even have the nodes re-read their files.
        assert old.stdout.readline().split()[:2] == ["RELOAD", "refused"]
        replaced = run_cli("keys", "add", str(key_dir), "--clients", "mallory", "--replace")
        assert replaced.returncode == 0, replaced.stderr
        assert cluster.admin(0, "reload_keys") == (
            "ok",
            {"added": (), "replaced": ("client mallory",)},
        )
        wrong_key = cluster.admin(0, "dist_stats").get("rx_wrong_key", 0)
        old.stdin.write("go\n")
        old.stdin.flush()
        second = old.stdout.readline().split()
        assert second[:2] == ["SECOND", "refused"], second  # same connection, old key
        # Refused on its way in (not only unanswered: n1's links now expect the new key).
        assert cluster.admin(0, "dist_stats").get("rx_wrong_key", 0) > wrong_key
    finally:
        if old.poll() is None:
            os.kill(old.pid, signal.SIGKILL)
        old.wait(WAIT)
    # The new key works (a new process with the file's new key).
    fresh = subprocess.run(
        [sys.executable, "-c", _CLIENT, str(key_dir), n1],
        cwd=ROOT, env=child_env(), input="\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert fresh.stdout.split()[:2] == ["FIRST", "ok"], fresh.stdout


def test_a_client_key_cannot_reload_the_keys(cluster: Cluster, key_dir: Path) -> None:
    refused = run_cli(
        "keys", "reload", "--nodes", cluster.ids[0], "--keys", str(key_dir), "--as", "client"
    )
    assert refused.returncode == 2  # a tool refuses to use a client key for an admin verb
    assert "needs an admin key" in refused.stderr


def test_a_shell_with_a_client_key_says_an_admin_verb_needs_an_admin_key(
    cluster: Cluster, key_dir: Path
) -> None:
    # promote(1) said "serves no partition 1 of table 'kv'" right after status(1) answered:
    # the node refused the admin verb for the key's role.
    done = run_cli(
        "shell", "--attach", cluster.ids[0], "--keys", str(key_dir), "--as", "client",
        "-c", "print(status(1)['state']); promote(1)",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "serves no partition" not in done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert f"{cluster.ids[0]} refused promote: an admin verb" in said, said
    assert "client key (start it with --as admin" in said, said


def test_failed_handshakes_are_logged_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A probe retries every reconnect interval: a node whose key a leader did not know yet
    # logged ~10 warnings a second there. One line now stands for all of them.
    from types import SimpleNamespace

    from waraft.distribution.liveness import Liveness
    from waraft.services.logthrottle import LogThrottle

    stub = SimpleNamespace(_handshakes=LogThrottle())
    with caplog.at_level("WARNING", logger="waraft.distribution.liveness"):
        for _ in range(50):
            Liveness._log_handshake_failed(stub, "n4@127.0.0.1:1", 4096)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if "handshake with" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "n4@127.0.0.1:1" in lines[0] and "reload" in lines[0]
