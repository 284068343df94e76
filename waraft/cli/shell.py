"""``waraft shell``: an interactive Python REPL with the waraft API and helpers preloaded.

``--node NAME@HOST:PORT`` starts a node in the shell's process (with ``--data-dir``, ``--table``,
``--partitions``... as ``waraft node``); ``--attach NODE`` starts a throw-away client node and
points the helpers at a running node. ptpython or IPython is used when installed, else the
standard ``code`` module with readline tab completion. ``-c CODE`` runs code and exits
(non-interactive use, scripts, tests).
"""

from __future__ import annotations

import argparse
import code
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Final

from waraft.cli import common
from waraft.cli.common import UsageError

logger = logging.getLogger(__name__)


class ShellError(Exception):
    """A helper's clear refusal: ``waraft shell -c`` prints it without a traceback."""


class Helpers:
    """The functions the shell preloads; they act on ``target`` (a node id) by default."""

    def __init__(
        self,
        target: str,
        table: str,
        partitions: list[int],
        nodes: list[str],
        role: str | None = None,
    ) -> None:
        """``role``: that of the key the shell connects with (``"client"``, ``"admin"``),
        None when unknown or without keys."""
        self.target = target
        self.table = table
        self.partitions = partitions
        self._nodes = nodes
        self.role = role
        self._client: Any = None

    # -- addressing ------------------------------------------------------------------------------

    def _server(self, partition: int, node: str | None) -> tuple[str, str]:
        from waraft.partition import server

        return (server.default_name(self.table, partition), node or self.target)

    def _on(self, call: Any, partition: int, node: str | None, *args: Any) -> Any:
        """``call(server address, *args)``, with a partition the node does not serve said as
        such (one it runs but is restarting, ``PARTITION_RESTARTING`` or, from the calls
        answering data, ``ExitError(RESTARTING)``, said as that): the API answers
        ``NO_SUCH_PARTITION`` or fails ``noproc``, where a bare
        ``ExitError: refused`` read like a permission problem at the end of a traceback
        (``refused`` now means a key without the right, or a node of an older build: both
        are named); a node that cannot be reached (``("nodedown", node)``) said in one
        line too, and one whose receive thread shed the call (``overloaded``: up, but this
        key is over its share of that thread) as such, not as a raw ``ExitError``."""
        from waraft import distribution as dist
        from waraft import otp
        from waraft.partition import server

        where = node or self.target
        try:
            answer = call(self._server(partition, node), *args)
        except otp.ExitError as exc:
            if exc.reason == "noproc":
                raise self._unserved(partition, where) from None
            if exc.reason == server.RESTARTING:
                raise self._restarting(partition, where) from None
            if exc.reason == "refused":
                raise self._refused(call, partition, where) from None
            if exc.reason == dist.OVERLOADED:
                raise ShellError(
                    f"{where} is overloaded: it shed this call unread (this key is over its "
                    "share of the node's receive thread): try again in a moment"
                ) from None
            if _is_unreachable(exc.reason):
                why = " (not running, another address, or it refuses these keys)"
                if common.handshakes_refused():
                    why = common.HANDSHAKE_HINT
                raise ShellError(f"{where} is unreachable{why}") from None
            raise
        if answer == server.NO_SUCH_PARTITION:
            raise self._unserved(partition, where)
        if answer == server.PARTITION_RESTARTING:
            raise self._restarting(partition, where)
        return answer

    def _restarting(self, partition: int, node: str) -> ShellError:
        return ShellError(
            f"{node} runs partition {partition!r} of table {self.table!r}, but it is "
            "restarting (its server is not up right now): try again in a moment"
        )

    def _refused(self, call: Any, partition: int, node: str) -> ShellError:
        """A call the node refused: with a client key, an admin verb (all but ``status``) is
        refused for the key's role, where "serves no partition" sent the user looking for
        a missing partition."""
        from waraft.partition import server

        if self.role == "client" and call is not server.status:
            return ShellError(
                f"{node} refused {getattr(call, '__name__', 'the call')}: an admin verb, and "
                "this shell runs with a client key (start it with --as admin, an admin key)"
            )
        return ShellError(
            f"{node} refused the call: this key lacks the right, or (an older node) it "
            f"serves no partition {partition!r} of table {self.table!r}"
        )

    def _unserved(self, partition: int, node: str) -> ShellError:
        return ShellError(f"{node} serves no partition {partition!r} of table {self.table!r}")

    def nodes(self) -> list[str]:
        """The cluster's nodes: the members of the target's partitions, else those given."""
        from waraft import otp
        from waraft.partition import server

        found: list[str] = list(self._nodes)
        for partition in self.partitions[:1]:
            try:
                config = server.get_current_config(self._server(partition, None))
            except otp.ExitError:
                continue
            found.extend(member.node for member in config.membership)
        return list(dict.fromkeys(found or [self.target]))

    # -- status ----------------------------------------------------------------------------------

    def status(self, partition: int | None = None, node: str | None = None) -> Any:
        """One partition's full status dict, or (no argument) print the cluster's table."""
        from waraft.cli import ops
        from waraft.partition import server

        if partition is not None:
            return ops.StatusBlock(self._on(server.status, partition, node))
        rows = ops.collect_status([node] if node else self.nodes())
        print(ops.format_table(rows))
        if common.handshakes_refused() and any(r.get("error") == "unreachable" for r in rows):
            print(f"unreachable:{common.HANDSHAKE_HINT}")
        return None

    def leader(self, partition: int = 1) -> str | None:
        """The node that leads ``partition`` (as the cluster reports it), None if no node
        knows one; an error if the target does not serve the partition and no node knows a
        leader (None read as an election under way)."""
        from waraft.cli import ops
        from waraft.partition import server

        found = ops.find_leader(self.nodes(), self.table, partition)[0]
        if found is None:
            self._on(server.status, partition, None)  # the target has it, or the error says
        return found

    # -- admin -----------------------------------------------------------------------------------

    def promote(self, partition: int = 1, node: str | None = None, force: bool = False) -> Any:
        """Make ``node`` (default: the target) leader of ``partition``, at the next term.

        Without ``force`` it runs an election the votes decide (forced: no pre-vote, no
        leader stickiness), so a replica whose log is behind is refused; ``"ok"`` once it
        won. ``force=True`` is WARaft's override: leader without votes, nothing checked about
        its log; on a replica that is behind it loses committed data. What it did is said
        on stderr, the answer returned."""
        from waraft.partition import server

        answer = self._on(server.promote, partition, node, "next", force)
        print(promote_note(answer, force), file=sys.stderr)
        return answer

    def trigger_election(self, partition: int = 1, node: str | None = None) -> Any:
        """Start an election on ``node`` for ``partition``."""
        from waraft.partition import server

        return self._on(server.trigger_election, partition, node)

    def resign(self, partition: int = 1, node: str | None = None) -> Any:
        """The leader on ``node`` steps down."""
        from waraft.partition import server

        return self._on(server.resign, partition, node)

    def handover(self, partition: int = 1, to: str | None = None) -> Any:
        """Move ``partition``'s leadership to ``to`` (or a ready peer)."""
        from waraft.partition import server

        leader = self.leader(partition)
        if leader is None:
            return ("error", "no_leader")
        return self._on(server.handover, partition, leader, to)

    def disable(self, partition: int, reason: Any, node: str | None = None) -> Any:
        """Take ``node``'s (default: the target's) replica of ``partition`` out of the
        protocol until ``enable``; ``reason`` is persisted and shown by its status."""
        from waraft.partition import server

        return self._on(server.disable, partition, node, reason)

    def enable(self, partition: int = 1, node: str | None = None) -> Any:
        """Bring ``node``'s (default: the target's) disabled replica of ``partition`` back."""
        from waraft.partition import server

        return self._on(server.enable, partition, node)

    # -- membership (on the partition's leader) ------------------------------------------------

    def adjust_config(
        self,
        partition: int = 1,
        action: str = "refresh",
        node: str | None = None,
        index: int | None = None,
    ) -> Any:
        """Change ``partition``'s membership on its leader: ``action`` is ``"refresh"`` or a
        verb of ``waraft.server.adjust_config`` (``add``, ``add_witness``, ``add_participant``,
        ``add_witness_participant``, ``promote_participant_if_ready``, ``remove``,
        ``remove_witness``, ``remove_membership``, ``demote_to_witness``) for ``node`` (a
        node id); ``index``: only if the config is still that of this log index. ``("ok",
        LogPos)`` once the change is appended, else ``("error", reason)`` (``no_leader`` if
        no node knows one; ``("notify_redirect", node)`` while the leader hands over to
        ``node``: ask again once it leads)."""
        from waraft.core.types import Identity
        from waraft.partition import server

        change: Any = action
        if action != "refresh":
            if node is None:
                raise ShellError(f"adjust_config({partition}, {action!r}) needs the node")
            change = (action, Identity(server.default_name(self.table, partition), node))
        leader = self.leader(partition)
        if leader is None:
            return ("error", "no_leader")
        return self._on(server.adjust_config, partition, leader, change, index)

    def add_member(self, partition: int, node: str, witness: bool = False) -> Any:
        """Make ``node`` a voting member (a witness if ``witness``) of ``partition``."""
        return self.adjust_config(partition, "add_witness" if witness else "add", node)

    def add_participant(self, partition: int, node: str, witness: bool = False) -> Any:
        """Have ``node`` replicate ``partition`` without a vote, to catch up before
        ``promote_participant``."""
        verb = "add_witness_participant" if witness else "add_participant"
        return self.adjust_config(partition, verb, node)

    def promote_participant(self, partition: int, node: str) -> Any:
        """Make participant ``node`` a voting member of ``partition`` once it has caught up
        (``("error", "not_ready")`` until then)."""
        return self.adjust_config(partition, "promote_participant_if_ready", node)

    def demote_to_witness(self, partition: int, node: str) -> Any:
        """Make member ``node`` a witness of ``partition`` (it votes, holds no data)."""
        return self.adjust_config(partition, "demote_to_witness", node)

    def remove_member(self, partition: int, node: str) -> Any:
        """Take ``node`` out of ``partition``'s config (member, witness or participant)."""
        return self.adjust_config(partition, "remove", node)

    def bootstrap_cluster(
        self,
        nodes: Sequence[str] | None = None,
        table: str | None = None,
        partitions: Sequence[int] | None = None,
        allow_unreachable: bool = False,
    ) -> Any:
        """Bootstrap ``partitions`` of ``table`` on ``nodes`` and elect spread leaders
        (nothing if a node does not answer, unless ``allow_unreachable``)."""
        from waraft.cli import ops

        results = ops.bootstrap_cluster(
            list(nodes or self.nodes()),
            table or self.table,
            list(partitions or self.partitions),
            allow_unreachable=allow_unreachable,
            log=print,
        )
        refusal = ops.refused_as_a_whole(results)
        if refusal is not None:
            print(f"not bootstrapped: {refusal}")
        return {r.partition: r.error or r.leader for r in results}

    # -- data ------------------------------------------------------------------------------------

    def client(self) -> Any:
        """A ``waraft.client.Client`` for the table (created on first use)."""
        if self._client is None:
            from waraft.client import Client

            self._client = Client(self.nodes(), table=self.table, partitions=max(self.partitions))
        return self._client

    def commit(self, partition_or_key: Any, command: Any) -> Any:
        """Replicate ``command`` on the partition (an int) or the key's partition."""
        return self.client().commit(partition_or_key, command)

    def read(self, partition_or_key: Any, command: Any) -> Any:
        """A strong read on the partition (an int) or the key's partition."""
        return self.client().read(partition_or_key, command)

    def write(self, key: Any, value: Any) -> Any:
        """``("write", table, key, value)`` on the key's partition."""
        return self.commit(key, ("write", self.table, key, value))

    def get(self, key: Any) -> Any:
        """``("read", table, key)`` on the key's partition."""
        return self.read(key, ("read", self.table, key))

    def delete(self, key: Any) -> Any:
        """``("delete", table, key)`` on the key's partition."""
        return self.commit(key, ("delete", self.table, key))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _is_unreachable(reason: Any) -> bool:
    """Whether a call's exit reason says its node could not be reached."""
    if isinstance(reason, tuple) and reason and reason[0] == "nodedown":
        return True
    return bool(reason == "unreachable")


