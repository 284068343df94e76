"""Cluster configuration (membership) functions: the Python twin of WARaft's config helpers.

A ``Config`` (``waraft.core.types``) lists voting ``membership``, replication ``participants``
(a superset of the membership; non-voting learners are participants only) and ``witness``
peers (members or participants that keep log metadata but not the state machine's data).

This module also holds the quorum arithmetic the server uses (``compute_member_quorum``,
``find_member_majority``): both look only at voting members, keyed by node id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from waraft.core.types import (
    NOOP,
    NOOP_OMITTED,
    READ_KEY,
    Config,
    Entry,
    Identity,
    error,
    is_config_command,
)

LATEST_CONFIG_VERSION = 1

V = TypeVar("V")

# Verbs accepted by ``adjust_config`` (besides the bare ``"refresh"``).
ADJUST_VERBS = frozenset(
    {
        "add",
        "add_witness",
        "add_participant",
        "add_witness_participant",
        "promote_participant_if_ready",
        "remove",
        "remove_witness",
        "remove_membership",
        "demote_to_witness",
    }
)


class ConfigError(ValueError):
    """A configuration this version cannot understand (no or unsupported version)."""


def _identity(peer: Any) -> Identity:
    """Coerce ``(name, node)`` pairs (lists after a msgpack round trip) into ``Identity``."""
    if isinstance(peer, Identity):
        return peer
    if isinstance(peer, (tuple, list)) and len(peer) == 2:
        return Identity(str(peer[0]), str(peer[1]))
    raise ConfigError(f"bad peer {peer!r}: expected (name, node)")


def _usort(peers: Iterable[Any]) -> tuple[Identity, ...]:
    return tuple(sorted({_identity(p) for p in peers}))


def make_config(
    members: Iterable[Any] = (),
    witnesses: Iterable[Any] = (),
    *,
    participants: Iterable[Any] = (),
) -> Config:
    """A v1 config. Participants always include every member; lists are sorted and unique.

    ``make_config()`` has no members and must not be used as a live cluster's config.
    """
    member_ids = _usort(members)
    return Config(
        version=LATEST_CONFIG_VERSION,
        membership=member_ids,
        participants=_usort((*participants, *member_ids)),
        witness=_usort(witnesses),
    )


def set_config_members(
    config: Config | Mapping[str, Any],
    members: Iterable[Any],
    witnesses: Iterable[Any] = (),
    *,
    participants: Iterable[Any] | None = None,
) -> Config:
    """Replace members, witnesses and participants (participants default to the members)."""
    normalize_config(config)  # rejects unknown versions, like WARaft's upgrade step
    member_list = list(members)
    return make_config(
        member_list,
        witnesses,
        participants=member_list if participants is None else participants,
    )


def normalize_config(config: Config | Mapping[str, Any]) -> Config:
    """Upgrade any supported config form to the latest version.

    Accepts a ``Config`` or a WARaft-style mapping (``{"version": 1, "membership": [...]}``);
    a v1 mapping without participants uses its membership, without witnesses none.
    Raises ``ConfigError`` for a missing or unsupported version.
    """
    if isinstance(config, Config):
        if config.version != LATEST_CONFIG_VERSION:
            raise ConfigError(f"unsupported config version {config.version!r}")
        membership = config.membership
        return Config(
            version=LATEST_CONFIG_VERSION,
            membership=_usort(membership),
            participants=_usort(config.participants or membership),
            witness=_usort(config.witness),
        )
    if not isinstance(config, Mapping) or "version" not in config:
        raise ConfigError("config has no version")
    version = config["version"]
    if version != LATEST_CONFIG_VERSION:
        raise ConfigError(f"unsupported config version {version!r}")
    membership_raw = config.get("membership", ())
    return Config(
        version=LATEST_CONFIG_VERSION,
        membership=_usort(membership_raw),
        participants=_usort(config.get("participants", membership_raw)),
        witness=_usort(config.get("witness", ())),
    )


# -- accessors -------------------------------------------------------------------------------


def members(config: Config) -> tuple[Identity, ...]:
    """Voting members."""
    return config.membership


def participants(config: Config) -> tuple[Identity, ...]:
    """Everyone who receives replication; falls back to the membership when empty."""
    return config.participants or config.membership


def full_members(config: Config) -> tuple[Identity, ...]:
    """Voting members that hold the state machine's data (members minus witnesses)."""
    witness = config.witness
    return tuple(p for p in config.membership if p not in witness)


