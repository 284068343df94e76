"""Unit tests of the allow-list, the rate limits and the key-bound rights."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from waraft.distribution import keys, policy
from waraft.distribution.policy import Rule, Sender


@pytest.fixture(autouse=True)
def _clean_rules() -> None:
    policy.forget("svc")


def test_only_listed_tags_with_the_right_get_through() -> None:
    policy.allow(
        "svc",
        casts={"rpcs": Rule(policy.MEMBER, guard=policy.same_node(1))},
        calls={"status": policy.CLIENT, "disable": Rule(policy.ADMIN, limited=True)},
    )
    member = Sender("n1@h:1", frozenset({policy.MEMBER, policy.CLIENT}))
    client = Sender("app.x@h:2", frozenset({policy.CLIENT}))

    def ok(sender: Sender, call: bool, msg: object) -> bool:
        return policy.admits(policy.rule_for("svc", call, msg), sender, msg)

    assert ok(member, False, ("rpcs", "n1@h:1"))
    assert not ok(member, False, ("rpcs", "n2@h:1"))  # speaks for another node
    assert not ok(client, False, ("rpcs", "app.x@h:2"))  # not a member
    assert ok(client, True, ("status",))
    assert not ok(client, True, ("disable", "x"))  # admin verb
    assert not ok(member, True, ("rpcs", "n1@h:1"))  # a cast tag is not a call tag
    assert not ok(member, True, ("terminate_child", "x"))
    assert not ok(member, True, "status")  # not a tuple
    assert policy.rule_for("kernel_sup", True, ("terminate_child", "x")) is None


def test_casts_calls_and_infos_each_have_their_own_rules() -> None:
    policy.allow("svc", casts={"batch": policy.CLIENT}, infos={"tick": policy.MEMBER})
    assert policy.rule_for("svc", False, ("batch",)) is not None
    assert policy.rule_for("svc", False, ("batch",), info=True) is None  # a cast rule only
    assert policy.rule_for("svc", True, ("batch",)) is None
    assert policy.rule_for("svc", False, ("tick",), info=True) == Rule(policy.MEMBER)
    assert policy.rule_for("svc", False, ("tick",)) is None  # an info rule only


def test_a_guard_that_raises_refuses() -> None:
    def broken(sender: Sender, msg: object) -> bool:
        raise RuntimeError("boom")

    policy.allow("svc", casts={"x": Rule(policy.CLIENT, guard=broken)})
    msg = ("x",)
    assert not policy.admits(
        policy.rule_for("svc", False, msg), Sender("a.b@h:1", policy.RIGHTS), msg
    )


def test_rate_limits_per_caller_and_node_wide() -> None:
    limiter = policy.RateLimiter(per_sender=10, node_wide=15)
    now = time.monotonic()  # (the node-wide buckets start full at the current time)
    first = sum(limiter.take("client:a", False, now) for _ in range(100))
    assert first == 20  # the burst is twice the rate
    second = sum(limiter.take("client:b", False, now) for _ in range(100))
    assert second == 10  # what is left of the node-wide burst of 30


def test_client_keys_cannot_use_up_the_operators_rate_limit() -> None:
    """A client key spoke as 32 node ids, each with a bucket of its own, drained the
    node-wide bucket and had an admin key's status and promote calls answered
    ``rate_limited``. Callers are counted by key, and operators and members draw on a
    node-wide bucket of their own."""
    limiter = policy.RateLimiter(per_sender=10, node_wide=15)
    now = time.monotonic()
    # Whatever node ids a key speaks as, the caller is its key ("client:app").
    assert sum(limiter.take("client:app", False, now) for _ in range(100)) == 20
    for key in ("client:b", "client:c"):
        sum(limiter.take(key, False, now) for _ in range(20))
    assert not limiter.take("client:d", False, now)  # the clients' node-wide bucket: empty
    assert sum(limiter.take("admin:ops", True, now) for _ in range(100)) == 20
    assert sum(limiter.take("node:n2", True, now) for _ in range(100)) == 10
    assert limiter.take("client:app", False, now + 2.0)  # both refill with time


def test_keyed_buckets_hold_a_bounded_number_of_keys() -> None:
    buckets = policy.KeyedBuckets(rate=1.0, burst=2.0, max_keys=3)
    assert buckets.take("a", 0.0) and buckets.take("a", 0.0) and not buckets.take("a", 0.0)
    for key in ("b", "c", "d", "e"):  # made-up keys: never refused, never more than 3
        assert buckets.take(key, 0.0)
        assert len(buckets) <= 3
    assert buckets.take("a", 0.0)  # evicted as the least recently used: a fresh bucket
    for key in ("a", "e"):
        buckets.take(key, 0.5)
    # Room is made by dropping entries idle long enough to be full again (2 s here) first.
    assert buckets.take("f", 10.0) and len(buckets) == 1


def test_key_roles_bind_node_ids_and_rights(tmp_path: Path) -> None:
    keys.create(tmp_path, ["n1", "n2"], ["app"], ["ops"])
    curve = keys.load(tmp_path, "n1", "node")

    def user(name: str) -> str:
        record = json.loads((tmp_path / f"{name}.key").read_text())
        found = curve.user_for(record["public_key"].encode())
        assert found is not None
        return found

    assert curve.rights_for("n1@10.0.0.1:7001", user("n1")) == frozenset(
        {policy.MEMBER, policy.CLIENT}
    )
    assert curve.rights_for("n2@10.0.0.2:7001", user("n1")) is None
    assert curve.rights_for("app.cli1@h:1", user("app")) == frozenset({policy.CLIENT})
    assert curve.rights_for("n1@h:1", user("app")) is None
    assert curve.rights_for("ops.x@h:1", user("ops")) == frozenset({policy.CLIENT, policy.ADMIN})
    assert curve.rights_for("ops.x@h:1", None) is None
    public = (tmp_path / "app.key").read_text().split('"public_key": "')[1][:40].encode()
    assert curve.user_for(public) == "client:app:" + public.decode()
    assert curve.user_for(b"x" * 40) is None
    assert curve.server_key_for("app.cli1@h:1") == public
    with pytest.raises(keys.KeysError, match="not node"):
        keys.load(tmp_path, "app", "node")
    with pytest.raises(keys.KeysError, match="never overwritten"):
        keys.create(tmp_path, ["n1"])


def test_a_user_id_counts_only_while_its_key_is_the_clusters_key(tmp_path: Path) -> None:
    # The key is part of the user id: a connection made with a key since replaced (or a
    # user id naming a role and name without their key) has no rights.
    keys.create(tmp_path, ["n1"], ["app"], ["ops"])
    curve = keys.load(tmp_path, "n1", "node")
    app = json.loads((tmp_path / "app.key").read_text())["public_key"]
    ops = json.loads((tmp_path / "ops.key").read_text())["public_key"]
    assert curve.rights_for("app.x@h:1", f"client:app:{app}") == frozenset({policy.CLIENT})
    assert curve.rights_for("app.x@h:1", "client:app") is None
    assert curve.rights_for("ops.x@h:1", f"admin:ops:{app}") is None  # another name's key
    assert curve.rights_for("app.x@h:1", f"admin:app:{app}") is None  # another role
    keys.add(tmp_path, clients=["app"], replace=True)
    reloaded = keys.load(tmp_path, "n1", "node")
    assert reloaded.rights_for("app.x@h:1", f"client:app:{app}") is None
    assert reloaded.rights_for("ops.x@h:1", f"admin:ops:{ops}") is not None


def test_a_decode_budget_lets_each_key_spend_its_share_and_no_more() -> None:
    budget = policy.DecodeBudget(share=0.5, burst=2.0, max_keys=3)
    assert budget.allows("app", 0.0)
    budget.charge("app", 2.5)  # one long frame: into debt
    assert not budget.allows("app", 0.5)  # 0.25 s back: still owes 0.25
    assert budget.allows("other", 0.5)  # other keys are not held back
    assert budget.allows("app", 1.1)  # repaid at half a second per second: 0.05 left
    budget.charge("app", 0.01)
    assert budget.allows("app", 1.1)
    budget.charge("app", 0.1)
    assert not budget.allows("app", 1.1)
    assert budget.allows("app", 100.0)
    budget.charge("app", 2.01)  # the bank holds at most the burst
    assert not budget.allows("app", 100.0)
    # A flood of keys starts everyone afresh rather than refusing new keys.
    for key in ("k1", "k2", "k3"):
        assert budget.allows(key, 100.0)
    assert budget.allows("app", 100.0)


def test_a_client_key_holds_a_bounded_number_of_node_ids_at_a_time() -> None:
    """One client key kept 1,100 made-up ids alive with pings (peers are evicted only once
    down), filled the peer table and locked new clients out."""
    table: dict[str, object] = {}
    cap = policy.IdCap(4, table, recount_every=1.0)
    for i in range(4):
        node_id = f"app.{i}@h:1"
        assert not cap.full("client:app", node_id, 0.0)
        cap.add("client:app", node_id)
        table[node_id] = object()
    assert cap.full("client:app", "app.extra@h:1", 0.0)
    assert not cap.full("client:app", "app.0@h:1", 0.0)  # one of its own comes back
    assert not cap.full("client:other", "other.1@h:1", 0.0)  # keys are apart
    del table["app.0@h:1"]  # a forgotten peer makes room, found by a recount at most once
    # a second: a key at its cap naming new ids is refused for the price of a lookup.
    assert cap.full("client:app", "app.extra@h:1", 0.5)
    assert not cap.full("client:app", "app.extra@h:1", 1.0)


def test_a_link_to_a_client_queues_few_frames_a_link_to_a_node_many() -> None:
    """A client that sends reads and never takes the replies in left up to 10,000 reply
    frames queued on the node (GBs of memory in a review)."""
    from waraft.distribution.links import CLIENT_SNDHWM, Outbound
    from waraft.distribution.settings import CurveConfig, DistSettings

    settings = DistSettings()
    identities = {b"k1": ("node", "n1"), b"k2": ("node", "n2"), b"k3": ("client", "app")}
    curve = CurveConfig(b"p", b"s", identities=identities)
    links = Outbound(None, "n1@h:1", settings, curve)  # type: ignore[arg-type]
    assert links._sndhwm_for("n2@h:2") == settings.sndhwm
    assert links._sndhwm_for("app.7@h:3") == CLIENT_SNDHWM < settings.sndhwm
    insecure = Outbound(None, "n1@h:1", settings, None)  # type: ignore[arg-type]
    assert insecure._sndhwm_for("app.7@h:3") == settings.sndhwm  # nothing tells them apart


_KEYS_DIR: list[Path] = []  # the keys ``_keyed_receiver`` made (a test's own)


class _Head:
    """What the receive thread reads of a message's first frame (a ``zmq.Frame``). ``user``
    is ``role:name``; the user id the connection's key gives is ``role:name:<public key>``
    (read from the keys ``_keyed_receiver`` made)."""

    def __init__(self, routing_id: str, user: str) -> None:
        self.bytes = routing_id.encode()
        name = user.partition(":")[2]
        public = json.loads((_KEYS_DIR[-1] / f"{name}.key").read_text())["public_key"]
        self._props = {"User-Id": f"{user}:{public}", "Peer-Address": "127.0.0.1"}

    def get(self, name: str) -> str:
        return self._props[name]


def _keyed_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_peers: int = 1024
) -> tuple[Any, dict[str, int]]:
    """A receive thread (not started) of node n1 with keys, on a frozen clock: its checks of
    new connections run on fake frames, nothing refills while a test sends."""
    from waraft.distribution import receiver
    from waraft.distribution.peers import PeerTable
    from waraft.distribution.settings import DistSettings

    keys.create(tmp_path, ["n1", "n2", "n3"], ["app", "web"], ["ops"])
    monkeypatch.setattr(sys.modules[__name__], "_KEYS_DIR", [tmp_path])
    frozen = time.monotonic()
    monkeypatch.setattr(
        receiver, "time", SimpleNamespace(monotonic=lambda: frozen, perf_counter=time.perf_counter)
    )
    dist = SimpleNamespace(
        settings=DistSettings(max_peers=max_peers),
        otp_node=SimpleNamespace(registry=None),
        counters=SimpleNamespace(add_dict=lambda counts: None),
        peers=PeerTable(lambda peer, old, new: None, max_peers),
        curve=keys.load(tmp_path, "n1", "node"),
        cluster_gen=0,
        cluster_id=None,
    )
    rx = receiver.Receiver(dist, None)  # type: ignore[arg-type]
    return rx, rx.counts


def test_a_client_key_churning_made_up_ids_locks_nobody_else_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review N, finding 3: every frame of an unknown id took a token of one node-wide
    new-peer bucket before its key's id cap was checked, and a refused id was checked (and
    charged) again at its next frame: one client key churning ~400 made-up ids a second
    timed out half of the admins' ``waraft status`` runs. Each key now has its own rate of
    new ids, the cap is checked first, and a refusal is remembered."""
    rx, counts = _keyed_receiver(tmp_path, monkeypatch)
    for i in range(2000):
        rx._connection(_Head(f"app.m{i}@127.0.0.1:1/t{i}", "client:app"))
    assert counts["rx_new_peer_limited"] > 0  # the churning key is held back...
    # ...and nobody else is: another client key, an admin key, a member.
    for routing_id, user in (
        ("web.x@127.0.0.1:2/a", "client:web"),
        ("ops.cli@127.0.0.1:3/b", "admin:ops"),
        ("n2@127.0.0.1:4/c", "node:n2"),
    ):
        assert rx._connection(_Head(routing_id, user)) is not None, (user, counts)


