"""Run a module as ``python -m MODULE`` would, in a process that stops when its parent dies.

    python -m examples.kvstore.tied PARENT_PID MODULE [ARG...]

``LocalCluster(tied=True)`` (``make demo``) starts its nodes this way: a node is in its own
session (Ctrl-C in the terminal must not reach it) and outlives its parent by default, so a
demo killed with ``kill -9`` (no ``finally`` runs) left its nodes serving for good. Here a
daemon thread watches the parent: once this process's parent is no longer ``PARENT_PID`` (it
died and the process was re-parented, to init or a subreaper), the process sends itself
SIGTERM, which ``waraft node`` answers with its clean stop.

Polling ``os.getppid()`` rather than Linux's ``prctl(PR_SET_PDEATHSIG)``: that works on every
POSIX system, and the death signal fires when the *thread* that forked the child ends, which
would stop the nodes a worker thread started as soon as that thread finished. The cost is a
wake-up every ``POLL_INTERVAL`` seconds and up to that long before the stop begins.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
from typing import Final

POLL_INTERVAL: Final = 0.2
"""Seconds between two looks at the parent pid."""


def watch_parent(parent: int, interval: float = POLL_INTERVAL) -> threading.Thread:
    """Start a daemon thread that sends this process SIGTERM once its parent is no longer
    ``parent`` (at once if it is not ``parent`` already: it died before the watch began)."""

    def watch() -> None:
        stopped = threading.Event()  # never set: a sleep the interpreter can end at exit
        while os.getppid() == parent:
            stopped.wait(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    """``PARENT_PID MODULE [ARG...]``: watch the parent, then run ``MODULE`` as ``__main__``
    with ``sys.argv`` = ``[MODULE, ARG...]``."""
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m examples.kvstore.tied PARENT_PID MODULE [ARG...]")
    parent, module = int(argv[0]), argv[1]
    watch_parent(parent)
    sys.argv = [module, *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
