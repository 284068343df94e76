"""otp's side of links and monitors across nodes: what it hands to the installed
``RemoteSignals`` and how it delivers what comes back (a recording double stands in for
``waraft.distribution``, which tests/distribution/test_remote_signals.py covers for real)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from waraft import otp
from waraft.otp import node
from waraft.otp.pid import MonitorRef, Ref, RemoteLinkEnd, RemoteWatcher
from waraft.otp.signals import remote_down, remote_link_exit

from .helpers import WAIT, Events
from .test_links import Linker

FAR = ("far", "other@10.0.0.1:7000")  # a node outside this process


class Recorder:
    """A RemoteSignals that records every call."""

    def __init__(self) -> None:
        self.calls = Events()

    def monitor(self, watcher: otp.Pid, ref: MonitorRef, addr: tuple[str, str]) -> None:
        self.calls.add(("monitor", watcher, ref, addr))

    def demonitor(self, ref: MonitorRef) -> None:
        self.calls.add(("demonitor", ref))

    def link(self, pid: otp.Pid, addr: tuple[str, str]) -> None:
        self.calls.add(("link", pid, addr))

    def unlink(self, pid: otp.Pid, addr: tuple[str, str]) -> None:
        self.calls.add(("unlink", pid, addr))

    def exited(self, pid: otp.Pid, end: RemoteLinkEnd, reason: Any) -> None:
        self.calls.add(("exited", pid, end, reason))

    def down(self, watcher: RemoteWatcher, ref: Ref, pid: otp.Pid, reason: Any) -> None:
        self.calls.add(("down", watcher, pid, reason))


@pytest.fixture
def carrier() -> Iterator[Recorder]:
    recorder = Recorder()
    node.set_remote_signals(recorder)
    yield recorder
    node.set_remote_signals(None)


def linker(trap: bool = False) -> tuple[otp.Pid, Events]:
    events = Events()
    return otp.start(Linker, events, "w", trap), events


def test_without_distribution_a_remote_monitor_is_noconnection() -> None:
    pid, events = linker()
    ref = otp.call(pid, ("monitor", FAR))
    assert events.wait_len(1) == [("w", ("DOWN", ref, FAR, "noconnection"))]


def test_without_distribution_a_remote_link_is_noconnection() -> None:
    pid, events = linker(trap=True)
    otp.call(pid, ("link", FAR))
    assert events.wait_len(1) == [("w", ("EXIT", FAR, "noconnection"))]
    plain, _ = linker()
    with pytest.raises(otp.ExitError) as err:  # it dies handling the call, as in Erlang
        otp.call(plain, ("link", FAR))
    assert err.value.reason == "noconnection"
    assert otp.wait_exit(plain, WAIT) == "noconnection"


def test_monitor_is_handed_over_and_its_down_delivered(carrier: Recorder) -> None:
    pid, events = linker()
    ref = otp.call(pid, ("monitor", FAR))
    assert carrier.calls.list() == [("monitor", pid, ref, FAR)]
    remote_down(pid, ref, FAR, ("custom", 1))
    assert events.wait_len(1) == [("w", ("DOWN", ref, FAR, ("custom", 1)))]


def test_demonitor_is_handed_over_and_flushes(carrier: Recorder) -> None:
    pid, events = linker()
    ref = otp.call(pid, ("monitor", FAR))
    assert otp.call(pid, ("demonitor", ref)) is True
    assert carrier.calls.list()[-1] == ("demonitor", ref)
    remote_down(pid, ref, FAR, "late")  # crossed the demonitor on the wire: dropped
    marker = otp.call(pid, ("monitor", "nobody"))  # its DOWN (noproc) queues behind
    assert events.wait_len(1) == [("w", ("DOWN", marker, "nobody", "noproc"))]


def test_a_dying_watcher_cancels_its_remote_monitors(carrier: Recorder) -> None:
    pid, _ = linker()
    ref = otp.call(pid, ("monitor", FAR))
    otp.stop(pid)
    assert carrier.calls.wait_len(2)[1] == ("demonitor", ref)


def test_link_exit_and_unlink_are_handed_over(carrier: Recorder) -> None:
    pid, _ = linker()
    otp.call(pid, ("link", FAR))
    otp.call(pid, ("link", FAR))  # already linked: not handed over twice
    assert carrier.calls.list() == [("link", pid, FAR)]
    otp.call(pid, ("unlink", FAR))
    assert carrier.calls.list()[-1] == ("unlink", pid, FAR)
    otp.call(pid, ("link", FAR))
    otp.exit(pid, "boom")
    assert carrier.calls.wait_len(4)[3] == ("exited", pid, FAR, "boom")


def test_remote_exit_kills_or_is_trapped(carrier: Recorder) -> None:
    plain, _ = linker()
    otp.call(plain, ("link", FAR))
    remote_link_exit(plain, FAR, "boom")
    assert otp.wait_exit(plain, WAIT) == "boom"
    # The exit came over that link: it is not reported back along it.
    assert not [c for c in carrier.calls.list() if c[0] == "exited"]
    trapper, events = linker(trap=True)
    otp.call(trapper, ("link", FAR))
    remote_link_exit(trapper, FAR, "boom")
    assert events.wait_len(1) == [("w", ("EXIT", FAR, "boom"))]
    assert trapper.is_alive()


def test_remote_exit_after_unlink_is_ignored(carrier: Recorder) -> None:
    pid, _ = linker()
    otp.call(pid, ("link", FAR))
    otp.call(pid, ("unlink", FAR))
    remote_link_exit(pid, FAR, "boom")  # a kill would take effect before this returns
    assert pid.is_alive()


def test_remote_watchers_and_links_of_a_dying_process_are_told(carrier: Recorder) -> None:
    pid, _ = linker()
    watcher = RemoteWatcher("other@10.0.0.1:7000", 7)
    end = otp.RemotePid("other@10.0.0.1:7000", 3)
    with pid._lock:
        pid._monitors[Ref()] = watcher
        pid._links.add(end)
    otp.exit(pid, "boom")
    calls = carrier.calls.wait_len(2)
    assert ("exited", pid, end, "boom") in calls
    assert ("down", watcher, pid, "boom") in calls
