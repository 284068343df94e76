"""The attacks of issue 15 against a real 3-node cluster (shared by this module), by an
attacker who reaches the nodes' port with a raw ZeroMQ DEALER and msgpack and is no member.

Each test asserts that the attack has no effect: data, terms, leader and membership unchanged,
no replica disabled, the partition still serving clients. These run without keys
(``--insecure``): everything here is hardening that must hold even then.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.multiprocess.harness import Cluster, wait_until
from tests.security.attacker import CALM, SERVER, TABLE, Attacker
from waraft.client import Client
from waraft.core.config import make_config
from waraft.core.types import Identity
from waraft.distribution import envelope
from waraft.distribution.settings import DistSettings
from waraft.partition import server

FORGET_AFTER = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, dist_node: str) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("attacks")
    conf = root / "dist.toml"
    conf.write_text(f"[dist]\nforget_after = {FORGET_AFTER}\n")
    cluster = Cluster(root, 3, table=TABLE, partitions=(1,), settings=CALM)
    for node in cluster.nodes:
        node.extra += ["--config", str(conf)]
    try:
        cluster.start()
        cluster.bootstrap()
        wait_until(cluster.converged)
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[Client]:
    c = Client(cluster.ids, table=TABLE, partitions=1, timeout=15.0)
    assert c.commit(1, ("write", TABLE, "canary", 1)) == "ok"
    yield c
    c.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 8192)  # the made-up-ids attack opens 1100 sockets
    yield context
    context.destroy(linger=0)


def leader_of(cluster: Cluster) -> str:
    found = wait_until(lambda: cluster.leader(1))
    return str(found[0])


def picture(cluster: Cluster) -> dict[str, tuple[Any, ...]]:
    """What an attack must not change, per node."""
    out = {}
    for (node, _), row in cluster.rows().items():
        out[node] = (row["term"], row["leader"], tuple(row["members"]), row["disable_reason"])
    return out


def unharmed(cluster: Cluster, client: Client, before: dict[str, tuple[Any, ...]]) -> None:
    time.sleep(0.5)  # long enough for a forged RPC to have been handled (heartbeats are 50 ms)
    after = picture(cluster)
    assert after == before, (before, after)
    assert all(row[3] is None for row in after.values())
    key = f"k{time.monotonic_ns()}"
    assert client.commit(1, ("write", TABLE, key, 7)) == "ok"
    assert client.read(1, ("read", TABLE, key)) == ("ok", 7)
    assert client.read(1, ("read", TABLE, "canary")) == ("ok", 1)


def stats(cluster: Cluster, node: str) -> dict[str, int]:
    result: dict[str, int] = cluster.admin(cluster.index_of(node), "dist_stats")
    return result


def test_nothing_outside_the_allow_list_is_callable(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    before = picture(cluster)
    target = leader_of(cluster)
    refused = stats(cluster, target).get("rx_refused", 0)
    evil = Attacker(ctx, target)
    planted = tmp_path / "planted"
    attacks: list[tuple[str, Any]] = [
        ("kernel_sup", ("terminate_child", "wa_raft_sup")),
        ("wa_raft_sup", ("start_child", {"table": TABLE, "storage_module": "this"})),
        ("raft_sup_kv", ("start_child", {"storage_module": "this"})),
        ("raft_storage_kv_1", ("create_snapshot", str(planted))),
        ("raft_storage_kv_1", ("make_empty_snapshot", str(planted), (1, 1), None, None)),
        (SERVER, ("snapshot_available", str(planted), (100, 100))),
        (SERVER, ("no_such_verb",)),
        ("raft_acceptor_kv_1", ("commit_batch", [], 1)),
    ]
    for name, request in attacks:
        evil.call(name, request)
        evil.cast(name, request)
    answers = evil.answers(want=len(attacks))
    assert len(answers) == len(attacks)
    assert all(a[1] == envelope.Kind.FAIL and a[3] == "refused" for a in answers), answers
    assert stats(cluster, target)["rx_refused"] >= refused + 2 * len(attacks)
    assert not planted.exists()
    assert cluster.admin(cluster.index_of(target), "partitions") == ((TABLE, 1),)
    unharmed(cluster, client, before)
    evil.close()


def test_forged_rpcs_from_a_non_member_are_dropped(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    before = picture(cluster)
    status = server.status((SERVER, cluster.ids[0]))
    term, commit = status["current_term"], status["commit_index"]
    evils = [Attacker(ctx, node) for node in cluster.ids]
    for evil in evils:
        me = evil.node_id
        mine = [[term + 1, "x", ("write", TABLE, "canary", 666)]]
        conflict = [[term + 5, "x", ("write", TABLE, "canary", 667)]]
        forged = [
            # A leader of a newer term with an entry of its own.
            ["append_entries", term + 1, SERVER, me, [commit, term, mine, commit + 1, 0]],
            # An entry conflicting below the commit index (would disable a replica).
            ["append_entries", term, SERVER, me, [commit - 1, term, conflict, commit, 0]],
            # A candidate of a far newer term.
            ["request_vote", 10**6, SERVER, me, ["normal", 10**9, 10**6]],
            ["request_vote", 2**64 - 1, SERVER, me, ["normal", 10**9, 10**6]],
        ]  # fmt: skip
        evil.cast(SERVER, ("rpcs", forged))
    unharmed(cluster, client, before)
    dropped = [server.status((SERVER, n))["rpc_dropped_nonmember"] for n in cluster.ids]
    assert all(d >= 3 for d in dropped), dropped
    for evil in evils:
        evil.close()


def test_a_node_speaks_only_for_itself(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    """RPCs naming another node than the connection's own are refused as a whole."""
    before = picture(cluster)
    target = leader_of(cluster)
    member = next(n for n in cluster.ids if n != target)
    refused = stats(cluster, target).get("rx_refused", 0)
    evil = Attacker(ctx, target)
    evil.cast(SERVER, ("rpcs", [["request_vote", 10**6, SERVER, member, ["normal", 10**9, 10**6]]]))
    wait_until(lambda: stats(cluster, target).get("rx_refused", 0) > refused, timeout=5)
    unharmed(cluster, client, before)
    evil.close()


