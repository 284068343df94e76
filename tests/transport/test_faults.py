"""Transfers that are cut off, idle transports, forgetting old records, and the cleanup of old
transfer directories."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.partition.helpers import wait_until
from tests.transport.helpers import (
    ChunkCutter,
    ChunkLog,
    GatedReceiver,
    admit,
    make_tree,
    offer,
    on,
    read_tree,
    receiver_ids,
    replace_receiver,
    set_app,
    set_raft,
    start,
    wait_status,
)
from waraft import otp, transport
from waraft.partition import app
from waraft.transport import target_sup

SMALL_CHUNKS = {"dist_transport_chunk_size": 64, "dist_transport_max_inflight": 2}


def test_a_transfer_cut_off_midway_fails_and_a_retry_completes(tmp_path: Path) -> None:
    a = start(tmp_path, "a", raft=SMALL_CHUNKS)
    b = start(tmp_path, "b", raft={**SMALL_CHUNKS, "transport_idle_timeout_secs": 0.3})
    admit(b, a)
    files = {"one": os.urandom(4096), "two/three": os.urandom(1000)}
    src = make_tree(tmp_path / "src", files)
    cutter = ChunkCutter(b.id, allow=5)
    cutter.install()
    first = on(a, transport.start_transfer, b.id, "test", 1, str(src))[1]
    # The sender notices at once (the dropped chunk is never acknowledged) ...
    wait_status(a, first, "failed")
    assert on(a, transport.transport_info, first, "error")[2][0] == "send_failed"
    assert cutter.dropped >= 1
    # ... the receiver once the transport has been idle long enough.
    wait_status(b, first, "timed_out")
    received = on(b, transport.transport_info, first)
    assert 0 < received["received_bytes"] < received["total_bytes"]
    cutter.heal()
    second = on(a, transport.transfer, b.id, "test", 1, str(src), 10.0)[1]
    assert second != first
    wait_status(b, second, "completed")
    root = on(b, transport.transport_info, second, "root")
    assert read_tree(Path(root)) == files


def test_a_receiver_killed_midway_is_restarted_and_a_retry_completes(tmp_path: Path) -> None:
    """The chunk receiver dies with files open in a cut-off transfer; its supervisor restarts
    it and the retried transfer completes."""
    a = start(tmp_path, "a", raft={"dist_transport_chunk_size": 512})
    b = start(tmp_path, "b")
    admit(b, a)
    files = {"f": os.urandom(64 * 1024)}
    src = make_tree(tmp_path / "src", files)
    cutter = ChunkCutter(b.id, allow=10)
    cutter.install()
    transport_id = on(a, transport.start_transfer, b.id, "test", 1, str(src))[1]
    wait_status(a, transport_id, "failed")
    with b.activate():
        old = otp.whereis("wa_raft_dist_transport")
        assert old is not None
        otp.kill(old)
        wait_until(lambda: (p := otp.whereis("wa_raft_dist_transport")) and p is not old)
    cutter.heal()
    retry = on(a, transport.transfer, b.id, "test", 1, str(src), 10.0)[1]
    wait_status(b, retry, "completed")
    assert read_tree(Path(on(b, transport.transport_info, retry, "root"))) == files


def _gated_pair(tmp_path: Path) -> tuple[otp.Node, otp.Node, ChunkLog]:
    """A sender with 4-byte chunks and patient acknowledgements, and a receiver whose
    answers are held until the test releases them."""
    slow_acks = {"dist_transport_ack_timeout_ms": 10_000, "transport_idle_timeout_secs": 60}
    a = start(tmp_path, "a", raft={**slow_acks, "dist_transport_chunk_size": 4})
    b = start(tmp_path, "b")
    admit(b, a)
    log = ChunkLog(hold=True)
    replace_receiver(b, log, GatedReceiver)
    return a, b, log


def _kill_the_worker(a: otp.Node, b: otp.Node) -> None:
    """Kill ``a``'s (only) worker sending to ``b`` and wait until its supervisor restarted it."""
    supervisor = target_sup.name(b.id)
    with a.activate():
        (old,) = [child[1] for child in otp.supervisor.which_children(supervisor)]
        otp.kill(old)

    def restarted() -> bool:
        with a.activate():
            workers = [child[1] for child in otp.supervisor.which_children(supervisor)]
        return workers not in ([], [old])

    wait_until(restarted)


