"""A cluster's CURVE keys on disk: one directory made by ``waraft keys create``.

Layout of the directory::

    cluster.json      public keys only: {"identities": {public_key: [role, name]}}
    <name>.key        one identity's key pair: {"role", "name", "public_key", "secret_key"}
                      (give each process only its own file)

``create`` makes the directory 0700 and writes every file 0600. ``load`` refuses, as ssh
refuses a private key and sshd an ``authorized_keys`` others could change: a key directory
or ``cluster.json`` that other users may write (``cluster.json`` says which keys are nodes
and which admins, so whoever can replace it can make their own key an admin), a key file
they may read or write (its secret key is the identity), any of them owned by someone other
than the user running (or root), and a ``cluster.json`` or key file that is a symbolic link
(what it leads to could be replaced from wherever it is). Parent directories are not checked.

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

import errno
import json
import os
import random
import re
import stat
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
        # 0700 (the umask only takes bits away): nobody else needs to look into it.
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise KeysError(f"cannot make key directory {root}: {exc.strerror or exc}") from None
    _check_directory(root)  # one that existed: load would refuse the keys written into it
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
    text = json.dumps({"identities": identities}, indent=1, sort_keys=True)
    try:
        # Public keys only, but the list of who is a node and who an admin: nobody else's.
        # (O_EXCL also refuses a symbolic link, dangling or not, in the file's place.)
        fd = os.open(cluster, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeysError(f"{cluster} exists already: keys are never overwritten") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    written.append(cluster)
    return written


_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)


def _refuse_other_writers(what: str, st: os.stat_result, stakes: str, fix: str) -> None:
    """Refuse ``what`` (a key directory or file, as ``st`` describes it) if a user other than
    this one or root owns it, or if group or others may write it: either could replace what it
    holds (``stakes`` says what that decides; ``fix`` is the chmod to suggest)."""
    if os.name != "posix":
        return
    # Root may change any file anyway, so a file of root's trusts nobody new (sshd's rule).
    if st.st_uid not in (os.geteuid(), 0):
        raise KeysError(
            f"{what} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}) or "
            f"root: its owner can change it, and {stakes}; chown it to this user"
        )
    mode = st.st_mode & 0o7777
    if mode & 0o022:
        raise KeysError(f"{what} may be written by other users (mode {mode:04o}): {stakes}; {fix}")


def _check_directory(root: Path) -> None:
    """Refuse a key directory that others may write or that neither this user nor root
    owns: whoever may write it can put their own ``cluster.json`` or key file in place of
    ours. Write access is what counts: a 0755 directory (the usual umask) is fine."""
    if os.name != "posix":
        return
    try:
        st = root.stat()  # a symbolic link to the directory is fine: its target is checked
    except OSError as exc:
        raise KeysError(f"cannot read key directory {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KeysError(f"{root} is not a directory")
    _refuse_other_writers(
        f"key directory {root}",
        st,
        "it holds cluster.json, which says who is a node or an admin, and the key files",
        f"chmod go-w {root}",
    )


def _read_checked(path: Path, secret: bool) -> bytes:
    """The bytes of ``path``, opened without following a symbolic link and checked on the
    open file (nothing can be swapped in between): a regular file owned by this user or
    root that no other user may write, nor read if it holds a ``secret`` key."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and path.is_symlink():  # Linux, BSD
            raise KeysError(
                f"{path} is a symbolic link: key files are not followed out of the key "
                f"directory (what a link leads to may be replaceable); copy the file itself there"
            ) from None
        raise KeysError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeysError(f"{path} is not a regular file")
        mode = st.st_mode & 0o777
        if os.name == "posix" and secret and mode & 0o077:
            # A copy made with the default mode (0644) handed the secret key, and the
            # identity with it, to every local account.
            raise KeysError(
                f"{path} is open to other users (mode {mode:04o}): its secret key is the "
                f"identity; chmod 600 {path}"
            )
        _refuse_other_writers(
            str(path), st, "it says who is a node or an admin", f"chmod go-w {path}"
        )
        return fh.read()


def _read_json(path: Path, secret: bool) -> dict[str, Any]:
    raw = _read_checked(path, secret)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise KeysError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KeysError(f"{path} is not a JSON object")
    return data


def load(directory: str | os.PathLike[str], name: str, role: str | None = None) -> CurveConfig:
    """The ``CurveConfig`` of identity ``name`` (``<directory>/<name>.key``), checked to have
    ``role`` if given. Raises :class:`KeysError` with a one-line reason, also when the
    directory, ``cluster.json`` or the key file could be changed by another user or is a
    symbolic link where a file should be (see the module docstring)."""
    root = Path(directory)
    _check_directory(root)
    cluster = _read_json(root / CLUSTER_FILE, secret=False)
    record = _read_json(root / f"{name}.key", secret=True)
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
