"""Every public API request and reply must survive msgpack, because with a ``(name, node)``
address on another OS process they cross the wire (``waraft.distribution``). Here the requests and
replies of in-process calls are round-tripped through the codec to prove it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.partition.helpers import addr, ident, start_node, state, wait_until
from waraft import otp
from waraft.core.types import LogPos
from waraft.partition import acceptor, server
from waraft.services import codec


@pytest.fixture
def over_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    real_call, real_cast = otp.call, otp.cast

    def call(target: Any, request: Any, timeout: float | None = 5.0) -> Any:
        if not isinstance(target, tuple):  # the partition's internal calls stay local
            return real_call(target, request, timeout)
        reply = real_call(target, codec.unpackb(codec.packb(request)), timeout)
        return codec.unpackb(codec.packb(reply))

    def cast(target: Any, msg: Any) -> None:
        if isinstance(target, tuple):  # only the caller's casts; reply handles stay local
            kind = msg[0]
            handles = [item[0] for item in msg[1]] if kind in ("commit_batch", "read_batch") else []
            wire = codec.unpackb(codec.packb(_strip_handles(msg)))
            msg = _restore_handles(wire, handles)
        real_cast(target, msg)

    monkeypatch.setattr(otp, "call", call)
    monkeypatch.setattr(otp, "cast", cast)


def _strip_handles(msg: Any) -> Any:
    if msg[0] in ("commit_batch", "read_batch"):
        return (msg[0], [(None, *item[1:]) for item in msg[1]], *msg[2:])
    return msg


def _restore_handles(msg: Any, handles: list[Any]) -> Any:
    if msg[0] in ("commit_batch", "read_batch"):
        items = [(h, *item[1:]) for h, item in zip(handles, msg[1], strict=True)]
        return (msg[0], items, *msg[2:])
    return msg


@pytest.mark.usefixtures("over_the_wire")
def test_admin_and_client_api_round_trip_through_msgpack(tmp_path: Path) -> None:
    node = start_node(tmp_path, "n1", [1])
    srv, acc = addr("server", node), addr("acceptor", node)
    config = server.make_config([ident(node)])
    assert server.bootstrap(srv, LogPos(1, 1), config, {"seed": 1}) == "ok"
    wait_until(lambda: state(node) == "leader")
    assert server.get_current_config(srv) == config
    assert server.is_peer_ready(srv, ident(node, 2)) == ("error", "not_a_participant")
    assert acceptor.commit(acc, (b"k", ("write", "t", "k", 5)), priority="low") == "ok"
    assert acceptor.read(acc, ("read", "t", "k")) == ("ok", 5)
    assert acceptor.read_after(acc, ("read", "t", "k"), 1) == ("ok", 5)
    handle = otp.LocalReplyTo()
    acceptor.commit_async(acc, handle, ("k2", ("write", "t", "k2", 6)))
    assert handle.wait(5) == "ok"
    assert server.promote(srv, ("next", 1), True) == "ok"
    status = server.status(srv)
    assert status["state"] == "leader" and status["current_term"] >= 2
    assert server.trigger_election(srv, "next") in ("ok", ("error", "rejected"))
    result = acceptor.adjust_config(acc, "refresh")
    assert result[0] == "ok" and LogPos(*result[1]).index > 0