def test_a_worker_killed_mid_file_is_restarted_and_takes_up_the_transfer(tmp_path: Path) -> None:
    """The restarted worker is told of no transport: it must take up the running ones to its
    peer, and send again from its start the file the dead worker was sending, or the transfer
    sits until the idle timeout."""
    a, b, log = _gated_pair(tmp_path)
    files = {"f1": os.urandom(40), "f2": os.urandom(10), "f3": b""}
    src = make_tree(tmp_path / "src", files)
    ok, transport_id = on(a, transport.start_transfer, b.id, "test", 1, str(src))
    assert ok == "ok"
    assert log.wait_chunks(4)  # the window of f1 is out, none acknowledged
    _kill_the_worker(a, b)
    with log.cond:  # the new worker sends f1 again, from its start
        assert log.cond.wait_for(lambda: log.chunks.count((transport_id, 1, 0, 4)) == 2, 10)
    log.release_all()
    wait_status(a, transport_id, "completed")
    wait_status(b, transport_id, "completed")
    assert read_tree(Path(on(b, transport.transport_info, transport_id, "root"))) == files
    assert on(a, transport.transport_info, transport_id, "completed_files") == 3
    for file_id, size in ((1, 40), (2, 10), (3, 0)):
        sent = on(a, transport.file_info, transport_id, file_id)
        assert (sent["status"], sent["completed_bytes"]) == ("completed", size)


def test_a_file_received_before_the_worker_died_is_not_written_again(tmp_path: Path) -> None:
    """The worker dies waiting for the answer to ``complete``, which the receiver had handled:
    the restarted worker sends the file again and learns from the first chunk that it is
    there (``already_completed``), so the transfer completes and the file is not rewritten."""
    a, b, log = _gated_pair(tmp_path)
    files = {"f1": b"1234", "f2": os.urandom(10)}
    src = make_tree(tmp_path / "src", files)
    ok, transport_id = on(a, transport.start_transfer, b.id, "test", 1, str(src))
    assert ok == "ok"
    assert log.wait_chunks(1)
    log.release(1)
    with log.cond:
        assert log.cond.wait_for(lambda: log.completions, 10)
    _kill_the_worker(a, b)
    with log.cond:
        assert log.cond.wait_for(lambda: len(log.chunks) >= 2, 10)
    assert log.chunks[1] == (transport_id, 1, 0, 4)  # sent again, refused
    log.release_all()
    wait_status(a, transport_id, "completed")
    wait_status(b, transport_id, "completed")
    assert read_tree(Path(on(b, transport.transport_info, transport_id, "root"))) == files
    assert [c[-1] for c in log.completions] == ["ok", "ok"]  # f1 once, f2 once


def test_idle_transports_time_out_and_old_records_are_forgotten(tmp_path: Path) -> None:
    b = start(
        tmp_path,
        "b",
        raft={
            "transport_idle_timeout_secs": 0.2,
            "raft_transport_inactive_info_limit": 2,
            "raft_max_incoming_transports_per_peer": 3,
        },
    )
    admit(b, "fake@sender")
    for transport_id in (11, 12, 13):
        assert offer(b, transport_id, [(1, "x", 5)]) == "ok"
    # Nobody sends the data: the periodic scan times all three out, and keeps only the two
    # newest finished records.
    wait_until(lambda: receiver_ids(b) == [12, 13])
    for transport_id in (12, 13):
        assert on(b, transport.transport_info, transport_id, "status") == "timed_out"
    assert on(b, transport.transfer_end_time, "12") is not None
    assert on(b, transport.transfer_end_time, "11") is None
    assert on(b, transport.transfer_end_time, "not-an-id") is None


def test_a_running_transport_is_not_timed_out(tmp_path: Path) -> None:
    b = start(tmp_path, "b", raft={"transport_idle_timeout_secs": 60})
    admit(b, "fake@sender")
    assert offer(b, 21, [(1, "x", 5)]) == "ok"
    assert on(b, transport.scan) == []
    assert on(b, transport.transport_info, 21, "status") == "running"
    assert on(b, transport.transfer_end_time, "21", "RUNNING") == "RUNNING"


def _cleanup(node: otp.Node) -> list[str]:
    removed: list[str] = otp.call(("raft_transport_cleanup_test_1", node.id), ("scan",))
    return sorted(removed)


