"""Reply handles that cross nodes.

:class:`RemoteReplyTo` is the ``from_`` a local actor sees when a call came from another node:
completing it (from any thread, once) sends a REPLY or FAIL frame back to the caller's node
through the completing thread's own link. :class:`PendingCall` is the caller's side: a local
future that also remembers which node it waits on, so that a ``nodedown`` can fail it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from waraft.otp.reply import LocalReplyTo, ReplyTo

if TYPE_CHECKING:
    from waraft.dist.peers import Peer
    from waraft.dist.runtime import Dist


class RemoteReplyTo(ReplyTo):
    """``From`` of a call made on another node; ``reply``/``fail`` answer it over ZeroMQ."""

    __slots__ = ("_dist", "_peer", "_ref")

    def __init__(self, dist: Dist, peer: Peer, ref: int) -> None:
        super().__init__()
        self._dist = dist
        self._peer = peer
        self._ref = ref

    def __repr__(self) -> str:
        return f"RemoteReplyTo({self._peer.node_id!r}, {self._ref})"

    @property
    def node(self) -> str:
        """The caller's node id."""
        return self._peer.node_id

    def _complete(self, ok: bool, value: Any) -> None:
        self._dist.send_reply(self._peer, self._ref, ok, value)


class PendingCall(LocalReplyTo):
    """A call waiting for its REPLY/FAIL frame from ``node``."""

    __slots__ = ("node",)

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
