"""The ``waraft`` command: ``node``, ``bootstrap``, ``status``, ``shell``, ``keys``.

Exit codes: 0 success; 1 the operation failed (a node unreachable, no leader elected, ...)
or, for ``status``, the table shows a problem (see ``waraft status --help``); 2 bad usage
(arguments, config file). ``waraft <command> --help`` documents each command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Final

from waraft import __version__
from waraft.cli import common
from waraft.cli.common import UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    from waraft.cli import node, shell

    parser = argparse.ArgumentParser(
        prog="waraft",
        description="waraft: WARaft (Raft for replicated state machines) in Python.",
        epilog="Run 'waraft <command> --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"waraft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    node.add_parser(sub)
    _add_bootstrap(sub)
    _add_status(sub)
    shell.add_parser(sub)
    _add_keys(sub)
    return parser


def _add_keys(sub: Any) -> None:
    p = sub.add_parser(
        "keys",
        help="create, add to and reload a cluster's CURVE keys",
        description="'waraft keys create DIR --nodes n1,n2,n3' writes one key file per node, "
        "per client and per admin identity, and DIR/cluster.json with every public key. Give "
        "each process its own key file and cluster.json; nodes run with --keys DIR, clients "
        "and tools with --keys DIR --as NAME. 'waraft keys add' adds keys to DIR and "
        "'waraft keys reload' has running nodes take the new cluster.json.",
    )
    actions = p.add_subparsers(dest="keys_action", metavar="<action>", required=True)
    create = actions.add_parser(
        "create", help="make a new cluster's keys", description="Make a new cluster's keys."
    )
    create.add_argument("directory", metavar="DIR")
    create.add_argument("--nodes", required=True, metavar="N1,N2,...", help="node names (--name)")
    create.add_argument("--clients", default="client", metavar="C1,...", help="default: client")
    create.add_argument("--admins", default="admin", metavar="A1,...", help="default: admin")
    create.set_defaults(func=_keys)
    add = actions.add_parser(
        "add",
        help="add keys (a new node) to a cluster's keys",
        description="Write a key file for each new identity and add its public key to "
        "DIR/cluster.json in place (every other key is kept). Then copy the new key file to "
        "its machine, cluster.json to every machine, and reload the keys on every running "
        "node (SIGHUP, or 'waraft keys reload').",
    )
    add.add_argument("directory", metavar="DIR")
    add.add_argument("--nodes", default="", metavar="N4,...", help="new node names (--name)")
    add.add_argument("--clients", default="", metavar="C1,...", help="new client keys")
    add.add_argument("--admins", default="", metavar="A1,...", help="new admin keys")
    add.add_argument(
        "--replace",
        action="store_true",
        help="give names cluster.json lists already a new key (the old one is refused once "
        "the nodes reload their keys)",
    )
    add.set_defaults(func=_keys)
    _add_keys_reload(actions)


def _add_keys_reload(actions: Any) -> None:
    p = actions.add_parser(
        "reload",
        help="have running nodes re-read their cluster.json",
        description="Ask each node to re-read the cluster.json of its own key directory and "
        "take the keys added or replaced there (what SIGHUP does). The request carries no "
        "keys: each node reads its own file. A node refuses a file it cannot take (unreadable, "
        "malformed, or one that removes a key or changes its own) and keeps its keys. Exit "
        "status 1 unless every node reloaded.",
    )
    common.nodes_arg(p)
    p.add_argument("--timeout", type=common.positive_seconds, default=5.0, help="seconds per node")
    common.dist_args(p)
    common.key_args(p, "admin")
    p.set_defaults(func=_keys_reload)


def _keys(args: argparse.Namespace) -> int:
    from waraft.distribution import keys

    def names(text: str) -> list[str]:
        return [n.strip() for n in text.split(",") if n.strip()]

    chosen = names(args.nodes), names(args.clients), names(args.admins)
    try:
        if args.keys_action == "add":
            written = keys.add(args.directory, *chosen, replace=args.replace)
        else:
            written = keys.create(args.directory, *chosen)
    except keys.KeysError as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        print(path)
    return EXIT_OK


def _keys_reload(args: argparse.Namespace) -> int:
    from waraft import otp
    from waraft.cli import admin

    common.setup_logging("ERROR")
    nodes = common.parse_nodes(args.nodes)
    failed = 0
    with common.client_node(
        nodes, keys=args.keys, key_name=args.key_name, roles=("admin",), **common.dist_options(args)
    ):
        for node in nodes:
            try:
                answer = admin.call(node, "reload_keys", timeout=args.timeout)
            except otp.ExitError as exc:
                reason = exc.reason
                down = reason == "nodedown" or (isinstance(reason, tuple) and "nodedown" in reason)
                answer = ("error", "unreachable" if down else reason)
            line = _reload_outcome(answer)
            failed += not line.startswith("ok")
            print(f"{node}: {line}")
    if failed:
        print(
            f"waraft keys reload: {failed} node(s) did not reload{common.unreachable_hint(args)}",
            file=sys.stderr,
        )
    return EXIT_FAILED if failed else EXIT_OK


def _reload_outcome(answer: Any) -> str:
    """One line for a node's answer to ``reload_keys``."""
    if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "ok":
        from waraft.distribution.keys import KeyChanges

        changes = answer[1]
        return "ok, " + KeyChanges(tuple(changes["added"]), tuple(changes["replaced"])).describe()
    if isinstance(answer, tuple) and answer[:2] == ("error", "keys"):
        return f"REFUSED: {answer[2]}"
    return f"FAILED: {answer!r}"


