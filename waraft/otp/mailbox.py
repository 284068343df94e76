"""Mailbox entries shared by the process, messaging and signal modules (internal).

A thread process's mailbox is a ``queue.SimpleQueue`` (a C queue: put/get cost a fraction of
a microsecond and take no Python-level lock); a scheduled process's is a
:class:`~waraft.otp.sched.SchedInbox`. pykka's loop reads ``envelope.message`` and hands it to
``on_receive``; our ``message`` is the envelope itself, so one allocation carries the kind,
the payload and the reply handle.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Protocol
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


class Inbox(Protocol):
    """What the runtime needs of a mailbox: ``queue.SimpleQueue`` (thread processes) and
    :class:`~waraft.otp.sched.SchedInbox` (scheduled processes) both provide it."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None: ...

    def get_nowait(self) -> Any: ...

    def qsize(self) -> int: ...

    def empty(self) -> bool: ...


def as_inbox(inbox: object) -> Inbox:
    """pykka types the inbox as its own protocol; ours always provides :class:`Inbox`."""
    return _tcast(Inbox, inbox)
