"""The shell's membership and disable/enable helpers against a real 3-node cluster
(``waraft shell --attach``): what the server API offered, the shell had no helper for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.test_commands import waraft
from tests.multiprocess.harness import Cluster

SCRIPT = """
import time

def until(call, done, seconds=20.0):
    end = time.monotonic() + seconds
    while True:
        answer = call()
        if done(answer) or time.monotonic() > end:
            return answer
        time.sleep(0.1)

def members():
    config = server.get_current_config((server.default_name('kv', 1), leader(1)))
    return sorted(m.node for m in config.membership)

other = next(n for n in nodes() if n != leader(1))
print('disable', disable(1, 'maintenance', node=other))
print('reason', status(1, node=other)['disable_reason'])
print('enable', enable(1, node=other))
print('remove', until(lambda: remove_member(1, other), lambda a: a[0] == 'ok')[0])
print('removed', other not in until(members, lambda m: other not in m))
print('add', until(lambda: add_member(1, other), lambda a: a[0] == 'ok')[0])
print('back', other in until(members, lambda m: other in m))
print('refresh', until(lambda: adjust_config(1), lambda a: a[0] == 'ok')[0])
print('verb', adjust_config(1, 'remove'))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("shell"), partitions=(1,))
    try:
        cluster.start()
        done = waraft("bootstrap", "--nodes", ",".join(cluster.ids), "--partitions", "1")
        assert done.returncode == 0, done.stdout + done.stderr
        yield cluster
    finally:
        cluster.kill_all()


def test_members_disable_and_enable_from_the_shell(cluster: Cluster) -> None:
    done = waraft("shell", "--attach", cluster.ids[0], "--partitions", "1", "-c", SCRIPT)
    assert done.returncode == 1, done.stdout + done.stderr  # the last line's missing node
    assert done.stdout.splitlines() == [
        "disable ok",
        "reason maintenance",
        "enable ok",
        "remove ok",
        "removed True",
        "add ok",
        "back True",
        "refresh ok",
    ], done.stdout + done.stderr
    assert "error: adjust_config(1, 'remove') needs the node" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_shell_lists_every_helper_in_its_help() -> None:
    from waraft.cli import shell

    helped = waraft("shell", "--help")
    assert helped.returncode == 0, helped.stderr
    for name in shell.HELPERS:
        assert f"{name}(" in helped.stdout, name
    for name in ("disable", "enable", "adjust_config", "add_member", "remove_member",
                 "add_participant", "promote_participant", "demote_to_witness"):  # fmt: skip
        assert name in shell.HELPERS
