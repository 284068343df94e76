"""waraft.durable_state: round trips, and every damaged file is an error, never an empty state."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from waraft.core.types import DurableState
from waraft.partition import durable_state
from waraft.partition.durable_state import STATE_FILE, TEMP_FILE, DurableStateError
from waraft.services.codec import packb


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
