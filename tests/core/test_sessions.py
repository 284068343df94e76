"""The pure exactly-once session table: apply once, recorded results, expiry by log distance,
acknowledgement floors, duplicates inside one batch, and dump/load round trips."""

from __future__ import annotations

import random
from typing import Any

import pytest

from waraft.core import sessions
from waraft.core.sessions import (
    ACKNOWLEDGED,
    BAD_OWNER,
    BAD_SESSION_CALL,
    BAD_TOKEN,
    BATCH_OWNER,
    EXPIRED,
    MAX_SESSIONS,
    MAX_SESSIONS_PER_OWNER,
    REGISTER_CONFLICT,
    SWEEP_EVERY,
    Apply,
    Done,
    Pending,
    SessionTable,
    _owner_key,
    call_command,
    close_command,
    owned_register,
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


def test_a_session_expires_only_when_more_than_expire_after_entries_behind() -> None:
    """The documented boundary: a session is expired when its last activity is MORE than
    ``expire_after`` entries behind the entry being applied. A call exactly ``expire_after``
    entries later is applied; one entry later it answers EXPIRED. The lookup (``begin``) and
    the periodic sweep (``expire``) draw the line at the same entry."""
    sm = Counter()
    _, sid = sm.commit(register_command(3))  # index 1: last active at 1
    for _ in range(2):
        sm.commit(("incr", 0))  # entries 2..3
    assert sm.table.expire(sm.index + 1) == 0  # the sweep keeps it at 4 = 1 + 3 too
    assert sm.commit(call_command(sid, 1, 1, ("incr", 1))) == ("ok", 1)  # index 4: 3 behind
    for _ in range(3):
        sm.commit(("incr", 0))  # entries 5..7
    assert sm.commit(call_command(sid, 2, 2, ("incr", 1))) == EXPIRED  # index 8: 4 behind
    assert sm.value == 1 and sid not in sm.table


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
    """The sweep and eviction by scans and sorts of the whole table (per register on a full
    table): the reference the lazy heaps must agree with."""

    __slots__ = ()

    def expire(self, index: int) -> int:
        sessions = self._sessions
        dead = [sid for sid, s in sessions.items() if index - s.last_active > s.expire_after]
        for sid in dead:
            self._drop(sid)
        return len(dead)

    def _make_room(self, owner: str | None, index: int) -> None:
        def held(who: str | None) -> int:
            return sum(1 for s in self._sessions.values() if s.owner == who)

        def idlest(who: str | None) -> int:
            return min((s.last_active, sid) for sid, s in self._sessions.items() if s.owner == who)[
                1
            ]

        if len(self._sessions) < self.max_sessions and held(owner) < self.max_per_owner:
            return
        self.expire(index)
        while held(owner) >= self.max_per_owner:
            self._drop(idlest(owner))
        while self._sessions and len(self._sessions) >= self.max_sessions:
            counts: dict[str | None, int] = {}
            for session in self._sessions.values():
                counts[session.owner] = counts.get(session.owner, 0) + 1
            top = max(counts.values())
            if counts.get(owner) == top:
                victim = owner
            else:
                victim = min((o for o, c in counts.items() if c == top), key=_owner_key)
            self._drop(idlest(victim))


@pytest.mark.parametrize("seed", range(6))
def test_the_lazy_eviction_heaps_choose_as_a_full_sort_does(seed: int) -> None:
    """A register on a full table sweeps the expired sessions and drops the idlest: every
    replica must choose the same ones. The heaps (O(log n) a register instead of a sort of
    the table, which one client could make cost 2.6 ms a register) must choose exactly as
    the sort did, through calls that refresh sessions, closes, lazy expiry and reloads."""
    rng = random.Random(seed)
    fast = SessionTable(max_sessions=12, max_per_owner=5)
    slow = _SortingTable(max_sessions=12, max_per_owner=5)
    live: list[int] = []
    # Owners of unequal appetites (one bursts), and unowned sessions of older builds.
    owners = (None, "client:a", "client:b", "client:c", "node:n1")
    weights = (2, 6, 2, 1, 1)
    for index in range(1, 3000):
        roll = rng.random()
        if roll < 0.35 or not live:
            owner = rng.choices(owners, weights)[0]
            command: Any = owned_register(register_command(rng.choice((5, 40, 300, 2000))), owner)
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
            fast.max_sessions, fast.max_per_owner = 12, 5
        live = [sid for sid in live if sid in slow]


# -- owners: one identity's registers only ever cost its own sessions ----------------------------


def _register(table: SessionTable, index: int, owner: str | None, expire: int = 10**6) -> int:
    decision = table.begin(owned_register(register_command(expire, b"t" * 16), owner), index)
    assert isinstance(decision, Done) and decision.result == ("ok", index), decision
    return index


def _owners(table: SessionTable) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for row in table.dump_view()[1]:
        owner = row[6] if len(row) == 7 else None
        counts[owner] = counts.get(owner, 0) + 1
    return counts


def test_an_owner_at_its_cap_drops_its_own_idlest_session_never_anothers() -> None:
    table = SessionTable(max_sessions=100, max_per_owner=3)
    victim = _register(table, 1, "client:victim")
    mine = [_register(table, i, "client:burst") for i in (2, 3, 4)]
    call = call_command(mine[0], 1, 1, "x", b"t" * 16)
    assert isinstance(table.begin(call, 5), Apply)  # mine[0] is active again: not the idlest
    table.finish(mine[0], 1, "r")
    _register(table, 6, "client:burst")
    assert mine[1] not in table and {victim, mine[0], mine[2], 6} <= set(table._sessions)
    for index in range(7, 200):  # a burst well past the cap
        _register(table, index, "client:burst")
    assert victim in table and _owners(table) == {"client:victim": 1, "client:burst": 3}
    # The owner's cap is its own: unowned sessions (older nodes) are a group with a cap too.
    for index in range(200, 210):
        _register(table, index, None)
    assert _owners(table) == {"client:victim": 1, "client:burst": 3, None: 3}


def test_a_full_table_drops_from_the_owner_holding_the_most() -> None:
    table = SessionTable(max_sessions=6, max_per_owner=4)
    a = [_register(table, i, "client:a") for i in (1, 2)]
    b = [_register(table, i, "client:b") for i in (3, 4, 5)]
    _register(table, 6, None)
    # Full: c's register drops b's idlest (b holds the most), not the table's idlest (a's).
    _register(table, 7, "client:c")
    assert b[0] not in table and all(s in table for s in (*a, b[1], b[2], 6, 7))
    # b and a now hold two each: a registering again pays itself (a tie goes to the
    # registering owner), b's sessions stay.
    _register(table, 8, "client:a")
    assert a[0] not in table and _owners(table) == {
        "client:a": 2,
        "client:b": 2,
        None: 1,
        "client:c": 1,
    }
    # A tie among others: the first in owner order (None first, then by name).
    _register(table, 9, "client:d")
    assert _owners(table) == {"client:a": 1, "client:b": 2, None: 1, "client:c": 1, "client:d": 1}


def test_a_burst_of_registers_at_the_real_bounds_expires_nobody_elses_session() -> None:
    """The attack this closes: one client registering past ``MAX_SESSIONS`` pushed every
    other client's live session out of the table."""
    assert MAX_SESSIONS_PER_OWNER * 10 <= MAX_SESSIONS  # ten owners at their cap fit
    table = SessionTable()
    others = [_register(table, i, f"client:{i}") for i in range(1, 21)]
    index = 21
    for index in range(21, 21 + MAX_SESSIONS + 500):
        _register(table, index, "client:burst")
    for sid in others:
        assert sid in table
        assert isinstance(table.begin(call_command(sid, 1, 1, "x", b"t" * 16), index + 1), Apply)
    assert _owners(table)["client:burst"] == MAX_SESSIONS_PER_OWNER


def test_owners_are_stored_in_rows_and_dumps_and_older_ones_load_unowned() -> None:
    table = SessionTable(max_sessions=100, max_per_owner=2)
    _register(table, 1, "client:a")
    table.begin(register_command(50), 2)  # an older client: no token, no owner
    _register(table, 3, None)  # a local caller: token, no owner
    table.begin(owned_register(register_command(50), "client:b"), 4)  # owned, no token
    rows, index = table.changes()
    assert dict(rows) == {
        1: (10**6, 1, 0, (), b"t" * 16, "client:a"),
        2: (50, 2, 0, ()),  # the rows of unowned sessions keep the older shapes
        3: (10**6, 3, 0, (), b"t" * 16),
        4: (50, 4, 0, (), None, "client:b"),
    }
    assert index is not None
    reloaded = SessionTable.from_rows(index, [row for _, row in rows])
    for copy in (reloaded, SessionTable.load(table.dump())):
        assert copy == table and _owners(copy) == {"client:a": 1, None: 2, "client:b": 1}
        copy.max_per_owner = 2  # the loaded table counts each owner's sessions again
        _register(copy, 5, "client:a")
        _register(copy, 6, "client:a")
        assert 1 not in copy and 2 in copy and 3 in copy
    # Stored by an older build: 4- and 5-element rows, and a whole dump of version 1.
    old_rows = [(9, 7, 0, ((1, "r"),)), (9, 8, 0, (), b"k" * 16)]
    old = SessionTable.from_rows((2, (7, 8)), old_rows)
    assert old == SessionTable.load((1, ((7, *old_rows[0]), (8, *old_rows[1]))))
    assert _owners(old) == {None: 2} and old.result(7, 1) == "r"


def test_the_accepting_node_owns_registers_whatever_the_client_claimed() -> None:
    token = b"t" * 16
    assert owned_register(register_command(5), "client:a") == (
        "$session",
        "register",
        5,
        None,
        "client:a",
    )
    assert owned_register(register_command(5, token), "client:a") == (
        "$session",
        "register",
        5,
        token,
        "client:a",
    )
    claimed = ("$session", "register", 5, token, "client:victim")
    assert owned_register(claimed, "client:a") == ("$session", "register", 5, token, "client:a")
    # A local caller (no owner): the shapes older builds apply, any claimed owner dropped.
    assert owned_register(claimed, None) == ("$session", "register", 5, token)
    assert owned_register(("$session", "register", 5, None, "x"), None) == register_command(5)
    assert owned_register(register_command(5, token), None) == register_command(5, token)
    # Malformed ones are left for storage to refuse.
    assert owned_register(("$session", "register"), "client:a") == ("$session", "register")


def test_a_register_inside_a_batch_is_owned_by_the_batch_owner_and_a_bad_owner_refused() -> None:
    table = SessionTable()
    # The node that accepts a $batch never looks inside it: nobody stamped it, so a claimed
    # owner counts for nothing (an older client's register, or a forgery).
    for index, command in (
        (7, register_command(5)),
        (9, owned_register(register_command(5), "client:a")),
    ):
        assert table.begin(command, index, nested=True) == Done(("ok", index))
        assert table._sessions[index].owner == BATCH_OWNER
    assert "client:a" not in table._owned and len(table._owned[BATCH_OWNER]) == 2
    # A burst of them costs only their own group: another owner's session stays.
    table = SessionTable(max_sessions=8, max_per_owner=3)
    assert table.begin(owned_register(register_command(10**6), "client:v"), 1) == Done(("ok", 1))
    for index in range(2, 40):
        assert table.begin(register_command(10**6), index, nested=True) == Done(("ok", index))
    assert 1 in table and len(table._owned[BATCH_OWNER]) == 3
    table = SessionTable()
    for owner in (b"bytes", 7, "x" * 257):
        assert table.begin(("$session", "register", 5, None, owner), 8) == Done(BAD_OWNER)
    assert table.begin(("$session", "register", 5, b"short", "client:a"), 8) == Done(BAD_TOKEN)
    assert len(table) == 0


def test_an_owned_session_that_never_acknowledges_keeps_only_the_newest_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that sends acked=0 forever grew its session's results (and the row rewritten
    # at every apply on every replica) without bound.
    monkeypatch.setattr(sessions, "MAX_RESULTS_PER_SESSION", 8)
    sm = Counter()
    _, sid = sm.commit(owned_register(register_command(10**6), "client:greedy"))
    for seq in range(1, 21):
        assert sm.commit(call_command(sid, seq, 0, ("incr", 1))) == ("ok", seq)
    row = sm.table.dump()[1][0]
    assert [seq for seq, _ in row[4]] == list(range(13, 21))
    # The newest keep deduplicating; an older copy is answered, never applied again.
    assert sm.commit(call_command(sid, 20, 0, ("incr", 1))) == ("ok", 20)
    assert sm.commit(call_command(sid, 12, 0, ("incr", 1))) == ACKNOWLEDGED
    assert sm.commit(call_command(sid, 1, 0, ("incr", 1))) == ACKNOWLEDGED
    assert sm.value == 20
    # A jump far ahead keeps only the jump's own record.
    assert sm.commit(call_command(sid, 10**9, 0, ("incr", 1))) == ("ok", 21)
    assert [seq for seq, _ in sm.table.dump()[1][0][4]] == [10**9]
    # Seqs and acks at msgpack's largest int move the floor without overflowing anything.
    assert sm.commit(call_command(sid, 2**64 - 1, 0, ("incr", 1))) == ("ok", 22)
    assert sm.commit(call_command(sid, 2**64 - 1, 2**64 - 1, ("incr", 1))) == ("ok", 22)
    assert sm.commit(call_command(sid, 5, 2**64 - 1, ("incr", 1))) == ACKNOWLEDGED
    # A session registered on the node itself (owner None) is not bounded, as before owners.
    _, local = sm.commit(register_command(10**6))
    for seq in range(1, 21):
        sm.commit(call_command(local, seq, 0, ("incr", 1)))
    rows = {row[0]: row for row in sm.table.dump()[1]}
    assert len(rows[local][4]) == 20


def test_a_seq_whose_floor_passes_it_within_its_batch_is_not_recorded() -> None:
    table = SessionTable()
    decision = table.begin(owned_register(register_command(10**6), "client:a"), 1)
    assert isinstance(decision, Done)
    sid = decision.result[1]
    assert table.begin(call_command(sid, 5, 0, "x"), 2) == Apply("x", sid, 5)
    # A second call of the same batch acknowledges everything below 8, seq 5 included.
    assert table.begin(call_command(sid, 9, 8, "y"), 2) == Apply("y", sid, 9)
    table.finish(sid, 5, "r5")
    table.finish(sid, 9, "r9")
    assert [seq for seq, _ in table.dump()[1][0][4]] == [9]
    assert table.begin(call_command(sid, 5, 8, "x"), 3) == Done(ACKNOWLEDGED)


@pytest.mark.parametrize("seed", range(5))
def test_raising_the_floor_keeps_exactly_the_records_at_or_above_it(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The floor moves by the records kept or by the seqs passed, whichever is fewer: both
    # ways must leave what dropping every record below the floor leaves.
    monkeypatch.setattr(sessions, "MAX_RESULTS_PER_SESSION", 50)
    rng = random.Random(seed)
    sm = Counter()
    _, sid = sm.commit(owned_register(register_command(10**6), "client:a"))
    applied: dict[int, Any] = {}
    floor = 0
    for _ in range(2000):
        seq = rng.randrange(1, 400) if rng.random() < 0.9 else rng.randrange(1, 10**6)
        acked = rng.choice([0, floor, floor + 1, seq - rng.randrange(0, 60)])
        answer = sm.commit(call_command(sid, seq, acked, ("incr", 1)))
        floor = max(floor, acked)
        if seq < floor:
            assert answer == ACKNOWLEDGED
            continue
        if seq not in applied:
            if seq - floor >= 50:
                floor = seq - 49
            applied[seq] = answer
        else:
            assert answer == applied[seq]
        applied = {s: r for s, r in applied.items() if s >= floor}
        kept = {s: r for s, r in sm.table.dump()[1][0][4]}
        assert kept == applied


def test_a_duplicate_whose_floor_passes_it_within_its_batch_answers_acknowledged() -> None:
    # A review: answered session_expired (which makes a client drop its live session) while
    # the same copy applied in a later batch answers session_seq_acknowledged.
    table = SessionTable()
    decision = table.begin(register_command(), 1)
    assert isinstance(decision, Done)
    sid = decision.result[1]
    assert table.begin(call_command(sid, 5, 0, "x"), 2) == Apply("x", sid, 5)
    assert table.begin(call_command(sid, 5, 0, "x"), 2) == Pending(sid, 5)
    assert table.begin(call_command(sid, 9, 8, "y"), 2) == Apply("y", sid, 9)  # acks 5
    table.finish(sid, 5, "r5")
    table.finish(sid, 9, "r9")
    assert table.result(sid, 5) == ACKNOWLEDGED
    assert table.begin(call_command(sid, 5, 8, "x"), 3) == Done(ACKNOWLEDGED)  # as later
    assert table.begin(close_command(sid), 4) == Done("ok")
    assert table.result(sid, 9) == EXPIRED  # the session itself is gone


def test_a_finish_taken_back_is_pending_again_and_never_stored() -> None:
    """``reopen``: the transaction that was to store a result with its command failed; the
    next one must not store that result (the command was not applied with it)."""
    table = SessionTable()
    decision = table.begin(register_command(), 1)
    assert isinstance(decision, Done)
    sid = decision.result[1]
    table.saved()
    assert table.begin(call_command(sid, 1, 0, "a"), 2) == Apply("a", sid, 1)
    assert table.begin(call_command(sid, 2, 2, "b"), 2) == Apply("b", sid, 2)  # acks seq 1
    assert table.finish(sid, 1, "r1") and table.finish(sid, 2, "r2")
    table.reopen(sid, 1)
    table.reopen(sid, 2)
    rows, _ = table.changes()
    assert rows == [(sid, (sessions.DEFAULT_EXPIRE_AFTER, 2, 2, ()))]  # no result stored
    assert table.begin(call_command(sid, 2, 2, "b"), 2) == Pending(sid, 2)  # still begun
    assert table.finish(sid, 2, "r2 again")
    assert table.finish(sid, 1, "r1 again")  # below the floor: dropped, not recorded
    assert table.changes()[0] == [(sid, (sessions.DEFAULT_EXPIRE_AFTER, 2, 2, ((2, "r2 again"),)))]
    assert not table.finish(sid + 1, 1, "no such session")
