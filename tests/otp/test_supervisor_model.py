"""Random sequences of supervisor operations against a small reference model of OTP's rules.

After every step ``which_children`` and ``count_children`` must match the model, and a child's
pid must have changed exactly when the model says it was (re)started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from waraft import otp
from waraft.otp import supervisor as sup

from .helpers import WAIT, Events, Plain

IDS = st.sampled_from(["c0", "c1", "c2", "c3", "c4"])
RESTARTS = st.sampled_from(["permanent", "transient", "temporary"])
EXITS = st.sampled_from(["crash", "normal", "shutdown"])


@dataclass
class ModelChild:
    id: str
    restart: str
    running: bool = True
    incarnation: int = 0


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sup: otp.Pid | None = None
        self.events = Events()
        self.model: list[ModelChild] = []
        self.incarnations = 0
        self.seen_pid: dict[str, otp.Pid] = {}
        self.seen_incarnation: dict[str, int] = {}

    # ------------------------------------------------------------------ model helpers
    def _find(self, cid: str) -> ModelChild | None:
        return next((c for c in self.model if c.id == cid), None)

    def _run(self, child: ModelChild) -> None:
        self.incarnations += 1
        child.running = True
        child.incarnation = self.incarnations

    def _stop(self, child: ModelChild) -> None:
        """Terminate or exit without restart: temporary specs go, the others stay idle."""
        if child.restart == "temporary":
            self.model.remove(child)
        else:
            child.running = False

    def _model_exit(self, child: ModelChild, normal: bool) -> None:
        if child.restart == "permanent" or (child.restart == "transient" and not normal):
            self._model_restart(child)
        else:
            self._stop(child)

    def _model_restart(self, child: ModelChild) -> None:
        if self.strategy == "one_for_one":
            self._run(child)
            return
        start = 0 if self.strategy == "one_for_all" else self.model.index(child)
        group = self.model[start:]
        child.running = False
        for other in reversed(group):
            if other is not child:
                self._stop(other)
        for member in group:
            if member in self.model:  # a group restart starts idle specs too, as OTP does
                self._run(member)

    def _real_pid(self, cid: str) -> Any:
        for child_id, pid, _type, _mods in sup.which_children(self.sup):
            if child_id == cid:
                return pid
        return None

    # ------------------------------------------------------------------ rules
    @initialize(strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]))
    def start_supervisor(self, strategy: str) -> None:
        self.strategy = strategy
        self.sup = sup.start_link({"strategy": strategy, "intensity": 100_000, "period": 1}, [])

    @rule(cid=IDS, restart=RESTARTS)
    def start_child(self, cid: str, restart: str) -> None:
        spec = {
            "id": cid,
            "start": (Plain.start_link, (self.events, cid)),
            "restart": restart,
            "shutdown": 2000,
        }
        existing = self._find(cid)
        expected_pid = self._real_pid(cid) if existing is not None else None
        result = sup.start_child(self.sup, spec)
        if existing is None:
            assert result[0] == "ok" and isinstance(result[1], otp.Pid)
            child = ModelChild(cid, restart)
            self.model.append(child)
            self._run(child)
        elif existing.running:
            assert result == ("error", ("already_started", expected_pid))
        else:
            assert result == ("error", "already_present")

    @rule(data=st.data(), how=EXITS)
    def child_exits(self, data: st.DataObject, how: str) -> None:
        running = [c for c in self.model if c.running]
        if not running:
            return
        child = data.draw(st.sampled_from(running))
        pid = self._real_pid(child.id)
        assert isinstance(pid, otp.Pid)
        if how == "crash":
            otp.cast(pid, "crash")
        else:
            otp.cast(pid, ("stop", how))
        otp.wait_exit(pid, WAIT)
        self._model_exit(child, normal=how != "crash")

    @rule(cid=IDS)
    def terminate_child(self, cid: str) -> None:
        result = sup.terminate_child(self.sup, cid)
        child = self._find(cid)
        if child is None:
            assert result == ("error", "not_found")
            return
        assert result == "ok"
        self._stop(child)

    @rule(cid=IDS)
    def restart_child(self, cid: str) -> None:
        result = sup.restart_child(self.sup, cid)
        child = self._find(cid)
        if child is None:
            assert result == ("error", "not_found")
        elif child.running:
            assert result == ("error", "running")
        else:
            assert result[0] == "ok" and isinstance(result[1], otp.Pid)
            self._run(child)

    @rule(cid=IDS)
    def delete_child(self, cid: str) -> None:
        result = sup.delete_child(self.sup, cid)
        child = self._find(cid)
        if child is None:
            assert result == ("error", "not_found")
        elif child.running:
            assert result == ("error", "running")
        else:
            assert result == "ok"
            self.model.remove(child)

    # ------------------------------------------------------------------ checks
    @invariant()
    def matches_the_model(self) -> None:
        if self.sup is None:
            return
        real = sup.which_children(self.sup)
        assert [(c[0], isinstance(c[1], otp.Pid)) for c in real] == [
            (c.id, c.running) for c in self.model
        ]
        assert all(c[1] is None or c[1].is_alive() for c in real)
        running = sum(c.running for c in self.model)
        assert sup.count_children(self.sup) == {
            "specs": len(self.model),
            "active": running,
            "supervisors": 0,
            "workers": len(self.model),
        }
        for (cid, pid, _t, _m), child in zip(real, self.model, strict=True):
            if not child.running:
                self.seen_pid.pop(cid, None)
                continue
            pid_changed = self.seen_pid.get(cid) is not pid
            model_changed = self.seen_incarnation.get(cid) != child.incarnation
            assert pid_changed == model_changed, (cid, self.strategy, pid_changed)
            self.seen_pid[cid] = pid
            self.seen_incarnation[cid] = child.incarnation

    def teardown(self) -> None:
        if self.sup is not None:
            sup.stop(self.sup, "shutdown")


def test_supervisor_matches_reference_model(process_type: str) -> None:
    # A function rather than SupervisorMachine.TestCase, so the process-type fixture applies.
    run_state_machine_as_test(
        SupervisorMachine,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
