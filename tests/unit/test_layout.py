"""The package's layout: no import circles between ctr2svc's modules, and no module a reader cannot take
in at once. Both are read from the source with `ast`, imports inside functions included: a circle hidden
in a function-level import is still a circle (the modules cannot be understood one without the other)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ctr2svc"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, known: set[str]) -> tuple[set[str], set[str]]:
    """The ctr2svc modules one import statement names (`import ctr2svc.a.b`, `from ctr2svc.a import b`
    with b a module or a name in ctr2svc.a, `from ctr2svc import a`), and the packages above them,
    whose __init__ runs first."""
    targets: set[str] = set()
    if isinstance(node, ast.Import):
        targets = {alias.name for alias in node.names}
    elif node.level == 0 and node.module is not None:
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            targets.add(full if full in known else node.module)
    named = targets & known
    above = {".".join(t.split(".")[:n]) for t in targets for n in range(1, t.count(".") + 1)} & known
    return named, above


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                named, above = imported(node, set(known))
                # The packages a module sits in run before it whatever it imports: no edge of its own.
                edges |= named | {p for p in above if not name.startswith(f"{p}.")}
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]], among: set[str] | None = None) -> list[str] | None:
    """One import circle (its modules in order, the first repeated at the end), or None; AMONG limits
    the search to those modules."""
    nodes = set(graph) if among is None else among
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, set()) & nodes):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(nodes):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle for each group of modules that import each other (strongly connected components):
    every tangle is named, not only the first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, set())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [cycle for group in groups if (cycle := find_cycle(graph, group))]


def test_the_graph_sees_every_kind_of_import() -> None:
    """The parser finds module-level, function-level and TYPE_CHECKING imports in each spelling, so the
    circle test below cannot pass by missing them."""
    source = """
import ctr2svc.b.c
from ctr2svc import a
from ctr2svc.b import c, NAME
if TYPE_CHECKING:
    from ctr2svc.d import Thing
def f():
    from ctr2svc.e import g
"""
    known = {"ctr2svc", "ctr2svc.a", "ctr2svc.b", "ctr2svc.b.c", "ctr2svc.d", "ctr2svc.e"}
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            named, above = imported(node, known)
            found |= named | above
    assert found == known
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    two = find_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}})
    assert sorted(two) == [["a", "b", "a"], ["c", "d", "e", "c"]]


def test_no_import_circles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_over_500_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    over = {name: lines for name, lines in sorted(sizes.items()) if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{n} ({lines})" for n, lines in over.items()
    )
