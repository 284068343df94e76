"""The commit queue is bounded in bytes as well as in entries (issue 14): what is refused gets
``commit_queue_bytes_full`` at once, nothing admitted is lost, and the budget comes back."""

from __future__ import annotations

from pathlib import Path

from tests.partition.helpers import addr, ident, start_node, state, wait_until
from waraft import otp
from waraft.core.settings import Settings
from waraft.core.types import Entry, LogPos, Priority
from waraft.partition import acceptor, server
from waraft.services.queues import (
    COMMIT_QUEUE_BYTES_FULL,
    COMMIT_QUEUE_FULL,
    READ_QUEUE_BYTES_FULL,
    Queues,
    command_bytes,
)


def _queues(**settings: int) -> Queues:
    return Queues("t", 1, Settings().with_overrides(**settings))


def test_admission_stops_at_the_byte_budget_across_priorities() -> None:
    q = _queues(raft_max_pending_commit_bytes=1000)
    assert q.commits_started(3, Priority.HIGH, [300, 300, 300]) == (3, None)
    assert q.commits_started(2, Priority.LOW, [100, 50]) == (1, COMMIT_QUEUE_BYTES_FULL)
    assert q.commit_queue_byte_size() == 1000
    assert q.commit_started(Priority.HIGH, 1) == COMMIT_QUEUE_BYTES_FULL
    # the entry bound still applies on its own
    small = _queues(raft_max_pending_high_priority_commits=2)
    assert small.commits_started(3, Priority.HIGH, [1, 1, 1]) == (2, COMMIT_QUEUE_FULL)


def test_a_command_larger_than_the_budget_goes_through_an_empty_queue_only() -> None:
    q = _queues(raft_max_pending_commit_bytes=1000)
    assert q.commits_started(2, Priority.HIGH, [5000, 10]) == (1, COMMIT_QUEUE_BYTES_FULL)
    q.commit_bytes_released(1, 5000)
    assert q.commit_queue_byte_size() == 0
    assert q.commits_started(1, Priority.HIGH, [10]) == (1, None)


def test_hand_off_and_cancellation_return_the_bytes() -> None:
    q = _queues(raft_max_pending_commit_bytes=1000)
    q.commits_started(4, Priority.HIGH, [100, 200, 300, 400])
    q.commit_bytes_released(2, 300)  # the first two went to storage
    assert q.commit_queue_byte_size() == 700
    q.commit_bytes_released(1)  # a cancellation: the average of what is held
    assert q.commit_queue_byte_size() == 350
    q.commit_bytes_released(1)  # the last one: nothing held, nothing counted
    assert q.commit_queue_byte_size() == 0
    q.commit_bytes_released(5)  # more releases than admissions change nothing
    assert q.commits_started(1, Priority.HIGH, [900]) == (1, None)


def test_zero_means_unbounded() -> None:
    q = _queues(raft_max_pending_commit_bytes=0)
    assert q.commits_started(3, Priority.HIGH, [10**9, 10**9, 10**9]) == (3, None)


def test_command_bytes_counts_nested_payloads() -> None:
    batch = ("$batch", [("write", "t", "k", b"x" * 1000), ("write", "t", "k", "y" * 500)])
    assert command_bytes(batch) >= 1500
    assert command_bytes(("write", "t", 1, 2)) == 56 + 5 + 1 + 8 + 8  # the tuple and its items


def test_a_partition_refuses_commits_beyond_the_byte_budget(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1], settings={"raft_max_pending_commit_bytes": 10_000})
    config = server.make_config([ident(node, 1)])
    assert server.bootstrap(addr("server", node, 1), LogPos(1, 1), config) == "ok"
    wait_until(lambda: state(node, 1) == "leader")
    value = "v" * 2000  # ~2 kB per command: four fit in 10 kB
    handles = [otp.LocalReplyTo() for _ in range(12)]
    items = [(h, (i, ("write", "t", i, value))) for i, h in enumerate(handles)]
    acceptor.commit_batch(addr("acceptor", node), items)
    results = [h.wait(5) for h in handles]
    assert results[:4] == ["ok"] * 4
    assert results[4:] == [("error", COMMIT_QUEUE_BYTES_FULL)] * 8
    for i in range(4):
        assert acceptor.read(addr("acceptor", node), ("read", "t", i)) == ("ok", value)
    # the budget came back once they were applied
    handles = [otp.LocalReplyTo() for _ in range(4)]
    items = [(h, (i, ("write", "t", i, value))) for i, h in zip(range(4, 8), handles, strict=True)]
    acceptor.commit_batch(addr("acceptor", node), items)
    assert [h.wait(5) for h in handles] == ["ok"] * 4


def test_the_apply_queue_counts_the_payload_inside_tuple_commands() -> None:
    big = Entry(1, "k", ("write", "t", "k", "x" * 5000))
    assert server._entry_size(big) >= 5000
    # 16 for the entry, 56 for the tuple, 5 + 1 + 1 for the strings, 8 for the int
    assert server._entry_size(Entry(1, "k", ("write", "t", "k", 1))) == 87


def test_the_commit_totals_count_admitted_and_applied_apart() -> None:
    queues = _queues()
    assert queues.commits_started(5, Priority.HIGH) == (5, None)
    queues.commits_finished(2, Priority.HIGH)  # cancelled (e.g. leadership lost)
    queues.commits_finished(3, Priority.HIGH, applied=True)
    assert (queues.commits_admitted, queues.commits_applied) == (5, 3)
    assert queues.commit_queue_size(Priority.HIGH) == 0


def _read(size: int) -> tuple[otp.LocalReplyTo, object, None]:
    return (otp.LocalReplyTo(), ("read", "t", b"r" * size), None)


def test_reads_are_admitted_by_the_bytes_of_their_commands() -> None:
    """M3 (review E): strong reads were bounded by count only; a leader without a quorum
    held 5000 reads of any size."""
    one = command_bytes(_read(300)[1])
    q = _queues(raft_max_pending_read_bytes=2 * one + 10)
    taken, reason = q.admit_reads([_read(300) for _ in range(3)])
    assert len(taken) == 2 and reason == READ_QUEUE_BYTES_FULL
    assert q.read_queue_byte_size() == 2 * one and q.read_queue_size() == 2
    assert q.admit_reads([_read(300)]) == ([], READ_QUEUE_BYTES_FULL)
    taken[0][0].reply("v")  # answered: its bytes come back, the caller gets the answer
    assert q.read_queue_byte_size() == one
    taken[0][0].reply("again")  # answered once only, released once only
    assert q.read_queue_byte_size() == one
    taken[1][0].fail("shutdown")  # any answer releases
    assert q.read_queue_byte_size() == 0
    huge, reason = q.admit_reads([_read(10 * one), _read(1)])
    assert len(huge) == 1 and reason == READ_QUEUE_BYTES_FULL  # alone into an empty budget
    q.reset()  # a restarted partition: reads admitted before it release nothing
    assert q.admit_reads([_read(300)])[1] is None
    huge[0][0].reply("late")
    assert q.read_queue_byte_size() == one
    unbounded = _queues(raft_max_pending_read_bytes=0)
    assert len(unbounded.admit_reads([_read(10**6) for _ in range(3)])[0]) == 3
