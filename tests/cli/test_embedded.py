"""The tools against nodes a service embeds in its own supervision tree (no ``waraft node``):
with ``waraft.cli.admin.child_spec`` they work as against ``waraft node``; without it they say
so rather than "did not answer" or "busy?"."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cli.test_commands import waraft
from tests.multiprocess.harness import ROOT, NodeProcess, child_env, free_port


class EmbeddedNode(NodeProcess):
    """``tests/cli/embedded_node.py`` instead of ``waraft node``."""

    def __init__(self, root: Path, name: str, key_dir: Path, admin: bool) -> None:
        super().__init__(root, name, [])
        self.key_dir = key_dir
        self.admin = admin

    def spawn(self) -> None:
        self.port = self.port or free_port()
        args = [self.name, str(self.port), str(self.data_dir), str(self.key_dir)]
        cmd = [sys.executable, "-m", "tests.cli.embedded_node", *args]
        if self.admin:
            cmd.append("admin")
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                cwd=ROOT, env=child_env(),
            )  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    made = waraft("keys", "create", str(tmp_path / "keys"), "--nodes", "e1")
    assert made.returncode == 0, made.stderr
    return tmp_path / "keys"


@contextmanager
def _embedded(tmp_path: Path, keys: Path, admin: bool) -> Iterator[str]:
    node = EmbeddedNode(tmp_path, "e1", keys, admin)
    node.spawn()
    try:
        yield node.wait_ready()
    finally:
        node.kill()


def test_an_embedded_node_without_waraft_admin_is_named_as_such(tmp_path: Path, keys: Path) -> None:
    with _embedded(tmp_path, keys, admin=False) as node:
        tool = ("--nodes", node, "--keys", str(keys), "--partitions", "1")
        done = waraft("bootstrap", *tool, "--timeout", "5")
        assert done.returncode == 1
        assert "no waraft_admin runs there (embedded?)" in done.stdout, done.stdout
        assert "waraft.cli.admin.child_spec" in done.stdout
        assert "did not answer" not in done.stdout
        # Status asks such a node partition by partition; without them, it says why not.
        shown = waraft("status", *tool, "--json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert '"state": "stalled"' in shown.stdout
        bare = waraft("status", "--nodes", node, "--keys", str(keys))
        assert bare.returncode == 1
        assert "no waraft_admin runs there (embedded?)" in bare.stdout + bare.stderr
        assert "busy?" not in bare.stderr


def test_an_embedded_node_with_the_admin_child_spec_is_bootstrapped_by_the_tool(
    tmp_path: Path, keys: Path
) -> None:
    with _embedded(tmp_path, keys, admin=True) as node:
        tool = ("--nodes", node, "--keys", str(keys), "--partitions", "1")
        done = waraft("bootstrap", *tool, "--timeout", "20")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"kv.1: leader {node}" in done.stdout
        shown = waraft("status", "--nodes", node, "--keys", str(keys), "--json")
        assert shown.returncode == 0 and '"state": "leader"' in shown.stdout, shown.stdout
