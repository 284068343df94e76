"""Randomized seed sweeps: ``python -m waraft.sim.sweep --seeds N [--steps S] [--start K]``.

Each seed builds a random scenario (``waraft.sim.nemesis.random_scenario``), bootstraps the
cluster, runs clients and the nemesis for at least ``--steps`` steps with every invariant
checked after each step, then a Figure 8 phase (``FIGURE_8_STEPS`` more steps of rolling
isolations of successive leaders only, ``Nemesis.rolling_phase``; appended after the mixed
faults so that their steps replay as they did before the phase existed), then calms
everything down and checks that the cluster recovers (a
leader, a final write applied on every data replica) and that the client history is
linearizable; in the scenarios whose clients use exactly-once sessions (``SESSION_SHARE`` of
the seeds: registers and lists, ambiguous commits retried with the same ``(session, seq)``),
that every list holds each acknowledged append exactly once (``check_list_append``). Any
violation makes the exit status non-zero and prints the seed, the violated
property, the last steps and the exact command that replays the run (``--replay SEED``, which
prints every step).

The sweep pins ``PYTHONHASHSEED`` (re-executing itself when needed) so that a replay in another
process makes exactly the same choices.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from waraft.core.types import State
from waraft.sim.history import Status
from waraft.sim.invariants import InvariantViolation
from waraft.sim.linearizability import check_list_append
from waraft.sim.nemesis import Nemesis, Scenario, random_scenario
from waraft.sim.node import SimNode
from waraft.sim.simulation import Simulation

DEFAULT_STEPS = 2000
FINAL_KEY = "final"
SETTLE_MS = 10_000  # what _accounting lets scheduled work run before it counts slots


@dataclass
class SeedResult:
    seed: int
    steps: int = 0
    virtual_ms: int = 0
    seconds: float = 0.0
    violation: str | None = None
    invariant: str | None = None
    linearizable: bool | None = True
    operations: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    scenario: str = ""

    @property
    def failed(self) -> bool:
        return self.violation is not None


def replay_command(seed: int, steps: int) -> str:
    return f"python -m waraft.sim.sweep --replay {seed} --steps {steps}"


def _final_write(sim: Simulation, seed: int) -> None:
    """Recovery: a leader appears and one more write commits and reaches every data replica."""
    deadline = sim.now + 60_000
    result: Any = None
    while sim.now < deadline:
        if not sim.run_until(lambda: sim.leader() is not None, deadline - sim.now):
            break
        leader = sim.leader()
        assert leader is not None
        call = sim.submit(leader, ("write", "sim", FINAL_KEY, seed))
        sim.run_until(partial(_is_done, call), 5000)
        result = call.result
        if call.done and result == "ok":
            break
        sim.run_for(100)
    else:
        raise InvariantViolation("liveness", f"no final write within 60 s (last: {result!r})")
    if result != "ok":
        raise InvariantViolation("liveness", f"no leader to take the final write: {sim.describe()}")

    def converged() -> bool:
        leader = sim.leader()
        if leader is None:
            return False
        config = sim.nodes[leader].core.current_config()
        for node in sim.nodes.values():
            if node.identity not in config.participants or node.identity in config.witness:
                continue
            if not node.up or node.core is None:
                return False
            if node.core.state in (State.DISABLED,):
                continue
            if node.storage.machine.read(("read", "sim", FINAL_KEY)) != ("ok", seed):
                return False
        return True

    # keep waiting while the laggards make progress (one entry per heartbeat is slow), but
    # no longer than ten virtual minutes in all
    deadline = sim.now + 600_000
    progress = _applied_total(sim)
    while not sim.run_until(converged, 30_000):
        now_applied = _applied_total(sim)
        if now_applied == progress or sim.now >= deadline:
            raise InvariantViolation(
                "liveness", f"the final write did not reach every replica: {sim.describe()}"
            )
        progress = now_applied


def _applied_total(sim: Simulation) -> int:
    return sum(node.storage.position.index for node in sim.nodes.values())


def run_scenario(
    scenario: Scenario, steps: int, trace: Callable[[str], None] | None = None
) -> SeedResult:
    """Run one scenario; violations are reported in the result (never raised)."""
    started = time.perf_counter()
    result = SeedResult(scenario.seed, scenario=scenario.describe())
    sim: Simulation | None = None
    try:
        sim = Simulation(scenario.config)
        sim.trace_hook = trace
        sim.bootstrap(witnesses=scenario.witnesses)
        sim.add_clients(scenario.clients, scenario.workload)
        nemesis = Nemesis(sim, scenario.nemesis)
        nemesis.start()
        while sim.steps < steps and sim.step():
            pass
        if scenario.figure_8_steps > 0:
            nemesis.calm()
            nemesis.rolling_phase()
            end = sim.steps + scenario.figure_8_steps
            while sim.steps < end and sim.step():
                pass
        nemesis.calm()
        sim.run_for(2000)
        sim.stop_clients()
        if not sim.run_until(sim.clients_idle, 30_000):
            result.warnings.append("clients still busy after 30 s")
        _final_write(sim, scenario.seed)
        sim.check_replicas()
        problems = sim.check_acknowledged()
        if problems:
            raise InvariantViolation("durability", "; ".join(problems[:5]))
        if scenario.sessions:
            _check_exactly_once(sim, scenario.workload)
        lin = sim.check_linearizable()
        result.linearizable = lin.ok
        if lin.ok is False:
            raise InvariantViolation("linearizability", lin.explain())
        _accounting(sim, result)
    except InvariantViolation as violation:
        violation.replay = replay_command(scenario.seed, steps)
        result.violation = str(violation)
        result.invariant = violation.invariant
    finally:
        if sim is not None:
            result.steps = sim.steps
            result.virtual_ms = sim.now
            result.operations = sim.history.summary()
            result.stats = dict(sim.stats)
            result.stats["elections"] = sim.stats["enter_candidate"]
            result.stats["snapshots"] = sim.catchup.completed
            result.stats["leaders"] = len(sim.invariants.leaders)
            result.stats["committed"] = len(sim.invariants.committed)
        result.seconds = time.perf_counter() - started
    return result


def _check_exactly_once(sim: Simulation, workload: Any) -> None:
    """Session scenarios: every list as applied by every up-to-date data replica (they must
    agree) checked Elle-style (``check_list_append``): a retried append applied twice, a lost
    acknowledged append, a failed one present or a read that is not a prefix is a violation.
    Up to date are the replicas ``_final_write`` waited for: a disabled one is left behind
    (its state at its own index is compared by ``Simulation.check_replicas``)."""
    lists = [f"l{i}" for i in range(getattr(workload, "lists", 0))]
    leader = sim.leader()
    assert leader is not None  # _final_write converged under a leader
    config = sim.nodes[leader].core.current_config()
    finals = []
    for node in sim.nodes.values():
        if node.identity not in config.participants or node.identity in config.witness:
            continue
        if node.core is None or node.core.state is State.DISABLED:
            continue
        data = node.storage.machine.data  # type: ignore[attr-defined]
        finals.append((node.id, {key: tuple(data.get(key, ())) for key in lists}))
    first = finals[0][1]
    for node_id, final in finals[1:]:
        if final != first:
            raise InvariantViolation(
                "exactly-once", f"replicas disagree on the lists: {finals[0][0]} {first} "
                f"vs {node_id} {final}"
            )  # fmt: skip
    problems = check_list_append(sim.history.ops, first)
    if problems:
        raise InvariantViolation("exactly-once", "; ".join(problems[:5]))
    sim.stats["list_values"] = sum(len(v) for v in first.values())


def _accounting(sim: Simulation, result: SeedResult) -> None:
    """Admission slots must all be released once everything settled (a soft check). Nodes
    outside the config are skipped: a removed replica keeps what it had queued, as in WARaft.

    Convergence is judged by storage, so a replica may pass it with work for its core still
    scheduled: a snapshot storage has opened but the core not yet handled, which cancels the
    commits it appended as a deposed leader. The check first lets such work run (bounded by
    ``SETTLE_MS``), so a slot it reports is one nothing released in that time; each is named
    with where its request waits (``SimNode.held_slots``: ``untracked`` is a leak)."""
    for node in sim.nodes.values():
        if node.accounting_errors:
            result.warnings.append(f"{node.id}: {node.accounting_errors[0]}")
    sim.run_until(lambda: not _holding(sim), SETTLE_MS)
    for node in _holding(sim):
        pending = sim.history.count(Status.PENDING)
        held = node.held_slots()
        result.warnings.append(
            f"{node.id}: {len(held)} admission slots still held {SETTLE_MS} ms after "
            f"convergence ({pending} operations pending): {', '.join(held[:5])}"
        )


def _holding(sim: Simulation) -> list[SimNode]:
    """The up participants of the leader's config (all nodes without a leader) that hold
    admission slots."""
    leader = sim.leader()
    config = sim.nodes[leader].core.current_config() if leader else None
    return [
        node
        for node in sim.nodes.values()
        if node.up and node.admitted and (config is None or node.identity in config.participants)
    ]


def _is_done(call: Any) -> bool:
    return bool(call.done)


def run_seed(
    seed: int, steps: int = DEFAULT_STEPS, trace: Callable[[str], None] | None = None
) -> SeedResult:
    """Run the random scenario of ``seed`` for at least ``steps`` steps."""
    return run_scenario(random_scenario(seed), steps, trace)


def _run_one(args: tuple[int, int]) -> SeedResult:
    seed, steps = args
    return run_seed(seed, steps)


def _pin_hash_seed(argv: list[str]) -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, "-m", "waraft.sim.sweep", *argv], env)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m waraft.sim.sweep", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per seed")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--replay", type=int, default=None, metavar="SEED")
    parser.add_argument("--quiet", action="store_true", help="replay: only the summary")
    parser.add_argument("--no-pin", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(args_list)
    if not args.no_pin and argv is None:
        _pin_hash_seed(args_list)
    if args.replay is not None:
        return _replay(args.replay, args.steps, args.quiet)
    return _sweep(args.start, args.seeds, args.steps, args.jobs)


def _replay(seed: int, steps: int, quiet: bool) -> int:
    scenario = random_scenario(seed)
    print(f"seed {seed}: {scenario.describe()}")
    result = run_scenario(scenario, steps, None if quiet else print)
    _print_result(result, steps)
    return 1 if result.failed else 0


def _print_result(result: SeedResult, steps: int) -> None:
    status = "VIOLATION" if result.failed else "ok"
    print(
        f"seed {result.seed}: {status} steps={result.steps} virtual={result.virtual_ms}ms "
        f"time={result.seconds:.2f}s ops={result.operations} stats={result.stats}"
    )
    for warning in result.warnings:
        print(f"  warning: {warning}")
    if result.violation:
        print(result.violation)
        print(f"replay: {replay_command(result.seed, steps)}")


def _code_version() -> str:
    """The git commit of the working tree (``+dirty`` if it has changes), if known."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "waraft"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _sweep(start: int, count: int, steps: int, jobs: int) -> int:
    seeds = list(range(start, start + count))
    started = time.perf_counter()
    results: list[SeedResult] = []
    totals: Counter[str] = Counter()
    work = [(seed, steps) for seed in seeds]
    print(
        f"sweep: {count} seeds from {start}, at least {steps} steps each, {jobs} job(s), "
        f"code {_code_version()} (replays are exact at the same code)"
    )
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            iterator = pool.imap_unordered(_run_one, work, chunksize=1)
            _collect(iterator, results, totals, count, started, steps)
    else:
        _collect(map(_run_one, work), results, totals, count, started, steps)
    elapsed = time.perf_counter() - started
    failed = sorted((r for r in results if r.failed), key=lambda r: r.seed)
    undetermined = [r.seed for r in results if r.linearizable is None]
    warned = [r.seed for r in results if r.warnings]
    print(
        f"summary: {len(results)} seeds, {totals['steps']} steps, "
        f"{totals['virtual_ms']} virtual ms, {elapsed:.1f}s wall, {len(failed)} violation(s), "
        f"{len(undetermined)} undetermined (linearizability search budget spent; not failures)"
    )
    print(
        f"  operations ok={totals['ok']} fail={totals['fail']} unknown={totals['unknown']}; "
        f"elections={totals['elections']} crashes={totals['crash']} "
        f"snapshots={totals['snapshots']} committed={totals['committed']} "
        f"state files lost={totals['lose_state_disabled']} "
        f"(while another recovered={totals['lose_state_concurrent']})"
    )
    print(
        f"  sessions: {totals['session_seeds']} seeds with session clients, "
        f"{totals['session_retries']} ambiguous commits retried, checked exactly-once"
    )
    if undetermined:
        print(f"  linearizability undetermined (search budget) for seeds {undetermined}")
    if warned:
        print(f"  warnings for seeds {warned[:20]}{' ...' if len(warned) > 20 else ''}")
    for result in failed:
        print(f"FAILED seed {result.seed} ({result.invariant}): {result.scenario}")
        print(result.violation)
        print(f"replay: {replay_command(result.seed, steps)}")
    if failed:
        print(f"failing seeds: {[r.seed for r in failed]}")
    return 1 if failed else 0


def _collect(
    iterator: Any,
    results: list[SeedResult],
    totals: Counter[str],
    count: int,
    started: float,
    steps: int,
) -> None:
    every = max(1, count // 20)
    for result in iterator:
        results.append(result)
        totals["steps"] += result.steps
        totals["virtual_ms"] += result.virtual_ms
        for name, value in result.operations.items():
            totals[name.split(".")[1]] += value
        for name in (
            "elections", "crash", "snapshots", "committed", "session_retries",
            "lose_state_disabled", "lose_state_concurrent",
        ):  # fmt: skip
            totals[name] += result.stats.get(name, 0)
        totals["session_seeds"] += "sessions=True" in result.scenario
        if result.failed:
            print(f"  seed {result.seed}: VIOLATION {result.invariant}", flush=True)
        if len(results) % every == 0 or len(results) == count:
            elapsed = time.perf_counter() - started
            bad = sum(1 for r in results if r.failed)
            print(f"  [{len(results)}/{count}] {elapsed:.1f}s, {bad} violation(s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
