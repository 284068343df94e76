"""A cluster's CURVE keys on disk: one directory made by ``waraft keys create``, to which
``waraft keys add`` (:func:`add`) adds keys; running nodes take the new ``cluster.json`` on
``waraft.distribution.reload_keys`` (SIGHUP, ``waraft keys reload``), which
:func:`check_reload` limits to added and replaced keys.

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

import contextlib
import dataclasses
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

from waraft.distribution.nodeid import is_node_name
from waraft.distribution.settings import CurveConfig

CLUSTER_FILE: Final = "cluster.json"
ROLES: Final = ("node", "client", "admin")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
"""A client or admin key's name: no ``.``, since its processes are named ``<name>.<tag>``
(``process_name``) and a connection's key name is read back as the part before the first
``.``. A node key's name is any node name (``nodeid.is_node_name``), ``.`` included."""


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
    if not nodes:
        raise KeysError("name at least one node")
    wanted = _wanted(nodes, clients, admins)
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


def _wanted(
    nodes: Sequence[str], clients: Sequence[str], admins: Sequence[str]
) -> list[tuple[str, str]]:
    """``(role, name)`` of every key asked for, the names checked to be usable and distinct."""
    wanted = [("node", n) for n in nodes] + [("client", c) for c in clients]
    wanted += [("admin", a) for a in admins]
    names = [name for _, name in wanted]
    for role, name in wanted:
        if role == "node" and not is_node_name(name):
            raise KeysError(f"node key names are letters, digits, '_', '.' and '-': {name!r}")
        if role != "node" and not _NAME.match(name):
            raise KeysError(
                f"{role} key names are letters, digits, '-' and '_' (no '.': its processes "
                f"are named <key>.<anything>): {name!r}"
            )
    if len(set(names)) != len(names):
        raise KeysError("key names must be distinct")
    _check_claims(wanted)
    return wanted


def _check_claims(identities: Sequence[tuple[str, str]]) -> None:
    """Refuse a node key ``a.b`` beside a client or admin key ``a``: that key's processes are
    named ``a.<anything>`` (see ``CurveConfig.rights_for``), so they could claim the node's
    name, and a connection's key would no longer tell a node from a client process."""
    others = {name: role for role, name in identities if role != "node"}
    for role, name in identities:
        prefix = name.partition(".")[0]
        if role == "node" and prefix != name and prefix in others:
            raise KeysError(
                f"node key {name!r} is a name {others[prefix]} key {prefix!r} may claim (its "
                f"processes are named {prefix}.<anything>): choose another name"
            )


def add(
    directory: str | os.PathLike[str],
    nodes: Sequence[str] = (),
    clients: Sequence[str] = (),
    admins: Sequence[str] = (),
    *,
    replace: bool = False,
) -> list[Path]:
    """Add keys to the cluster of ``directory`` (made by :func:`create`): a key file for each
    new identity, and its public key in ``cluster.json``, which is rewritten in place (a new
    file renamed over it: a reader sees the old file or the new one, never a mixture). Every
    other entry of ``cluster.json`` is kept as it was. Returns the files written.

    A name ``cluster.json`` already lists is refused unless ``replace``: then it gets a new
    key pair (same role; a role never changes), its key file is rewritten and its old public
    key leaves ``cluster.json``; once the nodes reload their keys
    (:func:`waraft.distribution.reload_keys`), the old key's connections are refused.

    Running nodes read the new ``cluster.json`` when told to (``SIGHUP`` or ``waraft keys
    reload``) or when restarted; until then they refuse the new keys."""
    root = Path(directory)
    wanted = _wanted(nodes, clients, admins)
    if not wanted:
        raise KeysError("name at least one key to add (--nodes, --clients or --admins)")
    _check_directory(root)
    path = root / CLUSTER_FILE
    data = _read_json(path, secret=False)
    identities = _identities_of(path, data)
    by_name = {name: (role, key) for key, (role, name) in identities.items()}
    _check_claims([*wanted, *((role, name) for name, (role, _) in by_name.items())])
    for role, name in wanted:
        _check_addable(root, role, name, by_name.get(name), replace)
    written = []
    for role, name in wanted:
        old = by_name.get(name)
        if old is not None:
            del identities[old[1]]
        public, secret = zmq.curve_keypair()
        identities[public.decode()] = (role, name)
        record = {
            "role": role,
            "name": name,
            "public_key": public.decode(),
            "secret_key": secret.decode(),
        }
        key_path = root / f"{name}.key"
        _write_atomically(key_path, json.dumps(record, indent=1), 0o600)
        written.append(key_path)
    data["identities"] = {key: [role, name] for key, (role, name) in identities.items()}
    mode = path.lstat().st_mode & 0o644 | 0o600  # as readable as it was, never more
    _write_atomically(path, json.dumps(data, indent=1, sort_keys=True), mode)
    written.append(path)
    return written


