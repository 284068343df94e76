"""Inline idle hooks: only the hooks that collected work run when the receive thread drains."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from waraft.distribution import inline


@pytest.fixture
def hooks() -> Iterator[dict[str, int]]:
    calls: dict[str, int] = {}
    names = [f"idle_test_{i}" for i in range(1000)]
    for name in names:
        inline.set_idle_hook(
            name, lambda name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
        )
    yield calls
    for name in names:
        inline.set_idle_hook(name, None)


def test_a_drained_socket_runs_no_hook_that_has_nothing_to_hand_on(hooks: dict[str, int]) -> None:
    assert not inline.has_due_work()
    inline.run_idle_hooks()
    assert hooks == {}


def test_only_the_hooks_asked_for_run_and_each_once_per_burst(hooks: dict[str, int]) -> None:
    inline.idle_work_due("idle_test_7")
    inline.idle_work_due("idle_test_7")
    inline.idle_work_due("idle_test_900")
    assert inline.has_due_work()
    inline.run_idle_hooks()
    assert hooks == {"idle_test_7": 1, "idle_test_900": 1}
    assert not inline.has_due_work()
    inline.run_idle_hooks()
    assert hooks == {"idle_test_7": 1, "idle_test_900": 1}


def test_a_removed_hook_is_no_longer_due(hooks: dict[str, int]) -> None:
    inline.idle_work_due("idle_test_3")
    inline.set_idle_hook("idle_test_3", None)
    assert not inline.has_due_work()
    inline.run_idle_hooks()
    assert hooks == {}
