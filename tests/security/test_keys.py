"""The secure default: a cluster run with the keys of ``waraft keys create``.

Only the cluster's keys connect; a node key speaks only for its own node; a client key reaches
the client API and nothing else; admin verbs need an admin key; the CLI and the client take
the keys. One 3-node cluster (one partition) is shared by the module.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.distribution.helpers import colliding_map, connect_silently, derived_link_ids
from tests.multiprocess.harness import ROOT, Cluster, NodeProcess, child_env, wait_until, waraft_cmd
from tests.security.attacker import CALM, SERVER, Attacker
from waraft import distribution as dist
from waraft import otp, storage
from waraft.cli.admin import STATUS_CACHE_INTERVAL
from waraft.client import Client
from waraft.core.types import Identity
from waraft.distribution import envelope, keys
from waraft.distribution.runtime import HANDSHAKE_MS
from waraft.partition import part_sup, server
from waraft.services import codec
from waraft.storage.node_lmdb import NodeLmdbStorage
from waraft.storage.provider import StorageOptions

# A log trimmed soon after it is applied: a follower that was away is caught up by a snapshot.
SHORT_LOG = {
    **CALM,
    "raft_max_log_records_per_file": 10,
    "raft_max_log_records": 20,
    "raft_max_retained_entries": 30,
}


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys") / "keys"
    code = subprocess.run(
        waraft_cmd(
            "keys",
            "create",
            str(root),
            "--nodes",
            "n1,n2,n3",
            "--clients",
            "app,mallory,churn,hammer",
        ),
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert code.returncode == 0, code.stderr
    assert (root / "n1.key").stat().st_mode & 0o077 == 0  # secret keys are private
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, key_dir: Path) -> Iterator[Cluster]:
    """The cluster, watched from this process with the admin key."""
    node_id = dist.start(
        f"{keys.process_name('admin', 'pytest')}@127.0.0.1:0",
        curve=keys.load(key_dir, "admin"),
        ping_interval=0.2,
        down_after=0.8,
        connect_timeout=0.8,
    )
    assert node_id
    cluster = Cluster(
        tmp_path_factory.mktemp("secure"), 3, partitions=(1,), settings=SHORT_LOG, keys=str(key_dir)
    )
    try:
        cluster.start()
        cluster.bootstrap()
        wait_until(cluster.converged)
        yield cluster
    finally:
        cluster.kill_all()
        dist.stop()
        otp.node.stop_all(timeout=5.0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def curve_of(key_dir: Path, name: str, server: str = "n1") -> tuple[bytes, bytes, bytes]:
    """Key ``name``'s key pair and the public key of node ``server`` (the one connected to)."""
    record = json.loads((key_dir / f"{name}.key").read_text())
    node = json.loads((key_dir / f"{server}.key").read_text())
    return record["public_key"].encode(), record["secret_key"].encode(), node["public_key"].encode()


def picture(cluster: Cluster) -> dict[str, tuple[Any, ...]]:
    return {
        node: (row["term"], row["leader"], tuple(row["members"]), row["disable_reason"])
        for (node, _), row in cluster.rows().items()
    }


def stats(cluster: Cluster, index: int) -> dict[str, int]:
    result: dict[str, int] = cluster.admin(index, "dist_stats")
    return result


def fails_with(answers: list[tuple[Any, ...]], reason: str) -> bool:
    replies = [a for a in answers if a[1] in (envelope.Kind.REPLY, envelope.Kind.FAIL)]
    return bool(replies) and all(a[1] == envelope.Kind.FAIL and a[3] == reason for a in replies)


