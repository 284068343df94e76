"""Raft's safety properties, checked incrementally after every simulated step.

The checker is fed by the simulator (``waraft.sim.node`` calls the ``on_*`` hooks while it
executes effects, and ``after_step`` once a step is done). Each check costs O(work done in the
step), so it can run after every step of long randomized runs:

* **election safety** — at most one leader per term (ever), in one incarnation of it: a
  replica that restarted cannot lead again a term it led (it would have forgotten that
  term's log only if its durable state was lost);
* **leader append-only** — a node never truncates or resets its log while it is leader;
* **log matching** — an ``(index, term)`` pair identifies one entry and one previous term, across
  all logs and all time (by induction this gives Raft's log matching property);
* **leader completeness** — an entry known committed while some node was in term ``T`` is in the
  log of every leader of a term above ``T`` (checked when a leader appears and when a commit is
  observed);
* **commit safety** — one entry per committed index, and a commit index never beyond the log;
* **commit protected** — when a leader's commit index advances to ``c``, no voter of its
  config that lacks the entry at ``c`` could win an election on the logs as they are now: the
  voters whose log it is at least as up-to-date as (§5.4.1: last term, then last index),
  itself included, are fewer than a majority. This is leader completeness checked forward at
  the moment of the commit (the Raft paper's §5.4.3 argument: a majority holds the entry and
  each of them refuses a candidate without it), so a commit that some future leader could
  overwrite is reported before a schedule has to make that leader (Figure 8: committing an
  older term's entry by counting replicas, §5.4.2); it needs ``voters_of`` (the simulator
  sets it);
* **state machine safety** — the same entry applied at the same index everywhere, and, on data
  replicas, the same state at the same index: a digest of the machine's data and the session
  table (``SimStorage.state_digest``), compared after every applied index, at both ends of
  a snapshot transfer and when a run ends (``Simulation.check_replicas``);
* **vote once** — a replica grants its vote to at most one candidate per term, across all of
  its incarnations (a lost state file, ``Simulation.lose_state``, is what threatens it): only
  a vote for itself as candidate may be followed, in a later incarnation, by a vote for
  another in that term (the lost candidacy can no longer win: its replica forgot it);
* **monotonic term** (persisted and in memory, across crashes; after ``lose_state`` it starts
  afresh) and **monotonic commit index** (within one incarnation; a snapshot install may
  move it).

Witnesses receive stubbed entries (users' commands replaced by ``noop_omitted``, same key and
label); the entry comparisons accept a stub in place of the command it stands for.

A violation raises ``InvariantViolation``; the simulator adds the seed and a trace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from waraft.core.log_view import LogView
from waraft.core.types import NOOP_OMITTED, DurableState, Entry, LogPos, State

ENTRY_SLACK = 4096
"""Bytes a leader may overshoot its in-flight budget by: the one entry that crosses it."""


class InvariantViolation(AssertionError):
    """A safety property does not hold. ``invariant`` names it; the simulator fills ``seed``,
    ``time`` and ``trace`` before the exception reaches the caller."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"{invariant}: {message}")
        self.invariant = invariant
        self.message = message
        self.seed: int | None = None
        self.time: int | None = None
        self.step: int | None = None
        self.trace: list[str] = []
        self.replay: str | None = None

    def __str__(self) -> str:
        head = f"{self.invariant}: {self.message}"
        if self.seed is not None:
            head += f" (seed {self.seed}, step {self.step}, t={self.time}ms)"
        if self.replay:
            head += f"\nreplay: {self.replay}"
        if self.trace:
            head += "\nlast steps:\n" + "\n".join(self.trace)
        return head


def same_entry(a: Entry, b: Entry) -> bool:
    """Equal entries, or one is the witness stub of the other."""
    if a == b:
        return True
    if a.term != b.term:
        return False
    if a.command is None or b.command is None:  # a term-only base entry
        return True
    if a.key != b.key or a.label != b.label:
        return False
    return bool(a.command == NOOP_OMITTED or b.command == NOOP_OMITTED)


