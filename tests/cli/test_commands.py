"""The ``waraft`` commands as a user runs them (subprocesses) against a real 3-node cluster,
and ``waraft node``'s life cycle (READY line, config file, SIGTERM / SIGINT, errors)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multiprocess.harness import ROOT, Cluster, NodeProcess, child_env, waraft_cmd

TIMEOUT = 60


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
        cwd=ROOT, env=child_env(),
    )  # fmt: skip


def waraft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(*waraft_cmd(*args), stdin=stdin)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cli"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture(scope="module")
def nodes(cluster: Cluster) -> str:
    """The cluster, bootstrapped with ``waraft bootstrap``; its node list."""
    ids = ",".join(cluster.ids)
    done = waraft("bootstrap", "--nodes", ids, "--partitions", "1-4")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for p in range(1, 5):
        # Leaders spread round-robin: partition p on node (p - 1) % 3.
        assert f"kv.{p}: leader {cluster.ids[(p - 1) % 3]} (term " in done.stdout
        assert any(line.startswith(f"kv.{p}: ") and line.count(" ok") == 3 for line in lines)
    assert "4/4 partitions have a leader" in done.stdout
    return ids


def test_a_node_spelled_with_another_host_alias_bootstraps_nothing(cluster: Cluster) -> None:
    # Runs first, on the fresh cluster. ``n1@localhost:P`` for ``n1@127.0.0.1:P`` looks like
    # a node that is down; the other two were bootstrapped with it as a member nobody
    # answered for, and the real n1 stayed stalled.
    ids = cluster.ids
    alias = ids[0].replace("@127.0.0.1:", "@localhost:")
    done = waraft("bootstrap", "--nodes", ",".join([alias, *ids[1:]]), "--partitions", "1-2",
                  "--timeout", "10", "--down-after", "1")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{alias} (unreachable) did not answer" in done.stdout
    assert "--allow-unreachable" in done.stdout
    status = waraft("status", "--nodes", ",".join(ids), "--json", "--partitions", "1-2")
    rows = json.loads(status.stdout)
    assert len(rows) == 6 and {row["state"] for row in rows} == {"stalled"}, rows


def test_bootstrap_twice_is_harmless(nodes: str) -> None:
    again = waraft("bootstrap", "--nodes", nodes, "--partitions", "1-4", "--json")
    assert again.returncode == 0, again.stderr
    results = json.loads(again.stdout)
    assert [r["partition"] for r in results] == [1, 2, 3, 4]
    assert all(set(r["bootstrap"].values()) == {"already"} and r["leader"] for r in results)


def test_bootstrap_of_a_partition_the_nodes_do_not_serve_says_so(nodes: str) -> None:
    # It printed ``failed (('call_error', 'noproc'))`` for each node. Now nothing is
    # bootstrapped when a node lacks a partition asked for, and the error names each.
    done = waraft("bootstrap", "--nodes", nodes, "--partitions", "4,9", "--json", "--timeout", "5")
    assert done.returncode == 1, done.stdout + done.stderr
    results = json.loads(done.stdout)
    assert [r["partition"] for r in results] == [4, 9]
    for result in results:
        assert result["bootstrap"] == {}, result
        for node in nodes.split(","):
            assert f"{node} serves no partition 9" in result["error"], result
        assert "of table 'kv'" in result["error"]
    assert "noproc" not in done.stdout


def test_a_bootstrap_refused_as_a_whole_says_why_once(nodes: str) -> None:
    # The reason was printed on every partition's line (once more before them), and
    # "nodes were unreachable" on stderr for the --allow-unreachable of its advice.
    done = waraft("bootstrap", "--nodes", nodes, "--partitions", "4,8-9", "--timeout", "5")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    said = [line for line in lines if "every node must serve every partition" in line]
    assert len(said) == 1 and said[0].startswith("not bootstrapped: "), done.stdout
    for node in nodes.split(","):
        assert f"{node} serves no partition 8-9" in said[0]
    # Nothing was asked of the nodes: each line says the partition's running state, where
    # "NO LEADER" (and "3 partition(s) failed") read as an outage of healthy kv.4.
    assert "NO LEADER" not in done.stdout and "failed" not in done.stdout, done.stdout
    assert any(line.startswith("kv.4: leader ") for line in lines), done.stdout
    for p in (8, 9):
        assert f"kv.{p}: no leader reported" in lines, done.stdout
    assert "nothing bootstrapped: 3 partition(s) left as they were" in lines
    assert "unreachable" not in done.stderr, done.stderr
    as_json = waraft("bootstrap", "--nodes", nodes, "--partitions", "4,9", "--json")
    results = {r["partition"]: r for r in json.loads(as_json.stdout)}
    assert results[4]["refused"] and results[4]["leader"] in nodes.split(","), results
    assert results[9]["refused"] and results[9]["leader"] is None, results


def test_bootstrap_naming_other_nodes_than_the_running_members_leaves_them_alone(
    nodes: str,
) -> None:
    # Fewer nodes: it waited 30 s for leaders it could not see and moved a leader; an extra
    # node would have been bootstrapped into a config the running cluster never had.
    two = ",".join(nodes.split(",")[:2])
    done = waraft("bootstrap", "--nodes", two, "--partitions", "1-2", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    results = json.loads(done.stdout)
    assert [r["partition"] for r in results] == [1, 2]
    for r in results:
        assert r["bootstrap"] == {} and "already running on" in r["error"], r
        assert "adjust_config" in r["error"]
    again = waraft("bootstrap", "--nodes", nodes, "--partitions", "1-4", "--json")
    assert again.returncode == 0, again.stderr  # the members are as they were


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _status_rows(nodes: str) -> list[list[str]]:
    done = waraft("status", "--nodes", nodes)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert _cells(lines[1])[:5] == ["NODE", "PARTITION", "STATE", "TERM", "LEADER"]
    assert _cells(lines[1])[9] == "LIVE"
    return [_cells(line) for line in lines[3:-1]]


def test_status_prints_a_table_of_every_partition(cluster: Cluster, nodes: str) -> None:
    # A follower reports itself live once it has heard from its leader; right after the
    # bootstrap, on a loaded machine, one may not have yet: ask again until all have.
    deadline = time.monotonic() + 20
    rows = _status_rows(nodes)
    while not all(r[9] == "yes" for r in rows) and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = _status_rows(nodes)
    assert len(rows) == 12
    assert {(r[0], r[1]) for r in rows} == {
        (n, f"kv.{p}") for n in cluster.ids for p in range(1, 5)
    }
    for p in range(1, 5):
        mine = [r for r in rows if r[1] == f"kv.{p}"]
        leaders = [r for r in mine if r[2] == "leader"]
        assert len(leaders) == 1 and {r[4] for r in mine} == {leaders[0][0]}
        assert {r[2] for r in mine} == {"leader", "follower"}
        assert all(r[9] == "yes" for r in mine), rows


def test_status_json_and_unreachable_nodes(cluster: Cluster, nodes: str) -> None:
    done = waraft("status", "--nodes", nodes, "--json", "--partitions", "2", "--table", "kv")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 3 and {r["partition"] for r in rows} == {2}
    assert {"state", "term", "leader", "commit", "applied", "log_first", "log_last",
            "pending_commits", "pending_reads", "apply_queue", "live"} <= set(rows[0])  # fmt: skip
    dead = "ghost@127.0.0.1:1"
    done = waraft("status", "--nodes", f"{nodes},{dead}", "--down-after", "0.5")
    assert done.returncode == 1
    assert any(dead in line and "unreachable" in line for line in done.stdout.splitlines())


def test_status_of_partitions_no_node_serves_fails(cluster: Cluster, nodes: str) -> None:
    done = waraft("status", "--nodes", nodes, "--partitions", "2,9")
    assert done.returncode == 1
    assert "no node serves partition(s) 9" in done.stderr
    other = waraft("status", "--nodes", nodes, "--table", "nope")
    assert other.returncode == 1 and "no node serves any partition" in other.stderr


def test_status_watch_redraws_the_table_until_its_count(cluster: Cluster, nodes: str) -> None:
    done = waraft("status", "--nodes", nodes, "--watch", "0.2", "--count", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\x1b[H\x1b[2J") == 3  # one clear-screen per redraw
    assert done.stdout.count("waraft status ") == 3
    assert done.stdout.count("| kv.1 ") == 3 * 3  # every node's row in every redraw
    bad = waraft("status", "--nodes", nodes, "--watch", "0")
    assert bad.returncode != 0 and "positive" in bad.stderr and "Traceback" not in bad.stderr


def test_shell_status_of_a_partition_is_an_aligned_block(cluster: Cluster, nodes: str) -> None:
    done = waraft("shell", "--attach", cluster.ids[0], "--plain", stdin="status(1)\n")
    assert done.returncode == 0, done.stderr
    # The console's prompts ("... ", ">>> ") may precede the echo on the same line.
    lines = [
        line.removeprefix(">>> ").removeprefix("... ")
        for line in done.stdout.splitlines()
        if " : " in line
    ]
    fields = dict(line.split(" : ", 1) for line in lines)
    assert {k.strip() for k in fields} >= {"state", "current_term", "commit_index"}
    assert len({line.index(" : ") for line in lines}) == 1  # the colons line up
    assert fields[next(k for k in fields if k.strip() == "state")] in ("leader", "follower")


def test_shell_runs_code_against_a_running_node(cluster: Cluster, nodes: str) -> None:
    code = (
        "print(write('shell-key', 5)); print(get('shell-key')); "
        "print(leader(1) in nodes()); print(status(2)['state'] in ('leader', 'follower')); "
        "print(sorted(nodes()) == sorted(NODE.split(',') + " + repr(cluster.ids[1:]) + "))"
    )
    done = waraft("shell", "--attach", cluster.ids[0], "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ok", "('ok', 5)", "True", "True", "True"]
    failing = waraft("shell", "--attach", cluster.ids[0], "-c", "1 / 0")
    assert failing.returncode == 1 and "ZeroDivisionError" in failing.stderr


@pytest.mark.parametrize(
    "call",
    ["promote(9)", "status(9)", "resign(7)", "trigger_election(9)", "handover(9)", "leader(9)"],
)
def test_a_shell_helper_for_a_partition_the_node_does_not_serve_says_so(
    cluster: Cluster, nodes: str, call: str
) -> None:
    # It ended a traceback with ``ExitError: refused``: a missing partition read as a
    # permission problem. handover(9) answered ("error", "no_leader") and leader(9) None,
    # as for a partition between two leaders.
    done = waraft("shell", "--attach", cluster.ids[0], "-c", call)
    assert done.returncode == 1
    assert f"serves no partition {call[-2]} of table 'kv'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_interactive_shell_says_a_helper_refusal_in_one_line(
    cluster: Cluster, nodes: str
) -> None:
    done = waraft("shell", "--attach", cluster.ids[0], "--plain", stdin="handover(9)\n")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "serves no partition" in line]
    assert len(said) == 1 and said[0].endswith(
        f"error: {cluster.ids[0]} serves no partition 9 of table 'kv'"
    ), done.stderr
    assert "Traceback" not in done.stderr


def test_the_server_api_answers_no_such_partition_from_a_node_without_it(
    cluster: Cluster, nodes: str
) -> None:
    # adjust_config (and every admin verb) to a partition the node does not run ended a
    # traceback with ``ExitError: refused``, a permission problem to read it.
    code = (
        "name = server.default_name('kv', 9); "
        "print(server.adjust_config((name, NODE), ('add', Identity(name, NODE)))); "
        "print(server.disable((name, NODE), 'x'))"
    )
    done = waraft("shell", "--attach", cluster.ids[0], "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["('error', 'no_such_partition')"] * 2


def test_status_refuses_a_timeout_or_count_that_is_not_positive(nodes: str) -> None:
    for args in (["--timeout", "-1"], ["--timeout", "0"], ["--watch", "1", "--count", "0"]):
        done = waraft("status", "--nodes", nodes, *args)
        assert done.returncode == 2 and "must be" in done.stderr, (args, done.stderr)


def test_status_watch_exits_1_when_its_last_table_lacked_a_node(nodes: str) -> None:
    dead = "ghost@127.0.0.1:1"
    done = waraft("status", "--nodes", f"{nodes},{dead}", "--watch", "0.1", "--count", "1",
                  "--down-after", "0.5")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    done = waraft("status", "--nodes", nodes, "--watch", "0.1", "--count", "1")
    assert done.returncode == 0, done.stdout + done.stderr


def test_shell_reads_statements_from_stdin(cluster: Cluster, nodes: str) -> None:
    script = "x = get('shell-key')\nprint('got', x)\nstatus()\n"
    done = waraft("shell", "--attach", cluster.ids[2], "--plain", stdin=script)
    assert done.returncode == 0, done.stderr
    assert "got ('ok', 5)" in done.stdout
    assert done.stdout.count("| kv.") == 12  # status() printed the cluster table


def test_node_stops_cleanly_on_sigterm_and_sigint(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        node = NodeProcess(tmp_path, f"solo{int(sig)}", ["--partitions", "1", "--insecure"])
        node.spawn()
        try:
            node_id = node.wait_ready()
            assert node_id.startswith(f"solo{int(sig)}@127.0.0.1:") and node.port > 0
            node.signal(sig)
            assert node.proc is not None
            assert node.proc.wait(20) == 0
            assert "stopped" in node.log_tail()
        finally:
            node.kill()


def test_node_from_a_config_file_and_a_busy_port(tmp_path: Path) -> None:
    config = tmp_path / "n.toml"
    config.write_text(
        f'name = "cfg"\nlisten = "127.0.0.1:0"\ndata_dir = "{tmp_path / "data"}"\n'
        'partitions = "1-2"\ntable = "t"\ninsecure = true\n'
        "[settings]\nraft_election_timeout_ms = 400\n"
    )
    node = NodeProcess(tmp_path, "ignored", [])
    node.spawn = lambda: None  # type: ignore[method-assign]
    proc = subprocess.Popen(
        waraft_cmd("node", "--config", str(config)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env(),
    )  # fmt: skip
    node.proc = proc
    try:
        node_id = node.wait_ready()
        assert node_id.startswith("cfg@127.0.0.1:")
        assert (tmp_path / "data" / "t.1").is_dir() and (tmp_path / "data" / "t.2").is_dir()
        busy = waraft(
            "node",
            "--name",
            "other",
            "--listen",
            f"127.0.0.1:{node.port}",
            "--memory",
            "--insecure",
        )
        assert busy.returncode == 1 and "failed to start" in busy.stderr
    finally:
        node.kill()


def test_shell_with_a_node_of_its_own() -> None:
    code = "print(bootstrap_cluster()); print(write('a', 1)); print(get('a')); status()"
    done = waraft(
        "shell", "--node", "sh@127.0.0.1:0", "--partitions", "1-2", "--insecure", "-c", code
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2].startswith("{1: 'sh@127.0.0.1:") and "ok" in lines
    assert "('ok', 1)" in lines and done.stdout.count("| leader ") == 2


def test_bootstrap_of_more_partitions_than_the_admin_rate_limit_allows(tmp_path: Path) -> None:
    """150 partitions would be 150 rate-limited admin calls (50/s, burst 100) if bootstrap
    sent one per partition; it sends one bootstrap_many per node."""
    proc = NodeProcess(tmp_path, "r1", ["--memory", "--insecure", "--partitions", "1-150"])
    try:
        proc.spawn()
        node_id = proc.wait_ready()
        done = waraft("bootstrap", "--nodes", node_id, "--partitions", "1-150")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr
        assert "150/150 partitions have a leader" in done.stdout
    finally:
        proc.kill()


def test_a_node_over_its_memory_limit_refuses_to_start() -> None:
    over = waraft(
        "node", "--name", "m", "--listen", "127.0.0.1:0", "--memory", "--insecure",
        "--max-memory-mb", "1",
    )  # fmt: skip
    assert over.returncode == 1
    assert "failed to start" in over.stderr and "max_memory_mb=1" in over.stderr
    bad = waraft(
        "node", "--name", "m", "--listen", "127.0.0.1:0", "--memory", "--insecure",
        "--max-memory-mb", "-3",
    )  # fmt: skip
    assert bad.returncode == 2 and "max_memory_mb must be" in bad.stderr
