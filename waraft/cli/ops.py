"""Cluster operations behind ``waraft bootstrap`` and ``waraft status`` (also used by the shell
and the demo): bootstrapping every partition on every node, collecting and printing status.

Everything here runs on the caller's node and reaches the cluster through ``(name, node)``
addresses, so distribution must be running (``waraft.cli.common.client_node``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from waraft import distribution as dist
from waraft import otp
from waraft.cli import admin
from waraft.core.types import Identity, LogPos
from waraft.partition import server

BOOTSTRAP_POSITION = LogPos(1, 1)
BOOTSTRAP_WORKERS = 16
"""Partitions bootstrapped at once by ``bootstrap_cluster``."""
ALREADY = ("already_bootstrapped", "rejected")
"""Bootstrap errors meaning the replica holds data already (bootstrapping is idempotent)."""


@dataclass
class PartitionResult:
    """What bootstrapping one partition did."""

    partition: int
    intended: str
    bootstrap: dict[str, Any] = field(default_factory=dict)
    leader: str | None = None
    term: int | None = None
    error: str | None = None
    warning: str | None = None
    """What did not go as asked without failing the partition: with ``allow_unreachable``,
    the replicas of nodes that did not answer or do not serve the partition (it has a leader
    without them)."""
    refused: bool = False
    """The bootstrap was refused as a whole (nothing was asked of any node): ``leader`` and
    ``term`` are then the partition's running leader, if a node reported one, not the
    outcome of this bootstrap."""


def _bootstrap_one(node: str, table: str, partition: int, config: Any, timeout: float) -> Any:
    """Bootstrap one replica through the node's ``waraft_admin`` (which calls the server
    locally), or straight at the server when the node has no admin process."""
    position = tuple(BOOTSTRAP_POSITION)
    try:
        answer = admin.call(node, "bootstrap", table, partition, position, config, timeout=timeout)
        return _named_missing(answer, table, partition)
    except otp.ExitError as exc:
        if exc.reason != "noproc":
            return ("error", _exit_text(exc.reason))
    try:
        name = server.default_name(table, partition)
        answer = server.bootstrap((name, node), BOOTSTRAP_POSITION, config)
    except otp.ExitError as exc:
        return ("error", _exit_text(exc.reason))
    return _named_missing(answer, table, partition)


def _named_missing(answer: Any, table: str, partition: int) -> Any:
    """``answer``, or for a node without the partition's server (``NO_SUCH_PARTITION``;
    older admin processes answer ``("error", ("call_error", "noproc"))``, which was printed
    as such) or with its partition restarting (``PARTITION_RESTARTING``) one that says so."""
    if answer in (server.NO_SUCH_PARTITION, ("error", ("call_error", "noproc"))):
        return ("error", f"serves no partition {partition} of table {table!r}")
    if answer == server.PARTITION_RESTARTING:
        return ("error", f"partition {partition} of table {table!r} is restarting: try again")
    return answer


NO_ADMIN = (
    "no waraft_admin runs there (embedded?): add waraft.cli.admin.child_spec(app) to the "
    "node's supervision tree"
)
"""Why a node answers none of the admin requests: it was started from a service's own tree
(``waraft.sup.child_spec``) without the admin process ``waraft node`` starts."""


def _lacks_admin(node: str, timeout: float) -> bool:
    """Whether ``node``, which refused an admin request, runs no ``waraft_admin``: a node
    with keys refuses a call to a name nothing registered rules for (``refused``, the same
    reason as for a key without the right), so ask ``ping``, which every tool key may."""
    try:
        admin.call(node, "ping", timeout=timeout)
    except otp.ExitError as exc:
        return exc.reason in ("refused", "noproc")
    return False


def _exit_text(reason: Any) -> str:
    if isinstance(reason, tuple) and reason and reason[0] == "nodedown":
        return "unreachable"
    return str(reason)


def _describe(result: Any) -> str:
    if result == "ok":
        return "ok"
    if isinstance(result, tuple) and len(result) == 2 and result[1] in ALREADY:
        return "already"
    if isinstance(result, tuple) and len(result) == 2 and result[0] == "error":
        return f"failed ({result[1]})"
    return f"failed ({result!r})"


def _failures(outcomes: dict[str, str]) -> str | None:
    """``bootstrap failed on n1 (timeout), ...``, naming each failed node's reason; None if
    every node succeeded."""
    failed = [
        f"{node} {text[len('failed ') :]}"
        for node, text in outcomes.items()
        if text.startswith("failed")
    ]
    return "bootstrap failed on " + ", ".join(failed) if failed else None


def bootstrap_cluster(
    nodes: Sequence[str],
    table: str,
    partitions: Sequence[int],
    *,
    timeout: float = 30.0,
    balance: bool = True,
    allow_unreachable: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> list[PartitionResult]:
    """Bootstrap ``table``'s ``partitions`` on every node with one config (all ``nodes`` as
    voting members) at ``LogPos(1, 1)``, start one election per partition with leaders spread
    round-robin (partition p on ``nodes[(p - 1) % len(nodes)]``), and wait up to ``timeout``
    seconds until every partition has a leader. With ``balance``, a partition whose election
    went to another node is handed over to the intended one (best effort).

    Replicas that already hold data answer ``already`` and are left alone (running it twice is
    harmless). Returns one result per partition; ``error`` is set for a partition that failed.

    First every node must serve every partition asked for (see :func:`_unserved`), and the
    nodes agree on their cluster (see :func:`_agree_on_cluster`): if not, nothing is
    bootstrapped and every partition carries the reason. Nor is anything when a node does
    not answer, unless ``allow_unreachable``: the others would commit a config naming it,
    and an id spelled otherwise than the node was started with (another host alias, say)
    looks exactly like a node that is down. A review's bootstrap with ``n1@localhost:P`` for
    ``n1@127.0.0.1:P`` made every partition a three-member config with a member nobody
    answered for: no fault tolerance, and the real n1 stalled for good.
    ``allow_unreachable`` bootstraps the others anyway, both without the nodes that do not
    answer and, for each partition, without the nodes that do not serve it: each stays a
    member that catches up once it runs (and serves) the partition.
    """

    def one(partition: int) -> PartitionResult:
        name = server.default_name(table, partition)
        config = server.make_config([Identity(name, node) for node in nodes])
        intended = nodes[(partition - 1) % len(nodes)]
        result = PartitionResult(partition, intended)
        for node in nodes:
            answer = _bootstrap_one(node, table, partition, config, timeout)
            result.bootstrap[node] = _describe(answer)
        result.error = _failures(result.bootstrap)
        if result.bootstrap.get(intended) == "ok":
            # If this fails, another member's election timeout elects someone.
            with contextlib.suppress(otp.ExitError):
                server.trigger_election((name, intended))
        return result

    problem = _unserved(nodes, table, partitions, timeout, allow_unreachable)
    if problem is None:
        problem = _agree_on_cluster(nodes, timeout, allow_unreachable)
    if problem is not None:
        untouched = [PartitionResult(p, "", error=problem, refused=True) for p in partitions]
        # Their running leaders, one look: "NO LEADER" read as an outage of healthy ones.
        _wait_for_leaders(nodes, table, untouched, 0.0)
        return untouched  # (callers say it once: ``refused_as_a_whole``)
    conflicts = _member_conflicts(nodes, table, partitions)
    partitions = [p for p in partitions if p not in conflicts]
    intended = {p: nodes[(p - 1) % len(nodes)] for p in partitions}
    results: list[PartitionResult] = []
    if partitions:
        found = _bootstrap_per_node(nodes, table, partitions, intended, timeout)
        if found is None:  # a node without bootstrap_many: one call per partition and node
            # Partitions are independent: keep several in flight so that a thousand of them
            # cost a thousand round trips spread over the nodes, not a thousand in a row.
            workers = max(1, min(BOOTSTRAP_WORKERS, len(partitions)))
            with ThreadPoolExecutor(workers, thread_name_prefix="bootstrap") as pool:
                found = list(pool.map(one, partitions))
        results = found
    for partition, problem in sorted(conflicts.items()):
        results.append(PartitionResult(partition, "", error=problem))
    results.sort(key=lambda r: r.partition)
    for result in results:
        if result.bootstrap:  # a partition left alone was not asked: its error says why
            log(
                f"{table}.{result.partition}: "
                + ", ".join(f"{n} {r}" for n, r in result.bootstrap.items())
            )
    # A partition no replica took (no node serves it, say) gets no leader: no waiting for one.
    bootstrapped = [
        r
        for r in results
        if r.partition not in conflicts
        and any(not outcome.startswith("failed") for outcome in r.bootstrap.values())
    ]
    _wait_for_leaders(nodes, table, bootstrapped, time.monotonic() + timeout)
    # The running leaders of the partitions left alone, for the summary (one look, no wait).
    _wait_for_leaders(nodes, table, [r for r in results if r.partition in conflicts], 0.0)
    if allow_unreachable:
        for result in bootstrapped:
            _unreachable_is_a_warning(result)
    if balance:
        _balance(nodes, table, bootstrapped, time.monotonic() + timeout, log)
    return results


def refused_as_a_whole(results: Sequence[PartitionResult]) -> str | None:
    """The one reason every partition failed for without a node being asked to bootstrap
    it (a node lacking a partition, one that did not answer, nodes of different clusters):
    to say once, where each partition's line said it again (a thousand times for a
    thousand partitions). None if anything was bootstrapped or reasons differ."""
    reasons = {r.error for r in results}
    if len(reasons) != 1 or not all(r.refused for r in results):
        return None
    return reasons.pop()


def _unreachable_is_a_warning(result: PartitionResult) -> None:
    """Asked to bootstrap without the nodes that do not answer: a partition that has a
    leader, whose only failures are such nodes or nodes that do not serve it, did what was
    asked (they catch up as members once they start, serving it)."""
    failed = {n: o for n, o in result.bootstrap.items() if o.startswith("failed")}
    if result.leader is None or not failed or result.error != _failures(result.bootstrap):
        return
    allowed = ("failed (unreachable)", "failed (serves no partition ")
    if all(outcome.startswith(allowed) for outcome in failed.values()):
        absent = ", ".join(
            f"{node} {outcome[len('failed ') :]}" for node, outcome in failed.items()
        )
        result.warning = f"not bootstrapped on {absent}: a member that catches up once it runs it"
        result.error = None


def _unserved(
    nodes: Sequence[str],
    table: str,
    partitions: Sequence[int],
    timeout: float,
    allow_unreachable: bool = False,
) -> str | None:
    """Why ``partitions`` must not be bootstrapped: nodes of ``nodes`` that do not serve
    every one of them (None: each serves them, or ``allow_unreachable``). Every partition's
    config names every node, so the others would commit a config with a member that has no
    replica: a review's node left out of a rolling restart that added partition 3 made it a
    3-member partition running on 2 (no fault tolerance), while the bootstrap said only
    that it failed on that node. Nodes that cannot say (unreachable, no admin process, an
    older build) are left to :func:`_agree_on_cluster` and the bootstrap itself."""
    wait = min(timeout, 5.0)

    def served(node: str) -> set[int] | None:
        try:
            answer = admin.call(node, "partitions", timeout=wait)
        except otp.ExitError:
            return None
        if not isinstance(answer, (list, tuple)):
            return None  # ("error", "unknown_request")
        return {int(p) for t, p in answer if t == table}

    with ThreadPoolExecutor(len(nodes), thread_name_prefix="partitions") as pool:
        answers = dict(zip(nodes, pool.map(served, nodes), strict=True))
    wanted = set(partitions)
    lacking = {
        node: sorted(wanted - have)
        for node, have in answers.items()
        if have is not None and not wanted <= have
    }
    if not lacking or allow_unreachable:
        return None
    which = ", ".join(f"{node} serves no partition {ranges(ps)}" for node, ps in lacking.items())
    return (
        f"{which} of table {table!r}: every node must serve every partition bootstrapped "
        "(restart it with them in its --partitions), or the others would run it with a member "
        "that has no replica; to bootstrap the others anyway, with it as a member that "
        "catches up once it serves them, pass --allow-unreachable"
    )


def ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3,5"`` (sorted numbers; what ``--partitions`` accepts)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _agree_on_cluster(
    nodes: Sequence[str], timeout: float, allow_unreachable: bool = False
) -> str | None:
    """Give every node the same cluster id (``waraft_admin``'s ``cluster`` request), or say
    why not (None: agreed).

    Nodes that have none get the one the others have, or a new random one if none has any.
    Refused: nodes of different clusters, and a cluster held by half of ``nodes`` or fewer
    while the rest have none. Every deployment bootstraps at the same log position, so nodes
    started on an earlier deployment's data directories beside new ones would pass for
    members with matching logs; the new nodes would then take (or outvote) the old data. A
    majority holding the cluster is that cluster with some nodes replaced, which a bootstrap
    may complete. Nodes of a build without clusters are left out here; unreachable ones are
    refused unless ``allow_unreachable`` (see :func:`bootstrap_cluster`), then left out."""
    wait = min(timeout, 5.0)

    failed: dict[str, str] = {}
    lacking: list[str] = []

    def ask(node: str) -> tuple[bool, str | None]:
        try:
            answer = admin.call(node, "cluster", None, timeout=wait)
        except otp.ExitError as exc:
            if exc.reason == "refused" and _lacks_admin(node, wait):
                lacking.append(node)
            else:
                failed[node] = _exit_text(exc.reason)
            return (False, None)
        if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "ok":
            return (True, None if answer[1] is None else str(answer[1]))
        return (False, None)  # ("error", "unknown_request"): a node of an older build

    with ThreadPoolExecutor(len(nodes), thread_name_prefix="cluster") as pool:
        answers = dict(zip(nodes, pool.map(ask, nodes), strict=True))
    if lacking:
        # Up, but nothing could record its cluster or bootstrap it as one call per node.
        return f"{', '.join(sorted(lacking))}: {NO_ADMIN} (waraft node starts it)"
    if failed and not allow_unreachable:
        silent = ", ".join(f"{node} ({why})" for node, why in failed.items())
        return (
            f"{silent} did not answer: every node must be up and named exactly as it was "
            "started (its id in its READY line or `waraft status`, host part included); to "
            "bootstrap the others anyway, with it as a member that catches up when it "
            "starts, pass --allow-unreachable"
        )
    known = {node: cluster for node, (ok, cluster) in answers.items() if ok}
    clusters = sorted({cluster for cluster in known.values() if cluster is not None})
    if len(clusters) > 1:
        held = ", ".join(f"{n} {c}" for n, c in known.items() if c is not None)
        return (
            f"the nodes belong to different clusters ({held}): a data dir of another "
            "deployment? Start such a node on a new data dir"
        )
    fresh = [node for node, cluster in known.items() if cluster is None]
    if clusters:
        cluster = clusters[0]
        holders = [node for node, c in known.items() if c == cluster]
        if fresh and 2 * len(holders) <= len(nodes):
            return (
                f"{', '.join(holders)} belong to cluster {cluster}, {', '.join(fresh)} to "
                f"none: bootstrapping would start a new cluster beside {cluster}'s data. For "
                f"a new cluster, start {', '.join(holders)} on new data dirs; to run "
                f"{cluster} again, start all its nodes on their own data dirs"
            )
    else:
        cluster = os.urandom(6).hex()
    for node in fresh:
        try:
            answer = admin.call(node, "cluster", cluster, timeout=wait)
        except otp.ExitError as exc:
            return f"cannot give {node} cluster {cluster}: {_exit_text(exc.reason)}"
        if answer != ("ok", cluster):
            return f"cannot give {node} cluster {cluster}: {answer}"
    return None


def _member_conflicts(
    nodes: Sequence[str], table: str, partitions: Sequence[int]
) -> dict[int, str]:
    """The partitions a replica on one of ``nodes`` already runs with other members than
    ``nodes``: bootstrapping them would give the other named nodes a config the running
    partition does not have (a review's extra node was bootstrapped into a 4-member config
    the cluster never had, and stayed a candidate for ever), and a bootstrap naming fewer
    nodes than the cluster has waited for leaders it could not see. They are left alone,
    with the members they have; membership changes go through ``adjust_config``."""
    wanted = set(nodes)
    conflicts: dict[int, str] = {}
    for node in nodes:
        for row in node_rows(node, 3.0, table, partitions):
            partition, members = row.get("partition"), row.get("members")
            if not isinstance(partition, int) or not members or partition in conflicts:
                continue
            have = {str(m) for m in members}
            if have != wanted:
                conflicts[partition] = (
                    f"already running on {node} with members {', '.join(sorted(have))}: "
                    "left alone (change members with adjust_config)"
                )
    return conflicts


def _bootstrap_per_node(
    nodes: Sequence[str],
    table: str,
    partitions: Sequence[int],
    intended: dict[int, str],
    timeout: float,
) -> list[PartitionResult] | None:
    """Bootstrap with one ``bootstrap_many`` admin call per node (in parallel), each node
    triggering the elections of the partitions it is meant to lead: three calls for a
    3-node cluster however many partitions, where one call per partition and node would
    run into the nodes' admin rate limit. None if a node does not know the verb."""

    def on(node: str) -> dict[int, tuple[Any, Any]] | None:
        elect = [p for p in partitions if intended[p] == node]
        try:
            answer = admin.call(
                node, "bootstrap_many", table, list(partitions), tuple(BOOTSTRAP_POSITION),
                list(nodes), elect, timeout=timeout,
            )  # fmt: skip
        except otp.ExitError as exc:
            if exc.reason in ("noproc", "refused"):
                return None
            failed = ("error", _exit_text(exc.reason))
            return {p: (failed, None) for p in partitions}
        if not isinstance(answer, (list, tuple)):
            return None  # ("error", "unknown_request"): an older node
        return {int(p): (result, elected) for p, result, elected in answer}

    with ThreadPoolExecutor(len(nodes), thread_name_prefix="bootstrap") as pool:
        answers = dict(zip(nodes, pool.map(on, nodes), strict=True))
    if any(answer is None for answer in answers.values()):
        return None
    results = []
    for partition in partitions:
        result = PartitionResult(partition, intended[partition])
        for node in nodes:
            found = answers[node]
            assert found is not None
            outcome = found.get(partition, (("error", "no answer"), None))[0]
            outcome = _named_missing(outcome, table, partition)
            result.bootstrap[node] = _describe(outcome)
        result.error = _failures(result.bootstrap)
        results.append(result)
    return results


def _wait_for_leaders(
    nodes: Sequence[str], table: str, results: list[PartitionResult], deadline: float
) -> None:
    """Wait until every partition reports a leader, asking each node for all its rows at once
    (one call per node per round, however many partitions)."""
    waiting = {r.partition: r for r in results}
    while waiting:
        for partition, (leader, term) in _leaders(nodes, table, list(waiting)).items():
            result = waiting.pop(partition)
            result.leader, result.term = leader, term
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for result in waiting.values():
        result.error = result.error or "no leader elected in time"


def _leaders(nodes: Sequence[str], table: str, partitions: list[int]) -> dict[int, tuple[str, int]]:
    """``partition -> (node, term)`` of the replicas that say they lead (the highest term wins)."""
    found: dict[int, tuple[str, int]] = {}
    for node in nodes:
        for row in node_rows(node, 3.0, table, partitions):
            partition, term = row.get("partition"), row.get("term")
            if row.get("state") != "leader" or not isinstance(term, int):
                continue
            if not isinstance(partition, int):
                continue
            if partition not in found or term > found[partition][1]:
                found[partition] = (node, term)
    return found


def find_leader(
    nodes: Sequence[str], table: str, partition: int, timeout: float = 2.0
) -> tuple[str | None, int | None]:
    """``(leader node, term)`` as the nodes report it: a node that says it is leader wins,
    else the leader most nodes name; ``(None, None)`` if nobody knows one."""
    name = server.default_name(table, partition)
    named: dict[str, int] = {}
    best: tuple[str | None, int | None] = (None, None)
    for node in nodes:
        try:
            status = server.status((name, node), timeout)
        except otp.ExitError:
            continue
        term = status.get("current_term")
        if status.get("state") == "leader" and (best[1] is None or (term or 0) > best[1]):
            best = (node, term)
        leader = status.get("leader_id")
        if isinstance(leader, str):
            named[leader] = named.get(leader, 0) + 1
    if best[0] is None and named:
        best = (max(named, key=lambda n: named[n]), None)
    return best


def _balance(
    nodes: Sequence[str],
    table: str,
    results: list[PartitionResult],
    deadline: float,
    log: Callable[[str], None],
) -> None:
    moved = []
    for result in results:
        if result.leader is None or result.leader == result.intended or result.error:
            continue
        name = server.default_name(table, result.partition)
        try:
            answer = server.handover((name, result.leader), result.intended)
        except otp.ExitError:
            continue
        if answer == "ok" or (isinstance(answer, tuple) and answer[0] == "ok"):
            moved.append(result)
    for result in moved:
        end = min(deadline, time.monotonic() + 3.0)
        while time.monotonic() < end:
            leader, term = find_leader(nodes, table, result.partition)
            if leader == result.intended and term is not None:
                log(f"{table}.{result.partition}: leadership moved to {leader}")
                result.leader, result.term = leader, term
                break
            time.sleep(0.05)


# -- status ---------------------------------------------------------------------------------------


def node_rows(
    node: str,
    timeout: float = 3.0,
    table: str | None = None,
    partitions: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """The status rows of every partition on ``node`` (from its ``waraft_admin``), or of
    ``table``'s ``partitions`` asked one by one when the node has no admin process. An
    unreachable node gives one row with ``"error": "unreachable"``; one that did not answer in
    time, ``"timeout"`` (a busy node is not a down one: a review's monitoring loop saw a live
    node catching up 1000 partitions reported unreachable); one that refused the call,
    the reason (``rate_limited`` is asked again once, a second later). One that runs no
    ``waraft_admin`` (embedded) is asked partition by partition, given them."""
    try:
        try:
            rows: list[dict[str, Any]] = list(admin.call(node, "status_all", timeout=timeout))
        except otp.ExitError as exc:
            if exc.reason != "rate_limited":
                raise
            time.sleep(1.0)
            rows = list(admin.call(node, "status_all", timeout=timeout))
    except otp.ExitError as exc:
        if exc.reason != "noproc" and not (exc.reason == "refused" and _lacks_admin(node, timeout)):
            return [{"node": node, "error": _exit_text(exc.reason)}]
        rows = _rows_without_admin(node, timeout, table, partitions)
    if table is not None:
        rows = [r for r in rows if r.get("table") in (None, table)]
    if partitions is not None:
        wanted = set(partitions)
        rows = [r for r in rows if r.get("partition") is None or r.get("partition") in wanted]
    return rows or [{"node": node, "error": "no partitions"}]


OVERLOADED: Final = "overloaded"
"""A status row's ``error`` for a status call the node's receive thread shed unread
(``waraft.distribution.OVERLOADED``: the caller's key over its share of that thread): the
node is up and busy, its partitions' state unknown; worth asking again shortly."""

_ANSWERED_ERRORS: Final = {
    "noproc": "not running",
    server.RESTARTING: admin.RESTARTING,
    dist.OVERLOADED: OVERLOADED,
}
"""A status row's ``error`` for a server's status call that its node failed: the partition
does not run there, or is restarting (see ``admin.status_error``), or the node shed the
call. Its other partitions are still asked; any other failure (the node unreachable, a
timeout) ends the node's rows."""


def _rows_without_admin(
    node: str, timeout: float, table: str | None, partitions: Sequence[int] | None
) -> list[dict[str, Any]]:
    if table is None or partitions is None:
        return [{"node": node, "error": f"{NO_ADMIN}, or give --table and --partitions"}]
    rows = []
    for partition in partitions:
        try:
            status = server.status((server.default_name(table, partition), node), timeout)
        except otp.ExitError as exc:
            error = _ANSWERED_ERRORS.get(exc.reason, "unreachable")
            rows.append({"node": node, "table": table, "partition": partition, "error": error})
            if exc.reason not in _ANSWERED_ERRORS:
                break
            continue
        rows.append(admin.status_row(status))
    return rows


def collect_status(
    nodes: Sequence[str],
    timeout: float = 3.0,
    table: str | None = None,
    partitions: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Status rows of every node, in node order then (table, partition) order."""
    rows: list[dict[str, Any]] = []
    for node in nodes:
        rows.extend(node_rows(node, timeout, table, partitions))
    return rows


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("NODE", lambda r: r.get("node")),
    ("PARTITION", lambda r: f"{r['table']}.{r['partition']}" if "table" in r else "-"),
    ("STATE", lambda r: r.get("error") or r.get("state")),
    ("TERM", lambda r: r.get("term")),
    ("LEADER", lambda r: r.get("leader")),
    ("COMMIT", lambda r: r.get("commit")),
    ("APPLIED", lambda r: r.get("applied")),
    ("LOG", lambda r: f"{r['log_first']}-{r['log_last']}" if "log_first" in r else None),
    (
        "QUEUES C/R/A",
        lambda r: (
            f"{r['pending_commits']}/{r['pending_reads']}/{r['apply_queue']}"
            if "pending_commits" in r
            else None
        ),
    ),
    ("LIVE", lambda r: _liveness(r)),
    ("QUIET", lambda r: None if "error" in r else ("yes" if r.get("quiescent") else "no")),
    ("UNRESP", lambda r: _unresponsive_count(r)),
]
"""The status table's columns. ``UNRESP``, on a leader's row only, counts the members that
have not answered it (down, disabled, cut off, or of another cluster): blank when none, so
that the rows with a problem stand out among a thousand partitions; ``--json`` names them."""


def _unresponsive_count(row: dict[str, Any]) -> int | None:
    if row.get("state") != "leader" or not row.get("unresponsive"):
        return None
    return len(row["unresponsive"])


def _liveness(row: dict[str, Any]) -> str | None:
    if "error" in row:
        return None
    if "live" not in row:
        return "?"
    if not row["live"]:
        return "no"
    return "lagging" if row.get("lagging") else "yes"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """An ``etcdctl -w table``-style box table of status rows."""
    header = [name for name, _ in COLUMNS]
    body = [["" if (v := get(row)) is None else str(v) for _, get in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True)) + "|"

    return "\n".join([rule, line(header), rule, *(line(cells) for cells in body), rule])


class StatusBlock(dict[str, Any]):
    """A server's status dict that shows itself as an aligned block (the shell's ``status(p)``):
    still a dict for code (``status(1)["state"]``), readable when the REPL echoes it."""

    def __repr__(self) -> str:
        return format_status_block(self)


def format_status_block(status: dict[str, Any]) -> str:
    """One ``key : value`` line per field, keys aligned, in a fixed order for the fields an
    operator looks at first (state, term, leader, indexes), then the rest alphabetically.
    The config shows as its membership, witnesses and version on one line each."""
    first = [
        "table",
        "partition",
        "id",
        "state",
        "current_term",
        "leader_id",
        "voted_for",
        "commit_index",
        "last_applied",
        "log_first",
        "log_last",
    ]
    keys = [k for k in first if k in status] + sorted(k for k in status if k not in first)
    lines: list[tuple[str, str]] = []
    for key in keys:
        value = status[key]
        if key == "config" and isinstance(value, dict):
            for part in ("membership", "witness", "version"):
                if part in value:
                    shown = value[part]
                    if isinstance(shown, (list, tuple)):
                        shown = ", ".join(_member_text(m) for m in shown) or "-"
                    lines.append((f"config.{part}", str(shown)))
            continue
        lines.append((key, "-" if value is None else str(value)))
    width = max((len(k) for k, _ in lines), default=0)
    return "\n".join(f"{k.ljust(width)} : {v}" for k, v in lines)


def _member_text(member: Any) -> str:
    if isinstance(member, (list, tuple)) and len(member) == 2:
        return str(member[1])
    return str(member)
