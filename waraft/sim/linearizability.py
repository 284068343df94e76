"""A linearizability checker for simulated client histories (Wing & Gong search with Lowe's
memoisation, as Porcupine does it), split per key (P-compositionality).

Rules for the history:
* ``ok`` operations took effect between their invocation and completion, with their result;
* ``fail`` operations did not take effect and are ignored;
* ``unknown`` (and still pending) commits may have taken effect at any time after invocation
  (or never): their completion is placed after everything else, where nobody observes them;
* ``unknown`` reads are dropped (a read without an answer has no effect).

Two operations are ordered only when one completed strictly before the other was invoked
(ties in the same millisecond count as concurrent). The search is bounded: past ``budget``
search steps for one key, the verdict for that key is ``None`` (undetermined), never a failure.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from waraft.sim.history import Operation, Status

INFINITY = float("inf")


class Model(Protocol):
    """A sequential specification, partitioned by key."""

    def partition(self, op: Operation) -> Hashable | None:
        """The independent sub-history ``op`` belongs to (``None``: not checked)."""

    def init(self) -> Hashable:
        """The initial state of one partition."""

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        """Whether ``op`` (with ``op.result``; ``None`` if unknown) is legal in ``state``, and the
        state after it."""


def _prune(model: Any, ops: list[Operation]) -> list[Operation]:
    prune = getattr(model, "prune", None)
    if prune is None:
        return ops
    pruned: list[Operation] = prune(ops)
    return pruned


def key_of(op: Operation) -> Hashable | None:
    """The key a ``KVStateMachine`` command works on (None for anything else: sessions'
    own commands, malformed ones)."""
    command = op.command
    if isinstance(command, tuple) and len(command) >= 3 and command[0] != "$session":
        key: Hashable = command[2]
        return key
    return None


class KVModel:
    """The sequential spec of ``KVStateMachine`` (per key: the value, or ``None`` if absent)."""

    def partition(self, op: Operation) -> Hashable | None:
        return key_of(op)

    def init(self) -> Hashable:
        return None

    def prune(self, ops: list[Operation]) -> list[Operation]:
        """Drop unknown writes whose (unique) value no read returned: such a write can always
        be placed after everything else, where it changes nothing, so keeping it only widens
        the search. Only in a key whose updates are all writes and deletes: an ``incr`` or
        ``append`` builds on the value before it, so a write can be observed through the
        result of one (write 5, then incr 1 answers 6) without any read returning it."""
        if any(op.kind != "read" and op.command[0] not in ("write", "delete") for op in ops):
            return ops
        seen = {
            op.result[1]
            for op in ops
            if op.kind == "read" and isinstance(op.result, tuple) and len(op.result) == 2
        }
        return [
            op
            for op in ops
            if op.status is Status.OK or op.command[0] != "write" or op.command[3] in seen
        ]

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        command = op.command
        verb = command[0]
        if verb == "write":
            return (op.status is not Status.OK or op.result == "ok"), command[3]
        if verb == "delete":
            return (op.status is not Status.OK or op.result == "ok"), None
        if verb == "append":
            current = state if isinstance(state, tuple) else ()
            return (op.status is not Status.OK or op.result == "ok"), (*current, command[3])
        if verb == "incr":
            new = (state if isinstance(state, int) else 0) + command[3]
            return (op.status is not Status.OK or op.result == ("ok", new)), new
        if verb == "read":
            expected = "not_found" if state is None else ("ok", state)
            return op.result == expected, state
        raise ValueError(f"KVModel cannot check {command!r}")


class ListAppendModel:
    """The sequential spec of append-only list keys (``("append", table, key, value)`` with
    values unique per key; reads answered ``("ok", list)`` or ``"not_found"``), given each
    key's ``final`` list, read once every operation had ended.

    The final list is the order in which the appends that took effect were applied, so a
    linearization applies them in that order: a state is how long a prefix of the final list
    has been applied (an ``int``), an append is legal only as the next value of that list and
    a read only if it answered that prefix (``"not_found"`` for none: an append creates the
    key). ``KVModel`` could check the same histories with whole tuples as states, but every
    order of concurrent appends is then a different state, and a run's runs of overlapping
    appends between two reads blew its search up; here the orders that contradict the final
    list die at once. A read that is not a prefix of the final list, an acknowledged append
    missing from it or a value appended twice matches no state (``check_list_append``
    names them more clearly).
    """

    NOWHERE = -1

    def __init__(self, final: dict[Any, Any]) -> None:
        self._final = {key: tuple(values) for key, values in final.items()}
        self._positions = {
            key: {value: i for i, value in enumerate(values)} for key, values in self._final.items()
        }
        self._reads: dict[int, int] = {}  # op.id -> the prefix length its answer names

    def partition(self, op: Operation) -> Hashable | None:
        return key_of(op)

    def init(self) -> Hashable:
        return 0

    def prune(self, ops: list[Operation]) -> list[Operation]:
        """Drop unknown appends absent from the final list: they never took effect (or took
        it after the final read, where nobody observed them)."""
        return [
            op
            for op in ops
            if op.status is Status.OK
            or op.kind == "read"
            or op.command[3] in self._positions.get(op.command[2], ())
        ]

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        command = op.command
        if command[0] == "append":
            at = self._positions.get(command[2], {}).get(command[3])
            if at is None or at != state:
                return False, state
            return (op.status is not Status.OK or op.result == "ok"), at + 1
        if command[0] == "read":
            length = self._reads.get(op.id)
            if length is None:
                length = self._reads[op.id] = self._prefix(command[2], op.result)
            return length == state, state
        raise ValueError(f"ListAppendModel cannot check {command!r}")

    def _prefix(self, key: Any, result: Any) -> int:
        """The length of the final list's prefix a read answered (``NOWHERE``: none)."""
        if result == "not_found":
            return 0
        if type(result) is not tuple or len(result) != 2 or result[0] != "ok":
            return self.NOWHERE
        if not isinstance(result[1], (list, tuple)) or not result[1]:
            return self.NOWHERE  # an empty list: no append creates one
        values = tuple(result[1])
        if self._final.get(key, ())[: len(values)] != values:
            return self.NOWHERE
        return len(values)