def test_a_snapshot_is_taken_only_from_the_partitions_leader(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    """A pushed snapshot would replace a replica's data and membership: a node that does not
    lead the partition cannot even start one, and cannot write into anyone else's."""
    before = picture(cluster)
    leader = leader_of(cluster)
    follower = next(n for n in cluster.ids if n != leader)
    evil = Attacker(ctx, follower)
    meta = {"type": "snapshot", "table": TABLE, "partition": 1, "position": (10**6, 10**3)}
    module = "waraft.transport.dist_transport"
    attempts = [
        ("wa_raft_transport", ("transport", 4242, evil.node_id, module, meta, [[1, "f", 3]])),
        ("wa_raft_dist_transport", ("chunk", 4242, 1, 0, b"bad")),
        ("wa_raft_dist_transport", ("complete", 4242, 1)),
    ]
    answers = []
    for name, request in attempts:  # one at a time: two actors answer in their own order
        evil.call(name, request)
        answers += evil.answers(want=1)
    assert [a[1] for a in answers] == [envelope.Kind.REPLY] * 3, answers
    assert [tuple(a[3]) for a in answers] == [
        ("error", "not_leader"),
        ("error", "not_running"),
        ("error", "invalid_file"),
    ]
    unharmed(cluster, client, before)
    evil.close()


def test_a_term_that_cannot_be_persisted_is_refused(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    """Even from a connection claiming a member's id (all one can check without keys)."""
    before = picture(cluster)
    target = leader_of(cluster)
    member = next(n for n in cluster.ids if n != target)
    evil = Attacker(ctx, target)
    sock = evil.connect(member)
    for term in (2**64 - 1, 2**62 + 1):
        rpc = ["request_vote", term, SERVER, member, ["normal", 10**9, term]]
        evil.cast(SERVER, ("rpcs", [rpc]), sock=sock)
        entry = [[term, "x", ("write", TABLE, "canary", 5)]]
        rpc = ["append_entries", term, SERVER, member, [10**6, term, entry, 10**6, 0]]
        evil.cast(SERVER, ("rpcs", [rpc]), sock=sock)
    unharmed(cluster, client, before)
    sock.close(0)
    evil.close()


def test_deeply_nested_and_oversized_frames_change_nothing(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    before = picture(cluster)
    target = leader_of(cluster)
    deep_before = stats(cluster, target).get("rx_too_deep", 0)
    evil = Attacker(ctx, target)
    nested: Any = 0
    for _ in range(1000):
        nested = [nested]
    evil.raw(b"\x94\x01\x00" + msgpack.packb(SERVER) + msgpack.packb(nested))
    # A client batch (client traffic is walked for depth) and an admin call.
    batch = ["client_batch", [SERVER, evil.node_id], 1, "commit", [[1, ["k", nested]]], "high"]
    evil.raw(b"\x94\x01\x00" + msgpack.packb("raft_acceptor_kv_1") + msgpack.packb(batch))
    evil.call("waraft_admin", ("leaders", nested))
    # Below the depth limit, but a malformed RPC whose repr would be deep if logged.
    shallow: Any = 0
    for _ in range(25):
        shallow = [shallow]
    evil.cast(SERVER, ("rpcs", [["append_entries", 1, SERVER, evil.node_id, shallow]]))
    evil.cast(SERVER, ("rpcs", shallow))
    wait_until(lambda: stats(cluster, target).get("rx_too_deep", 0) >= deep_before + 2, timeout=5)
    assert any(a[1] == envelope.Kind.FAIL and a[3] == "too_deep" for a in evil.answers())
    unharmed(cluster, client, before)
    evil.close()


def test_a_routing_id_naming_another_host_is_never_dialled(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    target = leader_of(cluster)
    wrong = stats(cluster, target).get("rx_wrong_host", 0)
    evil = Attacker(ctx, target)
    sock = evil.connect("victim@10.11.12.13:7001")
    sock.send(envelope.ping_frame(1))
    evil.cast("waraft_admin", ("ping",), sock=sock)
    wait_until(lambda: stats(cluster, target).get("rx_wrong_host", 0) >= wrong + 2, timeout=5)
    peers = cluster.admin(cluster.index_of(target), "dist_peers")
    assert "victim@10.11.12.13:7001" not in peers
    sock.close(0)
    evil.close()


def test_made_up_ids_expire_and_never_lock_anyone_out(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    before = picture(cluster)
    target = leader_of(cluster)
    evil = Attacker(ctx, target)
    started = time.monotonic()
    # Ports nobody listens on: the node's pongs go nowhere.
    for i in range(1100):
        sock = evil.connect(f"ghost{i}@127.0.0.1:{1 + i % 900}")
        sock.send(envelope.ping_frame(i))
        sock.close(linger=500)

    # Beyond a rate, unknown ids are not even looked at (they would cost sockets). What the
    # node may admit grows with the time the flood took to arrive (a loaded machine sends it
    # slowly): the bucket's burst plus its rate over that time, one second of slack.
    rate = DistSettings().new_peers_per_s

    def arrived() -> dict[str, int] | None:
        # The flood has arrived once what the node saw of it stops growing for a second.
        got = stats(cluster, target)
        seen = got["peers"] + got.get("rx_new_peer_limited", 0) + got.get("rx_peer_limit", 0)
        if seen != last[0]:
            last[:] = [seen, time.monotonic()]
        return got if seen > 0 and time.monotonic() - last[1] >= 1.0 else None

    last = [-1, time.monotonic()]
    got = wait_until(arrived, timeout=30)
    admitted_at_most = 2 * rate + rate * (time.monotonic() - started + 1.0)
    assert got["peers"] <= admitted_at_most + 6, (got, admitted_at_most)
    # A newcomer (a new client, a new CLI process) is answered despite the flood.
    fresh = Attacker(ctx, target, name="newcomer")
    deadline = time.monotonic() + 15
    ponged = False
    while not ponged and time.monotonic() < deadline:
        fresh.raw(envelope.ping_frame(7))
        ponged = any(a[1] == envelope.Kind.PONG for a in fresh.answers(timeout=0.5))
    assert ponged
    # The made-up ids are forgotten: the peer table goes back to the real peers.
    wait_until(lambda: stats(cluster, target)["peers"] <= 6, timeout=30)
    unharmed(cluster, client, before)
    fresh.close()
    evil.close()


def test_a_status_flood_is_rate_limited_and_raft_keeps_priority(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    before = picture(cluster)
    target = leader_of(cluster)
    evil = Attacker(ctx, target)
    for _ in range(3000):
        evil.call(SERVER, ("status",))
    answers = evil.answers(timeout=3.0, want=3000)
    limited = [a for a in answers if a[1] == envelope.Kind.FAIL and a[3] == "rate_limited"]
    served = [a for a in answers if a[1] == envelope.Kind.REPLY]
    assert len(served) < 500 and len(limited) > 2000, (len(served), len(limited))
    unharmed(cluster, client, before)
    evil.close()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_short_lived_clients_leave_no_sockets_behind(
    cluster: Cluster, ctx: zmq.Context[Any]
) -> None:
    """100 clients that call a node once and go away: the node's fds and links return to
    their baseline once it has forgotten them."""
    target = leader_of(cluster)
    pid = cluster.nodes[cluster.index_of(target)].pid

    def one_client() -> None:
        c = Attacker(ctx, target, name="shortlived")
        c.call("waraft_admin", ("ping",))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the node's pings may come first
            if any(a[1] == envelope.Kind.REPLY for a in c.answers(timeout=0.5)):
                break
        else:
            raise AssertionError("no reply")
        c.close()

    one_client()
    time.sleep(0.5)
    settle = FORGET_AFTER + 5.0
    wait_until(lambda: stats(cluster, target)["peers"] <= 3, timeout=settle + 5)
    baseline_fds, baseline_links = _fds(pid), stats(cluster, target)["links_open"]
    for _ in range(100):
        one_client()
    assert stats(cluster, target)["peers"] >= 50
    wait_until(lambda: stats(cluster, target)["peers"] <= 3, timeout=settle + 5)
    wait_until(lambda: _fds(pid) <= baseline_fds + 2, timeout=5)
    assert stats(cluster, target)["links_open"] <= baseline_links


def test_a_client_cannot_forge_or_read_the_session_table(cluster: Cluster, client: Client) -> None:
    """The exactly-once table is stored under reserved keys (an index and a row per session):
    a client naming any of them, over the wire, is refused, and a retry is still recognised."""
    sessions = Client(cluster.ids, table=TABLE, partitions=1, timeout=15.0, sessions=True)
    try:
        assert sessions.commit(1, ("incr", TABLE, "counted", 1)) == ("ok", 1)
        sid = sessions._sessions[1][0]
        refused = ("error", "reserved_key")
        forged_row = (sid, 0, 0, ())  # any shape: it must not reach the provider
        for key in (
            ("$waraft", "session", sid),
            ["$waraft", "session", sid],
            ("$waraft", "sessions"),
        ):
            assert client.commit(1, ("write", TABLE, key, forged_row)) == refused, key
            assert client.commit(1, ("delete", TABLE, key)) == refused, key
            assert client.read(1, ("read", TABLE, key)) == refused, key
        # The table is intact: the next tagged commit applies once, as the client counts it.
        assert sessions.commit(1, ("incr", TABLE, "counted", 1)) == ("ok", 2)
    finally:
        sessions.close()


ACCEPTOR = "raft_acceptor_kv_1"


def test_a_client_cannot_change_the_membership_or_commit_protocol_entries(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    """A config entry takes effect once appended: a client that committed one made the leader
    the only member (two leaders, two histories). Config changes, noops and a witness's
    ``noop_omitted`` are refused at the gateway, and nested in a ``$batch`` or a session
    call, at apply on every replica."""
    before = picture(cluster)
    leader = leader_of(cluster)
    forged = make_config([Identity(SERVER, leader)])  # the leader alone: a quorum of one
    evil = Attacker(ctx, leader)
    try:
        for command in (("config", forged), ("config", {}), "noop", "noop_omitted"):
            ref = evil.call(ACCEPTOR, ("commit", ("k-evil", command), "high"))
            answer = evil.answer_to(ref)
            assert answer[0] == "error" and answer[1][0] == "badarg", (command, answer)
            answer = client.commit(1, command)  # the client library's client_batch path
            assert answer[0] == "error" and "reserved to the protocol" in answer[1][1], answer
        nested = client.commit(1, ("$batch", [("config", forged), "noop_omitted"]))
        assert list(nested) == [("error", "reserved_command")] * 2
        sessions = Client(cluster.ids, table=TABLE, partitions=1, timeout=15.0, sessions=True)
        try:
            assert sessions.commit(1, ("config", forged)) == ("error", "reserved_command")
        finally:
            sessions.close()
    finally:
        evil.close()
    unharmed(cluster, client, before)


def test_a_session_call_naming_a_map_is_answered_on_every_replica(
    cluster: Cluster, client: Client
) -> None:
    """Committed before anything looks at it, a session command whose id was a map crashed
    the storage actor of every replica at apply (unhashable), at every restart: the
    partition was gone for good. It is now an error answer, the same on every replica."""
    before = picture(cluster)
    bad = ("error", ("badarg", "a session id or sequence number is unhashable"))
    for command in (
        ("$session", "call", {"x": 1}, 1, 0, ("write", TABLE, "poison", 1)),
        ("$session", "call", 1, {"x": 1}, 0, ("write", TABLE, "poison", 1)),
        ("$session", "close", {"x": 1}),
    ):
        assert client.commit(1, command) == bad, command
    assert client.commit(1, ("write", TABLE, "after-poison", 1)) == "ok"
    for node in cluster.ids:
        wait_until(lambda node=node: server.status((SERVER, node))["last_applied"] > 0)
    unharmed(cluster, client, before)


def test_a_read_with_an_impossible_minimum_index_is_refused_at_once(
    cluster: Cluster, client: Client, ctx: zmq.Context[Any]
) -> None:
    """A string ``min_index`` crashed the leader's server (and so the partition on that
    node); an index past the log held a slot of the node's read budget forever (5000 of them
    locked every strong read out)."""
    before = picture(cluster)
    leader = leader_of(cluster)
    evil = Attacker(ctx, leader)
    try:
        ref = evil.call(ACCEPTOR, ("read", ("read", TABLE, "canary"), "1"))
        answer = evil.answer_to(ref)
        assert answer[0] == "error" and answer[1][0] == "badarg", answer
        refs = [evil.call(ACCEPTOR, ("read", ("read", TABLE, "canary"), 2**62)) for _ in range(50)]
        answers = evil.answers(timeout=8.0, want=len(refs))
        assert len(answers) == len(refs)
        assert {a[-1] for a in answers} == {("error", "min_index_ahead")}
    finally:
        evil.close()
    assert client.read(1, ("read", TABLE, "canary")) == ("ok", 1)
    unharmed(cluster, client, before)


def test_a_client_cannot_act_on_another_clients_session(cluster: Cluster, client: Client) -> None:
    """Session ids are log indices, easy to guess: a client that sprayed tagged calls over
    nearby ids took a victim's next sequence numbers, so the victim's writes were answered
    ``ok`` with the attacker's results and never applied. A session now acts only for calls
    carrying the token its client drew at the register."""
    victim = Client(cluster.ids, table=TABLE, partitions=1, timeout=15.0, sessions=True)
    try:
        assert victim.commit(1, ("write", TABLE, "acct", "victim-1")) == "ok"
        sid = victim._sessions[1][0]
        for forged_sid in range(max(1, sid - 3), sid + 4):
            for seq in range(1, 6):
                forged = ("$session", "call", forged_sid, seq, 0, ("write", TABLE, "acct", "evil"))
                assert client.commit(1, forged) == ("error", "session_expired"), forged
            assert client.commit(1, ("$session", "close", forged_sid)) == "ok"
        assert victim.commit(1, ("write", TABLE, "acct", "victim-2")) == "ok"
        assert client.read(1, ("read", TABLE, "acct")) == ("ok", "victim-2")
        assert victim.commit(1, ("incr", TABLE, "victim-count", 1)) == ("ok", 1)
    finally:
        victim.close()
