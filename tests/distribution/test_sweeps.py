"""The sweep length the liveness thread asks of the receive thread (``sweeps.SweepBound``):
sized by every connection the ROUTER may read in turn, shrinking only once the ROUTER has been
found empty after the closes were counted."""

from __future__ import annotations

from waraft.distribution.sweeps import COMMAND_LAG, SweepBound


def _connect(bound: SweepBound, count: int) -> None:
    bound.accepted += count
    bound.handshakes += count


def test_a_sweep_covers_two_turns_over_the_connections_once_their_handshakes_are_old() -> None:
    bound = SweepBound()
    _connect(bound, 10)
    bound.observe(lambda: 1.0)
    bound.observe(lambda: 2.0)  # an empty moment after the handshakes were counted
    assert bound.length() == COMMAND_LAG + 2 * 10


def test_connections_that_closed_keep_counting_until_the_router_is_found_empty() -> None:
    """A closed connection's frames are still read in turn with the others: it counts until
    an empty moment that came after its close was counted (one observation late, never
    early), and so does each identification that may hand a routing id over."""
    bound = SweepBound()
    bound.observe(lambda: 1.0)
    _connect(bound, 200)
    bound.closed += 200
    assert bound.length() == COMMAND_LAG + (2 + 200) * 200
    bound.observe(lambda: 1.0)  # no empty moment since: nothing is subtracted
    assert bound.length() == COMMAND_LAG + (2 + 200) * 200
    _connect(bound, 1)
    bound.closed += 1
    bound.observe(lambda: 2.0)  # empty after the 200 were counted, maybe before the last one
    assert bound.length() == COMMAND_LAG + (2 + 1) * 1
    bound.observe(lambda: 3.0)  # empty after it was counted too
    assert bound.length() == COMMAND_LAG


def test_identifications_count_only_up_to_the_connections() -> None:
    bound = SweepBound()
    bound.observe(lambda: 1.0)
    bound.accepted = 3
    bound.handshakes = 50  # (more handshakes than pipes bounds nothing more)
    assert bound.length() == COMMAND_LAG + (2 + 3) * 3
