"""The linearizability checker on hand-made and generated KV histories."""

from __future__ import annotations

import random

from waraft.sim.history import History, Operation, Status
from waraft.sim.linearizability import KVModel, ListAppendModel, check_history, check_partition


def _w(h: History, c: int, value: str, start: int, end: int | None, status: str = "ok") -> None:
    op = h.invoke(c, "commit", ("write", "t", "k", value), start)
    _end(h, op, "ok", end, status)


def _r(h: History, c: int, result: object, start: int, end: int | None, status: str = "ok") -> None:
    op = h.invoke(c, "read", ("read", "t", "k"), start)
    _end(h, op, result, end, status)


def _end(h: History, op: Operation, result: object, end: int | None, status: str) -> None:
    if end is None:
        return
    if status == "ok":
        h.ok(op, result, end)
    elif status == "fail":
        h.fail(op, ("error", "not_leader"), end)
    else:
        h.unknown(op, ("error", "timeout"), end)


def test_sequential_history_is_linearizable() -> None:
    h = History()
    _r(h, 1, "not_found", 0, 1)
    _w(h, 1, "a", 2, 3)
    _r(h, 2, ("ok", "a"), 4, 5)
    _w(h, 1, "b", 6, 7)
    _r(h, 2, ("ok", "b"), 8, 9)
    assert check_history(h.ops).ok is True


def test_stale_read_is_not_linearizable() -> None:
    h = History()
    _w(h, 1, "a", 0, 1)
    _w(h, 1, "b", 2, 3)
    _r(h, 2, ("ok", "a"), 4, 5)  # b completed before this read started
    result = check_history(h.ops)
    assert result.ok is False
    assert result.failures[0].key == "k"
    assert "linearizable=False" in result.explain()


def test_concurrent_operations_may_take_either_order() -> None:
    h = History()
    _w(h, 1, "a", 0, 10)
    _w(h, 2, "b", 1, 9)
    _r(h, 3, ("ok", "a"), 11, 12)
    assert check_history(h.ops).ok is True
    h2 = History()
    _w(h2, 1, "a", 0, 10)
    _r(h2, 3, ("ok", "a"), 2, 3)  # the write may take effect before the read that sees it
    _r(h2, 3, "not_found", 4, 5)  # ... but then the value cannot disappear again
    assert check_history(h2.ops).ok is False


def test_same_millisecond_counts_as_concurrent() -> None:
    h = History()
    _w(h, 1, "a", 0, 5)
    _r(h, 2, "not_found", 5, 6)
    assert check_history(h.ops).ok is True


def test_failed_and_unknown_operations() -> None:
    h = History()
    _w(h, 1, "a", 0, 1, status="fail")
    _r(h, 2, "not_found", 2, 3)
    assert check_history(h.ops).ok is True
    h2 = History()
    _w(h2, 1, "a", 0, 1, status="fail")
    _r(h2, 2, ("ok", "a"), 2, 3)  # a failed write was observed
    assert check_history(h2.ops).ok is False
    h3 = History()
    _w(h3, 1, "a", 0, 1, status="unknown")
    _r(h3, 2, "not_found", 2, 3)
    _r(h3, 2, ("ok", "a"), 4, 5)  # an unknown write may take effect late ...
    _r(h3, 2, ("ok", "a"), 6, 7)
    assert check_history(h3.ops).ok is True
    h4 = History()
    _w(h4, 1, "a", 0, 1, status="unknown")
    _r(h4, 2, ("ok", "a"), 2, 3)
    _r(h4, 2, "not_found", 4, 5)  # ... but only once
    assert check_history(h4.ops).ok is False
    h5 = History()
    _w(h5, 1, "a", 0, None)  # still pending: like unknown
    _r(h5, 2, ("ok", "a"), 4, 5)
    _r(h5, 2, "x", 6, 7, status="unknown")  # unknown reads are ignored
    assert check_history(h5.ops).ok is True


