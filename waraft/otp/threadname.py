"""OS-level names for the runtime's threads (Linux), so per-thread tools see them.

Python 3.11's ``threading.Thread(name=...)`` names the thread for Python only: ``top -H``,
``/proc/<pid>/task/<tid>/comm``, ``perf`` and per-thread CPU accounting show every thread of a
node as ``python``. The runtime's long-lived threads (schedulers, I/O threads, the timer, the
distribution's receive and liveness threads) call :func:`set_os_name` first thing, which is
what made the per-thread CPU breakdown of HOTPATH.md possible without a profiler.

Best effort: on a platform without ``prctl`` (or without ``libc``) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from typing import Any, Final

logger = logging.getLogger(__name__)

_PR_SET_NAME: Final = 15
# The kernel keeps 15 bytes of a thread's name (16 with the terminating NUL).
MAX_BYTES: Final = 15

_prctl: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _prctl = _libc.prctl
    except (OSError, AttributeError):  # no libc to load: names stay Python-only
        _prctl = None


def os_name(name: str) -> bytes:
    """``name`` as the kernel will keep it: UTF-8, cut to :data:`MAX_BYTES` bytes (never in
    the middle of a character)."""
    data = name.encode()
    if len(data) <= MAX_BYTES:
        return data
    return data[:MAX_BYTES].decode(errors="ignore").encode()


def set_os_name(name: str) -> bool:
    """Name the calling OS thread ``name`` (cut to 15 bytes); True if the kernel took it."""
    if _prctl is None:
        return False
    try:
        return bool(_prctl(_PR_SET_NAME, ctypes.c_char_p(os_name(name)), 0, 0, 0) == 0)
    except Exception:  # a naming failure must never stop the thread that asked
        logger.debug("could not name thread %r", name, exc_info=True)
        return False
