"""``waraft node --metrics HOST:PORT``: the node's figures in the Prometheus text format.

Served at ``/metrics`` (and ``/``) in ``prometheus_client``'s text format (the ``metrics``
extra) by a small HTTP server of threads of its own. A collection costs one call to the node's
``waraft_admin`` (``status_all``, which asks every local server for its status: about 11 us a
partition on the scheduler) plus reads of counters the runtime keeps anyway, and rendering the
page holds the interpreter for milliseconds at a thousand partitions. The endpoint has no
authentication (bind it to a private address), so what anyone can make it cost is bounded: a
page is collected at most once per ``MIN_COLLECT_INTERVAL`` (scrapes in between, or waiting on
the one collecting, get that page: a flood of scrapes costs the schedulers one ``status_all`` a
second, whose rows client keys' own ``status_all`` calls are then served, ``waraft.cli.admin``),
at most ``MAX_CONCURRENT_SCRAPES`` connections are served at once and at most
``MAX_SCRAPES_PER_SECOND`` a second (a connection past either is closed unanswered before any
thread or parsing, counted in ``refused``), and a connection is cut off
``SCRAPE_SOCKET_TIMEOUT`` after it was accepted, however it trickles its bytes (a timeout per
receive let four connections sending a byte every few seconds hold every slot for good).

Families (labels in brackets):

* per partition [table, partition]: ``waraft_partition_info`` [+ state, leader] (1),
  ``waraft_partition_term``, ``waraft_partition_commit_index``,
  ``waraft_partition_applied_index``, ``waraft_partition_log_entries``,
  ``waraft_partition_pending_commits``, ``waraft_partition_pending_reads``,
  ``waraft_partition_apply_queue``, ``waraft_partition_quiescent`` (1/0),
  ``waraft_partition_up`` (0 when its server did not answer), ``waraft_partition_log_bytes``;
  counters ``waraft_partition_commits_total`` (commits applied and answered) and
  ``waraft_partition_reads_total`` (strong reads admitted) and
  ``waraft_partition_elections_total`` (candidacies), since the partition started
  (``rate()`` gives them per second), and
  ``waraft_partition_snapshot_transfers_total`` [+ event: start, completed, failed, lost for
  snapshots this node sent, receive for those it took in];
* per durable log [log = its directory: the node's WAL, or a partition's disk log]: the
  histogram ``waraft_log_fsync_seconds`` (one sample per group commit);
* per node: ``waraft_quiescent_partitions``, ``waraft_heartbeat_frames`` /
  ``waraft_heartbeat_rpcs`` [peer] (coalesced heartbeat frames sent and the RPCs inside),
  ``waraft_heartbeat_frames_received``, ``waraft_peers_up``, ``waraft_peer_tx_messages`` /
  ``waraft_peer_rx_messages`` /
  ``waraft_peer_tx_bytes`` [peer: a member's node id, or ``clients`` for the sum over clients
  and admin tools], ``waraft_dist_messages_total`` /
  ``waraft_dist_bytes_total`` [direction], ``waraft_dist_dropped_total`` [reason],
  ``waraft_processes``, ``waraft_os_threads``, ``waraft_scheduler_run_queue`` [scheduler],
  ``waraft_scheduler_long_holds_total``; the process's cyclic GC [generation]:
  ``waraft_gc_threshold``, ``waraft_gc_collections_total`` and the histogram
  ``waraft_gc_pause_seconds`` (``waraft.services.gctune``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from waraft import otp
from waraft.cli import admin
from waraft.distribution.policy import TokenBucket
from waraft.log.provider import FSYNC_METRIC
from waraft.services import gctune, metrics
from waraft.services.recent import Recent

logger = logging.getLogger(__name__)

CLIENTS_PEER: Final = "clients"
"""The ``peer`` label of the per-peer figures summed over every peer that is not a member."""
SCRAPE_TIMEOUT = 5.0
"""Seconds a scrape waits for the node's status before it reports the node alone."""
MIN_COLLECT_INTERVAL = 1.0
"""Seconds between two collections of the page; scrapes in between are served the last one
(Prometheus scrapes every 15 s by default, so a scraper sees no difference)."""
MAX_CONCURRENT_SCRAPES = 4
"""Connections served at once; one past it is closed unanswered."""
MAX_SCRAPES_PER_SECOND = 20.0
"""Connections served a second, on average (bursts of as many); one past it is closed
unanswered. A Prometheus server scrapes a target every 15 s by default."""
SCRAPE_SOCKET_TIMEOUT = 5.0
"""Seconds a connection may last in all (its request, the page) before it is cut off."""