def test_deletes() -> None:
    h = History()
    _w(h, 1, "a", 0, 1)
    op = h.invoke(1, "commit", ("delete", "t", "k"), 2)
    h.ok(op, "ok", 3)
    _r(h, 2, "not_found", 4, 5)
    assert check_history(h.ops).ok is True
    _r(h, 2, ("ok", "a"), 6, 7)
    assert check_history(h.ops).ok is False


def _random_history(seed: int, clients: int, ops: int, keys: int) -> list[Operation]:
    """A history produced by an atomic register: each op takes effect at one instant inside its
    [invoke, complete] interval. Linearizable by construction."""
    rng = random.Random(seed)
    h = History()
    state: dict[str, str | None] = {}
    events: list[tuple[int, int, Operation]] = []
    free_at = [0] * clients
    for i in range(ops):
        c = rng.randrange(clients)
        start = free_at[c] + rng.randint(0, 3)
        point = start + rng.randint(0, 10)
        end = point + rng.randint(0, 10)
        free_at[c] = end + 1
        key = f"k{rng.randrange(keys)}"
        if rng.random() < 0.5:
            op = h.invoke(c, "commit", ("write", "t", key, f"v{i}"), start)
        else:
            op = h.invoke(c, "read", ("read", "t", key), start)
        events.append((point, i, op))
        op.complete_ms = end  # completed below, in linearization order
    for _, _, op in sorted(events, key=lambda e: (e[0], e[1])):
        cmd = op.command
        if cmd[0] == "write":
            state[cmd[2]] = cmd[3]
            op.result = "ok"
        else:
            value = state.get(cmd[2])
            op.result = "not_found" if value is None else ("ok", value)
        op.status = Status.OK
    return h.ops


