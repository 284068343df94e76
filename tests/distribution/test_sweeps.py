"""The sweep length the liveness thread asks of the receive thread (``sweeps.SweepBound``):
sized by every connection the ROUTER may read in turn, shrinking only once the ROUTER has been
found empty after the closes were counted."""

from __future__ import annotations

from waraft.distribution.sweeps import COMMAND_LAG, MAX_CANDIDATES, SweepBound


def _connect(bound: SweepBound, count: int) -> None:
    bound.accepted += count
    bound.handshakes += count


def _observe(bound: SweepBound, moment: float, now: float) -> float:
    """One liveness check at ``now`` that reads the empty moment ``moment``."""
    return bound.observe(lambda: moment, lambda: now)


def test_a_sweep_covers_two_turns_over_the_connections_once_their_handshakes_are_old() -> None:
    bound = SweepBound()
    _connect(bound, 10)
    _observe(bound, 1.0, now=0.5)  # found empty after the handshakes were counted
    assert bound.length() == COMMAND_LAG + 2 * 10


def test_connections_that_closed_keep_counting_until_the_router_is_found_empty() -> None:
    """A closed connection's frames are still read in turn with the others: it counts until
    an empty moment later than the check that counted its close, and so does each
    identification that may hand a routing id over."""
    bound = SweepBound()
    _observe(bound, 1.0, now=1.5)
    _connect(bound, 200)
    bound.closed += 200
    assert bound.length() == COMMAND_LAG + (2 + 200) * 200
    _observe(bound, 1.0, now=2.0)  # no empty moment since: nothing is subtracted
    assert bound.length() == COMMAND_LAG + (2 + 200) * 200
    _connect(bound, 1)
    bound.closed += 1
    _observe(bound, 2.5, now=3.0)  # empty after the 200 were counted (at 2.0), not the last
    assert bound.length() == COMMAND_LAG + (2 + 1) * 1
    _observe(bound, 3.5, now=4.0)  # empty after it was counted too (at 3.0)
    assert bound.length() == COMMAND_LAG


def test_an_empty_moment_published_late_subtracts_nothing_counted_after_it() -> None:
    """The receive thread reads its clock, checks the ROUTER, and publishes the reading:
    held up between the check and the publication (a review paused it there), it published
    a moment older than closes counted meanwhile. Those connections' frames may be unread:
    they keep counting until a later empty moment."""
    bound = SweepBound()
    _connect(bound, 600)
    _observe(bound, 1.0, now=1.5)  # the 600 counted at 1.5, found empty at 1.0: still counted
    bound.closed += 600  # they queued frames and closed while the receive thread was held up
    _observe(bound, 1.2, now=2.0)  # the moment published late: a check at 1.2, before 1.5
    assert bound.length() == COMMAND_LAG + (2 + 600) * 600
    _observe(bound, 2.5, now=3.0)  # a check after the closes were counted (at 2.0)
    assert bound.length() == COMMAND_LAG


def test_counts_beyond_the_kept_checks_only_keep_sweeps_longer() -> None:
    bound = SweepBound()
    _connect(bound, 5)
    bound.closed += 5
    for check in range(MAX_CANDIDATES + 10):  # no empty moment for many checks
        _observe(bound, 0.0, now=1.0 + check)
    assert bound.length() == COMMAND_LAG + (2 + 5) * 5
    _observe(bound, 0.5, now=100.0)  # older than every count kept: nothing subtracted
    assert bound.length() == COMMAND_LAG + (2 + 5) * 5
    _observe(bound, 200.0, now=150.0)
    assert bound.length() == COMMAND_LAG


def test_identifications_count_only_up_to_the_connections() -> None:
    bound = SweepBound()
    _observe(bound, 1.0, now=0.5)
    bound.accepted = 3
    bound.handshakes = 50  # (more handshakes than pipes bounds nothing more)
    assert bound.length() == COMMAND_LAG + (2 + 3) * 3