@dataclass
class PartitionVerdict:
    key: Any
    ok: bool | None  # None: search budget exhausted
    operations: list[Operation]
    steps: int


@dataclass
class LinearizabilityResult:
    """``ok`` is ``True`` (linearizable), ``False`` (a key is not) or ``None`` (undetermined)."""

    ok: bool | None
    failures: list[PartitionVerdict] = field(default_factory=list)
    undetermined: list[PartitionVerdict] = field(default_factory=list)
    keys: int = 0
    operations: int = 0
    model: Any = None

    def explain(self, limit: int = 30) -> str:
        lines = [
            f"linearizable={self.ok} keys={self.keys} operations={self.operations} "
            f"failing_keys={[v.key for v in self.failures]} "
            f"undetermined_keys={[v.key for v in self.undetermined]}"
        ]
        for verdict in self.failures[:3]:
            ops = sorted(verdict.operations, key=lambda o: (o.invoke_ms, o.id))
            cut = _shortest_failing_prefix(verdict.key, ops, self.model)
            lines.append(
                f"-- key {verdict.key!r}: {len(ops)} operations; the first {cut} (by invocation) "
                f"are already not linearizable; the last {limit} of those:"
            )
            lines.extend(op.line() for op in ops[max(0, cut - limit) : cut])
        return "\n".join(lines)


def check_history(
    ops: Iterable[Operation], model: Model | None = None, budget: int = 200_000
) -> LinearizabilityResult:
    """Check a whole history, key by key."""
    model = model or KVModel()
    parts: dict[Hashable, list[Operation]] = {}
    total = 0
    for op in ops:
        if op.status is Status.FAIL:
            continue
        if op.kind == "read" and op.status is not Status.OK:
            continue
        key = model.partition(op)
        if key is None:
            continue
        parts.setdefault(key, []).append(op)
        total += 1
    result = LinearizabilityResult(ok=True, keys=len(parts), operations=total, model=model)
    for key, part in parts.items():
        verdict = check_partition(key, _prune(model, part), model, budget)
        if verdict.ok is False:
            result.failures.append(verdict)
        elif verdict.ok is None:
            result.undetermined.append(verdict)
    if result.failures:
        result.ok = False
    elif result.undetermined:
        result.ok = None
    return result


def _shortest_failing_prefix(key: Any, ops: list[Operation], model: Any) -> int:
    """Diagnostics: the smallest n whose first n operations (by invocation) already fail."""
    low, high = 1, len(ops)
    while low < high:
        mid = (low + high) // 2
        if check_partition(key, _prune(model, ops[:mid]), model).ok is False:
            high = mid
        else:
            low = mid + 1
    return high


