"""A status call a node's receive thread shed unread (``ExitError("overloaded")``: the
caller's key over its share of that thread) says the node is overloaded: the status table
without ``waraft_admin`` showed the partition "unreachable" and asked that node nothing more,
and the shell showed a raw ``ExitError`` (review Z, 2)."""

from __future__ import annotations

import pytest

from waraft import distribution as dist
from waraft import otp
from waraft.cli import _status_problems, ops, shell
from waraft.partition import server

NODE = "n1@127.0.0.1:7001"


def _status(address: object, timeout: float = 1.0) -> dict[str, object]:
    name = address[0] if isinstance(address, tuple) else address
    if name == "raft_server_kv_1":
        raise otp.ExitError(dist.OVERLOADED)
    return {"id": NODE, "table": "kv", "partition": int(str(name)[-1]), "state": "leader"}


def test_a_status_row_of_a_shed_call_says_overloaded_and_the_node_is_asked_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "status", _status)
    rows = ops._rows_without_admin(NODE, 1.0, "kv", [1, 2])
    assert [r.get("error") for r in rows] == ["overloaded", None]
    assert rows[1]["state"] == "leader"
    assert "| overloaded " in ops.format_table(rows).splitlines()[3]
    # The status problems say so, and do not count the partition as served by no node.
    problems = _status_problems(rows, [1, 2])
    assert problems == [f"no status (overloaded, ask again in a moment): {NODE} (kv.1)"]


def test_the_shell_says_a_node_that_shed_its_call_is_overloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "status", _status)
    helpers = shell.Helpers(NODE, "kv", [1, 2], [NODE])
    with pytest.raises(shell.ShellError) as info:
        helpers.status(1)
    said = str(info.value)
    assert "overloaded" in said and "try again" in said and "ExitError" not in said
    assert helpers.status(2)["state"] == "leader"