def test_generated_histories_are_linearizable_and_mutants_are_not() -> None:
    model = KVModel()
    for seed in range(30):
        ops = _random_history(seed, clients=5, ops=200, keys=3)
        assert check_history(ops, model).ok is True, seed
        reads = [op for op in ops if op.kind == "read" and op.result != "not_found"]
        victim = reads[len(reads) // 2]
        victim.result = ("ok", "never-written")
        assert check_history(ops, model).ok is False, seed


def test_budget_gives_undetermined_not_failure() -> None:
    ops = _random_history(3, clients=8, ops=300, keys=1)
    verdict = check_partition("k0", ops, KVModel(), budget=5)
    assert verdict.ok is None


def test_long_histories_are_decided_within_the_default_budget() -> None:
    ops = _random_history(11, clients=10, ops=4000, keys=8)
    assert check_history(ops).ok is True


def test_an_unknown_write_observed_only_through_an_incr_is_kept() -> None:
    """write(5) timed out, incr(1) answered 6, a read returned 6: linearizable (the write took
    effect before the incr). No read returned 5, but the write must not be pruned: the incr's
    result observes it."""
    h = History()
    write = h.invoke(1, "commit", ("write", "t", "n", 5), 0)
    h.unknown(write, ("error", "timeout"), 10)
    incr = h.invoke(2, "commit", ("incr", "t", "n", 1), 20)
    h.ok(incr, ("ok", 6), 30)
    read = h.invoke(2, "read", ("read", "t", "n"), 40)
    h.ok(read, ("ok", 6), 50)
    assert check_history(h.ops).ok is True
    stale = h.invoke(3, "read", ("read", "t", "n"), 60)
    h.ok(stale, ("ok", 1), 70)  # as if the write never happened: not after 6 was read
    assert check_history(h.ops).ok is False


def _random_list_history(
    seed: int, clients: int, ops: int
) -> tuple[list[Operation], tuple[str, ...]]:
    """Appends to and reads of one list by an atomic store (each op takes effect at one
    instant inside its interval; some appends end unknown, half of those never applied), and
    the final list. Linearizable by construction."""
    rng = random.Random(seed)
    h = History()
    events: list[tuple[int, int, Operation]] = []
    free_at = [0] * clients
    for i in range(ops):
        c = rng.randrange(clients)
        start = free_at[c] + rng.randint(0, 3)
        point = start + rng.randint(0, 10)
        free_at[c] = point + rng.randint(0, 10) + 1
        kind = "commit" if rng.random() < 0.6 else "read"
        command = ("append", "t", "l", f"a{i}") if kind == "commit" else ("read", "t", "l")
        op = h.invoke(c, kind, command, start)
        op.complete_ms = free_at[c] - 1
        events.append((point, i, op))
    state: tuple[str, ...] = ()
    for _, _, op in sorted(events, key=lambda e: (e[0], e[1])):
        op.status, op.result = Status.OK, "ok"
        if op.kind == "read":
            op.result = ("ok", list(state)) if state else "not_found"
        elif rng.random() < 0.1:
            op.status, op.result = Status.UNKNOWN, ("error", "timeout")
            if rng.random() < 0.5:
                continue  # never applied
            state = (*state, op.command[3])
        else:
            state = (*state, op.command[3])
    return h.ops, state


def _with_final_read(ops: list[Operation], final: tuple[str, ...]) -> list[Operation]:
    """The same history for ``KVModel``: list reads as tuples (as it keeps a list) and, last,
    the read of the final list that ``ListAppendModel`` is given."""
    out = []
    for op in ops:
        copy = Operation(op.id, op.client, op.kind, op.command, op.invoke_ms)
        copy.status, copy.complete_ms, copy.result = op.status, op.complete_ms, op.result
        if op.kind == "read" and isinstance(op.result, tuple):
            copy.result = ("ok", tuple(op.result[1]))
        out.append(copy)
    end = max(op.complete_ms or 0 for op in ops) + 1
    last = Operation(len(ops), 99, "read", ("read", "t", "l"), end)
    last.status, last.complete_ms = Status.OK, end + 1
    last.result = ("ok", final) if final else "not_found"
    return [*out, last]


def test_the_list_model_agrees_with_the_kv_model_on_lists() -> None:
    """``ListAppendModel`` (appends in the final list's order) gives the verdicts of
    ``KVModel`` with a read of the final list at the end, on generated list histories and on
    mutants of them: a read that drops a value, or swaps two."""
    compared = {True: 0, False: 0}
    for seed in range(40):
        ops, final = _random_list_history(seed, clients=4, ops=25)
        assert check_history(ops, ListAppendModel({"l": final})).ok is True, seed
        assert check_history(_with_final_read(ops, final), KVModel()).ok is True, seed
        compared[True] += 1
        reads = [op for op in ops if op.kind == "read" and op.result != "not_found"]
        rng = random.Random(seed)
        victim = rng.choice([op for op in reads if len(op.result[1]) >= 2])
        values = victim.result[1]
        i = rng.randrange(len(values) - 1)
        for mutant in (
            values[:i] + values[i + 1 :],
            [*values[:i], values[i + 1], values[i], *values[i + 2 :]],
        ):
            victim.result = ("ok", mutant)
            got = check_history(ops, ListAppendModel({"l": final})).ok
            expected = check_history(_with_final_read(ops, final), KVModel()).ok
            assert got is not None and expected is not None, seed
            assert got is expected, seed
            compared[got] += 1
        victim.result = ("ok", values)
    assert compared[False] >= 40, compared


def test_the_list_model_decides_long_concurrent_histories() -> None:
    """Runs of overlapping appends between two reads: every order of them is a different list,
    which blew ``KVModel``'s search up (seed 1: 7 million steps at 150 operations)."""
    for seed in range(5):
        ops, final = _random_list_history(seed, clients=4, ops=3000)
        verdict = check_history(ops, ListAppendModel({"l": final}))
        assert verdict.ok is True, seed


def test_the_list_model_rejects_what_no_list_state_answers() -> None:
    h = History()
    append = h.invoke(1, "commit", ("append", "t", "l", "a0"), 0)
    h.ok(append, "ok", 1)
    empty = h.invoke(2, "read", ("read", "t", "l"), 2)
    h.ok(empty, ("ok", []), 3)  # an append creates the key: it is never an empty list
    assert check_history(h.ops, ListAppendModel({"l": ("a0",)})).ok is False
    empty.result = ("ok", ["a0"])
    assert check_history(h.ops, ListAppendModel({"l": ("a0",)})).ok is True
    assert check_history(h.ops, ListAppendModel({"l": ()})).ok is False  # a lost append
