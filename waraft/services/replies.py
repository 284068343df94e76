"""Replies to client batches, coalesced per client (the acceptor's client gateway answers here).

Whoever completes a client batch (the acceptor for errors, storage as it applies) answers with
:func:`send_client_reply`; inside :func:`coalesced_replies` the replies a thread completes leave
together at the end of the block, one frame per client. Storage wraps each applied batch in it,
which is why this lives below both the partition's actors and the storage layer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from waraft import otp


class _ReplyOutbox(threading.local):
    depth = 0
    pending: dict[tuple[str, str], list[tuple[int, Any, Any]]] | None = None


_outbox = _ReplyOutbox()


def send_client_reply(addr: tuple[str, str], batch_id: int, results: Any, hint: Any) -> None:
    """Answer a client batch: at once, or, inside ``coalesced_replies()``, together with every
    other reply to the same client in one ``("client_replies", [...])`` cast."""
    if _outbox.depth:
        pending = _outbox.pending
        if pending is None:
            pending = _outbox.pending = {}
        pending.setdefault(addr, []).append((batch_id, results, hint))
    else:
        otp.cast(addr, ("client_reply", batch_id, results, hint))


@contextmanager
def coalesced_replies() -> Iterator[None]:
    """Client-batch replies completed by this thread inside the block leave at its end, one
    frame per client: storage wraps each applied batch in it, so a burst of one-command
    requests costs one reply frame per client, not one per request."""
    _outbox.depth += 1
    try:
        yield
    finally:
        _outbox.depth -= 1
        if not _outbox.depth and _outbox.pending:
            pending, _outbox.pending = _outbox.pending, None
            for addr, replies in pending.items():
                if len(replies) == 1:
                    otp.cast(addr, ("client_reply", *replies[0]))
                else:
                    otp.cast(addr, ("client_replies", replies))


__all__ = ["coalesced_replies", "send_client_reply"]