def test_a_refused_connection_is_refused_again_without_a_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from waraft.distribution.receiver import MAX_IDS_PER_KEY

    rx, counts = _keyed_receiver(tmp_path, monkeypatch)
    rx._new_ids = policy.KeyedBuckets(1e6, 1e6)  # (the id cap is what this test is about)
    for i in range(MAX_IDS_PER_KEY):
        assert rx._connection(_Head(f"app.m{i}@127.0.0.1:1/t", "client:app")) is not None
    checks = []
    check = rx._check
    rx._check = lambda *args: checks.append(1) or check(*args)
    over = _Head("app.over@127.0.0.1:1/t", "client:app")
    for _ in range(100):
        assert rx._connection(over) is None
    assert len(checks) == 1 and counts["rx_key_id_limit"] == 100
    # Another key presenting the same routing id is checked on its own.
    assert rx._connection(_Head("app.over@127.0.0.1:1/t", "client:web")) is None
    assert counts["rx_wrong_key"] == 1


def test_client_keys_leave_room_in_the_peer_table_for_members_and_operators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rx, counts = _keyed_receiver(tmp_path, monkeypatch, max_peers=16)  # 2 kept free
    for i in range(20):
        rx._connection(_Head(f"app.m{i}@127.0.0.1:1/t", "client:app"))
    assert len(rx._dist.peers.by_id) == 14 and counts["rx_peer_limit"] == 6
    assert rx._connection(_Head("web.x@127.0.0.1:2/a", "client:web")) is None
    assert rx._connection(_Head("ops.cli@127.0.0.1:3/b", "admin:ops")) is not None
    assert rx._connection(_Head("n2@127.0.0.1:4/c", "node:n2")) is not None


