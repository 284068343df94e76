"""The metrics sink the core may report to (WARaft's ``wa_raft_metrics`` behaviour).

Keys are WARaft's ``("raft", table, name)`` tuples; ``name`` is a string such as
``"leader.enter"`` or a tuple such as ``("commit", "high")``. The sink must be cheap and must
never raise; the core calls it synchronously.
"""

from __future__ import annotations

from typing import Any, Protocol


class Metrics(Protocol):
    def count(self, key: Any) -> None: ...

    def countv(self, key: Any, value: int) -> None: ...

    def gather(self, key: Any, value: float) -> None: ...
