"""A term/vote store whose directory fsync failed after the rename (EIO): the state this
process reads back is in the page cache only, so a server restarted in the same process must
store it again before it acts on it (review U item 2)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, cluster, ident, leader_of, wait_until
from waraft import otp
from waraft.core.effects import Send
from waraft.core.rpc import NotifyTerm, RaftRpc, RequestVote, Vote
from waraft.core.types import DurableState, ElectionType
from waraft.partition import durable_state, server
from waraft.storage import provider

DURABLE = {
    "log_module": "waraft.log.wal:WalLog",
    "storage_module": "waraft.storage.lmdb:LmdbStorage",
}


def _quiescent(node: otp.Node) -> bool:
    return bool(server.status(addr("server", node), timeout=2)["quiescent"])


def _quiet_followers(nodes: list[otp.Node]) -> tuple[otp.Node, otp.Node, int, str, Any]:
    """Once every replica is quiescent: the two followers (the first is the one under test),
    the term, the first one's partition directory and its server's pid."""
    leader = leader_of(nodes)
    assert leader is not None
    wait_until(lambda: all(_quiescent(n) for n in nodes), timeout=10)
    first, second = (n for n in nodes if n is not leader)
    status = server.status(addr("server", first))
    directory = os.path.abspath(str(status["partition_path"]))
    with first.activate():
        pid = otp.whereis("raft_server_test_1")
    return first, second, int(status["current_term"]), directory, pid


def _store_recorder(
    directory: str, note: Callable[[DurableState, bool], None]
) -> Callable[[Any, DurableState], None]:
    """``durable_state.store`` that also calls ``note(state, stored)`` for each store into
    ``directory``, whether it succeeded or raised."""
    store = durable_state.store

    def recording_store(path: Any, state: DurableState) -> None:
        stored = False
        try:
            store(path, state)
            stored = True
        finally:
            if os.path.abspath(str(path)) == directory:
                note(state, stored)

    return recording_store


def _voted_for(path: str, candidate: str) -> bool:
    try:
        with open(path, "rb") as f:
            return durable_state.decode(f.read()).voted_for == candidate
    except (OSError, durable_state.DurableStateError):
        return False


@pytest.mark.parametrize("failures", [1, 100])
def test_a_vote_whose_store_failed_after_the_rename_is_stored_again_before_it_is_granted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    # Quiescent: no heartbeat or election moves the cluster on while the voter restarts.
    with cluster(tmp_path, settings={"raft_quiesce_after_ms": 200}, **DURABLE) as nodes:
        voter, candidate, term, directory, first_pid = _quiet_followers(nodes)
        state_file = os.path.join(directory, durable_state.STATE_FILE)
        vote = DurableState(term + 1, candidate.id, None)

        # What happens at the voter, in order: its stores of the vote, its vote answers
        # (kept from leaving, so that the rest of the cluster stays in its term).
        trace: list[Any] = []
        send_outbox = server.RaftServer._send_outbox

        def recording_send_outbox(self: Any, outbox: list[Any]) -> None:
            if os.path.abspath(str(self.options.database)) != directory:
                return send_outbox(self, outbox)
            for e in outbox:
                if isinstance(e, Send) and isinstance(e.rpc.payload, Vote):
                    trace.append(("vote", e.rpc.term, e.rpc.payload.vote))
            return send_outbox(self, [e for e in outbox if not isinstance(e, Send)])

        def note_store(state: DurableState, stored: bool) -> None:
            if state == vote:
                trace.append(("stored" if stored else "store_failed",))

        recording_store = _store_recorder(directory, note_store)

        left = {"failures": failures}
        fsync_directory = provider.fsync_directory

        def failing_fsync_directory(path: str) -> None:
            # The fsync that would make the renamed vote durable.
            ours = os.path.abspath(path) == directory
            if ours and left["failures"] > 0 and _voted_for(state_file, candidate.id):
                left["failures"] -= 1
                raise OSError(errno.EIO, "Input/output error (injected)")
            fsync_directory(path)

        monkeypatch.setattr(server.RaftServer, "_send_outbox", recording_send_outbox)
        monkeypatch.setattr(durable_state, "store", recording_store)
        monkeypatch.setattr(provider, "fsync_directory", failing_fsync_directory)

        request = RaftRpc(
            term + 1, ident(candidate), RequestVote(ElectionType.FORCE, 10**6, term + 1)
        )
        with voter.activate():
            otp.cast(addr("server", voter), request)
        wait_until(lambda: ("store_failed",) in trace, timeout=5)

        def restarted() -> bool:
            with voter.activate():
                pid = otp.whereis("raft_server_test_1")
            return pid is not None and pid is not first_pid

        wait_until(restarted, timeout=10, interval=0.001)
        with voter.activate():  # the candidate retries its request in the same term
            otp.cast(addr("server", voter), request)
        after = server.status(addr("server", voter))  # handled after the retried request

        if failures == 1:
            # Stored again (at the restart's load) before the vote is granted.
            wait_until(lambda: any(e[0] == "vote" for e in trace), timeout=5)
            assert trace[0] == ("store_failed",)
            granted = trace.index(("vote", term + 1, True))
            assert ("stored",) in trace[1:granted], trace
            assert after["current_term"] == term + 1
        else:
            # It cannot be made durable: the replica comes up disabled and grants nothing.
            assert after["state"] == "disabled"
            assert "durable_state_error" in str(after["disable_reason"])
            assert ("vote", term + 1, True) not in trace
            assert ("stored",) not in trace


def _state_term(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return durable_state.decode(f.read()).current_term
    except (OSError, durable_state.DurableStateError):
        return None


@pytest.mark.parametrize("failures", [1, 100])
@pytest.mark.parametrize("where", ["file", "dir"])
def test_a_term_whose_store_failed_is_carried_by_no_message_until_it_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, failures: int
) -> None:
    # Raft: currentTerm is durable before any message carries it. A follower told of a newer
    # term (no vote) whose store of it fails with EIO (the temp file's fsync: no rename; or
    # the directory's fsync after the rename: the new term read back from the page cache)
    # crashes; neither its terminate nor its restart (the announce of a quiescent replica
    # restarted in place) may send a message at that term before a store of it succeeded.
    with cluster(tmp_path, settings={"raft_quiesce_after_ms": 200}, **DURABLE) as nodes:
        follower, sender, term, directory, first_pid = _quiet_followers(nodes)
        state_file = os.path.join(directory, durable_state.STATE_FILE)

        # At the follower, in order: its stores and every RPC it sends (kept from leaving,
        # so that the rest of the cluster stays in its term).
        trace: list[tuple[str, int]] = []
        send_outbox = server.RaftServer._send_outbox

        def recording_send_outbox(self: Any, outbox: list[Any]) -> None:
            if os.path.abspath(str(self.options.database)) != directory:
                return send_outbox(self, outbox)
            trace.extend(("send", e.rpc.term) for e in outbox if isinstance(e, Send))
            return send_outbox(self, [e for e in outbox if not isinstance(e, Send)])

        def note_store(state: DurableState, stored: bool) -> None:
            trace.append(("stored" if stored else "store_failed", state.current_term))

        recording_store = _store_recorder(directory, note_store)

        left = {"failures": failures}
        fsync_path, fsync_directory = provider.fsync_path, provider.fsync_directory

        def fail(path: str, ours: bool) -> None:
            if ours and left["failures"] > 0:
                left["failures"] -= 1
                raise OSError(errno.EIO, f"Input/output error (injected: {where} fsync)")

        def failing_fsync_path(path: str) -> None:  # state.temp's, before the rename
            temp = os.path.join(directory, durable_state.TEMP_FILE)
            fail(path, where == "file" and path == temp and _state_term(temp) == term + 1)
            fsync_path(path)

        def failing_fsync_directory(path: str) -> None:  # the directory's, after the rename
            ours = where == "dir" and os.path.abspath(path) == directory
            fail(path, ours and _state_term(state_file) == term + 1)
            fsync_directory(path)

        monkeypatch.setattr(server.RaftServer, "_send_outbox", recording_send_outbox)
        monkeypatch.setattr(durable_state, "store", recording_store)
        monkeypatch.setattr(provider, "fsync_path", failing_fsync_path)
        monkeypatch.setattr(provider, "fsync_directory", failing_fsync_directory)

        with follower.activate():
            otp.cast(addr("server", follower), RaftRpc(term + 1, ident(sender), NotifyTerm()))
        wait_until(lambda: ("store_failed", term + 1) in trace, timeout=5)

        def restarted() -> bool:
            with follower.activate():
                pid = otp.whereis("raft_server_test_1")
            return pid is not None and pid is not first_pid

        wait_until(restarted, timeout=10, interval=0.001)
        # Answered after the restarted server's first flush (its announce, if any).
        after = server.status(addr("server", follower))

        stored = term
        for what, at in trace:
            if what == "stored":
                stored = max(stored, at)
            elif what == "send":
                assert at <= stored, (f"a message at term {at}, stored {stored}", trace)
        if where == "file" or failures == 1:
            # The old term stayed (no rename), or the new one was stored again at the load.
            assert after["state"] == "follower", after
        else:
            assert after["state"] == "disabled", after
        assert any(what == "send" for what, _ in trace) or after["state"] == "disabled", trace
