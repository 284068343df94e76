"""The partition's Raft log (WARaft's ``wa_raft_log``).

For now this package exports the provider interface (``waraft.log.provider``); the providers are
``waraft.log.memory.MemoryLog`` (WARaft's ETS log, the default) and ``waraft.log.disk.DiskLog``
(durable segment files). The log actor is added to this module by the partition runtime.
"""

from waraft.log.provider import (
    LogCorruptionError,
    LogError,
    LogPositionError,
    LogProvider,
    LogWriteError,
    is_config_entry,
)

__all__ = [
    "LogCorruptionError",
    "LogError",
    "LogPositionError",
    "LogProvider",
    "LogWriteError",
    "is_config_entry",
]