class InvariantChecker:
    """Incremental checks over every node of one simulation (node ids are strings)."""

    def __init__(self, disabled: frozenset[str] = frozenset()) -> None:
        """``disabled`` names invariants not to enforce (mutation tests use it to show that
        another property catches a bug too)."""
        self.disabled = disabled
        # a snapshot install (log reset) may lower a commit index unless this is set
        self.strict_commit = True
        self.logs: dict[str, LogView] = {}
        # (index, term) -> (entry, previous term) for every entry ever appended anywhere
        self._entries: dict[tuple[int, int], tuple[Entry, int | None]] = {}
        self.leaders: dict[int, str] = {}  # term -> leader
        self._leader_life: dict[int, int] = {}  # term -> its leader's incarnation
        self._lives: dict[str, int] = {}  # node -> its starts so far
        self._leader_now: dict[str, int] = {}  # node -> term, for nodes leading right now
        self._term: dict[str, int] = {}  # highest term seen per node (memory or disk)
        self._persisted_term: dict[str, int] = {}
        # (node, term) -> (candidate granted, node incarnation that granted it)
        self._votes: dict[tuple[str, int], tuple[str, int]] = {}
        self._commit: dict[str, int] = {}  # last commit index seen per node incarnation
        self._commit_may_drop: set[str] = set()
        # index -> (entry, lowest term of a node that saw it committed)
        self.committed: dict[int, tuple[Entry, int]] = {}
        self.applied: dict[int, Entry] = {}
        self._digests: dict[int, int] = {}
        self.checks = 0
        # node -> the voting members of its current config (``commit_protected``; unset: off)
        self.voters_of: Callable[[str], Sequence[str]] | None = None

    def _violate(self, invariant: str, message: str) -> None:
        if invariant not in self.disabled:
            raise InvariantViolation(invariant, message)

    # -- registration ----------------------------------------------------------------------------

    def register(self, node: str, log: LogView) -> None:
        self.logs[node] = log

    # -- hooks called while effects run ----------------------------------------------------------

    def on_persist(self, node: str, state: DurableState) -> None:
        previous = self._persisted_term.get(node, 0)
        if state.current_term < previous:
            self._violate(
                "monotonic_term",
                f"{node} persisted term {state.current_term} after term {previous}",
            )
        self._persisted_term[node] = state.current_term

    def on_vote(self, node: str, incarnation: int, term: int, candidate: str) -> None:
        """``node`` (in its ``incarnation``-th life) sends a granted vote for ``candidate`` in
        ``term`` (a candidate's vote for itself included)."""
        key = (node, term)
        seen = self._votes.get(key)
        if seen is None or seen[0] == candidate:
            self._votes[key] = (candidate, incarnation)
            return
        earlier, earlier_life = seen
        if earlier == node and earlier_life != incarnation:
            # its own candidacy of a past life: forgotten, it can win nothing any more
            self._votes[key] = (candidate, incarnation)
            return
        self._violate(
            "vote_once",
            f"{node} granted its vote in term {term} to {candidate}, having granted it to "
            f"{earlier}" + ("" if earlier_life == incarnation else " in an earlier incarnation"),
        )

    def on_state_lost(self, node: str) -> None:
        """``node``'s durable term and vote were deleted (its log and storage kept): its term
        may start again from 0, so the monotonic term checks start afresh for it. Its votes
        stay recorded: that it never votes twice in a term is what must survive the loss."""
        self._term.pop(node, None)
        self._persisted_term.pop(node, None)

    def on_append(self, node: str, first_index: int, entries: Any, prev_term: int | None) -> None:
        known = self._entries
        prev = prev_term
        index = first_index
        for entry in entries:
            pair = (index, entry.term)
            seen = known.get(pair)
            if seen is None:
                known[pair] = (entry, prev)
            else:
                seen_entry, seen_prev = seen
                if not same_entry(seen_entry, entry):
                    self._violate(
                        "log_matching",
                        f"{node} appended {entry} at {pair} where {seen_entry} was before",
                    )
                if seen_prev is not None and prev is not None and seen_prev != prev:
                    self._violate(
                        "log_matching",
                        f"{node} has term {prev} before {pair}, another log had {seen_prev}",
                    )
                if seen_prev is None and prev is not None:
                    known[pair] = (seen_entry, prev)
                if seen_entry.command == NOOP_OMITTED and entry.command != NOOP_OMITTED:
                    known[pair] = (entry, known[pair][1])
            prev = entry.term
            index += 1

    def on_truncate(self, node: str, index: int, leader: bool) -> None:
        if leader:
            self._violate("leader_append_only", f"{node} truncated its log at {index} while leader")

    def on_reset(self, node: str, position: LogPos, leader: bool) -> None:
        if leader:
            self._violate("leader_append_only", f"{node} reset its log to {position} while leader")
        self._commit_may_drop.add(node)

    def on_apply(self, node: str, index: int, entry: Entry, digest: int | None) -> None:
        """Storage applied ``entry`` at ``index``; ``digest`` is the data replica's state digest
        after it (``None`` for witnesses)."""
        seen = self.applied.get(index)
        if seen is None:
            self.applied[index] = entry
        elif not same_entry(seen, entry):
            self._violate(
                "state_machine_safety",
                f"{node} applied {entry} at {index}, another node applied {seen}",
            )
        elif seen.command == NOOP_OMITTED and entry.command != NOOP_OMITTED:
            self.applied[index] = entry
        committed = self.committed.get(index)
        if committed is not None and not same_entry(committed[0], entry):
            self._violate(
                "state_machine_safety",
                f"{node} applied {entry} at {index} but {committed[0]} was committed there",
            )
        if digest is not None:
            self.on_state(node, index, digest)

    def on_state(self, node: str, index: int, digest: int) -> None:
        """Data replica ``node``'s state digest is ``digest`` with ``index`` applied (after an
        apply, a snapshot's creation or load, or at the end of a run): every replica's must
        be the same at the same index."""
        known = self._digests.setdefault(index, digest)
        if known != digest:
            self._violate(
                "state_machine_safety",
                f"{node}'s state after applying {index} differs from another replica's",
            )

    def on_restart(self, node: str, term: int, commit_index: int) -> None:
        """A node restarted: its term must not go back; its commit index starts afresh."""
        self._check_term(node, term)
        self._commit[node] = commit_index
        self._leader_now.pop(node, None)
        self._lives[node] = self._lives.get(node, 0) + 1

    def on_down(self, node: str) -> None:
        self._leader_now.pop(node, None)

    # -- after every step ------------------------------------------------------------------------

    def _check_term(self, node: str, term: int) -> None:
        previous = self._term.get(node, 0)
        if term < previous:
            self._violate("monotonic_term", f"{node} is in term {term} after term {previous}")
        self._term[node] = term

    def after_step(self, node: str, state: State, term: int, commit_index: int) -> None:
        """Checks that concern ``node`` once it finished a step."""
        self.checks += 1
        self._check_term(node, term)
        log = self.logs[node]
        if state is State.LEADER:
            holder = self.leaders.get(term)
            life = self._lives.get(node, 0)
            if holder is None:
                self.leaders[term] = node
                self._leader_life[term] = life
                self._leader_now[node] = term
                self._check_leader_complete(node, term, log)
            elif holder != node:
                self._violate(
                    "election_safety", f"{node} and {holder} are both leaders of term {term}"
                )
            elif self._leader_life[term] != life:
                self._violate(
                    "election_safety",
                    f"{node} leads term {term} again after a restart (it led it before)",
                )
            else:
                self._leader_now[node] = term
        else:
            self._leader_now.pop(node, None)
        previous = self._commit.get(node, 0)
        if commit_index != previous:
            if commit_index < previous:
                if node not in self._commit_may_drop or self.strict_commit:
                    self._violate(
                        "monotonic_commit",
                        f"{node}'s commit index went from {previous} to {commit_index}",
                    )
            else:
                self._observe_commits(node, term, previous, commit_index, log)
                if state is State.LEADER and self.voters_of is not None:
                    self._check_commit_protected(node, commit_index, self.voters_of(node))
            self._commit[node] = commit_index
        self._commit_may_drop.discard(node)

    def check_bytes_in_flight(self, node: str, inflight: dict[str, int], limit: int) -> None:
        """A leader's unacknowledged bytes per peer stay within ``raft_max_bytes_in_flight``
        plus one entry (a message may end with the entry that crosses the budget; the
        simulator's commands are far below ``ENTRY_SLACK``). ``limit`` 0 is unbounded."""
        if limit <= 0:
            return
        for peer in sorted(inflight):
            if inflight[peer] > limit + ENTRY_SLACK:
                self._violate(
                    "bytes_in_flight",
                    f"{node} has {inflight[peer]} bytes in flight to {peer} (limit {limit})",
                )

    def _observe_commits(self, node: str, term: int, start: int, end: int, log: LogView) -> None:
        if end > log.last_index():
            self._violate(
                "commit_safety",
                f"{node}'s commit index {end} is beyond its last index {log.last_index()}",
            )
        committed = self.committed
        for index in range(max(start + 1, log.first_index()), end + 1):
            entry = log.get(index)
            if entry is None or entry.command is None:
                continue  # the base entry: the snapshot's prefix is checked by its digest
            seen = committed.get(index)
            if seen is None:
                committed[index] = (entry, term)
                self._check_committed_in_leaders(index, entry, term)
            else:
                seen_entry, seen_term = seen
                if not same_entry(seen_entry, entry):
                    self._violate(
                        "commit_safety",
                        f"{node} committed {entry} at {index} where {seen_entry} was committed",
                    )
                if term < seen_term:
                    committed[index] = (seen_entry, term)
                    self._check_committed_in_leaders(index, seen_entry, term)

    def _check_committed_in_leaders(self, index: int, entry: Entry, term: int) -> None:
        for leader, leader_term in self._leader_now.items():
            if leader_term > term:
                self._check_has(leader, leader_term, index, entry, term)

    def _check_leader_complete(self, node: str, term: int, log: LogView) -> None:
        first = log.first_index()
        for index, (entry, commit_term) in self.committed.items():
            if commit_term < term and index >= first:
                self._check_has(node, term, index, entry, commit_term)

    def _check_has(self, leader: str, term: int, index: int, entry: Entry, c_term: int) -> None:
        log = self.logs[leader]
        if index < log.first_index():
            return
        mine = log.get(index)
        if (
            mine is None
            or (mine.command is not None and not same_entry(mine, entry))
            or (mine.term != entry.term)
        ):
            self._violate(
                "leader_completeness",
                f"leader {leader} of term {term} has {mine} at {index}, but {entry} was committed "
                f"there in term {c_term}",
            )

    def _check_commit_protected(self, leader: str, index: int, voters: Sequence[str]) -> None:
        """``leader`` just committed up to ``index`` counting ``voters``: no voter without that
        entry may be electable (``electable_without``). Only the highest index is checked:
        by log matching, a log holding it holds the ones before it."""
        term = self.logs[leader].term(index)
        if term is None or not voters:
            return
        found = electable_without(self.logs, voters, index, term)
        if found is not None:
            voter, supporters = found
            end = _end(self.logs[voter])
            self._violate(
                "commit_protected",
                f"leader {leader} committed {index} (term {term}), but {voter} (log ends at "
                f"term {end[0]}, index {end[1]}) lacks it and would get the votes of "
                f"{supporters}, a majority of {sorted(voters)}",
            )


