"""Membership functions: construction, normalisation, accessors, the ten actions, quorums."""

from __future__ import annotations

import pytest

from waraft.core import config
from waraft.core.config import ConfigError, adjust_config, make_config, normalize_config
from waraft.core.types import CONFIG, NOOP, NOOP_OMITTED, READ_KEY, Config, Entry, Identity

from .fakes import ident

A, B, C, D = ident(1), ident(2), ident(3), ident(4)


def always(_: Identity) -> bool:
    return True


def never(_: Identity) -> bool:
    return False


def test_make_config_sorts_dedups_and_includes_members_in_participants() -> None:
    cfg = make_config([C, A, A], [B], participants=[D])
    assert cfg.version == 1
    assert cfg.membership == (A, C)
    assert cfg.participants == (A, C, D)
    assert cfg.witness == (B,)
    assert make_config() == Config(1, (), (), ())


def test_make_config_accepts_plain_pairs() -> None:
    cfg = make_config([("s", "n2"), ["s", "n1"]])
    assert cfg.membership == (Identity("s", "n1"), Identity("s", "n2"))


def test_set_config_members_replaces_lists() -> None:
    cfg = make_config([A, B], [B], participants=[D])
    new = config.set_config_members(cfg, [C])
    assert new == make_config([C])
    assert config.set_config_members(cfg, [A], [A], participants=[B]).participants == (A, B)


def test_normalize_mapping_defaults_participants_and_witnesses() -> None:
    cfg = normalize_config({"version": 1, "membership": [("s", "n2"), ("s", "n1")]})
    assert cfg.participants == cfg.membership == (Identity("s", "n1"), Identity("s", "n2"))
    assert cfg.witness == ()
    assert normalize_config({"version": 1}) == make_config()


def test_normalize_config_object_fills_empty_participants() -> None:
    cfg = normalize_config(Config(1, (B, A), (), ()))
    assert cfg.participants == (A, B)


@pytest.mark.parametrize("bad", [{}, {"membership": []}, {"version": 2}, Config(version=2)])
def test_normalize_rejects_missing_or_unknown_version(bad: object) -> None:
    with pytest.raises(ConfigError):
        normalize_config(bad)  # type: ignore[arg-type]


def test_accessors() -> None:
    cfg = make_config([A, B, C], [C, D], participants=[D])
    assert config.members(cfg) == (A, B, C)
    assert config.participants(cfg) == (A, B, C, D)
    assert config.full_members(cfg) == (A, B)
    assert config.witness_members(cfg) == (C,)
    assert config.witnesses(cfg) == (C, D)
    assert config.is_data_replica(A, cfg)
    assert not config.is_data_replica(C, cfg)
    assert not config.is_data_replica(Identity("x", "y"), cfg)
    assert config.is_witness(D, cfg)
    assert config.member_by_node("n2", cfg) == B
    assert config.member_by_node("n4", cfg) is None
    # participants fall back to the membership when empty
    assert config.participants(Config(1, (A,), (), ())) == (A,)


def test_is_single_member() -> None:
    assert config.is_single_member(A, make_config([A]))
    assert not config.is_single_member(A, make_config([A], [A]))
    assert not config.is_single_member(A, make_config([A, B]))
    assert not config.is_single_member(B, make_config([A]))


BASE = make_config([A, B, C], [C], participants=[D])  # D: non-voting participant


