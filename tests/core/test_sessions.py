"""The pure exactly-once session table: apply once, recorded results, expiry by log distance,
acknowledgement floors, duplicates inside one batch, and dump/load round trips."""

from __future__ import annotations

import random
from typing import Any

import pytest

from waraft.core.sessions import (
    ACKNOWLEDGED,
    BAD_SESSION_CALL,
    BAD_TOKEN,
    EXPIRED,
    REGISTER_CONFLICT,
    SWEEP_EVERY,
    Apply,
    Done,
    Pending,
    SessionTable,
    call_command,
    close_command,
    register_command,
)


class Counter:
    """A non-idempotent state machine driven through the table (as the storage actor does)."""

    def __init__(self) -> None:
        self.table = SessionTable()
        self.value = 0
        self.index = 0

    def commit(self, command: Any) -> Any:
        self.index += 1
        decision = self.table.begin(command, self.index)
        if isinstance(decision, Done):
            return decision.result
        assert isinstance(decision, Apply)
        self.value += decision.command[1]
        result = ("ok", self.value)
        if decision.session is not None:
            self.table.finish(decision.session, decision.seq, result)
        return result


def test_a_retried_command_applies_once_and_answers_the_original_result() -> None:
    sm = Counter()
    status, sid = sm.commit(register_command(100))
    assert status == "ok" and sid == 1
    first = sm.commit(call_command(sid, 1, 1, ("incr", 5)))
    assert first == ("ok", 5)
    sm.commit(("incr", 1))  # untagged: always applied
    assert sm.commit(call_command(sid, 1, 1, ("incr", 5))) == ("ok", 5)
    assert sm.value == 6
    assert sm.commit(call_command(sid, 2, 1, ("incr", 5))) == ("ok", 11)


def test_acknowledged_results_are_dropped_and_answer_an_error() -> None:
    sm = Counter()
    _, sid = sm.commit(register_command())
    sm.commit(call_command(sid, 1, 1, ("incr", 1)))
    sm.commit(call_command(sid, 2, 2, ("incr", 1)))  # the client holds seq 1's result
    assert sm.commit(call_command(sid, 1, 2, ("incr", 1))) == ACKNOWLEDGED
    assert sm.value == 2
    assert [len(row[4]) for row in sm.table.dump()[1]] == [1]


def test_sessions_expire_after_idle_entries_the_same_way_on_every_replica() -> None:
    sm = Counter()
    _, sid = sm.commit(register_command(3))
    _, other = sm.commit(register_command(1000))
    for _ in range(3):
        sm.commit(("incr", 0))  # entries 3..5: sid idle for 4 entries at index 6
    assert sm.commit(call_command(sid, 1, 1, ("incr", 1))) == EXPIRED
    assert sid not in sm.table and other in sm.table
    assert sm.value == 0
    # A session that stays active does not expire.
    _, live = sm.commit(register_command(2))
    for seq in range(1, 6):
        assert sm.commit(call_command(live, seq, seq, ("incr", 1)))[0] == "ok"
    assert sm.table.expire(sm.index + 3) == 1 and other in sm.table and live not in sm.table
    assert sm.table.expire(sm.index + 2000) == 1 and len(sm.table) == 0


def test_close_forgets_a_session() -> None:
    sm = Counter()
    _, sid = sm.commit(register_command())
    assert sm.commit(close_command(sid)) == "ok"
    assert sm.commit(call_command(sid, 1, 1, ("incr", 1))) == EXPIRED


def test_a_duplicate_inside_one_batch_is_pending_until_the_first_finishes() -> None:
    table = SessionTable()
    sid = table.begin(register_command(), 1)
    assert isinstance(sid, Done)
    sid_value = sid.result[1]
    first = table.begin(call_command(sid_value, 1, 1, "x"), 2)
    second = table.begin(call_command(sid_value, 1, 1, "x"), 2)
    assert first == Apply("x", sid_value, 1)
    assert second == Pending(sid_value, 1)
    table.finish(sid_value, 1, "result")
    assert table.result(sid_value, 1) == "result"