HELPERS = (
    "status",
    "leader",
    "nodes",
    "promote",
    "trigger_election",
    "resign",
    "handover",
    "disable",
    "enable",
    "adjust_config",
    "add_member",
    "add_participant",
    "promote_participant",
    "demote_to_witness",
    "remove_member",
    "bootstrap_cluster",
    "commit",
    "read",
    "write",
    "get",
    "delete",
    "client",
)


def namespace(helpers: Helpers) -> dict[str, Any]:
    """The shell's globals: the API modules, types and the helpers."""
    import waraft
    from waraft import distribution as dist
    from waraft import otp
    from waraft.core.types import Identity, LogPos
    from waraft.partition import acceptor, server
    from waraft.services import env, info

    ns: dict[str, Any] = {
        "waraft": waraft,
        "otp": otp,
        "server": server,
        "acceptor": acceptor,
        "dist": dist,
        "env": env,
        "info": info,
        "Identity": Identity,
        "LogPos": LogPos,
        "make_ref": waraft.make_ref,
        "TABLE": helpers.table,
        "PARTITIONS": helpers.partitions,
        "NODE": helpers.target,
        "helpers": helpers,
    }
    for name in HELPERS:
        ns[name] = getattr(helpers, name)
    ns["banner"] = lambda: print(banner(helpers))
    return ns