def bootstrap_refusal(config: Config, self_id: Identity | None = None) -> str | None:
    """Why a replica may not start from ``config`` (``None``: it may).

    A bootstrapped replica refuses every later bootstrap, so a config that can never work
    must be refused before it is installed (recovering from one meant wiping the data):

    * ``no_members``: nobody votes, so nobody is ever elected;
    * ``no_data_member``: every member is a witness; witnesses never stand for election;
    * ``not_a_participant``: ``self_id`` (when given) is not in the config, so the replica
      would belong to a cluster that never replicates to it.
    """
    if not config.membership:
        return "no_members"
    if not full_members(config):
        return "no_data_member"
    if self_id is not None and not is_participant(self_id, config):
        return "not_a_participant"
    return None


def witness_members(config: Config) -> tuple[Identity, ...]:
    """Witnesses that vote."""
    membership = config.membership
    return tuple(p for p in config.witness if p in membership)


def witnesses(config: Config) -> tuple[Identity, ...]:
    """Every witness, voting or not."""
    return config.witness


def is_member(peer: Identity, config: Config) -> bool:
    return peer in config.membership


def is_participant(peer: Identity, config: Config) -> bool:
    return peer in participants(config)


def is_witness(peer: Identity, config: Config) -> bool:
    return peer in config.witness


def is_data_replica(peer: Identity, config: Config) -> bool:
    """A participant that keeps the state machine's data."""
    return peer in participants(config) and peer not in config.witness


def is_single_member(peer: Identity, config: Config) -> bool:
    """The membership is exactly ``[peer]`` and ``peer`` is not a witness."""
    return config.membership == (peer,) and peer not in config.witness


def member_by_node(node: str, config: Config) -> Identity | None:
    """The voting member whose node id is ``node``, if any."""
    for peer in config.membership:
        if peer.node == node:
            return peer
    return None


# -- quorum arithmetic -----------------------------------------------------------------------


