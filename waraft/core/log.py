"""The in-step log overlay: the core's read-your-own-writes view of the Raft log.

The core never writes the log itself; it emits ``AppendLog`` / ``TruncateLog`` / ``ResetLog``
effects that the shell applies before the next step. Within one step, however, the core must
see its own writes (a leader appends a batch and replicates it in the same step; a follower
appends and then applies). ``LogOverlay`` layers the step's changes over the ``LogView``:

* ``begin_step`` re-reads the view's bounds (the shell has applied the previous step's effects);
* appends, one truncation point and a reset are remembered until the next ``begin_step``;
* trims are optimistic, as in WARaft's ``#log_view{}``: the visible first index moves at once
  and stays moved across steps even if the provider trims later or less.

This is the twin of WARaft's ``wa_raft_log`` view functions (``first_index``, ``last_index``,
``term``, ``get``, ``entries``, ``config``), minus the I/O.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from waraft.core.log_view import LogView
from waraft.core.types import Config, Entry, LogPos, Priority, is_config_command

_ENTRY_OVERHEAD = 16
_SCALAR_SIZE = 8
CONTAINER_SIZE = 56


def approx_command_size(command: object, depth: int = 0) -> int:
    """A cheap estimate of a command's payload bytes: the lengths of its strings and bytes
    plus a word per other scalar, through nested tuples, lists and dicts (a ``$batch`` of
    large writes counts its writes), and through tuple subclasses too (an unknown msgpack
    extension decodes as an ``ExtType(code, data)``: its data counts). Every byte budget
    admits by this estimate, so nothing a client can send may escape it: past a nesting
    depth of 8 the rest is walked without recursion rather than counted as one word (a 9 MB
    value inside an extension type, or nested deeper, was counted as 8 bytes). Each tuple,
    list and dict counts ``CONTAINER_SIZE`` besides its items: an empty one is a byte on
    the wire and 56 in memory, and a command of a million nested empty tuples was estimated
    at 0 bytes, so no byte budget held it back (a review's finding)."""
    kind = type(command)
    if kind is bytes or kind is str or kind is bytearray:
        return len(command)  # type: ignore[arg-type]
    if kind is tuple or kind is list:
        if depth >= _MAX_RECURSION:
            return _walked_size(command)
        # Strings, bytes and scalars inline: a plain write is a flat tuple of them, and this
        # runs several times per entry on a leader (admission, the log overlay, replication,
        # the apply queue), where a call per item was most of its cost.
        size = CONTAINER_SIZE
        for item in command:  # type: ignore[attr-defined]
            item_kind = type(item)
            if item_kind is bytes or item_kind is str or item_kind is bytearray:
                size += len(item)
            elif item_kind is tuple or item_kind is list or item_kind is dict:
                size += approx_command_size(item, depth + 1)
            elif item_kind is int or item_kind is float or item is None or item_kind is bool:
                size += _SCALAR_SIZE
            else:
                size += _walked_size(item)
        return size
    if kind is dict:
        if depth >= _MAX_RECURSION:
            return _walked_size(command)
        size = CONTAINER_SIZE
        for key, value in command.items():  # type: ignore[attr-defined]
            size += approx_command_size(key, depth + 1) + approx_command_size(value, depth + 1)
        return size
    return _walked_size(command)


_MAX_RECURSION = 8


def _walked_size(command: object) -> int:
    """``approx_command_size`` of anything, with an explicit stack instead of recursion."""
    size = 0
    stack = [command]
    while stack:
        item = stack.pop()
        if isinstance(item, (bytes, str, bytearray)):
            size += len(item)
        elif isinstance(item, memoryview):
            size += item.nbytes
        elif isinstance(item, (tuple, list)):
            size += CONTAINER_SIZE
            stack.extend(item)
        elif isinstance(item, dict):
            size += CONTAINER_SIZE
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            size += _SCALAR_SIZE
    return size


def approx_size(entry: Entry) -> int:
    """A cheap estimate of an entry's encoded size (for entries not yet in the provider, and
    for the bytes a leader has in flight to each peer).

    Used only for byte caps and budgets; the provider's own sizes are used for the byte caps
    of reads of everything already in the log.
    """
    return _ENTRY_OVERHEAD + approx_command_size(entry.command)


def combined_budget(own: int, share: int) -> int:
    """A partition's retained-bytes budget from its own bound and its share of a node-wide
    one, where 0 means "no bound": the smaller of the bounds that are set (0 if neither is)."""
    if own <= 0:
        return max(share, 0)
    if share <= 0:
        return own
    return min(own, share)


class LogOverlay:
    """Read access to the log as of the current step (see the module docstring)."""

    __slots__ = (
        "_app",
        "_app_cum",
        "_base_first",
        "_base_last",
        "_cfg",
        "_cfg_known",
        "_reset",
        "_trim_hint",
        "view",
    )

    def __init__(self, view: LogView) -> None:
        self.view = view
        self._trim_hint = 0
        self._base_first = 0
        self._base_last = 0
        self._app: list[Entry] = []
        self._app_cum: list[int] | None = None
        self._reset: LogPos | None = None
        self._cfg: tuple[int, Config] | None = None
        self._cfg_known = False
        self.begin_step()

    # -- step lifecycle ------------------------------------------------------------------------

    def begin_step(self) -> None:
        """Forget the previous step's changes: the view now holds them."""
        view = self.view
        self._base_last = view.last_index()
        first = view.first_index()
        hint = self._trim_hint
        # An optimistic trim never hides the last entry (the provider may lag behind it).
        self._base_first = hint if first < hint <= self._base_last else first
        if self._app:
            self._app = []
        self._app_cum = None
        self._reset = None
        self._cfg = None
        self._cfg_known = False

    # -- reads ---------------------------------------------------------------------------------

    def first_index(self) -> int:
        reset = self._reset
        return self._base_first if reset is None else reset.index

    def last_index(self) -> int:
        reset = self._reset
        base = self._base_last if reset is None else reset.index
        return base + len(self._app)

    def term(self, index: int) -> int | None:
        """The term at ``index``, ``None`` outside the visible log."""
        reset = self._reset
        if reset is None:
            base_last = self._base_last
            if index <= base_last:
                return self.view.term(index) if index >= self._base_first else None
        else:
            base_last = reset.index
            if index <= base_last:
                return reset.term if index == base_last else None
        offset = index - base_last - 1
        app = self._app
        return app[offset].term if offset < len(app) else None

    def get(self, index: int) -> Entry | None:
        """The entry at ``index`` (a reset base entry has ``command=None``)."""
        reset = self._reset
        if reset is None:
            base_last = self._base_last
            if index <= base_last:
                return self.view.get(index) if index >= self._base_first else None
        else:
            base_last = reset.index
            if index <= base_last:
                return Entry(reset.term) if index == base_last else None
        offset = index - base_last - 1
        app = self._app
        return app[offset] if offset < len(app) else None

    def entries(self, start: int, end: int, max_count: int, max_bytes: int) -> list[Entry]:
        """Entries ``start..end`` (inclusive) capped by count and bytes; at least one if any."""
        if max_count <= 0:
            return []
        end = min(end, self.last_index(), start + max_count - 1)
        if start < self.first_index() or start > end:
            return []
        reset = self._reset
        base_last = self._base_last if reset is None else reset.index
        out: list[Entry]
        budget = max_bytes
        if start <= base_last:
            stop = min(end, base_last)
            if reset is None:
                out = self.view.entries(start, stop, stop - start + 1, max_bytes)
            else:
                out = [Entry(reset.term)]
            if end <= base_last or len(out) < stop - start + 1:
                return out
            for entry in out:
                budget -= approx_size(entry)
            if budget <= 0:
                return out
            app_start = 0
        else:
            out = []
            app_start = start - base_last - 1
        app_stop = end - base_last  # exclusive offset into the appended entries
        cum = self._app_cum
        if cum is None:
            cum = self._app_cum = list(accumulate(approx_size(e) for e in self._app))
        already = cum[app_start - 1] if app_start > 0 else 0
        # First offset whose cumulative size reaches the budget is the last one included.
        cut = bisect_right(cum, already + budget - 1, app_start, app_stop)
        take = max(cut + 1, app_start + 1) if cut < app_stop else app_stop
        if not out:
            return self._app[app_start:take]
        out.extend(self._app[app_start:take])
        return out

    def retained_from(self, index: int, max_bytes: int) -> int:
        """``LogView.retained_from`` over the provider's entries (entries appended in this
        step are not counted: they are above anything applied before it), never below the
        visible first index."""
        first = self.first_index()
        if self._reset is not None or index <= first:
            return first
        found = self.view.retained_from(min(index, self._base_last), max_bytes)
        return max(first, found)

    def trim_pending(self) -> bool:
        """True while an optimistic trim has not reached the provider: it still holds (and
        counts the bytes of) entries below the visible first index."""
        return self._reset is None and self.view.first_index() < self._base_first

    def retained_budget(self, max_bytes: int) -> int:
        """``LogView.retained_budget``: the provider's answer (a node-wide share)."""
        return self.view.retained_budget(max_bytes)

    def config(self) -> tuple[int, Config] | None:
        """The newest config entry still in the visible log."""
        if not self._cfg_known:
            self._cfg = self._base_config()
            self._cfg_known = True
        return self._cfg

    def _base_config(self) -> tuple[int, Config] | None:
        if self._reset is not None:
            return None
        found = self.view.config()
        # Like WARaft's view, hide a config the (optimistic) trim has moved past.
        if found is None or found[0] < self._base_first or found[0] > self._base_last:
            return None
        return found

    def can_append(self, count: int, priority: Priority) -> bool:
        """The provider's relaxed-append admission (``False``: the append would block)."""
        return self.view.can_append(count, priority)

    # -- writes (mirrors of the effects the core emits) ----------------------------------------

    def append(self, entries: list[Entry]) -> int:
        """Record entries appended after the last index; returns the first new index."""
        first_new = self.last_index() + 1
        app = self._app
        if not app:
            self._app = app = list(entries)
        else:
            app.extend(entries)
        self._app_cum = None
        index = first_new
        for entry in entries:
            command = entry.command
            if type(command) is tuple and is_config_command(command):
                self.config()  # settle the base config before overriding it
                self._cfg = (index, command[1])
                self._cfg_known = True
            index += 1
        return first_new

    def truncate(self, index: int, scan_floor: int) -> None:
        """Record the deletion of ``index`` and everything after it.

        ``scan_floor`` is the last applied index: if the newest config is truncated, the
        previous one is searched for only above it (anything at or below it is already the
        storage's config, which the server falls back to).
        """
        current = self.config()
        reset = self._reset
        base_last = self._base_last if reset is None else reset.index
        if index > base_last:
            del self._app[index - base_last - 1 :]
        else:
            self._base_last = index - 1
            self._app = []
        self._app_cum = None
        if current is not None and current[0] >= index:
            self._cfg = self._scan_config(index - 1, max(scan_floor, self.first_index() - 1))
            self._cfg_known = True

    def _scan_config(self, top: int, floor: int) -> tuple[int, Config] | None:
        for index in range(top, floor, -1):
            entry = self.get(index)
            if entry is not None and is_config_command(entry.command):
                cfg: Config = entry.command[1]
                return (index, cfg)
        return None

    def reset(self, position: LogPos) -> None:
        """Record a reset to the term-only base entry at ``position``."""
        self._reset = position
        self._app = []
        self._app_cum = None
        self._cfg = None
        self._cfg_known = True
        self._trim_hint = position.index

    def trim(self, index: int) -> None:
        """Record an (optimistic) trim of everything below ``index``."""
        if index > self._trim_hint:
            self._trim_hint = index
        if self._reset is None and self._base_first < index <= self._base_last:
            self._base_first = index
