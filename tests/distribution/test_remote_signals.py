"""Links and monitors across OS processes: ``otp.monitor/link((name, node))`` over ZeroMQ.

This process is a node (the ``node`` fixture); the other end is a child node process
(``child_node.py``) whose ``Victim`` processes are monitored, linked, and made to die. Each test
also checks that both nodes' tables of remote links and monitors are empty at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from waraft import distribution as dist
from waraft import otp
from waraft.distribution import monitors

from .helpers import DOWN, WAIT, Child, Inbox, wait_until

TABLES = ("remote_monitors_out", "remote_monitors_in", "remote_links_out", "remote_links_in")


class Watcher(otp.Process):
    """Monitors or links on request; every message it gets goes into ``inbox``.

    Calls: ``("monitor", addr)`` -> the ref, ``("demonitor", ref)``, ``("link", addr)``,
    ``("unlink", addr)``, ``("die", reason)``."""

    def init(self, inbox: Inbox, trap: bool = False) -> None:
        self.inbox = inbox
        self.trap_exit = trap

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        op, arg = request
        if op == "monitor":
            return otp.monitor(arg)
        if op == "demonitor":
            return otp.demonitor(arg)
        if op == "link":
            otp.link(arg)
            return "ok"
        if op == "unlink":
            otp.unlink(arg)
            return "ok"
        if op == "die":
            self.stop_self(arg)
            return "ok"
        raise ValueError(request)

    def handle_info(self, msg: Any) -> None:
        self.inbox.add(msg)


def watcher(trap: bool = False) -> tuple[otp.Pid, Inbox]:
    inbox = Inbox()
    return otp.start(Watcher, inbox, trap), inbox


def tables_empty(child: Child | None = None) -> None:
    """Both nodes forget every link and monitor that ended (bounded wait)."""
    wait_until(lambda: all(dist.stats().get(k, 0) == 0 for k in TABLES), what="tables here")
    if child is not None:
        wait_until(
            lambda: all(child.call("stats").get(k, 0) == 0 for k in TABLES),
            what="tables on the child",
        )


def test_monitor_gets_the_exit_reason(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_reason", False)
    target = ("v_reason", shared_child.node_id)
    pid, inbox = watcher()
    ref = otp.call(pid, ("monitor", target))
    wait_until(lambda: shared_child.call("stats")["remote_monitors_in"] == 1)
    shared_child.call("victim", "v_reason", ("die", ("custom", 42)))
    (down,) = inbox.wait_len(1)
    assert down == ("DOWN", ref, target, ("custom", 42))
    tables_empty(shared_child)


def test_monitor_of_a_missing_name_is_noproc(node: str, shared_child: Child) -> None:
    target = ("nobody_here", shared_child.node_id)
    pid, inbox = watcher()
    ref = otp.call(pid, ("monitor", target))
    assert inbox.wait_len(1) == [("DOWN", ref, target, "noproc")]
    tables_empty(shared_child)


def test_demonitor_means_no_down(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_demon", False)
    target = ("v_demon", shared_child.node_id)
    pid, inbox = watcher()
    cancelled = otp.call(pid, ("monitor", target))
    kept = otp.call(pid, ("monitor", target))
    wait_until(lambda: shared_child.call("stats")["remote_monitors_in"] == 2)
    assert otp.call(pid, ("demonitor", cancelled)) is True
    # The child drops the cancelled monitor, so the only DOWN it sends is the kept one's (a
    # DOWN for the cancelled ref would arrive first, being first in the victim's table, and
    # be counted as stale here).
    wait_until(lambda: shared_child.call("stats")["remote_monitors_in"] == 1)
    stale_before = dist.stats().get("rx_stale_signals", 0)
    shared_child.call("victim", "v_demon", ("die", "normal"))
    assert inbox.wait_len(1) == [("DOWN", kept, target, "normal")]
    time.sleep(0.1)
    assert dist.stats().get("rx_stale_signals", 0) == stale_before
    assert inbox.items == [("DOWN", kept, target, "normal")]
    tables_empty(shared_child)


def test_a_dead_watcher_cancels_its_remote_monitors(node: str, shared_child: Child) -> None:
    pid, _ = watcher()
    otp.call(pid, ("monitor", shared_child.echo))
    wait_until(lambda: shared_child.call("stats")["remote_monitors_in"] == 1)
    otp.call(pid, ("die", "normal"))
    tables_empty(shared_child)


def test_kill9_of_the_node_is_noconnection(node: str, spawn: Callable[..., Child]) -> None:
    child = spawn("doomed")
    child.call("spawn", "v_linked", False)
    mon, mon_inbox = watcher()
    ref = otp.call(mon, ("monitor", child.echo))
    linked, link_inbox = watcher(trap=True)
    otp.call(linked, ("link", ("v_linked", child.node_id)))
    wait_until(lambda: child.call("stats")["remote_monitors_in"] == 1)
    wait_until(lambda: child.call("stats")["remote_links_in"] == 1)
    started = time.monotonic()
    child.kill()
    assert mon_inbox.wait_len(1) == [("DOWN", ref, child.echo, "noconnection")]
    elapsed = time.monotonic() - started
    # The lost TCP connection is seen at once; silence alone would take down_after.
    assert elapsed < DOWN + 2.0, elapsed
    assert link_inbox.wait_len(1) == [("EXIT", ("v_linked", child.node_id), "noconnection")]
    tables_empty()


def test_monitor_of_an_unreachable_node_is_noconnection(node: str) -> None:
    pid, inbox = watcher()
    target = ("anyone", "ghost@127.0.0.1:1")  # nothing listens on port 1
    ref = otp.call(pid, ("monitor", target))
    assert inbox.wait_len(1, timeout=WAIT) == [("DOWN", ref, target, "noconnection")]
    tables_empty()


def test_remote_crash_kills_the_linked_process(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_crash", False)
    target = ("v_crash", shared_child.node_id)
    pid, _ = watcher()
    otp.call(pid, ("link", target))
    wait_until(lambda: shared_child.call("stats")["remote_links_in"] == 1)
    shared_child.call("victim", "v_crash", ("die", ("error", "boom")))
    assert otp.wait_exit(pid, WAIT) == ("error", "boom")
    tables_empty(shared_child)


def test_trap_exit_gets_the_remote_exit(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_trap", False)
    target = ("v_trap", shared_child.node_id)
    pid, inbox = watcher(trap=True)
    otp.call(pid, ("link", target))
    wait_until(lambda: shared_child.call("stats")["remote_links_in"] == 1)
    shared_child.call("victim", "v_trap", ("die", "bye"))
    assert inbox.wait_len(1) == [("EXIT", target, "bye")]
    assert pid.is_alive()
    tables_empty(shared_child)


def test_local_crash_kills_the_remote_linked_process(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_follow", False)
    pid, _ = watcher()
    otp.call(pid, ("link", ("v_follow", shared_child.node_id)))
    wait_until(lambda: shared_child.call("stats")["remote_links_in"] == 1)
    otp.call(pid, ("die", ("error", "local crash")))
    wait_until(lambda: not shared_child.call("reason", "v_follow")[0], what="victim exit")
    assert shared_child.call("reason", "v_follow") == (False, ("error", "local crash"))
    tables_empty(shared_child)


def test_remote_trapper_sees_our_exit(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_trapper", True)
    pid, _ = watcher()
    monitors.allow_link("linked_here")
    otp.register("linked_here", pid)
    shared_child.call("victim", "v_trapper", ("link", ("linked_here", node)))
    wait_until(lambda: dist.stats().get("remote_links_in") == 1)
    otp.call(pid, ("die", "gone"))
    want = ("EXIT", ("linked_here", node), "gone")  # the linker knows us by our name
    wait_until(lambda: shared_child.call("victim", "v_trapper", ("infos",)) == (want,))
    assert shared_child.call("reason", "v_trapper") == (True, None)
    tables_empty(shared_child)


def test_normal_exit_does_not_kill_across(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_normal", False)
    pid, _ = watcher()
    otp.call(pid, ("link", ("v_normal", shared_child.node_id)))
    wait_until(lambda: shared_child.call("stats")["remote_links_in"] == 1)
    otp.call(pid, ("die", "normal"))
    tables_empty(shared_child)
    assert shared_child.call("reason", "v_normal") == (True, None)


def test_unlink_removes_both_ends(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_unlink", False)
    target = ("v_unlink", shared_child.node_id)
    pid, _ = watcher()
    otp.call(pid, ("link", target))
    wait_until(lambda: shared_child.call("stats")["remote_links_in"] == 1)
    otp.call(pid, ("unlink", target))
    tables_empty(shared_child)
    shared_child.call("victim", "v_unlink", ("die", "abnormal"))
    time.sleep(0.2)
    assert pid.is_alive()


def test_a_link_to_a_name_that_did_not_opt_in_is_noproc_and_its_exit_kills_nothing(
    node: str, shared_child: Child
) -> None:
    """Only names given to ``monitors.allow_link`` are linkable from another node: a link
    followed by an exit signal used to kill any registered process (a partition's queue under
    its one_for_all supervisor: the whole partition restarted, as often as a peer liked)."""
    shared_child.call("spawn", "v_closed", False)
    pid, _ = watcher()
    otp.register("not_linkable_here", pid)
    shared_child.call("victim", "v_closed", ("link", ("not_linkable_here", node)))
    wait_until(lambda: not shared_child.call("reason", "v_closed")[0], what="victim exit")
    assert shared_child.call("reason", "v_closed") == (False, "noproc")
    assert dist.stats().get("remote_links_in", 0) == 0 and pid.is_alive()


def test_link_to_a_missing_name_is_noproc(node: str, shared_child: Child) -> None:
    pid, _ = watcher()
    try:
        assert otp.call(pid, ("link", ("nobody_here", shared_child.node_id))) == "ok"
    except otp.ExitError as e:
        # The link is asynchronous, as in Erlang: the other node's noproc exit signal may kill
        # the watcher before it answers the call, which then fails with that reason.
        assert e.reason == "noproc"
    assert otp.wait_exit(pid, WAIT) == "noproc"
    tables_empty(shared_child)


def test_cut_off_node_is_noconnection_on_both_sides(node: str, spawn: Callable[..., Child]) -> None:
    child = spawn("cut")
    child.call("spawn", "v_cut", True)
    pid, inbox = watcher(trap=True)
    monitors.allow_link("cut_peer")
    otp.register("cut_peer", pid)
    here = ("cut_peer", node)
    child.call("victim", "v_cut", ("link", here))
    ref = child.call("victim", "v_cut", ("monitor", here))
    wait_until(lambda: dist.stats().get("remote_links_in") == 1)
    wait_until(lambda: dist.stats().get("remote_monitors_in") == 1)
    dist.set_fault([child.node_id])  # we drop everything; the child just hears silence
    (exit_msg,) = inbox.wait_len(1)
    assert exit_msg[0] == "EXIT" and exit_msg[2] == "noconnection"
    assert isinstance(exit_msg[1], otp.RemotePid) and exit_msg[1].node_id == child.node_id
    assert pid.is_alive()
    tables_empty()
    time.sleep(DOWN + 0.5)  # the child's own liveness declares us down in this time
    dist.clear_fault()
    want = {("EXIT", here, "noconnection"), ("DOWN", ref, here, "noconnection")}

    def child_saw_it() -> bool:
        try:
            return set(child.call("victim", "v_cut", ("infos",), timeout=1.0)) == want
        except otp.ExitError:
            return False  # the peers are still coming back up

    wait_until(child_saw_it, what="noconnection on the child")
    tables_empty(child)


def test_malformed_and_forged_signals_are_dropped(node: str, shared_child: Child) -> None:
    pid, inbox = watcher()
    otp.call(pid, ("monitor", shared_child.echo))
    wait_until(lambda: shared_child.call("stats")["remote_monitors_in"] == 1)
    signals = ("dist_signals", node)
    before = dist.stats()
    # Bad shape: counted, nothing happens.
    assert shared_child.call("cast_to", signals, ("down", shared_child.node_id, "one", 1))
    wait_until(lambda: dist.stats().get("rx_bad_signals", 0) == before.get("rx_bad_signals", 0) + 1)
    # Speaking for another node: refused by the policy guard before anything is parsed.
    forged = ("link_exit", "other@127.0.0.1:9", "x", pid._id, "forged")
    assert shared_child.call("cast_to", signals, forged)
    wait_until(lambda: dist.stats().get("rx_refused", 0) == before.get("rx_refused", 0) + 1)
    # Well formed but for a monitor it never had: stale, and the watcher is unharmed.
    assert shared_child.call("cast_to", signals, ("down", shared_child.node_id, 10**6, "x"))
    wait_until(
        lambda: dist.stats().get("rx_stale_signals", 0) == before.get("rx_stale_signals", 0) + 1
    )
    assert pid.is_alive() and inbox.items == []
    otp.call(pid, ("die", "normal"))
    tables_empty(shared_child)


@pytest.mark.parametrize("limit", ["max_installed", "max_installed_per_node"])
def test_installed_links_and_monitors_are_bounded(
    node: str, shared_child: Child, limit: str
) -> None:
    """All nodes together, and each node alone (one member cannot take the others' room)."""
    signals = dist._running().signals
    over_limit = dist.stats().get("rx_signals_over_limit", 0)
    saved = getattr(signals, limit)
    setattr(signals, limit, 1)
    try:
        shared_child.call("spawn", "v_limited", True)
        pid, _ = watcher()
        monitors.allow_link("limited_here")
        otp.register("limited_here", pid)
        here = ("limited_here", node)
        kept = shared_child.call("victim", "v_limited", ("monitor", here))
        wait_until(lambda: dist.stats().get("remote_monitors_in") == 1)
        over = shared_child.call("victim", "v_limited", ("monitor", here))
        shared_child.call("victim", "v_limited", ("link", here))
        want = {("DOWN", over, here, "system_limit"), ("EXIT", here, "system_limit")}
        wait_until(lambda: set(shared_child.call("victim", "v_limited", ("infos",))) == want)
        assert dist.stats()["rx_signals_over_limit"] == over_limit + 2
        assert dist.stats()["remote_in_most_by_one_node"] == 1
        assert kept != over
    finally:
        setattr(signals, limit, saved)
    otp.call(pid, ("die", "normal"))
    shared_child.call("victim", "v_limited", ("die", "normal"))
    tables_empty(shared_child)
    wait_until(lambda: dist.stats()["remote_in_most_by_one_node"] == 0)


def test_a_demonitor_that_overtook_its_monitor_cancels_it(node: str, shared_child: Child) -> None:
    monitors.allow_link("overtaken")
    otp.register("overtaken", otp.start(Watcher, Inbox()))
    signals = ("dist_signals", node)
    me = shared_child.node_id
    # One thread sends both, so they arrive in this (wrong) order.
    assert shared_child.call("cast_to", signals, ("demonitor", me, 77))
    assert shared_child.call("cast_to", signals, ("monitor", me, 77, "overtaken"))
    assert shared_child.call("cast_to", signals, ("monitor", me, 78, "overtaken"))
    wait_until(lambda: dist.stats().get("remote_monitors_in") == 1)  # 78 only
    time.sleep(0.1)
    assert dist.stats().get("remote_monitors_in") == 1
    assert shared_child.call("cast_to", signals, ("demonitor", me, 78))
    tables_empty()


def test_stopping_distribution_is_noconnection_everywhere(node: str, shared_child: Child) -> None:
    shared_child.call("spawn", "v_stop", False)
    target = ("v_stop", shared_child.node_id)
    pid, inbox = watcher(trap=True)
    ref = otp.call(pid, ("monitor", target))
    otp.call(pid, ("link", target))
    wait_until(lambda: shared_child.call("stats")["remote_links_in"] == 1)
    dist.stop()
    items = inbox.wait_len(2)
    assert sorted(items, key=repr) == sorted(
        [("DOWN", ref, target, "noconnection"), ("EXIT", target, "noconnection")], key=repr
    )
    # Back on the network (under another port): the child dropped what we had installed.
    dist.start("parent@127.0.0.1:0", ping_interval=0.1, down_after=0.6, connect_timeout=0.6)
    tables_empty(shared_child)
    # Its end of the link heard the same: it does not trap exits, so it died of it.
    assert shared_child.call("reason", "v_stop") == (False, "noconnection")
