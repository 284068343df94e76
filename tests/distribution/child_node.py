"""A tiny waraft node for the multi-process dist tests (run with ``sys.executable``).

Usage: ``python child_node.py NODE_ID [--curve=PUBLIC,SECRET [--allow=KEY]...
[--server-key NODE_ID=KEY]...] [--ping S] [--down S]``. Give keys in the ``--option=value``
form: a Z85 key may begin with ``-``, which argparse would otherwise take for an option.
Starts distribution, registers an ``echo`` process, prints ``READY <node id>`` on stdout and
runs until stdin closes (the parent's end of the pipe) or ``("stop",)`` is called.

``echo`` understands calls ``("echo", x)``, ``("defer", x)`` (replied from another thread),
``("later", seconds, x)`` (answered ``("later", x)`` that much later),
``("noreply",)``, ``("unencodable",)``, ``("crash",)``, ``("stats",)``, ``("peers",)``,
``("cast_to", addr, msg)``, ``("send_to", addr, msg)``, ``("call_to", addr, req, timeout)``,
``("flood", addr, n)``, ``("flood_for", addr, seconds)`` (casts to ``addr`` from a thread of
its own for that long, as fast as they go; returns at once), ``("set_fault", nodes)``,
``("clear_fault",)``, ``("stop",)``, and
casts/infos ``("cast_back", addr, msg)`` / ``("info_back", addr, msg)`` (answered with a cast/send).

For links and monitors across nodes: ``("spawn", name, trap_exit)`` starts a :class:`Victim`
registered as ``name``; ``("victim", name, request)`` calls it (see :class:`Victim`);
``("reason", name)`` is ``(alive, exit_reason)`` of the last victim started as ``name``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from waraft import distribution as dist
from waraft import otp
from waraft.distribution import monitors

_done = threading.Event()
_victims: dict[str, otp.Pid] = {}


def _plain(value: Any) -> Any:
    """``value`` with pids and refs as their repr, so that it can travel back."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (otp.Ref, otp.Pid, otp.RemotePid)):
        return repr(value)
    return value


class Victim(otp.Process):
    """Monitored or linked from the test process. Calls: ``("die", reason)`` (stops with
    it), ``("link", addr)``, ``("monitor", addr)`` (returns the ref's repr), ``("unlink",
    addr)``, ``("infos",)`` (the EXIT/DOWN messages it got, refs and pids as reprs)."""

    def init(self, trap: bool) -> None:
        self.trap_exit = trap
        self.infos: list[Any] = []

    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        op = request[0]
        if op == "die":
            self.stop_self(request[1])
            return "ok"
        if op == "link":
            otp.link(tuple(request[1]))
            return "ok"
        if op == "unlink":
            otp.unlink(tuple(request[1]))
            return "ok"
        if op == "monitor":
            return repr(otp.monitor(tuple(request[1])))
        if op == "infos":
            return tuple(self.infos)
        raise ValueError(f"unknown request {request!r}")

    def handle_info(self, msg: Any) -> None:
        self.infos.append(_plain(msg))


class Crasher(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        raise ValueError("asked to crash")


class Echo(otp.Process):
    def handle_call(self, request: Any, from_: otp.ReplyTo) -> Any:
        op = request[0]
        if op == "echo":
            return request[1]
        if op == "defer":
            threading.Timer(0.01, from_.reply, args=(("deferred", request[1]),)).start()
            return otp.NOREPLY
        if op == "later":  # ("later", seconds, x): replied from a timer thread
            threading.Timer(request[1], from_.reply, args=(("later", request[2]),)).start()
            return otp.NOREPLY
        if op == "unencodable":
            return object()
        if op == "noreply":
            return otp.NOREPLY
        if op == "crash":
            # The reply handle goes to a throwaway process that crashes while holding it, so
            # the caller must see that process's exit reason (and echo stays up).
            otp.send_request(otp.start(Crasher), request, from_)
            return otp.NOREPLY
        if op == "stats":
            return dist.stats()
        if op == "peers":
            return dist.peers()
        if op == "cast_to":
            return dist.cast(tuple(request[1]), request[2])
        if op == "send_to":
            return dist.send(tuple(request[1]), request[2])
        if op == "call_to":
            try:
                return ("ok", otp.call(tuple(request[1]), request[2], request[3]))
            except otp.ExitError as exc:
                return ("exit", exc.reason)
        if op == "flood":
            addr, n = tuple(request[1]), request[2]
            return sum(dist.cast(addr, ("flood", i)) for i in range(n))
        if op == "flood_for":
            flood = threading.Thread(target=_flood, args=(tuple(request[1]), request[2]))
            flood.daemon = True
            flood.start()
            return "ok"
        if op == "set_fault":
            dist.set_fault(request[1])
            return "ok"
        if op == "clear_fault":
            dist.clear_fault()
            return "ok"
        if op == "stop":
            _done.set()
            return "ok"
        if op == "spawn":
            monitors.allow_link(request[1])
            _victims[request[1]] = otp.start(Victim, request[2], name=request[1])
            return "ok"
        if op == "victim":
            return otp.call(request[1], request[2], 5.0)
        if op == "reason":
            pid = _victims[request[1]]
            return (pid.is_alive(), pid.exit_reason)
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, msg: Any) -> None:
        if msg[0] == "cast_back":
            otp.cast(tuple(msg[1]), msg[2])

    def handle_info(self, msg: Any) -> None:
        if isinstance(msg, tuple) and msg and msg[0] == "info_back":
            otp.send(tuple(msg[1]), msg[2])


def _flood(addr: tuple[str, str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    i = 0
    while not _done.is_set() and time.monotonic() < deadline:
        for _ in range(1000):  # (the clock between batches only)
            dist.cast(addr, ("flood", i))
            i += 1


def _watch_stdin() -> None:
    sys.stdin.read()  # returns when the parent closes the pipe (or dies)
    _done.set()


def main() -> None:
    from waraft.distribution import policy

    policy.open_unlisted_names(True)  # test processes' names accept everything
    parser = argparse.ArgumentParser()
    parser.add_argument("node_id")
    parser.add_argument("--curve", metavar="PUBLIC,SECRET")  # Z85 has no comma
    parser.add_argument("--allow", action="append", default=[], help="extra client key")
    parser.add_argument(
        "--server-key", action="append", default=[], help="NODE_ID=KEY (Z85 keys may contain =)"
    )
    parser.add_argument("--ping", type=float, default=0.2)
    parser.add_argument("--down", type=float, default=1.0)
    args = parser.parse_args()
    curve = None
    if args.curve:
        public, secret = args.curve.split(",")
        curve: dict[str, Any] | None = {"public_key": public, "secret_key": secret}
        assert curve is not None
        if args.allow:
            curve["allowed_clients"] = [public, *args.allow]
        curve["server_keys"] = dict(item.split("=", 1) for item in args.server_key)
    node_id = dist.start(
        args.node_id,
        curve=curve,
        ping_interval=args.ping,
        down_after=args.down,
        connect_timeout=args.down,
    )
    otp.start(Echo, name="echo")
    threading.Thread(target=_watch_stdin, daemon=True).start()
    print(f"READY {node_id}", flush=True)
    _done.wait()
    otp.node.stop_all(timeout=2.0)
    dist.stop()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
