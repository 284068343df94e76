"""A key directory whose trust anchor other local users could change is refused.

``cluster.json`` says which keys are nodes and which are admins: a user who could write it, or
the directory holding it, added their own key as an admin and the node loaded it; a key file
replaced by a symbolic link was followed. ``load`` now refuses all of these, as ssh refuses a
private key or an ``authorized_keys`` others could change, and ``create`` writes the directory
0700 and its files 0600."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zmq

from waraft.distribution import keys

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes and owners")

STRANGER = 4242  # a uid that is neither this user nor root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    keys.create(directory, ["n1"], ["app"], ["admin"])
    return directory


def _give_away(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` look owned by another user: given to one by root, or else this process
    made to believe it runs as another user."""
    if os.geteuid() == 0:
        os.chown(path, STRANGER, -1, follow_symlinks=False)
    else:
        me = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: me + 1)


def test_create_makes_the_directory_and_every_file_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: 0755 directories and 0644 files by default
    try:
        written = keys.create(tmp_path / "keys", ["n1", "n2"], ["app"], ["admin"])
    finally:
        os.umask(old)
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in written) == sorted(
        ["n1.key", "n2.key", "app.key", "admin.key", "cluster.json"]
    )
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: 0o600 for p in written}
    keys.load(tmp_path / "keys", "n1", "node")


def test_the_demo_attack_is_refused(root: Path) -> None:
    # A local user who may write cluster.json (0666 in a 0777 directory) added their key as
    # an admin, and the node loaded it and gave that key the admin right.
    root.chmod(0o777)
    (root / keys.CLUSTER_FILE).chmod(0o666)
    public, _ = zmq.curve_keypair()
    cluster = json.loads((root / keys.CLUSTER_FILE).read_text())
    cluster["identities"][public.decode()] = ["admin", "eve"]
    (root / keys.CLUSTER_FILE).write_text(json.dumps(cluster))
    with pytest.raises(keys.KeysError, match="may be written by other users"):
        keys.load(root, "n1", "node")


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777], ids=oct)
def test_a_key_directory_others_may_write_is_refused(root: Path, mode: int) -> None:
    root.chmod(mode)
    refused = (
        rf"key directory {root} may be written by other users \(mode {mode:04o}\): .*"
        rf"cluster\.json.*; chmod go-w {root}"
    )
    with pytest.raises(keys.KeysError, match=refused):
        keys.load(root, "n1", "node")
    root.chmod(0o755)  # readable by others is fine: only write access changes the keys
    keys.load(root, "n1", "node")


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646, 0o620], ids=oct)
def test_a_cluster_json_others_may_write_is_refused(root: Path, mode: int) -> None:
    cluster = root / keys.CLUSTER_FILE
    cluster.chmod(mode)
    refused = (
        rf"{cluster} may be written by other users \(mode {mode:04o}\): it says who is a "
        rf"node or an admin; chmod go-w {cluster}"
    )
    with pytest.raises(keys.KeysError, match=refused):
        keys.load(root, "n1", "node")
    cluster.chmod(0o644)  # public keys: others may read them
    keys.load(root, "n1", "node")


