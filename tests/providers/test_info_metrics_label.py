"""waraft.info, waraft.metrics and waraft.label."""

from __future__ import annotations

import threading

import pytest

from waraft.core.types import State
from waraft.services import info, metrics
from waraft.services.label import CounterLabel, Label

NODE = "info-test@node"


def test_info_defaults_and_updates() -> None:
    info.clear_node(node=NODE)
    assert info.get_current_term_info("t", 1, node=NODE) is None
    assert info.get_current_term("t", 1, node=NODE) is None
    assert info.get_leader("t", 1, node=NODE) is None
    assert info.get_status("t", 1, node=NODE) is None
    assert info.get_state("t", 1, node=NODE) is None
    assert info.get_live("t", 1, node=NODE) is False
    assert info.get_lagging("t", 1, node=NODE) is True
    assert info.get_stale("t", 1, node=NODE) is True
    assert info.get_message_queue_length("raft_server_t_1", node=NODE) is None

    info.set_current_term_info("t", 1, 5, "n1@h:1", None, node=NODE)
    info.set_status("t", 1, State.LEADER, True, False, False, node=NODE)
    info.set_message_queue_length("raft_server_t_1", 3, node=NODE)
    assert info.get_current_term_info("t", 1, node=NODE) == (5, "n1@h:1", None)
    assert info.get_current_term_and_leader("t", 1, node=NODE) == (5, "n1@h:1")
    assert info.get_status("t", 1, node=NODE) == (State.LEADER, True, False, False)
    assert info.get_live("t", 1, node=NODE) and not info.get_stale("t", 1, node=NODE)
    assert info.get_message_queue_length("raft_server_t_1", node=NODE) == 3
    assert info.get_status("t", 1, node="elsewhere@node") is None

    info.clear("t", 1, "raft_server_t_1", node=NODE)
    assert info.get_status("t", 1, node=NODE) is None
    assert info.get_message_queue_length("raft_server_t_1", node=NODE) is None
    assert info.get_current_term("t", 1, node=NODE) == 5
    info.clear_node(node=NODE)


def test_term_and_leader_are_read_together() -> None:
    """A reader never sees a leader from another term (writers replace whole rows)."""
    info.clear_node(node=NODE)
    stop = threading.Event()
    bad: list[tuple[int, str | None]] = []

    def writer() -> None:
        term = 0
        while not stop.is_set():
            term += 1
            info.set_current_term_info("t", 2, term, f"leader-of-{term}", None, node=NODE)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(20_000):
            pair = info.get_current_term_and_leader("t", 2, node=NODE)
            if pair is not None and pair[1] != f"leader-of-{pair[0]}":
                bad.append(pair)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not bad
    info.clear_node(node=NODE)


def test_metrics_install_and_counting() -> None:
    assert isinstance(metrics.get(node=NODE), metrics.NoopMetrics)
    metrics.count("t", "ignored")  # the no-op sink accepts everything
    sink = metrics.CountingMetrics()
    metrics.install(sink)
    try:
        metrics.count("t", "commit")
        metrics.countv("t", "commit", 4)
        metrics.gather("t", "heartbeat.size", 10)
        metrics.gather_latency("t", "apply_log.latency_us", 30)
        metrics.gather("t", "heartbeat.size", 20)
        assert sink.counter(("raft", "t", "commit")) == 5
        assert sink.summary(metrics.key("t", "heartbeat.size")) == {
            "count": 2,
            "sum": 30.0,
            "min": 10,
            "max": 20,
            "mean": 15.0,
        }
        assert "counters" in sink.snapshot()
    finally:
        metrics.install(None)
    assert isinstance(metrics.get(), metrics.NoopMetrics)


def test_labels() -> None:
    label: Label = CounterLabel()
    assert label.new_label(None, ("write", "t", "k", 1)) == 1
    assert label.new_label(41, "anything") == 42


def test_label_function_accepts_a_label_class_or_object_and_refuses_anything_else() -> None:
    from waraft.services.label import label_function

    assert label_function(None) is None
    by_class = label_function(CounterLabel)
    assert by_class is not None and by_class(None, "c") == 1
    by_object = label_function(CounterLabel())
    assert by_object is not None and by_object(6, "c") == 7
    with pytest.raises(ValueError, match="new_label"):
        label_function(object())


def test_a_partition_with_a_label_module_that_cannot_label_is_refused_before_it_starts() -> None:
    from waraft.partition import part_sup

    with pytest.raises(ValueError, match="new_label"):
        part_sup.normalize_spec(
            "label_app", {"table": "t", "partition": 1, "label_module": "waraft.services.env"}
        )


def test_provider_settings_name_provider_classes_or_their_modules() -> None:
    from waraft.log.memory import MemoryLog
    from waraft.partition import part_sup
    from waraft.storage.memory import MemoryStorage
    from waraft.storage.sqlite import SqliteStorage

    base = {"table": "t", "partition": 1}
    # A module stands for its PROVIDER, as WARaft's settings name modules.
    opts = part_sup.normalize_spec(
        "prov_app", {**base, "storage_module": "waraft.storage.memory", "log_module": MemoryLog}
    )
    assert opts.storage_module is MemoryStorage and opts.log_module is MemoryLog
    named = {**base, "storage_module": "waraft.storage.sqlite:SqliteStorage"}
    assert part_sup.normalize_spec("prov_app", named).storage_module is SqliteStorage
    # Anything else is refused before the partition starts (it failed inside it before).
    for key, bad in [
        ("storage_module", "collections:OrderedDict"),
        ("storage_module", "waraft.services.env"),
        ("storage_module", "waraft.log.memory:MemoryLog"),
        ("log_module", "waraft.storage.memory"),
    ]:
        with pytest.raises(ValueError, match=f"{key} .* must name a"):
            part_sup.normalize_spec("prov_app", {**base, key: bad})


def test_histogram_buckets_are_cumulative_and_end_in_inf() -> None:
    hist = metrics.Histogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.005, 0.05, 3.0):
        hist.observe(seconds)
    snap = hist.snapshot()
    # A sample equal to a bound counts in that bucket (le = less or equal).
    assert snap["buckets"] == [(0.001, 2), (0.01, 3), (0.1, 4), (float("inf"), 5)]
    assert snap["count"] == 5 and snap["sum"] == pytest.approx(3.0565)


def test_histograms_are_registered_by_name_and_label_and_dropped() -> None:
    first = metrics.histogram("test_latency", "/a")
    assert metrics.histogram("test_latency", "/a") is first
    first.observe(0.002)
    metrics.histogram("test_latency", "/b")
    found = metrics.histograms("test_latency")
    assert set(found) == {"/a", "/b"} and found["/a"]["count"] == 1
    metrics.drop_histogram("test_latency", "/a")
    metrics.drop_histogram("test_latency", "/b")
    assert metrics.histograms("test_latency") == {}


def test_partition_events_are_counted_per_node_and_reach_the_sink() -> None:
    sink = metrics.CountingMetrics()
    metrics.install(sink, node=NODE)
    try:
        metrics.count_partition("t", 1, "snapshot_catchup.start", node=NODE)
        metrics.count_partition("t", 1, "snapshot_catchup.start", node=NODE)
        metrics.count_partition("t", 2, "snapshot_catchup.completed", node=NODE)
        events = metrics.partition_events(node=NODE)
        assert events[("t", 1, "snapshot_catchup.start")] == 2
        assert events[("t", 2, "snapshot_catchup.completed")] == 1
        assert metrics.partition_events(node="other@node") == {}
        assert sink.counter(metrics.key("t", "snapshot_catchup.start")) == 2
    finally:
        metrics.install(None, node=NODE)
