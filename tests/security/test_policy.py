"""Unit tests of the allow-list, the rate limits and the key-bound rights."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_rate_limits_per_sender_and_node_wide() -> None:
    limiter = policy.RateLimiter(per_sender=10, node_wide=15)
    first = sum(limiter.take("a@h:1") for _ in range(100))
    assert first == 20  # the burst is twice the rate
    second = sum(limiter.take("b@h:1") for _ in range(100))
    assert second == 10  # what is left of the node-wide burst of 30


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
    from types import SimpleNamespace

    from waraft.distribution.receiver import MAX_IDS_PER_KEY, Receiver

    table: dict[str, object] = {}
    receiver = object.__new__(Receiver)
    receiver._dist = SimpleNamespace(peers=SimpleNamespace(by_id=table))  # type: ignore[assignment]
    receiver._ids_of_key = {}
    client, node = policy.RIGHTS - {policy.MEMBER}, policy.RIGHTS
    for i in range(MAX_IDS_PER_KEY):
        node_id = f"app.{i}@h:1"
        assert receiver._key_may_add("client:app", client, node_id)
        table[node_id] = object()
    assert not receiver._key_may_add("client:app", client, "app.extra@h:1")
    assert receiver._key_may_add("client:other", client, "other.1@h:1")  # keys are apart
    assert receiver._key_may_add("node:n1", node, "n1@h:1")
    assert receiver._key_may_add(None, client, "app.extra@h:1")  # no keys: no attribution
    del table["app.0@h:1"]  # a forgotten peer makes room
    assert receiver._key_may_add("client:app", client, "app.extra@h:1")


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