def test_the_client_commits_and_reads_with_a_client_key(cluster: Cluster, key_dir: Path) -> None:
    # In a process of its own (the client's identity is its process's node).
    script = (
        "import sys; from waraft.client import Client\n"
        f"c = Client({cluster.ids!r}, table='kv', partitions=1, timeout=15.0,"
        f" keys={str(key_dir)!r}, key_name='app')\n"
        "assert c.commit(1, ('write', 'kv', 'secure', 1)) == 'ok'\n"
        "assert c.read(1, ('read', 'kv', 'secure')) == ('ok', 1)\n"
        "c.close()\n"
    )
    done = subprocess.run(
        [*waraft_cmd()[:1], "-c", script], cwd=ROOT, env=child_env(), timeout=60,
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def _client_script(cluster: Cluster, key_dir: Path, key: str, body: str) -> str:
    """Run ``body`` in a process of its own with a ``Client`` ``c`` of key ``key``; its
    stdout."""
    script = (
        "import sys\nfrom waraft.client import Client\n"
        "from waraft.core.sessions import call_command, register_command\n"
        f"c = Client({cluster.ids!r}, table='kv', partitions=1, timeout=30.0,"
        f" keys={str(key_dir)!r}, key_name={key!r}, pack=False)\n"
        f"{body}\nc.close()\n"
    )
    done = subprocess.run(
        [*waraft_cmd()[:1], "-c", script], cwd=ROOT, env=child_env(), timeout=120,
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_burst_of_registers_from_one_client_key_leaves_another_keys_session(
    cluster: Cluster, key_dir: Path
) -> None:
    """F3 over real CURVE connections: each register is owned by its sender's key (the
    receive thread's authenticated user id), so another key's burst past the per-owner cap
    only drops its own sessions. Were registers unowned, or owned by anything one key shares
    with another, the victim's session (idlest) would be dropped and its retry expired."""
    from waraft.core.sessions import MAX_SESSIONS_PER_OWNER

    token = "b'v' * 16"
    write = "('write', 'kv', 'f3', 'once')"
    sid = int(
        _client_script(
            cluster, key_dir, "app",
            f"ok, sid = c.commit(1, register_command(10**6, {token}))\n"
            f"assert c.commit(1, call_command(sid, 1, 1, {write}, {token})) == 'ok'\n"
            "print(sid)",
        )
    )  # fmt: skip
    burst = MAX_SESSIONS_PER_OWNER + 500
    _client_script(
        cluster, key_dir, "mallory",
        f"burst = [register_command(10**6, b'm' * 16)] * {burst}\n"
        "results = [f.result(60) for f in c.commit_many([(1, r) for r in burst])]\n"
        "assert all(r[0] == 'ok' for r in results), results[:3]",
    )  # fmt: skip
    # The victim's retry (another process, the same key) still finds its session: the
    # recorded result, not ("error", "session_expired").
    out = _client_script(
        cluster, key_dir, "app",
        f"print(repr(c.commit(1, call_command({sid}, 1, 1, {write}, {token}))))",
    )  # fmt: skip
    assert out.strip() == "'ok'"


ACCEPTOR = "raft_acceptor_kv_1"


def _stored_session(node: NodeProcess, sid: int) -> Any:
    """Session ``sid``'s row as ``node`` (stopped) stored it, read from its data directory: no
    client can read the reserved session rows over the wire."""
    assert node.node_id is not None and not node.alive()
    options = StorageOptions("kv", 1, Identity(SERVER, node.node_id), storage.default_name("kv", 1))
    provider = NodeLmdbStorage(
        options, part_sup.default_partition_path(str(node.data_dir), "kv", 1)
    )
    try:
        return provider.read(
            ("read", storage.SESSIONS_TABLE, storage.session_key(sid)), provider.position()
        )
    finally:
        provider.close()


def test_a_client_keys_infos_are_refused_and_cost_the_log_nothing(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """Infos were admitted by the cast rules: the app key sent its client cast
    ``client_batch`` as infos of 4 MiB, the acceptor's default ``handle_info`` logged each
    whole, and 10 of them grew the node's log by 168 MB. An info needs an info rule now (no
    process has one), and the default ``handle_info`` logs a bounded line a second."""
    leader = wait_until(lambda: cluster.leader(1))[0]
    index = cluster.index_of(leader)
    log = cluster.nodes[index].log_path
    refused = stats(cluster, index).get("rx_refused", 0)
    size = log.stat().st_size
    curve = curve_of(key_dir, "app", cluster.nodes[index].name)
    app = Attacker(ctx, leader, name="app.infos", curve=curve)
    try:
        batch = msgpack.packb(("client_batch", ("x", app.node_id), b"\x00" * (1 << 20)))
        for _ in range(5):
            app.raw(envelope.info_frame(ACCEPTOR, batch))
        wait_until(lambda: stats(cluster, index).get("rx_refused", 0) >= refused + 5, 10.0)
    finally:
        app.close()
    assert log.stat().st_size - size < 64 * 1024


def test_a_register_committed_by_a_remote_call_is_owned_by_the_callers_key(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """The acceptor's ``commit`` call (a gen-server call from another node, not the client
    gateway's ``client_batch``) stamps a session register with the identity the caller's
    connection authenticated as (``RemoteReplyTo.origin``: the CURVE key's ``client:app``),
    replacing the owner the command claims. Were it left as claimed, one key could charge its
    registers to another's cap (and have that key's sessions dropped); were it unstamped
    (None), every remote caller's registers would share one owner."""
    leader = wait_until(lambda: cluster.leader(1))[0]
    server_key = cluster.nodes[cluster.index_of(leader)].name
    app = Attacker(ctx, leader, name="app.origin", curve=curve_of(key_dir, "app", server_key))
    forged = ("$session", "register", 10**6, b"o" * 16, "client:mallory")
    try:
        answer = app.answer_to(app.call(ACCEPTOR, ("commit", ("k-origin", forged), "high")))
    finally:
        app.close()
    assert answer[0] == "ok", answer
    sid = answer[1]
    # Every replica applies the entry the leader appended: a follower's copy is read from its
    # disk once it has applied it and stopped (SIGTERM: its storage is flushed as it closes).
    follower = next(n for n in cluster.nodes if n.node_id != leader)
    wait_until(lambda: cluster.rows()[(follower.node_id, 1)]["applied"] >= sid, timeout=10)
    assert follower.terminate() == 0, follower.log_tail()
    try:
        row = _stored_session(follower, sid)
    finally:
        cluster.start([cluster.nodes.index(follower)])
        wait_until(cluster.converged, timeout=20)
    assert row[0] == "ok", row
    # (expire_after, last_active, floor, results, token, owner)
    assert row[1][4:] == (b"o" * 16, "client:app"), row


def test_a_client_key_cannot_read_the_session_rows_from_the_storage_actor(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """The storage actor answers clients' local reads from the wire, and answered a read of
    the reserved session keys from the wire too (only a caller on the node was meant to):
    any client key could read every session's token, the capability that lets its holder
    answer the session's retries or close it, and its recorded results."""
    leader = wait_until(lambda: cluster.leader(1))[0]
    server_key = cluster.nodes[cluster.index_of(leader)].name
    app = Attacker(ctx, leader, name="app.sessions", curve=curve_of(key_dir, "app", server_key))
    try:
        register = ("$session", "register", 10**6, b"s" * 16)
        answer = app.answer_to(app.call(ACCEPTOR, ("commit", ("k-rows", register), "high")))
    finally:
        app.close()
    assert answer[0] == "ok", answer
    name = storage.default_name("kv", 1)
    for process in cluster.nodes:
        assert process.node_id is not None
        curve = curve_of(key_dir, "mallory", process.name)
        mallory = Attacker(ctx, process.node_id, name="mallory.rows", curve=curve)
        try:
            for key in (storage.SESSIONS_KEY, storage.session_key(answer[1])):
                read = ("read", ("read", storage.SESSIONS_TABLE, key))
                assert mallory.answer_to(mallory.call(name, read)) == storage.RESERVED_KEY_ERROR
            # The actor still answers the client's other reads.
            read = ("read", ("read", "kv", "no-such-key"))
            assert mallory.answer_to(mallory.call(name, read)) != "refused"
        finally:
            mallory.close()


def test_without_a_key_of_the_cluster_nothing_connects(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    before = picture(cluster)
    denied = stats(cluster, 0).get("handshake_failed", 0)
    plain = Attacker(ctx, cluster.ids[0])
    plain.call("waraft_admin", ("ping",))
    plain.cast(SERVER, ("rpcs", []))
    public, secret = zmq.curve_keypair()
    stranger = Attacker(ctx, cluster.ids[0], curve=(public, secret, curve_of(key_dir, "n1")[2]))
    stranger.call("waraft_admin", ("ping",))
    assert plain.answers(timeout=1.0) == [] and stranger.answers(timeout=1.0) == []
    wait_until(lambda: stats(cluster, 0).get("handshake_failed", 0) > denied, timeout=5)
    assert picture(cluster) == before
    plain.close()
    stranger.close()


def test_a_client_key_reaches_the_client_api_only(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    before = picture(cluster)
    leader = wait_until(lambda: cluster.leader(1))[0]
    app = Attacker(ctx, leader, name="app.x1", curve=curve_of(key_dir, "app"))
    app.call(SERVER, ("status",))
    assert [a[1] for a in app.answers()] == [envelope.Kind.REPLY]  # read-only status: yes
    for verb in (("disable", "evil"), ("adjust_config", ("remove", ["n2", "x"])), ("resign",)):
        app.call(SERVER, verb)
        assert fails_with(app.answers(), "refused"), verb
    for verb in (("clear_fault",), ("dist_peers",), ("dist_stats",), ("heartbeat_stats",)):
        app.call("waraft_admin", verb)  # peers, other clients among them: operators only
        assert fails_with(app.answers(), "refused"), verb
    status = server.status((SERVER, leader))
    app.cast(SERVER, ("rpcs", [["request_vote", 10**6, SERVER, app.node_id, ["normal", 9, 9]]]))
    time.sleep(0.3)
    assert server.status((SERVER, leader))["current_term"] == status["current_term"]
    assert picture(cluster) == before
    app.close()


def test_a_client_keys_status_all_is_served_from_the_nodes_last_collection(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """``status_all`` asks every server of the node for its status, and a client key could
    have the node run 200 of those collections a second. The rights of the key the call came
    with decide: a client key is served the node's last collection while it is younger than
    ``STATUS_CACHE_INTERVAL``, the admin key (this process) a new one."""
    leader = wait_until(lambda: cluster.leader(1))[0]
    index = cluster.index_of(leader)
    server_key = cluster.nodes[index].name
    app = Attacker(ctx, leader, name="app.status", curve=curve_of(key_dir, "app", server_key))

    def client_rows() -> Any:
        return app.answer_to(app.call("waraft_admin", ("status_all",)))

    try:
        with Client(cluster.ids, table="kv", partitions=1, timeout=15.0) as client:
            for attempt in range(5):
                time.sleep(STATUS_CACHE_INTERVAL)  # what the cluster.leader call collected expires
                started = time.monotonic()
                first = client_rows()
                assert client.commit(1, ("write", "kv", "status-cache", attempt)) == "ok"
                second = client_rows()
                if time.monotonic() - started < STATUS_CACHE_INTERVAL:
                    break  # else the machine was too slow to tell: again
            else:
                pytest.fail("no round of two calls within the interval")
            assert second == first  # the write is not in it: the same collection
            (fresh,) = cluster.admin(index, "status_all")
            assert fresh["commit"] > first[0]["commit"]
            time.sleep(STATUS_CACHE_INTERVAL)
            assert client_rows()[0]["commit"] >= fresh["commit"]  # at most an interval old
    finally:
        app.close()


def test_a_node_key_speaks_only_for_its_own_node(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    before = picture(cluster)
    target = cluster.ids[0]
    wrong = stats(cluster, 0).get("rx_wrong_key", 0)
    n3 = curve_of(key_dir, "n3")
    # n3's key claiming to be n2 (whose id names this host, so only the key can tell).
    forged = Attacker(ctx, target, name="n3", curve=n3)
    sock = forged.connect(cluster.ids[1])
    rpc = ["request_vote", 10**6, SERVER, cluster.ids[1], ["normal", 10**9, 10**6]]
    forged.cast(SERVER, ("rpcs", [rpc]), sock=sock)
    # A client key claiming a node's name.
    app = Attacker(ctx, target, name="n2", curve=curve_of(key_dir, "app"))
    app.call("waraft_admin", ("ping",))
    wait_until(lambda: stats(cluster, 0).get("rx_wrong_key", 0) >= wrong + 2, timeout=5)
    time.sleep(0.3)
    assert picture(cluster) == before
    sock.close(0)
    forged.close()
    app.close()


def test_admin_verbs_need_the_admin_key(cluster: Cluster) -> None:
    # This process runs with the admin key.
    assert cluster.admin(0, "set_fault", [], [], []) == "ok"
    assert cluster.admin(0, "clear_fault") == "ok"


def test_the_cli_takes_the_keys(cluster: Cluster, key_dir: Path) -> None:
    nodes = ",".join(cluster.ids)

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            waraft_cmd("status", "--nodes", nodes, "--json", "--timeout", "2", *extra),
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    secure = status("--keys", str(key_dir), "--as", "app")
    assert secure.returncode == 0, secure.stderr[-2000:]
    assert len(json.loads(secure.stdout)) == 3
    assert status().returncode == 1  # without keys: every node unreachable


def test_a_client_key_cannot_take_over_a_nodes_connection(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """The ROUTER hands a routing id over to a new connection: one made with the client key,
    from n2's host, under the routing id of a connection n2's key made, used to inherit the
    member rights cached for that connection and forge a vote as n2. (n2's own probes used
    predictable ids, ``<n2>/p<k>``; they are random now, so the test makes the connection.)"""
    target, victim = cluster.ids[0], cluster.ids[1]
    before = server.status((SERVER, target))["current_term"]
    rpc = ["request_vote", before + 1000, SERVER, victim, ["normal", 10**9, 10**6]]
    n2 = Attacker(ctx, target, name="n2-key", curve=curve_of(key_dir, "n2"))
    attacker = Attacker(ctx, target, name="app.taker", curve=curve_of(key_dir, "app"))
    try:
        for k in range(1, 6):
            routing_id = f"{victim}/p{k}"
            member = n2.connect(victim, routing_id=routing_id)
            member.send(envelope.ping_frame(k))  # the node caches this connection's rights
            time.sleep(0.2)
            sock = attacker.connect(victim, routing_id=routing_id)
            time.sleep(0.2)
            attacker.cast(SERVER, ("rpcs", [rpc]), sock)
            time.sleep(0.3)
            sock.close(0)
            member.close(0)
    finally:
        attacker.close()
        n2.close()
    assert server.status((SERVER, target))["current_term"] < before + 1000


def test_a_follower_the_leader_trimmed_past_is_caught_up_by_a_snapshot(cluster: Cluster) -> None:
    """Snapshots are taken only from the leader, named by its authenticated key: the catch-up
    works between real nodes that authenticate with their keys."""
    leader = wait_until(lambda: cluster.leader(1))[0]
    victim = next(i for i, node in enumerate(cluster.ids) if node != leader)
    behind = cluster.rows()[(cluster.ids[victim], 1)]["applied"]
    cluster.nodes[victim].kill()
    with Client(cluster.ids, table="kv", partitions=1, timeout=15.0) as client:
        for i in range(60):  # one at a time: each its own entry (the client packs concurrent ones)
            assert client.commit(1, ("write", "kv", f"away{i}", i)) == "ok"
        # The leader's log no longer holds what the victim needs next.
        wait_until(lambda: cluster.rows()[(leader, 1)]["log_first"] > behind + 1, timeout=10)
        cluster.start([victim])
        wait_until(cluster.converged, timeout=30)
        row = cluster.rows()[(cluster.ids[victim], 1)]
        assert row["state"] == "follower" and row["log_first"] > behind + 1
        assert client.read(1, ("read", "kv", "away59")) == ("ok", 59)


def test_a_client_keys_map_of_colliding_keys_is_refused_in_linear_time(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """``hash(-1) == hash(-2)``: a map keyed by 40,000 tuples of them (an 840 KB frame) made
    decoding quadratic and held a node's receive thread, and its GIL, for 21 s (the leader
    stopped answering and lost its leadership). From a peer that is not a member such a map
    is now refused while it is decoded (``rx_malformed``)."""
    before = picture(cluster)
    leader = wait_until(lambda: cluster.leader(1))[0]
    index = cluster.index_of(leader)
    malformed = stats(cluster, index).get("rx_malformed", 0)
    app = Attacker(ctx, leader, name="app.collide", curve=curve_of(key_dir, "app"))
    try:
        app.raw(envelope.cast_frame("no_such_process", colliding_map(40_000)))
        wait_until(lambda: stats(cluster, index).get("rx_malformed", 0) > malformed, 5.0)
        started = time.monotonic()
        app.call(SERVER, ("status",))  # the node answers at once: its receive thread is free
        assert [a[1] for a in app.answers(timeout=3.0)] == [envelope.Kind.REPLY]
        assert time.monotonic() - started < 3.0
    finally:
        app.close()
    assert picture(cluster) == before


def test_a_client_key_cannot_keep_the_receive_thread_decoding(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """msgpack's cost follows objects, not bytes: 8 MB frames of small integers from a client
    key kept a node's receive thread 95 % busy and its queue grew to 3 GB. Frames from a key
    without the member right beyond its share of decoding time are dropped undecoded
    (``rx_decode_limited``), and the node keeps answering the others."""
    leader = wait_until(lambda: cluster.leader(1))[0]
    index = cluster.index_of(leader)
    limited = stats(cluster, index).get("rx_decode_limited", 0)
    frame = envelope.cast_frame("no_such_process", msgpack.packb([1] * 500_000))
    app = Attacker(ctx, leader, name="app.flood", curve=curve_of(key_dir, "app"))
    admin = Attacker(ctx, leader, name="admin.probe", curve=curve_of(key_dir, "admin"))
    try:
        for _ in range(1500):  # ~10 s of decoding at ~6 ms a frame
            app.raw(frame)
        wait_until(lambda: stats(cluster, index).get("rx_decode_limited", 0) > limited, 10.0)
        admin.call(SERVER, ("status",))  # another key is answered
        assert [a[1] for a in admin.answers(timeout=10.0)] == [envelope.Kind.REPLY]
    finally:
        app.close()
        admin.close()


def test_a_connection_that_never_completes_its_handshake_is_closed_within_seconds(
    cluster: Cluster,
) -> None:
    """libzmq kept a connection that never spoke for 30 s: about 700 connects a second, with
    no key at all, exhausted a node's file descriptors. The node's ROUTER closes it after
    ``HANDSHAKE_MS``."""
    host, _, port = cluster.ids[0].partition("@")[2].rpartition(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20.0) as idle:
        while idle.recv(4096):  # the node's greeting, then the close
            pass
    assert time.monotonic() - started < HANDSHAKE_MS / 1000 + 3.0


def test_a_client_key_cannot_cut_the_members_links_to_each_other(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """A node's ROUTER hands a routing id to the newest connection presenting it. Link ids
    were ``<node>/<per-process value>.<counter>``: the client key pinged each node once, read
    the value off its PONG's routing id, and connected to the other nodes under the first 32
    counters, sending nothing. The members' links went silent for good: the leader's
    heartbeats stopped arriving, the others elected a new leader, and the old one, cut off,
    stayed a leader of the old term after the attacker had left. Link ids are random now:
    whatever one of them shows, the cluster keeps its leader and commits, during such an
    attack and after it."""
    wait_until(cluster.converged)
    before = picture(cluster)
    # Long enough for followers that no longer hear the leader to elect another one.
    elections = SHORT_LOG["raft_election_timeout_ms_max"] / 1000 + 1.0
    attack: list[zmq.Socket[Any]] = []
    try:
        for i, node in enumerate(cluster.ids):
            curve = curve_of(key_dir, "app", cluster.nodes[i].name)
            app = Attacker(ctx, node, name=f"app.cut{i}", curve=curve)
            try:
                # 24 guesses, not the helper's 32: a random tag that happens to end in a digit
                # gives the seen id and 24 more, and each node takes such a set from both other
                # iterations: 50 silent connections of the app key, within its cap
                # (``max_conns_per_client_key``, 64; 2 x 33 = 66 had the last two refused).
                ids = derived_link_ids(app.seen_link_id(), count=24)
            finally:
                app.close()
            for j, other in enumerate(cluster.ids):
                if j != i:
                    curve = curve_of(key_dir, "app", cluster.nodes[j].name)
                    attack += connect_silently(ctx, other, ids, curve)
        time.sleep(elections)
        with Client(cluster.ids, table="kv", partitions=1, timeout=10.0) as client:
            assert client.commit(1, ("write", "kv", "cut-during", 1)) == "ok"
        assert picture(cluster) == before
    finally:
        for sock in attack:
            sock.close(0)
    time.sleep(elections)
    with Client(cluster.ids, table="kv", partitions=1, timeout=10.0) as client:
        assert client.commit(1, ("write", "kv", "cut-after", 1)) == "ok"
    assert picture(cluster) == before


def _first_answer(ctx: zmq.Context[Any], node: str, name: str, key_dir: Path, key: str) -> Any:
    """What a new process of key ``key`` (a node id this node has never seen) is answered to
    its first call, a ``status``: None if nothing came (its frame was dropped). A dropped
    frame is never answered, however long one waits: the wait is only as long as the
    handshakes both ways and the call take a loaded node under the attack (3 s was not)."""
    caller = Attacker(
        ctx, node, name=f"{key}.first{time.monotonic_ns()}", curve=curve_of(key_dir, key, name)
    )
    try:
        ref = caller.call(SERVER, ("status",))
        return next((a for a in caller.answers(timeout=15.0, want=1) if ref in a), None)
    finally:
        caller.close()


def _while(attack: Callable[[threading.Event], None], check: Callable[[], None]) -> None:
    """Run ``check`` while ``attack`` runs in a thread (until the event it is given is set)."""
    stop = threading.Event()
    thread = threading.Thread(target=attack, args=(stop,), daemon=True)
    thread.start()
    try:
        check()
    finally:
        stop.set()
        thread.join(timeout=10.0)


def test_a_client_key_churning_made_up_ids_locks_no_other_key_out(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """Review N, finding 3: every frame of an unknown node id took a token of one node-wide
    new-peer bucket (50 a second) before its key's id cap was checked. A client key
    connecting as ~400 made-up ids a second kept that bucket empty: new clients' and
    admins' first frames were dropped, and ``waraft status --as admin`` timed out. Each key
    has its own rate of new ids now, checked after its cap."""
    node, name = cluster.ids[0], cluster.nodes[0].name
    public, secret, server_key = curve_of(key_dir, "churn", name)
    endpoint = "tcp://" + node.partition("@")[2]

    def stats_now() -> dict[str, int] | None:
        try:
            return stats(cluster, 0)
        except otp.ExitError:
            # This process's liveness gives a node up after 0.8 s of silence (the fixture's
            # ``down_after``), and a node handshaking the churn's connections on a loaded
            # machine can take that long to answer its pings: it is back on the next one.
            return None

    def refused() -> int:
        """Frames of made-up ids refused: over the key's rate of new ids, or over its cap."""
        found = wait_until(stats_now, 30)
        return found.get("rx_new_peer_limited", 0) + found.get("rx_key_id_limit", 0)

    before = refused()

    ctx.set(zmq.MAX_SOCKETS, 8192)  # (closed sockets are reaped in the background)

    def churn(stop: threading.Event) -> None:
        # Each made-up id's frame is sent once its connection is through the handshake
        # (IMMEDIATE: writable only then), and its socket closed after (LINGER: the frame
        # still goes out). Closing sockets at a fixed age lost the frames of handshakes a
        # loaded node had not finished yet: none reached the new-peer checks for 30 s. At
        # most 40 handshakes at a time, within the key's connection cap
        # (``max_conns_per_client_key``, 64): over it, handshakes are refused before any
        # frame reaches the new-peer checks this test is about (one refused all the same is
        # given up after 5 s, its slot freed).
        connecting: dict[zmq.Socket[Any], tuple[int, float]] = {}
        poller = zmq.Poller()
        i = 0
        while not stop.is_set():
            for _ in range(min(25, 40 - len(connecting))):  # ~500 made-up ids a second
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.setsockopt(zmq.LINGER, 1000)
                sock.setsockopt(zmq.ROUTING_ID, f"churn.m{i}@127.0.0.1:1/t{i}".encode())
                sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
                sock.connect(endpoint)
                poller.register(sock, zmq.POLLOUT)
                connecting[sock] = (i, time.monotonic())
                i += 1
            until = time.monotonic() + 0.05
            while (left := until - time.monotonic()) > 0:
                for sock, _ in poller.poll(left * 1000):
                    sock.send(envelope.ping_frame(connecting.pop(sock)[0]), zmq.DONTWAIT)
                    poller.unregister(sock)
                    sock.close()
            for sock, (_, born) in list(connecting.items()):
                if until - born > 5.0:
                    poller.unregister(sock)
                    sock.close(0)
                    del connecting[sock]
        for sock in connecting:
            sock.close(0)

    def others_get_in() -> None:
        # Over its rate first; a loaded node takes the handshakes slower, and the key's 256
        # ids (``MAX_IDS_PER_KEY``) can be in before 200 frames were over its rate: the
        # churn's frames are refused for the cap then, and kept the old node-wide bucket empty
        # all the same (it was taken before the cap was checked).
        wait_until(lambda: refused() > before + 200, 30)
        for key in ("admin", "app", "admin"):
            answer = _first_answer(ctx, node, name, key_dir, key)
            assert answer is not None and answer[1] == envelope.Kind.REPLY, (key, answer)

    _while(churn, others_get_in)


def test_a_client_key_calling_as_many_ids_leaves_the_admins_rate_limit_alone(
    cluster: Cluster, ctx: zmq.Context[Any], key_dir: Path
) -> None:
    """Review N, finding 4: the status/admin rate limit was counted per node id, and one
    client key may speak as 256. Pinging as 32 ids, a client key drained the node-wide
    bucket and an admin key's status and promote calls were answered ``rate_limited``.
    The limit counts keys now, and operators have a node-wide bucket of their own."""
    node, name = cluster.ids[0], cluster.nodes[0].name
    curve = curve_of(key_dir, "hammer", name)
    hammers = [Attacker(ctx, node, name=f"hammer.h{k}", curve=curve) for k in range(32)]
    frame = envelope.call_frame("waraft_admin", 1, codec.packb(("ping",)))
    flooding = threading.Event()  # set once the hammer's calls are being refused

    def hammer(stop: threading.Event) -> None:
        refused = 0
        while not stop.is_set():
            started = time.monotonic()
            for attacker in hammers:  # 32 ids x 30 calls a second
                attacker.sock.send(frame)
                while attacker.inbox.poll(0):
                    answer = codec.unpackb(attacker.inbox.recv_multipart()[1])
                    refused += answer[1] == envelope.Kind.FAIL and answer[3] == "rate_limited"
            if refused > 200:
                flooding.set()
            time.sleep(max(0.0, 1 / 30 - (time.monotonic() - started)))

    def admin_calls() -> None:
        assert flooding.wait(30.0)
        admin = Attacker(ctx, node, name="admin.calls", curve=curve_of(key_dir, "admin", name))
        try:
            kinds = []
            for _ in range(10):
                for target, verb in ((SERVER, ("status",)), ("waraft_admin", ("dist_stats",))):
                    ref = admin.call(target, verb)
                    found = [a for a in admin.answers(timeout=5.0) if ref in a]
                    kinds.append((found[0][1], found[0][3]) if found else None)
                time.sleep(0.05)
            assert all(k is not None and k[0] == envelope.Kind.REPLY for k in kinds), kinds
        finally:
            admin.close()

    try:
        _while(hammer, admin_calls)
    finally:
        for attacker in hammers:
            attacker.close()
