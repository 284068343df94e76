"""The virtual network: seeded delay, loss, duplication, reordering and partitions.

Messages are delivered through the virtual clock. A message is dropped when its link is cut
(``partition``, ``isolate``, ``block``) either when it is sent or when it would arrive (a cut
link loses what is in flight), when the destination is down at arrival, or at random (``loss``).
Reordering comes from random delays (``min_delay_ms``..``max_delay_ms``) plus, with probability
``reorder``, an extra ``reorder_delay_ms`` that lets later messages overtake it. With probability
``duplicate`` a second copy travels with its own delay.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from waraft.sim.clock import VirtualClock


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Fault parameters of the network (all probabilities in [0, 1])."""

    min_delay_ms: int = 1
    max_delay_ms: int = 5
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay_ms: int = 50

    def with_(self, **changes: Any) -> NetConfig:
        return replace(self, **changes)

    @classmethod
    def reliable(cls) -> NetConfig:
        return cls()

    @classmethod
    def unreliable(cls) -> NetConfig:
        """Roughly MIT 6.824's unreliable network: 10% loss, long delays, reordering."""
        return cls(
            min_delay_ms=1,
            max_delay_ms=27,
            loss=0.1,
            duplicate=0.02,
            reorder=0.1,
            reorder_delay_ms=200,
        )


Deliver = Callable[[str, str, Any], None]  # (src, dst, message)


class Network:
    """Routes messages between named endpoints (node ids) over the virtual clock.

    ``deliver(src, dst, message)`` is called at arrival for messages that survive;
    ``is_up(node)`` tells whether a destination can receive.
    """

    def __init__(
        self,
        clock: VirtualClock,
        rng: random.Random,
        deliver: Deliver,
        is_up: Callable[[str], bool],
        config: NetConfig | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.config = config or NetConfig()
        self._deliver = deliver
        self._is_up = is_up
        self._blocked: set[tuple[str, str]] = set()
        self.link_config: dict[tuple[str, str], NetConfig] = {}
        self.sent: Counter[str] = Counter()  # per sender
        self.sent_total = 0
        self.delivered_total = 0
        self.dropped_total = 0

    # -- partitions ------------------------------------------------------------------------------

    def can_reach(self, src: str, dst: str) -> bool:
        return (src, dst) not in self._blocked

    def block(self, src: str, dst: str) -> None:
        """Cut the one-way link ``src`` → ``dst`` (an asymmetric partition)."""
        if src != dst:
            self._blocked.add((src, dst))

    def unblock(self, src: str, dst: str) -> None:
        self._blocked.discard((src, dst))

    def partition(self, *groups: Iterable[str], nodes: Iterable[str] | None = None) -> None:
        """Split into ``groups`` that cannot talk to each other (symmetric).

        The previous partition is replaced. Nodes in ``nodes`` that appear in no group are each
        isolated on their own.
        """
        self._blocked.clear()
        group_of: dict[str, int] = {}
        for number, group in enumerate(groups):
            for node in group:
                group_of[node] = number
        everyone = list(group_of)
        for node in nodes or ():
            if node not in group_of:
                group_of[node] = -1 - len(everyone)
                everyone.append(node)
        for a in everyone:
            for b in everyone:
                if a != b and group_of[a] != group_of[b]:
                    self._blocked.add((a, b))

    def isolate(self, node: str, others: Iterable[str]) -> None:
        """Cut every link to and from ``node``."""
        for other in others:
            self.block(node, other)
            self.block(other, node)

    def heal(self) -> None:
        """Restore every link."""
        self._blocked.clear()

    # -- sending ---------------------------------------------------------------------------------

    def _config_for(self, src: str, dst: str) -> NetConfig:
        if self.link_config:
            return self.link_config.get((src, dst), self.config)
        return self.config

    def _delay(self, cfg: NetConfig) -> int:
        rng = self.rng
        delay = rng.randint(cfg.min_delay_ms, cfg.max_delay_ms)
        if cfg.reorder and rng.random() < cfg.reorder:
            delay += rng.randint(1, max(1, cfg.reorder_delay_ms))
        return delay

    def send(self, src: str, dst: str, message: Any, label: str = "msg") -> None:
        """Send ``message`` from ``src`` to ``dst`` (fire and forget)."""
        self.sent[src] += 1
        self.sent_total += 1
        if (src, dst) in self._blocked:
            self.dropped_total += 1
            return
        cfg = self._config_for(src, dst)
        rng = self.rng
        if cfg.loss and rng.random() < cfg.loss:
            self.dropped_total += 1
            return
        copies = 2 if cfg.duplicate and rng.random() < cfg.duplicate else 1
        for _ in range(copies):
            self.clock.schedule(
                self._delay(cfg), self._arrive, src, dst, message, target=dst, label=label
            )

    def _arrive(self, src: str, dst: str, message: Any) -> None:
        if (src, dst) in self._blocked or not self._is_up(dst):
            self.dropped_total += 1
            return
        self.delivered_total += 1
        self._deliver(src, dst, message)
