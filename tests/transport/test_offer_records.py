"""What a member's offer may make the receiving manager hold: an ended incoming transport
keeps its totals, not its files' records (each an offered name and its resolved path, kept
until ``raft_transport_inactive_info_limit`` newer transports ended), and an offer's names
are bounded in bytes, one by one and together."""

from __future__ import annotations

from pathlib import Path

from tests.transport.helpers import admit, offer, on, start
from tests.transport.test_transfer import _call_from
from waraft import transport
from waraft.transport import manager


def test_an_ended_incoming_transport_keeps_totals_not_file_records(tmp_path: Path) -> None:
    b = start(tmp_path, "b")
    admit(b, "fake@sender")
    assert offer(b, 701, [(1, "a", 10), (2, "b", 5)]) == "ok"
    assert _call_from("fake@sender", b, ("chunk", 701, 1, 0, b"x" * 4)) == "ok"
    assert on(b, transport.file_info, 701, 1) is not None  # while it runs
    on(b, transport.cancel, 701)
    assert on(b, transport.file_info, 701, 1) is None
    assert on(b, transport.file_info, 701, 2) is None
    info = on(b, transport.transport_info, 701)
    assert (info["status"], info["total_files"]) == ("cancelled", 2)
    assert (info["total_bytes"], info["received_bytes"]) == (15, 4)
    # A chunk or a completion arriving after the end is refused, as before.
    assert _call_from("fake@sender", b, ("chunk", 701, 1, 4, b"x")) == ("error", "not_running")


def test_an_offer_of_overlong_names_is_malformed(tmp_path: Path) -> None:
    b = start(tmp_path, "b")
    admit(b, "fake@sender")
    long_name = "d/" * (manager.MAX_OFFER_NAME_BYTES // 2) + "f"
    assert offer(b, 801, [(1, long_name, 0)]) == ("error", "invalid_transport")
    name = "n" * (manager.MAX_OFFER_NAME_BYTES // 2)
    count = manager.MAX_OFFER_NAMES_BYTES // len(name) + 1  # each name fine, together too long
    files = [(i, f"{i}/{name}", 0) for i in range(1, count + 1)]
    assert offer(b, 802, files) == ("error", "invalid_transport")
    assert offer(b, 803, files[: count // 2]) == "ok"
