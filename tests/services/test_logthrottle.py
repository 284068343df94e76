"""LogThrottle: one line per interval, every event accounted for."""

from __future__ import annotations

import pytest

from waraft.services.logthrottle import LogThrottle


def test_first_event_passes_then_the_rest_of_the_interval_is_held() -> None:
    throttle = LogThrottle(1.0)
    assert throttle.ready(now=10.0) == 1
    assert [throttle.ready(now=10.0 + i / 10) for i in range(1, 10)] == [0] * 9
    # The next line stands for the nine held back and itself.
    assert throttle.ready(now=11.0) == 10
    assert throttle.ready(now=11.5) == 0
    assert throttle.ready(now=12.0) == 2


def test_events_spread_wider_than_the_interval_each_get_a_line() -> None:
    throttle = LogThrottle(0.5)
    assert [throttle.ready(now=float(t)) for t in range(5)] == [1] * 5


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        LogThrottle(0)
