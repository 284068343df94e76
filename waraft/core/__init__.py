"""The pure Raft protocol core: WARaft's server state machine with no I/O.

Events go in (``waraft.core.events``, ``waraft.core.rpc.RaftRpc``), effects come out
(``waraft.core.effects``). Nothing in this package touches threads, sockets, clocks, randomness,
files, pykka or zmq; time and random numbers are injected by the caller.
"""

from waraft.core.types import (
    Config,
    DurableState,
    ElectionType,
    Entry,
    Identity,
    LogPos,
    Priority,
    State,
    TimeoutKind,
)

__all__ = [
    "Config",
    "DurableState",
    "ElectionType",
    "Entry",
    "Identity",
    "LogPos",
    "Priority",
    "State",
    "TimeoutKind",
]
