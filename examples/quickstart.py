"""Replays the README's quick start session in a fresh interpreter, as if typed at ``>>>``.

Run: ``python examples/quickstart.py`` (``make demo`` runs the kvstore cluster demo instead).
The session is read from README.md (the block after ``<!-- quickstart -->``), so what the README
shows is exactly what runs; ``tests/partition/test_quickstart.py`` checks the output too.
"""

from __future__ import annotations

import code
import pathlib
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def session_lines(text: str) -> list[str]:
    """The ``>>>`` input lines of the quick start block."""
    block = text.split("<!-- quickstart -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    return [line[4:] for line in block.splitlines() if line.startswith(">>> ")]


def main() -> int:
    console = code.InteractiveConsole(locals={})
    for line in session_lines(README.read_text()):
        print(f">>> {line}")
        sys.stdout.flush()
        if console.push(line):
            raise SystemExit(f"incomplete statement in the README session: {line!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "session_lines"]
