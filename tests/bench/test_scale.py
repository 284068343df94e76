"""benchmarks.scale: what the idle-partition benchmark reports about quiescence."""

from __future__ import annotations

from benchmarks import scale


def test_quiescence_states_counts_rows_errors_and_awake_replicas_per_node_and_state() -> None:
    rows = [
        {"node": "a", "state": "leader", "quiescent": True},
        {"node": "a", "state": "follower", "quiescent": True},
        {"node": "a", "state": "follower", "quiescent": False},
        {"node": "b", "error": "unreachable"},
        {"node": "c", "state": "leader", "quiescent": False},
    ]
    out = scale.quiescence_states(rows, ["a", "b", "c"])
    assert out["a"] == {
        "rows": 3,
        "errors": 0,
        "error_kinds": [],
        "quiescent_awake": {"leader": [1, 0], "follower": [1, 1]},
    }
    # A node whose status_all timed out is one error row, not its partitions' worth of
    # non-quiescent replicas.
    assert out["b"] == {
        "rows": 0,
        "errors": 1,
        "error_kinds": ["unreachable"],
        "quiescent_awake": {},
    }
    assert out["c"]["quiescent_awake"] == {"leader": [0, 1]}