def check_partition(
    key: Any, ops: list[Operation], model: Model, budget: int = 200_000
) -> PartitionVerdict:
    """Search for a linearization of one key's operations."""
    n = len(ops)
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        ret: float = (
            op.complete_ms if op.status is Status.OK and op.complete_ms is not None else INFINITY
        )
        events.append((op.invoke_ms, 0, i))  # calls sort before returns at the same time
        events.append((ret, 1, i))
    events.sort()
    # doubly linked list over event nodes; node = 2*i (call) / 2*i+1 (return); head = 2n
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for _, is_ret, i in events:
        node = 2 * i + is_ret
        nxt[last] = node
        prv[node] = last
        last = node
    nxt[last] = -1

    def lift(call: int) -> None:
        ret = call + 1
        nxt[prv[call]] = nxt[call]
        prv[nxt[call]] = prv[call]
        nxt[prv[ret]] = nxt[ret]
        if nxt[ret] != -1:
            prv[nxt[ret]] = prv[ret]

    def unlift(call: int) -> None:
        ret = call + 1
        nxt[prv[ret]] = ret
        if nxt[ret] != -1:
            prv[nxt[ret]] = ret
        nxt[prv[call]] = call
        prv[nxt[call]] = call

    step = model.step
    state: Hashable = model.init()
    linearized = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[int, Hashable]] = []
    entry = nxt[head]
    steps = 0
    while nxt[head] != -1:
        steps += 1
        if steps > budget:
            return PartitionVerdict(key, None, ops, steps)
        if entry & 1 == 0:  # a call
            i = entry >> 1
            ok, new_state = step(state, ops[i])
            if ok:
                new_lin = linearized | (1 << i)
                memo = (new_lin, new_state)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_lin
                    lift(entry)
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:  # a return: the operation it ends could not be linearized before it
            if not stack:
                return PartitionVerdict(key, False, ops, steps)
            entry, state = stack.pop()
            linearized &= ~(1 << (entry >> 1))
            unlift(entry)
            entry = nxt[entry]
    return PartitionVerdict(key, True, ops, steps)


def check_list_append(ops: Iterable[Operation], final: dict[Any, Any]) -> list[str]:
    """Elle-style check of a list-append history; returns the violations (empty: none).

    ``ops`` hold commits ``("append", table, key, value)`` with values unique across the
    history, and reads ``("read", table, key)`` answered ``("ok", list)`` or ``"not_found"``;
    ``final`` maps each checked key to its list as read after the run (reads of other keys
    are ignored). Violations:

    * a value twice in a final list (a retried append applied twice: a double apply);
    * an acknowledged (``ok``) append missing from its final list (a lost write);
    * a ``fail``-ed append present (it certainly did not take effect);
    * a value no append of that key wrote (a phantom);
    * an acknowledged read that is not a prefix of the final list (appends reordered or lost
      after being observed).

    Unknown appends may be present or absent, once.
    """
    violations: list[str] = []
    writers: dict[tuple[Any, Any], Operation] = {}
    reads: list[Operation] = []
    for op in ops:
        command = op.command
        if op.kind == "commit" and type(command) is tuple and command[:1] == ("append",):
            writers[(command[2], command[3])] = op
        elif op.kind == "read" and op.status is Status.OK:
            reads.append(op)
    finals = {key: tuple(values) if values else () for key, values in final.items()}
    for key, values in finals.items():
        seen: set[Any] = set()
        for value in values:
            if value in seen:
                violations.append(f"duplicate: {value!r} appears twice in the final {key!r}")
            seen.add(value)
            writer = writers.get((key, value))
            if writer is None:
                violations.append(f"phantom: {value!r} in {key!r} was never appended there")
            elif writer.status is Status.FAIL:
                violations.append(f"failed append present: {writer.line()}")
    for (key, value), op in writers.items():
        if op.status is Status.OK and value not in finals.get(key, ()):
            violations.append(f"lost acknowledged append: {op.line()}")
    for op in reads:
        key = op.command[2]
        if key not in finals:
            continue  # not a list under check (a register, say)
        observed: tuple[Any, ...] = ()
        if type(op.result) is tuple and len(op.result) == 2 and op.result[0] == "ok":
            observed = tuple(op.result[1])
        if finals.get(key, ())[: len(observed)] != observed:
            violations.append(f"read not a prefix of the final {key!r}: {op.line()}")
    return violations