@pytest.mark.parametrize(
    ("action", "ready", "expected"),
    [
        ("refresh", never, BASE),
        (("add", D), never, make_config([A, B, C, D], [C])),
        (("add", A), never, "already_member"),
        (("add", Identity("w", "w")), never, None),  # fresh peer
        (("add_witness", Identity("w", "w")), never, None),
        (("add_witness", C), never, "already_witness"),
        (("add_witness", A), never, "already_member"),
        (("add_witness", D), never, "not_a_witness"),
        (("add_participant", Identity("p", "p")), never, None),
        (("add_participant", A), never, "already_member"),
        (("add_participant", D), never, "already_participating"),
        (("add_witness_participant", Identity("p", "p")), never, None),
        (("add_witness_participant", D), never, "already_participating"),
        (("promote_participant_if_ready", D), always, make_config([A, B, C, D], [C])),
        (("promote_participant_if_ready", D), never, "not_ready"),
        (("promote_participant_if_ready", A), always, "already_member"),
        (("promote_participant_if_ready", Identity("x", "x")), always, "not_a_participant"),
        (("remove", B), never, make_config([A, C], [C], participants=[D])),
        (("remove", D), never, make_config([A, B, C], [C])),
        (("remove", A), never, "cannot_remove_self"),
        (("remove", Identity("x", "x")), never, "not_a_participant"),
        (("remove_witness", C), never, make_config([A, B], participants=[D])),
        (("remove_witness", B), never, "not_a_witness"),
        (("remove_witness", A), never, "cannot_remove_self"),
        (("remove_membership", B), never, make_config([A, C], [C], participants=[B, D])),
        (("remove_membership", D), never, "not_a_member"),
        (("remove_membership", A), never, "cannot_remove_self"),
        (("demote_to_witness", B), never, make_config([A, B, C], [B, C], participants=[D])),
        (("demote_to_witness", D), never, make_config([A, B, C], [C, D], participants=[D])),
        (("demote_to_witness", C), never, "already_witness"),
        (("demote_to_witness", A), never, "cannot_demote_self"),
        (("demote_to_witness", Identity("x", "x")), never, "not_a_participant"),
    ],
)
def test_adjust_config_actions(action: object, ready: object, expected: object) -> None:
    result = adjust_config(action, BASE, A, ready)  # type: ignore[arg-type]
    if expected is None:
        assert result[0] == "ok"
        peer = action[1]  # type: ignore[index]
        assert peer in config.participants(result[1])
    elif isinstance(expected, str):
        assert result == ("error", expected)
    else:
        assert result == ("ok", expected)


def test_adjust_config_witness_variants_place_peer_correctly() -> None:
    w = Identity("w", "w")
    added = adjust_config(("add_witness", w), BASE, A, never)[1]
    assert w in added.membership and w in added.witness
    participant = adjust_config(("add_witness_participant", w), BASE, A, never)[1]
    assert w not in participant.membership and w in participant.witness
    # a non-voting witness participant may become a voting witness
    promoted = adjust_config(("add_witness", w), participant, A, never)[1]
    assert w in promoted.membership and w in promoted.witness
    # promote_participant_if_ready keeps a witness participant a witness
    ready = adjust_config(("promote_participant_if_ready", w), participant, A, always)[1]
    assert w in ready.membership and w in ready.witness


def test_adjust_config_rejects_malformed_actions() -> None:
    assert adjust_config(("explode", B), BASE, A, never)[0] == "error"
    assert adjust_config("nonsense", BASE, A, never)[0] == "error"
    assert adjust_config(("add", "not-a-peer"), BASE, A, never)[0] == "error"


def test_compute_quorum() -> None:
    assert config.compute_quorum([1, 2, 3], 3) == 2
    assert config.compute_quorum([5, 6, 7], 5) == 5
    assert config.compute_quorum([5, 6], 5) is None
    assert config.compute_quorum([9], 1) == 9
    assert config.compute_quorum([4, 9], 3) == 4
    assert config.compute_quorum([], 0) is None


def test_find_majority_either_way() -> None:
    assert config.find_majority([True, True], 3) is True
    assert config.find_majority([False, True, False], 3) is False
    assert config.find_majority([True, False], 3) is None
    assert config.find_majority([True, True], 5) is None


def test_member_quorums_ignore_non_members() -> None:
    cfg = make_config([A, B, C], participants=[D])
    mapping = {"n1": 10, "n4": 99, "n2": 7}
    assert config.compute_member_quorum(mapping, cfg) == 7
    assert config.find_member_majority({"n4": True, "n1": True}, cfg) is None
    assert config.compute_member_quorum(mapping, make_config()) is None
    assert config.full_member_max({"n1": 3, "n3": 9}, 0, make_config([A, B, C], [C])) == 3


def test_stub_entries_for_witness() -> None:
    cfg_cmd = (CONFIG, make_config([A]))
    entries = [
        Entry(1),
        Entry(1, "k", NOOP),
        Entry(1, READ_KEY, NOOP),
        Entry(1, "k", cfg_cmd, "label"),
        Entry(1, "k", ("write", "x", 1), "label"),
    ]
    stubbed = config.stub_entries_for_witness(entries)
    assert [e.command for e in stubbed] == [None, NOOP, NOOP_OMITTED, cfg_cmd, NOOP_OMITTED]
    assert [e.term for e in stubbed] == [1] * 5
    assert stubbed[4].label == "label" and stubbed[4].key == "k"
