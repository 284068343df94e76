"""File transfers between two in-process nodes: content, chunking and the in-flight window,
admission, path safety, cancellation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.partition.helpers import wait_until
from tests.transport.helpers import (
    ChunkLog,
    admit,
    follow,
    make_tree,
    offer,
    on,
    read_tree,
    receiver_ids,
    replace_receiver,
    sample_tree,
    set_raft,
    snapshot_meta,
    start,
    wait_status,
)
from waraft import otp, transport
from waraft.services import metrics
from waraft.transport import dist_transport


def _pair(tmp_path: Path, **kw: object) -> tuple[otp.Node, otp.Node]:
    """Two nodes; ``a`` is a member of ``b``'s partition (``b`` takes its transfers)."""
    a, b = start(tmp_path, "a", **kw), start(tmp_path, "b", **kw)  # type: ignore[arg-type]
    admit(b, a)
    return a, b


def _received_root(node: otp.Node, transport_id: int) -> Path:
    root = on(node, transport.transport_info, transport_id, "root")
    assert root is not None
    return Path(root)


def test_a_directory_tree_arrives_intact_and_both_records_complete(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    files = sample_tree()
    src = make_tree(tmp_path / "src", files)
    result = on(a, transport.transfer, b.id, "test", 1, str(src), 10.0)
    assert result[0] == "ok"
    transport_id = result[1]
    assert on(a, transport.transport_info, transport_id, "status") == "completed"
    wait_status(b, transport_id, "completed")
    dest = _received_root(b, transport_id)
    assert dest == tmp_path / "b" / "test.1" / "transport" / str(transport_id)
    assert read_tree(dest) == files
    sent = on(a, transport.transport_info, transport_id)
    got = on(b, transport.transport_info, transport_id)
    assert (sent["type"], got["type"]) == ("sender", "receiver")
    assert sent["total_files"] == got["total_files"] == got["completed_files"] == len(files)
    assert got["peer"] == a.id and sent["peer"] == b.id
    assert got["meta"] == {"type": "transfer", "table": "test", "partition": 1}
    # The receiver keeps an ended transport's totals, not its files' records.
    size = sum(len(content) for content in files.values())
    assert got["total_bytes"] == got["received_bytes"] == size
    for file_id in range(1, len(files) + 1):
        sent_file = on(a, transport.file_info, transport_id, file_id)
        assert sent_file["status"] == "completed" and sent_file["name"] in files
        assert on(b, transport.file_info, transport_id, file_id) is None
    assert on(b, transport.transfer_end_time, str(transport_id)) is not None


def test_tiny_chunks_and_several_workers_still_reassemble_every_file(tmp_path: Path) -> None:
    raft = {"dist_transport_chunk_size": 7, "dist_transport_max_inflight": 3}
    a = start(tmp_path, "a", raft={**raft, "raft_transport_threads": 3})
    b = start(tmp_path, "b", raft=raft)
    admit(b, a)
    files = {f"d{i % 3}/f{i}": os.urandom(100 + 37 * i) for i in range(9)}
    src = make_tree(tmp_path / "src", files)
    transport_id = on(a, transport.transfer, b.id, "test", 1, str(src), 20.0)[1]
    wait_status(b, transport_id, "completed")
    assert read_tree(_received_root(b, transport_id)) == files
    workers = otp.supervisor.which_children(
        (f"raft_transport_target_sup_{b.id}", a.id)  # the per-peer supervisor on the sender
    )
    assert len(workers) == 3


def test_at_most_max_inflight_chunks_wait_for_an_acknowledgement(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, raft={"dist_transport_chunk_size": 10, "dist_transport_max_inflight": 2})
    log = ChunkLog(hold=True)
    replace_receiver(b, log)
    src = make_tree(tmp_path / "src", {"f": bytes(range(100))})  # 10 chunks
    transport_id = on(a, transport.start_transfer, b.id, "test", 1, str(src))[1]
    assert log.wait_chunks(2)
    # The window is full: no third chunk until one is acknowledged.
    assert not log.wait_chunks(3, timeout=0.3)
    log.release(1)
    assert log.wait_chunks(3)
    assert not log.wait_chunks(4, timeout=0.2)
    log.release_all()
    wait_status(a, transport_id, "completed")
    offsets = [offset for _, _, offset, _ in log.chunks]
    assert offsets == list(range(0, 100, 10))
    assert log.completions == [("complete", transport_id, 1)]


def test_a_missing_acknowledgement_fails_the_transfer(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, raft={"dist_transport_ack_timeout_ms": 200})
    log = ChunkLog(hold=True)
    replace_receiver(b, log)
    src = make_tree(tmp_path / "src", {"f": b"x" * 10})
    transport_id = on(a, transport.start_transfer, b.id, "test", 1, str(src))[1]
    wait_status(a, transport_id, "failed")
    error = on(a, transport.transport_info, transport_id, "error")
    assert error == ("file", 1, ("send_timed_out", transport_id, 1))
    assert log.completions == []  # never told the receiver the file was complete


def test_incoming_snapshots_are_admitted_up_to_the_limits(tmp_path: Path) -> None:
    b = start(
        tmp_path,
        "b",
        raft={
            "raft_max_incoming_snapshot_transfers": 2,
            "raft_max_incoming_witness_snapshot_transfers": 1,
        },
    )
    one_file = [(1, "data", 10)]
    # Snapshots are taken only from the partition's leader: first nobody leads, then another.
    assert offer(b, 100, one_file, meta=snapshot_meta()) == ("error", "not_leader")
    follow(b, "someone@else")
    assert offer(b, 100, one_file, meta=snapshot_meta()) == ("error", "not_leader")
    assert on(b, transport.transport_info, 100) is None
    follow(b, "fake@sender")
    assert offer(b, 101, one_file, meta=snapshot_meta()) == "ok"
    assert offer(b, 102, one_file, meta=snapshot_meta()) == "ok"
    assert offer(b, 103, one_file, meta=snapshot_meta()) == ("error", "receiver_overloaded")
    # Witness snapshots have their own budget.
    assert offer(b, 104, one_file, meta=snapshot_meta(witness=True)) == "ok"
    assert offer(b, 105, one_file, meta=snapshot_meta(witness=True)) == (
        "error",
        "receiver_overloaded",
    )
    assert on(b, transport.may_accept, b.id, False) == ("error", "receiver_overloaded")
    assert on(b, transport.transport_info, 103) is None
    # A finished transport frees its slot.
    on(b, transport.cancel, 101, "test")
    assert on(b, transport.may_accept, b.id, False) == "ok"
    assert offer(b, 106, one_file, meta=snapshot_meta()) == "ok"
    assert offer(b, 106, one_file, meta=snapshot_meta(witness=True)) == ("error", "duplicate")


def test_the_sender_learns_the_receiver_is_overloaded(tmp_path: Path) -> None:
    a = start(tmp_path, "a")
    b = start(tmp_path, "b", raft={"raft_max_incoming_snapshot_transfers": 0})
    follow(b, a)
    src = make_tree(tmp_path / "src", {"data": b"d"})
    result = on(a, transport.start_snapshot_transfer, b.id, "test", 1, (3, 1), str(src), False)
    assert result == ("error", "receiver_overloaded")
    (transport_id,) = on(a, transport.transports)
    info = on(a, transport.transport_info, transport_id)
    assert info["status"] == "failed"
    assert info["error"] == ("rejected", "receiver_overloaded")
    assert on(a, transport.may_accept, b.id, False) == ("error", "receiver_overloaded")
    assert on(a, transport.may_accept, "nobody@nowhere", False) == ("error", "unsupported")


class FullDisk:
    """A provider whose admission hook reports a full disk (the default one checks free space)."""

    @staticmethod
    def transport_accept(meta: dict[str, object], incoming_bytes: int) -> object:
        return ("error", "receiver_disk_full") if incoming_bytes > 0 else "ok"


def test_the_provider_admission_hook_can_refuse_for_a_full_disk(tmp_path: Path) -> None:
    a = start(tmp_path, "a")
    b = start(tmp_path, "b", transport_module=f"{__name__}:FullDisk")
    admit(b, a)
    admit(a, "fake@sender")
    src = make_tree(tmp_path / "src", {"data": b"1234"})
    assert on(a, transport.start_transfer, b.id, "test", 1, str(src)) == (
        "error",
        "receiver_disk_full",
    )
    assert receiver_ids(b) == []
    # The default provider refuses only what cannot fit on the file system.
    huge = 1 << 62
    assert offer(a, 7, [(1, "x", huge)]) == ("error", "receiver_disk_full")
    assert offer(a, 8, [(1, "x", 10)]) == "ok"


def test_disk_admission_counts_what_running_transports_still_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two catch-ups of 0.6 x the free space each must not both be admitted: together they
    would fill the disk that holds the log and the storage. A snapshot also needs room for
    its install copy (the storage copies it into its database)."""

    def space(path: str) -> tuple[int, int]:  # a 1000-byte disk that received chunks fill
        received = tmp_path.glob("b/*/transport/*/*")
        return 1000 - sum(p.stat().st_size for p in received if p.is_file()), 1000

    monkeypatch.setattr(dist_transport, "_disk_space", space)
    no_reserve = {dist_transport.RESERVE_BYTES_KEY: 0, dist_transport.RESERVE_PERCENT_KEY: 0}
    b = start(tmp_path, "b", partitions=(1, 2, 3), raft=no_reserve)
    for partition in (1, 2):
        admit(b, "fake@sender", partition=partition)
    follow(b, "fake@sender", 3)
    transfer_2 = {"type": "transfer", "table": "test", "partition": 2}
    assert offer(b, 501, [(1, "data", 600)]) == "ok"
    assert offer(b, 502, [(1, "data", 600)], meta=transfer_2) == ("error", "receiver_disk_full")
    assert offer(b, 503, [(1, "data", 400)], meta=transfer_2) == "ok"  # 600 + 400 fit
    on(b, transport.cancel, 503)
    # Bytes already received take free space; only the rest is still promised.
    assert _call_from("fake@sender", b, ("chunk", 501, 1, 0, b"x" * 500)) == "ok"
    assert offer(b, 504, [(1, "data", 401)], meta=transfer_2) == ("error", "receiver_disk_full")
    assert offer(b, 505, [(1, "data", 400)], meta=transfer_2) == "ok"  # 500 free: 100 + 400
    for transport_id in (501, 505):
        on(b, transport.cancel, transport_id)
    shutil.rmtree(tmp_path / "b" / "test.1" / "transport")
    # A snapshot of 600 needs 1200 with its install copy; one of 500 fits, with nothing left.
    snapshot_3 = {**snapshot_meta(), "partition": 3}
    assert offer(b, 506, [(1, "d", 600)], meta=snapshot_3) == ("error", "receiver_disk_full")
    assert offer(b, 507, [(1, "d", 500)], meta=snapshot_3) == "ok"
    # Received in full but not yet installed: its install copy is still to come.
    assert _call_from("fake@sender", b, ("chunk", 507, 1, 0, b"y" * 500)) == "ok"
    assert offer(b, 508, [(1, "data", 1)], meta=transfer_2) == ("error", "receiver_disk_full")
    on(b, transport.cancel, 507)
    assert offer(b, 509, [(1, "data", 500)], meta=transfer_2) == "ok"


COUNTING = {"raft_metrics_module": "waraft.metrics:CountingMetrics"}


def _counter(node: otp.Node, name: str) -> int:
    sink = on(node, metrics.get)
    assert isinstance(sink, metrics.CountingMetrics)
    return sink.counter(metrics.key("test", name))


def test_a_transfer_is_taken_only_from_a_participant_of_the_partitions_config(
    tmp_path: Path,
) -> None:
    """A transfer holds one of the node's incoming slots and part of its disk until it ends
    or idles out: any node key offering one it never sent (the review's attacker offered all
    the free space but 64 MiB) blocked every catch-up of the node. Only the nodes the
    partition's config names may offer one; the server is asked for its current config."""
    a = start(tmp_path, "a")
    b = start(tmp_path, "b", raft=COUNTING)
    src = make_tree(tmp_path / "src", {"data": b"1234"})
    # A replica that knows no config takes transfers from nobody.
    assert offer(b, 60, [(1, "x", 1)], sender=a.id) == ("error", "not_member")
    admit(b, "member@elsewhere")
    assert on(a, transport.start_transfer, b.id, "test", 1, str(src)) == ("error", "not_member")
    (refused,) = on(a, transport.transports)
    assert on(a, transport.transport_info, refused, "error") == ("rejected", "not_member")
    assert offer(b, 61, [(1, "x", 1)], sender="intruder@10.0.0.9:1") == ("error", "not_member")
    assert receiver_ids(b) == []
    assert not (tmp_path / "b" / "test.1" / "transport").exists()
    assert _counter(b, "transport.receive.not_member") == 3
    assert _counter(b, "transport.receive.rejected") == 3
    # A participant's offer is taken.
    assert offer(b, 62, [(1, "x", 1)], sender="member@elsewhere") == "ok"
    assert receiver_ids(b) == [62]


def test_an_offer_that_would_cut_into_the_disk_reserve_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission keeps max(raft_transport_disk_reserve_bytes, raft_transport_disk_reserve_percent
    of the file system) free for the log and the storage: no admitted transport, alone or
    with the others running, may take the disk below it."""
    b = start(tmp_path, "b")
    admit(b, "fake@sender", "other@sender")
    # The review's offer: every free byte of the real disk but 64 MiB.
    free = shutil.disk_usage(tmp_path).free
    assert offer(b, 70, [(1, "x", max(1, free - (64 << 20)))]) == ("error", "receiver_disk_full")
    assert receiver_ids(b) == []
    # The default reserve: 1 GiB, or 2 % of a file system larger than 50 GiB.
    assert on(b, dist_transport.disk_reserve, 10 << 30) == 1 << 30
    assert on(b, dist_transport.disk_reserve, 100 << 30) == 2 << 30
    # A 100,000-byte file system with 10,000 bytes free: 5 % of it (5,000) is kept.
    monkeypatch.setattr(dist_transport, "_disk_space", lambda path: (10_000, 100_000))
    set_raft(b, raft_transport_disk_reserve_bytes=1000, raft_transport_disk_reserve_percent=5)
    assert offer(b, 71, [(1, "x", 5001)]) == ("error", "receiver_disk_full")
    assert offer(b, 72, [(1, "x", 5000)]) == "ok"
    assert offer(b, 73, [(1, "x", 1)], sender="other@sender") == ("error", "receiver_disk_full")
    on(b, transport.cancel, 72)
    # Below the floor's share the floor holds.
    set_raft(b, raft_transport_disk_reserve_percent=0.5)
    assert offer(b, 74, [(1, "x", 9001)], sender="other@sender") == ("error", "receiver_disk_full")
    assert offer(b, 75, [(1, "x", 9000)], sender="other@sender") == "ok"


def test_a_sender_at_its_share_of_the_slots_is_overloaded_while_others_are_admitted(
    tmp_path: Path,
) -> None:
    """One node may hold at most raft_max_incoming_transports_per_peer (2) of the incoming
    slots of each pool: the review's attacker took the four slots left with 1-byte offers
    (receiver_overloaded for every leader's snapshot until they idled out)."""
    b = start(tmp_path, "b", raft={"raft_max_incoming_snapshot_transfers": 4})
    admit(b, "greedy@x", "other@x")
    one = [(1, "x", 1)]
    assert offer(b, 81, one, sender="greedy@x") == "ok"
    assert offer(b, 82, one, sender="greedy@x") == "ok"
    assert offer(b, 83, one, sender="greedy@x") == ("error", "receiver_overloaded")
    assert on(b, transport.transport_info, 83) is None
    assert offer(b, 84, one, sender="other@x") == "ok"
    # The precheck answers a remote caller for its own share too.
    assert _manager_call_from("greedy@x", b, ("may_accept", False)) == (
        "error",
        "receiver_overloaded",
    )
    assert _manager_call_from("other@x", b, ("may_accept", False)) == "ok"
    # Witness snapshots have their own pool, and their own share of it.
    follow(b, "greedy@x")
    assert offer(b, 85, one, meta=snapshot_meta(witness=True), sender="greedy@x") == "ok"
    # A finished transport gives its sender its slot back.
    on(b, transport.cancel, 81)
    assert offer(b, 86, one, sender="greedy@x") == "ok"
    set_raft(b, raft_max_incoming_transports_per_peer=3)
    assert offer(b, 87, one, sender="greedy@x") == "ok"


@pytest.mark.parametrize(
    "bad_name",
    ["../x", "/etc/x", "a/../../x", "..", "", ".", "a/./../..", "x\x00y", "ok.txt"],
)
def test_an_unsafe_path_rejects_the_whole_transfer(tmp_path: Path, bad_name: str) -> None:
    b = start(tmp_path, "b")
    admit(b, "fake@sender")
    files = [(1, "ok.txt", 3), (2, "sub/fine", 3), (3, bad_name, 3)]  # "ok.txt" twice: a clash
    assert offer(b, 4242, files) == ("error", "invalid_file_path")
    assert on(b, transport.transport_info, 4242) is None
    assert not (tmp_path / "b" / "test.1" / "transport" / "4242").exists()


def test_a_symlink_escape_under_the_destination_rejects_the_transfer(tmp_path: Path) -> None:
    b = start(tmp_path, "b")
    admit(b, "fake@sender")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "b" / "test.1" / "transport" / "77"
    dest.mkdir(parents=True)
    (dest / "link").symlink_to(outside)
    (dest / "inner").symlink_to(dest / "sub", target_is_directory=True)
    assert offer(b, 77, [(1, "fine", 1), (2, "link/x", 1)]) == ("error", "invalid_file_path")
    assert offer(b, 77, [(1, "link", 1)]) == ("error", "invalid_file_path")
    assert on(b, transport.transport_info, 77) is None
    # A link that stays inside the destination is fine.
    assert offer(b, 77, [(1, "inner/x", 1)]) == "ok"
    assert list(outside.iterdir()) == []


def test_normalised_relative_paths_are_accepted(tmp_path: Path) -> None:
    root = str(tmp_path / "dest")
    assert transport.safe_relative_path("a/../b", root) == os.path.join(root, "b")
    assert transport.safe_relative_path("./a//b/", root) == os.path.join(root, "a", "b")
    assert transport.safe_relative_path("../dest/x", root) is None


def test_malformed_offers_are_refused(tmp_path: Path) -> None:
    b = start(tmp_path, "b")
    assert offer(b, 5, [(2, "x", 1)]) == ("error", "invalid_transport")  # IDs must be 1..n
    assert offer(b, 5, [(1, "x", -1)]) == ("error", "invalid_transport")
    assert offer(b, -5, []) == ("error", "invalid_transport")
    assert offer(b, 5, [], meta={"type": "other"}) == ("error", "invalid_transport")
    assert offer(b, 5, [], meta={"type": "transfer", "table": "test", "partition": 9}) == (
        "error",
        "unknown_partition",
    )


def test_an_empty_directory_completes_at_once(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    result = on(a, transport.transfer, b.id, "test", 1, str(src), 5.0)
    assert on(a, transport.transport_info, result[1], "status") == "completed"
    assert on(b, transport.transport_info, result[1], "status") == "completed"


def test_symlinks_under_the_sender_root_are_not_followed(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not ship")
    src = make_tree(tmp_path / "src", {"real": b"r"})
    (src / "link").symlink_to(secret)
    transport_id = on(a, transport.transfer, b.id, "test", 1, str(src), 5.0)[1]
    wait_status(b, transport_id, "completed")
    assert read_tree(_received_root(b, transport_id)) == {"real": b"r"}


def test_a_cancelled_transfer_stops_sending(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, raft={"dist_transport_chunk_size": 10, "dist_transport_max_inflight": 1})
    log = ChunkLog(hold=True)
    replace_receiver(b, log)
    src = make_tree(tmp_path / "src", {"f": bytes(100)})
    transport_id = on(a, transport.start_transfer, b.id, "test", 1, str(src))[1]
    assert log.wait_chunks(1)
    assert on(a, transport.cancel, transport_id, "enough") == "ok"
    log.release_all()
    wait_until(lambda: on(a, transport.file_info, transport_id, 1)["status"] != "sending")
    assert len(log.chunks) <= 2
    info = on(a, transport.transport_info, transport_id)
    assert (info["status"], info["error"]) == ("cancelled", ("cancelled", "enough"))
    assert on(a, transport.cancel, 99, "x") == ("error", "not_found")


def test_starting_from_a_missing_directory_or_to_a_missing_node_fails(tmp_path: Path) -> None:
    a = start(tmp_path, "a")
    assert on(a, transport.start_transfer, a.id, "test", 1, str(tmp_path / "nope")) == (
        "error",
        "failed",
    )
    src = make_tree(tmp_path / "src", {"f": b"1"})
    assert on(a, transport.start_transfer, "ghost@nowhere", "test", 1, str(src)) == (
        "error",
        "failed",
    )
    (transport_id,) = on(a, transport.transports)
    assert on(a, transport.transport_info, transport_id, "error")[0] == "start"
    set_raft(a, raft_transport_inactive_info_limit=0)
    on(a, transport.scan)
    assert on(a, transport.transports) == []


class FromNode(otp.LocalReplyTo):
    """The reply handle of a call that came over the wire from ``node`` (as the distribution's
    own handle names its authenticated caller)."""

    __slots__ = ("node",)

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node


def _call_from(node: str, target: otp.Node, request: object) -> object:
    handle = otp.send_request(("wa_raft_dist_transport", target.id), request, FromNode(node))
    assert isinstance(handle, otp.LocalReplyTo)
    return handle.wait(5.0)


def _manager_call_from(node: str, target: otp.Node, request: object) -> object:
    handle = otp.send_request((transport.NAME, target.id), request, FromNode(node))
    assert isinstance(handle, otp.LocalReplyTo)
    return handle.wait(5.0)


def test_only_the_offering_node_writes_or_finishes_a_transports_files(tmp_path: Path) -> None:
    b = start(tmp_path, "b")
    follow(b, "fake@sender")
    assert offer(b, 301, [(1, "data", 4)], meta=snapshot_meta()) == "ok"
    path = _received_root(b, 301) / "data"
    for request in (("chunk", 301, 1, 0, b"EVIL"), ("complete", 301, 1)):
        assert _call_from("intruder@10.0.0.9:1", b, request) == ("error", "not_peer")
    assert not path.exists()
    assert on(b, transport.transport_info, 301, "status") == "running"
    assert _call_from("fake@sender", b, ("chunk", 301, 1, 0, b"good")) == "ok"
    assert _call_from("intruder@10.0.0.9:1", b, ("complete", 301, 1)) == ("error", "not_peer")
    assert on(b, transport.transport_info, 301, "status") == "running"
    assert _call_from("fake@sender", b, ("complete", 301, 1)) == "ok"
    assert path.read_bytes() == b"good"


def test_a_file_completed_twice_is_counted_once(tmp_path: Path) -> None:
    """Completing file 1 of 2 twice must not complete the transport: file 2 never came (for
    a snapshot, the server would be told to install a directory that lacks it)."""
    b = start(tmp_path, "b")
    admit(b, "fake@sender")
    assert offer(b, 777, [(1, "one", 3), (2, "two", 5)]) == "ok"
    assert _call_from("fake@sender", b, ("chunk", 777, 1, 0, b"abc")) == "ok"
    assert _call_from("fake@sender", b, ("complete", 777, 1)) == "ok"
    assert _call_from("fake@sender", b, ("complete", 777, 1)) == ("error", "already_completed")
    # The manager counts a file's first outcome only, whoever reports it again.
    on(b, transport.complete, 777, 1, "ok")
    on(b, transport.complete, 777, 1, ("late_failure",))
    on(b, transport.scan)  # a call behind those casts: they have been handled
    info = on(b, transport.transport_info, 777)
    assert (info["status"], info["completed_files"]) == ("running", 1)
    assert on(b, transport.file_info, 777, 1)["status"] == "completed"
    assert _call_from("fake@sender", b, ("complete", 777, 1)) == ("error", "already_completed")
    assert _call_from("fake@sender", b, ("chunk", 777, 2, 0, b"12345")) == "ok"
    assert _call_from("fake@sender", b, ("complete", 777, 2)) == "ok"
    assert wait_status(b, 777, "completed") == "completed"
    assert on(b, transport.transport_info, 777, "completed_files") == 2


def test_chunks_never_write_into_the_files_of_an_outgoing_transfer(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    log = ChunkLog(hold=True)
    replace_receiver(b, log)
    src = make_tree(tmp_path / "src", {"f": b"original"})
    transport_id = on(a, transport.start_transfer, b.id, "test", 1, str(src))[1]
    # A peer naming the sender's own transport ID gets nothing written on the sender.
    chunk = ("chunk", transport_id, 1, 0, b"EVIL")
    assert otp.call(("wa_raft_dist_transport", a.id), chunk) == ("error", "not_running")
    complete = ("complete", transport_id, 1)
    assert otp.call(("wa_raft_dist_transport", a.id), complete) == ("error", "invalid_file")
    assert otp.call(("wa_raft_dist_transport", a.id), ["chunk", [1], 1, 0, b""]) == (
        "error",
        "invalid_chunk",
    )
    assert (src / "f").read_bytes() == b"original"
    log.release_all()


def test_an_offer_of_more_files_than_the_limit_is_refused_before_any_path_is_resolved(
    tmp_path: Path,
) -> None:
    """Each offered path is resolved (``realpath``) and recorded on the manager's scheduler,
    about 60 us a file: one member's 16 MB offer of a million and a half one-byte files would
    hold that scheduler, and every partition on it, for minutes (100,000 files took 6 s)."""
    from waraft.transport import manager

    b = start(tmp_path, "b")
    admit(b, "fake@sender")
    files = [(i, format(i, "x"), 1) for i in range(1, manager.MAX_OFFER_FILES + 2)]
    assert offer(b, 4343, files) == ("error", "invalid_transport")
    assert on(b, transport.transport_info, 4343) is None
    assert offer(b, 4344, files[:3]) == "ok"


def test_the_receiver_keeps_a_bounded_number_of_files_open(tmp_path: Path) -> None:
    """The receiver keeps a file open from its first chunk to its completion: a member
    offering transports of thousands of files and sending one byte to each would take
    every descriptor the process may open (sockets, the log and storage then fail)."""
    b = start(tmp_path, "b")
    admit(b, "fake@sender")
    count = dist_transport.MAX_OPEN_FILES + 40
    assert offer(b, 4545, [(i, f"f{i}", 2) for i in range(1, count + 1)]) == "ok"
    opened = len(os.listdir("/proc/self/fd"))
    for i in range(1, count + 1):
        assert _call_from("fake@sender", b, ("chunk", 4545, i, 0, b"a")) == "ok"
    assert len(os.listdir("/proc/self/fd")) <= opened + dist_transport.MAX_OPEN_FILES
    for i in range(1, count + 1):  # a closed file is opened again, never truncated
        assert _call_from("fake@sender", b, ("chunk", 4545, i, 1, b"b")) == "ok"
        assert _call_from("fake@sender", b, ("complete", 4545, i)) == "ok"
    root = _received_root(b, 4545)
    assert {(root / f"f{i}").read_bytes() for i in range(1, count + 1)} == {b"ab"}
