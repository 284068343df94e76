"""A Jepsen-style chaos run over real ``waraft node`` processes (``make chaos``; a short run is
part of ``make test`` through ``test_chaos.py``).

Three durable nodes (``tests.multiprocess.harness.Cluster``: 127.0.0.1, fault injection on)
serve one partition. Client threads, each with its own ``waraft.client.Client`` (exactly-once
sessions on, every call bounded by ``timeout``), run two workloads at once:

* a single register (``"r"``): unique writes and strong reads, checked for linearizability
  with the simulator's checker (``waraft.sim.check_history`` and ``KVModel``);
* list-append (``"l0"``, ``"l1"``): appends of unique values and strong reads, checked
  Elle-style (``waraft.sim.check_list_append``): every acknowledged append exactly once in
  the final list, every read a prefix of it, no duplicates, nothing failed or phantom; and
  for linearizability like the register (``ListAppendModel``), which also orders the reads
  in real time: no read misses an append acknowledged before it began, or sees one invoked
  after it ended, or is shorter than a read that ended before it began.

A nemesis thread injects, every ``--interval`` seconds, one of: kill -9 of a node (restarted
with a ready deadline), SIGSTOP/SIGCONT, kill -9 of every node at once then restart, and a
network partition isolating one node (``set_fault`` through the node's admin process).

Everything is bounded: each node restart must report ready within ``READY_DEADLINE``; a
watchdog dumps every thread's stack (``faulthandler``), kills every node by pid and exits 3 if
the run overruns ``duration + SLACK``. A failing history is written to ``--out`` with the
command that re-checks it (``--check FILE``). Exit status: 0 clean, 1 violations, 2 no
violation found but the linearizability search ran out of budget for a key (undetermined:
the history is saved), 3 stuck or aborted (a fault that could not be undone; the stacks and
the nodes' log tails are printed), 4 the workload did not run throughout: a client thread
raised, or stopped completing operations long before the run ended (the history is checked
anyway; violations still exit 1).

The summary gives, per fault kind (kill, stop and partition tagged ``-leader`` or
``-follower`` by asking the nodes who leads just before the strike; ``restart_all``), the
worst and median client-visible unavailability: the longest stretch without an acknowledged
commit charged to the most recent fault (the stretch after the last acknowledgement counts,
up to the end of the faults). ``--keep`` saves the history and the nodes' logs of a
passing run too (results: ``benchmarks/CHAOS.md``).

    python -m tests.chaos.run --duration 180 --seed 7 --out chaos-out

``--setting raft_<name>=VALUE`` (repeatable) runs the nodes with other table settings, e.g.
``raft_max_log_bytes_per_file=32768`` so the node-wide WAL rotates, keeps, checkpoints and
deletes files all through the run (with the default 64 MiB files a run rotates little).
"""

from __future__ import annotations

import argparse
import ast
import faulthandler
import itertools
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.multiprocess.harness import DOWN, PING, Cluster, wal_files
from waraft.client import AT_MOST_ONCE
from waraft.services import codec
from waraft.sim import (
    History,
    KVModel,
    ListAppendModel,
    Operation,
    Status,
    check_history,
    check_list_append,
)

TABLE = "kv"
LISTS = ("l0", "l1")
REGISTER = "r"
READY_DEADLINE = 30.0
SLACK = 120.0
CALL_TIMEOUT = 2.0
# A live client completes an operation at least every CALL_TIMEOUT (+ its 50 ms back-off);
# one silent for longer than this (the slack a stopping client gets too, see ``run``) when
# the clients were stopped had stopped working.
SILENT_LIMIT_MS = int((CALL_TIMEOUT + 10) * 1000)
BUDGET = 2_000_000  # linearizability search steps per key
CLEAN, VIOLATIONS, UNDETERMINED, ABORTED, WORKLOAD_FAILED = 0, 1, 2, 3, 4
logger = logging.getLogger("chaos")


