"""The transport and snapshot catch-up between two OS processes over ``waraft.distribution``
(ZeroMQ on 127.0.0.1): chunk requests, acknowledgements and records cross msgpack."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.partition.helpers import APP, FAST, wait_until
from tests.transport.helpers import FAST_CATCHUP, admit, make_tree, read_tree, sample_tree
from waraft import distribution as dist
from waraft import otp, storage, transport
from waraft.core.types import Identity, LogPos
from waraft.partition import acceptor, app, server, sup
from waraft.services import env

CHILD = Path(__file__).with_name("child_node.py")
WAIT = 15.0


class Child:
    def __init__(self, proc: subprocess.Popen[str], node_id: str, database: Path) -> None:
        self.proc = proc
        self.node_id = node_id
        self.database = database

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)


def _spawn(tmp_path: Path, *settings: str) -> Child:
    database = tmp_path / "child"
    log = tmp_path / "child.log"
    cmd = [sys.executable, str(CHILD), "child@127.0.0.1:0", str(database), *settings]
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + WAIT
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.1):
                line = proc.stdout.readline()
                if line.startswith("READY "):
                    return Child(proc, line.split()[1], database)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(WAIT)
    raise AssertionError(f"child did not start:\n{log.read_text()}")


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[str]:
    """This process as a node with the node-wide services and a stalled partition."""
    node_id = dist.start("parent@127.0.0.1:0", ping_interval=0.1, down_after=1.0)
    try:
        env.set_env(APP, "raft_database", str(tmp_path / "parent"))
        for key, value in {**FAST, **FAST_CATCHUP}.items():
            env.set_env(APP, key, value)
        env.set_env(env.RAFT_APP, "dist_transport_chunk_size", 4096)
        assert app.ensure_started() is not None
        spec = sup.child_spec(APP, [{"table": "test", "partition": 1}])
        assert otp.supervisor.start_child("kernel_sup", spec)[0] == "ok"
        yield node_id
    finally:
        otp.node.stop_all(timeout=5.0)
        dist.stop()


@pytest.fixture
def child(tmp_path: Path, parent: str) -> Iterator[Child]:
    spawned = _spawn(tmp_path, "dist_transport_chunk_size=4096")
    yield spawned
    spawned.kill()


def test_a_tree_crosses_processes_intact(tmp_path: Path, parent: str, child: Child) -> None:
    files = sample_tree()
    src = make_tree(tmp_path / "src", files)
    admit(child.node_id, parent)  # over the wire: the child's server is asked
    result = transport.transfer(child.node_id, "test", 1, str(src), WAIT)
    assert result[0] == "ok"
    assert transport.transport_info(result[1], "status") == "completed"
    dest = child.database / "test.1" / "transport" / str(result[1])
    wait_until(lambda: dest.is_dir() and read_tree(dest) == files, timeout=WAIT)
    # The receiver's admission answers travel back too.
    assert transport.may_accept(child.node_id, True, 5.0) == "ok"


def test_a_remote_empty_member_is_caught_up(tmp_path: Path, parent: str, child: Child) -> None:
    me = Identity("raft_server_test_1", parent)
    config = server.make_config([me])
    assert server.bootstrap("raft_server_test_1", LogPos(1, 1), config) == "ok"
    wait_until(lambda: server.status("raft_server_test_1")["state"] == "leader")
    for i in range(30):
        assert acceptor.commit("raft_acceptor_test_1", (i, ("write", "t", f"k{i}", i))) == "ok"
    remote = ("raft_server_test_1", child.node_id)
    assert server.status(remote)["state"] == "stalled"
    newcomer = Identity("raft_server_test_1", child.node_id)
    # A single member grows through a participant: a voter it never heard from would be
    # needed for every commit (refused with would_lose_quorum).
    assert server.adjust_config("raft_server_test_1", ("add_participant", newcomer))[0] == "ok"
    wait_until(lambda: server.status(remote)["state"] == "follower", timeout=WAIT)
    promote = ("promote_participant_if_ready", newcomer)
    wait_until(lambda: server.adjust_config("raft_server_test_1", promote)[0] == "ok", timeout=WAIT)
    assert newcomer in server.membership("raft_server_test_1")
    remote_storage = ("raft_storage_test_1", child.node_id)
    assert storage.read(remote_storage, ("read", "t", "k29")) == ("ok", 29)
    assert acceptor.commit("raft_acceptor_test_1", ("x", ("write", "t", "x", 1))) == "ok"
    wait_until(lambda: storage.read(remote_storage, ("read", "t", "x")) == ("ok", 1))
