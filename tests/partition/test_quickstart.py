"""The README's quick start session, run line by line in a fresh interpreter, must print exactly
what the README shows."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _expected_transcript() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- quickstart -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    return block.strip("\n") + "\n"


def test_readme_session_matches_real_output(tmp_path: pathlib.Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == _expected_transcript()


def test_the_session_is_the_design_session() -> None:
    # The README keeps DESIGN.md's quick start line for line (plus the final stop).
    # fmt: off
    expected = [
        "import waraft",
        'spec = waraft.sup.child_spec("test_app", [{"table": "test", "partition": 1}])',
        'waraft.otp.supervisor.start_child("kernel_sup", spec)',
        'waraft.server.status("raft_server_test_1")["state"]',
        'config = waraft.server.make_config([waraft.Identity("raft_server_test_1", waraft.node())])',  # noqa: E501
        'waraft.server.bootstrap("raft_server_test_1", waraft.LogPos(1, 1), config, {})',
        'waraft.server.status("raft_server_test_1")["state"]',
        'waraft.acceptor.commit("raft_acceptor_test_1", (waraft.make_ref(), ("write", "test", "key", 1000)))',  # noqa: E501
        'waraft.acceptor.read("raft_acceptor_test_1", ("read", "test", "key"))',
    ]
    # fmt: on
    lines = [line[4:] for line in _expected_transcript().splitlines() if line.startswith(">>> ")]
    assert lines[: len(expected)] == expected
