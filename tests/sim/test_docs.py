"""The quick start in ``waraft.sim``'s docstring runs as written."""

from __future__ import annotations

import waraft.sim


def test_quick_start_in_the_package_docstring_runs() -> None:
    doc = waraft.sim.__doc__ or ""
    code = doc.split("::", 1)[1].split("A broken invariant", 1)[0]
    lines = [line[4:] for line in code.splitlines() if line.startswith("    ")]
    namespace: dict[str, object] = {}
    exec("\n".join(lines), namespace)
    sim = namespace["sim"]
    assert sim.history.count(waraft.sim.Status.OK) > 0  # type: ignore[attr-defined]
