"""``benchmarks/wal_sync_bench.py``: one group commit per sync, for each preallocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import wal_sync_bench


def test_each_value_runs_with_one_fsync_per_sync_and_leaves_nothing(tmp_path: Path) -> None:
    runs = wal_sync_bench.main(
        ["--syncs", "20", "--repeat", "2", "--preallocate", "65536,0", "--dir", str(tmp_path)]
    )
    assert [one.preallocate for one in runs] == [65536, 0, 65536, 0]  # alternating
    assert all(one.syncs == 20 for one in runs)
    assert all(one.wall_us >= one.fsync_us > 0 and one.io_cpu_us > 0 for one in runs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [["--preallocate", "-1"], ["--preallocate", "x"], ["--syncs", "0"]])
def test_bad_arguments_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        wal_sync_bench.main(bad)