def _add_bootstrap(sub: Any) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="make a new cluster of the given nodes",
        description="Bootstrap every partition on every node with the same config (all nodes "
        "voting members) at LogPos(1, 1), elect one leader per partition spread round-robin "
        "over the nodes, wait until each partition has a leader and print a summary. "
        "Replicas that already hold data are left alone. Nothing is bootstrapped when a node "
        "does not answer or does not serve every partition asked for (see "
        "--allow-unreachable), or when the nodes belong to different clusters.",
    )
    common.nodes_arg(p)
    common.table_args(p, common.DEFAULT_PARTITIONS)
    p.add_argument(
        "--timeout",
        type=common.positive_seconds,
        default=30.0,
        help="seconds to wait for leaders",
    )
    p.add_argument(
        "--no-balance", action="store_true", help="do not move leaders to their round-robin node"
    )
    p.add_argument(
        "--allow-unreachable",
        action="store_true",
        help="bootstrap even if some nodes do not answer or do not serve every partition (they "
        "stay members and catch up once they start serving it); without it nothing is "
        "bootstrapped then",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    common.dist_args(p)
    common.key_args(p, "admin")
    p.set_defaults(func=_bootstrap)


def _add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="status table of every partition on the nodes",
        description="Print every partition of each node: state, term, leader, commit and "
        "applied index, log bounds, queue sizes (pending commits/reads/applies), liveness, "
        "quiescence and, on a leader's row, how many members do not answer it (UNRESP). "
        "Exit status 0 when all is well; 1, with one line on stderr per reason, when a node "
        "is unreachable or gives no status, no node serves a partition asked for, a "
        "partition's config names a node of --nodes that serves no replica of it, or a "
        "leader has members that do not answer it; 2 on bad usage.",
    )
    common.nodes_arg(p)
    common.table_args(p, None)
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    p.add_argument("--timeout", type=common.positive_seconds, default=3.0, help="seconds per node")
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="redraw the table every SECONDS (default 2) until Ctrl-C",
    )
    p.add_argument(
        "--count", type=common.positive_int, help="with --watch: stop after this many redraws"
    )
    common.dist_args(p)
    common.key_args(p, "client")
    p.set_defaults(func=_status)


