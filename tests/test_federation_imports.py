"""The federation's import graph, read from the sources with ast: no client imports the
site daemon, and the site <-> rules and dataflow federated <-> federated_ops cycles are
gone. Imports under `if TYPE_CHECKING:` are left out (they run only in the checker);
imports inside functions count (they run when called)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAEMON = {"gfs.federation.site", "gfs.federation.site_state", "gfs.federation.site_handlers"}
#: Modules that start the daemon or are part of it (start-up, the harnesses that create
#: sites for tests and benchmarks, the routes extensions add to it).
DAEMON_SIDE = DAEMON | {"gfs.federation.cli", "gfs.federation.testing",
                        "gfs.federation.rules", "bench.schedule", "privacy.site"}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(tree)
    return out


def _graph() -> dict[str, set[str]]:
    # (bench/.data holds what benches and the demo download: not our modules)
    files = [p for d in ("gfs", "dataflow", "privacy", "bench") for p in (ROOT / d).rglob("*.py")
             if ".data" not in p.relative_to(ROOT).parts]
    mods = {_module(p): p for p in files}
    return {m: {i for i in _runtime_imports(p) if i in mods and i != m}
            for m, p in mods.items()}


def _reaches(graph: dict[str, set[str]], a: str, b: str) -> bool:
    seen, todo = {a}, [a]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt == b:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def test_no_client_imports_the_site_daemon() -> None:
    graph = _graph()
    offenders = sorted(f"{m} -> {i}" for m, deps in graph.items() if m not in DAEMON_SIDE
                       for i in deps & DAEMON)
    assert offenders == []
    for client in ("gfs.federation.site_client", "gfs.federation.client",
                   "gfs.federation.source", "gfs.federation.wire"):
        assert not any(_reaches(graph, client, d) for d in DAEMON), client


@pytest.mark.parametrize("a, b", [
    ("gfs.federation.site_handlers", "gfs.federation.rules"),
    ("gfs.federation.site_state", "gfs.federation.rules"),
    ("gfs.federation.site", "gfs.federation.rules"),
    ("dataflow.federated", "dataflow.federated_ops"),
])
def test_no_cycle(a: str, b: str) -> None:
    graph = _graph()
    assert not (_reaches(graph, a, b) and _reaches(graph, b, a)), f"{a} <-> {b}"


def test_the_graph_sees_imports_inside_functions() -> None:
    # the check itself: a lazy import inside a function is an edge, a TYPE_CHECKING one not
    graph = _graph()
    assert "gfs.federation.rules" in graph["gfs.federation.site_handlers"]
    assert "gfs.federation.site_state" not in graph["gfs.federation.rules"]
