"""Flow: non-blocking drop-on-full, pre-encoded payloads, large frames, link lifecycle."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from waraft import distribution as dist
from waraft import otp
from waraft.distribution import inline
from waraft.otp.sched import scheduled_caller
from waraft.otp.sched import sleep as otp_sleep
from waraft.services import codec

from .helpers import WAIT, Child, Inbox, start_sink, wait_until


@pytest.fixture
def tiny_queue_node() -> Iterator[str]:
    node_id = dist.start(
        "parent@127.0.0.1:0", sndhwm=10, ping_interval=0.1, down_after=5.0, connect_timeout=5.0
    )
    try:
        yield node_id
    finally:
        dist.stop()


@pytest.fixture
def stuck_peer() -> Iterator[str]:
    """A peer that accepts connections and never reads nor answers (a stopped process)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stuck = ctx.socket(zmq.ROUTER)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    try:
        port = stuck.bind_to_random_port("tcp://127.0.0.1")
        yield f"stuck@127.0.0.1:{port}"
    finally:
        ctx.destroy(linger=0)


def test_casts_to_a_stuck_peer_never_block_and_drops_are_counted(
    tiny_queue_node: str, stuck_peer: str
) -> None:
    # A peer that accepts the connection but never reads: its queues fill up.
    addr = ("anyone", stuck_peer)
    payload = dist.encode(b"x" * 20_000)
    n = 2000  # 40 MB: far beyond socket buffers and the 10-message queue
    started = time.monotonic()
    queued = sum(dist.cast_bytes(addr, payload) for _ in range(n))
    elapsed = time.monotonic() - started
    stats = dist.stats()
    assert queued < n
    assert stats["tx_dropped_full"] == n - queued
    assert stats["tx_msgs"] == queued
    assert elapsed < 5.0  # never blocked on the full queue
    assert dist.peers()[addr[1]]["tx_dropped_full"] == n - queued


def test_pre_encoded_payloads_are_delivered_as_if_cast(node: str, shared_child: Child) -> None:
    inbox = start_sink()
    payload = dist.encode(("cast_back", ("sink", node), ("pre", [1, 2])))
    assert dist.cast_bytes(shared_child.echo, payload)
    assert dist.cast_bytes(shared_child.echo, payload)  # the same bytes, shipped again
    info = dist.encode(("info_back", ("sink", node), "pre-info"))
    assert dist.send_bytes(shared_child.echo, info)
    items = inbox.wait_len(3)
    assert sorted(items) == [("cast", ("pre", (1, 2)))] * 2 + [("info", "pre-info")]


