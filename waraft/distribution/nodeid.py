"""Node ids: ``name@host:port``, which carry everything needed to reach a node.

A node id names one OS process and the ZeroMQ endpoint its ROUTER listens on, so a membership
config written with node ids works across machines without any registry. IPv6 hosts are written
in brackets (``n1@[::1]:7001``). The sending side of a connection identifies itself with the
ZeroMQ routing id ``<node_id>/<tag>``; :func:`sender_of` recovers the node id from it. A node
that belongs to a cluster ends the tag with ``#<cluster id>`` (:func:`routing_id`), so a
receiver can tell a node of another cluster from a member before anything it sent is admitted
(:func:`cluster_of`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

MAX_ID_BYTES = 200
"""Routing ids are limited to 255 bytes by ZeroMQ; keep room for the ``/<tag>`` suffix."""
MAX_CLUSTER_ID_CHARS = 32
_CLUSTER_ID = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_CLUSTER_ID_CHARS}}}")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
"""A node name: what ``waraft node --name`` takes (and the names clients and tools make)."""
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]")
"""A host name or IPv4 address, or an IPv6 address in brackets (with a zone, maybe). Node ids
also arrive from the network (routing ids, configs): a host with a space, a newline or a
``;`` passed, went into log lines as it came and into endpoints that other tools split
wrongly."""


class NodeAddress(NamedTuple):
    """The parts of a node id."""

    name: str
    host: str
    port: int


class NodeIdError(ValueError):
    """Not a node id of the form ``name@host:port``."""


@lru_cache(maxsize=4096)
def parse(node_id: str) -> NodeAddress:
    """Split ``name@host:port``; raises :class:`NodeIdError` if it is not one."""
    name, at, hostport = node_id.partition("@")
    host, colon, port_text = hostport.rpartition(":")
    if not at or not colon or not name or not host or "/" in node_id or "@" in hostport:
        raise NodeIdError(f"not a node id (name@host:port): {node_id!r}")
    if len(node_id.encode()) > MAX_ID_BYTES:
        raise NodeIdError(f"node id longer than {MAX_ID_BYTES} bytes: {node_id!r}")
    if host.startswith("[") != host.endswith("]"):
        raise NodeIdError(f"unbalanced brackets around the host: {node_id!r}")
    if not is_node_name(name):
        raise NodeIdError(f"a node name is letters, digits, '_', '.' and '-': {node_id!r}")
    if not _HOST.fullmatch(host):
        raise NodeIdError(
            f"a node id's host is a host name, an IPv4 address or [an IPv6 address]: {node_id!r}"
        )
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise NodeIdError(f"bad port in node id: {node_id!r}")
    return NodeAddress(name, host, int(port_text))


def is_node_name(name: str) -> bool:
    """Whether ``name`` may be the name part of a node id (``_NAME``)."""
    return _NAME.fullmatch(name) is not None


def make(name: str, host: str, port: int) -> str:
    """The node id for ``name`` listening on ``host:port`` (validated)."""
    node_id = f"{name}@{host}:{port}"
    parse(node_id)
    return node_id


@lru_cache(maxsize=4096)
def endpoint(node_id: str) -> str:
    """The ZeroMQ endpoint (``tcp://host:port``) of a node."""
    address = parse(node_id)
    return f"tcp://{address.host}:{address.port}"


def with_port(node_id: str, port: int) -> str:
    """``node_id`` with its port replaced (used when binding to port 0)."""
    address = parse(node_id)
    return make(address.name, address.host, port)


def is_node_id(value: object) -> bool:
    """True if ``value`` is a well-formed node id."""
    if not isinstance(value, str):
        return False
    try:
        parse(value)
    except NodeIdError:
        return False
    return True


def check_cluster_id(value: object) -> str:
    """``value`` if it is a cluster id (1-32 of ``A-Z a-z 0-9 _ . -``); ``ValueError`` if not."""
    if not isinstance(value, str) or _CLUSTER_ID.fullmatch(value) is None:
        raise ValueError(
            f"not a cluster id (1-{MAX_CLUSTER_ID_CHARS} letters, digits, '_', '.', '-'): {value!r}"
        )
    return value


def routing_id(node_id: str, tag: str, cluster_id: str | None) -> bytes:
    """The routing id a connection of ``node_id`` presents: ``<node_id>/<tag>``, with
    ``#<cluster_id>`` after the tag when the node belongs to a cluster."""
    text = f"{node_id}/{tag}" if cluster_id is None else f"{node_id}/{tag}#{cluster_id}"
    return text.encode()


def cluster_of(routing_id: bytes) -> str | None:
    """The cluster id a routing id carries (None if it carries none or a malformed one)."""
    tag = routing_id.rpartition(b"/")[2]
    hash_, cluster = tag.rpartition(b"#")[1:]
    if not hash_:
        return None
    try:
        return check_cluster_id(cluster.decode())
    except (UnicodeDecodeError, ValueError):
        return None


def sender_of(routing_id: bytes) -> str | None:
    """The node id in a routing id ``<node_id>/<tag>``, or None if it is not one."""
    try:
        text = routing_id.decode()
    except UnicodeDecodeError:
        return None
    node_id, slash, tag = text.rpartition("/")
    if not slash or not tag or not is_node_id(node_id):
        return None
    return node_id