def electable_without(
    logs: Mapping[str, LogView], voters: Sequence[str], index: int, term: int
) -> tuple[str, list[str]] | None:
    """A voter whose log lacks the entry of ``term`` at ``index`` and yet is at least as
    up-to-date (§5.4.1: last term, then last index) as a majority of ``voters``' logs,
    itself included, with those voters; ``None`` when there is none. Votes are counted on
    logs alone, ignoring terms already voted in, pre-votes and leader stickiness: those only
    refuse more, so this over-approximates who could be elected."""
    ends = {voter: _end(logs[voter]) for voter in voters}
    majority = len(voters) // 2 + 1
    for voter in voters:
        if _holds(logs[voter], index, term):
            continue
        end = ends[voter]
        supporters = sorted(v for v in voters if ends[v] <= end)
        if len(supporters) >= majority:
            return voter, supporters
    return None


def _end(log: LogView) -> tuple[int, int]:
    """(last term, last index): what the up-to-date check compares (§5.4.1)."""
    last = log.last_index()
    return (log.term(last) or 0, last)


def _holds(log: LogView, index: int, term: int) -> bool:
    """Does ``log`` hold the entry of ``term`` at ``index``? An index below the log's first
    is taken as held (a snapshot covers it; the state digests check what it holds)."""
    if index < log.first_index():
        return True
    return log.term(index) == term
