"""Coalesced heartbeats (issue 13): what is coalesced, one frame per node, fan-out on receipt."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from waraft import otp
from waraft.core.rpc import AppendEntries, AppendEntriesResponse, RaftRpc, RequestVote
from waraft.core.types import Entry, Identity
from waraft.partition import heartbeats
from waraft.services import codec

ME = Identity("raft_server_t_1", "a@h:1")


def _rpc(payload: Any) -> RaftRpc:
    return RaftRpc(3, ME, payload)


def test_only_empty_appends_and_their_success_answers_are_heartbeats() -> None:
    assert heartbeats.is_heartbeat(_rpc(AppendEntries(5, 3, [], 5, 0)))
    assert not heartbeats.is_heartbeat(_rpc(AppendEntries(5, 3, [Entry(3, ("k", 1))], 5, 0)))
    assert heartbeats.is_heartbeat(_rpc(AppendEntriesResponse(5, True, 5, 5)))
    assert not heartbeats.is_heartbeat(_rpc(AppendEntriesResponse(5, True, 6, 5)))  # entries
    assert not heartbeats.is_heartbeat(_rpc(AppendEntriesResponse(5, False, 2, 2)))
    assert not heartbeats.is_heartbeat(_rpc(RequestVote()))


def test_one_frame_per_node_per_window() -> None:
    sent: list[tuple[tuple[str, str], Any]] = []
    done = threading.Event()

    def send(addr: tuple[str, str], msg: Any) -> None:
        sent.append((addr, msg))
        done.set()

    co = heartbeats.Coalescer(30, send)
    try:
        for partition in range(1, 51):
            co.add("b@h:2", f"raft_server_t_{partition}", [["append_entries", 1]])
        co.add("c@h:3", "raft_server_t_1", [["append_entries", 2]])
        assert done.wait(2.0)
        time.sleep(0.05)
        by_node = {addr[1]: msg for addr, msg in sent}
        assert len(sent) == 2 and set(by_node) == {"b@h:2", "c@h:3"}
        assert all(addr[0] == heartbeats.INLINE_NAME for addr, _ in sent)
        tag, items = by_node["b@h:2"]
        assert tag == heartbeats.FRAME_TAG and len(items) == 50
        assert co.frames == 2 and co.rpcs == 51
    finally:
        co.stop()


def test_receive_fans_out_to_local_servers() -> None:
    got: list[Any] = []

    class Sink(otp.Process):
        def handle_cast(self, msg: Any) -> None:
            got.append(msg)

    node = otp.Node("hb.1@local")
    try:
        Sink.start(name="raft_server_t_7", node=node)
        with node.activate():
            assert heartbeats.receive(("heartbeats", [("raft_server_t_7", [["w"]])]))
            assert heartbeats.receive(["heartbeats", [["nobody_here", [["w"]]]]])
            assert not heartbeats.receive(("something", "else"))
        deadline = time.monotonic() + 2
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [("rpcs", [["w"]])]
    finally:
        node.stop()


def test_a_coalesced_frame_carries_only_its_senders_rpcs_to_partition_servers() -> None:
    from waraft.core.rpc import to_wire
    from waraft.distribution import policy

    me = policy.Sender("n2@h:2", frozenset({policy.MEMBER}))
    own = to_wire(RaftRpc(3, Identity("raft_server_kv_1", "n2@h:2"), AppendEntries(4, 3, [], 4)))
    forged = to_wire(RaftRpc(3, Identity("raft_server_kv_1", "n9@h:9"), AppendEntries(4, 3, [], 4)))
    ok = ("heartbeats", [("raft_server_kv_1", [own])])
    assert heartbeats._frame_from_sender(me, ok)
    # another node's heartbeat, a non-server target (the fan-out is an unchecked local cast)
    assert not heartbeats._frame_from_sender(me, ("heartbeats", [("raft_server_kv_1", [forged])]))
    assert not heartbeats._frame_from_sender(me, ("heartbeats", [("kernel_sup", [own])]))
    assert not heartbeats._frame_from_sender(me, ("heartbeats", "junk"))
    heartbeats.install()
    rule = policy.rule_for(heartbeats.INLINE_NAME, False, ok)
    assert policy.admits(rule, me, ok)
    outsider = policy.Sender("c1@h:3", frozenset({policy.CLIENT}))
    assert not policy.admits(rule, outsider, ok)


class _Sender(otp.Process):
    """Queues one turn's batches the way partition servers do."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return [heartbeats.send_at_turn_end(node, name, wires) for node, name, wires in request]


