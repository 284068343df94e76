"""``waraft status`` exits 1, with one stderr line saying why, when a partition runs on fewer
replicas than its config names, though every node asked answers: a member its leader gets no
answer from (down, cut off, of another cluster), or a member that serves no replica of it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli.test_commands import waraft
from tests.multiprocess.harness import Cluster
from waraft.cli import _status_problems, ops

A, B, C = "a@h:1", "b@h:2", "c@h:3"


def _row(node: str, partition: int, state: str, **extra: Any) -> dict[str, Any]:
    return {"node": node, "table": "kv", "partition": partition, "state": state,
            "members": [A, B, C], "unresponsive": [], **extra}  # fmt: skip


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_a_healthy_table_has_no_problems() -> None:
    rows = [_row(A, 1, "leader"), _row(B, 1, "follower"), _row(C, 1, "follower")]
    assert _status_problems(rows, None) == []


def test_a_member_that_serves_no_replica_is_a_problem() -> None:
    rows = [_row(A, 1, "leader"), _row(A, 2, "leader"), _row(B, 1, "follower"),
            _row(B, 2, "follower"), _row(C, 1, "follower")]  # fmt: skip
    assert _status_problems(rows, None) == [
        f"members that serve no replica of their partition: {C} (kv.2) (restart the node "
        "with the partition, or remove it from the config with adjust_config)"
    ]
    # Asked for partition 2 only, c answers that it serves none of the asked partitions.
    only = [_row(A, 2, "leader"), _row(B, 2, "follower"), {"node": C, "error": "no partitions"}]
    assert len(_status_problems(only, [2])) == 1
    # A member that was not asked (or did not answer) is not judged.
    assert _status_problems(rows[:4], None) == []


def test_partitions_no_node_serves_are_said_only_when_a_node_answered() -> None:
    # With every node unreachable it also said "no node serves partition(s) 1", which it
    # cannot know: the unreachable line is the one reason.
    down = [{"node": A, "error": "unreachable"}, {"node": B, "error": "timeout"}]
    assert _status_problems(down, [1]) == [
        f"unreachable: {A}",
        f"no status from {B} (timeout) (busy? a longer --timeout may help)",
    ]
    assert _status_problems([{"node": A, "error": "unreachable"}], [1]) == [f"unreachable: {A}"]
    # One node answered without the partition: said, as far as the answers go.
    some = [*down, {"node": C, "error": "no partitions"}]
    assert _status_problems(some, [1])[-1] == "no node that answered serves partition(s) 1"
    every = [_row(A, 1, "leader"), {"node": B, "error": "no partitions"}]
    assert "no node serves partition(s) 2" in _status_problems(every, [1, 2])


def test_unresponsive_members_of_leaders_are_a_problem_on_one_line() -> None:
    rows = [_row(A, p, "leader", unresponsive=[C]) for p in range(1, 1001)]
    (problem,) = _status_problems(rows, None)
    assert (
        problem
        == f"members that do not answer their leader: {C} (kv.1, kv.2, kv.3, ... 1000 in all)"
    )
    # Only a leader's list counts (a follower's means nothing), and only its UNRESP cell.
    follower = _row(B, 1, "follower", unresponsive=[C])
    assert _status_problems([_row(A, 1, "leader"), follower], None) == []
    rows.append(follower)
    table = [_cells(line) for line in ops.format_table(rows).splitlines()[1:-1]]
    assert table[0][-1] == "UNRESP"
    assert table[2][-1] == "1" and table[-1][-1] == ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("unresp"), size=3, partitions=(1, 2, 3))
    try:
        cluster.start()
        done = waraft("bootstrap", "--nodes", ",".join(cluster.ids), "--partitions", "1-3")
        assert done.returncode == 0, done.stdout + done.stderr
        yield cluster
    finally:
        cluster.kill_all()


def test_status_names_a_member_its_leader_gets_no_answer_from(cluster: Cluster) -> None:
    # With n3 down and only n1, n2 asked, the table looked clean and status exited 0; only
    # --json's `unresponsive` named n3.
    dead = cluster.ids[2]
    asked = ",".join(cluster.ids[:2])
    cluster.nodes[2].kill()

    def unanswered() -> bool:
        shown = waraft("status", "--nodes", asked, "--json")
        rows = json.loads(shown.stdout)
        return any(r.get("state") == "leader" and dead in r["unresponsive"] for r in rows)

    deadline = time.monotonic() + 30
    while not unanswered():
        assert time.monotonic() < deadline, "no leader reported the dead member unresponsive"
        time.sleep(0.5)
    done = waraft("status", "--nodes", asked)
    assert done.returncode == 1, done.stdout + done.stderr
    problems = [line for line in done.stderr.splitlines() if line.startswith("waraft status: ")]
    assert len(problems) == 1, done.stderr
    assert problems[0].startswith(
        f"waraft status: members that do not answer their leader: {dead} (kv."
    )
    column = _cells(done.stdout.splitlines()[1]).index("UNRESP")
    cells = [_cells(line) for line in done.stdout.splitlines()[3:-1]]
    assert any(row[2] == "leader" and row[column] == "1" for row in cells), done.stdout
    assert all(row[column] == "" for row in cells if row[2] != "leader"), done.stdout


def test_a_replica_restarting_is_a_problem_of_its_own_not_a_missing_partition() -> None:
    # Its row (error "restarting") was not a problem at all: `waraft status` exited 0 with
    # a replica down for a restart, or said no node served a partition only restarting.
    restarting = {"node": C, "table": "kv", "partition": 1, "error": "restarting"}
    line = f"replicas restarting (ask again in a moment): {C} (kv.1)"
    rows = [_row(A, 1, "leader"), _row(B, 1, "follower"), restarting]
    assert _status_problems(rows, None) == [line]
    assert _status_problems(rows, [1]) == [line]
    assert _status_problems([restarting], [1]) == [line]
    # A member restarting its replica serves it: not "serves no replica".
    assert _status_problems([_row(A, 1, "leader"), restarting], None) == [line]