_PROMOTE_REFUSALS: Final = {
    "election_lost": "a majority refused its vote (its log is behind, or they voted for "
    "another in that term)",
    "not_elected": "its election ended undecided (members unreachable) or another leader "
    "came first",
    "rejected": "a leader (or a majority's votes) was heard within "
    "raft_promotion_grace_period_secs (move leadership with handover)",
}


def promote_note(answer: Any, force: bool) -> str:
    """One line on what ``promote`` did, for the shell user."""
    if answer == "ok":
        if force:
            return (
                "promote: leader without votes (force): committed entries its log lacks are "
                "lost, and up-to-date replicas may disable themselves"
            )
        return "promote: won an election; it leads the partition"
    reason = answer[1] if isinstance(answer, tuple) and len(answer) == 2 else answer
    why = _PROMOTE_REFUSALS.get(reason) if isinstance(reason, str) else None
    return f"promote: not leader: {why or reason}"


HELP: Final = """\
helpers: status() [table of every node] status(p) leader(p) nodes()
         promote(p, node, force) trigger_election(p, node) resign(p, node)
         handover(p, to) disable(p, reason, node) enable(p, node)
         bootstrap_cluster(nodes, table, partitions)
members: add_member(p, node, witness) add_participant(p, node, witness)
         promote_participant(p, node) demote_to_witness(p, node) remove_member(p, node)
         adjust_config(p, action, node, index) [all on the partition's leader]
data:    commit(p_or_key, cmd) read(p_or_key, cmd) write(k, v) get(k) delete(k) client()
modules: waraft otp server acceptor dist env info; types Identity LogPos make_ref"""
"""The helpers, as the banner and ``waraft shell --help`` list them."""


