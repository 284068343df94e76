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