def test_cleanup_removes_old_transfer_directories_but_never_running_ones(tmp_path: Path) -> None:
    a = start(tmp_path, "a")
    b = start(tmp_path, "b", raft={"transport_idle_timeout_secs": 60})
    admit(b, a, "fake@sender")
    set_app(b, transport_retain_min_secs=100)
    base = tmp_path / "b" / "test.1" / "transport"
    # A finished transport, a running one, and two directories nobody knows about.
    src = make_tree(tmp_path / "src", {"f": b"data"})
    done = on(a, transport.transfer, b.id, "test", 1, str(src), 5.0)[1]
    wait_status(b, done, "completed")
    assert offer(b, 31, [(1, "x", 5)]) == "ok"
    old = make_tree(base / "12345", {"stale": b"s"})
    long_ago = time.time() - 1000
    for path in (old / "stale", old):
        os.utime(path, (long_ago, long_ago))
    make_tree(base / "fresh-junk", {"f": b"f"})
    # Only the long untouched unknown directory is old enough.
    assert _cleanup(b) == ["12345"]
    assert sorted(os.listdir(base)) == sorted([str(done), "31", "fresh-junk"])
    set_app(b, transport_retain_min_secs=0)
    assert _cleanup(b) == sorted([str(done), "fresh-junk"])
    assert os.listdir(base) == ["31"]


def test_the_node_wide_services_run_under_kernel_sup(tmp_path: Path) -> None:
    a = start(tmp_path, "a")
    with a.activate():
        pid = otp.whereis(app.NAME)
        assert pid is not None and app.ensure_started() is pid
        kernel = [c[0] for c in otp.supervisor.which_children("kernel_sup")]
        assert app.NAME in kernel
        children = otp.supervisor.which_children(app.NAME)
        assert [c[0] for c in children] == [
            "wa_raft_transport",
            "wa_raft_transport_sup",
            "wa_raft_dist_transport",
            "wa_raft_snapshot_catchup",
        ]
        for name in children:
            assert otp.whereis(name[0]) is not None, name
    # A node that only starts partitions gets them too (started by waraft.sup).
    plain = otp.Node("plain@local")
    with plain.activate():
        from tests.partition.helpers import APP
        from waraft.partition import sup
        from waraft.services import env

        env.set_env(APP, "raft_database", str(tmp_path / "plain"))
        assert otp.supervisor.start_child("kernel_sup", sup.child_spec(APP, []))[0] == "ok"
    wait_until(lambda: plain.registry.whereis("wa_raft_snapshot_catchup") is not None)


def test_a_restarted_manager_keeps_the_records(tmp_path: Path) -> None:
    b = start(tmp_path, "b")
    admit(b, "fake@sender")
    assert offer(b, 41, [(1, "x", 5)]) == "ok"
    with b.activate():
        old = otp.whereis(transport.NAME)
        assert old is not None
        otp.kill(old)
        wait_until(lambda: (p := otp.whereis(transport.NAME)) and p is not old)
    assert on(b, transport.transport_info, 41, "status") == "running"
    set_raft(b, raft_max_incoming_snapshot_transfers=1)
    assert on(b, transport.may_accept, b.id, False) == ("error", "receiver_overloaded")


def test_a_transfer_claiming_to_be_for_a_witness_counts_in_the_snapshot_pool(
    tmp_path: Path,
) -> None:
    """Only a snapshot goes to the witness pool: a member's transfer offer saying
    ``witness`` took a slot of the witness pool once the other pool was full."""
    b = start(tmp_path, "b", raft={"raft_max_incoming_snapshot_transfers": 1})
    admit(b, "fake@sender")
    assert offer(b, 51, [(1, "x", 5)]) == "ok"
    witness = {"type": "transfer", "table": "test", "partition": 1, "witness": True}
    assert offer(b, 52, [(1, "y", 5)], meta=witness) == ("error", "receiver_overloaded")
    assert on(b, transport.transport_info, 51, "meta").get("witness") is None


def test_app_start_installs_the_configured_metrics_sink() -> None:
    from waraft.partition import app
    from waraft.services import env, metrics

    node = otp.Node("metrics.1@local")
    with node.activate():
        env.set_env("waraft", "raft_metrics_module", "waraft.metrics:CountingMetrics")
        app.ensure_started()
        assert isinstance(metrics.get(), metrics.CountingMetrics)
    node.stop()
