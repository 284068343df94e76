"""The ``waraft`` command (placeholder until the CLI issue lands)."""

from __future__ import annotations

import argparse
import sys

from waraft import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waraft", description="waraft command line")
    parser.add_argument("--version", action="version", version=f"waraft {__version__}")
    parser.add_argument("command", nargs="?", help="command to run (none implemented yet)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``; every command is unknown for now, so print usage and exit 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return 2
    parser.error(f"unknown command: {args.command}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
