"""A received file's ``completed_bytes`` counts the bytes it holds, once: a chunk written
again (a member repeating it, or a restarted sending worker resending the file from offset
0) adds nothing. Disk admission reads it as what the file no longer needs: counted twice, a
transport seemed to need nothing more and the next one was admitted past the disk reserve."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.transport.helpers import admit, make_tree, offer, on, start, wait_status
from tests.transport.test_faults import _gated_pair, _kill_the_worker
from tests.transport.test_transfer import _call_from
from waraft import transport
from waraft.transport import dist_transport, tables

NO_RESERVE = {dist_transport.RESERVE_BYTES_KEY: 0, dist_transport.RESERVE_PERCENT_KEY: 0}


def test_a_repeated_chunk_does_not_free_its_transports_disk_promise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def space(path: str) -> tuple[int, int]:  # a 1000-byte disk that received bytes fill
        received = tmp_path.glob("b/*/transport/*/*")
        return 1000 - sum(p.stat().st_size for p in received if p.is_file()), 1000

    monkeypatch.setattr(dist_transport, "_disk_space", space)
    b = start(tmp_path, "b", partitions=(1, 2), raft=NO_RESERVE)
    try:
        admit(b, "fake@sender", partition=1)
        admit(b, "other@sender", partition=2)
        to_2 = {"type": "transfer", "table": "test", "partition": 2}
        assert offer(b, 501, [(1, "data", 600)]) == "ok"
        for _ in range(6):  # the same 100 bytes, six times
            assert _call_from("fake@sender", b, ("chunk", 501, 1, 0, b"x" * 100)) == "ok"
        assert on(b, transport.file_info, 501, 1)["completed_bytes"] == 100
        # 100 bytes on disk, 500 more promised: another 600 bytes do not fit in 1000.
        refused = offer(b, 503, [(1, "data", 600)], meta=to_2, sender="other@sender")
        assert refused == ("error", "receiver_disk_full")
    finally:
        b.stop()


def test_chunks_out_of_order_count_each_byte_once_and_a_scattered_file_is_refused(
    tmp_path: Path,
) -> None:
    # A sender keeps a window of chunks in flight, answered from a thread pool: they may land
    # out of order. Each byte counts once however the chunks overlap; a file left in more than
    # MAX_RECEIVED_RANGES pieces is refused, so its record stays small.
    b = start(tmp_path, "b")
    try:
        admit(b, "fake@sender")
        assert offer(b, 601, [(1, "data", 600)]) == "ok"
        for offset, size in [(200, 100), (0, 100), (50, 100), (250, 100), (100, 100)]:
            chunk = ("chunk", 601, 1, offset, b"x" * size)
            assert _call_from("fake@sender", b, chunk) == "ok"
        assert on(b, transport.file_info, 601, 1)["completed_bytes"] == 350
        assert offer(b, 602, [(1, "data", 100_000)]) == "ok"
        limit = tables.MAX_RECEIVED_RANGES
        for piece in range(limit):
            chunk = ("chunk", 602, 1, 2 * piece, b"x")
            assert _call_from("fake@sender", b, chunk) == "ok"
        scattered = _call_from("fake@sender", b, ("chunk", 602, 1, 2 * limit, b"x"))
        assert scattered == ("error", "chunk_scattered")
        assert _call_from("fake@sender", b, ("chunk", 602, 1, 1, b"x")) == "ok"  # joins two
        assert on(b, transport.file_info, 602, 1)["completed_bytes"] == limit + 1
    finally:
        b.stop()


def test_a_file_resent_after_its_worker_died_is_counted_once(tmp_path: Path) -> None:
    a, b, log = _gated_pair(tmp_path)
    source = make_tree(tmp_path / "src", {"f1": os.urandom(40)})
    ok, transport_id = on(a, transport.start_transfer, b.id, "test", 1, str(source))
    assert ok == "ok"
    assert log.wait_chunks(4)
    _kill_the_worker(a, b)  # its replacement sends the file again from offset 0
    with log.cond:
        assert log.cond.wait_for(lambda: log.chunks.count((transport_id, 1, 0, 4)) == 2, 10)
    log.release_all()
    wait_status(b, transport_id, "completed")
    assert on(b, transport.transport_info, transport_id, "received_bytes") == 40


def test_a_file_resent_after_its_transport_completed_is_answered_already_completed(
    tmp_path: Path,
) -> None:
    # An ended transport keeps totals, not file records: a sender whose worker died after
    # its last complete resent the file and was answered not_running / invalid_file, so its
    # transport failed although the receiver had every file.
    b = start(tmp_path, "b")
    try:
        admit(b, "fake@sender")
        assert offer(b, 701, [(1, "data", 10)]) == "ok"
        assert _call_from("fake@sender", b, ("chunk", 701, 1, 0, b"x" * 10)) == "ok"
        assert _call_from("fake@sender", b, ("complete", 701, 1)) == "ok"
        wait_status(b, 701, "completed")
        again = _call_from("fake@sender", b, ("chunk", 701, 1, 0, b"x" * 10))
        done = _call_from("fake@sender", b, ("complete", 701, 1))
        assert again == done == dist_transport.ALREADY_COMPLETED
        assert _call_from("fake@sender", b, ("complete", 701, 2)) == ("error", "invalid_file")
    finally:
        b.stop()


def test_a_file_with_bytes_never_written_is_not_completed(tmp_path: Path) -> None:
    # Its size was right (the last chunk sets it), so it was checked, fsynced and reported:
    # the bytes never sent read back as zeros.
    b = start(tmp_path, "b")
    try:
        admit(b, "fake@sender")
        assert offer(b, 801, [(1, "data", 300)]) == "ok"
        assert _call_from("fake@sender", b, ("chunk", 801, 1, 200, b"x" * 100)) == "ok"
        done = _call_from("fake@sender", b, ("complete", 801, 1))
        assert done == ("error", ("size_mismatch", 100, 300))
    finally:
        b.stop()
