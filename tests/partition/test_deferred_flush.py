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
        wait_until(lambda: not actor._outbox and actor._timeout is None, timeout=5)
        assert actor.core.current_term == term + 1
        assert actor.core.voted_for == candidate.id
