"""OS thread names of the runtime's threads (what ``top -H`` and ``/proc`` show)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

import pytest

from waraft import otp
from waraft.otp import threadname

from .helpers import wait_until

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names")


@pytest.fixture(autouse=True)
def _once(process_type: str) -> Iterator[None]:
    # The nodes here choose their process type themselves; one run is enough.
    if process_type != otp.SCHEDULED:
        pytest.skip("thread names: run once, under the scheduled parameter")
    yield


def _os_names() -> set[str]:
    names = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.add(f.read().strip())
        except OSError:  # the thread ended while we looked
            pass
    return names


def test_names_are_cut_to_what_the_kernel_keeps_without_splitting_a_character() -> None:
    assert threadname.os_name("otp:sched:0") == b"otp:sched:0"
    assert threadname.os_name("x" * 20) == b"x" * 15
    cut = threadname.os_name("x" * 14 + "é")  # é is two bytes: it does not fit whole
    assert cut == b"x" * 14
    assert len(threadname.os_name("é" * 10)) <= threadname.MAX_BYTES


@linux_only
def test_a_thread_names_itself_for_the_os() -> None:
    seen: list[str] = []

    def body() -> None:
        assert otp.set_os_name("g12f-probe-thread-long")
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            seen.append(f.read().strip())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == ["g12f-probe-thre"]


@linux_only
def test_schedulers_and_the_timer_thread_carry_their_names() -> None:
    node = otp.Node("names@t", process_type=otp.SCHEDULED, schedulers=2)
    try:
        fired = threading.Event()
        ref = otp.timer.call_later(0.01, fired.set)  # starts the timer thread if not yet
        assert fired.wait(5.0) and not ref.active

        class Idle(otp.Process):
            pass

        with node.activate():
            Idle.start()
        wait_until(lambda: {"otp:sched:0", "otp:sched:1", "otp:timer"} <= _os_names())
    finally:
        node.stop()