def test_one_turn_of_batches_leaves_as_one_frame_per_node(monkeypatch: Any) -> None:
    sent: list[tuple[tuple[str, str], Any]] = []
    monkeypatch.setattr(heartbeats.distribution, "cast", lambda addr, msg: sent.append((addr, msg)))
    monkeypatch.setattr(
        heartbeats.distribution,
        "cast_bytes",
        lambda addr, payload: sent.append((addr, _plain(codec.unpackb(payload)))),
    )
    node = otp.Node("turnframes@t", process_type=otp.SCHEDULED, schedulers=1)
    try:
        pid = _Sender.start(node=node)
        batches = [
            ("b@h:1", "raft_server_t_1", [["append_entries", 1]]),
            ("b@h:1", "raft_server_t_2", [["append_entries", 2]]),
            ("c@h:1", "raft_server_t_1", [["append_entries", 3]]),
        ]
        assert otp.call(pid, batches) == [True, True, True]
        deadline = time.monotonic() + 5
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(sent) == [
            (
                (heartbeats.INLINE_NAME, "b@h:1"),
                [
                    heartbeats.FRAME_TAG,
                    [["raft_server_t_1", [["append_entries", 1]]],
                     ["raft_server_t_2", [["append_entries", 2]]]],
                ],
            ),
            (("raft_server_t_1", "c@h:1"), ("rpcs", [["append_entries", 3]])),  # alone: as is
        ]  # fmt: skip
        # Outside a scheduled process nothing is queued: the caller sends.
        assert not heartbeats.send_at_turn_end("b@h:1", "raft_server_t_1", [])
    finally:
        node.stop()


def _plain(value: Any) -> Any:
    """Arrays as lists, whatever the decoder made of them."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("count", [1, 2, 15, 16, 300, 70_000])
def test_a_turn_frame_that_fits_is_one_packb_of_the_whole(count: int) -> None:
    items = [(f"raft_server_t_{i}", [["append_entries", i, b"x"]]) for i in range(count)]
    assert heartbeats.frame_payloads(items, 1 << 30) == [codec.packb((heartbeats.FRAME_TAG, items))]


def test_a_turn_frame_over_the_limit_is_split_in_order() -> None:
    # A catch-up storm: many partitions' appends of ~100 kB to one node in one turn.
    items = [(f"raft_server_t_{i}", [["append_entries", i, b"v" * 100_000]]) for i in range(40)]
    whole = len(codec.packb((heartbeats.FRAME_TAG, items)))
    limit = 1_000_000
    payloads = heartbeats.frame_payloads(items, limit)
    assert len(payloads) >= whole // limit
    assert all(len(p) <= limit + 16 for p in payloads)  # at most the header over the limit
    seen: list[Any] = []
    for payload in payloads:
        tag, chunk = codec.unpackb(payload)
        assert tag == heartbeats.FRAME_TAG and chunk
        seen.extend(chunk)
    assert _plain(seen) == _plain(items)
    # one batch larger than the limit goes alone, never dropped from its frame
    big = [("raft_server_t_1", [[b"w" * 3000]]), ("raft_server_t_2", [[b"s"]])]
    alone = heartbeats.frame_payloads(big, 1000)
    assert [_plain(codec.unpackb(p)[1]) for p in alone] == [[_plain(big[0])], [_plain(big[1])]]


def test_a_turn_over_the_frame_limit_leaves_in_several_frames(monkeypatch: Any) -> None:
    sent: list[tuple[tuple[str, str], Any]] = []
    monkeypatch.setattr(
        heartbeats.distribution,
        "cast_bytes",
        lambda addr, payload: sent.append((addr, _plain(codec.unpackb(payload)))),
    )
    monkeypatch.setattr(heartbeats, "MAX_TURN_FRAME_BYTES", 250)
    items = [(f"raft_server_t_{i}", [["append_entries", i, b"e" * 100]]) for i in range(5)]
    heartbeats._turn.pending = {"b@h:1": list(items)}
    heartbeats._flush_turn()
    assert len(sent) >= 3 and {addr for addr, _ in sent} == {(heartbeats.INLINE_NAME, "b@h:1")}
    assert [item for _, (tag, chunk) in sent for item in chunk] == _plain(items)
    assert heartbeats._turn.pending == {}
