"""A worker sending files to one peer (WARaft's ``wa_raft_transport_worker``).

The worker keeps a queue of jobs: ``("transport", id, table)`` pulls the transport's next file
(``waraft.transport.pop_file``) and queues ``("file", id, table, file_id)``, which hands the file
to the transport's provider (``transport_send(id, file_id, state)``), reports it with
``waraft.transport.complete`` and queues the transport job again, so that the worker pulls the
next file. One job runs per mailbox turn (WARaft's zero timeout), so a new ``notify`` is seen
between files. Provider states are created lazily with ``transport_init(node)``, one per
provider, and handed to ``transport_terminate`` when the worker stops.

Provider results: ``("ok", state)``; ``("continue", state)`` puts the file job back at the end
of the queue; ``("stop", reason, state)`` fails the file with ``reason``.

Divergence: WARaft's worker starts with an empty queue, so a worker restarted after a crash
leaves its peer's running transports to the idle timeout. Ours takes them up when it starts
(``waraft.transport_tables.take_up``), the file the dead worker was sending included, from its
start; a worker killed mid-file (its handler runs on, see ``waraft.otp``) reports nothing.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final

from waraft import otp, transport
from waraft.transport import tables

logger = logging.getLogger(__name__)

_CONTINUE: Final = ("$transport_worker", "continue")


class TransportWorker(otp.Process):
    """Sends the queued files of every transport to ``peer``."""

    trap_exit = True
    process_type = otp.THREAD  # reads the files it sends and waits for chunk acks

    def init(self, peer: str, number: int) -> None:
        self.peer = peer
        self.number = number
        self.jobs: deque[tuple[Any, ...]] = deque()
        self.states: dict[int, tuple[Any, Any]] = {}  # id(provider) -> (provider, state)
        self._kicked = False
        # A restarted worker (its predecessor crashed, or a sibling did: one_for_all) is told
        # of no transport: take up every one still running to this peer, and the files that
        # were being sent when the old worker died.
        for transport_id, table in tables.take_up(peer):
            self.jobs.append(("transport", transport_id, table))
        if self.jobs:
            logger.info("worker %s/%s takes up transports %s", peer, number, list(self.jobs))
            self._kick()

    def terminate(self, reason: Any) -> None:
        for provider, state in self.states.values():
            hook = getattr(provider, "transport_terminate", None)
            if hook is not None:
                try:
                    hook(reason, state)
                except Exception:
                    logger.exception(
                        "worker %s/%s: transport_terminate failed", self.peer, self.number
                    )

    # -- messages --------------------------------------------------------------------------

    def handle_cast(self, msg: Any) -> None:
        if isinstance(msg, tuple) and len(msg) == 3 and msg[0] == "notify":
            self.jobs.append(("transport", msg[1], msg[2]))
            self._kick()
        else:
            logger.warning("worker %s/%s got an unknown cast %r", self.peer, self.number, msg)

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == ("jobs",):
            return list(self.jobs)
        return ("error", "unsupported")

    def handle_info(self, msg: Any) -> None:
        if msg == _CONTINUE:
            self._kicked = False
            if self.jobs:
                self._run(self.jobs.popleft())
            if self.jobs:
                self._kick()
        elif not (isinstance(msg, tuple) and msg and msg[0] == "EXIT"):
            logger.debug("worker %s/%s dropped %r", self.peer, self.number, msg)

    def _kick(self) -> None:
        # One pending wake-up at a time; it sits behind whatever is already in the mailbox.
        if not self._kicked:
            self._kicked = True
            otp.send(self.pid, _CONTINUE)

    # -- jobs ------------------------------------------------------------------------------

    def _run(self, job: tuple[Any, ...]) -> None:
        if job[0] == "transport":
            _, transport_id, table = job
            popped = tables.pop_file(transport_id, self.pid)
            if isinstance(popped, tuple):
                self.jobs.append(("file", transport_id, table, popped[1]))
            return
        _, transport_id, table, file_id = job
        result = self._send(transport_id, file_id)
        if not self.pid.is_alive():
            # Killed while sending (the handler ran on): the restarted worker sends this file
            # again, and its outcome is the one that counts.
            return
        if result == "continue":
            self.jobs.append(job)
            return
        transport.complete(transport_id, file_id, result)
        self.jobs.append(("transport", transport_id, table))

    def _send(self, transport_id: int, file_id: int) -> Any:
        """Hand one file to the provider: ``"ok"``, ``"continue"`` or a failure reason."""
        provider = tables.transport_module(transport_id)
        if provider is None:
            logger.warning(
                "worker %s/%s: unknown transport %s", self.peer, self.number, transport_id
            )
            return ("invalid_transport", transport_id)
        key = id(provider)
        try:
            if key in self.states:
                state = self.states[key][1]
            else:
                started = provider.transport_init(self.peer)
                if started[0] != "ok":
                    return started[1] if len(started) == 2 else ("bad_return", repr(started))
                state = started[1]
                self.states[key] = (provider, state)
            result = provider.transport_send(transport_id, file_id, state)
        except Exception as exc:
            logger.exception(
                "worker %s/%s: sending %s/%s failed", self.peer, self.number, transport_id, file_id
            )
            return ("error", f"{type(exc).__name__}: {exc}")
        kind = result[0]
        self.states[key] = (provider, result[-1])
        if kind == "ok":
            return "ok"
        if kind == "continue":
            return "continue"
        return result[1] if kind == "stop" and len(result) == 3 else ("bad_return", repr(result))


def start_link(peer: str, number: int) -> otp.Pid:
    """Start worker ``number`` sending to ``peer`` (not registered, as in WARaft)."""
    pid: otp.Pid = TransportWorker.start_link(peer, number)
    return pid


def child_spec(peer: str, number: int) -> dict[str, Any]:
    """WARaft's child spec: permanent, 5 s shutdown, id ``(wa_raft_transport_worker, node, n)``."""
    return {
        "id": ("wa_raft_transport_worker", peer, number),
        "start": (start_link, (peer, number)),
        "restart": "permanent",
        "shutdown": 5000,
    }


__all__ = ["TransportWorker", "child_spec", "start_link"]