def banner(helpers: Helpers) -> str:
    return (
        f"waraft shell on {helpers.target} (this node: {_this_node()}), table "
        f"{helpers.table!r}, partitions {helpers.partitions}\n{HELP}"
    )


def _this_node() -> str:
    import waraft

    return waraft.node()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "shell",
        help="interactive REPL with the API preloaded",
        description="An interactive Python shell with the waraft API and helpers preloaded.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--node", metavar="NAME@HOST:PORT", help="start a node in this process")
    where.add_argument("--attach", metavar="NODE", help="talk to a running node")
    p.add_argument("--data-dir", metavar="DIR", help="with --node: data directory")
    p.add_argument("--memory", action="store_true", help="with --node: in-memory providers")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --node: a setting")
    common.table_args(p, common.DEFAULT_PARTITIONS)
    common.nodes_arg(p, required=False)
    p.add_argument("-c", dest="code", metavar="CODE", help="run CODE in the shell and exit")
    p.add_argument("--plain", action="store_true", help="use the standard code module REPL")
    p.add_argument("--log-level", default="WARNING", help="default: %(default)s")
    common.dist_args(p)
    common.key_args(p, "admin")
    p.set_defaults(func=run)


class StartFailed(Exception):
    """The ``--node`` did not start (exit 1, as ``waraft node``)."""