def _identities_of(path: Path, data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    raw = data.get("identities")
    if not isinstance(raw, dict):
        raise KeysError(f"{path} has no identities")
    out: dict[str, tuple[str, str]] = {}
    for key, value in raw.items():
        if not (isinstance(value, list) and len(value) == 2 and value[0] in ROLES):
            raise KeysError(f"{path}: malformed identity {key!r}: {value!r}")
        out[str(key)] = (str(value[0]), str(value[1]))
    return out


def _check_addable(
    root: Path, role: str, name: str, existing: tuple[str, str] | None, replace: bool
) -> None:
    """Refuse adding ``role`` key ``name`` where ``existing`` (its role and public key in
    cluster.json, if listed) or a leftover key file is in the way."""
    if existing is not None:
        if existing[0] != role:
            raise KeysError(
                f"{name} is a {existing[0]} key in {root / CLUSTER_FILE}, not {_a(role)} key: "
                "a key's role never changes; choose another name"
            )
        if not replace:
            raise KeysError(
                f"{name} is in {root / CLUSTER_FILE} already: give --replace to issue it a "
                "new key (the old one is refused once the nodes reload their keys)"
            )
    elif os.path.lexists(root / f"{name}.key"):
        raise KeysError(
            f"{root / (name + '.key')} exists but {root / CLUSTER_FILE} does not list it (left "
            "by an interrupted 'waraft keys add'? remove it and add the key again)"
        )


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _write_atomically(path: Path, text: str, mode: int) -> None:
    """Put ``text`` at ``path`` (a file of ``mode``) by writing a new file next to it, syncing
    it and renaming it over ``path``: a crash or a concurrent reader sees the old file or the
    new one. The rename replaces a symbolic link at ``path``, never what it leads to."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
    except OSError as exc:
        raise KeysError(f"cannot write {temp}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise KeysError(f"cannot write {path}: {exc.strerror or exc}") from None
    _sync_directory(path.parent)


def _sync_directory(root: Path) -> None:
    """Make a rename in ``root`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    return dataclasses.replace(curve, source=(os.fspath(root), name, role))


@dataclasses.dataclass(frozen=True, slots=True)
class KeyChanges:
    """What a reload of the cluster's keys changes: ``"role name"`` of each identity added
    and of each whose key was replaced."""

    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.replaced)

    def describe(self) -> str:
        """One line for logs and the ``waraft keys reload`` output."""
        parts = [f"added {', '.join(self.added)}"] if self.added else []
        parts += [f"replaced {', '.join(self.replaced)}"] if self.replaced else []
        return "; ".join(parts) or "unchanged"


def check_reload(current: CurveConfig, new: CurveConfig) -> KeyChanges:
    """What taking ``new`` (re-read from ``current``'s key directory) in place of ``current``
    changes; :class:`KeysError` if a running node may not take it.

    A running node takes new identities and new keys for identities it knows (same role).
    It refuses a change of its own key pair (its ROUTER and every link present it), a role
    change, and an identity that is no longer listed: a node's open connections do not
    end when a name disappears from the file, and removing a member's key while partitions
    still count on it is a decision for a restart, not a reload. (To revoke a key at once,
    replace it: ``waraft keys add --replace``; the old key's connections are then refused.)"""
    where = f"{current.source[0]}/{CLUSTER_FILE}" if current.source else CLUSTER_FILE
    if not current.identities:
        raise KeysError("this node runs with keys given in code, not a cluster's key directory")
    if new.public_key != current.public_key or new.secret_key != current.secret_key:
        raise KeysError(
            f"this node's own key changed in {where}: a node's own key changes only with a restart"
        )
    old_names = {name: (role, key) for key, (role, name) in current.identities.items()}
    new_names = {name: (role, key) for key, (role, name) in new.identities.items()}
    dropped = sorted(f"{old_names[n][0]} {n}" for n in old_names.keys() - new_names.keys())
    if dropped:
        raise KeysError(
            f"{where} no longer lists {', '.join(dropped)}: a running node does not drop keys "
            "(restart the nodes for that; to revoke a key at once, replace it with 'waraft "
            "keys add DIR --replace' and reload)"
        )
    added, replaced = [], []
    for name, (role, key) in sorted(new_names.items()):
        old = old_names.get(name)
        if old is None:
            added.append(f"{role} {name}")
        elif old[0] != role:
            raise KeysError(
                f"{where} makes {name} a {role} key, it was a {old[0]} key: a key's role "
                "changes only with a restart"
            )
        elif old[1] != key:
            replaced.append(f"{role} {name}")
    return KeyChanges(tuple(added), tuple(replaced))


def process_name(key_name: str, tag: str) -> str:
    """A node-id name for a client or admin process using key ``key_name``."""
    return f"{key_name}.{tag}{os.getpid()}x{random.randrange(1 << 20):x}"


__all__ = [
    "CLUSTER_FILE",
    "ROLES",
    "KeyChanges",
    "KeysError",
    "add",
    "check_reload",
    "create",
    "load",
    "process_name",
]