class Recorder:
    """A thread-safe ``History`` with real-time milliseconds."""

    def __init__(self) -> None:
        self.history = History()
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.last_completion: dict[int, int] = {}  # client -> ms of its latest completion
        self.failures: list[str] = []  # a worker thread's exception, with its traceback

    def worker_failed(self, client: int) -> None:
        """Record the exception being handled as client ``client``'s death."""
        with self.lock:
            self.failures.append(f"client{client} raised:\n{traceback.format_exc()}")

    def now(self) -> int:
        return int((time.monotonic() - self.start) * 1000)

    def invoke(self, client: int, kind: str, command: Any) -> Operation:
        with self.lock:
            return self.history.invoke(client, kind, command, self.now())

    def complete(self, op: Operation, result: Any) -> None:
        with self.lock:
            now = max(self.now(), op.invoke_ms)
            self.last_completion[op.client] = now
            error = type(result) is tuple and len(result) == 2 and result[0] == "error"
            if not error:
                self.history.ok(op, result, now)
            elif op.kind == "read":
                self.history.fail(op, result, now)  # a read without an answer has no effect
            elif any(result == answer for answer in AT_MOST_ONCE):  # (errors may not hash)
                self.history.unknown(op, result, now)  # maybe applied
            else:
                # The README's promise, checked: any other error means "not applied at all"
                # (a commit answered "cancelled" was in the snapshot that cancelled it).
                self.history.fail(op, result, now)


def _worker(
    cid: int, nodes: list[str], rec: Recorder, stop: threading.Event, seed: int, sessions: bool
) -> None:
    """One client thread: its exception is recorded in ``rec`` (and fails the run) instead of
    only printed by the thread hook while the run goes on with fewer clients."""
    try:
        _work(cid, nodes, rec, stop, seed, sessions)
    except BaseException:
        rec.worker_failed(cid)


def _work(
    cid: int, nodes: list[str], rec: Recorder, stop: threading.Event, seed: int, sessions: bool
) -> None:
    from waraft.client import Client

    rng = random.Random(seed * 1000 + cid)
    # Half the workers keep an attempt at a cut-off leader through most partitions (0.6-2.5 s;
    # the default attempt timeout is 5 s): their entries are then settled by the new leader,
    # by snapshot or truncation, while they wait, which 0.5 s attempts never see.
    client = Client(
        nodes, table=TABLE, partitions=1, timeout=CALL_TIMEOUT,
        attempt_timeout=0.5 if cid % 2 else 1.5, sessions=sessions, discover=False,
    )  # fmt: skip
    try:
        seq = 0
        while not stop.is_set():
            seq += 1
            roll = rng.random()
            if roll < 0.25:
                kind, command = "commit", ("write", TABLE, REGISTER, f"w{cid}.{seq}")
            elif roll < 0.4:
                kind, command = "read", ("read", TABLE, REGISTER)
            elif roll < 0.8:
                key = rng.choice(LISTS)
                kind, command = "commit", ("append", TABLE, key, f"a{cid}.{seq}")
            else:
                kind, command = "read", ("read", TABLE, rng.choice(LISTS))
            op = rec.invoke(cid, kind, command)
            if kind == "commit":
                result = client.commit(1, command, timeout=CALL_TIMEOUT)
            else:
                result = client.read(1, command, timeout=CALL_TIMEOUT)
            rec.complete(op, result)
            if type(result) is tuple and result[:1] == ("error",):
                time.sleep(0.05)
    finally:
        client.close()