def _bootstrap(args: argparse.Namespace) -> int:
    from waraft.cli import ops

    common.setup_logging("WARNING")
    nodes = common.parse_nodes(args.nodes)
    partitions = common.parse_partitions(args.partitions)
    log = (lambda line: None) if args.json else print
    with common.client_node(
        nodes,
        keys=args.keys,
        key_name=args.key_name,
        roles=("admin",),
        **common.dist_options(args),
    ):
        results = ops.bootstrap_cluster(
            nodes,
            args.table,
            partitions,
            timeout=args.timeout,
            balance=not args.no_balance,
            allow_unreachable=args.allow_unreachable,
            log=log,
        )
    failed = [r for r in results if r.error]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        _print_bootstrap(args.table, results, failed)
    hint = common.unreachable_hint(args)
    if hint and any(_names_unreachable(r.error) for r in failed):
        print(f"waraft bootstrap: nodes were unreachable{hint}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _print_bootstrap(table: str, results: list[Any], failed: list[Any]) -> None:
    """One line per partition, then the summary; a reason the whole bootstrap was refused
    for is printed once, not on every partition's line."""
    from waraft.cli import ops

    refusal = ops.refused_as_a_whole(results)
    print()
    for r in results:
        outcome = f"leader {r.leader} (term {r.term})" if r.leader else "NO LEADER"
        if r.refused and not r.leader:  # not asked: its state, not this bootstrap's outcome
            outcome = "no leader reported"
        if r.error and refusal is None:
            outcome += f"  ERROR: {r.error}"
        elif r.warning:
            outcome += f"  WARNING: {r.warning}"
        print(f"{table}.{r.partition}: {outcome}")
    if refusal is not None:
        print(f"not bootstrapped: {refusal}")
        print(f"nothing bootstrapped: {len(results)} partition(s) left as they were")
    else:
        print(_bootstrap_summary(results, failed))


def _names_unreachable(error: str | None) -> bool:
    """Whether a partition's error names a node that did not answer (the advice to pass
    --allow-unreachable, which every refusal carries, is no such node)."""
    return "unreachable" in str(error).replace("--allow-unreachable", "")


def _bootstrap_summary(results: list[Any], failed: list[Any]) -> str:
    if failed:
        return f"{len(failed)} partition(s) failed"
    warned = sum(1 for r in results if r.warning)
    note = f" ({warned} with warnings)" if warned else ""
    return f"{len(results)}/{len(results)} partitions have a leader{note}"


def _status(args: argparse.Namespace) -> int:
    from waraft.cli import ops

    common.setup_logging("ERROR")
    nodes = common.parse_nodes(args.nodes)
    partitions = common.parse_partitions(args.partitions) if args.partitions else None
    table = args.table if partitions or args.table != common.DEFAULT_TABLE else None
    if args.watch is not None and args.watch <= 0:
        raise UsageError("--watch needs a positive number of seconds")
    with common.client_node(
        nodes, keys=args.keys, key_name=args.key_name, **common.dist_options(args)
    ):
        if args.watch is not None:
            return _watch_status(args, nodes, table, partitions)
        rows = ops.collect_status(nodes, args.timeout, table, partitions)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(ops.format_table(rows))
    problems = _status_problems(rows, partitions, common.unreachable_hint(args))
    for problem in problems:
        print(f"waraft status: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def _status_problems(
    rows: list[dict[str, Any]], partitions: list[int] | None, hint: str = ""
) -> list[str]:
    """Why the status is not healthy, one line each (``waraft status`` exits 1 if any)."""
    problems = []
    unreachable = sorted({str(r.get("node")) for r in rows if r.get("error") == "unreachable"})
    if unreachable:
        problems.append(f"unreachable: {', '.join(unreachable)}{hint}")
    silent = _silent_nodes(rows)
    if silent:
        # Only for a node that took too long: one without waraft_admin is not busy.
        busy = any(r.get("error") in ("timeout", "rate_limited") for r in rows)
        problems.append(
            f"no status from {silent}" + (" (busy? a longer --timeout may help)" if busy else "")
        )
    for check in (
        _missing_partitions(rows, partitions),
        _restarting_replicas(rows),
        _shed_replicas(rows),
        _members_without_replica(rows),
        _unanswered_leaders(rows),
    ):
        if check:
            problems.append(check)
    return problems


def _silent_nodes(rows: list[dict[str, Any]]) -> str:
    """The reachable nodes that gave no status (``timeout``, ``rate_limited``, ...), with why."""
    quiet = {"unreachable", "no partitions"}
    return ", ".join(
        sorted(
            {
                f"{r.get('node')} ({r['error']})"
                for r in rows
                if "partition" not in r and r.get("error") and r["error"] not in quiet
            }
        )
    )


_RESTARTING: Final = "restarting"
"""A status row's ``error`` for a partition its node runs but is restarting
(``waraft.cli.admin.RESTARTING``; not imported here, to keep the CLI's start light)."""

_SHED: Final = "overloaded"
"""A status row's ``error`` for a replica whose status call its node shed unread
(``waraft.cli.ops.OVERLOADED``)."""

_ANSWERS: Final = frozenset({None, "no partitions", "not running", _RESTARTING})
"""A status row's ``error`` when its node answered (a status, no partition of the table, the
partition not running there, or restarting there)."""


def _missing_partitions(rows: list[dict[str, Any]], partitions: list[int] | None) -> str | None:
    """What the asked-for status lacks: partitions no node that answered serves
    (``--partitions 9`` of a 4-partition table printed 'no partitions' and exited 0), or any
    partition. Nothing when no node answered: that is said already (unreachable, no status),
    and whether they serve the partitions is not known."""
    # A partition restarting there, or whose status was shed, is served there all the same.
    served = {r.get("partition") for r in rows if r.get("error") in (None, _RESTARTING, _SHED)}
    answered = {r.get("node") for r in rows if r.get("error") in _ANSWERS}
    if partitions and answered:
        lacking = sorted(set(partitions) - served)
        if lacking:
            who = "node" if answered == {r.get("node") for r in rows} else "node that answered"
            return f"no {who} serves partition(s) " + ", ".join(map(str, lacking))
    elif not served and rows and all(r.get("error") == "no partitions" for r in rows):
        return "no node serves any partition of that table"
    return None


def _restarting_replicas(rows: list[dict[str, Any]]) -> str | None:
    """The replicas whose node runs them but was restarting them when asked (their server
    not up): not lacking, not healthy either; worth asking again in a moment."""
    named = _replicas_with_error(rows, _RESTARTING)
    return named and f"replicas restarting (ask again in a moment): {named}"


def _shed_replicas(rows: list[dict[str, Any]]) -> str | None:
    """The replicas whose status call their node shed unread (``overloaded``): the node is
    up and busy, their state unknown; worth asking again in a moment."""
    named = _replicas_with_error(rows, _SHED)
    return named and f"no status (overloaded, ask again in a moment): {named}"


def _replicas_with_error(rows: list[dict[str, Any]], error: str) -> str | None:
    """``node (table.partition, ...); ...`` of the rows with ``error``; None if none."""
    found: dict[str, list[str]] = {}
    for r in rows:
        if r.get("error") == error and "partition" in r:
            replica = f"{r.get('table')}.{r.get('partition')}"
            found.setdefault(str(r.get("node")), []).append(replica)
    if not found:
        return None
    return "; ".join(f"{node} ({_some(parts)})" for node, parts in found.items())


def _members_without_replica(rows: list[dict[str, Any]]) -> str | None:
    """The members of partitions' configs that are among the nodes asked and answered, but
    serve no replica of the partition: a bootstrap that went on without a node lacking the
    partition left a config naming it, and the table showed only 'no partitions' for it
    while the partition ran with no fault tolerance. A partition's config is its leader's
    (else the newest any replica has)."""
    served: dict[str, set[tuple[Any, Any]]] = {}
    configs: dict[tuple[Any, Any], tuple[tuple[bool, int], list[str]]] = {}
    for r in rows:
        node = str(r.get("node"))
        if r.get("error") == "no partitions":
            served.setdefault(node, set())
        if "partition" not in r or r.get("error") == "not running":
            continue
        key = (r.get("table"), r.get("partition"))
        served.setdefault(node, set()).add(key)
        rank = (r.get("state") == "leader", int(r.get("config_index") or 0))
        if r.get("members") and (key not in configs or rank > configs[key][0]):
            configs[key] = (rank, [str(m) for m in r["members"]])
    lacking: dict[str, list[str]] = {}
    for key, (_, members) in configs.items():
        for member in members:
            if member in served and key not in served[member]:
                lacking.setdefault(member, []).append(f"{key[0]}.{key[1]}")
    if not lacking:
        return None
    named = "; ".join(f"{node} ({_some(found)})" for node, found in lacking.items())
    return (
        f"members that serve no replica of their partition: {named} (restart the node with "
        "the partition, or remove it from the config with adjust_config)"
    )


def _unanswered_leaders(rows: list[dict[str, Any]]) -> str | None:
    """The members that leaders report unresponsive (``UNRESP``), with their partitions: a
    partition running on fewer replicas than its config names, nearer to losing its quorum
    than the table otherwise shows (a member of another cluster looked healthy)."""
    silent: dict[str, list[str]] = {}
    for r in rows:
        if r.get("state") == "leader" and "error" not in r:
            for member in r.get("unresponsive") or ():
                silent.setdefault(str(member), []).append(f"{r.get('table')}.{r.get('partition')}")
    if not silent:
        return None
    named = "; ".join(f"{node} ({_some(found)})" for node, found in silent.items())
    return f"members that do not answer their leader: {named}"


def _some(items: list[str], shown: int = 3) -> str:
    """The first ``shown`` items, and how many there are if more: one line at 1000 partitions."""
    if len(items) <= shown:
        return ", ".join(items)
    return ", ".join(items[:shown]) + f", ... {len(items)} in all"


CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _watch_status(
    args: argparse.Namespace, nodes: list[str], table: str | None, partitions: list[int] | None
) -> int:
    """Redraw the status table every ``--watch`` seconds (``--count`` times, or until Ctrl-C,
    which ends the watch normally)."""
    from waraft.cli import ops

    drawn = 0
    failed = False
    try:
        while args.count is None or drawn < args.count:
            rows = ops.collect_status(nodes, args.timeout, table, partitions)
            # As plain status: the exit code says whether the last table showed a problem.
            failed = bool(_status_problems(rows, partitions))
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            header = f"waraft status  {stamp}  every {args.watch:g}s  (Ctrl-C to stop)"
            body = json.dumps(rows, default=str) if args.json else ops.format_table(rows)
            sys.stdout.write(("" if args.json else CLEAR_SCREEN) + header + "\n" + body + "\n")
            sys.stdout.flush()
            drawn += 1
            if args.count is None or drawn < args.count:
                time.sleep(args.watch)
    except KeyboardInterrupt:
        pass
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the ``waraft`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except UsageError as exc:
        print(f"waraft {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    return code


def _stdout_closed() -> int:
    """The reader of stdout went away (``waraft status | head -1``): stop quietly, as
    Python's documentation of SIGPIPE advises. Stdout is pointed at /dev/null so that the
    interpreter's flush at exit does not raise (and print a traceback) again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file descriptor: nothing will flush to it
    finally:
        os.close(devnull)
    return EXIT_FAILED


__all__ = ["main"]
