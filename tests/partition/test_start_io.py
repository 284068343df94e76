"""A partition's start makes its directories on the node's I/O threads, not on the scheduler
its supervisor runs on (DESIGN.md: nothing blocks a scheduler; a slow or hung disk stalled
every process of that scheduler)."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import FAST, start_node, state, wait_until
from waraft import otp
from waraft.otp import sched
from waraft.partition import part_sup, sup
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
    # part_sup's own calls only: the storage actor's init makes the same directory, and opens
    # its provider, on its scheduler (providers such as SQLite's are bound to the opening
    # thread; not changed here).
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
