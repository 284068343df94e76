"""Every CLI failure an operator can cause is one clear line on stderr and a non-zero exit,
never a traceback (each through a real subprocess)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.cli.test_commands import TIMEOUT, waraft
from tests.multiprocess.harness import ROOT, NodeProcess, child_env, waraft_cmd
from waraft.cli.datadir import NODE_FILE


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("waraft ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_node_address_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = waraft(
            "node", "--name", "b", "--listen", f"127.0.0.1:{port}", "--memory", "--insecure"
        )
    assert done.returncode != 0
    assert "Address already in use" in _one_line(done.stderr)


def test_node_data_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a directory cannot be made under a file, even by root
    done = waraft(
        "node",
        "--name",
        "d",
        "--listen",
        "127.0.0.1:0",
        "--insecure",
        "--data-dir",
        str(blocker / "x"),
    )
    assert done.returncode != 0
    assert "is not writable" in _one_line(done.stderr)


def test_node_refuses_a_data_dir_of_another_node(tmp_path: Path) -> None:
    # Swapped directories used to start without a word: n2 ran with n3's terms, votes and log.
    data = tmp_path / "n3"
    data.mkdir()
    (data / "node.json").write_text('{"name": "n3", "node_id": "n3@127.0.0.1:7003"}')
    done = waraft(
        "node", "--name", "n2", "--listen", "127.0.0.1:0", "--insecure", "--data-dir", str(data)
    )
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert "belongs to node n3 (n3@127.0.0.1:7003), not n2" in line, line
    (data / "node.json").write_text("{not json")
    done = waraft(
        "node", "--name", "n2", "--listen", "127.0.0.1:0", "--insecure", "--data-dir", str(data)
    )
    assert done.returncode == 2 and "node.json is unreadable" in _one_line(done.stderr)


def test_node_unknown_setting() -> None:
    done = waraft("node", "--name", "k", "--listen", "127.0.0.1:0", "--memory", "--set", "nope=1")
    assert done.returncode == 2
    assert "unknown setting 'nope'" in _one_line(done.stderr)


def test_node_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [\n")
    done = waraft("node", "--config", str(bad))
    assert done.returncode == 2 and "bad TOML" in _one_line(done.stderr)
    done = waraft("node", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "cannot read config file" in _one_line(done.stderr)


def test_status_of_an_unreachable_node() -> None:
    done = waraft("status", "--nodes", "x@127.0.0.1:1", "--timeout", "1")
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert "unreachable: x@127.0.0.1:1" in line
    # Forgetting --keys looked exactly like a node that is down.
    assert "no --keys given" in line
    done = waraft("status", "--nodes", "x@127.0.0.1:1", "--timeout", "1", "--insecure")
    assert done.returncode == 1 and "no --keys" not in _one_line(done.stderr)


def test_a_reader_that_closes_stdout_ends_the_command_quietly(tmp_path: Path) -> None:
    # ``waraft status | head -1`` ended in a BrokenPipeError traceback.
    proc = subprocess.Popen(
        waraft_cmd("keys", "create", str(tmp_path / "keys"), "--nodes", "n1,n2,n3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env(),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the interpreter has started: its first write fails
    try:
        stderr = proc.stderr.read()
        proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert stderr == ""
    assert (tmp_path / "keys" / "cluster.json").exists()


def test_a_shell_helper_on_a_node_that_is_down_says_so() -> None:
    # It ended in a raw ``ExitError(('nodedown', ...))`` traceback.
    down = "x@127.0.0.1:1"
    done = waraft("shell", "--attach", down, "--insecure", "--down-after", "1",
                  "-c", "print(status(1))")  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert f"error: {down} is unreachable" in done.stderr


def test_tools_with_another_clusters_keys_say_the_handshake_was_refused(tmp_path: Path) -> None:
    # It printed only "unreachable: n1@...", as for a node that is down.
    for name in ("keys", "other"):
        made = waraft("keys", "create", str(tmp_path / name), "--nodes", "n1")
        assert made.returncode == 0, made.stderr
    node = NodeProcess(tmp_path, "n1", ["--keys", str(tmp_path / "keys"), "--memory"])
    node.spawn()
    try:
        node_id = node.wait_ready()
        wrong = ("--keys", str(tmp_path / "other"), "--down-after", "1")
        done = waraft("status", "--nodes", node_id, "--timeout", "2", *wrong)
        assert done.returncode == 1
        line = _one_line(done.stderr)
        assert f"unreachable: {node_id}" in line and "handshake refused" in line, line
        shell = waraft("shell", "--attach", node_id, *wrong, "-c", "print(status(1))")
        assert shell.returncode == 1 and "Traceback" not in shell.stderr, shell.stderr
        assert "handshake refused" in shell.stderr
        right = waraft("status", "--nodes", node_id, "--keys", str(tmp_path / "keys"))
        assert "handshake refused" not in right.stderr, right.stderr
    finally:
        node.kill()


def test_a_start_that_fails_leaves_the_data_dir_as_it_was(tmp_path: Path) -> None:
    # A second start on a running node's data dir, or on a busy port, had already rewritten
    # node.json to its own address (the running node's next start warned), and the first
    # failed with a nested tuple around StorageLockedError.
    running = NodeProcess(tmp_path, "n1", ["--insecure"])
    running.spawn()
    try:
        node_id = running.wait_ready()
        recorded = (running.data_dir / NODE_FILE).read_text()
        assert node_id in recorded
        again = waraft("node", "--name", "n1", "--listen", "127.0.0.1:0",
                       "--data-dir", str(running.data_dir), "--insecure")  # fmt: skip
        assert again.returncode != 0
        line = _one_line(again.stderr)
        assert f"data dir {running.data_dir} is in use by a running node" in line, line
        assert (running.data_dir / NODE_FILE).read_text() == recorded
    finally:
        running.kill()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        moved = waraft("node", "--name", "n1", "--listen", f"127.0.0.1:{port}",
                       "--data-dir", str(running.data_dir), "--insecure")  # fmt: skip
    assert moved.returncode != 0
    assert "Address already in use" in _one_line(moved.stderr)
    assert (running.data_dir / NODE_FILE).read_text() == recorded
