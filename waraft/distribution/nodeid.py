"""Node ids: ``name@host:port``, which carry everything needed to reach a node.

A node id names one OS process and the ZeroMQ endpoint its ROUTER listens on, so a membership
config written with node ids works across machines without any registry. IPv6 hosts are written
in brackets (``n1@[::1]:7001``). The sending side of a connection identifies itself with the
ZeroMQ routing id ``<node_id>/<tag>``; :func:`sender_of` recovers the node id from it. A node
that belongs to a cluster ends the tag with ``#<cluster id>`` (:func:`routing_id`), so a
receiver can tell a node of another cluster from a member before anything it sent is admitted
(:func:`cluster_of`).

The node id and cluster id in a routing id are claims, which the receiver checks against the
connection's host and key; the tag is a secret. A node's ROUTER hands a routing id to the newest
connection presenting it (``ROUTER_HANDOVER``: a link reconnecting after a TCP drop gets its id
back), and the connection that held it stops being read while its sender, seeing no error,
keeps sending into it: whoever can present another connection's routing id cuts that
connection off. So every connection draws its tag from :func:`new_tag`, random and never
derived from a counter or a per-process value: the node at the other end of a connection
learns its routing id, and from it nothing about the ids of the sender's other connections.
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from typing import NamedTuple

MAX_ID_BYTES = 200
"""Routing ids are limited to 255 bytes by ZeroMQ; keep room for the ``/<tag>`` suffix."""
MAX_CLUSTER_ID_CHARS = 32
MAX_ROUTING_ID_BYTES = 255
"""ZeroMQ's limit on a routing id."""
TAG_BYTES = 15
"""Random bytes in a connection's tag: 120 bits, 20 characters of URL-safe base64. 128 bits
would take 22, and the longest node id (``MAX_ID_BYTES``) with the longest cluster id and a
probe's tag must stay within ``MAX_ROUTING_ID_BYTES``; 2**120 guesses, each a handshake with
the node, are as far out of reach."""
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


def new_tag(prefix: str = "") -> str:
    """A fresh tag for one connection's routing id: ``prefix`` and ``TAG_BYTES`` random bytes
    from :mod:`secrets` in URL-safe base64 (no ``/``, ``#`` or ``@``, which the routing id's
    parsers split on). Unguessable from any other tag this or any node has drawn (see the
    module docstring); ``prefix`` only tells kinds of connection apart in a capture."""
    return prefix + secrets.token_urlsafe(TAG_BYTES)


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
