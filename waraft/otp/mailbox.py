"""Mailbox entries shared by the process, messaging and signal modules (internal).

A mailbox is a ``queue.SimpleQueue`` (a C queue: put/get cost a fraction of a microsecond and
take no Python-level lock). pykka's loop reads ``envelope.message`` and hands it to
``on_receive``; our ``message`` is the envelope itself, so one allocation carries the kind,
the payload and the reply handle.
"""

from __future__ import annotations

import queue
from typing import Any, ClassVar, Final
from typing import cast as _tcast

from waraft.otp.reply import ReplyTo

# Kinds. Small ints compare fast in the dispatch chain; the hot ones come first.
CAST: Final = 0
CALL: Final = 1
INFO: Final = 2
LINK_EXIT: Final = 3
EXIT: Final = 4
DOWN: Final = 5
STOP: Final = 6
WAKE: Final = 7

UNSET: Final[Any] = object()
"""Sentinel for 'no value' where None is a valid value (exit reasons, stop requests)."""


class Envelope:
    """One mailbox entry; ``reply_to`` is pykka's field and always None here (calls carry
    their own :class:`ReplyTo` in ``from_``)."""

    __slots__ = ("from_", "kind", "payload")
    reply_to: ClassVar[None] = None

    def __init__(self, kind: int, payload: Any, from_: ReplyTo | None = None) -> None:
        self.kind = kind
        self.payload = payload
        self.from_ = from_

    @property
    def message(self) -> Envelope:
        return self


WAKE_ENV: Final = Envelope(WAKE, None)


def as_inbox(inbox: object) -> queue.SimpleQueue[Any]:
    """pykka types the inbox as its own protocol; ours is always a SimpleQueue."""
    return _tcast("queue.SimpleQueue[Any]", inbox)
