"""The read stack has no import cycle: the gfs modules that build it import one
another one way only (the cache <-> disk_cache cycle is gone)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["gfs.read", "gfs.read.source", "gfs.read.local", "gfs.read.memory",
           "gfs.read.disk", "gfs.read.reader", "gfs.read.stack", "gfs.disk_cache",
           "gfs.eviction", "gfs.store", "gfs.files", "gfs.client", "gfs.fsspec_fs",
           "gfs.mount", "gfs.mount_writeback", "gfs.federation.client",
           "gfs.federation.source"]


def _file(mod: str) -> Path:
    base = ROOT.joinpath(*mod.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(mod: str) -> set[str]:
    """gfs modules `mod` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(_file(mod).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gfs"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("gfs."))
    return {m for m in out if m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_among_the_read_modules() -> None:
    graph = {mod: {d for d in _imports(mod) if d != mod} for mod in MODULES}
    assert all(_file(m).exists() for m in MODULES)
    assert _cycle(graph) is None, _cycle(graph)


def test_the_detector_sees_a_cycle() -> None:
    """The check above can fail: modules importing each other form a cycle."""
    assert _cycle({"gfs.cache": {"gfs.disk_cache"}, "gfs.disk_cache": {"gfs.cache"}}) == [
        "gfs.cache", "gfs.disk_cache", "gfs.cache"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def _blob_reads_by_hand(source: str) -> list[int]:
    """Lines of `source` that read pack bytes at a chunk location's offset: a call
    `X.get|readinto|get_range(pack_key(...), ... .offset ...)`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "readinto", "get_range") and node.args
                and isinstance(node.args[0], ast.Call)
                and ast.unparse(node.args[0].func).endswith("pack_key")
                and any(isinstance(n, ast.Attribute) and n.attr == "offset"
                        for a in node.args[1:] for n in ast.walk(a))):
            lines.append(node.lineno)
    return lines


def test_no_module_outside_the_read_stack_reads_blobs_by_hand() -> None:
    """Issue 12: reading a blob at its location is the read stack's job (gfs/read), and
    the pools' own; every other module goes through it."""
    found = []
    for path in sorted((ROOT / "gfs").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("gfs/read/", "gfs/pools/")):
            continue
        found += [f"{rel}:{n}" for n in _blob_reads_by_hand(path.read_text())]
    assert not found, f"blobs read by hand outside the read stack: {found}"


def test_the_blob_read_detector_sees_one() -> None:
    assert _blob_reads_by_hand(
        "x = store.pool(loc.pool).get(pack_key(loc.pack), loc.offset, loc.offset + n)\n"
        "y = pool.readinto(pack_key(loc.pack), loc.offset, view)\n"
        "z = pool.get(pack_key(p.id), 0, PACK_HEADER_LEN)\n") == [1, 2]
