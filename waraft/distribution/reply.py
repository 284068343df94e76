"""Reply handles that cross nodes.

:class:`RemoteReplyTo` is the ``from_`` a local actor sees when a call came from another node:
completing it (from any thread, once) sends a REPLY or FAIL frame back to the caller's node
through the completing thread's own link. :class:`Outstanding` is the caller's side: the
handle to complete and the node it waits on, so that a ``nodedown`` can fail it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from waraft.otp.reply import ReplyTo

if TYPE_CHECKING:
    from waraft.distribution.peers import Peer
    from waraft.distribution.runtime import Dist


class RemoteReplyTo(ReplyTo):
    """``From`` of a call made on another node; ``reply``/``fail`` answer it over ZeroMQ."""

    __slots__ = ("_dist", "_peer", "_ref", "_run", "origin", "rights")

    def __init__(
        self,
        dist: Dist,
        peer: Peer,
        ref: int,
        origin: str | None = None,
        rights: frozenset[str] = frozenset(),
        run: int | None = None,
    ) -> None:
        super().__init__()
        self._dist = dist
        self._peer = peer
        self._ref = ref
        # The caller's run id, echoed with the answer: the peer entry outlives a restart of
        # the caller, so only this tells the answer's receiver whether it made the call.
        self._run = run
        # Who made the call, as the connection authenticated it (``inline``'s ``origin``):
        # the owner the client gateway stamps on a session register it carries.
        self.origin = origin
        # The rights of that connection (``policy``; every right without CURVE), for a
        # handler whose answer depends on who asks: ``waraft_admin`` serves ``status_all``
        # to client-only callers from a shared collection. None given: none at all.
        self.rights = rights

    def __repr__(self) -> str:
        return f"RemoteReplyTo({self._peer.node_id!r}, {self._ref})"

    @property
    def node(self) -> str:
        """The caller's node id."""
        return self._peer.node_id

    def _complete(self, ok: bool, value: Any) -> None:
        self._dist.send_reply(self._peer, self._ref, ok, value, self._run)


class Outstanding:
    """A request sent to ``node`` whose REPLY/FAIL has not arrived: the handle it completes
    and, for asynchronous requests, when it is given up (monotonic seconds)."""

    __slots__ = ("expires", "handle", "node")

    def __init__(self, handle: ReplyTo, node: str, expires: float | None) -> None:
        self.handle = handle
        self.node = node
        self.expires = expires
