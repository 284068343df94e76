"""The ``waraft`` command without a cluster: argument parsing, config files, errors and exit
codes, the status table's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from waraft.cli import _parser, main
from waraft.cli.common import (
    UsageError,
    known_setting,
    parse_assignment,
    parse_nodes,
    parse_partitions,
)
from waraft.cli.datadir import NODE_FILE
from waraft.cli.node import NodeConfig, _claim_data_dir, config_from_args
from waraft.cli.ops import format_table
from waraft.services import gctune


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1-4", [1, 2, 3, 4]), ("3", [3]), ("1,3,5-7", [1, 3, 5, 6, 7]), ("2, 1,2", [1, 2]),
     (4, [4]), ([2, 1], [1, 2])],
)  # fmt: skip
def test_partition_lists(text: object, expected: list[int]) -> None:
    assert parse_partitions(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "0", "4-1", "a", "1,,2", "-3", "1-", True, [1, "2"]])
def test_bad_partition_lists(text: object) -> None:
    with pytest.raises(UsageError):
        parse_partitions(text)  # type: ignore[arg-type]


def test_node_lists() -> None:
    assert parse_nodes("n1@h:1, n2@h:2,n1@h:1") == ["n1@h:1", "n2@h:2"]
    for bad in ("", "n1", "n1@h", "n1@h:x", "a@b:1,nope"):
        with pytest.raises(UsageError):
            parse_nodes(bad)


def test_settings() -> None:
    assert parse_assignment("raft_election_timeout_ms=500") == ("raft_election_timeout_ms", 500)
    assert parse_assignment("raft_election_pre_vote=true") == ("raft_election_pre_vote", True)
    assert parse_assignment("raft_database=/tmp/x") == ("raft_database", "/tmp/x")
    assert known_setting("raft_rpc_call_timeout") == "global"
    assert known_setting("raft_heartbeat_interval_ms") == "app"
    assert parse_assignment('raft_storage_options={"lmdb_sync": true}') == (
        "raft_storage_options",
        {"lmdb_sync": True},
    )
    assert known_setting("raft_storage_options") == "app"
    with pytest.raises(UsageError):
        parse_assignment("novalue")
    with pytest.raises(UsageError, match="unknown setting"):
        known_setting("raft_election_timeout")


_NODE = ["node", "--name", "n1", "--listen", "h:1", "--memory", "--insecure"]


def test_the_transport_admission_settings_can_be_set(tmp_path: Path) -> None:
    # README documents them as the knobs of snapshot admission, but ``--set`` and a config
    # file's [settings] refused them as "unknown setting" (missing from GLOBAL_DEFAULTS).
    args = _parser().parse_args(
        [*_NODE, "--set", "raft_transport_disk_reserve_bytes=1048576",
         "--set", "raft_transport_disk_reserve_percent=0.5",
         "--set", "raft_max_incoming_transports_per_peer=3"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.settings["raft_transport_disk_reserve_percent"] == 0.5
    for key in ("raft_transport_disk_reserve_bytes", "raft_max_incoming_transports_per_peer"):
        assert known_setting(key) == "global"
    from_file = _config(
        tmp_path,
        'name = "n1"\nlisten = "h:1"\nmemory = true\ninsecure = true\n'
        "[settings]\nraft_transport_disk_reserve_percent = 5\n"
        "raft_transport_disk_reserve_bytes = 0\n",
    )
    assert from_file.settings["raft_transport_disk_reserve_percent"] == 5


@pytest.mark.parametrize(
    ("assignment", "message"),
    [("raft_transport_disk_reserve_percent=101", "a number from 0 to 100"),
     ("raft_transport_disk_reserve_percent=-1", "a number from 0 to 100"),
     ("raft_transport_disk_reserve_percent=true", "a number from 0 to 100"),
     ("raft_transport_disk_reserve_percent=lots", "a number from 0 to 100"),
     ("raft_transport_disk_reserve_bytes=1.5", "must be an integer"),
     ("raft_transport_disk_reserve_bytes=-1", "between 0 and"),
     ("raft_max_incoming_transports_per_peer=0", "between 1 and")],
)  # fmt: skip
def test_bad_transport_admission_settings_are_usage_errors(
    assignment: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_NODE, "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("waraft node: error:"), err


@pytest.mark.parametrize(
    ("variable", "value"),
    [("WARAFT_OTP_MAX_PROCESSES", "abc"), ("WARAFT_OTP_MAX_PROCESSES", "0"),
     ("WARAFT_OTP_MAX_MEMORY_MB", "1.5"), ("WARAFT_OTP_MAX_MEMORY_MB", "-1")],
)  # fmt: skip
def test_a_bad_limit_in_the_environment_is_a_usage_error_naming_it(
    variable: str, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was "failed to start: invalid literal for int() with base 10: 'abc'", exit 1.
    monkeypatch.setenv(variable, value)
    assert main(_NODE) == 2
    err = capsys.readouterr().err
    assert err.startswith("waraft node: error:"), err
    assert variable in err and repr(value) in err, err


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "node" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "expected"),
    [("node", "--data-dir"), ("bootstrap", "round-robin"), ("status", "--json"),
     ("shell", "--attach")],
)  # fmt: skip
def test_every_command_has_help(
    command: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert expected in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["node"], "--name is required"),
        (["node", "--name", "n1"], "--listen"),
        (["node", "--name", "n1", "--listen", "127.0.0.1"], "HOST:PORT"),
        (["node", "--name", "n1", "--listen", "127.0.0.1:0"], "--data-dir"),
        (["node", "--name", "n@1", "--listen", "h:1", "--memory"], "letters, digits"),
        (["node", "--name", "n 1", "--listen", "h:1", "--memory"], "got 'n 1'"),
        (["node", "--name", "n" * 65, "--listen", "h:1", "--memory"], "at most 64"),
        (["node", "--name", "n/1", "--listen", "h:1", "--memory"], "letters, digits"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--set", "bogus=1"],
         "unknown setting"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--partitions", "4-1"],
         "empty range"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--table", "bad table"],
         "table"),
        (["node", "--config", "/nonexistent/x.toml"], "cannot read config file"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory"], "--insecure"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--insecure",
          "--set", "raft_election_timeout_ms=soon"], "raft_election_timeout_ms must be an integer"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--insecure",
          "--set", "raft_election_timeout_ms=0"], "between 1 and"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--insecure",
          "--set", "raft_election_pre_vote=1"], "true or false"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--insecure",
          "--set", "raft_heartbeat_interval_ms=99999"], "must be below"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--insecure",
          "--set", "raft_storage_options=fast"], "raft_storage_options must be a table"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--insecure",
          "--down-after", "-1"], "positive"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--keys", "/nonexistent"],
         "cannot read"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--keys", "/x", "--insecure"],
         "exclude each other"),
        (["node", "--name", "n1", "--listen", "h:1", "--memory", "--insecure",
          "--gc-threshold", "0,10,10"], "three whole numbers >= 1"),
        (["status", "--nodes", "nonsense"], "not node ids"),
        (["bootstrap", "--nodes", "a@h:1", "--partitions", "x"], "partition list"),
        (["shell"], "--attach"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"waraft {args[0]}: error:")


def test_argparse_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["status"])  # --nodes is required
    assert exc.value.code == 2


@pytest.mark.parametrize("command", ["status", "bootstrap", "shell"])
def test_a_table_name_partitions_cannot_have_is_a_usage_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was sent to every node, and each answered that it had no such partition.
    with pytest.raises(SystemExit) as exc:
        main([command, "--nodes", "n1@h:1", "--table", "kv;x"])
    assert exc.value.code == 2
    assert "a table name is letters, digits and '_', got 'kv;x'" in capsys.readouterr().err


def _config(tmp_path: Path, text: str, *flags: str) -> NodeConfig:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return config_from_args(_parser().parse_args(["node", "--config", str(path), *flags]))


def test_a_toml_file_gives_everything_and_flags_win(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        """
        name = "n7"
        listen = "127.0.0.1:7007"
        data_dir = "/var/lib/n7"
        table = "orders"
        partitions = [1, 2]
        app = "shop"
        insecure = true

        [settings]
        raft_election_timeout_ms = 900

        [dist]
        ping_interval = 0.5
        """,
        "--partitions", "3-5", "--set", "raft_heartbeat_interval_ms=20", "--down-after", "3",
    )  # fmt: skip
    assert config.node_id() == "n7@127.0.0.1:7007"
    assert config.data_dir == "/var/lib/n7" and config.table == "orders"
    assert config.application == "shop"
    assert config.partitions == [3, 4, 5]
    assert config.settings == {"raft_election_timeout_ms": 900, "raft_heartbeat_interval_ms": 20}
    assert config.dist == {"ping_interval": 0.5, "down_after": 3.0, "connect_timeout": 3.0}
    assert config.memory is False and config.bind() is None
    assert config.gc() == gctune.DEFAULT_THRESHOLD


def test_gc_thresholds_from_the_file_and_the_flag(tmp_path: Path) -> None:
    text = 'name = "n1"\nlisten = "h:1"\nmemory = true\ninsecure = true\n'
    assert _config(tmp_path, text + 'gc_threshold = "python"\n').gc() is None
    assert _config(tmp_path, text + "gc_threshold = [900, 5, 5]\n").gc() == (900, 5, 5)
    flag = _config(tmp_path, text + 'gc_threshold = "python"\n', "--gc-threshold", "1000,2,3")
    assert flag.gc() == (1000, 2, 3)


def test_a_node_table_and_advertised_host(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        '[node]\nname = "n1"\nlisten = "0.0.0.0:7001"\nadvertise = "10.0.0.5"\nmemory = true\n'
        "insecure = true\n",
    )
    assert config.node_id() == "n1@10.0.0.5:7001"
    assert config.bind() == "tcp://0.0.0.0:7001"
    assert config.application == config.table == "kv" and config.partitions == [1, 2, 3, 4]
    # A host with a space made an id that started, and that other tools split wrongly.
    for host in ("10.0.0.5 extra", "h;x", "h\\n"):
        text = f'name = "n1"\nlisten = "0.0.0.0:1"\nadvertise = "{host}"\nmemory = true\n'
        with pytest.raises(UsageError, match="host"):
            _config(tmp_path, text + "insecure = true\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "bad TOML"),
        ("nmae = 'x'", "unknown keys"),
        ("settings = 3", "must be a table"),
        # A truthy string used to turn the memory providers (or fault injection) on.
        ('memory = "false"', "memory in .* must be true or false, got 'false'"),
        ('allow_fault_injection = "false"', "allow_fault_injection in .* must be true or false"),
        ("listen = 7204", "listen in .* must be a string, got 7204"),  # was a traceback
        ("data_dir = 5", "data_dir in .* must be a string"),
        ('name = ["n4"]', "name in .* must be a string"),
        ('max_memory_mb = "1"', "max_memory_mb in .* must be a whole number"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _config(tmp_path, text)


def test_unreachable_nodes_make_status_and_bootstrap_fail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Port 1 on 127.0.0.1: nothing listens there, the connection is refused at once.
    nobody = "ghost@127.0.0.1:1"
    assert main(["status", "--nodes", nobody, "--down-after", "0.5"]) == 1
    out = capsys.readouterr().out
    assert nobody in out and "unreachable" in out
    code = main(["bootstrap", "--nodes", nobody, "--partitions", "1", "--timeout", "1",
                 "--down-after", "0.5"])  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "(unreachable) did not answer" in out
    assert "nothing bootstrapped: 1 partition(s) left as they were" in out


def test_status_table_layout() -> None:
    rows = [
        {"node": "n1@h:1", "table": "kv", "partition": 1, "state": "leader", "term": 3,
         "leader": "n1@h:1", "commit": 10, "applied": 9, "log_first": 1, "log_last": 10,
         "pending_commits": 2, "pending_reads": 0, "apply_queue": 1, "live": True,
         "lagging": False, "quiescent": True},
        {"node": "n2@h:2", "error": "unreachable"},
    ]  # fmt: skip
    lines = format_table(rows).splitlines()
    assert lines[0] == lines[2] == lines[-1] and set(lines[0]) == {"+", "-"}
    header = [cell.strip() for cell in lines[1].strip("|").split("|")]
    assert header == ["NODE", "PARTITION", "STATE", "TERM", "LEADER", "COMMIT", "APPLIED", "LOG",
                      "QUEUES C/R/A", "LIVE", "QUIET", "UNRESP"]  # fmt: skip
    first = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert first == ["n1@h:1", "kv.1", "leader", "3", "n1@h:1", "10", "9", "1-10", "2/0/1", "yes",
                     "yes", ""]  # fmt: skip
    second = [cell.strip() for cell in lines[4].strip("|").split("|")]
    assert second[:3] == ["n2@h:2", "-", "unreachable"] and set(second[3:]) == {""}
    assert len({len(line) for line in lines}) == 1


def test_shell_namespace_banner_and_completion() -> None:
    readline = pytest.importorskip("readline")
    from waraft.cli import shell

    helpers = shell.Helpers("n1@127.0.0.1:7001", "kv", [1, 2], ["n1@127.0.0.1:7001"])
    ns = shell.namespace(helpers)
    for name in (*shell.HELPERS, "waraft", "otp", "server", "acceptor", "dist", "LogPos"):
        assert name in ns
    text = shell.banner(helpers)
    assert all(name in text for name in ("status()", "bootstrap_cluster", "promote", "leader"))
    shell._readline_completion(ns)
    complete = readline.get_completer()
    assert complete("bootstrap_c", 0) == "bootstrap_cluster("
    assert complete("server.stat", 0) == "server.status("


def test_status_block_orders_the_main_fields_first_and_aligns_them() -> None:
    from waraft.cli.ops import StatusBlock, format_status_block

    status = {
        "zeta": 1,
        "state": "leader",
        "current_term": 7,
        "table": "kv",
        "config": {"membership": [["raft_server_kv_1", "n1@h:1"]], "witness": [], "version": 1},
        "leader_id": None,
    }
    lines = format_status_block(status).splitlines()
    assert [line.split(" : ")[0].strip() for line in lines] == [
        "table", "state", "current_term", "leader_id",
        "config.membership", "config.witness", "config.version", "zeta",
    ]  # fmt: skip
    assert lines[4].endswith(": n1@h:1") and lines[3].endswith(": -")
    assert len({line.index(" : ") for line in lines}) == 1
    block = StatusBlock(status)
    assert block["state"] == "leader" and repr(block) == format_status_block(status)


def test_a_data_dir_is_claimed_by_its_first_node_and_refused_to_others(tmp_path: Path) -> None:

    _claim_data_dir(str(tmp_path), "n1", "n1@127.0.0.1:7001")
    recorded = json.loads((tmp_path / NODE_FILE).read_text())
    assert recorded == {"name": "n1", "node_id": "n1@127.0.0.1:7001"}
    # The same node at a new address keeps it (and the record follows the address).
    _claim_data_dir(str(tmp_path), "n1", "n1@127.0.0.1:7101")
    assert json.loads((tmp_path / NODE_FILE).read_text())["node_id"] == "n1@127.0.0.1:7101"
    with pytest.raises(UsageError, match="belongs to node n1"):
        _claim_data_dir(str(tmp_path), "n2", "n2@127.0.0.1:7002")
    assert json.loads((tmp_path / NODE_FILE).read_text())["name"] == "n1"


def test_the_data_dir_is_not_a_setting(tmp_path: Path) -> None:
    # It moved the data away from --data-dir, which the log (and the next restart) still named.
    text = 'name = "n1"\nlisten = "h:1"\ndata_dir = "/d"\ninsecure = true\n'
    with pytest.raises(UsageError, match="raft_database is set by --data-dir"):
        _config(tmp_path, text, "--set", "raft_database=/elsewhere")


@pytest.mark.parametrize(
    "key",
    [
        "raft_apply_log_batch_size",
        "raft_max_pending_applies",
        "raft_max_pending_high_priority_commits",
        "raft_max_pending_reads",
    ],
)
def test_limits_that_break_a_node_at_zero_are_refused(tmp_path: Path, key: str) -> None:
    text = 'name = "n1"\nlisten = "h:1"\nmemory = true\ninsecure = true\n'
    with pytest.raises(UsageError, match=f"{key} must be between 1 and"):
        _config(tmp_path, text, "--set", f"{key}=0")
    assert _config(tmp_path, text, "--set", f"{key}=1").settings == {key: 1}


def test_a_data_dir_records_its_cluster_once_and_refuses_another(tmp_path: Path) -> None:
    from waraft.cli import datadir

    _claim_data_dir(str(tmp_path), "n1", "n1@127.0.0.1:7001")
    assert datadir.read_owner(str(tmp_path)) == datadir.Owner("n1", "n1@127.0.0.1:7001", None)
    assert datadir.join(str(tmp_path), "prod").cluster == "prod"
    assert json.loads((tmp_path / NODE_FILE).read_text())["cluster"] == "prod"
    assert datadir.join(str(tmp_path), "prod").cluster == "prod"  # the same again: fine
    with pytest.raises(datadir.DataDirError, match="belongs to cluster prod, not test"):
        datadir.join(str(tmp_path), "test")
    # A restart keeps it, also at a new address and when --cluster-id names it.
    owner = _claim_data_dir(str(tmp_path), "n1", "n1@127.0.0.1:7101")
    assert owner.cluster == "prod"
    assert _claim_data_dir(str(tmp_path), "n1", "n1@127.0.0.1:7101", "prod").cluster == "prod"
    with pytest.raises(UsageError, match="belongs to cluster prod, not test"):
        _claim_data_dir(str(tmp_path), "n1", "n1@127.0.0.1:7101", "test")
    assert json.loads((tmp_path / NODE_FILE).read_text())["cluster"] == "prod"
    # --cluster-id on a new directory records it at the first start.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert _claim_data_dir(str(fresh), "n2", "n2@127.0.0.1:7002", "test").cluster == "test"
    (fresh / NODE_FILE).write_text('{"name": "n2", "node_id": "n2@h:1", "cluster": "a b"}')
    with pytest.raises(UsageError, match="unreadable"):
        _claim_data_dir(str(fresh), "n2", "n2@127.0.0.1:7002")
    with pytest.raises(datadir.DataDirError, match="never claimed"):
        datadir.join(str(tmp_path / "nobody"), "prod")


def test_a_cluster_id_must_be_a_short_word(tmp_path: Path) -> None:
    base = 'name = "n1"\nlisten = "127.0.0.1:0"\nmemory = true\ninsecure = true\n'
    with pytest.raises(UsageError, match="--cluster-id: not a cluster id"):
        _config(tmp_path, base, "--cluster-id", "has space")
    assert _config(tmp_path, base, "--cluster-id", "prod-1").cluster_id == "prod-1"
    assert _config(tmp_path, base + 'cluster_id = "prod-2"\n').cluster_id == "prod-2"
    with pytest.raises(UsageError, match=r"cluster_id in .* must be a string"):
        _config(tmp_path, base + "cluster_id = 7\n")


def test_a_node_that_does_not_answer_status_in_time_is_not_called_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A live node busy catching up 1000 partitions was reported "unreachable".
    from waraft import otp
    from waraft.cli import ops

    answers: dict[str, list[object]] = {
        "busy@h:1": ["timeout"],
        "limited@h:2": ["rate_limited", "rate_limited"],
        "gone@h:3": [("nodedown", "gone@h:3")],
        "ok@h:4": ["rate_limited", [{"node": "ok@h:4", "partition": 1, "state": "leader"}]],
    }
    calls: list[str] = []

    def call(node: str, request: str, timeout: float) -> object:
        calls.append(node)
        answer = answers[node].pop(0)
        if isinstance(answer, list):
            return answer
        raise otp.ExitError(answer)

    monkeypatch.setattr(ops.admin, "call", call)
    monkeypatch.setattr(ops.time, "sleep", lambda seconds: None)
    assert ops.node_rows("busy@h:1") == [{"node": "busy@h:1", "error": "timeout"}]
    assert ops.node_rows("limited@h:2") == [{"node": "limited@h:2", "error": "rate_limited"}]
    assert ops.node_rows("gone@h:3") == [{"node": "gone@h:3", "error": "unreachable"}]
    assert ops.node_rows("ok@h:4")[0]["state"] == "leader"  # asked again after rate_limited
    assert calls.count("ok@h:4") == 2 and calls.count("busy@h:1") == 1


def test_a_status_row_names_the_leaders_unresponsive_peers() -> None:
    from waraft.cli import admin

    row = admin.status_row({"id": "n1@h:1", "state": "leader", "unresponsive": ["n3@h:3"]})
    assert row["unresponsive"] == ["n3@h:3"] and row["unresponsive_peers"] == 1
    assert admin.status_row({"id": "n2@h:2", "state": "follower"})["unresponsive_peers"] == 0


def test_a_status_row_shows_the_flags_the_server_computed_when_asked() -> None:
    # Not the published ones (waraft.info): those stayed as of the last state, term or
    # leader change, so a caught-up follower showed `lagging` indefinitely (review O, 2).
    from waraft.cli import admin, ops

    status = {"id": "n2@h:2", "state": "follower", "live": True, "lagging": False, "stale": True}
    row = admin.status_row(status)
    assert (row["live"], row["lagging"], row["stale"]) == (True, False, True)
    assert ops._liveness(row) == "yes"
    assert ops._liveness(admin.status_row({"id": "n2@h:2", "state": "follower"})) == "?"


def test_the_shell_says_a_partition_restarting_there_is_restarting_not_missing() -> None:
    from waraft.cli import ops, shell
    from waraft.partition import server

    helpers = shell.Helpers("n1@127.0.0.1:7001", "kv", [1], ["n1@127.0.0.1:7001"])
    with pytest.raises(shell.ShellError) as info:
        helpers._on(lambda _address: server.PARTITION_RESTARTING, 1, None)
    said = str(info.value)
    assert "restarting" in said and "try again" in said and "serves no partition" not in said
    with pytest.raises(shell.ShellError, match="serves no partition 1 of table 'kv'"):
        helpers._on(lambda _address: server.NO_SUCH_PARTITION, 1, None)
    named = ops._named_missing(server.PARTITION_RESTARTING, "kv", 1)
    assert named[0] == "error" and "restarting" in named[1]


def test_the_shell_and_the_status_rows_say_a_partition_restarting_there_is_restarting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A status (or config) of a partition the node was restarting failed noproc: the shell
    # said "serves no partition" (status(1)) or showed ExitError, and the status table
    # "not running" (without waraft_admin) or "noproc" (with it).
    from waraft import otp
    from waraft.cli import admin, ops, shell
    from waraft.partition import server

    def status(address: object, timeout: float = 1.0) -> dict[str, object]:
        name = address[0] if isinstance(address, tuple) else address
        reason = {"raft_server_kv_1": "partition_restarting", "raft_server_kv_2": "noproc"}
        if name in reason:
            raise otp.ExitError(reason[name])
        return {"id": "n1@127.0.0.1:7001", "table": "kv", "partition": 3, "state": "leader"}

    monkeypatch.setattr(server, "status", status)
    helpers = shell.Helpers("n1@127.0.0.1:7001", "kv", [1], ["n1@127.0.0.1:7001"])
    with pytest.raises(shell.ShellError) as info:
        helpers.status(1)
    said = str(info.value)
    assert "restarting" in said and "try again" in said and "serves no partition" not in said
    with pytest.raises(shell.ShellError, match="serves no partition 2 of table 'kv'"):
        helpers.status(2)
    assert helpers.status(3)["state"] == "leader"
    rows = ops._rows_without_admin("n1@127.0.0.1:7001", 1.0, "kv", [1, 2, 3])
    assert [r.get("error") for r in rows] == ["restarting", "not running", None]
    table = ops.format_table(rows).splitlines()
    assert "| restarting " in table[3] and "| not running " in table[4]
    assert admin.status_error("partition_restarting") == "restarting"
    assert admin.status_error("noproc") == "noproc"