def compute_quorum(values: Sequence[V], total: int) -> V | None:
    """The largest value that a majority of ``total`` voters reached, ``None`` if unknowable.

    Only the known ``values`` count: more than half of ``total`` must be known.
    """
    count = len(values)
    if count * 2 <= total:
        return None
    ordered: list[Any] = sorted(values)
    result: V = ordered[count - total // 2 - 1]
    return result


def find_majority(values: Sequence[V], total: int) -> V | None:
    """The value held by more than half of ``total`` voters, if one is already decided."""
    threshold = total // 2 + 1
    counts: dict[Any, int] = {}
    for value in values:
        seen = counts.get(value, 0) + 1
        if seen == threshold:
            return value
        counts[value] = seen
    return None


def compute_member_quorum(mapping: Mapping[str, V], config: Config) -> V | None:
    """``compute_quorum`` over the members' values in ``mapping`` (keyed by node id)."""
    membership = config.membership
    if not membership:
        return None
    values = [mapping[p.node] for p in membership if p.node in mapping]
    return compute_quorum(values, len(membership))


def find_member_majority(mapping: Mapping[str, V], config: Config) -> V | None:
    """``find_majority`` over the members' values in ``mapping`` (keyed by node id)."""
    membership = config.membership
    if not membership:
        return None
    values = [mapping[p.node] for p in membership if p.node in mapping]
    return find_majority(values, len(membership))


def full_member_max(mapping: Mapping[str, int], default: int, config: Config) -> int:
    """The largest full (non-witness) member value, at least ``default``."""
    witness = config.witness
    best = default
    for peer in config.membership:
        if peer not in witness:
            value = mapping.get(peer.node, default)
            if value > best:
                best = value
    return best


# -- membership changes ----------------------------------------------------------------------


def _add(peers: tuple[Identity, ...], peer: Identity) -> tuple[Identity, ...]:
    return peers if peer in peers else tuple(sorted((*peers, peer)))


def _drop(peers: tuple[Identity, ...], peer: Identity) -> tuple[Identity, ...]:
    return tuple(p for p in peers if p != peer)


def _replace(
    config: Config,
    membership: tuple[Identity, ...] | None = None,
    participants_: tuple[Identity, ...] | None = None,
    witness: tuple[Identity, ...] | None = None,
) -> Config:
    return Config(
        version=config.version,
        membership=config.membership if membership is None else membership,
        participants=participants(config) if participants_ is None else participants_,
        witness=config.witness if witness is None else witness,
    )


_SELF_REFUSALS = {
    "remove": "cannot_remove_self",
    "remove_witness": "cannot_remove_self",
    "remove_membership": "cannot_remove_self",
    "demote_to_witness": "cannot_demote_self",
}


def action_refusal(action: Any, self_id: Identity) -> Any:
    """Why ``action`` is refused whatever the config and the log (``None``: it may apply).

    WARaft's errors for what the request alone decides: ``("invalid_action", action)``,
    ``("invalid_peer", peer)`` and ``cannot_remove_self`` / ``cannot_demote_self``. A
    leader answers these before its readiness checks (``leader.config_change_allowed``): an
    operator whose typo met an unapplied config change was told ``not_ready``, retried, and
    only then learned the request could never apply."""
    if action == "refresh":
        return None
    if (
        not isinstance(action, (tuple, list))
        or len(action) != 2
        or not isinstance(action[0], str)  # an unhashable verb raised on the lookup below
        or action[0] not in ADJUST_VERBS
    ):
        return ("invalid_action", action)
    try:
        peer = _identity(action[1])
    except ConfigError:
        return ("invalid_peer", action[1])
    if peer == self_id:
        return _SELF_REFUSALS.get(action[0])
    return None


def adjust_config(
    action: Any,
    config: Config,
    self_id: Identity,
    is_ready: Callable[[Identity], bool],
) -> tuple[str, Any]:
    """Apply one membership action to ``config``: ``("ok", Config)`` or ``("error", reason)``.

    ``action`` is ``"refresh"`` or ``(verb, peer)``; ``is_ready(peer)`` is the handover
    readiness test used by ``promote_participant_if_ready``. The errors are WARaft's
    (``action_refusal``'s first).
    """
    refusal = action_refusal(action, self_id)
    if refusal is not None:
        return error(refusal)
    if action == "refresh":
        return ("ok", config)
    verb: str = action[0]
    peer = _identity(action[1])
    member = peer in config.membership
    witness = peer in config.witness
    participant = peer in participants(config)
    parts = participants(config)

    if verb == "add":
        if member:
            return error("already_member")
        if witness:
            return error("already_witness")
        return ("ok", _replace(config, _add(config.membership, peer), _add(parts, peer)))
    if verb == "add_witness":
        if member and witness:
            return error("already_witness")
        if member:
            return error("already_member")
        if participant and not witness:
            return error("not_a_witness")
        return (
            "ok",
            _replace(
                config,
                _add(config.membership, peer),
                _add(parts, peer),
                _add(config.witness, peer),
            ),
        )
    if verb in ("add_participant", "add_witness_participant"):
        if member:
            return error("already_member")
        if witness:
            return error("already_witness")
        if participant:
            return error("already_participating")
        new_witness = _add(config.witness, peer) if verb == "add_witness_participant" else None
        return ("ok", _replace(config, None, _add(parts, peer), new_witness))
    if verb == "promote_participant_if_ready":
        if member:
            return error("already_member")
        if not participant:
            return error("not_a_participant")
        if not is_ready(peer):
            return error("not_ready")
        return ("ok", _replace(config, _add(config.membership, peer), _add(parts, peer)))
    if verb == "remove":
        if not participant:
            return error("not_a_participant")
        return _removed(config, peer)
    if verb == "remove_witness":
        if not witness:
            return error("not_a_witness")
        return _removed(config, peer)
    if verb == "remove_membership":
        if not member:
            return error("not_a_member")
        return ("ok", _replace(config, _drop(config.membership, peer)))
    # demote_to_witness
    if not participant:
        return error("not_a_participant")
    if witness:
        return error("already_witness")
    return ("ok", _replace(config, None, None, _add(config.witness, peer)))


def _removed(config: Config, peer: Identity) -> tuple[str, Any]:
    return (
        "ok",
        _replace(
            config,
            _drop(config.membership, peer),
            _drop(participants(config), peer),
            _drop(config.witness, peer),
        ),
    )


# -- witness replication ---------------------------------------------------------------------


def stub_command(key: Any, command: Any) -> Any:
    """What a witness stores instead of ``command``: configs and plain noops survive."""
    if command == NOOP:
        return NOOP_OMITTED if key == READ_KEY else NOOP
    if is_config_command(command):
        return command
    return NOOP_OMITTED


def stub_entries_for_witness(entries: Iterable[Entry]) -> list[Entry]:
    """Replace the payload of every data-carrying entry with ``noop_omitted``."""
    out: list[Entry] = []
    for entry in entries:
        if entry.command is None:
            out.append(entry)
        else:
            out.append(entry._replace(command=stub_command(entry.key, entry.command)))
    return out
