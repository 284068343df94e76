"""waraft.durable_state: round trips, and every damaged file is an error, never an empty state."""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from waraft.core.types import DurableState
from waraft.partition import durable_state
from waraft.partition.durable_state import STATE_FILE, TEMP_FILE, DurableStateError
from waraft.services.codec import packb
from waraft.storage import provider


def test_round_trip(tmp_path: Path) -> None:
    part = tmp_path / "t.1"
    for state in (
        DurableState(0, None, None),
        DurableState(7, "n1@127.0.0.1:7001", None),
        DurableState(2**40, None, ("disabled", "by operator", 3)),
    ):
        durable_state.store(part, state)
        assert durable_state.load(part) == state
    assert not (part / TEMP_FILE).exists()
    durable_state.sync(part)


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert durable_state.load(tmp_path / "nothing-here") is None
    durable_state.sync(tmp_path / "nothing-here")  # no error either


def test_truncated_at_every_offset(tmp_path: Path) -> None:
    durable_state.store(tmp_path, DurableState(12, "n2@h:1", "reason"))
    data = (tmp_path / STATE_FILE).read_bytes()
    for cut in range(len(data)):
        (tmp_path / STATE_FILE).write_bytes(data[:cut])
        with pytest.raises(DurableStateError):
            durable_state.load(tmp_path)


def test_every_flipped_byte_is_detected(tmp_path: Path) -> None:
    durable_state.store(tmp_path, DurableState(12, "n2@h:1", "reason"))
    data = (tmp_path / STATE_FILE).read_bytes()
    for position in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[position] ^= bit
            (tmp_path / STATE_FILE).write_bytes(bytes(damaged))
            with pytest.raises(DurableStateError):
                durable_state.load(tmp_path)


def test_trailing_bytes_and_bad_content_are_errors(tmp_path: Path) -> None:
    durable_state.store(tmp_path, DurableState(3, None, None))
    path = tmp_path / STATE_FILE
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(DurableStateError, match="header says"):
        durable_state.load(tmp_path)
    for body in [(-1, None, None), ("3", None, None), (3, 17, None), (3, None)]:
        encoded = packb(body)
        path.write_bytes(
            durable_state.HEADER.pack(durable_state.MAGIC, len(encoded), zlib.crc32(encoded))
            + encoded
        )
        with pytest.raises(DurableStateError):
            durable_state.load(tmp_path)


def test_leftover_temp_file_is_ignored(tmp_path: Path) -> None:
    durable_state.store(tmp_path, DurableState(5, "a@h:1", None))
    (tmp_path / TEMP_FILE).write_bytes(b"half-written garbage")
    assert durable_state.load(tmp_path) == DurableState(5, "a@h:1", None)
    durable_state.store(tmp_path, DurableState(6, None, None))
    assert durable_state.load(tmp_path) == DurableState(6, None, None)
    assert not (tmp_path / TEMP_FILE).exists()


def test_unencodable_state_is_refused_without_touching_the_file(tmp_path: Path) -> None:
    durable_state.store(tmp_path, DurableState(5, None, None))
    with pytest.raises(DurableStateError):
        durable_state.store(tmp_path, DurableState(6, None, object()))
    assert durable_state.load(tmp_path) == DurableState(5, None, None)


def test_write_failure_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DurableStateError, match="cannot store"):
        durable_state.store(blocker / "part", DurableState(1, None, None))


class _FailingDirSync:
    """``provider.fsync_directory`` failing with EIO for ``failures`` calls on ``directory``
    (the fsync that makes a rename durable), counting the calls made there."""

    def __init__(self, directory: Path, failures: int) -> None:
        self.directory = os.path.abspath(directory)
        self.failures = failures
        self.calls = 0
        self.real = provider.fsync_directory

    def __call__(self, path: str) -> None:
        if os.path.abspath(path) == self.directory:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                raise OSError(errno.EIO, "Input/output error (injected)")
        self.real(path)


@pytest.fixture
def part(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "t.1"
    durable_state._mark_not_durable(str(tmp_path / "t.1"), False)  # no leak into other tests


def test_a_state_whose_rename_was_not_made_durable_is_stored_again_before_it_is_loaded(
    part: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review U item 2: the directory fsync after the rename failed; the process reads the
    # new vote back from the page cache, but a power loss may bring the old file back.
    durable_state.store(part, DurableState(2, None, None))
    dir_sync = _FailingDirSync(part, failures=1)
    monkeypatch.setattr(provider, "fsync_directory", dir_sync)
    voted = DurableState(3, "n3@h:1", None)
    with pytest.raises(DurableStateError, match="rename may not be durable"):
        durable_state.store(part, voted)
    durable_state.sync(part)  # a retried fsync that succeeds settles nothing
    assert dir_sync.calls == 1
    assert durable_state.load(part) == voted
    assert dir_sync.calls == 2  # loading stored it again, up to the directory's fsync
    assert durable_state.load(part) == voted
    assert dir_sync.calls == 2  # once: it is durable now


def test_a_state_that_cannot_be_stored_again_is_not_loaded(
    part: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    durable_state.store(part, DurableState(2, None, None))
    monkeypatch.setattr(provider, "fsync_directory", _FailingDirSync(part, failures=2))
    with pytest.raises(DurableStateError):
        durable_state.store(part, DurableState(3, "n3@h:1", None))
    with pytest.raises(DurableStateError, match="may not be durable"):
        durable_state.load(part)
    # A later complete store (the disk works again) is trusted as it is.
    durable_state.store(part, DurableState(4, None, None))
    assert durable_state.load(part) == DurableState(4, None, None)


def test_a_failed_fsync_at_sync_has_the_next_load_store_again(
    part: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    durable_state.store(part, DurableState(2, "n2@h:1", None))
    real = provider.fsync_path
    state_file = os.path.abspath(part / STATE_FILE)

    def failing(path: str) -> None:
        if os.path.abspath(path) == state_file:
            raise OSError(errno.EIO, "Input/output error (injected)")
        real(path)

    monkeypatch.setattr(durable_state, "fsync_path", failing)
    with pytest.raises(OSError):
        durable_state.sync(part)
    monkeypatch.setattr(durable_state, "fsync_path", real)
    dir_sync = _FailingDirSync(part, failures=0)
    monkeypatch.setattr(provider, "fsync_directory", dir_sync)
    assert durable_state.load(part) == DurableState(2, "n2@h:1", None)
    assert dir_sync.calls == 1


def test_a_store_that_failed_before_the_rename_needs_no_second_store(
    part: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old file is untouched and durable (a full disk, a failed fsync of the temp file):
    # loading it must not need the disk that just failed.
    durable_state.store(part, DurableState(2, None, None))
    real = provider.fsync_path

    def failing(path: str) -> None:
        if path.endswith(TEMP_FILE):
            raise OSError(errno.EIO, "Input/output error (injected)")
        real(path)

    monkeypatch.setattr(provider, "fsync_path", failing)
    with pytest.raises(DurableStateError):
        durable_state.store(part, DurableState(3, "n3@h:1", None))
    dir_sync = _FailingDirSync(part, failures=0)
    monkeypatch.setattr(provider, "fsync_directory", dir_sync)
    assert durable_state.load(part) == DurableState(2, None, None)
    assert dir_sync.calls == 0
