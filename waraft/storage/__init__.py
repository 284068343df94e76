"""The partition's replicated state machine (WARaft's ``wa_raft_storage``).

For now this package exports the provider interface (``waraft.storage.provider``); the providers
are ``waraft.storage.memory.MemoryStorage`` (WARaft's ETS storage, the default) and
``waraft.storage.sqlite.SqliteStorage`` (durable). The storage actor is added to this module by
the partition runtime.
"""

from waraft.storage.provider import (
    BAD_POSITION,
    NOT_FOUND,
    OK,
    ApplyItem,
    InvalidIncompleteReplica,
    StorageError,
    StorageOptions,
    StorageProvider,
    UnknownCommandError,
    is_data_replica,
)

__all__ = [
    "BAD_POSITION",
    "NOT_FOUND",
    "OK",
    "ApplyItem",
    "InvalidIncompleteReplica",
    "StorageError",
    "StorageOptions",
    "StorageProvider",
    "UnknownCommandError",
    "is_data_replica",
]
