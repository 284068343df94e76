"""Malformed admin calls are answered ``badarg``; the admin process does not crash."""

from __future__ import annotations

from typing import Any

import pytest

from waraft.cli.admin import NodeAdmin


@pytest.mark.parametrize(
    "request_",
    [
        ("bootstrap", "t", 1, [1, 2, 3], {}),
        ("bootstrap_many", "t", [1], (1, 1), ["n@h:1"], ["x"]),
        ("bootstrap",),
    ],
)
def test_malformed_arguments_are_answered_badarg(request_: tuple[Any, ...]) -> None:
    admin = object.__new__(NodeAdmin)  # the handlers fail on their arguments before any state
    assert NodeAdmin.handle_call(admin, request_, None) == ("error", "badarg")  # type: ignore[arg-type]