class Nemesis:
    """Faults on the cluster's node processes; ``heal`` undoes whatever is in effect."""

    def __init__(self, cluster: Cluster, rng: random.Random, rec: Recorder) -> None:
        self.cluster = cluster
        self.rng = rng
        self.rec = rec
        # (start ms, end ms, kind, description) in the history's time base: the end is when
        # the fault was undone (node restarted and ready, SIGCONT sent, partition healed).
        self.log: list[tuple[int, int, str, str]] = []

    def _note(self, kind: str, what: str) -> None:
        self.log.append((self.rec.now(), -1, kind, what))
        logger.info("nemesis: %s", what)

    def _done(self) -> None:
        start, _, kind, what = self.log[-1]
        self.log[-1] = (start, self.rec.now(), kind, what)

    def restart(self, index: int) -> None:
        node = self.cluster.nodes[index]
        node.kill()
        node.spawn()
        node.wait_ready(READY_DEADLINE)

    def _role(self, index: int) -> str:
        """Whether node ``index`` leads the partition now (best effort: ``?`` when the
        status query fails), so unavailability can be told apart for leader faults."""
        try:
            leader = self.cluster.leader(1)
        except Exception:  # a node still restarting: unknown
            return "?"
        if leader is None:
            return "?"
        return "leader" if leader[0] == self.cluster.ids[index] else "follower"

    def strike(self) -> None:
        fault = self.rng.choice(("kill", "stop", "restart_all", "partition"))
        nodes = self.cluster.nodes
        index = self.rng.randrange(len(nodes))
        if fault != "restart_all":
            fault = f"{fault}-{self._role(index)}"
        if fault.startswith("kill"):
            self._note(fault, f"kill -9 {nodes[index].name}")
            nodes[index].kill()
            time.sleep(self.rng.uniform(0.2, 1.0))
            nodes[index].spawn()
            nodes[index].wait_ready(READY_DEADLINE)
        elif fault.startswith("stop"):
            self._note(fault, f"SIGSTOP {nodes[index].name}")
            nodes[index].signal(signal.SIGSTOP)
            time.sleep(self.rng.uniform(0.5, 2.0))
            nodes[index].signal(signal.SIGCONT)
        elif fault == "restart_all":
            self._note(fault, "kill -9 every node, restart all")
            for node in nodes:
                node.kill()
            for node in nodes:
                node.spawn()
            for node in nodes:
                node.wait_ready(READY_DEADLINE)
        else:
            ids = self.cluster.ids
            cut = ids[index]
            self._note(fault, f"partition {nodes[index].name} away")
            for i, node_id in enumerate(ids):
                others = [n for n in ids if n != cut] if node_id == cut else [cut]
                self._admin(i, "set_fault", others, [], [])
            time.sleep(self.rng.uniform(1.0, 2.5))
            self.heal()
        self._done()

    def _admin(self, index: int, *request: Any) -> None:
        try:
            self.cluster.admin(index, *request, timeout=2.0)
        except Exception as exc:  # a node just restarted or stopped: best effort
            logger.warning("admin %s on n%d: %r", request[0], index + 1, exc)

    def heal(self) -> None:
        for i, node in enumerate(self.cluster.nodes):
            node.signal(signal.SIGCONT)
            if not node.alive():
                node.spawn()
                node.wait_ready(READY_DEADLINE)
            self._admin(i, "clear_fault")


def _final_lists(nodes: list[str], deadline: float) -> dict[str, Any]:
    """The lists read strongly once the cluster is healed (retried until ``deadline``)."""
    from waraft.client import Client

    with Client(nodes, table=TABLE, partitions=1, timeout=CALL_TIMEOUT, discover=False) as c:
        final: dict[str, Any] = {}
        for key in LISTS:
            while True:
                result = c.read(1, ("read", TABLE, key))
                if result == "not_found":
                    final[key] = ()
                    break
                if type(result) is tuple and result[0] == "ok":
                    final[key] = tuple(result[1])
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no final read of {key}: {result!r}")
                time.sleep(0.2)
    return final


@dataclass
class Checked:
    """What ``check`` found: ``violations`` (empty: none) and the keys whose linearizability
    search ran out of budget (``undetermined``: neither proven nor refuted)."""

    violations: list[str] = field(default_factory=list)
    undetermined: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        lines = self.violations or ["no violation"]
        if self.undetermined:
            lines.append(
                f"linearizability undetermined (search budget of {BUDGET} steps) for keys "
                f"{self.undetermined}"
            )
        return "\n".join(lines)


def check(ops: list[Operation], final: dict[str, Any]) -> Checked:
    """Every violation of the run: Elle-style list checks (clear messages for duplicates,
    losses and phantoms), and linearizability of the register and of every list (the
    real-time order of list reads and appends, which a comparison with the final list cannot
    see)."""
    found = Checked(check_list_append(ops, final))
    register = [op for op in ops if op.command[2] == REGISTER]
    lists = [op for op in ops if op.command[2] in final]
    for what, part, model in (
        ("register", register, KVModel()),
        ("lists", lists, ListAppendModel(final)),
    ):
        verdict = check_history(part, model, budget=BUDGET)
        if verdict.ok is False:
            found.violations.append(f"{what} not linearizable:\n" + verdict.explain())
        found.undetermined += [v.key for v in verdict.undetermined]
    return found


