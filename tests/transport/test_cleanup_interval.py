"""The transport cleanup's scan interval: 30 s while transfer directories remain, the
retention period after a scan that found none (nothing can be deleted sooner)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from waraft import otp
from waraft.transport import cleanup


def test_a_scan_that_left_directories_comes_back_after_the_usual_interval() -> None:
    assert cleanup.next_scan_ms(1, 300.0) == cleanup.SCAN_INTERVAL_MS


def test_a_scan_that_left_nothing_waits_the_retention_period() -> None:
    assert cleanup.next_scan_ms(0, 300.0) == 300_000.0


def test_a_retention_shorter_than_the_interval_keeps_the_interval() -> None:
    assert cleanup.next_scan_ms(0, 0.0) == cleanup.SCAN_INTERVAL_MS
    assert cleanup.next_scan_ms(0, 5.0) == cleanup.SCAN_INTERVAL_MS


def test_a_scan_the_file_system_refuses_is_logged_and_skipped(
    otp_node: otp.Node,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """Out of descriptors, listing the directory raises: the scan is skipped, logged once,
    and the actor lives on, instead of crashing and with it the partition (review N,
    finding 1)."""

    def no_descriptors(path: str) -> list[str]:
        raise OSError(errno.EMFILE, "Too many open files", path)

    name = cleanup.default_name("test", 1)
    options = SimpleNamespace(
        transport_directory=str(tmp_path), application="waraft_test", transport_cleanup_name=name
    )
    pid = cleanup.start_link(options)
    monkeypatch.setattr(cleanup.os, "listdir", no_descriptors)
    with caplog.at_level(logging.WARNING, logger=cleanup.__name__):
        assert otp.call((name, otp_node.id), ("scan",)) == []
        assert otp.call((name, otp_node.id), ("scan",)) == []  # within the minute: not logged
    assert otp.is_alive(pid)
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        f"transport cleanup of {tmp_path} skipped (1 time(s) since the last report): "
        f"[Errno {errno.EMFILE}] Too many open files: '{tmp_path}'"
    ]
