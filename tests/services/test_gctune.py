"""The node process's cyclic GC settings (``waraft.services.gctune``)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest

from waraft.services import gctune, metrics


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Whatever a test does to the collector is undone (the test process is shared)."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gctune.unwatch_pauses()
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, gctune.DEFAULT_THRESHOLD), ("default", gctune.DEFAULT_THRESHOLD),
     ("", gctune.DEFAULT_THRESHOLD), ("python", None), (" Python ", None),
     ("5000,15,30", (5000, 15, 30)), ("1, 1, 1", (1, 1, 1)), ([700, 10, 10], (700, 10, 10))],
)  # fmt: skip
def test_thresholds_parse(value: object, expected: object) -> None:
    assert gctune.parse_threshold(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["0,10,10", "700,10", "700,10,10,10", "a,b,c", "700;10;10", "-1,10,10", "off",
     "20000000,10,10", [700, 10], [700, "10", 10], [700.0, 10, 10], [True, 10, 10]],
)  # fmt: skip
def test_bad_thresholds_are_refused_with_the_accepted_forms(value: object) -> None:
    with pytest.raises(ValueError, match="three whole numbers >= 1"):
        gctune.parse_threshold(value)  # type: ignore[arg-type]


def test_tune_sets_the_thresholds_and_freezes_what_is_alive(restored_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    gctune.tune((12_345, 7, 9))
    assert gc.get_threshold() == (12_345, 7, 9)
    assert gc.get_freeze_count() > 1000  # at least the modules' objects
    before = gc.get_threshold()
    gctune.tune(None, freeze=False)
    assert gc.get_threshold() == before


def test_pauses_are_timed_per_generation_and_slow_ones_logged(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def count(generation: int) -> int:
        snap = metrics.histograms(gctune.GC_PAUSE_METRIC).get(f"gen{generation}")
        return 0 if snap is None else int(snap["count"])

    # Below the threshold nothing is logged. The threshold is raised for this part: a full
    # collection of this test process's heap can itself take 0.1 s on a loaded machine.
    monkeypatch.setattr(gctune, "SLOW_PAUSE_S", 3600.0)
    gctune.watch_pauses()
    gctune.watch_pauses()  # idempotent: one callback, one sample per collection
    full, young = count(2), count(0)
    gc.collect()
    gc.collect(0)
    assert count(2) == full + 1 and count(0) == young + 1
    assert not [r for r in caplog.records if r.name == gctune.__name__]
    monkeypatch.setattr(gctune, "SLOW_PAUSE_S", 0.0)
    gctune.unwatch_pauses()
    gctune.watch_pauses()  # a fresh throttle: the next slow pause is logged
    with caplog.at_level(logging.WARNING, logger=gctune.__name__):
        gc.collect()
    lines = [r.getMessage() for r in caplog.records if r.name == gctune.__name__]
    assert len(lines) == 1 and "generation-2 garbage collection stalled the node" in lines[0]
    gctune.unwatch_pauses()
    gc.collect()
    assert count(2) == full + 2  # unwatched: no more samples