def test_dump_and_load_round_trip_and_keep_deduplicating() -> None:
    sm = Counter()
    _, sid = sm.commit(register_command(50))
    sm.commit(call_command(sid, 1, 1, ("incr", 7)))
    dumped = sm.table.dump()
    assert not sm.table.changed
    restored = SessionTable.load(dumped)
    assert restored == sm.table
    sm.table = restored
    assert sm.commit(call_command(sid, 1, 1, ("incr", 7))) == ("ok", 7)
    assert sm.value == 7
    assert SessionTable.load(None) == SessionTable()


def test_bad_session_commands_are_answered_not_applied() -> None:
    table = SessionTable()
    assert table.begin(register_command(0), 1) == Done(("error", "bad_session_expiry"))
    decision = table.begin(("$session", "frob"), 2)
    assert isinstance(decision, Done) and decision.result[0] == "error"


def test_a_session_call_whose_id_or_seq_is_not_an_int_is_answered_not_raised() -> None:
    """Committed before anything looks at it: an unhashable id (a map) raised in ``begin``
    on every replica, at every restart, so the partition never applied past it."""
    table = SessionTable()
    sid = table.begin(register_command(100), 1).result[1]  # type: ignore[union-attr]
    bad = Done(BAD_SESSION_CALL)
    for command in (
        ("$session", "call", {"x": 1}, 1, 0, ("incr", 1)),
        ("$session", "call", sid, {"x": 1}, 0, ("incr", 1)),
        ("$session", "call", sid, ({"x": 1},), 0, ("incr", 1)),
        ("$session", "close", {"x": 1}),
    ):
        assert table.begin(command, 2) == bad, command
    assert sid in table
    assert table.begin(call_command(sid, 1, 0, ("incr", 1)), 3) == Apply(("incr", 1), sid, 1)


TOKEN = b"t" * 16


def test_a_session_acts_only_for_calls_carrying_its_token() -> None:
    """Ids are log indices: without the token another client answered a victim's retries
    with its own results, or closed its session. A call or close without the session's token
    is answered as for no session and changes nothing, not even its idle time."""
    table = SessionTable()
    sid = table.begin(register_command(10, TOKEN), 1).result[1]  # type: ignore[union-attr]
    assert table.begin(call_command(sid, 1, 0, ("incr", 1), TOKEN), 2) == Apply(("incr", 1), sid, 1)
    table.finish(sid, 1, ("ok", 1))
    table.saved()
    view = table.dump_view()
    for forged in (
        call_command(sid, 2, 0, ("incr", 5)),  # no token
        call_command(sid, 2, 2, ("incr", 5), b"x" * 16),  # a wrong one
        call_command(sid, 1, 0, ("incr", 5), TOKEN[:-1] + b"u"),  # to read a recorded result
        call_command(sid, 2, 0, ("incr", 5), "t" * 16),  # not bytes
    ):
        assert table.begin(forged, 9) == Done(EXPIRED), forged
    for forged_close in (close_command(sid), close_command(sid, b"x" * 16)):
        assert table.begin(forged_close, 9) == Done("ok")
    assert table.dump_view() == view and not table.changed  # nothing moved, not even idle time
    assert table.begin(call_command(sid, 1, 0, ("incr", 1), TOKEN), 10) == Done(("ok", 1))
    assert table.begin(close_command(sid, TOKEN), 11) == Done("ok")
    assert sid not in table


def test_a_token_is_kept_in_the_rows_and_the_dump_and_must_be_bytes() -> None:
    table = SessionTable()
    bound = table.begin(register_command(10, TOKEN), 1).result[1]  # type: ignore[union-attr]
    unbound = table.begin(register_command(10), 2).result[1]  # type: ignore[union-attr]
    rows, index = table.changes()
    reloaded = SessionTable.from_rows(index, [row for _, row in rows])
    assert reloaded == table == SessionTable.load(table.dump())
    for copy in (reloaded, SessionTable.load(table.dump())):
        assert copy.begin(call_command(bound, 1, 0, "c"), 3) == Done(EXPIRED)
        assert copy.begin(call_command(unbound, 1, 0, "c"), 3) == Apply("c", unbound, 1)
    for bad in (b"short", "t" * 16, b"x" * 65, 7):
        assert table.begin(("$session", "register", 10, bad), 4) == Done(BAD_TOKEN)
    assert len(table) == 2


