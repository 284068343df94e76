"""Counters per committed op from a ``WARAFT_ROUND_COUNTERS`` directory (see ``sitecustomize``).

``python -m benchmarks.round_counters.analyze DIR [SKIP]``: for every process that applied
entries (the nodes), the increments between the row at fraction ``SKIP`` (default 0.6: past
bootstrap and warm-up) of its applying rows and its last-but-one row, divided by the entries
it applied meanwhile (every node applies every committed op once).
"""

from __future__ import annotations

import glob
import json
import os
import sys


def per_op(directory: str, skip: float) -> dict[str, tuple[int, dict[str, float]]]:
    out: dict[str, tuple[int, dict[str, float]]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path) as f:
            rows = [json.loads(line) for line in f]
        applying = [r for r in rows if r.get("applied_entries", 0) > 0]
        if len(applying) < 4:
            continue  # not a node, or too short a run
        a, b = applying[int(len(applying) * skip)], applying[-2]
        ops = b["applied_entries"] - a["applied_entries"]
        if ops <= 0:
            continue
        keys = (set(a) | set(b)) - {"t", "argv"}
        out[os.path.basename(path)] = (
            ops,
            {k: (b.get(k, 0) - a.get(k, 0)) / ops for k in keys},
        )
    return out


def main() -> None:
    directory = sys.argv[1]
    skip = float(sys.argv[2]) if len(sys.argv) > 2 else 0.6
    nodes = per_op(directory, skip)
    names = list(nodes)
    print("per committed op; columns: node processes, then their sum")
    print(f"{'counter':32s}" + "".join(f"{n[:10]:>11s}" for n in names) + f"{'sum':>9s}")
    keys = sorted({k for _, values in nodes.values() for k in values})
    for key in keys:
        values = [nodes[n][1].get(key, 0.0) for n in names]
        if max(abs(v) for v in values) < 0.005:
            continue
        cells = "".join(f"{v:11.3f}" for v in values)
        print(f"{key:32s}{cells}{sum(values):9.2f}")
    print("entries applied in the counted window:", [nodes[n][0] for n in names])


if __name__ == "__main__":
    main()