Fault = tuple[int, int, str, str]


def _acked_times(ops: list[Operation], end: int | None) -> list[int]:
    """When commits were acknowledged, from the start (0) to ``end`` (default: the last
    completion of any operation), bounds included: a stretch without acknowledgements at
    either end of the run is unavailability too."""
    acked = [o.complete_ms for o in ops if o.status is Status.OK and o.kind == "commit"]
    if end is None:
        end = max((o.complete_ms for o in ops if o.complete_ms is not None), default=0)
    return sorted([0, *(t for t in acked if t is not None), end])


def longest_gap(ops: list[Operation], end: int | None = None) -> int:
    """The longest stretch without an acknowledged commit, the one after the last
    acknowledgement up to ``end`` included."""
    return max(b - a for a, b in itertools.pairwise(_acked_times(ops, end)))


def unavailability(
    ops: list[Operation], faults: list[Fault], end: int | None = None
) -> list[tuple[Fault, int, int]]:
    """Per fault ``(fault, gap ms, from ms)``: the longest stretch without an acknowledged
    commit that ends after the fault began and before the next one began (so a stretch is
    charged to the most recent fault; ``from`` is the last acknowledgement before it; the
    last fault's stretches run to ``end``, as in ``_acked_times``). The clients keep trying
    all the time, so a stretch without acknowledgements is what a caller saw as
    unavailability."""
    acked = _acked_times(ops, end)
    out = []
    for i, fault in enumerate(faults):
        start = fault[0]
        until = faults[i + 1][0] if i + 1 < len(faults) else acked[-1]
        worst, since = 0, start
        for a, b in itertools.pairwise(acked):
            if start < b <= until and b - a > worst:
                worst, since = b - a, a
        out.append((fault, worst, since))
    return out


def summary(ops: list[Operation], faults: list[Fault], end: int | None = None) -> str:
    """Worst unavailability per fault kind, and every fault with its own."""
    per = unavailability(ops, faults, end)
    kinds: dict[str, list[int]] = {}
    for fault, gap, _ in per:
        kinds.setdefault(fault[2], []).append(gap)
    lines = [
        f"  {kind:20} n={len(gaps):3}  worst {max(gaps):6} ms  "
        f"median {sorted(gaps)[len(gaps) // 2]:6} ms"
        for kind, gaps in sorted(kinds.items())
    ]
    lines += [
        f"  @{f[0]:>7} ms {f[3]:32} ({f[2]}, undone after {f[1] - f[0]} ms): "
        f"gap {gap} ms from {since}"
        for f, gap, since in per
    ]
    return "\n".join(lines)


PREFIX = "$prefix"


def _compact(op: Operation, final: dict[str, Any]) -> Any:
    """``op``'s result as saved: a read of a list that is a prefix of the final list is stored
    as ``("$prefix", length)``. Lossless (``load`` rebuilds it from ``final``), and it keeps a
    saved history linear in the run's length: every read of a list returns the whole list, so
    a 10-minute run's reads held ~1.5 GB of list copies (and their text dump ~15 GB of RAM)."""
    result = op.result
    if op.kind != "read" or op.command[2] not in final or type(result) is not tuple:
        return result
    if len(result) == 2 and result[0] == "ok" and isinstance(result[1], (list, tuple)):
        values = tuple(result[1])
        if final[op.command[2]][: len(values)] == values:
            return (PREFIX, len(values))
    return result


def save(
    path: Path,
    ops: list[Operation],
    final: dict[str, Any],
    violations: list[str],
    faults: list[Fault] | None = None,
) -> None:
    """The history, the final lists and the faults (msgpack, ``--check`` re-checks it), and a
    text version with list reads shortened to their length."""
    final = {key: tuple(values) for key, values in final.items()}
    rows = [
        (o.id, o.client, o.kind, o.command, o.invoke_ms, o.status.value, o.complete_ms,
         _compact(o, final))
        for o in ops
    ]  # fmt: skip
    path.write_bytes(codec.packb({"ops": rows, "final": final, "faults": faults or []}))
    with path.with_suffix(".txt").open("w") as text:
        text.write(f"re-check: {sys.executable} -m tests.chaos.run --check {path}\n\n")
        text.write("\n".join(violations) + "\n\n")
        for fault in faults or ():
            text.write(f"fault @{fault[0]}..{fault[1]} ms: {fault[3]} ({fault[2]})\n")
        for o, row in zip(ops, rows, strict=True):
            end = "…" if o.complete_ms is None else str(o.complete_ms)
            text.write(
                f"[{o.invoke_ms:>7}..{end:>7}] c{o.client} #{o.id} {o.kind} {o.command!r} -> "
                f"{o.status.value} {row[7]!r}\n"
            )