def test_finish_marks_the_table_changed_even_after_a_dump() -> None:
    # The storage actor may dump (for a transaction that then fails) before re-recording.
    table = SessionTable()
    sid = table.begin(register_command(), 1).result[1]  # type: ignore[union-attr]
    table.begin(call_command(sid, 1, 1, "x"), 2)
    table.dump()
    table.finish(sid, 1, "r")
    assert table.changed and table.dump()[1][0][4] == ((1, "r"),)


def test_a_second_register_in_one_entry_is_refused_not_given_the_same_id() -> None:
    table = SessionTable()
    # The commands of one $batch entry share its index.
    assert table.begin(register_command(100), 7) == Done(("ok", 7))
    assert table.begin(register_command(100), 7) == Done(REGISTER_CONFLICT)
    assert len(table) == 1
    assert table.begin(register_command(100), 8) == Done(("ok", 8))


def test_sessions_nobody_uses_again_are_swept_from_the_table() -> None:
    table = SessionTable()
    for index in range(1, 51):
        table.begin(register_command(10), index)  # clients that went away without close
    _, live = table.begin(register_command(10 * SWEEP_EVERY), 51).result  # type: ignore[union-attr]
    index = 52
    while index < 3 * SWEEP_EVERY:
        assert isinstance(table.begin(call_command(live, index, index, ("incr", 1)), index), Apply)
        table.finish(live, index, "ok")
        index += 1
    assert len(table) == 1 and live in table


