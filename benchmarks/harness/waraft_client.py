"""The load generator's driver for waraft: :class:`waraft.client.Client`, used as a service
outside the cluster would use it.

* Coalescing on (scenarios a, d, e): the commands of one loop turn are handed over with one
  ``commit_many`` call; the client's sender thread puts everything queued for a partition's
  acceptor into one frame (and, with the client's default ``pack=True``, into one log entry:
  ``--client-options pack=false`` keeps one entry per command).
* Coalescing off (scenario b): ``Client(max_batch=1)`` and one ``commit_async`` per command, so
  every command travels in its own frame.
* Synchronous (scenario c): ``Client.commit``, one call after the other.

Results come back on the client's threads, through the client's ``callback=`` hook (no future
per request) or, with a client that has none, futures' done-callbacks; either way they land on
a ``SimpleQueue`` that :meth:`poll` drains, so the generator loop stays single-threaded.
"""

from __future__ import annotations

import inspect
import queue
import time
from typing import Any

from benchmarks.harness.driver import Driver
from benchmarks.harness.wire import OP_READ, OP_WRITE
from waraft.client import Client


def error_kind(result: Any) -> str | None:
    """None for a successful answer (``"ok"``, ``("ok", v)``, ``"not_found"``), else the error
    reason as a short string."""
    if type(result) is tuple and len(result) == 2 and result[0] == "error":
        reason = result[1]
        if isinstance(reason, tuple | list) and reason:
            return str(reason[0])
        return str(reason)
    return None


class WaraftDriver(Driver):
    def __init__(self, spec: dict[str, Any]) -> None:
        self.coalesces = bool(spec.get("coalesce", True))
        self.table = str(spec.get("table", "kv"))
        options: dict[str, Any] = dict(spec.get("client_options") or {})
        if not self.coalesces:
            options["max_batch"] = 1
        if "attempt_timeout_s" in spec:
            options["attempt_timeout"] = float(spec["attempt_timeout_s"])
        self.client = Client(
            list(spec["nodes"]),
            table=self.table,
            partitions=int(spec["partitions"]),
            timeout=float(spec.get("request_timeout_s", 10.0)),
            **options,
        )
        self.done: queue.SimpleQueue[tuple[int, int, Any]] = queue.SimpleQueue()
        self.callbacks = "callback" in inspect.signature(Client.commit_many).parameters
        self.writes: list[tuple[str, tuple[str, str, str, bytes]]] = []
        self.write_tokens: list[int] = []

    def connect(self, timeout: float) -> None:
        """Wait until a write to every partition succeeds (leaders known and serving)."""
        deadline = time.monotonic() + timeout
        partitions = self.client.partitions
        pending = set(range(1, partitions + 1))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"waraft partitions {sorted(pending)} never accepted a write")
            for p in sorted(pending):
                cmd = ("write", self.table, f"__bench_probe_{p}", b"")
                result = self.client.commit(p, cmd, timeout=min(remaining, 2.0))
                if error_kind(result) is None:
                    pending.discard(p)
            if pending:
                time.sleep(0.1)

    def submit(self, op: int, key: str, value: bytes | None, token: int) -> None:
        put = self.done.put
        if op == OP_WRITE:
            command = ("write", self.table, key, value)
            if self.coalesces:
                self.writes.append((key, command))  # type: ignore[arg-type]
                self.write_tokens.append(token)
                return
            if self.callbacks:
                self.client.commit_async(key, command, callback=lambda r: put((op, token, r)))
                return
            future = self.client.commit_async(key, command)
        else:
            read = ("read", self.table, key)
            if self.callbacks:
                self.client.read_async(key, read, callback=lambda r: put((op, token, r)))
                return
            future = self.client.read_async(key, read)
        self._watch(future, op, token)

    def flush(self) -> None:
        if not self.writes:
            return
        tokens = self.write_tokens
        if self.callbacks:
            put = self.done.put
            self.client.commit_many(
                self.writes, callback=lambda i, r: put((OP_WRITE, tokens[i], r))
            )
        else:
            for future, token in zip(self.client.commit_many(self.writes), tokens, strict=True):
                self._watch(future, OP_WRITE, token)
        self.writes = []
        self.write_tokens = []

    def _watch(self, future: Any, op: int, token: int) -> None:
        put = self.done.put
        future.add_done_callback(lambda f: put((op, token, f.result())))

    def poll(self, timeout: float) -> list[tuple[int, int, str | None]]:
        self.flush()
        done = self.done
        try:
            first = done.get(timeout=timeout) if timeout > 0 else done.get_nowait()
        except queue.Empty:
            return []
        out = [(first[0], first[1], error_kind(first[2]))]
        while True:
            try:
                op, token, result = done.get_nowait()
            except queue.Empty:
                return out
            out.append((op, token, error_kind(result)))

    def call(self, op: int, key: str, value: bytes | None, timeout: float) -> str | None:
        if op == OP_READ:
            return error_kind(self.client.read(key, ("read", self.table, key), timeout=timeout))
        return error_kind(
            self.client.commit(key, ("write", self.table, key, value), timeout=timeout)
        )

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.client.stats().items()}

    def close(self) -> None:
        self.client.close()
