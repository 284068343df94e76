"""The protocol core must stay pure: no clocks, randomness, threads, sockets, files or actors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "waraft" / "core"

FORBIDDEN_MODULES = {
    "threading",
    "socket",
    "time",
    "random",
    "os",
    "asyncio",
    "pykka",
    "zmq",
    "subprocess",
    "io",
    "datetime",
    "uuid",
    "secrets",
    "shutil",
    "tempfile",
    "pathlib",
    "multiprocessing",
    "select",
    "signal",
    "concurrent",
    "msgpack",
}
FORBIDDEN_CALLS = {"open", "input", "print", "exec", "eval", "__import__"}
# The only standard modules the core may use (besides its own package).
ALLOWED_MODULES = {
    "__future__",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "heapq",  # a pure data structure over lists (the session table's eviction order)
    "itertools",
    "logging",
    "math",
    "operator",  # attrgetter: pure functions of their arguments
    "typing",
    "waraft",
}


def _core_files() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert files, f"no sources found under {CORE}"
    return files


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{path.name}:{node.lineno} import {alias.name}")
                if alias.name.startswith("waraft") and not alias.name.startswith("waraft.core"):
                    found.append(f"{path.name}:{node.lineno} imports {alias.name} outside core")
                if alias.name.split(".")[0] not in ALLOWED_MODULES:
                    found.append(f"{path.name}:{node.lineno} imports {alias.name} (not allowed)")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{path.name}:{node.lineno} from {module} import ...")
            elif node.level == 0 and module.split(".")[0] not in ALLOWED_MODULES:
                found.append(f"{path.name}:{node.lineno} from {module} (not allowed)")
            if (
                node.level == 0
                and module.startswith("waraft")
                and not module.startswith("waraft.core")
            ):
                found.append(f"{path.name}:{node.lineno} imports {module} outside waraft.core")
            if node.level == 0 and module == "waraft":
                names = {a.name for a in node.names}
                if names - {"core"}:
                    found.append(f"{path.name}:{node.lineno} from waraft import {names}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno} calls {func.id}()")
    return found


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    assert _violations(path) == []


def test_checker_catches_impurity(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import time\nfrom os import path\nimport waraft.server\n"
        "from waraft.distribution import x\nopen('f')\nimport types\n"
    )
    found = _violations(bad)
    assert len(found) == 7, found
    assert any("import time" in f for f in found)
    assert any("calls open()" in f for f in found)
