"""An ``--app-module`` for tests: a node whose application makes the node fail on purpose.

``WARAFT_TEST_FAULT`` chooses how, once the worker has run a moment (:data:`DELAY_MS`):
``scheduler`` breaks the loop of the worker's scheduler thread (as a bug in it would),
``crash_loop`` crashes the worker in every incarnation until ``kernel_sup`` reaches its
restart intensity and gives up.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from waraft import otp

DELAY_MS = 100


class Faulty(otp.Process):
    process_type: ClassVar[str | None] = otp.SCHEDULED  # the scheduler fault needs one

    def init(self, fault: str) -> None:
        self.fault = fault
        otp.send_after(DELAY_MS, otp.self_pid(), "fault")

    def handle_info(self, msg: Any) -> None:
        if self.fault == "scheduler":
            sched = self._sched
            assert sched is not None
            sched.runq.put(object())  # not a process: the scheduler loop itself fails
        else:
            raise RuntimeError("injected crash")


def child_spec(app: str, raft_args: list[dict[str, Any]]) -> dict[str, Any]:
    """A permanent worker under ``kernel_sup`` (the ``--app-module`` contract)."""
    fault = os.environ["WARAFT_TEST_FAULT"]
    return {"id": "faulty", "start": (Faulty.start_link, (fault,)), "restart": "permanent"}