def test_a_replica_that_restarts_mid_span_keeps_the_same_table() -> None:
    """Sweeps are as of the first index of each span, so a table loaded from a dump taken at
    any position and driven on reaches the same state as one that ran throughout."""
    commands = []
    for index in range(1, 3 * SWEEP_EVERY, 37):
        commands.append((index, register_command(1 + index % 900)))
        commands.append((index + 1, call_command(1, index, 0, ("incr", 1))))
    for cut in range(0, len(commands), len(commands) // 7):
        whole, restarted = SessionTable(), SessionTable()
        for at, (index, command) in enumerate(commands):
            if at == cut:
                restarted = SessionTable.load(restarted.dump())
            for table in (whole, restarted):
                decision = table.begin(command, index)
                if isinstance(decision, Apply) and decision.session is not None:
                    table.finish(decision.session, decision.seq, "ok")
            assert whole.dump_view() == restarted.dump_view(), (cut, at)


def test_a_full_table_drops_the_session_idle_for_longest() -> None:
    table = SessionTable(max_sessions=3)
    for index in (1, 2, 3):
        table.begin(register_command(1000), index)
    table.begin(call_command(1, 1, 1, ("incr", 1)), 4)  # session 1 is active again
    assert table.begin(register_command(1000), 5) == Done(("ok", 5))
    assert len(table) == 3 and 2 not in table and all(s in table for s in (1, 3, 5))
    assert table.begin(call_command(2, 1, 1, ("incr", 1)), 6) == Done(EXPIRED)


def _store(table: SessionTable, stored: dict[Any, Any]) -> None:
    """Write ``table.changes()`` into ``stored`` as the storage actor does, then ``saved``."""
    rows, index = table.changes()
    for sid, row in rows:
        if row is None:
            stored.pop(sid, None)
        else:
            stored[sid] = row
    if index is not None:
        stored["index"] = index
    table.saved()


def _reload(stored: dict[Any, Any]) -> SessionTable:
    if "index" not in stored:
        return SessionTable()
    index = stored["index"]
    return SessionTable.from_rows(index, [stored[sid] for sid in index[1]])


def test_only_the_sessions_a_batch_touched_are_rows_to_write() -> None:
    table = SessionTable()
    for index in range(1, 301):
        table.begin(register_command(10_000), index)
    stored: dict[Any, Any] = {}
    _store(table, stored)
    assert not table.changed and table.changes() == ([], None)
    decision = table.begin(call_command(150, 1, 1, "x"), 301)
    assert isinstance(decision, Apply)
    table.finish(150, 1, "r")
    rows, index = table.changes()
    assert index is None and [sid for sid, _ in rows] == [150]
    assert rows[0][1] == (10_000, 301, 1, ((1, "r"),))
    # A transaction that failed (no saved): its rows are written with the next one.
    table.begin(close_command(7), 302)
    rows, index = table.changes()
    assert rows == [(7, None), (150, (10_000, 301, 1, ((1, "r"),)))]
    assert index is not None and 7 not in index[1] and len(index[1]) == 299
    _store(table, stored)
    assert _reload(stored) == table and 7 not in stored


def test_a_table_stored_as_rows_reloads_the_same_at_any_position() -> None:
    """Rows written batch by batch (``changes``/``saved``) and read back at any cut give the
    table that ran throughout: every change (calls, results, floors, expiry, sweeps, eviction,
    close) reaches its row."""
    commands: list[tuple[int, Any]] = []
    for index in range(1, 3 * SWEEP_EVERY, 37):
        commands.append((index, register_command(1 + index % 900)))
        commands.append((index + 1, call_command(1 + (index // 37) % 5, index, index - 3, "c")))
        # a retry: answered from the record, only its session's last_active changes
        commands.append((index + 2, call_command(1 + (index // 37) % 5, index, index - 3, "c")))
        if index % 5 == 0:
            commands.append((index + 3, close_command(index - 37 * 3)))
    for batch in (1, 3, 8):
        whole = SessionTable(max_sessions=40)
        restarted = SessionTable(max_sessions=40)
        stored: dict[Any, Any] = {}
        for at, (index, command) in enumerate(commands):
            for table in (whole, restarted):
                decision = table.begin(command, index)
                if isinstance(decision, Apply) and decision.session is not None:
                    table.finish(decision.session, decision.seq, ("ok", index))
            if at % batch == batch - 1:
                _store(restarted, stored)
                reloaded = _reload(stored)
                assert reloaded.dump_view() == whole.dump_view(), (batch, at)
                # no row outlives its session
                assert set(stored) - {"index"} == set(stored["index"][1]), (batch, at)
                if at % (7 * batch) == 0:  # a restart: go on from what was stored
                    reloaded.max_sessions = 40
                    restarted = reloaded


class _SortingTable(SessionTable):
    """The eviction and sweep as first written (a scan and a sort of the whole table per
    register on a full table): the reference the lazy heaps must agree with."""

    __slots__ = ()

    def expire(self, index: int) -> int:
        sessions = self._sessions
        dead = [sid for sid, s in sessions.items() if index - s.last_active > s.expire_after]
        for sid in dead:
            del sessions[sid]
            self._came_or_went(sid)
        return len(dead)

    def _evict(self, index: int) -> None:
        self.expire(index)
        excess = len(self._sessions) - self.max_sessions + 1
        if excess > 0:
            oldest = sorted(self._sessions.items(), key=lambda item: (item[1].last_active, item[0]))
            for sid, _ in oldest[:excess]:
                del self._sessions[sid]
                self._came_or_went(sid)


@pytest.mark.parametrize("seed", range(6))
def test_the_lazy_eviction_heaps_choose_as_a_full_sort_does(seed: int) -> None:
    """A register on a full table sweeps the expired sessions and drops the idlest: every
    replica must choose the same ones. The heaps (O(log n) a register instead of a sort of
    the table, which one client could make cost 2.6 ms a register) must choose exactly as
    the sort did, through calls that refresh sessions, closes, lazy expiry and reloads."""
    rng = random.Random(seed)
    fast, slow = SessionTable(max_sessions=12), _SortingTable(max_sessions=12)
    live: list[int] = []
    for index in range(1, 3000):
        roll = rng.random()
        if roll < 0.35 or not live:
            command: Any = register_command(rng.choice((5, 40, 300, 2000)))
        elif roll < 0.9:
            command = call_command(rng.choice(live), index, 0, ("incr", 1))
        else:
            command = close_command(rng.choice(live))
        decisions = [table.begin(command, index) for table in (fast, slow)]
        assert decisions[0] == decisions[1], (index, command)
        if isinstance(decisions[0], Done) and decisions[0].result[0] == "ok":
            live.append(decisions[0].result[1])
        assert fast.dump_view() == slow.dump_view(), index
        if index % 700 == 0:  # a replica that reloads its table (a restart, a snapshot)
            fast = SessionTable.load(fast.dump())
            fast.max_sessions = 12
        live = [sid for sid in live if sid in slow]
