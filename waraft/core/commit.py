"""Pending commits on the leader: batching, appending, and cancelling (digest §2.11).

Commits wait in two lists (high and low priority, arrival order) until the leader appends them
as one batch per priority. Once appended, a commit's reply handle waits in ``queued`` (by log
index) until storage applies the entry — or until the entry is truncated, the log is reset by
a snapshot, or the server stops. Those three answer ``CANCELLED``: an appended entry given up
here may still be (or already be) committed elsewhere — a snapshot can hold it, and with five
or more members a truncated entry can still win — so, unlike ``not_leader`` before the
append, it does not say the command was not applied (a review found a commit answered
``cancelled`` whose entry was in the snapshot that cancelled it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from waraft.core.effects import AppendLog, CancelReads, SubmitRead
from waraft.core.log import approx_command_size
from waraft.core.types import NOOP, READ_KEY, Entry, Priority, is_config_command

if TYPE_CHECKING:
    from waraft.core.replica import Replica

PendingItem = tuple[Any, tuple[Any, Any]]

CANCELLED = "cancelled"
"""The answer to an appended commit this replica gave up on: its outcome is unknown."""


def has_pending_commits(core: Replica) -> bool:
    return bool(core.pending_high or core.pending_low)


def pending_count(core: Replica) -> int:
    """Pending commits, or one for a lone pending read (it needs a marker entry)."""
    count = len(core.pending_high) + len(core.pending_low)
    return 1 if count == 0 and core.pending_read else count


def add_pending(core: Replica, items: Any, priority: Priority) -> None:
    """Queue admitted commits ``(from_, (key, command))`` behind the earlier ones."""
    if priority is Priority.LOW:
        core.pending_low.extend(items)
    else:
        core.pending_high.extend(items)


def make_entry(core: Replica, key: Any, command: Any) -> Entry:
    """A log entry of the current term, labelled when a label function is configured."""
    label_fn = core.label_fn
    if label_fn is None:
        return Entry(core.current_term, key, command)
    if command != NOOP and not is_config_command(command):
        core.last_label = label_fn(core.last_label, command)
    return Entry(core.current_term, key, command, core.last_label)


def append(core: Replica, entries: list[Entry]) -> int:
    """Append to the log (effect + overlay); returns the index of the first entry.

    Reads held by the leader ride on the first appended entry (see ``release_reads``).
    """
    first = core.log.append(entries)
    core.emit(AppendLog(first, entries))
    if core.pending_read:
        release_reads(core, first)
    return first


def release_reads(core: Replica, index: int) -> None:
    """Hand held reads to storage at ``index``, an entry appended after they arrived.

    Storage answers them only once that entry is applied, i.e. committed in this leader's
    term, so a quorum has confirmed the leadership after each read arrived (linearizable;
    WARaft uses the commit index at arrival instead, which lets a deposed leader answer).
    """
    for from_, command, min_index in core.held_reads:
        read_index = index if min_index is None or min_index < index else min_index
        core.emit(SubmitRead(read_index, from_, command))
        if read_index > core.read_index_high:
            core.read_index_high = read_index
    core.held_reads = []
    core.pending_read = False


def commit_pending(core: Replica, priority: Priority) -> None:
    """Append the pending commits of one priority (or a lone read marker) as one batch."""
    high = core.pending_high
    low = core.pending_low
    if not high and not low:
        if not core.pending_read:
            return
        # A read with no commits to ride on gets a marker entry so that a new quorum forms.
        if not core.log.can_append(1, priority):
            _stalled(core, priority, 1)
            return
        append(core, [make_entry(core, READ_KEY, NOOP)])
        return
    pending = high if priority is Priority.HIGH else low
    if not pending:
        return
    count = len(pending)
    if not core.log.can_append(count, priority):
        _stalled(core, priority, count)
        return
    term = core.current_term
    label_fn = core.label_fn
    if label_fn is None:
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (once per command).
        new = tuple.__new__
        entries = [new(Entry, (term, op[0], op[1], None)) for _, op in pending]
    else:
        entries = [make_entry(core, op[0], op[1]) for _, op in pending]
    first = append(core, entries)
    queued = core.queued
    index = first
    for from_, _ in pending:
        queued[index] = (from_, priority)
        index += 1
    if priority is Priority.HIGH:
        core.pending_high = []
    else:
        core.pending_low = []
    core.count(("commit.batch", priority.value))


def _stalled(core: Replica, priority: Priority, count: int) -> None:
    """The log refused a relaxed append: fail every pending commit and read."""
    if core.metrics is not None:
        core.metrics.countv(("raft", core.table, ("commit.skipped", priority.value)), count)
    core.log_notice("log refused %d pending entries; cancelling pending requests", count)
    cancel_pending(core, "commit_stalled")


def cancel_pending(core: Replica, reason: Any) -> None:
    """Fail pending (not yet appended) commits and every read not yet answered.

    Reads already handed to storage are failed there too (``CancelReads``): once this replica
    stops leading, the entries they wait for may be another leader's, applied too early to
    reflect writes committed before the read.
    """
    if core.pending_high:
        for from_, op in core.pending_high:
            core.cancel_commit(from_, reason, Priority.HIGH, approx_command_size(op[1]))
        core.pending_high = []
    if core.pending_low:
        for from_, op in core.pending_low:
            core.cancel_commit(from_, reason, Priority.LOW, approx_command_size(op[1]))
        core.pending_low = []
    if core.held_reads:
        for from_, _, _ in core.held_reads:
            core.cancel_read(from_, reason)
        core.held_reads = []
    if core.read_index_high > core.last_applied:
        core.emit(CancelReads(reason))
    core.read_index_high = 0
    core.pending_read = False


def cancel_queued_range(core: Replica, start: int, end: int, reason: Any = CANCELLED) -> None:
    """Fail appended commits whose entries ``start..end`` are being truncated (called while
    the log still holds them: see ``queued_size``)."""
    queued = core.queued
    if not queued or start > end:
        return
    if end - start + 1 > len(queued):
        indices = sorted(i for i in queued if start <= i <= end)
    else:
        indices = [i for i in range(start, end + 1) if i in queued]
    for index in indices:
        from_, priority = queued.pop(index)
        core.cancel_commit(from_, reason, priority, queued_size(core, index))


def cancel_queued(core: Replica, reason: Any = CANCELLED) -> None:
    """Fail every appended-but-unapplied commit (log reset, shutdown), in index order
    (called while the log still holds them: see ``queued_size``)."""
    queued = core.queued
    for index in sorted(queued):
        from_, priority = queued[index]
        core.cancel_commit(from_, reason, priority, queued_size(core, index))
    core.queued = {}


def queued_size(core: Replica, index: int) -> int | None:
    """The bytes the commit appended at ``index`` was admitted with (the acceptor's
    estimate of its command; none for a membership change), from the log; ``None`` once the
    log no longer holds it. Cancelling releases exactly these from the commit queue's byte
    budget, which an average share of it did not (it let the budget drift)."""
    entry = core.log.get(index)
    if entry is None or entry.command is None:
        return None
    command = entry.command
    return 0 if is_config_command(command) else approx_command_size(command)


def cancel_pending_and_queued(core: Replica, reason: Any) -> None:
    """Fail the pending commits with ``reason`` (never appended: not applied) and the queued
    ones with ``CANCELLED`` (appended: outcome unknown)."""
    cancel_pending(core, reason)
    cancel_queued(core)
