"""A simulated node-level failure detector: ``NodeLiveness`` events for every replica.

It models the distribution layer's pings: every ``interval_ms`` each up observer checks that
it heard from each other node; it did when that node is up, not paused (a SIGSTOPped node
keeps its sockets but answers nothing) and its link to the observer works. Only that
direction counts, as in the runtime, where a peer's pings (and any traffic) are heard on its
own link: when only ``a`` → ``b`` is cut, ``b`` reports ``a`` down and ``a`` sees ``b`` up. A
node not heard from for ``down_after_ms`` is reported down to the observer's core; the first
answer after that reports it up again; a node restarted between two pings is reported down and
up (its connections dropped and came back). A (re)started observer starts believing every node
up, as the runtime does, and learns otherwise within ``down_after_ms``. A partition that
restarts while its node stays up (``Simulation.restart_partition``) is no node restart: nobody
is told, and its new core learns which nodes its node believes down (as the server's
``_sync_liveness`` does).

The simulation drops what a core sends to a node its detector reports down
(``SimConfig.drop_sends_to_down``), as the runtime drops sends to a peer it marked down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from waraft.core.events import NodeLiveness

if TYPE_CHECKING:
    from waraft.sim.simulation import Simulation

logger = logging.getLogger(__name__)


class LivenessMonitor:
    """Pings between every pair of simulated nodes; see the module docstring."""

    def __init__(self, sim: Simulation, interval_ms: int, down_after_ms: int) -> None:
        self.sim = sim
        self.interval_ms = interval_ms
        self.down_after_ms = down_after_ms
        # (observer, subject) -> last answer time; (observer, subject) pairs believed down
        self.last_answer: dict[tuple[str, str], int] = {}
        self.down: set[tuple[str, str]] = set()
        self.incarnations: dict[str, int] = {}
        # (observer, subject) -> the subject incarnation the observer last heard from
        self.seen: dict[tuple[str, str], int] = {}
        self.reports = 0

    def start(self) -> None:
        if self.interval_ms > 0:
            self.sim.clock.schedule(self.interval_ms, self._tick, label="liveness")

    def answers(self, subject: str, observer: str) -> bool:
        """Does ``observer`` hear from ``subject`` right now (its link to the observer)?"""
        node = self.sim.nodes[subject]
        return node.up and not node.paused and self.sim.network.can_reach(subject, observer)

    def believes_down(self, observer: str, subject: str) -> bool:
        """Whether ``observer``'s detector reports ``subject`` down now."""
        return (observer, subject) in self.down

    def down_for(self, observer: str) -> list[str]:
        """The nodes ``observer``'s detector reports down now."""
        return [subject for (obs, subject) in self.down if obs == observer]

    def _tick(self) -> None:
        sim = self.sim
        now = sim.now
        for observer, node in sim.nodes.items():
            if not node.up or node.paused:
                continue  # a stopped observer pings nobody
            if self.incarnations.get(observer) != node.host_incarnation:
                # A fresh node believes everyone up: start its view afresh.
                self.incarnations[observer] = node.host_incarnation
                for subject in sim.node_ids:
                    self.last_answer[(observer, subject)] = now
                    self.down.discard((observer, subject))
            for subject in sim.node_ids:
                if subject == observer:
                    continue
                pair = (observer, subject)
                if self.answers(subject, observer):
                    self.last_answer[pair] = now
                    incarnation = sim.nodes[subject].host_incarnation
                    if self.seen.setdefault(pair, incarnation) != incarnation:
                        # Restarted between two pings: the connection dropped and came back.
                        self.seen[pair] = incarnation
                        if pair not in self.down:
                            self._report(observer, subject, False)
                        self.down.discard(pair)
                        self._report(observer, subject, True)
                    elif pair in self.down:
                        self.down.discard(pair)
                        self._report(observer, subject, True)
                elif (
                    pair not in self.down
                    and now - self.last_answer.get(pair, now) >= self.down_after_ms
                ):
                    self.down.add(pair)
                    self._report(observer, subject, False)
        sim.clock.schedule(self.interval_ms, self._tick, label="liveness")

    def _report(self, observer: str, subject: str, up: bool) -> None:
        self.reports += 1
        self.sim.stats["node_up" if up else "node_down"] += 1
        logger.debug("%s sees %s %s", observer, subject, "up" if up else "down")
        self.sim.nodes[observer].handle(NodeLiveness(subject, up))
