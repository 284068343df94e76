"""The transport cleanup's scan interval: 30 s while transfer directories remain, the
retention period after a scan that found none (nothing can be deleted sooner)."""

from __future__ import annotations

from waraft.transport import cleanup


def test_a_scan_that_left_directories_comes_back_after_the_usual_interval() -> None:
    assert cleanup.next_scan_ms(1, 300.0) == cleanup.SCAN_INTERVAL_MS


def test_a_scan_that_left_nothing_waits_the_retention_period() -> None:
    assert cleanup.next_scan_ms(0, 300.0) == 300_000.0


def test_a_retention_shorter_than_the_interval_keeps_the_interval() -> None:
    assert cleanup.next_scan_ms(0, 0.0) == cleanup.SCAN_INTERVAL_MS
    assert cleanup.next_scan_ms(0, 5.0) == cleanup.SCAN_INTERVAL_MS
