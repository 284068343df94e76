"""What a server cannot use (malformed RPCs, unknown casts and calls) is dropped, the server
keeps running, and the log gets at most about a line a second per kind, however fast it comes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tests.partition.helpers import addr, start_node, state, wait_until
from waraft import otp
from waraft.partition import server
from waraft.services.logthrottle import LogThrottle


def test_junk_for_the_server_is_dropped_and_logged_once_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fresh throttles: the node-wide ones may have let a line of an earlier test out.
    for name in ("_UNEXPECTED_CAST_LOG", "_UNKNOWN_CALL_LOG", "_MALFORMED_RPC_LOG"):
        monkeypatch.setattr(server, name, LogThrottle())
    caplog.set_level(logging.WARNING, logger="waraft.partition.server")
    node = start_node(tmp_path, "junk", [1])
    target = addr("server", node)
    wait_until(lambda: state(node) != "down")
    started = time.monotonic()
    with node.activate():
        before = otp.whereis(target[0])
        for i in range(100):
            otp.cast(target, ("no_such_cast", i))
            otp.cast(target, ("rpcs", [["append_entries", 1, "x", "y", [f"bad{i}"]]]))
            assert otp.call(target, ("no_such_call", i)) == ("error", "unknown_command")
        assert otp.whereis(target[0]) is before
    elapsed = time.monotonic() - started
    limit = int(elapsed) + 2
    for kind in ("unexpected cast", "unknown command", "malformed RPC"):
        lines = [r.getMessage() for r in caplog.records if kind in r.getMessage()]
        assert 1 <= len(lines) <= limit, (kind, lines)