def test_a_node_key_holds_a_few_ids_and_cannot_fill_the_peer_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node key may claim only ids named after it, but at any port: a member's key (buggy
    or stolen) claiming ``n2@<its host>:<port>`` for every port filled the peer table, which
    keeps up peers, and locked out every newcomer. It now holds ``MAX_IDS_PER_NODE_KEY``."""
    from waraft.distribution.receiver import MAX_IDS_PER_NODE_KEY

    rx, counts = _keyed_receiver(tmp_path, monkeypatch, max_peers=16)
    rx._new_ids = policy.KeyedBuckets(1e6, 1e6)  # (the id cap is what this test is about)
    admitted = [
        rx._connection(_Head(f"n2@127.0.0.1:{port}/t", "node:n2")) is not None
        for port in range(1000, 1100)
    ]
    assert sum(admitted) == MAX_IDS_PER_NODE_KEY and all(admitted[:MAX_IDS_PER_NODE_KEY])
    assert counts["rx_key_id_limit"] == 100 - MAX_IDS_PER_NODE_KEY
    assert len(rx._dist.peers.by_id) == MAX_IDS_PER_NODE_KEY
    # The ids it holds still work, and everyone else gets in.
    assert rx._connection(_Head("n2@127.0.0.1:1000/u", "node:n2")) is not None
    for routing_id, user in (
        ("web.x@127.0.0.1:2/a", "client:web"),
        ("ops.cli@127.0.0.1:3/b", "admin:ops"),
        ("n3@127.0.0.1:4/c", "node:n3"),
    ):
        assert rx._connection(_Head(routing_id, user)) is not None, (user, counts)
