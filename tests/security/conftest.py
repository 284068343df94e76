"""Fixtures for the attack suite: the test process is a distribution node for the module (as
in tests/multiprocess), so that it can watch the cluster while attackers poke at it."""

from __future__ import annotations

from tests.multiprocess.conftest import _stop_otp_nodes, dist_node

__all__ = ["_stop_otp_nodes", "dist_node"]
