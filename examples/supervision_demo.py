"""Supervision demo: a one_for_all supervisor with three workers under ``kernel_sup``; one
worker crashes and the whole group is restarted.

Run with ``python examples/supervision_demo.py`` (``make demo`` runs the kvstore cluster demo).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from waraft import otp
from waraft.otp import supervisor

log = logging.getLogger("supervision_demo")


class Counter(otp.Process):
    """A worker that counts casts and crashes on request."""

    trap_exit = True  # so that terminate runs when the supervisor shuts it down

    def init(self, name: str) -> None:
        self.name = name
        self.count = 0
        log.info("%s: started as %r", name, self.pid)

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        return self.count

    def handle_cast(self, msg: Any) -> None:
        if msg == "crash":
            raise RuntimeError(f"{self.name} was told to crash")
        self.count += 1

    def terminate(self, reason: Any) -> None:
        log.info("%s: terminate(%r)", self.name, reason)


def _spec(name: str) -> dict[str, Any]:
    return {"id": name, "start": (_start_counter, (name,)), "shutdown": 1000}


def _start_counter(name: str) -> otp.Pid:
    return Counter.start_link(name, name=name)


def _show(title: str, sup: otp.Target) -> dict[str, Any]:
    children = supervisor.which_children(sup)
    print(f"{title}:")
    for child_id, pid, kind, _modules in children:
        print(f"  {child_id:<8} {pid!r:<22} {kind}")
    return {child_id: pid for child_id, pid, _kind, _modules in children}


def main() -> None:
    # One stream for logs and prints, so they read in order.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    flags = {"strategy": "one_for_all", "intensity": 3, "period": 5}
    children = [_spec(name) for name in ("alpha", "beta", "gamma")]
    spec = {
        "id": "demo_sup",
        "start": (supervisor.start_link, (flags, children, "demo_sup")),
        "type": "supervisor",
    }
    status, sup = supervisor.start_child("kernel_sup", spec)
    print(f"start_child(kernel_sup, demo_sup) -> ({status!r}, {sup!r})")
    before = _show("which_children before the crash", "demo_sup")
    for _ in range(3):
        otp.cast("beta", "tick")
    print(f"beta counted {otp.call('beta', 'count')} casts; now telling beta to crash")
    otp.cast("beta", "crash")
    otp.wait_exit(before["beta"], timeout=5)
    after = _show("which_children after the restart", "demo_sup")
    restarted = sorted(name for name in before if after[name] is not before[name])
    print(f"one_for_all restarted {restarted}; beta's count is back to {otp.call('beta', 'count')}")
    print(f"kernel_sup children: {supervisor.count_children('kernel_sup')}")
    otp.node.stop_all()
    print("node stopped cleanly")


if __name__ == "__main__":
    main()
