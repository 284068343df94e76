"""A cluster's CURVE keys on disk: one directory made by ``waraft keys create``.

Layout of the directory::

    cluster.json      public keys only: {"identities": {public_key: [role, name]}}
    <name>.key        one identity's key pair: {"role", "name", "public_key", "secret_key"}
                      (mode 0600, and ``load`` refuses one others may read or write;
                      give each process only its own file)

Roles: ``node`` (one key per node, named after the node's ``--name``: it may claim only node
ids ``<name>@host:port``), ``client`` (the client API: commits, reads, read-only status) and
``admin`` (the client API and the admin verbs). A client or admin process runs with a node
id whose name is ``<key name>.<anything>``; :func:`process_name` makes one.

:func:`load` turns the directory and one identity into the ``CurveConfig`` that
``waraft.distribution.start(curve=...)`` takes: every connection is then encrypted, only the
cluster's keys can connect, and each connection gets its key's rights (see
``waraft.distribution.policy``).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import zmq

from waraft.distribution.settings import CurveConfig

CLUSTER_FILE: Final = "cluster.json"
ROLES: Final = ("node", "client", "admin")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class KeysError(ValueError):
    """A key directory or key file that cannot be used (missing, malformed, wrong role)."""


def create(
    directory: str | os.PathLike[str],
    nodes: Sequence[str],
    clients: Sequence[str] = ("client",),
    admins: Sequence[str] = ("admin",),
) -> list[Path]:
    """Create a cluster's keys in ``directory`` (created if needed; existing key files are
    never overwritten). Returns the files written."""
    if not os.fspath(directory).strip():
        raise KeysError("give a key directory: an empty name would put the keys in the cwd")
    root = Path(directory)
    wanted = [("node", n) for n in nodes] + [("client", c) for c in clients]
    wanted += [("admin", a) for a in admins]
    names = [name for _, name in wanted]
    if not nodes:
        raise KeysError("name at least one node")
    for name in names:
        if not _NAME.match(name):
            raise KeysError(f"key names are letters, digits, '-' and '_': {name!r}")
    if len(set(names)) != len(names):
        raise KeysError("key names must be distinct")
    if root.exists() and not root.is_dir():
        raise KeysError(f"{root} is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeysError(f"cannot make key directory {root}: {exc.strerror or exc}") from None
    if (root / CLUSTER_FILE).exists():
        raise KeysError(f"{root / CLUSTER_FILE} exists already: keys are never overwritten")
    for _, name in wanted:  # before writing any: a refusal half-way left new keys behind
        if os.path.lexists(root / f"{name}.key"):
            raise KeysError(f"{root / (name + '.key')} exists already: keys are never overwritten")
    identities: dict[str, list[str]] = {}
    written = []
    for role, name in wanted:
        public, secret = zmq.curve_keypair()
        identities[public.decode()] = [role, name]
        path = root / f"{name}.key"
        record = {
            "role": role,
            "name": name,
            "public_key": public.decode(),
            "secret_key": secret.decode(),
        }
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeysError(f"{path} exists already: keys are never overwritten") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1)
        written.append(path)
    cluster = root / CLUSTER_FILE
    cluster.write_text(json.dumps({"identities": identities}, indent=1, sort_keys=True))
    written.append(cluster)
    return written


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise KeysError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise KeysError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KeysError(f"{path} is not a JSON object")
    return data


def _check_private(path: Path) -> None:
    """Refuse a key file that others on the machine may read or write (as ssh refuses such
    a private key): ``create`` writes them 0600, and a copy made with a wider mode has handed
    the secret key, and the identity with it, to every local account."""
    if os.name != "posix":
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeysError(
            f"{path} is open to other users (mode {mode:04o}): its secret key is the "
            f"identity; chmod 600 {path}"
        )


def load(directory: str | os.PathLike[str], name: str, role: str | None = None) -> CurveConfig:
    """The ``CurveConfig`` of identity ``name`` (``<directory>/<name>.key``), checked to have
    ``role`` if given. Raises :class:`KeysError` with a one-line reason."""
    root = Path(directory)
    cluster = _read_json(root / CLUSTER_FILE)
    record = _read_json(root / f"{name}.key")
    _check_private(root / f"{name}.key")
    if role is not None and record.get("role") != role:
        raise KeysError(f"{root / (name + '.key')} is a {record.get('role')} key, not {role}")
    raw = cluster.get("identities")
    if not isinstance(raw, dict):
        raise KeysError(f"{root / CLUSTER_FILE} has no identities")
    try:
        identities = {str(k): (str(v[0]), str(v[1])) for k, v in raw.items() if str(v[0]) in ROLES}
        curve = CurveConfig.coerce(
            {
                "public_key": record["public_key"],
                "secret_key": record["secret_key"],
                "server_keys": {n: k for k, (_, n) in identities.items()},
                "identities": identities,
            }
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise KeysError(f"bad key material in {root}: {exc}") from None
    try:
        public = zmq.curve_public(curve.secret_key)
    except zmq.ZMQError:  # not Z85 text
        public = b""
    if public != curve.public_key:
        # A damaged secret key started a node that failed every handshake (it looked down).
        raise KeysError(f"{root / (name + '.key')}: its secret key does not match its public key")
    if curve.identities and curve.public_key not in curve.identities:
        # A key file of another cluster's directory: every node refuses it.
        raise KeysError(
            f"{root / (name + '.key')} is not a key of {root / CLUSTER_FILE} (another cluster's?)"
        )
    return curve


def process_name(key_name: str, tag: str) -> str:
    """A node-id name for a client or admin process using key ``key_name``."""
    return f"{key_name}.{tag}{os.getpid()}x{random.randrange(1 << 20):x}"


__all__ = ["CLUSTER_FILE", "ROLES", "KeysError", "create", "load", "process_name"]
