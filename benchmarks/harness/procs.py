"""Child processes of a benchmark run: free ports on 127.0.0.1, spawning with logs to files,
waiting for readiness, and killing strictly by pid (never by name).

Every process the harness starts is registered in a :class:`ProcessGroup`; leaving the group's
``with`` block (normally, on an exception or on Ctrl-C) terminates whatever is still running,
politely first (SIGTERM) and then with SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago (bound together, then released,
    so the kernel hands out different ones)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child Python: the repository importable, unbuffered output."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


@dataclass
class Managed:
    """One child process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    role: str
    started_at: float = field(default_factory=time.monotonic)
    killed_at: float | None = None
    log_offset: int = 0  # where this process's output starts in a log shared with earlier runs

    def output(self) -> str:
        """What this process wrote to its log (not what an earlier run left there)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class ProcessGroup:
    """The children of one run; terminated by pid when the group closes."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Managed] = []
        self._files: list[IO[bytes]] = []

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        role: str,
        env: Mapping[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
        cwd: Path | None = None,
    ) -> Managed:
        """Start ``argv``; stderr (and stdout unless piped) go to ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop_all
        offset = log_file.tell()
        self._files.append(log_file)
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=subprocess.PIPE if stdout_pipe else log_file,
            stderr=log_file,
            env=dict(env) if env is not None else python_env(),
            cwd=str(cwd or REPO_ROOT),
            start_new_session=True,  # Ctrl-C in the terminal reaches the harness only
        )
        child = Managed(name=name, popen=popen, log_path=log_path, role=role, log_offset=offset)
        self.children.append(child)
        log.debug("started %s pid %d: %s", name, popen.pid, " ".join(argv))
        return child

    def kill9(self, child: Managed) -> float:
        """SIGKILL one child by pid; returns the monotonic time of the kill."""
        at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.killed_at = at
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=5.0)
        return at

    def stop(self, child: Managed, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL."""
        if child.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)
        try:
            child.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM; killing it", child.name, child.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=5.0)

    def stop_all(self, timeout: float = 5.0) -> None:
        live = [c for c in self.children if c.popen.poll() is None]
        for child in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in live:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=5.0)
        for child in self.children:
            if child.popen.stdout is not None:
                child.popen.stdout.close()
            if child.popen.stdin is not None:
                with contextlib.suppress(OSError):
                    child.popen.stdin.close()
        for f in self._files:
            f.close()
        self._files.clear()


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` until true; ``check`` may raise early (a child died)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@contextlib.contextmanager
def process_group(log_dir: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(log_dir)
    try:
        yield group
    finally:
        group.stop_all()
