"""Errors raised by the protocol core."""

from __future__ import annotations


class RaftCoreError(RuntimeError):
    """An invariant of the log or of the caller's contract broke; the partition must restart.

    This is WARaft's ``exit``/``error`` inside the server (for example an entry that cannot be
    applied): the shell lets the partition crash and the supervisor restarts it.
    """
