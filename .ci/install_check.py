"""The Python half of `.ci/install-check` (standard library only).

    install_check.py wheel ROOT WHEEL   the wheel holds every module of the checkout's
                                        packages, the four C extensions, py.typed, stubs
    install_check.py smoke ...          run inside the clean venv, from outside the
                                        checkout: CLI, import of every module, a small
                                        end-to-end run, a pyarrow table read by privacy

Each failure prints one line naming what is wrong and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = ("gfs", "privacy", "dataflow")
EXTENSIONS = ("gfs/_native", "gfs/_mover", "gfs/_delayline", "privacy/_ec", "privacy/_psi_ot")


def fail(msg: str) -> None:
    """Print `msg` as the failure and exit 1."""
    print(f"install-check FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def source_files(root: Path) -> set[str]:
    """The checkout's tracked .py/.pyi/py.typed files of the packages (git ls-files)."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "--", *PACKAGES],
                         check=True, capture_output=True, text=True).stdout.split()
    return {p for p in out if p.endswith((".py", ".pyi", "py.typed"))}


def check_wheel(root: Path, wheel: Path) -> None:
    """Every tracked module, stub and marker of the checkout, and each C extension,
    is in `wheel`."""
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_files(root) - names)
    if missing:
        fail(f"{wheel.name} lacks {len(missing)} file(s) of the checkout: "
             + ", ".join(missing[:8]) + " (fix [tool.setuptools] in pyproject.toml)")
    for ext in EXTENSIONS:
        if not any(n.startswith(ext + ".") and n.endswith(".so") for n in names):
            fail(f"{wheel.name} lacks the C extension {ext}.*.so (see setup.py)")
    print(f"{wheel.name}: {len(names)} files, all checkout modules, "
          f"C extensions {', '.join(EXTENSIONS)}")


def sh(bin_dir: Path, cwd: Path, *args: str, input: bytes | None = None) -> str:
    """Run a command of the venv from `cwd`; fail loudly unless it exits 0."""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run(list(args), cwd=cwd, env=env, input=input, capture_output=True,
                       timeout=300)
    shown = " ".join(args)
    print(f"$ {shown}  -> exit {r.returncode}")
    if r.returncode != 0:
        sys.stderr.write(r.stdout.decode(errors="replace")[-2000:])
        sys.stderr.write(r.stderr.decode(errors="replace")[-4000:])
        fail(f"`{shown}` exited {r.returncode}")
    return r.stdout.decode(errors="replace")


def testing_extra_modules() -> set[str]:
    """Top-level module names of the `testing` extra's requirements (pytest)."""
    reqs = importlib.metadata.requires("hutong") or []
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].replace("-", "_")
            for r in reqs if re.search(r"extra\s*==\s*['\"]testing['\"]", r)}


def import_all(root: Path, strict: bool) -> None:
    """Import every module of every package, from the installed copy (not `root`).

    Unless `strict`, a module of a `testing` package may lack a module that the
    `testing` extra provides (it is checked again once the extra is installed)."""
    extra = testing_extra_modules()
    count, deferred = 0, []
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        where = Path(mod.__file__ or "").resolve()
        if where.is_relative_to(root):
            fail(f"{pkg} was imported from the checkout ({where}), not the install")
        for info in pkgutil.walk_packages(mod.__path__, prefix=pkg + ".",
                                          onerror=lambda n: fail(f"cannot walk {n}")):
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as e:
                top = (e.name or "").split(".")[0]
                if not strict and top in extra and "testing" in info.name.split("."):
                    deferred.append(info.name)
                    continue
                fail(f"import {info.name}: {e} (declare it in pyproject.toml "
                     "or include the module in the wheel)")
            except Exception as e:  # any import-time failure is a broken install
                fail(f"import {info.name}: {type(e).__name__}: {e}")
            count += 1
    print(f"imported {count} modules of {', '.join(PACKAGES)}"
          + (f"; {len(deferred)} need the [testing] extra: {', '.join(deferred)}"
             if deferred else ""))


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def end_to_end(bin_dir: Path, work: Path) -> None:
    """init, put a small tree, ls, get, fsck; then a parquet table read by privacy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gfs import Client
    from privacy.tables import num_rows

    d = Path(tempfile.mkdtemp(dir=work, prefix="e2e-"))
    state, tree = d / "state", d / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("hello hutong\n" * 1000)
    (tree / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    pq.write_table(pa.table({"id": list(range(100)), "v": [i * 2 for i in range(100)]}),
                   tree / "t.parquet")
    hut = ("hutong", "--state", str(state))
    sh(bin_dir, d, *hut, "init")
    sh(bin_dir, d, *hut, "put", str(tree), "/lab/tree")
    listing = sh(bin_dir, d, *hut, "ls", "/lab/tree")
    for name in ("a.txt", "sub", "t.parquet"):
        if name not in listing:
            fail(f"`hutong ls /lab/tree` does not list {name}: {listing!r}")
    sh(bin_dir, d, *hut, "get", "/lab/tree", str(d / "restored"))
    want, got = tree_bytes(tree), tree_bytes(d / "restored")
    if want != got:
        fail(f"restored tree differs from the original: {sorted(set(want) ^ set(got))} "
             f"{[p for p in want if p in got and want[p] != got[p]]}")
    sh(bin_dir, d, *hut, "fsck")
    with Client(str(state)) as fs:
        rows = num_rows(fs, "/lab/tree/t.parquet")
    if rows != 100:
        fail(f"privacy.tables.num_rows read {rows} rows, expected 100")
    print("end to end: init, put, ls, get (identical), fsck, privacy parquet read: ok")


def smoke(root: Path, work: Path, bin_dir: Path, imports_only: bool) -> None:
    """The checks that run inside the clean venv."""
    if Path.cwd().resolve().is_relative_to(root):
        fail(f"the smoke check must run outside the checkout, not in {Path.cwd()}")
    if not imports_only:
        sh(bin_dir, work, "hutong", "--help")
        out = sh(bin_dir, work, "hutong", "--version")
        want = importlib.metadata.version("hutong")
        if want not in out:
            fail(f"`hutong --version` printed {out!r}, expected version {want}")
    import_all(root, strict=imports_only)
    if not imports_only:
        end_to_end(bin_dir, work)


def main() -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheel")
    w.add_argument("root", type=Path)
    w.add_argument("wheel", type=Path)
    s = sub.add_parser("smoke")
    s.add_argument("--root", type=Path, required=True)
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--bin", type=Path, required=True)
    s.add_argument("--imports-only", action="store_true",
                   help="only import every module, with no tolerance")
    a = p.parse_args()
    if a.cmd == "wheel":
        check_wheel(a.root.resolve(), a.wheel)
    else:
        smoke(a.root.resolve(), a.work.resolve(), a.bin.resolve(), a.imports_only)


if __name__ == "__main__":
    main()