def _thread_cpu_s(thread: threading.Thread) -> float:
    """User + system CPU seconds of one thread of this process (Linux /proc)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_bursts_and_lone_frames_arrive_and_an_idle_receive_thread_sleeps(
    node: str, shared_child: Child
) -> None:
    # The receive loop reads a burst without asking EVENTS before each frame and goes back to
    # polling once a receive finds nothing: every frame of a burst and each lone frame after
    # it must arrive, and once the socket is empty the thread must sleep in poll, not spin.
    inbox = start_sink()
    entered, release = threading.Event(), threading.Event()

    def gate(msg: object, origin: str) -> bool:
        # Stalls the receive thread (as a slow handler or a GIL-bound turn would) so that the
        # burst below queues up in the ROUTER socket and is then read back to back.
        entered.set()
        release.wait(WAIT)
        return True

    inline.set_handler("gate", gate)
    try:
        assert dist.cast(shared_child.echo, ("cast_back", ("gate", node), "hold"))
        assert entered.wait(WAIT)
        burst = 300
        for i in range(burst):
            assert dist.cast(shared_child.echo, ("cast_back", ("sink", node), ("burst", i)))
        # No call to the child meanwhile: its answer would wait behind the stalled thread.
        # A quarter second lets the child echo the burst, within the liveness timeout.
        time.sleep(0.25)
        release.set()
        assert sorted(inbox.wait_len(burst)) == sorted(("cast", ("burst", i)) for i in range(burst))
    finally:
        release.set()
        inline.set_handler("gate", None)
    for i in range(3):  # lone frames, each after the socket drained
        time.sleep(0.05)
        assert dist.cast(shared_child.echo, ("cast_back", ("sink", node), ("lone", i)))
        inbox.wait_len(burst + i + 1)
    (receiver,) = [t for t in threading.enumerate() if t.name == "dist:recv"]
    before = _thread_cpu_s(receiver)
    time.sleep(1.0)
    assert _thread_cpu_s(receiver) - before < 0.3  # a spinning loop would use the whole second


def test_pre_encoded_payload_to_a_node_in_this_process(node: str) -> None:
    inbox = start_sink()
    assert dist.cast_bytes(("sink", node), dist.encode(("local", 1)))
    assert inbox.wait_len(1) == [("cast", ("local", 1))]


def test_invalid_pre_encoded_payload_is_dropped_by_the_receiver(
    node: str, shared_child: Child
) -> None:
    before = shared_child.call("stats").get("rx_malformed", 0)
    assert dist.cast_bytes(shared_child.echo, b"\xc1not msgpack")
    wait_until(lambda: shared_child.call("stats").get("rx_malformed", 0) == before + 1)
    assert shared_child.call("echo", "fine") == "fine"


def test_large_frames_and_entry_batches(node: str, shared_child: Child) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB: goes to libzmq without a copy
    assert shared_child.call("echo", blob) == blob
    entries = [(1, i, ("write", "t", f"k{i}", i)) for i in range(1000)]
    encoded = codec.packb(entries)
    assert shared_child.call("echo", encoded) == encoded  # entries encoded once, as bytes


def test_links_of_finished_threads_are_closed(node: str, shared_child: Child) -> None:
    assert shared_child.call("echo", 0) == 0

    sent = threading.Barrier(6, timeout=WAIT)
    release = threading.Event()

    def worker() -> None:
        assert dist.cast(shared_child.echo, ("nothing",))
        sent.wait()
        release.wait(WAIT)  # alive until its link is seen: the reaper must not take it early

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    sent.wait()
    outbound = dist._running().outbound
    links = [link for link in outbound._links if link.thread in threads]
    assert len(links) == 5 and not any(link.closed for link in links)
    release.set()
    for t in threads:
        t.join(WAIT)
    wait_until(lambda: dist.stats().get("links_reaped", 0) == 5, what="dead threads' links reaped")
    assert all(link.closed and link not in outbound._links for link in links)
    assert dist.stats()["tx_msgs"] >= 6  # totals survive the reaping


def test_concurrent_callers_each_get_their_own_answer(node: str, shared_child: Child) -> None:
    results: dict[int, list[object]] = {}

    def caller(k: int) -> None:
        results[k] = [otp.call(shared_child.echo, ("echo", (k, i)), 10.0) for i in range(50)]

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20.0)
    assert results == {k: [(k, i) for i in range(50)] for k in range(8)}


class _Ticker(otp.Process):
    """Answers at once: whether its scheduler thread runs at all."""

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        proc = scheduled_caller()
        return None if proc is None else id(proc._sched)


class _FullQueueCaller(otp.Process):
    """Fills its thread's link to a peer, then calls it (reporting to an inbox)."""

    def init(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        # Spawned from this scheduled process, the ticker shares its scheduler thread.
        ticker = otp.start(_Ticker)
        proc = scheduled_caller()
        return (ticker, None if proc is None else id(proc._sched))

    def handle_cast(self, msg: Any) -> None:
        addr, payload, timeout = msg
        queued = 0
        # Until the link stays full: the kernel's buffers take frames as libzmq hands them
        # over, once the connection is up.
        for _ in range(100):
            before = queued
            while dist.cast_bytes(addr, payload):
                queued += 1
            if queued == before and queued > 0:
                break
            otp_sleep(0.05)
        self.inbox.add(("filled", queued))
        started = time.monotonic()
        try:
            otp.call(addr, "anything", timeout)
        except otp.ExitError as exc:
            self.inbox.add(("outcome", exc.reason, time.monotonic() - started))


def test_a_call_waiting_for_queue_space_neither_blocks_its_scheduler_nor_outlives_nodedown(
    stuck_peer: str,
) -> None:
    """A scheduled process calls a peer whose link is full. It used to block its scheduler
    thread in a socket poll for the call's whole timeout (every other process on that thread
    stalled) and to learn ``nodedown`` only then; now it waits yielding the scheduler and
    fails as soon as the peer is found down."""
    dist.start(
        "parent@127.0.0.1:0", sndhwm=10, ping_interval=0.1, down_after=5.0, connect_timeout=3.0
    )
    try:
        inbox = Inbox()
        caller = otp.start(_FullQueueCaller, inbox, process_type="scheduled")
        ticker, caller_sched = otp.call(caller, "spawn ticker", WAIT)
        assert caller_sched is not None
        assert otp.call(ticker, "tick", WAIT) == caller_sched  # the same scheduler thread
        timeout = 8.0
        otp.cast(caller, (("anyone", stuck_peer), dist.encode(b"x" * 20_000), timeout))
        inbox.wait_len(1)  # ("filled", n): the link stays full, so the call waits for room
        time.sleep(0.05)  # let the call start waiting
        for _ in range(3):  # (the peer is marked down after connect_timeout)
            assert otp.call(ticker, "tick", 0.5) == caller_sched
        outcome = inbox.wait_len(2, timeout=timeout)[1]
        assert outcome[1] == ("nodedown", stuck_peer)
        assert outcome[2] < timeout / 2
        assert dist.stats().get("pending_calls", 0) == 0
    finally:
        dist.stop()
