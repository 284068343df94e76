"""Argument parsing helpers shared by the ``waraft`` subcommands, and the throw-away node the
tool-like commands (``status``, ``bootstrap``, ``shell --attach``) talk to the cluster from."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from waraft.services import env

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "kv"
DEFAULT_PARTITIONS = "1-4"
MAX_PARTITIONS = 100_000


class UsageError(Exception):
    """Bad input from the command line or a config file (exit code 2)."""


def parse_partitions(text: str | int | Sequence[int]) -> list[int]:
    """``"1-4"``, ``"1,3,5-7"``, ``4`` (one partition) or a list → sorted unique numbers ≥ 1."""
    if isinstance(text, bool):
        raise UsageError(f"not a partition list: {text!r}")
    if isinstance(text, int):
        items: list[int] = [text]
    elif isinstance(text, str):
        items = []
        for part in text.replace(" ", "").split(","):
            if not part:
                raise UsageError(f"empty item in partition list {text!r}")
            low, dash, high = part.partition("-")
            try:
                if dash:
                    first, last = int(low), int(high)
                    if last < first:
                        raise UsageError(f"empty range {part!r} in {text!r}")
                    if last - first >= MAX_PARTITIONS:
                        raise UsageError(f"range {part!r} is too large")
                    items.extend(range(first, last + 1))
                else:
                    items.append(int(part))
            except ValueError:
                raise UsageError(f"not a partition list (like 1-4 or 1,3,5-7): {text!r}") from None
    else:
        items = list(text)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in items):
            raise UsageError(f"partitions must be integers: {text!r}")
    if not items or any(p < 1 for p in items):
        raise UsageError(f"partitions are numbers from 1: {text!r}")
    return sorted(set(items))


def parse_nodes(text: str | Sequence[str]) -> list[str]:
    """``"n1@h:p,n2@h:p"`` (or a list) → node ids, checked and de-duplicated in order."""
    from waraft.distribution import is_node_id

    raw = text.split(",") if isinstance(text, str) else list(text)
    nodes = [n.strip() for n in raw if n.strip()]
    if not nodes:
        raise UsageError("no node ids given")
    bad = [n for n in nodes if not is_node_id(n)]
    if bad:
        raise UsageError(f"not node ids (name@host:port): {', '.join(bad)}")
    return list(dict.fromkeys(nodes))


def parse_value(text: str) -> Any:
    """A setting's value: JSON when it parses (numbers, true/false, null, lists, quoted
    strings), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` → ``(key, parse_value(value))``."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise UsageError(f"expected key=value, got {text!r}")
    return key.strip(), parse_value(value.strip())


def known_setting(key: str) -> str:
    """Which scope a setting belongs to: ``"global"`` (the ``waraft`` app) or ``"app"``;
    raises ``UsageError`` for an unknown key (a typo must not be silently ignored)."""
    if key in env.GLOBAL_DEFAULTS:
        return "global"
    if key in env.APP_DEFAULTS or key in env.TABLE_DEFAULTS or key in env.FALLBACK_KEYS.values():
        return "app"
    raise UsageError(f"unknown setting {key!r} (see waraft.env for the list)")


def apply_settings(app: str, settings: dict[str, Any]) -> None:
    """``env.set_env`` each setting on the current node, global keys on the ``waraft`` app."""
    for key, value in settings.items():
        scope = known_setting(key)
        env.set_env(env.RAFT_APP if scope == "global" else app, key, value)


def nodes_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--nodes",
        required=required,
        metavar="N1@H:P,N2@H:P",
        help="comma-separated node ids (name@host:port)",
    )


def table_name(text: str) -> str:
    """An argparse type: a table name as partitions take it (a name they cannot have was
    sent to every node, and each answered that it had no such partition)."""
    from waraft.partition.part_sup import is_table_name

    if not is_table_name(text):
        raise argparse.ArgumentTypeError(
            f"a table name is letters, digits and '_', got {text!r}"[:200]
        )
    return text


def table_args(parser: argparse.ArgumentParser, partitions_default: str | None) -> None:
    parser.add_argument(
        "--table",
        type=table_name,
        default=DEFAULT_TABLE,
        help="table name (default: %(default)s)",
    )
    parser.add_argument(
        "--partitions",
        default=partitions_default,
        metavar="LIST",
        help="partition numbers, e.g. 1-4 or 1,3,5-7"
        + (f" (default: {partitions_default})" if partitions_default else ""),
    )


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0 (a ``--timeout -1`` reported every node
    unreachable instead of a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def dist_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distribution")
    group.add_argument(
        "--ping-interval", type=float, metavar="S", help="ping a silent peer after S seconds"
    )
    group.add_argument(
        "--down-after", type=float, metavar="S", help="mark a silent peer down after S seconds"
    )


def key_args(parser: argparse.ArgumentParser, default_as: str) -> None:
    """``--keys DIR`` / ``--as NAME`` / ``--insecure`` for the commands that talk to nodes."""
    group = parser.add_argument_group("security")
    group.add_argument(
        "--keys", metavar="DIR", help="the cluster's key directory (made by 'waraft keys create')"
    )
    group.add_argument(
        "--as",
        dest="key_name",
        default=default_as,
        metavar="NAME",
        help="which identity of DIR to use (default: %(default)s)",
    )
    group.add_argument(
        "--insecure", action="store_true", help="no keys: no encryption, no authentication"
    )


_refused_handshakes = 0
"""Handshakes the nodes refused to the last ``client_node`` (its distribution's
``probe_handshake_failed``), read when it stops: "unreachable" then means "not with these
keys" (see ``unreachable_hint``)."""


def unreachable_hint(args: argparse.Namespace) -> str:
    """What to add to "unreachable": a node started with keys refuses a connection without
    them, or with another cluster's, which looks exactly like a node that is down."""
    if getattr(args, "keys", None) is None and not getattr(args, "insecure", False):
        return (
            " (no --keys given: nodes started with keys refuse connections without them; "
            "give --keys DIR, or --insecure if the cluster runs without keys)"
        )
    return HANDSHAKE_HINT if handshakes_refused() else ""


HANDSHAKE_HINT = (
    " (handshake refused: wrong --keys / cluster.json, or --insecure against nodes with keys?)"
)


def handshakes_refused() -> bool:
    """Whether nodes refused this process's handshakes: its running distribution's
    ``probe_handshake_failed``, else that of the last ``client_node``."""
    from waraft import distribution as dist

    if dist.is_started():
        return dist.stats().get("probe_handshake_failed", 0) > 0
    return _refused_handshakes > 0


def curve_for(keys: str | None, key_name: str, role: str | None = None) -> Any:
    """The ``CurveConfig`` of identity ``key_name`` in ``keys`` (None without keys)."""
    if keys is None:
        return None
    from waraft.distribution import keys as cluster_keys

    try:
        return cluster_keys.load(keys, key_name, role)
    except cluster_keys.KeysError as exc:
        raise UsageError(str(exc)) from None


def tool_curve(keys: str | None, key_name: str, roles: Sequence[str] = ("client", "admin")) -> Any:
    """``curve_for`` a tool's ``--as`` identity, which must have one of ``roles``: a node key
    (or a client key where admin verbs are needed) was refused by the nodes, and the tool
    reported them unreachable."""
    curve = curve_for(keys, key_name)
    if curve is None:
        return None
    role, _ = curve.identities.get(curve.public_key, (None, None))
    if role is not None and role not in roles:
        raise UsageError(
            f"--as {key_name} is a {role} key; this command needs {_a(' or '.join(roles))} key "
            f"(--as {roles[-1]})"
        )
    return curve


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def dist_options(args: argparse.Namespace) -> dict[str, Any]:
    """``distribution.start`` keyword arguments from ``--ping-interval`` / ``--down-after``."""
    options: dict[str, Any] = {}
    ping = getattr(args, "ping_interval", None)
    down = getattr(args, "down_after", None)
    if down is not None:
        if down <= 0:
            raise UsageError("--down-after must be positive")
        options["down_after"] = down
        options["connect_timeout"] = down
        if ping is None:
            ping = min(1.0, down / 4)  # the default ping interval would not fit
    if ping is not None:
        if ping <= 0 or (down is not None and ping >= down):
            raise UsageError("--ping-interval must be positive and below --down-after")
        options["ping_interval"] = ping
    return options


@contextmanager
def client_node(
    nodes: Sequence[str],
    *,
    host: str | None = None,
    keys: str | None = None,
    key_name: str = "admin",
    roles: Sequence[str] = ("client", "admin"),
    **dist_kw: Any,
) -> Iterator[str]:
    """Run a throw-away distribution node (ephemeral port) for a command; yields its id.

    With ``keys`` (a key directory), it connects with identity ``key_name`` of it, which
    must have one of ``roles``.

    Its host is ``host`` or the local address on the route to the first node, so that the
    cluster's replies can reach it. Stopped (with its otp node) on exit. If this process
    already runs distribution (the shell), that node is used and left running.
    """
    from waraft import distribution as dist
    from waraft import otp
    from waraft.client import local_address_for

    if dist.is_started():
        yield dist.node()
        return
    address = host or local_address_for(nodes[0])
    curve = tool_curve(keys, key_name, roles)
    if curve is not None:
        from waraft.distribution.keys import process_name

        name = process_name(key_name, "cli")
    else:
        name = f"waraft-cli{os.getpid()}x{random.randrange(1 << 20):x}"
    node_id = dist.start(f"{name}@{address}:0", curve=curve, **dist_kw)
    global _refused_handshakes
    _refused_handshakes = 0
    try:
        yield node_id
    finally:
        _refused_handshakes = dist.stats().get("probe_handshake_failed", 0)
        dist.stop()
        otp.node.stop_all(timeout=2.0)


def setup_logging(level: str, prefix: str = "") -> None:
    """Log to stderr at ``level`` (a name such as INFO)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise UsageError(f"unknown log level {level!r}")
    tag = f"{prefix} " if prefix else ""
    logging.basicConfig(
        level=numeric,
        format=f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s",
        force=True,
    )