def load(path: Path) -> tuple[list[Operation], dict[str, Any], list[Fault]]:
    data = codec.unpackb(path.read_bytes())
    final = {key: tuple(values) for key, values in dict(data["final"]).items()}
    ops = []
    for oid, client, kind, command, invoke, status, complete, result in data["ops"]:
        op = Operation(oid, client, kind, command, invoke)
        if type(result) in (tuple, list) and len(result) == 2 and result[0] == PREFIX:
            result = ("ok", final[command[2]][: result[1]])
        op.status, op.complete_ms, op.result = Status(status), complete, result
        ops.append(op)
    faults = [tuple(f) for f in data.get("faults", ())]
    return ops, final, faults  # type: ignore[return-value]


def run(
    duration: float,
    seed: int,
    clients: int,
    interval: float,
    out: Path,
    sessions: bool = True,
    keep: bool = False,
    settings: dict[str, Any] | None = None,
) -> int:
    """One run; ``keep`` saves the history (with the faults) to ``out`` even when it passes;
    ``settings`` are table settings for the nodes, over the run's own."""
    from waraft import distribution as dist
    from waraft import otp

    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    cluster = Cluster(
        root, 3, partitions=(1,), settings={"raft_election_timeout_ms": 500, **(settings or {})}
    )
    stuck = threading.Event()

    def watchdog() -> None:
        if not finished.wait(duration + SLACK):
            stuck.set()
            sys.stderr.write("chaos: run overran its deadline; every thread's stack:\n")
            faulthandler.dump_traceback(all_threads=True)
            cluster.kill_all()
            os._exit(3)

    finished = threading.Event()
    stop = threading.Event()
    threading.Thread(target=watchdog, name="chaos-watchdog", daemon=True).start()
    dist.start("chaos@127.0.0.1:0", ping_interval=PING, down_after=DOWN, connect_timeout=DOWN)
    try:
        cluster.start()
        cluster.bootstrap()
        nodes = cluster.ids
        rec = Recorder()
        # Daemons, and told to stop in ``finally``: a run that fails half-way (a node that
        # never reports ready) must end, not wait at interpreter exit for client threads that
        # keep retrying against a cluster that is gone.
        workers = [
            threading.Thread(
                target=_worker,
                args=(c, nodes, rec, stop, seed, sessions),
                name=f"client{c}",
                daemon=True,
            )
            for c in range(1, clients + 1)
        ]
        for w in workers:
            w.start()
        nemesis = Nemesis(cluster, rng, rec)
        end = time.monotonic() + duration
        time.sleep(min(interval, duration / 4))
        while time.monotonic() < end:
            nemesis.strike()
            time.sleep(rng.uniform(interval * 0.5, interval))
        nemesis.heal()
        stopped = rec.now()
        stop.set()
        for w in workers:
            w.join(CALL_TIMEOUT + 10)
            if w.is_alive():
                raise RuntimeError(f"{w.name} did not stop")
        final = _final_lists(nodes, time.monotonic() + 60)
        ops = list(rec.history.ops)
        found = check(ops, final)
        failures = workload_failures(rec, range(1, clients + 1), stopped)
        _report(ops, final, found, failures, nemesis.log, stopped)
        _print_wal(cluster)
        code = exit_status(found, failures)
        if code != CLEAN or keep:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"chaos-seed{seed}-{int(time.time())}.history"
            save(path, ops, final, found.violations, nemesis.log)
            print(f"history saved to {path} (re-check: python -m tests.chaos.run --check {path})")
        if keep or code != CLEAN:
            print(f"node data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)  # kept for inspection when a check fails
        return code
    except Exception:
        logger.exception("chaos: run aborted")
        sys.stderr.write("chaos: every thread's stack:\n")
        faulthandler.dump_traceback(all_threads=True)
        sys.stderr.write(cluster.logs() + "\n")
        sys.stderr.write(f"node data and logs kept in {root}\n")
        return 3
    finally:
        stop.set()
        finished.set()
        cluster.kill_all()
        dist.stop()
        otp.node.stop_all(timeout=5.0)


def workload_failures(rec: Recorder, clients: range, stopped: int) -> list[str]:
    """Why the workload did not run throughout (empty: it did): a client thread raised, or a
    client completed nothing in the ``SILENT_LIMIT_MS`` before the clients were stopped at
    ``stopped`` ms (a run with fewer clients is a shorter, weaker history that would still
    check clean)."""
    problems = list(rec.failures)
    for client in clients:
        last = rec.last_completion.get(client)
        if last is None:
            problems.append(f"client{client} completed no operation")
        elif stopped - last > SILENT_LIMIT_MS:
            problems.append(
                f"client{client} completed nothing after {last} ms (clients stopped at "
                f"{stopped} ms)"
            )
    return problems


def exit_status(found: Checked, failures: list[str]) -> int:
    """Violations first (they are real whatever else happened), then a workload that did not
    run throughout, then an undetermined verdict."""
    if found.violations:
        return VIOLATIONS
    if failures:
        return WORKLOAD_FAILED
    return UNDETERMINED if found.undetermined else CLEAN


def _report(
    ops: list[Operation],
    final: dict[str, Any],
    found: Checked,
    failures: list[str],
    faults: list[Fault],
    stopped: int,
) -> None:
    acked = sum(1 for o in ops if o.status is Status.OK and o.kind == "commit")
    print(
        f"chaos: {len(ops)} ops, {acked} acknowledged commits, faults: "
        f"{', '.join(f[3] for f in faults) or 'none'}; final lengths "
        f"{ {k: len(v) for k, v in final.items()} }; longest gap without an acknowledged "
        f"commit {longest_gap(ops, stopped)} ms; violations: {len(found.violations)}; "
        f"undetermined keys: {found.undetermined}; workload failures: {len(failures)}"
    )
    print("unavailability (longest stretch without an acknowledged commit) per fault:")
    print(summary(ops, faults, stopped))
    for failure in failures:
        print(f"workload failure: {failure}")
    if found.violations or found.undetermined:
        print(found.describe()[:20_000])


def _print_wal(cluster: Cluster) -> None:
    """Which WAL files each node ended with: the newest number is how many it started
    (rotations plus one per restart), the count what rotation left on disk."""
    wal = {node.name: wal_files(node.data_dir) for node in cluster.nodes}
    if any(wal.values()):
        print("WAL files on disk per node: " + ", ".join(f"{n} {s}" for n, s in wal.items()))


def _setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line: the value as a Python literal (``32768``,
    ``True``, ``0.5``), else as the string it is."""
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("raft_"):
        raise argparse.ArgumentTypeError(f"expected raft_<setting>=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=4.0, help="max seconds between faults")
    parser.add_argument("--out", type=Path, default=Path("chaos-out"))
    parser.add_argument(
        "--no-sessions", action="store_true", help="sessionless clients (shows double applies)"
    )
    parser.add_argument("--check", type=Path, help="re-check a saved history instead of running")
    parser.add_argument(
        "--keep", action="store_true", help="save the history and the nodes' logs even if it passes"
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        type=_setting,
        metavar="KEY=VALUE",
        help="a table setting for the nodes (repeatable), e.g. raft_max_log_bytes_per_file=32768",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.check:
        ops, final, faults = load(args.check)
        if faults:
            print(summary(ops, faults))
        found = check(ops, final)
        print(found.describe())
        return exit_status(found, [])
    print(f"chaos: seed {args.seed}, {args.duration:.0f} s")
    return run(
        args.duration,
        args.seed,
        args.clients,
        args.interval,
        args.out,
        not args.no_sessions,
        args.keep,
        dict(args.setting),
    )


if __name__ == "__main__":
    sys.exit(main())
