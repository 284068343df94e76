"""The server's group commit defers a flush while more messages wait; whatever the next
message is, the deferred outbox and timer must go out once the mailbox is empty."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, cluster, ident, leader_of, wait_until
from waraft import otp
from waraft.core.rpc import RaftRpc, RequestVote
from waraft.core.types import ElectionType
from waraft.otp.statem import _StateTimeout
from waraft.partition import durable_state, server


def _quiescent(node: otp.Node) -> bool:
    return bool(server.status(addr("server", node), timeout=2)["quiescent"])


def test_a_stale_state_timeout_behind_a_deferred_flush_still_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Quiescent: no heartbeat or timer arrives that would flush the voter by accident.
    with cluster(tmp_path, settings={"raft_quiesce_after_ms": 200}) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        wait_until(lambda: all(_quiescent(n) for n in nodes), timeout=10)
        voter, candidate = (n for n in nodes if n is not leader)
        name, _ = addr("server", voter)
        with voter.activate():
            pid = otp.whereis(name)
        assert pid is not None
        actor: Any = pid._actor
        term = server.status(addr("server", voter))["current_term"]

        # Hold the voter inside the durable-state write of its new term (on an I/O thread;
        # the server process is suspended) while a stale timeout queues up behind it.
        release = threading.Event()
        entered = threading.Event()
        store = durable_state.store

        def slow_store(path: Any, state: Any) -> None:
            entered.set()
            release.wait(10)
            store(path, state)

        monkeypatch.setattr(durable_state, "store", slow_store)
        request = RaftRpc(
            term + 1, ident(candidate), RequestVote(ElectionType.FORCE, 10**6, term + 1)
        )
        with voter.activate():
            otp.cast(addr("server", voter), request)
            assert entered.wait(5)
            otp.send(pid, _StateTimeout(-1, "stale"))  # a generation no longer armed
        wait_until(lambda: actor.actor_inbox.qsize() == 1, timeout=5)
        release.set()
        # The vote and the new election timer leave although nothing else arrives.
        wait_until(lambda: not actor._outbox and not actor._timeout_unarmed, timeout=5)
        assert actor.core.current_term == term + 1
        assert actor.core.voted_for == candidate.id


def test_a_timer_that_fires_while_the_server_is_busy_does_not_outrun_newer_heartbeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review U item 1: a follower parked in a slow WAL sync past its election timeout had
    # the leader's heartbeats and then its timer's firing queued; the heartbeats' new
    # timeout waited for the deferred flush, so the firing went off right after them and
    # the follower (no pre-vote) raised its term and deposed the healthy leader.
    with cluster(tmp_path) as nodes:
        leader = leader_of(nodes)
        assert leader is not None
        follower = next(n for n in nodes if n is not leader)
        name, _ = addr("server", follower)
        with follower.activate():
            pid = otp.whereis(name)
        assert pid is not None
        actor: Any = pid._actor
        before = server.status(addr("server", follower))
        assert before["state"] == "follower"

        # Park the follower's server on an I/O thread, as a slow fsync does.
        entered = threading.Event()
        release = threading.Event()
        handle_info = server.RaftServer.handle_info

        def holding(self: Any, msg: Any) -> None:
            if msg == ("test_hold",):
                entered.set()
                otp.blocking(release.wait, 10)
            handle_info(self, msg)

        monkeypatch.setattr(server.RaftServer, "handle_info", holding)
        with follower.activate():
            otp.send(pid, ("test_hold",))
        assert entered.wait(5)
        try:
            # The election timer fires into the mailbox behind the heartbeats that came
            # meanwhile (every 40 ms, the timeout is at least 300 ms).
            wait_until(lambda: actor._st_ref is not None and not actor._st_ref.active)
            assert actor.actor_inbox.qsize() >= 2
        finally:
            release.set()
        # Answered after everything that was queued, the firing included.
        after = server.status(addr("server", follower))
        assert (after["state"], after["current_term"]) == ("follower", before["current_term"])
        assert leader_of(nodes) is leader