@pytest.mark.parametrize("name", [".", keys.CLUSTER_FILE, "n1.key"])
def test_a_key_directory_or_file_owned_by_another_user_is_refused(
    root: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = root / name if name != "." else root
    keys.load(root, "n1", "node")
    _give_away(path, monkeypatch)
    with pytest.raises(keys.KeysError, match=r"belongs to uid \d+, not to this user .* or root"):
        keys.load(root, "n1", "node")


@pytest.mark.parametrize("name", [keys.CLUSTER_FILE, "n1.key"])
def test_a_key_file_that_is_a_symbolic_link_is_not_followed(root: Path, name: str) -> None:
    # The target is this user's own and nobody else may write it: only the link is wrong
    # (where it leads could be replaced from wherever that is).
    elsewhere = root.parent / f"moved-{name}"
    (root / name).rename(elsewhere)
    (root / name).symlink_to(elsewhere)
    assert elsewhere.stat().st_mode & (0o077 if name == "n1.key" else 0o022) == 0
    with pytest.raises(keys.KeysError, match=rf"{root / name} is a symbolic link"):
        keys.load(root, "n1", "node")


def test_create_refuses_a_directory_others_may_write_and_writes_nothing(tmp_path: Path) -> None:
    # The keys would be written, then refused by every load (or replaced before it).
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(keys.KeysError, match=r"may be written by other users \(mode 0777\)"):
        keys.create(shared, ["n1"])
    assert list(shared.iterdir()) == []


# ---------------------------------------------------------------- waraft keys add (review O-5)


def _cluster(root: Path) -> dict[str, list[str]]:
    data: dict[str, list[str]] = json.loads((root / keys.CLUSTER_FILE).read_text())["identities"]
    return data


def test_add_writes_a_usable_key_and_adds_it_to_cluster_json_in_place(root: Path) -> None:
    # A keyed cluster had no way to take a new node: create refused the existing directory.
    (root / keys.CLUSTER_FILE).write_text(
        json.dumps({"identities": _cluster(root), "note": "kept"})  # other entries stay
    )
    before = _cluster(root)
    written = keys.add(root, ["n4", "n5"])
    assert sorted(p.name for p in written) == ["cluster.json", "n4.key", "n5.key"]
    after = _cluster(root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(v[1] for k, v in after.items() if k not in before) == ["n4", "n5"]
    assert json.loads((root / keys.CLUSTER_FILE).read_text())["note"] == "kept"
    assert {p.name: p.stat().st_mode & 0o077 for p in written} == {p.name: 0 for p in written}
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary left
    n4 = keys.load(root, "n4", "node")
    n1 = keys.load(root, "n1", "node")
    assert n1.server_key_for("n4@h:1") == n4.public_key
    assert n4.user_for(n1.public_key) is not None


def test_add_refuses_a_listed_name_unless_replace_and_never_changes_a_role(root: Path) -> None:
    keys.add(root, ["n4"])
    listed = _cluster(root)
    with pytest.raises(keys.KeysError, match="already: give --replace"):
        keys.add(root, ["n4"])
    with pytest.raises(keys.KeysError, match="role never changes"):
        keys.add(root, admins=["n4"], replace=True)
    with pytest.raises(keys.KeysError, match="at least one"):
        keys.add(root)
    assert _cluster(root) == listed  # nothing written by a refusal
    old = keys.load(root, "n4", "node").public_key
    keys.add(root, ["n4"], replace=True)
    new = keys.load(root, "n4", "node").public_key
    assert new != old
    assert old.decode() not in _cluster(root)
    assert len(_cluster(root)) == len(listed)


def test_add_refuses_a_leftover_key_file_and_an_unsafe_directory(root: Path) -> None:
    (root / "n4.key").write_text("{}")
    (root / "n4.key").chmod(0o600)
    with pytest.raises(keys.KeysError, match="does not list it"):
        keys.add(root, ["n4"])
    (root / keys.CLUSTER_FILE).chmod(0o666)
    with pytest.raises(keys.KeysError, match="written by other users"):
        keys.add(root, ["n5"])
    assert not (root / "n5.key").exists()


def test_a_reload_takes_added_and_replaced_keys_only(root: Path) -> None:
    current = keys.load(root, "n1", "node")
    keys.add(root, ["n4"], admins=["ops"])
    keys.add(root, clients=["app"], replace=True)
    changes = keys.check_reload(current, keys.load(root, "n1", "node"))
    assert changes.added == ("node n4", "admin ops")  # by name
    assert changes.replaced == ("client app",)
    assert not keys.check_reload(current, current)
    data = json.loads((root / keys.CLUSTER_FILE).read_text())
    dropped = {k: v for k, v in data["identities"].items() if v[1] != "app"}
    (root / keys.CLUSTER_FILE).write_text(json.dumps({"identities": dropped}))
    with pytest.raises(keys.KeysError, match="no longer lists client app"):
        keys.check_reload(current, keys.load(root, "n1", "node"))
    identities = data["identities"]
    regained = {k: (["admin", "app"] if v[1] == "app" else v) for k, v in identities.items()}
    (root / keys.CLUSTER_FILE).write_text(json.dumps({"identities": regained}))
    with pytest.raises(keys.KeysError, match="role changes only with a restart"):
        keys.check_reload(current, keys.load(root, "n1", "node"))
    (root / keys.CLUSTER_FILE).write_text(json.dumps(data))
    keys.add(root, ["n1"], replace=True)
    with pytest.raises(keys.KeysError, match="own key changed"):
        keys.check_reload(current, keys.load(root, "n1", "node"))


def test_node_keys_take_every_name_a_node_takes_dots_included(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `waraft node --name db.1` starts, but `waraft keys create/add --nodes db.1` refused the
    # name: such a node could only run --insecure.
    from waraft.cli import main

    root = tmp_path / "keys"
    assert main(["keys", "create", str(root), "--nodes", "db.1,db.2"]) == 0
    assert main(["keys", "add", str(root), "--nodes", "db.3"]) == 0, capsys.readouterr().err
    curve = keys.load(root, "db.3", "node")
    user = curve.user_for(curve.public_key)
    assert user is not None and curve.rights_for("db.3@127.0.0.1:7001", user) is not None
    assert curve.rights_for("db.30@127.0.0.1:7001", user) is None  # only its own name


def test_client_and_admin_names_stay_dot_free_and_claim_no_node_name(root: Path) -> None:
    # A client's processes are named <key>.<anything>: a client key "a.b" could not be read
    # back from its processes' names, and a client key "db" could claim node "db.1"'s name.
    with pytest.raises(keys.KeysError, match=r"no '\.'"):
        keys.add(root, clients=["a.b"])
    with pytest.raises(keys.KeysError, match="client key 'app' may claim"):
        keys.add(root, nodes=["app.1"])
    with pytest.raises(keys.KeysError, match="admin key 'ops' may claim"):
        keys.create(root.parent / "other", ["ops.1"], admins=["ops"])
    keys.add(root, nodes=["db.1"])
    with pytest.raises(keys.KeysError, match=r"node key 'db\.1' is a name client key 'db'"):
        keys.add(root, clients=["db"])


def test_a_client_key_may_not_claim_a_node_keys_name(root: Path) -> None:
    # Whatever wrote cluster.json (waraft keys refuses the pair): client key "db" may claim
    # the names of its processes, "db.<anything>", but not node "db.1"'s.
    keys.add(root, nodes=["db.1"])
    path = root / keys.CLUSTER_FILE
    data = json.loads(path.read_text())
    public = zmq.curve_keypair()[0].decode()
    data["identities"][public] = ["client", "db"]
    path.write_text(json.dumps(data))
    curve = keys.load(root, "n1", "node")
    assert curve.rights_for("db.shell1@127.0.0.1:1", f"client:db:{public}") is not None
    assert curve.rights_for("db.1@127.0.0.1:1", f"client:db:{public}") is None
