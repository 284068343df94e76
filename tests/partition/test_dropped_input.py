"""What a server cannot use (malformed RPCs, unknown casts and calls) is dropped, the server
keeps running, and the log gets at most about a line a second per kind, however fast it comes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, ident, start_node, state, wait_until
from waraft import otp, storage
from waraft.core.types import Identity, LogPos
from waraft.partition import server
from waraft.services import codec
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


@pytest.mark.parametrize(
    "command",
    ["deep", ("$batch", "deep"), ("$session", "deep"), ("write", "deep"), ("delete", "deep")],
)
def test_a_members_entry_nested_a_thousand_deep_is_rejected_not_fatal(
    tmp_path: Path, command: Any
) -> None:
    """Members' frames are not depth-checked (msgpack decodes 1024 levels), so a leader can
    replicate a command nested 1000 deep. Storage rejects a command it does not know, but
    its error message took the command's full ``repr``, which raises ``RecursionError``
    that deep: the storage actor crashed, the partition restarted, and again at every
    heartbeat carrying the commit index."""
    deep: Any = 1
    for _ in range(1000):
        deep = (deep,)
    command = deep if command == "deep" else (command[0], deep)
    slow = {"raft_election_timeout_ms": 60000, "raft_election_timeout_ms_max": 60000}
    node = start_node(tmp_path, "deep", [1], settings=slow)
    target = addr("server", node)
    evil = Identity("raft_server_test_1", "evil@127.0.0.1:1")
    assert server.bootstrap(target, LogPos(1, 1), server.make_config([ident(node), evil])) == "ok"
    wait_until(lambda: state(node) == "follower")
    wire = ["append_entries", 2, evil.name, evil.node, [1, 1, [[2, "k", command, None]], 2, 0]]
    wire = codec.unpackb(codec.packb(wire))  # as the receive thread delivers it
    with node.activate():
        before = otp.whereis("raft_storage_test_1")
        otp.cast(target, ("rpcs", [wire]))
        applied = lambda: storage.position("raft_storage_test_1").index >= 2  # noqa: E731
        wait_until(lambda: otp.whereis("raft_storage_test_1") is not before or applied())
        assert otp.whereis("raft_storage_test_1") is before
    assert state(node) == "follower"
