"""Property test: the overlay over a lagging view reads exactly like the log after the step."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from waraft.core.config import make_config
from waraft.core.effects import AppendLog, ResetLog, TruncateLog
from waraft.core.log import LogOverlay
from waraft.core.types import CONFIG, Entry, LogPos

from .fakes import FakeLog, ident

CONFIGS = [make_config([ident(i)]) for i in range(1, 4)]

entry = st.builds(
    lambda term, kind, n: Entry(term, n, (CONFIG, CONFIGS[n % 3]) if kind else ("cmd", n)),
    st.integers(1, 5),
    st.booleans(),
    st.integers(0, 1000),
)
op = st.one_of(
    st.tuples(st.just("append"), st.lists(entry, min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 12)),
    st.tuples(st.just("reset"), st.integers(1, 30)),
)


@settings(max_examples=300, deadline=None)
@given(
    base=st.lists(entry, max_size=8),
    steps=st.lists(st.lists(op, max_size=4), min_size=1, max_size=4),
)
def test_overlay_matches_the_applied_log(base: list[Entry], steps: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    view = FakeLog(LogPos(1, 1), base)
    overlay = LogOverlay(view)
    for step in steps:
        overlay.begin_step()
        shadow = FakeLog(LogPos(view.first_index(), view.term(view.first_index()) or 0))
        shadow.items = list(view.items)
        effects = []
        for kind, arg in step:
            if kind == "append":
                first = overlay.append(arg)
                effects.append(AppendLog(first, arg))
            elif kind == "truncate":
                index = overlay.first_index() + 1 + arg
                if index > overlay.last_index():
                    continue
                overlay.truncate(index, scan_floor=0)
                effects.append(TruncateLog(index))
            else:
                position = LogPos(overlay.last_index() + arg, 6)
                overlay.reset(position)
                effects.append(ResetLog(position))
            for effect in effects[-1:]:
                shadow.apply(effect)
            _same(overlay, shadow)
        for effect in effects:
            view.apply(effect)
    overlay.begin_step()
    _same(overlay, view)


def _same(overlay: LogOverlay, log: FakeLog) -> None:
    first, last = log.first_index(), log.last_index()
    assert (overlay.first_index(), overlay.last_index()) == (first, last)
    for index in range(first - 1, last + 2):
        assert overlay.term(index) == log.term(index)
        assert overlay.get(index) == log.get(index)
    assert overlay.entries(first, last, 1000, 1 << 30) == log.entries(first, last, 1000, 1 << 30)
    assert overlay.config() == log.config()