def run(args: argparse.Namespace) -> int:
    """The ``waraft shell`` command."""
    common.setup_logging(args.log_level)
    partitions = common.parse_partitions(args.partitions)
    nodes = common.parse_nodes(args.nodes) if args.nodes else []
    runtime = None
    role: str | None = None  # of the --as key, when attached with keys
    from waraft import distribution as dist

    if args.node:
        try:
            runtime = _start_local_node(args, partitions)
        except StartFailed as exc:
            print(f"waraft shell: failed to start the node: {exc}", file=sys.stderr)
            return 1
        target = runtime.node_id
    else:
        target = args.attach or (nodes[0] if nodes else None)
        if target is None:
            raise UsageError("give --node to start a node, or --attach NODE (or --nodes)")
        common.parse_nodes([target])
        from waraft.client import local_address_for

        curve = common.tool_curve(args.keys, args.key_name)
        if curve is not None:
            from waraft.distribution.keys import process_name

            name = process_name(args.key_name, "shell")
            role = curve.identities.get(curve.public_key, (None, None))[0]
        else:
            name = f"shell{os.getpid()}"
        dist.start(
            f"{name}@{local_address_for(target)}:0", curve=curve, **common.dist_options(args)
        )
    helpers = Helpers(target, args.table, partitions, nodes or [target], role)
    try:
        return _repl(namespace(helpers), banner(helpers), args)
    finally:
        helpers.close()
        if runtime is not None:
            runtime.stop()
        else:
            from waraft import otp

            dist.stop()
            otp.node.stop_all(timeout=2.0)


def _start_local_node(args: argparse.Namespace, partitions: list[int]) -> Any:
    from waraft.cli.node import NodeConfig, NodeRuntime, split_listen, stop_quietly

    name, at, rest = args.node.partition("@")
    if not at:
        raise UsageError("--node takes NAME@HOST:PORT")
    split_listen(rest)
    settings = dict(common.parse_assignment(a) for a in args.set or [])
    config = NodeConfig(
        name=name,
        listen=rest,
        data_dir=args.data_dir,
        table=args.table,
        partitions=partitions,
        memory=args.memory or args.data_dir is None,
        settings=settings,
        dist=common.dist_options(args),
        keys=args.keys,
        insecure=args.insecure,
    ).check()
    runtime = NodeRuntime(config)
    try:
        runtime.start()
    except UsageError:
        stop_quietly(runtime)
        raise
    except Exception as exc:  # a port in use, ...: one line, as 'waraft node' says it
        stop_quietly(runtime)
        raise StartFailed(str(exc)) from None
    return runtime


def _repl(ns: dict[str, Any], text: str, args: argparse.Namespace) -> int:
    if args.code is not None:
        try:
            exec(compile(args.code, "<waraft shell -c>", "exec"), ns)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except ShellError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except BaseException:
            traceback.print_exc()
            return 1
        return 0
    interactive = sys.stdin.isatty()
    if interactive and not args.plain and (_try_ptpython(ns, text) or _try_ipython(ns, text)):
        return 0
    _readline_completion(ns)
    Console(ns).interact(banner=text if interactive else "", exitmsg="")
    return 0


class Console(code.InteractiveConsole):
    """The plain REPL: a helper's refusal (``ShellError``) is one ``error: ...`` line, as
    with ``-c``, not a traceback through the helpers' code."""

    def showtraceback(self) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ShellError):
            self.write(f"error: {exc}\n")
            return
        super().showtraceback()


def _try_ptpython(ns: dict[str, Any], text: str) -> bool:
    try:
        from ptpython.repl import embed  # type: ignore[import-not-found]
    except ImportError:
        return False
    print(text)
    embed(globals=ns, locals=ns)
    return True


def _try_ipython(ns: dict[str, Any], text: str) -> bool:
    try:
        import IPython  # type: ignore[import-not-found]
    except ImportError:
        return False
    print(text)
    IPython.start_ipython(argv=["--no-banner"], user_ns=ns)
    return True


def _readline_completion(ns: dict[str, Any]) -> None:
    try:
        import readline
        import rlcompleter
    except ImportError:
        return
    readline.set_completer(rlcompleter.Completer(ns).complete)
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
