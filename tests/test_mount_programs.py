"""Real programs on the FUSE mount, each compared with the same run on a local directory."""

from __future__ import annotations

import marshal
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_tree, tree_digest
from tests.test_mount_helpers import Mounted, init_store, mount, needs_fuse

pytestmark = needs_fuse

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    base = tmp_path_factory.mktemp("programs")
    init_store(base / "state")
    with mount(base / "state", base / "mnt") as mounted:
        yield mounted


@pytest.fixture
def work(m: Mounted, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh directory on the mount and one on local disk, for one test."""
    on_mount = m.mnt / request.node.name
    on_mount.mkdir()
    local = tmp_path / "local"
    local.mkdir()
    return on_mount, local


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                       check=False, env={**os.environ, "LC_ALL": "C"})
    assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return r.stdout


def times(root: Path, dirs: bool = True) -> dict[str, int]:
    """Relative path -> mtime (ns) of every non-symlink entry below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (dirnames if dirs else []) + filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def source_tree(dest: Path) -> Path:
    """A real source tree: this repository's gfs/ and tests/ plus a stdlib package."""
    dest.mkdir()
    shutil.copytree(REPO / "gfs", dest / "gfs", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copytree(REPO / "tests", dest / "tests", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(sysconfig.get_paths()["stdlib"]) / "json", dest / "json",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "gfs" / "link-to-client").symlink_to("client.py")
    return dest


def test_git_clone_and_log(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_mount, local = work
    origin = tmp_path / "origin"
    source_tree(origin)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    run(*git, "init", "-q", "-b", "main", origin)
    run(*git, "-C", origin, "add", "gfs")
    run(*git, "-C", origin, "commit", "-q", "-m", "first")
    run(*git, "-C", origin, "add", ".")
    run(*git, "-C", origin, "commit", "-q", "-m", "second")
    for where in (on_mount, local):
        run("git", "clone", "-q", origin, where / "clone")
        run(*git, "-C", where / "clone", "mv", "json", "json2")
        run(*git, "-C", where / "clone", "commit", "-q", "-m", "third")
        run("git", "-C", where / "clone", "fsck", "--strict")
    logs = [run("git", "-C", w / "clone", "log", "--format=%s %T") for w in (on_mount, local)]
    assert logs[0] == logs[1] and logs[0].count("\n") == 3
    assert run("git", "-C", on_mount / "clone", "status", "--porcelain") == ""
    strip = {k: v for k, v in tree_digest(on_mount / "clone").items()
             if not k.startswith(".git")}
    assert strip == {k: v for k, v in tree_digest(local / "clone").items()
                     if not k.startswith(".git")}


def test_tar_extract_and_create(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_mount, local = work
    src = source_tree(tmp_path / "src")
    archive = tmp_path / "src.tar"
    run("tar", "-C", src.parent, "-cf", archive, "src")
    for where in (on_mount, local):
        run("tar", "-C", where, "-xpf", archive)
    assert tree_digest(on_mount / "src") == tree_digest(local / "src") == tree_digest(src)
    assert times(on_mount / "src") == times(local / "src")
    listing = []
    for where in (on_mount, local):
        out = tmp_path / f"{where.name}.tar"
        run("tar", "-C", where, "--sort=name", "-cf", out, "src")
        listing.append(run("tar", "-tvf", out))
    assert listing[0] == listing[1]


def test_rsync_in_and_out(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_mount, _ = work
    src = make_tree(tmp_path / "tree", seed=11, files=40)
    run("rsync", "-a", f"{src}/", f"{on_mount}/tree/")
    back = tmp_path / "back"
    run("rsync", "-a", f"{on_mount}/tree/", f"{back}/")
    assert tree_digest(on_mount / "tree") == tree_digest(src) == tree_digest(back)
    # rsync's generator may set a directory's time before the receiver's last rename
    # into it, and skips the touch-up when the second matches: compare files only.
    assert times(back, dirs=False) == times(src, dirs=False)
    again = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{on_mount}/tree/")
    assert again.strip() == ""  # nothing to do the second time


def test_cp_a_keeps_symlinks_and_permissions(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_mount, local = work
    src = make_tree(tmp_path / "tree", seed=12, files=30)
    os.chmod(src, 0o750)
    run("cp", "-a", src, on_mount / "tree")
    run("cp", "-a", src, local / "tree")
    assert tree_digest(on_mount / "tree") == tree_digest(local / "tree")
    assert times(on_mount / "tree") == times(local / "tree")
    assert (on_mount / "tree").stat().st_mode & 0o7777 == 0o750
    back = tmp_path / "back"
    run("cp", "-a", on_mount / "tree", back)
    assert tree_digest(back) == tree_digest(src)
    assert os.readlink(back / "dangling") == "does/not/exist"


def _sqlite_session(db: Path) -> list[object]:
    con = sqlite3.connect(db)
    try:
        con.execute("create table t (id integer primary key, city text, x real)")
        rows = [(i, ["beijing", "chengdu", "xian"][i % 3], i * 0.5) for i in range(5000)]
        con.executemany("insert into t values (?, ?, ?)", rows)
        con.commit()
        con.execute("create index t_city on t(city)")
        con.execute("update t set x = x * 2 where city = 'xian'")
        con.execute("delete from t where id % 7 = 0")
        con.commit()
    finally:
        con.close()
    con = sqlite3.connect(db)
    try:
        out: list[object] = list(con.execute(
            "select city, count(*), sum(x) from t group by city order by city"))
        out.append(con.execute("pragma integrity_check").fetchone())
        con.execute("vacuum")
        out.append(con.execute("select count(*) from t").fetchone())
    finally:
        con.close()
    return out


def test_sqlite(work: tuple[Path, Path]) -> None:
    on_mount, local = work
    assert _sqlite_session(on_mount / "db.sqlite") == _sqlite_session(local / "db.sqlite")


def test_compileall(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_mount, local = work
    src = source_tree(tmp_path / "src")
    run("cp", "-a", src, on_mount / "src")
    run("cp", "-a", src, local / "src")
    for where in (on_mount, local):
        run(sys.executable, "-m", "compileall", "-q", where / "src")
    ours, theirs = tree_digest(on_mount / "src"), tree_digest(local / "src")
    assert ours.keys() == theirs.keys()
    pycs = [k for k in ours if k.endswith(".pyc")]
    assert len(pycs) > 50
    for k in ours:  # marshal output is not byte-stable across runs: compare code objects
        if k.endswith(".pyc"):
            a, b = ours[k][2], theirs[k][2]
            assert isinstance(a, bytes) and isinstance(b, bytes)
            assert a[:16] == b[:16] and marshal.loads(a[16:]) == marshal.loads(b[16:]), k
        else:
            assert ours[k] == theirs[k], k
    out = run(sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
              "import gfs.paths; print(gfs.paths.__cached__)", on_mount / "src")
    assert str(on_mount) in out
