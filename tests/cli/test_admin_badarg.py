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


@pytest.mark.parametrize(
    "nodes", [[], "n1@h:1", ["n1@h:1", "typo"], ["n1@h:1", ("n2", "h")], ["n1@h:99999"]]
)
def test_bootstrap_many_refuses_members_that_are_not_node_ids(nodes: Any) -> None:
    """M4: ``str()`` of anything was taken as a member: a typo became a member nobody runs,
    in a config the replicas then refused to bootstrap over."""
    admin = object.__new__(NodeAdmin)  # refused before any state or server is used
    results = NodeAdmin.handle_call(  # type: ignore[arg-type]
        admin, ("bootstrap_many", "t", [1, 2], (1, 1), nodes, [1]), None
    )
    assert [(p, r[0], r[1][0], e) for p, r, e in results] == [
        (1, "error", "badarg", None),
        (2, "error", "badarg", None),
    ]
