"""Nodes: separate registries, in-process distribution, link filter, remote router, stop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from waraft import otp
from waraft.otp import node

from .helpers import WAIT, Events, Plain, Worker, child_pid, crash


class Svc(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "whoami":
            return node.current().id
        if request == "spawn":
            return Svc.start()
        if isinstance(request, tuple) and request[0] == "relay":
            try:
                return otp.call(request[1], "whoami")
            except otp.ExitError as exc:
                return ("failed", exc.reason)
        return request

    def handle_cast(self, msg: Any) -> None:
        self.last = msg

    def handle_info(self, msg: Any) -> None:
        self.last = msg


def test_nodes_have_separate_registries_and_cross_node_calls() -> None:
    n1, n2 = node.Node("n1@127.0.0.1:7001"), node.Node("n2@127.0.0.1:7002")
    a = Svc.start(name="svc", node=n1)
    b = Svc.start(name="svc", node=n2)
    assert a is not b
    assert otp.whereis("svc", node=n1) is a and otp.whereis("svc", node=n2) is b
    with n1.activate():
        assert otp.call("svc", "whoami") == n1.id
        assert otp.call(("svc", n2.id), "whoami") == n2.id
    # From inside an actor of n1, "svc" means n1's and ("svc", n2) reaches n2's.
    relay = Svc.start(node=n1)
    assert otp.call(relay, ("relay", "svc")) == n1.id
    assert otp.call(relay, ("relay", ("svc", n2.id))) == n2.id
    assert set(node.local_nodes()) >= {n1.id, n2.id}


def test_actors_inherit_the_node_of_their_spawner() -> None:
    n1, n2 = node.Node("n1@x"), node.Node("n2@x")
    parent = Svc.start(node=n1)
    with n2.activate():
        child = otp.call(parent, "spawn")
        assert child.node is n1
        assert Svc.start().node is n2
    assert node.current() is node.default()
    assert node.current().id == "nonode@nohost"


def test_link_filter_cuts_traffic_between_local_nodes() -> None:
    n1, n2 = node.Node("n1@f"), node.Node("n2@f")
    a = Svc.start(name="svc", node=n1)
    b = Svc.start(name="svc", node=n2)
    node.set_link_filter(lambda src, dst: not (src == n1.id and dst == n2.id))
    assert otp.call(a, ("relay", ("svc", n2.id))) == ("failed", ("nodedown", n2.id))
    with n1.activate():
        with pytest.raises(otp.ExitError) as err:
            otp.call(b, "whoami")  # a pid on the far side is cut too
        assert err.value.reason == ("nodedown", n2.id)
        otp.cast(("svc", n2.id), "dropped")
        otp.send(b, "dropped")
    assert not hasattr(b._actor, "last")
    with n2.activate():
        assert otp.call(("svc", n1.id), "whoami") == n1.id  # the other direction still works
    node.set_link_filter(None)
    with n1.activate():
        assert otp.call(("svc", n2.id), "whoami") == n2.id


class FakeRouter:
    def __init__(self) -> None:
        self.casts: list[Any] = []
        self.sends: list[Any] = []

    def cast(self, addr: tuple[str, str], msg: Any) -> bool:
        self.casts.append((addr, msg))
        return True

    def call(self, addr: tuple[str, str], request: Any, timeout: float | None) -> Any:
        if addr[1] == "down@far":
            raise otp.ExitError(("nodedown", addr[1]))
        return ("remote", addr, request, timeout)

    def send(self, addr: tuple[str, str], msg: Any) -> bool:
        self.sends.append((addr, msg))
        return True


def test_remote_addresses_go_through_the_router() -> None:
    with pytest.raises(otp.ExitError) as err:
        otp.call(("svc", "far@away"), 1)
    assert err.value.reason == ("nodedown", "far@away")
    otp.cast(("svc", "far@away"), 1)  # no router: dropped, no error
    router = FakeRouter()
    node.set_remote_router(router)
    far = ("svc", "far@away")
    assert otp.call(far, "q", timeout=2.0) == ("remote", far, "q", 2.0)
    with pytest.raises(otp.ExitError):
        otp.call(("svc", "down@far"), "q")
    otp.cast(("svc", "far@away"), "c")
    otp.send(("svc", "far@away"), "i")
    assert router.casts == [(("svc", "far@away"), "c")]
    assert router.sends == [(("svc", "far@away"), "i")]


def test_node_stop_stops_kernel_sup_tree_and_other_processes() -> None:
    n = node.Node("stopme@x")
    events = Events()
    with n.activate():
        spec = {"id": "w", "start": (Worker.start_link, (events, "under_kernel"))}
        status, kid = otp.supervisor.start_child("kernel_sup", spec)
        assert status == "ok" and kid.node is n
        loose = Worker.start(events, "loose", name="loose")
    n.stop()
    assert not kid.is_alive() and not loose.is_alive()
    stops = [e for e in events.list() if e[0] == "stop"]
    assert ("stop", "under_kernel", "shutdown") in stops and ("stop", "loose", "shutdown") in stops
    assert n.id not in node.local_nodes()
    with pytest.raises(otp.StartError) as err:
        Worker.start(events, "late", node=n)
    assert err.value.reason == "node_stopped"


def test_kernel_sup_is_per_node_and_started_on_first_use() -> None:
    n1, n2 = node.Node("k1@x"), node.Node("k2@x")
    assert otp.whereis("kernel_sup", node=n1) is None
    k1 = otp.kernel.kernel_sup(n1)
    k2 = otp.kernel.kernel_sup(n2)
    assert k1 is not k2 and otp.whereis("kernel_sup", node=n1) is k1
    assert otp.kernel.kernel_sup(n1) is k1
    with n2.activate():
        assert otp.supervisor.which_children("kernel_sup") == []


def test_duplicate_node_id_is_refused_and_default_node_is_lazy() -> None:
    n = node.Node("dup@x")
    with pytest.raises(ValueError):
        node.Node("dup@x")
    n.stop()
    node.Node("dup@x")  # the id is free once stopped
    d = node.start_default("named@127.0.0.1:9000")
    assert node.current() is d
    Svc.start()
    node.stop_all()
    assert node.default().id == "nonode@nohost"


def test_activate_is_per_thread() -> None:
    n = node.Node("thread@x")
    seen: list[str] = []
    with n.activate():
        worker = threading.Thread(target=lambda: seen.append(node.current().id))
        worker.start()
        worker.join(WAIT)
        assert node.current() is n
    assert seen == ["nonode@nohost"]


@pytest.mark.parametrize("how", ["restart_intensity", "kill"])
def test_kernel_sup_exiting_stops_the_node_and_calls_its_failure_hooks(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As a BEAM node halts when kernel_sup dies: a node without its root tree serves nothing,
    # and the program embedding it must learn so (bug: it went on with no kernel_sup).
    n = node.Node("giveup@x")
    failures = Events()

    def broken_hook(reason: Any) -> None:
        raise RuntimeError("a hook's bug")

    n.on_failure(broken_hook)
    n.on_failure(failures.add)
    events = Events()
    with n.activate():
        spec = {"id": "w", "start": (Plain.start_link, (events, "w"))}
        assert otp.supervisor.start_child("kernel_sup", spec)[0] == "ok"
        kernel = otp.kernel.kernel_sup(n)
        if how == "kill":
            otp.kill(kernel)
            expected = ("kernel_sup_exited", "killed")
        else:
            for _ in range(otp.kernel.FLAGS["intensity"] + 1):  # beyond 5 restarts in 1 s
                crash(child_pid("kernel_sup", "w"))
            expected = ("kernel_sup_exited", "shutdown")
    assert failures.wait_len(1) == [expected]
    assert n.wait_stopped(WAIT) and not n.alive and n.failure == expected
    assert otp.scheduler_stats(n)["failure"] == expected
    assert "node failure hook" in caplog.text  # the broken hook was logged, the next one ran
    late = Events()
    n.on_failure(late.add)  # registered after the failure: called at once
    assert late.list() == [expected]
    with pytest.raises(otp.StartError):
        Worker.start(events, "late", node=n)


def test_a_node_stopped_on_purpose_has_no_failure() -> None:
    n = node.Node("fine@x")
    failures = Events()
    n.on_failure(failures.add)
    otp.kernel.kernel_sup(n)
    assert not n.wait_stopped(0)
    n.stop()
    assert n.wait_stopped(0) and n.failure is None and failures.list() == []


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_long_hold_ms_must_be_positive(value: float) -> None:
    with pytest.raises(ValueError, match="long_hold_ms must be > 0"):
        node.Node("badhold@x", long_hold_ms=value)
    assert "badhold@x" not in node.local_nodes()
