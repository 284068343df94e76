"""Sweep seeds in which a leader holding a read lease was paused past it: the followers'
answers to its last heartbeat waited in its mailbox, and taken at their arrival time they
renewed the lease, so on resume it served reads the leader elected meanwhile had overwritten
(a linearizability violation). The lease now runs from when the answered request was sent
(``waraft.core.replication.credit_lease``)."""

from __future__ import annotations

import pytest

from waraft.sim.sweep import run_seed


@pytest.mark.parametrize("seed", [81571, 82049])
def test_a_leader_paused_past_its_lease_serves_no_stale_read(seed: int) -> None:
    result = run_seed(seed)
    assert "lease=200" in result.scenario
    assert not result.failed, result.violation
