"""The unauthenticated metrics endpoint bounds what scrapers can make it cost: a page is
collected at most once per interval, and only a few connections are served at once."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from waraft.cli import metrics
from waraft.cli.metrics import MetricsServer, Page


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_scrapes_within_the_interval_share_one_collection() -> None:
    clock = FakeClock()
    renders: list[float] = []

    def render() -> bytes:
        renders.append(clock.now)
        return f"page {len(renders)}".encode()

    page = Page(render, interval=1.0, clock=clock)
    assert [page.get() for _ in range(50)] == [b"page 1"] * 50
    clock.now = 0.999
    assert page.get() == b"page 1"
    clock.now = 1.0
    assert page.get() == b"page 2" and page.collections == 2


def test_scrapes_that_arrive_during_a_collection_wait_for_it_and_share_it() -> None:
    started, release = threading.Event(), threading.Event()
    count = [0]

    def render() -> bytes:
        count[0] += 1
        started.set()
        release.wait(10)
        return b"slow page"

    page = Page(render, interval=60.0)
    answers: list[bytes] = []
    threads = [threading.Thread(target=lambda: answers.append(page.get())) for _ in range(8)]
    for t in threads:
        t.start()
    assert started.wait(10)
    time.sleep(0.1)  # the others are queued on the page's lock
    release.set()
    for t in threads:
        t.join(10)
    assert answers == [b"slow page"] * 8 and count[0] == 1


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    calls = [0]

    def render() -> bytes:
        calls[0] += 1
        return b"waraft_up 1\n"

    srv = MetricsServer(
        ("127.0.0.1", 0), Page(render, interval=0.0), max_concurrent=1, per_second=1000.0
    )
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def _get(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


_CLOSED = (urllib.error.URLError, http.client.HTTPException, ConnectionError)


def _get_when_free(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    """``_get``, retried while the only slot is still held by the previous connection's
    thread (it releases it just after the answer went out)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return _get(port, path)
        except _CLOSED:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_connections_past_the_limit_are_closed_and_the_slot_comes_back(
    server: MetricsServer,
) -> None:
    port = server.server_address[1]
    assert _get_when_free(port) == (200, b"waraft_up 1\n")
    assert _get_when_free(port, "/other")[0] == 404
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # holds the only slot
    try:
        deadline = time.monotonic() + 5
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                _get(port)
            except _CLOSED:
                refused = True
        assert refused and server.refused >= 1
    finally:
        idle.close()
    assert _get_when_free(port) == (200, b"waraft_up 1\n")  # the slot came back


def test_scrapes_past_the_rate_are_closed_unanswered() -> None:
    page = Page(lambda: b"waraft_up 1\n", interval=0.0)
    srv = MetricsServer(("127.0.0.1", 0), page, max_concurrent=4, per_second=2.0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        port = srv.server_address[1]
        outcomes: list[Any] = []
        started = time.monotonic()
        for _ in range(20):
            try:
                outcomes.append(_get(port)[0])
            except _CLOSED:
                outcomes.append("closed")
        elapsed = time.monotonic() - started
        # A burst of 2, then 2 a second (bounded by the time the scrapes took, however slow
        # the machine), and the rest closed unanswered.
        assert 2 <= outcomes.count(200) <= 2 + 2 * elapsed + 1, (outcomes, elapsed)
        assert outcomes.count("closed") == 20 - outcomes.count(200) == srv.refused
        assert srv.refused > 0 or elapsed > 8
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def test_a_connection_that_trickles_its_request_is_cut_off_at_the_deadline(
    server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeout used to apply to each receive: a byte every few seconds kept a connection
    (and with four of them every slot) for good. A connection now has one deadline."""
    monkeypatch.setattr(metrics, "SCRAPE_SOCKET_TIMEOUT", 1.0)
    port = server.server_address[1]
    assert _get_when_free(port) == (200, b"waraft_up 1\n")
    slow = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        started = time.monotonic()
        cut = False
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 4:  # one byte each 0.2 s
            try:
                slow.sendall(bytes((byte,)))
            except OSError:
                cut = True
                break
            slow.settimeout(0.2)
            try:
                if slow.recv(1) == b"":
                    cut = True
                    break
            except TimeoutError:
                pass
            except OSError:
                cut = True
                break
            if time.monotonic() - started > 4.0:
                break
        assert cut, "the trickling connection was never cut off"
        assert time.monotonic() - started < 3.0
    finally:
        slow.close()
    assert _get_when_free(port) == (200, b"waraft_up 1\n")  # its slot came back
