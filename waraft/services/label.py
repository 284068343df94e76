"""Entry labels (WARaft's ``wa_raft_label`` behaviour, digest §7.2).

When a partition is configured with a label module, the leader gives every non-noop, non-config
command a label chained from the previous one, ``new_label(last_label, command)``; the entry is
then stored with the label and storage persists the latest one (``StorageProvider.label``).
The core takes the bound method as its ``label_fn``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Label(ABC):
    """A label function; implementations must be deterministic and msgpack-encodable."""

    @abstractmethod
    def new_label(self, last_label: Any, command: Any) -> Any:
        """The label of ``command`` given the previous entry's label (``None`` at first)."""


class CounterLabel(Label):
    """Labels are consecutive integers (1, 2, 3, ...): a simple sequence number."""

    def new_label(self, last_label: Any, command: Any) -> Any:
        return 1 if last_label is None else int(last_label) + 1


__all__ = ["CounterLabel", "Label"]