PARTITION_GAUGES: list[tuple[str, str, str]] = [
    ("term", "term", "Current Raft term"),
    ("commit", "commit_index", "Highest log index known committed"),
    ("applied", "applied_index", "Highest log index applied to storage"),
    ("pending_commits", "pending_commits", "Admitted commits not yet applied"),
    ("pending_reads", "pending_reads", "Strong reads waiting"),
    ("apply_queue", "apply_queue", "Entries waiting to be applied"),
    (
        "unresponsive_peers",
        "unresponsive_peers",
        "Participants that stopped answering this leader (0 on other replicas)",
    ),
]


PARTITION_COUNTERS: list[tuple[str, str, str]] = [
    ("commits_total", "commits", "Commits applied and answered (rate(): commits per second)"),
    ("reads_total", "reads", "Strong reads admitted (rate() gives reads per second)"),
    ("elections_total", "elections", "Elections this replica started (as candidate)"),
]


def _le(bound: float) -> str:
    """A bucket's upper bound as the text format writes it (``+Inf`` for the last)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class NodeCollector:
    """A ``prometheus_client`` collector for one otp node (see the module docstring)."""

    def __init__(self, node: otp.Node) -> None:
        self.node = node

    def rows(self) -> list[dict[str, Any]]:
        """The status rows of the node's partitions (empty if the admin does not answer)."""
        with self.node.activate():
            try:
                rows: list[dict[str, Any]] = list(
                    otp.call(admin.NAME, ("status_all",), SCRAPE_TIMEOUT)
                )
            except otp.ExitError as exc:
                logger.warning("metrics: no status from %s: %s", admin.NAME, exc.reason)
                return []
        return [r for r in rows if r.get("partition") is not None]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["table", "partition"]
        rows = self.rows()
        info = GaugeMetricFamily(
            "waraft_partition_info",
            "A partition's state and leader",
            labels=[*labels, "state", "leader"],
        )
        up = GaugeMetricFamily("waraft_partition_up", "1 when the server answered", labels=labels)
        gauges = {
            key: GaugeMetricFamily(f"waraft_partition_{name}", text, labels=labels)
            for key, name, text in PARTITION_GAUGES
        }
        entries = GaugeMetricFamily(
            "waraft_partition_log_entries", "Entries held in the log", labels=labels
        )
        quiet = GaugeMetricFamily(
            "waraft_partition_quiescent", "1 while the partition is quiescent", labels=labels
        )
        log_bytes = GaugeMetricFamily(
            "waraft_partition_log_bytes", "Bytes held by the log", labels=labels
        )
        totals = {
            field: CounterMetricFamily(f"waraft_partition_{name}", text, labels=labels)
            for field, name, text in PARTITION_COUNTERS
        }
        for row in rows:
            key = [str(row.get("table")), str(row.get("partition"))]
            answered = not row.get("error")
            up.add_metric(key, 1.0 if answered else 0.0)
            if not answered:
                continue
            info.add_metric([*key, str(row.get("state")), str(row.get("leader") or "")], 1.0)
            for field, family in gauges.items():
                value = _number(row.get(field))
                if value is not None:
                    family.add_metric(key, value)
            first, last = _number(row.get("log_first")), _number(row.get("log_last"))
            if first is not None and last is not None:
                entries.add_metric(key, max(0.0, last - first + 1))
            quiet.add_metric(key, 1.0 if row.get("quiescent") else 0.0)
            size = _number(row.get("log_bytes"))
            if size is not None:
                log_bytes.add_metric(key, size)
            for field, total in totals.items():
                value = _number(row.get(field))
                if value is not None:
                    total.add_metric(key, value)
        quiet_total = GaugeMetricFamily(
            "waraft_quiescent_partitions", "Local partitions quiescent now (of waraft_partition_up)"
        )
        quiet_total.add_metric([], float(sum(1 for r in rows if r.get("quiescent"))))
        yield from (info, up, *gauges.values(), entries, quiet, quiet_total, log_bytes)
        yield from totals.values()
        yield self._snapshot_transfers(CounterMetricFamily)
        yield self._fsync_latency()
        yield from self._gc_families(GaugeMetricFamily, CounterMetricFamily)
        yield from self._node_families(GaugeMetricFamily, CounterMetricFamily)

    def _snapshot_transfers(self, counter: Any) -> Any:
        family = counter(
            "waraft_partition_snapshot_transfers",
            "Snapshot transfers, by event (start/completed/failed/lost sent, receive taken in)",
            labels=["table", "partition", "event"],
        )
        events = metrics.partition_events(node=self.node.id)
        for (table, partition, name), value in sorted(events.items()):
            prefix, _, event = name.partition(".")
            if prefix == "snapshot_catchup":
                family.add_metric([table, str(partition), event], float(value))
        return family

    @staticmethod
    def _fsync_latency() -> Any:
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(
            "waraft_log_fsync_seconds", "Latency of a durable log's fsyncs", labels=["log"]
        )
        for label, snap in sorted(metrics.histograms(FSYNC_METRIC).items()):
            buckets = [(_le(bound), float(n)) for bound, n in snap["buckets"]]
            family.add_metric([label], buckets, sum_value=float(snap["sum"]))
        return family

    @staticmethod
    def _gc_families(gauge: Any, counter: Any) -> Iterator[Any]:
        import gc

        from prometheus_client.core import HistogramMetricFamily

        threshold = gauge(
            "waraft_gc_threshold",
            "The cyclic garbage collector's threshold per generation",
            labels=["generation"],
        )
        collections = counter(
            "waraft_gc_collections",
            "Collections of the node process's cyclic garbage collector",
            labels=["generation"],
        )
        for generation, (limit, stats) in enumerate(
            zip(gc.get_threshold(), gc.get_stats(), strict=True)
        ):
            threshold.add_metric([str(generation)], float(limit))
            collections.add_metric([str(generation)], float(stats["collections"]))
        yield threshold
        yield collections
        family = HistogramMetricFamily(
            "waraft_gc_pause_seconds",
            "Pauses of the node process's cyclic garbage collector (every partition waits)",
            labels=["generation"],
        )
        for label, snap in sorted(metrics.histograms(gctune.GC_PAUSE_METRIC).items()):
            buckets = [(_le(bound), float(n)) for bound, n in snap["buckets"]]
            family.add_metric([label.removeprefix("gen")], buckets, sum_value=float(snap["sum"]))
        yield family

    def _node_families(self, gauge: Any, counter: Any) -> Iterator[Any]:
        from waraft import distribution

        peers = distribution.peers()
        peers_up = gauge("waraft_peers_up", "Peers the node's liveness reports up")
        peers_up.add_metric([], float(sum(1 for p in peers.values() if p.get("state") == "up")))
        yield peers_up
        for field, name, text in (
            ("tx", "waraft_peer_tx_messages", "Messages sent to a peer over open links"),
            ("tx_bytes", "waraft_peer_tx_bytes", "Bytes sent to a peer over open links"),
            ("rx", "waraft_peer_rx_messages", "Messages received from a peer"),
        ):
            family = gauge(name, text, labels=["peer"])
            # Members by node id; clients and admin tools summed as "clients": the endpoint
            # answers anyone who reaches it, and must not list who else is connected (a
            # client key asking ``dist_peers`` is refused for that reason), nor grow a series
            # per short-lived client.
            clients: float | None = None
            for peer, figures in sorted(peers.items()):
                value = _number(figures.get(field))
                if value is None:
                    continue
                if figures.get("member"):
                    family.add_metric([peer], value)
                else:
                    clients = value if clients is None else clients + value
            if clients is not None:
                family.add_metric([CLIENTS_PEER], clients)
            yield family
        stats = distribution.stats()
        messages = counter("waraft_dist_messages", "Frames sent and received", labels=["direction"])
        volume = counter("waraft_dist_bytes", "Bytes sent and received", labels=["direction"])
        for direction, prefix in (("out", "tx"), ("in", "rx")):
            messages.add_metric([direction], float(stats.get(f"{prefix}_msgs", 0)))
            volume.add_metric([direction], float(stats.get(f"{prefix}_bytes", 0)))
        dropped = counter("waraft_dist_dropped", "Frames dropped, by reason", labels=["reason"])
        for name, value in sorted(stats.items()):
            if "dropped" in name or "refused" in name or name.startswith("rx_too"):
                dropped.add_metric([name], float(value))
        yield from (messages, volume, dropped)
        yield from self._heartbeat_families(counter)
        sched = otp.scheduler_stats(self.node)
        processes = gauge("waraft_processes", "Live otp processes on the node")
        processes.add_metric([], float(sched.get("processes", 0)))
        threads = gauge("waraft_os_threads", "OS threads of the node's Python process")
        threads.add_metric([], float(threading.active_count()))
        run_queue = gauge(
            "waraft_scheduler_run_queue", "Runnable processes per scheduler", labels=["scheduler"]
        )
        for index, length in enumerate(sched.get("run_queue", [])):
            run_queue.add_metric([str(index)], float(length))
        holds = counter(
            "waraft_scheduler_long_holds", "Runs of a process that held a scheduler too long"
        )
        holds.add_metric([], float(sched.get("long_holds", 0)))
        yield from (processes, threads, run_queue, holds)

    def _heartbeat_families(self, counter: Any) -> Iterator[Any]:
        """Coalesced heartbeats (``waraft.partition.heartbeats.stats``): frames and the RPCs
        they carried, per peer node sent to, and frames received from all peers."""
        from waraft.partition import heartbeats

        stats = heartbeats.stats()
        frames = counter(
            "waraft_heartbeat_frames", "Coalesced heartbeat frames sent", labels=["peer"]
        )
        rpcs = counter(
            "waraft_heartbeat_rpcs", "Heartbeats and answers sent inside frames", labels=["peer"]
        )
        for peer, sent in sorted(stats["sent"].items()):
            frames.add_metric([peer], float(sent["frames"]))
            rpcs.add_metric([peer], float(sent["rpcs"]))
        received = counter(
            "waraft_heartbeat_frames_received", "Coalesced heartbeat frames received"
        )
        received.add_metric([], float(stats["received"]["frames"]))
        yield from (frames, rpcs, received)


