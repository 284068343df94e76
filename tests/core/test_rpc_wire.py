"""RPC envelopes and WARaft's payload defaulting, and the core's handling of decoded RPCs."""

from __future__ import annotations

from typing import Any

import pytest

from waraft.core.rpc import (
    AppendEntries,
    AppendEntriesResponse,
    Handover,
    HandoverFailed,
    NotifyTerm,
    PreVote,
    RaftRpc,
    RequestPreVote,
    RequestVote,
    RpcDecodeError,
    Vote,
    from_wire,
    procedure_name,
    to_wire,
)
from waraft.core.types import ElectionType, Entry, Identity, State

from .fakes import ident, make_node

N1 = ident(1)


def test_round_trip() -> None:
    rpc = RaftRpc(4, N1, AppendEntries(3, 2, [Entry(4, "k", "v")], 2, 1))
    assert from_wire(to_wire(rpc), "me") == rpc
    vote = RaftRpc(4, N1, RequestVote(ElectionType.FORCE, 9, 3))
    assert to_wire(vote)[4][0] == "force"
    assert from_wire(to_wire(vote), "me") == vote


@pytest.mark.parametrize(
    "payload",
    [
        AppendEntries(11, 12, [Entry(12, "k", "v")], 13, 14, True),
        AppendEntriesResponse(21, True, 22, 23, True),
        AppendEntriesResponse(21, False, 22, None, False),
        RequestPreVote(31),
        PreVote(41, True, 42, 43),
        RequestVote(ElectionType.FORCE, 51, 52),
        Vote(True),
        Handover(61, 62, 63, [Entry(63, "k", "v")]),
        HandoverFailed(71),
        NotifyTerm(),
    ],
)
def test_every_procedure_round_trips_with_every_field_set(payload: Any) -> None:
    """Every field distinct from its default and from the others: a field encoded or decoded
    in the wrong slot, or dropped, changes the payload."""
    rpc = RaftRpc(9, N1, payload)
    wire = to_wire(rpc)
    assert wire[:4] == [procedure_name(payload), 9, N1.name, N1.node]
    assert all(not isinstance(value, ElectionType) for value in wire[4])  # plain strings
    assert from_wire(wire, "me") == rpc


@pytest.mark.parametrize(
    ("raw", "payload"),
    [
        (["append_entries", 2, "s", "n", [5]], AppendEntries(5, 0, (), 0, 0)),
        (
            ["append_entries_response", 2, "s", "n", [1, True, 3]],
            AppendEntriesResponse(1, True, 3, None),
        ),
        (["pre_vote", 2, "s", "n", [7]], PreVote(7, False, 0, 0)),
        (["request_vote", 2, "s", "n", []], RequestVote(ElectionType.NORMAL, 0, 0)),
        (["vote", 2, "s", "n", None], Vote(False)),
        (["notify_term", 2, "s", "n", None], NotifyTerm()),
        # extra trailing fields from a newer version are dropped
        (["vote", 2, "s", "n", [True, "future", 1]], Vote(True)),
        (["handover_failed", 2, "s", "n", [3, 4]], HandoverFailed(3)),
    ],
)
def test_payload_defaulting(raw: list[object], payload: object) -> None:
    rpc = from_wire(raw, "me")
    assert rpc.payload == payload
    assert rpc.sender == Identity("s", "n") and rpc.term == 2


def test_legacy_envelope_takes_our_own_name() -> None:
    rpc = from_wire(["vote", 3, "n9", [True]], "raft_server_t_1")
    assert rpc.sender == Identity("raft_server_t_1", "n9") and rpc.payload == Vote(True)


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        ["vote"],
        ["explode", 1, "s", "n", []],
        ["vote", -1, "s", "n", []],
        ["vote", 1, 5, "n", []],
        ["vote", 1, "s", "n", "x"],
        ["append_entries", 1, "s", "n", [1, 1, [["bad"]]]],
        ["request_vote", 1, "s", "n", ["sometimes"]],
    ],
)
def test_malformed_rpcs_are_refused(raw: object) -> None:
    with pytest.raises(RpcDecodeError):
        from_wire(raw, "me")


def test_core_handles_defaulted_payloads() -> None:
    """An old peer's short append_entries_response still updates the leader."""
    from .fakes import make_leader

    leader = make_leader()
    short = from_wire(
        [
            "append_entries_response",
            leader.core.current_term,
            "raft_server_test_1",
            "n2",
            [1, True, 2],
        ],
        "x",
    )
    leader.handle(short, now=1)
    assert leader.core.match_indices["n2"] == 2
    assert "n2" not in leader.core.last_applied_indices  # defaulted to None, not recorded
    follower = make_node(2, term=2)
    heartbeat = from_wire(["append_entries", 2, "raft_server_test_1", "n1", [1, 1]], "x")
    follower.handle(heartbeat, now=1)
    assert follower.core.leader == N1 and follower.state is State.FOLLOWER


@pytest.mark.parametrize(
    "wire",
    [
        ["append_entries", 1, "s", "n", ["x", 0, [], 0, 0]],
        ["append_entries", 1, "s", "n", [0, 0, 5, 0, 0]],
        ["append_entries", 1, "s", "n", [-1, 0, [], 0, 0]],
        ["append_entries_response", 1, "s", "n", [0, "yes", 0, None]],
        ["append_entries_response", 1, "s", "n", [0, True, 0, "x"]],
        ["request_pre_vote", 1, "s", "n", ["ref"]],
        ["vote", 1, "s", "n", [1]],
        ["request_vote", 1, "s", "n", [7]],
        ["request_vote", 1, "s", "n", ["sideways"]],
        ["handover", 1, "s", "n", [1, 0, 0, {"not": "entries"}]],
    ],
)
def test_fields_of_the_wrong_type_are_rejected_not_passed_on(wire: list[Any]) -> None:
    with pytest.raises(RpcDecodeError):
        from_wire(wire, "me")


@pytest.mark.parametrize(
    "raw",
    [[7], [7, "k"], [7, "k", b"cmd"], [7, "k", b"cmd", "lbl"], (7, "k", b"cmd", None)],
)
def test_wire_entries_decode_to_entries_of_every_length(raw: Any) -> None:
    # As msgpack hands them over (lists or tuples), short ones defaulted from the end.
    rpc = from_wire(["append_entries", 7, "s", "n", [0, 0, [raw], 0, 0]], "me")
    assert isinstance(rpc.payload, AppendEntries)
    (entry,) = rpc.payload.entries
    assert type(entry) is Entry
    full = (*raw, *([None] * (4 - len(raw))))
    assert (entry.term, entry.key, entry.command, entry.label) == full
