"""Packaging: every runtime import is declared, every package is discovered.

The full install check (build, clean venv outside the checkout, CLI, end to
end) is `.ci/install-check` (`make install-check`), run by `.ci/run`; these
tests are the fast static half of it.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gfs", "privacy", "dataflow")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports anywhere in `path` (functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports() -> dict[Path, set[str]]:
    """Each module of the packages -> the third-party modules it imports."""
    own = set(PACKAGES)
    return {p: {m for m in imported_modules(p)
                if m not in sys.stdlib_module_names and m not in own}
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def closure(reqs: list[str]) -> set[str]:
    """Canonical distribution names `reqs` install: the named ones plus those their
    requested extras pull in (`dask[distributed]` -> dask, distributed, ...)."""
    out: set[str] = set()
    todo = [Requirement(r) for r in reqs]
    while todo:
        r = todo.pop()
        name = canonicalize_name(r.name)
        if name == "hutong":  # the dev extra names hutong[testing]
            todo += [Requirement(x) for e in r.extras
                     for x in PYPROJECT["project"]["optional-dependencies"][e]]
            continue
        if name in out and not r.extras:
            continue
        out.add(name)
        for sub in md.requires(r.name) or []:
            sr = Requirement(sub)
            if sr.marker and any(sr.marker.evaluate({"extra": e}) for e in r.extras) \
                    and not sr.marker.evaluate({"extra": ""}):
                todo.append(sr)
    return out


def providers(module: str) -> set[str]:
    """Canonical names of the installed distributions that provide top-level `module`."""
    return {canonicalize_name(d) for d in md.packages_distributions().get(module, [])}


def test_every_runtime_import_is_a_declared_dependency() -> None:
    declared = closure(PYPROJECT["project"]["dependencies"])
    testing = declared | closure(PYPROJECT["project"]["optional-dependencies"]["testing"])
    missing = []
    for path, mods in third_party_imports().items():
        rel = path.relative_to(ROOT)
        allowed = testing if "testing" in rel.parts else declared
        for m in sorted(mods):
            have = providers(m)
            if not have:
                missing.append(f"{rel}: {m} (not installed in the dev venv either)")
            elif not have & allowed:
                missing.append(f"{rel}: {m} (from {', '.join(sorted(have))})")
    assert not missing, ("imported at run time but not declared in pyproject.toml "
                         "[project] dependencies:\n  " + "\n  ".join(missing))


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\ndef f():\n    import pyarrow.parquet as pq\n"
                   "    from numpy import array\n    from . import sibling\n")
    assert imported_modules(src) == {"os", "pyarrow", "numpy"}


def test_pyarrow_is_declared() -> None:
    """issue 11: privacy imports pyarrow, which was not declared."""
    assert "pyarrow" in closure(PYPROJECT["project"]["dependencies"])


def test_packages_are_discovered_not_listed() -> None:
    tool = PYPROJECT["tool"]["setuptools"]
    assert "packages" in tool and "find" in tool["packages"], \
        "list no packages by hand: use [tool.setuptools.packages.find]"
    found = set(find_packages(str(ROOT), **tool["packages"]["find"]))
    for pkg in PACKAGES:
        for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")]:
            if d.is_dir() and any(d.glob("*.py")):
                name = ".".join(d.relative_to(ROOT).parts)
                assert name in found, (f"{name} has modules but is not discovered as a "
                                       "package (missing __init__.py?)")
    assert "gfs.tiering" in found


@pytest.mark.parametrize("ext", ["gfs._native", "gfs._mover", "gfs._delayline", "gfs._rowpack",
                                 "privacy._ec", "privacy._psi_ot"])
def test_c_extensions_are_built_by_setup_py_with_their_headers(ext: str) -> None:
    """The sdist holds each extension's headers (`depends`), so a wheel builds from it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    exts = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Extension":
            name = ast.literal_eval(call.args[0])
            kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords
                  if k.arg in ("sources", "depends")}
            exts[name] = kw
    assert ext in exts
    included = set()
    for src in exts[ext]["sources"]:
        for line in (ROOT / src).read_text().splitlines():
            if line.startswith('#include "'):
                included.add("native/" + line.split('"')[1])
    assert included <= set(exts[ext].get("depends", [])), \
        f"{ext}: headers {sorted(included)} must be in depends= (else the sdist lacks them)"


def test_version_flag_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from gfs.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"hutong {md.version('hutong')}"


def _install_check() -> Any:
    spec = importlib.util.spec_from_file_location("install_check",
                                                  ROOT / ".ci" / "install_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("drop", ["", "gfs/tiering/", "privacy/_ec"])
def test_install_check_compares_the_wheel_with_the_checkout(
        tmp_path: Path, drop: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`.ci/install-check` refuses a wheel that lacks a package of the checkout (as the
    listed packages left out gfs.tiering) or a C extension."""
    ic = _install_check()
    names = sorted(ic.source_files(ROOT)) + [
        f"{e}.cpython-311-x86_64-linux-gnu.so" for e in ic.EXTENSIONS]
    wheel = tmp_path / "hutong-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for n in names:
            if not drop or not n.startswith(drop):
                z.writestr(n, "")
    if not drop:
        ic.check_wheel(ROOT, wheel)
        return
    with pytest.raises(SystemExit):
        ic.check_wheel(ROOT, wheel)
    assert drop.rstrip("/") in capsys.readouterr().err
