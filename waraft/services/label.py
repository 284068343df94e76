"""Entry labels (WARaft's ``wa_raft_label`` behaviour, digest §7.2).

When a partition is configured with a label module, the leader gives every non-noop, non-config
command a label chained from the previous one, ``new_label(last_label, command)``; the entry is
then stored with the label and storage persists the latest one (``StorageProvider.label``).
The core takes the bound method as its ``label_fn``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
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


def label_function(module: Any) -> Callable[[Any, Any], Any] | None:
    """The ``new_label`` of a partition's configured ``label_module`` (None when unset).

    ``module`` is a :class:`Label` subclass (instantiated with no arguments) or an object with a
    callable ``new_label``, as WARaft accepts any module implementing the behaviour. Anything
    else is a configuration error: ``ValueError`` at partition start, not a crash later.
    """
    if module is None:
        return None
    instance = module() if isinstance(module, type) else module
    new_label = getattr(instance, "new_label", None)
    if not callable(new_label):
        raise ValueError(f"label_module {module!r} does not implement new_label(last, command)")
    return new_label  # type: ignore[no-any-return]


__all__ = ["CounterLabel", "Label", "label_function"]
