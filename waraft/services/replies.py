"""Replies to client batches, coalesced per client (the acceptor's client gateway answers here).

Whoever completes a client batch (the acceptor for errors, storage as it applies) answers with
:func:`send_client_reply`; inside :func:`coalesced_replies` the replies a thread (or scheduled
process) completes leave together at the end of the block, one frame per client. Storage wraps
each applied batch in it, which is why this lives below both the partition's actors and the
storage layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from waraft import otp
from waraft.core.log import CONTAINER_SIZE, approx_command_size
from waraft.services import codec

REPLY_FRAME_BYTES: Final = 4 * 1024 * 1024
"""About how many bytes of results one reply frame carries. A batch whose results are larger
leaves in parts (``client_reply_part``); only a single result larger than this leaves in a
frame of its own."""

REPLY_TOO_LARGE: Final = ("error", "reply_too_large")
"""What a request is answered, in place of its result, when that one result cannot travel
in any frame to its client (larger than the distribution's ``max_frame_bytes``, 16 MiB by
default): sent as it was, the frame was dropped, the client waited out its deadline and took
the leader for failed, and each retry read and dropped the value again. A read is not
retried; a commit answered so was applied (only its result is lost)."""

REPLY_FRAME_OVERHEAD: Final = 64 * 1024
"""Bytes kept for the rest of a frame carrying one result (envelope, names, batch id, hint)."""


class _ReplyOutbox:
    __slots__ = ("depth", "pending")

    def __init__(self) -> None:
        self.depth = 0
        self.pending: dict[tuple[str, str], list[tuple[int, Any, Any, bool]]] | None = None


# A context variable rather than a thread-local: every thread and every greenlet (scheduled
# process) has a context of its own, so a process that yields inside the block does not
# collect the replies of the other processes sharing its scheduler thread.
_outbox_var: ContextVar[_ReplyOutbox] = ContextVar("waraft_reply_outbox")


def _outbox() -> _ReplyOutbox:
    try:
        return _outbox_var.get()
    except LookupError:
        box = _ReplyOutbox()
        _outbox_var.set(box)
        return box


def send_client_reply(
    addr: tuple[str, str], batch_id: int, results: Any, hint: Any, packed: bool = False
) -> None:
    """Answer a client batch: at once, or, inside ``coalesced_replies()``, together with every
    other reply to the same client in one ``("client_replies", [...])`` cast.

    ``packed``: the batch was one ``$batch`` item, so its one result is the list of its
    commands' answers, which a reply too large for a frame may split (``_send_parts``). Any
    other result is one value, however it is shaped."""
    outbox = _outbox()
    if outbox.depth:
        pending = outbox.pending
        if pending is None:
            pending = outbox.pending = {}
        pending.setdefault(addr, []).append((batch_id, results, hint, packed))
    elif type(results) is list and _results_size(results) > REPLY_FRAME_BYTES:
        _send_parts(addr, batch_id, results, hint, packed)
    else:
        otp.cast(addr, ("client_reply", batch_id, results, hint))


@contextmanager
def coalesced_replies() -> Iterator[None]:
    """Client-batch replies completed by this thread inside the block leave at its end, one
    frame per client: storage wraps each applied batch in it, so a burst of one-command
    requests costs one reply frame per client, not one per request."""
    outbox = _outbox()
    outbox.depth += 1
    try:
        yield
    finally:
        outbox.depth -= 1
        if not outbox.depth and outbox.pending:
            pending, outbox.pending = outbox.pending, None
            for addr, replies in pending.items():
                if len(replies) == 1:
                    send_client_reply(addr, *replies[0])
                else:
                    for chunk in _frames(replies):
                        if len(chunk) == 1:
                            send_client_reply(addr, *chunk[0])
                        else:
                            wire = [(bid, results, hint) for bid, results, hint, _ in chunk]
                            otp.cast(addr, ("client_replies", wire))


def _frames(
    replies: list[tuple[int, Any, Any, bool]],
) -> Iterator[list[tuple[int, Any, Any, bool]]]:
    """``replies`` cut into runs of about ``REPLY_FRAME_BYTES`` of results.

    One frame per client for everything a block completed was unbounded: a client reading
    large values in many small batches got replies coalesced into frames of 100 MB to 1 GB,
    built in memory and then dropped at the frame limit, so every reply in them was lost too.
    """
    chunk: list[tuple[int, Any, Any, bool]] = []
    size = 0
    for reply in replies:
        bytes_ = _results_size(reply[1])
        if chunk and size + bytes_ > REPLY_FRAME_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(reply)
        size += bytes_
    if chunk:
        yield chunk


def _send_parts(
    addr: tuple[str, str], batch_id: int, results: list[Any], hint: Any, packed: bool
) -> None:
    """Answer one batch whose results pass ``REPLY_FRAME_BYTES`` in several frames of about
    that size each, which the client puts together: ``("client_reply_part", batch_id, inner,
    start, total, part, hint)``, ``part`` being ``values[start:start + len(part)]`` of the
    ``total`` values. ``inner`` says what ``values`` are: the results themselves, or the items
    of the batch's one result (a packed ``$batch``: one result, a list with an answer per
    command). Only a ``packed`` batch is split inside: one request whose own result is a list
    (a provider's command of one's own) was cut into its items, which the client, expecting
    one answer, dropped: the request was never answered.

    In one frame, a batch of 136 reads of a 1 MiB value made a 136 MiB reply: dropped at the
    frame limit, so not one of its reads was answered, and the client's retries asked for
    the same again (measured: 4 answers to 1,089 reads in 10 s, ``benchmarks/read_replies.py``)."""
    inner = packed and len(results) == 1 and type(results[0]) is list
    values: list[Any] = results[0] if inner else results
    limit = _value_limit(addr[1])
    if limit is not None:
        values = [_fitting(value, limit) for value in values]
        results = [values] if inner else values
    total = len(values)
    if total < 2:  # one value larger than a part: nothing to split
        otp.cast(addr, ("client_reply", batch_id, results, hint))
        return
    start = size = 0
    for index, value in enumerate(values):
        bytes_ = approx_command_size(value)
        if index > start and size + bytes_ > REPLY_FRAME_BYTES:
            part = values[start:index]
            otp.cast(addr, ("client_reply_part", batch_id, inner, start, total, part, hint))
            start, size = index, 0
        size += bytes_
    part = values[start:]
    otp.cast(addr, ("client_reply_part", batch_id, inner, start, total, part, hint))


def _value_limit(node_id: str) -> int | None:
    """The most bytes one result may encode to in a reply to ``node_id`` (None: no limit)."""
    frame = _frame_limit(node_id)
    return None if frame is None else frame - REPLY_FRAME_OVERHEAD


def _frame_limit(node_id: str) -> int | None:
    """The largest frame a message to ``node_id`` can travel in, from the installed remote
    router (the distribution: its optional ``frame_limit``); None in process or without one.
    Asked of the router, not imported: services sit below the distribution."""
    router = otp.node.remote_router()
    limit_of = getattr(router, "frame_limit", None)
    if limit_of is None:
        return None
    limit: int | None = limit_of(node_id)
    return limit


def _fitting(value: Any, limit: int) -> Any:
    """``value``, or ``REPLY_TOO_LARGE`` if it encodes to more than ``limit`` bytes. Only a
    value whose estimate passes an eighth of ``limit`` is encoded to tell: the estimate
    counts each string and bytes value's length and at least a byte for everything else,
    so only values made mostly of empty strings encode to 8 times more."""
    if approx_command_size(value) <= limit // 8:
        return value
    try:
        encoded = len(codec.packb(value))
    except codec.CodecError:
        return value  # storage answers those unencodable_result already
    return REPLY_TOO_LARGE if encoded > limit else value


def _results_size(results: Any) -> int:
    """``approx_command_size`` of a batch's results, without walking the usual ones: writes
    answer ``"ok"`` (a list of them for a ``$batch``), which this runs over per committed
    command at hundreds of thousands a second."""
    if results == "ok":
        return 2
    if type(results) is list and results.count("ok") == len(results):
        return CONTAINER_SIZE + 2 * len(results)
    return approx_command_size(results)


__all__ = ["REPLY_FRAME_BYTES", "REPLY_TOO_LARGE", "coalesced_replies", "send_client_reply"]
