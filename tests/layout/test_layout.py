"""The package layout shows the architecture: layers import downwards only, never in a cycle.

The import graph is read statically from every ``import`` statement in ``waraft/`` (imports
inside functions and under ``TYPE_CHECKING`` included: a cycle hidden in a function is still a
cycle). A package is a folder under ``waraft/``; the top-level modules (the public faces such
as ``waraft.server``, the client, the root ``__init__``) form the ``waraft`` face layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "waraft"

# Each package may import only packages of a strictly lower rank (DESIGN.md's layer table).
RANKS: dict[str, int] = {
    "core": 0,  # the pure protocol core
    "otp": 0,  # the actor runtime, which knows nothing of Raft
    "sim": 1,  # the deterministic simulator drives the core only
    "services": 1,  # node-wide configuration, codec, metrics, the options registry
    "distribution": 2,
    "log": 3,
    "storage": 3,
    "transport": 4,
    "partition": 5,
    "waraft": 6,  # the public faces, the client
    "cli": 7,
}


def module_files(root: Path) -> dict[str, Path]:
    """Every module under ``root`` by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import sub`` names the submodule)."""
    mods = module_files(root)
    top = root.name

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in mods else base)
            for target in targets:
                found = resolve(target)
                if found is not None and found.split(".")[0] == top and found != mod:
                    graph[mod].add(found)
    return graph


def package_of(module: str, root: Path) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and (root / parts[1]).is_dir():
        return parts[1]
    return root.name


def package_edges(root: Path) -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> example module edges."""
    edges: dict[tuple[str, str], list[str]] = {}
    for mod, targets in import_graph(root).items():
        for target in targets:
            a, b = package_of(mod, root), package_of(target, root)
            if a != b:
                edges.setdefault((a, b), []).append(f"{mod} -> {target}")
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(iter(children), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages | {"waraft"} == set(RANKS)


def test_packages_import_only_lower_layers() -> None:
    upward = {
        (a, b): examples[:3]
        for (a, b), examples in package_edges(ROOT).items()
        if RANKS[b] >= RANKS[a]
    }
    assert upward == {}


def test_no_import_cycle_between_packages() -> None:
    edges = package_edges(ROOT)
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    assert cycles(graph) == []
    crossing = [c for c in cycles(import_graph(ROOT)) if len({package_of(m, ROOT) for m in c}) > 1]
    assert crossing == []


def test_core_states_do_not_import_the_dispatcher() -> None:
    """One module owns the state table; no cycle inside the core."""
    core = {m: t for m, t in import_graph(ROOT).items() if m.startswith("waraft.core")}
    assert cycles(core) == []
    importers = sorted(m for m, targets in core.items() if "waraft.core.server" in targets)
    assert importers == ["waraft.core"] or importers == []


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checks_see_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """The analysis itself: a function-level import that closes a loop is found."""
    root = tmp_path / "waraft"
    _write(root, "__init__.py", "")
    _write(root, "partition/__init__.py", "")
    _write(root, "partition/server.py", "from waraft.transport import manager\n")
    _write(root, "transport/__init__.py", "")
    _write(root, "transport/manager.py", "def f():\n    from waraft.partition import server\n")
    edges = package_edges(root)
    assert set(edges) == {("partition", "transport"), ("transport", "partition")}
    assert cycles(import_graph(root)) == [["waraft.partition.server", "waraft.transport.manager"]]


@pytest.mark.parametrize("face", ["server", "acceptor", "sup", "part_sup", "queue", "storage"])
def test_public_faces_keep_the_wa_raft_names(face: str) -> None:
    import importlib

    module = importlib.import_module(f"waraft.{face}")
    assert module.__all__, face
    for name in module.__all__:
        assert hasattr(module, name), (face, name)
