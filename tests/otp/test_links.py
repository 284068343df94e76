"""Links, monitors and exit signals."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from waraft import otp

from .helpers import WAIT, Events, Plain, Worker, crash, wait_until


class Linker(otp.Process):
    """Links (and optionally monitors) on request; records EXIT/DOWN and its own terminate."""

    def init(self, events: Events, tag: str, trap: bool) -> None:
        self.events = events
        self.tag = tag
        self.trap_exit = trap

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        op, arg = request
        if op == "link":
            otp.link(arg)
        elif op == "unlink":
            otp.unlink(arg)
        elif op == "monitor":
            return otp.monitor(arg)
        elif op == "demonitor":
            return otp.demonitor(arg)
        elif op == "exit":
            otp.exit(*arg)
        return "ok"

    def handle_cast(self, msg: Any) -> None:
        op, gate, target = msg
        if op == "hold_then_unlink":
            gate.wait(WAIT)
            otp.unlink(target)
        elif op == "hold_then_demonitor":
            gate.wait(WAIT)
            otp.demonitor(target)

    def handle_info(self, msg: Any) -> None:
        self.events.add((self.tag, msg))

    def terminate(self, reason: Any) -> None:
        self.events.add((self.tag, "terminate", reason))


def _of(items: list[Any], tag: str) -> list[Any]:
    return [e for e in items if e[0] == tag]


def _linker(events: Events, tag: str, trap: bool = False) -> otp.Pid:
    return Linker.start(events, tag, trap)


def test_untrapped_link_kills_with_the_same_reason_without_terminate() -> None:
    events = Events()
    a = Worker.start(events, "a")
    b = _linker(events, "b", trap=False)
    otp.call(b, ("link", a))
    reason = crash(a)
    assert otp.wait_exit(b, WAIT) == reason
    assert not [e for e in events.list() if e[0] == "b"]  # b ran no terminate


def test_normal_exit_does_not_kill_untrapped_links() -> None:
    events = Events()
    a = Worker.start(events, "a")
    b = _linker(events, "b", trap=False)
    otp.call(b, ("link", a))
    otp.stop(a, "normal")
    assert otp.call(b, ("unlink", a)) == "ok"
    assert b.is_alive()


def test_trapped_exit_arrives_as_message() -> None:
    events = Events()
    a = Worker.start(events, "a")
    b = _linker(events, "b", trap=True)
    otp.call(b, ("link", a))
    otp.stop(a, ("shutdown", "x"))
    got = events.wait_for(lambda items: any(e[0] == "b" for e in items))
    assert ("b", ("EXIT", a, ("shutdown", "x"))) in got
    assert b.is_alive()


def test_link_cascade_through_untrapped_processes() -> None:
    events = Events()
    a = Worker.start(events, "a")
    b = _linker(events, "b")
    c = _linker(events, "c")
    otp.call(b, ("link", a))
    otp.call(c, ("link", b))
    reason = crash(a)
    assert otp.wait_exit(b, WAIT) == reason
    assert otp.wait_exit(c, WAIT) == reason


def test_unlink_flushes_an_exit_already_queued() -> None:
    events = Events()
    a = Plain.start(events, "a")
    b = _linker(events, "b", trap=True)
    otp.call(b, ("link", a))
    gate = otp.Event()
    otp.cast(b, ("hold_then_unlink", gate, a))
    crash(a)  # b is busy: the EXIT waits in its mailbox
    gate.set()
    otp.call(b, ("link", b))  # a round trip: b has handled everything before it
    assert not [e for e in events.list() if e[0] == "b"]


def test_kill_is_untrappable() -> None:
    events = Events()
    a = Worker.start(events, "a", name="a")  # traps exits
    watcher = _linker(events, "w", trap=True)
    otp.call(watcher, ("link", a))
    ref = otp.call(watcher, ("monitor", a))
    otp.exit(a, "kill")
    assert a.exit_reason == "killed"
    assert otp.whereis("a") is None
    events.wait_for(lambda items: len(_of(items, "w")) >= 2)
    got = _of(events.list(), "w")
    assert sorted(map(repr, got)) == sorted(
        map(repr, [("w", ("EXIT", a, "killed")), ("w", ("DOWN", ref, a, "killed"))])
    )
    assert ("stop", "a", "killed") not in events.list()  # no terminate on kill


def test_exit_signals_by_reason_and_trap() -> None:
    events = Events()
    plain = Plain.start(events, "p")
    otp.exit(plain, "normal")  # ignored by a non-trapping process
    assert otp.call(plain, "ping") == "p"
    otp.exit(plain, "shutdown")
    assert otp.wait_exit(plain, WAIT) == "shutdown"
    trapping = Worker.start(events, "t")
    otp.exit(trapping, "shutdown")  # not from its parent: just a message
    events.wait_for(lambda items: ("info", "t", ("EXIT", None, "shutdown")) in items)
    assert trapping.is_alive()


class Parent(otp.Process):
    def init(self, events: Events) -> None:
        self.child = Worker.start_link(events, "child")

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        if request == "child":
            return self.child
        otp.exit(self.child, request)
        return "sent"


def test_exit_from_parent_runs_terminate_of_trapping_child() -> None:
    events = Events()
    parent = Parent.start(events)
    child = otp.call(parent, "child")
    otp.call(parent, "shutdown")
    assert otp.wait_exit(child, WAIT) == "shutdown"
    assert ("stop", "child", "shutdown") in events.list()


def test_parent_crash_reaches_start_linked_child() -> None:
    events = Events()
    parent = Parent.start(events)
    child = otp.call(parent, "child")
    otp.exit(parent, "kill")
    assert otp.wait_exit(child, WAIT) == "killed"
    assert ("stop", "child", "killed") in events.list()  # trapping child: terminate ran


def test_monitor_down_noproc_and_demonitor() -> None:
    events = Events()
    a = Plain.start(events, "a")
    w = _linker(events, "w")
    ref = otp.call(w, ("monitor", a))
    otp.stop(a, "bye")
    events.wait_for(lambda items: ("w", ("DOWN", ref, a, "bye")) in items)
    dead_ref = otp.call(w, ("monitor", a))
    events.wait_for(lambda items: ("w", ("DOWN", dead_ref, a, "noproc")) in items)
    name_ref = otp.call(w, ("monitor", "nobody"))
    events.wait_for(lambda items: ("w", ("DOWN", name_ref, "nobody", "noproc")) in items)
    b = Plain.start(events, "b")
    ref_b = otp.call(w, ("monitor", b))
    assert otp.call(w, ("demonitor", ref_b)) is True
    otp.stop(b)
    otp.call(w, ("link", w))
    assert not [e for e in events.list() if e[0] == "w" and e[1][1] is ref_b]


def test_demonitor_flushes_a_queued_down() -> None:
    events = Events()
    a = Plain.start(events, "a")
    w = _linker(events, "w")
    ref = otp.call(w, ("monitor", a))
    gate = otp.Event()
    otp.cast(w, ("hold_then_demonitor", gate, ref))
    otp.stop(a)
    gate.set()
    otp.call(w, ("link", w))
    assert not [e for e in events.list() if e[0] == "w"]


def test_link_to_dead_process_delivers_noproc() -> None:
    events = Events()
    a = Plain.start(events, "a")
    otp.stop(a)
    trapper = _linker(events, "t", trap=True)
    otp.call(trapper, ("link", a))
    events.wait_for(lambda items: ("t", ("EXIT", a, "noproc")) in items)


def test_kill_of_a_busy_process_takes_effect_at_once() -> None:
    events = Events()
    busy = Worker.start(events, "busy", name="busy")
    gate = otp.Event()
    otp.cast(busy, ("block", gate))
    otp.cast(busy, ("stop", "never handled"))
    waiting: list[Any] = []

    def caller() -> None:
        try:
            otp.call(busy, "ping", timeout=WAIT)
        except otp.ExitError as exc:
            waiting.append(exc.reason)

    thread = threading.Thread(target=caller)
    thread.start()
    wait_until(lambda: busy._inbox.qsize() >= 2)  # the stop cast and the call are queued
    otp.kill(busy)
    thread.join(WAIT)
    assert waiting == ["killed"]
    assert not busy.is_alive() and otp.whereis("busy") is None
    gate.set()
    assert otp.sched.wait_loop_end(busy, WAIT)  # its thread or greenlet ended
    assert [e for e in events.list() if e[0] == "stop"] == []  # nothing ran after the kill


def test_link_and_monitor_need_a_calling_process() -> None:
    events = Events()
    a = Plain.start(events, "a")
    with pytest.raises(RuntimeError):
        otp.link(a)
    with pytest.raises(RuntimeError):
        otp.monitor(a)
