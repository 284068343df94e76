"""waraft.env: WARaft's configuration lookup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from waraft.core.settings import Settings
from waraft.services import env

NODE = "env-test@node"


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    env.clear(node=NODE)
    yield
    env.clear(node=NODE)


def test_search_apps_then_waraft_then_default() -> None:
    env.register_application("app", ["app", "shared"], node=NODE)
    assert env.get_env("app", "raft_heartbeat_interval_ms", 120, node=NODE) == 120
    env.set_env(env.RAFT_APP, "raft_heartbeat_interval_ms", 90, node=NODE)
    assert env.get_env("app", "raft_heartbeat_interval_ms", 120, node=NODE) == 90
    env.set_env("shared", "raft_heartbeat_interval_ms", 80, node=NODE)
    assert env.get_env("app", "raft_heartbeat_interval_ms", 120, node=NODE) == 80
    env.set_env("app", "raft_heartbeat_interval_ms", 70, node=NODE)
    assert env.get_env("app", "raft_heartbeat_interval_ms", 120, node=NODE) == 70
    assert env.lookup_env("app", "nothing", node=NODE) == (False, None)
    env.unset_env("app", "raft_heartbeat_interval_ms", node=NODE)
    assert env.get_env("app", "raft_heartbeat_interval_ms", node=NODE) == 80
    # An explicit list of apps, and an unregistered app (searches itself).
    assert env.get_env(["shared"], "raft_heartbeat_interval_ms", node=NODE) == 80
    assert env.search_apps("loner", node=NODE) == ("loner",)


def test_partition_scope() -> None:
    env.register_application("app", node=NODE)
    env.register_partition("tbl", 3, "app", node=NODE)
    env.set_env("app", "raft_database", "/data", node=NODE)
    assert env.get_env(("tbl", 3), "raft_database", node=NODE) == "/data"
    assert env.search_apps(("tbl", 4), node=NODE) == ()
    env.unregister_partition("tbl", 3, node=NODE)
    assert env.get_env(("tbl", 3), "raft_database", "none", node=NODE) == "none"


def test_fallback_keys() -> None:
    key = ("raft_max_pending_applies", "raft_apply_queue_max_size")
    env.set_env(env.RAFT_APP, "raft_apply_queue_max_size", 11, node=NODE)
    assert env.get_env("app", key, 1000, node=NODE) == 11
    # The waraft app is asked for the fallback name only; search apps for the primary.
    env.set_env(env.RAFT_APP, "raft_max_pending_applies", 12, node=NODE)
    assert env.get_env("app", key, 1000, node=NODE) == 11
    env.set_env("app", "raft_max_pending_applies", 13, node=NODE)
    env.set_env("app", "raft_apply_queue_max_size", 14, node=NODE)
    assert env.get_env("app", key, 1000, node=NODE) == 13


def test_table_overrides() -> None:
    value = ("table_overrides", {"hot": 50, "cold": 500}, 100)
    env.set_env("app", "raft_commit_batch_max", value, node=NODE)
    assert env.get_table_env("app", "hot", "raft_commit_batch_max", 15, node=NODE) == 50
    assert env.get_table_env("app", "cold", "raft_commit_batch_max", 15, node=NODE) == 500
    assert env.get_table_env("app", "other", "raft_commit_batch_max", 15, node=NODE) == 100
    # Plain values apply to every table; get_env does not resolve overrides.
    env.set_env("app", "raft_commit_batch_interval_ms", 4, node=NODE)
    assert env.get_table_env("app", "hot", "raft_commit_batch_interval_ms", node=NODE) == 4
    assert env.get_env("app", "raft_commit_batch_max", node=NODE) == value
    env.set_env(
        env.RAFT_APP, "raft_heartbeat_interval_ms", ("table_overrides", {"hot": 1}, 2), node=NODE
    )
    assert env.table_setting("app", "hot", "raft_heartbeat_interval_ms", node=NODE) == 1
    assert env.table_setting("app", "x", "raft_heartbeat_interval_ms", node=NODE) == 2


def test_global_keys_and_defaults() -> None:
    assert env.raft_config("raft_rpc_call_timeout", node=NODE) == 10_000
    assert env.raft_config("dist_transport_chunk_size", node=NODE) == 1024 * 1024
    env.set_env("app", "raft_rpc_call_timeout", 1, node=NODE)  # not a search-app key
    assert env.raft_config("raft_rpc_call_timeout", node=NODE) == 10_000
    env.set_env(env.RAFT_APP, "raft_rpc_call_timeout", 2500, node=NODE)
    assert env.raft_config("raft_rpc_call_timeout", node=NODE) == 2500
    assert env.app_setting("app", "transport_retain_min_secs", node=NODE) == 300
    assert env.table_setting("app", "t", "raft_storage_witness_apply_interval", node=NODE) == 5000


def test_database_path() -> None:
    with pytest.raises(env.NoConfiguredDatabasePath, match="raft_database"):
        env.database_path("app", node=NODE)
    env.set_env(env.RAFT_APP, "raft_database", "/global", node=NODE)
    assert env.database_path("app", node=NODE) == "/global"
    env.set_env("app", "raft_database", "/mine", node=NODE)
    assert env.database_path("app", node=NODE) == "/mine"


def test_election_weight_override() -> None:
    env.register_application("app", ["app", "base"], node=NODE)
    assert env.election_weight("app", node=NODE) == 10
    env.set_env("base", "raft_election_weight", 3, node=NODE)
    assert env.election_weight("app", node=NODE) == 3
    env.set_election_weight_override("app", 0, node=NODE)
    assert env.election_weight("app", node=NODE) == 0
    with pytest.raises(ValueError):
        env.set_election_weight_override("app", 11, node=NODE)
    env.clear_election_weight_override("app", node=NODE)
    assert env.election_weight("app", node=NODE) == 3


def test_settings_for_resolves_every_field_live() -> None:
    assert env.settings_for("app", "t", node=NODE) == Settings()
    env.set_env("app", "raft_max_log_entries_per_heartbeat", 500, node=NODE)
    env.set_env("app", "raft_election_pre_vote", "yes", node=NODE)  # only True enables
    env.set_env("app", "raft_leader_eligible", 0, node=NODE)  # only False disables
    env.set_env("app", "raft_leader_check_quorum", 1, node=NODE)
    env.set_env(env.RAFT_APP, "use_trim_index", True, node=NODE)
    env.set_env("app", "raft_heartbeat_interval_ms", ("table_overrides", {"t": 30}, 60), node=NODE)
    settings = env.settings_for("app", "t", node=NODE)
    assert settings.raft_max_log_entries_per_heartbeat == 500
    assert settings.raft_election_pre_vote is False
    assert settings.raft_leader_eligible is True
    assert settings.raft_leader_check_quorum is True
    assert settings.raft_rotate_by_trim_index is True
    assert settings.raft_heartbeat_interval_ms == 30
    assert env.settings_for("app", "u", node=NODE).raft_heartbeat_interval_ms == 60
    env.set_env("app", "raft_max_log_entries_per_heartbeat", 7, node=NODE)
    assert env.settings_for("app", "t", node=NODE).raft_max_log_entries_per_heartbeat == 7
    env.set_env("app", "raft_leader_eligible", False, node=NODE)
    assert env.settings_for("app", "t", node=NODE).raft_leader_eligible is False


def test_settings_for_is_remembered_until_the_environment_changes() -> None:
    first = env.settings_for("app", "t", node=NODE)
    assert env.settings_for("app", "t", node=NODE) is first  # resolved once, not per call
    env.set_env("other", "raft_max_log_entries_per_heartbeat", 9, node=NODE)
    assert env.settings_for("app", "t", node=NODE).raft_max_log_entries_per_heartbeat != 9
    env.register_application("app", ["other", "app"], node=NODE)  # search apps changed
    assert env.settings_for("app", "t", node=NODE).raft_max_log_entries_per_heartbeat == 9
    env.unset_env("other", "raft_max_log_entries_per_heartbeat", node=NODE)
    assert env.settings_for("app", "t", node=NODE) == first
    env.set_election_weight_override("other", 3, node=NODE)
    assert env.settings_for("app", "t", node=NODE).raft_election_weight == 3
    env.clear_election_weight_override("other", node=NODE)
    assert env.settings_for("app", "t", node=NODE) == first


def test_nodes_are_isolated() -> None:
    env.set_env("app", "raft_database", "/n1", node=NODE)
    assert env.get_env("app", "raft_database", node="another@node") is None
    assert env.get_env("app", "raft_database", node=NODE) == "/n1"
    assert isinstance(env.current_node_id(), str)