class Page(Recent[bytes]):
    """The rendered page, collected at most once per ``interval`` seconds (see ``Recent``);
    scrapes that arrive while one collects wait for it and share its page."""

    def __init__(
        self,
        render: Callable[[], bytes],
        interval: float = MIN_COLLECT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(render, interval, clock)
        self._lock = threading.Lock()

    def get(self, fresh: bool = False) -> bytes:
        with self._lock:  # the HTTP server's threads
            return super().get(fresh)


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` from a ``Page``, a thread per connection, at most ``max_concurrent`` at
    once and ``per_second`` a second (see the module docstring). ``refused`` counts
    connections closed unanswered."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        page: Page,
        max_concurrent: int = MAX_CONCURRENT_SCRAPES,
        per_second: float = MAX_SCRAPES_PER_SECOND,
    ) -> None:
        self.page = page
        self.refused = 0
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._rate = TokenBucket(per_second, per_second)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # The rate first: a connection refused by it takes no slot.
        if not self._rate.take(time.monotonic()) or not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # One deadline for the whole connection: shutting the socket down ends whatever
        # receive or send the handler is blocked in.
        deadline = threading.Timer(SCRAPE_SOCKET_TIMEOUT, _cut_off, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()


def _cut_off(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    timeout = SCRAPE_SOCKET_TIMEOUT
    server: MetricsServer

    def do_GET(self) -> None:  # http.server calls it by this name
        from prometheus_client import CONTENT_TYPE_LATEST

        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served")
            return
        try:
            body = self.server.page.get()
        except Exception:
            logger.exception("metrics: the page could not be collected")
            self.send_error(500, "collection failed (see the node's log)")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it format
        logger.debug("metrics: %s %s", self.address_string(), format % args)


def serve(host: str, port: int, node: otp.Node) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port``; returns the HTTP server (``shutdown()`` stops it).

    ``ImportError`` names the extra to install when ``prometheus_client`` is missing;
    ``OSError`` when the address cannot be bound."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError as exc:
        raise ImportError(
            "--metrics needs the prometheus-client package (pip install 'waraft[metrics]')"
        ) from exc
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    page = Page(lambda: generate_latest(registry))
    server = _bind(host, port, page)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def _bind(host: str, port: int, page: Page) -> MetricsServer:
    """The server bound to ``host:port`` (an IPv6 host binds an IPv6 socket)."""
    if ":" in host:

        class _Server6(MetricsServer):
            address_family = socket.AF_INET6

        return _Server6((host, port), page)
    return MetricsServer((host, port), page)


__all__ = ["MetricsServer", "NodeCollector", "Page", "serve"]
