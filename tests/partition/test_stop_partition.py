"""``waraft.sup.stop_partition`` stops a partition for good whatever state it is in, as
``supervisor:terminate_child`` + ``delete_child`` would: running, its supervisor restarting
its children (one_for_all), its supervisor gone after giving up while ``waraft.sup`` starts
it again, or that restart failed and is to be tried again through the mailbox. It looked the
partition up by its registered name: between two incarnations it answered ``not_found``, and
then ``waraft.sup`` started the partition again (review Z, 1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import (
    APP,
    a_partition_whose_supervisor_gave_up,
    count_restarts_over_a_long_period,
    kill_server_until_its_supervisor_gives_up,
    start_node,
    wait_until,
)
from waraft import otp
from waraft.partition import part_sup, server, sup

NAME = server.default_name("test", 1)
SUP_NAME = part_sup.default_name("test", 1)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[otp.Node]:
    node = start_node(tmp_path, "n", [1])
    try:
        yield node
    finally:
        node.stop()


def _stop_in_background(node: otp.Node, which: Any) -> Callable[[], Any]:
    """Call ``stop_partition`` from another thread (the parent may be busy for a while);
    returns a function that waits for and gives its answer."""
    answer: list[Any] = []

    def stop() -> None:
        with node.activate():
            answer.append(_stop(which))

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()

    def result() -> Any:
        thread.join(20)
        assert not thread.is_alive(), "stop_partition did not return"
        return answer[0]

    return result


def _stop(which: Any) -> Any:
    if type(which) is otp.Pid:
        return sup.stop_partition(sup.default_name(APP), which)
    return sup.stop_partition_under_application(APP, "test", 1)


def _assert_stopped_for_good(node: otp.Node) -> None:
    with node.activate():
        # A call to the parent is handled after whatever it had queued (a restart to retry).
        assert otp.supervisor.which_children(sup.default_name(APP)) == []
        assert otp.whereis(SUP_NAME) is None and otp.whereis(NAME) is None
        assert server.resign(NAME) == server.NO_SUCH_PARTITION
        assert sup.stop_partition_under_application(APP, "test", 1) == ("error", "not_found")
    assert not part_sup.is_restarted_by_parent("test", 1, node.id)


def test_a_running_partition_stops_by_name_and_by_pid(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n", [1, 2])
    try:
        with node.activate():
            wait_until(lambda: otp.whereis(NAME))
            assert sup.stop_partition_under_application(APP, "test", 1) == "ok"
            second = otp.whereis(part_sup.default_name("test", 2))
            assert sup.stop_partition(sup.default_name(APP), second) == "ok"
            assert sup.stop_partition(sup.default_name(APP), "raft_sup_test_2") == (
                "error",
                "simple_one_for_one",
            )
            assert otp.supervisor.which_children(sup.default_name(APP)) == []
            assert server.resign(NAME) == server.NO_SUCH_PARTITION
    finally:
        node.stop()


def test_a_partition_whose_supervisor_gave_up_stops_while_its_parent_restarts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its name was free until the parent's restart registered a new one: stop_partition
    # answered not_found, then the parent brought the partition back.
    with a_partition_whose_supervisor_gave_up(tmp_path, monkeypatch) as (node, gate, _):
        assert part_sup.is_restarted_by_parent("test", 1, node.id)
        result = _stop_in_background(node, "name")
        time.sleep(0.1)  # (either way: its call waits for the parent's restart, or precedes it)
        gate.set()
        assert result() == "ok"
        _assert_stopped_for_good(node)


@pytest.mark.parametrize("by", ["name", "pid"])
def test_a_partition_whose_restart_is_retried_through_the_mailbox_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    # The parent's restart failed and was to be tried again: by name stop_partition found
    # nothing; by the old pid, terminate_child answered ok and the retry went on.
    monkeypatch.setitem(sup.FLAGS, "intensity", 1_000_000)  # the parent keeps trying
    count_restarts_over_a_long_period(monkeypatch)
    node = start_node(tmp_path, "n", [1])
    failing = threading.Event()
    attempts: list[int] = []
    try:
        with node.activate():
            first = wait_until(lambda: otp.whereis(SUP_NAME))
        normalize_spec = part_sup.normalize_spec

        def failing_normalize_spec(*args: Any, **kwargs: Any) -> Any:
            if failing.is_set():
                attempts.append(1)
                otp.blocking(time.sleep, 0.005)  # (the retries need not spin)
                raise RuntimeError("the disk is not there yet")
            return normalize_spec(*args, **kwargs)

        monkeypatch.setattr(part_sup, "normalize_spec", failing_normalize_spec)
        failing.set()
        kill_server_until_its_supervisor_gives_up(node, first)
        wait_until(lambda: len(attempts) >= 2)  # a restart failed and was tried again
        with node.activate():
            assert _stop(first if by == "pid" else by) == "ok"
        failing.clear()
        _assert_stopped_for_good(node)
    finally:
        node.stop()


def test_a_partition_whose_supervisor_restarts_its_children_stops(
    node: otp.Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node.activate():
        server_pid = wait_until(lambda: otp.whereis(NAME))
    gate = threading.Event()
    start_link = server.RaftServer.start_link

    def held_start_link(*args: Any, **kwargs: Any) -> Any:
        otp.blocking(gate.wait, 10)  # the one_for_all restart, held at the server
        return start_link(*args, **kwargs)

    monkeypatch.setattr(server.RaftServer, "start_link", held_start_link)
    try:
        with node.activate():
            otp.kill(server_pid)
            wait_until(lambda: otp.whereis(NAME) is None)
        result = _stop_in_background(node, "name")
        time.sleep(0.1)
        gate.set()
        assert result() == "ok"
        _assert_stopped_for_good(node)
    finally:
        gate.set()
