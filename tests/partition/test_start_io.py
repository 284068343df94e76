"""A partition's start makes its directories on the node's I/O threads, not on the scheduler
its supervisor runs on (DESIGN.md: nothing blocks a scheduler; a slow or hung disk stalled
every process of that scheduler)."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import FAST, addr, ident, start_node, state, wait_until
from waraft import otp
from waraft.core.types import LogPos
from waraft.otp import sched
from waraft.partition import app, part_sup, server, sup
from waraft.services import env

_ids = itertools.count(1)


def _recording(real: Any, calls: list[tuple[str, bool]]) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        where = str(args[0]) if args else str(result)
        calls.append((where, sched.scheduled_caller() is None))
        return result

    return call


def test_a_partition_makes_its_directory_off_the_schedulers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # part_sup's own calls only: the storage actor's init makes the same directory (off the
    # scheduler too, see the durable test below) and opens its provider on its scheduler
    # (providers such as SQLite's are bound to the opening thread; not changed here).
    calls: list[tuple[str, bool]] = []
    proxy = types.SimpleNamespace(
        makedirs=_recording(os.makedirs, calls), path=os.path, rmdir=os.rmdir
    )
    monkeypatch.setattr(part_sup, "os", proxy)
    node = start_node(tmp_path, "n1", [1])
    try:
        ours = [off for path, off in calls if path == str(tmp_path / "n1" / "test.1")]
        assert ours and all(ours), calls
    finally:
        node.stop()


def test_the_fallback_database_root_is_made_off_the_schedulers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(tempfile, "mkdtemp", _recording(tempfile.mkdtemp, calls))
    app = f"fallback_app_{next(_ids)}"
    node = otp.Node(f"fallback{next(_ids)}@local")
    try:
        with node.activate():
            for key, value in FAST.items():
                env.set_env(app, key, value)
            spec = sup.child_spec(app, [{"table": "test", "partition": 1}])
            assert otp.supervisor.start_child("kernel_sup", spec)[0] == "ok"
        wait_until(lambda: state(node) != "down")
        made = [(path, off) for path, off in calls if Path(path).name.startswith("waraft-")]
        assert made and all(off for _, off in made), calls
    finally:
        node.stop()
        root = part_sup._fallback_roots.pop(node.id, None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


# The disk calls a partition's start and stop must not make on a scheduler thread: C calls,
# seen by a profiler (``threading.setprofile``) on the threads the node starts.
_DISK_CALLS = {
    ("posix", "fsync"),
    ("posix", "fdatasync"),
    ("posix", "close"),
    ("posix", "mkdir"),
    ("fcntl", "flock"),
    ("time", "sleep"),
    ("io", "open"),
    ("Environment", "sync"),
    ("Environment", "close"),
}


def _disk_call_recorder(calls: list[tuple[str, str]]) -> Any:
    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        owner = getattr(arg, "__self__", None)
        module = getattr(arg, "__module__", None) or type(owner).__name__
        name = getattr(arg, "__name__", "")
        if (module, name) in _DISK_CALLS:
            calls.append((f"{module}.{name}", threading.current_thread().name))

    return profile


def test_a_durable_partition_starts_and_stops_without_disk_calls_on_the_schedulers(
    tmp_path: Path,
) -> None:
    """``waraft node``'s providers (the node WAL, the node LMDB): their actors are scheduled,
    so the WAL's lock and recovery, the new partition's marker, the term and vote file's
    read, the WAL's and the LMDB environment's final sync and close at the stop all run on
    the node's I/O threads (they ran on the scheduler: a slow disk stalled every partition on
    it). Started twice: the second start recovers what the first wrote."""
    calls: list[tuple[str, str]] = []
    providers: dict[str, Any] = {
        "log_module": "waraft.log.wal:WalLog",
        "storage_module": "waraft.storage.node_lmdb:NodeLmdbStorage",
    }
    threading.setprofile(_disk_call_recorder(calls))
    try:
        for start in range(2):
            node = start_node(tmp_path, "n1", [1], node_id="disk@local", **providers)
            try:
                if start == 0:
                    config = server.make_config([ident(node)])
                    bootstrap = server.bootstrap(addr("server", node), LogPos(1, 1), config)
                    assert bootstrap == "ok"
                wait_until(lambda: state(node) == "leader")  # noqa: B023 (node of this turn)
                # The node's services start in the background: stopped half-started, they
                # would log errors that belong to no test. A call is answered once they are.
                services = wait_until(lambda: node.registry.whereis(app.NAME))  # noqa: B023
                with node.activate():
                    assert otp.supervisor.which_children(services)
            finally:
                node.stop()
    finally:
        threading.setprofile(None)
    seen = {what for what, _ in calls}
    assert {"posix.fsync", "posix.fdatasync", "fcntl.flock", "Environment.close"} <= seen, seen
    on_schedulers = sorted({c for c in calls if c[1].startswith("otp:sched:")})
    assert not on_schedulers, on_schedulers
