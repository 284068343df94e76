"""Bad operator input: one clear error line, a non-zero exit, and nothing lost (keys, data)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.cli.test_commands import waraft
from waraft.cli import main
from waraft.cli.common import UsageError
from waraft.cli.node import NodeConfig


def _error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.startswith(f"waraft {command}: error: "), err
    return err


def test_keys_create_into_a_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was a FileExistsError / NotADirectoryError traceback.
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert main(["keys", "create", str(blocker), "--nodes", "n1"]) == 2
    assert "a-file" in _error(capsys, "keys")
    assert main(["keys", "create", str(blocker / "sub"), "--nodes", "n1"]) == 2
    assert "a-file" in _error(capsys, "keys")
    assert blocker.read_text() == "keep me"


def test_keys_create_into_an_empty_directory_name_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path("") is the cwd: the keys landed wherever the command ran.
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):
        assert main(["keys", "create", empty, "--nodes", "n1"]) == 2
        assert "key directory" in _error(capsys, "keys")
    assert list(tmp_path.iterdir()) == []


def test_keys_create_writes_nothing_when_a_key_file_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # n0.key used to be written before n1.key was found to exist: a stray new secret key was
    # left behind, and running the command again then complained about n0.key.
    root = tmp_path / "keys"
    root.mkdir()
    (root / "n1.key").write_text("the old key")
    assert main(["keys", "create", str(root), "--nodes", "n0,n1,n2"]) == 2
    assert "n1.key exists already" in _error(capsys, "keys")
    assert sorted(p.name for p in root.iterdir()) == ["n1.key"]
    assert (root / "n1.key").read_text() == "the old key"


def test_a_key_file_whose_secret_does_not_match_its_public_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A damaged secret key (any Z85 text passes as a key) let the node start; every peer
    # then failed the handshake and the node looked down.
    # Another key's secret: a changed character may land in bits X25519 clamps away (the
    # last character moves the key's last byte, whose top bits are forced), and then the
    # "damaged" key was still the same key, about one run in a hundred.
    root = tmp_path / "keys"
    assert main(["keys", "create", str(root), "--nodes", "n1,n2"]) == 0
    capsys.readouterr()
    record = json.loads((root / "n1.key").read_text())
    record["secret_key"] = json.loads((root / "n2.key").read_text())["secret_key"]
    (root / "n1.key").write_text(json.dumps(record))
    config = NodeConfig(name="n1", listen="127.0.0.1:0", memory=True, keys=str(root))
    with pytest.raises(UsageError, match=r"n1\.key: its secret key does not match its public key"):
        config.check()


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    # A copy of a key file made with the default mode (0644) handed the secret key, and the
    # node's identity with it, to every account on the machine; the node started anyway.
    root = tmp_path / "keys"
    assert main(["keys", "create", str(root), "--nodes", "n1"]) == 0
    config = NodeConfig(name="n1", listen="127.0.0.1:0", memory=True, keys=str(root))
    config.check()  # 0600, as written
    for mode in (0o644, 0o640, 0o602):
        (root / "n1.key").chmod(mode)
        refused = rf"n1\.key is open to other users \(mode {mode:04o}\)"
        with pytest.raises(UsageError, match=refused):
            config.check()
    (root / "n1.key").chmod(0o400)
    config.check()


def test_shell_node_on_a_port_in_use_is_one_line() -> None:
    # 'waraft node' said "failed to start: Address already in use"; the shell's --node
    # printed a ZMQError traceback.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = waraft("shell", "--node", f"s@127.0.0.1:{port}", "--insecure", "-c", "print(1)")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "waraft shell: failed to start the node: Address already in use" in done.stderr


@pytest.mark.parametrize(
    ("command", "as_name", "message"),
    [
        ("status", "n1", "--as n1 is a node key; this command needs a client or admin key"),
        ("bootstrap", "n1", "--as n1 is a node key; this command needs an admin key"),
        ("bootstrap", "client", "--as client is a client key; this command needs an admin key"),
    ],
)
def test_tools_refuse_a_key_of_the_wrong_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, as_name: str, message: str
) -> None:
    # The nodes refused the connection (or the admin verbs), and the tool reported them
    # "unreachable" or said every node must be up and named exactly as it was started.
    root = tmp_path / "keys"
    assert main(["keys", "create", str(root), "--nodes", "n1"]) == 0
    capsys.readouterr()
    args = [command, "--nodes", "n1@127.0.0.1:1", "--keys", str(root), "--as", as_name]
    assert main([*args, "--timeout", "1", "--down-after", "0.5", "--partitions", "1"]) == 2
    assert message in _error(capsys, command)


def test_a_key_file_of_another_clusters_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # n1.key copied from another 'keys create': the node started, and every peer refused it.
    for cluster in ("a", "b"):
        assert main(["keys", "create", str(tmp_path / cluster), "--nodes", "n1"]) == 0
    capsys.readouterr()
    (tmp_path / "a" / "n1.key").write_bytes((tmp_path / "b" / "n1.key").read_bytes())
    config = NodeConfig(name="n1", listen="127.0.0.1:0", memory=True, keys=str(tmp_path / "a"))
    with pytest.raises(UsageError, match=r"n1\.key is not a key of .*cluster\.json"):
        config.check()


def test_a_truncated_lmdb_file_is_an_error_not_a_bus_error(tmp_path: Path) -> None:
    # LMDB maps the file: a data.mdb cut short (a bad copy, a full disk) killed the node
    # with SIGBUS and no word on the first read past its end.
    import lmdb

    data = tmp_path / "n1"
    (data / "storage-lmdb").mkdir(parents=True)
    env = lmdb.open(str(data / "storage-lmdb"), subdir=True, max_dbs=8)
    with env.begin(write=True) as txn:
        for i in range(64):
            txn.put(b"key%03d" % i, b"x" * 1000)
    env.close()
    mdb = data / "storage-lmdb" / "data.mdb"
    mdb.write_bytes(mdb.read_bytes()[:5000])
    done = waraft("node", "--name", "n1", "--listen", "127.0.0.1:0", "--insecure",
                  "--data-dir", str(data), "--partitions", "1")  # fmt: skip
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert f"{mdb} is truncated" in done.stderr.splitlines()[-1], done.stderr


def test_a_data_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    # Was "data dir X is not writable: File exists".
    from waraft.cli.node import _check_writable

    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    with pytest.raises(UsageError, match=r"data dir .*a-file is not a directory"):
        _check_writable(str(blocker))
    assert blocker.read_text() == "keep me"
