"""The native listing of a put's walk (`gfs._native.scan_dir` and `scan_entries`,
native/localscan.c): what os.scandir, DirEntry.stat(follow_symlinks=False) and
os.access(R_OK) say of each entry, for every kind of entry and name; a tree listed
breadth first, many directories in one call, its entries made natively exactly as
the walk's Python makes them from scan_dir, or left to it; and its failures (an entry gone between
the listing and its lstat, a file access refuses, a directory that cannot be opened),
forced with an LD_PRELOAD shim, fail the put before anything is written, naming the
entry."""

from __future__ import annotations

import ast
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs import paths
from gfs import put_walk as walk_mod
from gfs._native import LocalEntry, LocalStat, scan_dir, scan_entries
from gfs.errors import InvalidPathError
from tests.preload_shim import build_shim


def _reference(path: str) -> list[tuple[str, int, int, int, int, int, int, int]]:
    rows = []
    with os.scandir(path) as it:
        for k in it:
            s = k.stat(follow_symlinks=False)
            readable = not os.path.isfile(k.path) or os.path.islink(k.path) or os.access(
                k.path, os.R_OK)
            rows.append((k.name, s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_atime_ns,
                         s.st_mtime_ns, int(readable)))
    return sorted(rows)


def test_every_kind_of_entry_as_scandir_and_lstat_see_it(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "plain.txt").write_bytes(b"x" * 1000)
    (d / "empty").write_bytes(b"")
    (d / "secret").write_bytes(b"s")
    (d / "secret").chmod(0)
    (d / "sub").mkdir()
    (d / "link").symlink_to("plain.txt")
    (d / "dangling").symlink_to("nowhere")
    (d / "dirlink").symlink_to("sub")
    os.mkfifo(d / "fifo")
    (d / "名前 ünï").write_bytes(b"u")
    fd = os.open(os.fsencode(d) + b"/bad\xff\xfename", os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.utime(d / "plain.txt", ns=(1_234_567_891_123_456_789, 987_654_321_987_654_321))
    got = sorted(scan_dir(str(d)))
    assert got == _reference(str(d))
    assert len(got) == 10 and "bad\udcff\udcfename" in [r[0] for r in got]
    # bytes paths too, as os.fspath gives (names and kinds: following the dangling link
    # above moved its atime)
    assert [r[:2] for r in sorted(scan_dir(os.fsencode(d)))] == [r[:2] for r in got]


@given(st.lists(st.tuples(st.text(st.characters(blacklist_characters="/\0",
                                                  blacklist_categories=("Cs",)),
                                    min_size=1, max_size=40),
                           st.sampled_from(["file", "dir", "link"]),
                           st.integers(0, 5000)),
                max_size=80, unique_by=lambda t: t[0]))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_names_and_sizes_as_scandir_sees_them(
        tmp_path: Path, entries: list[tuple[str, str, int]]) -> None:
    d = Path(tmp_path) / f"t{abs(hash(tuple(entries)))}"
    d.mkdir()
    try:
        for name, kind, size in entries:
            if name in (".", "..") or len(name.encode()) > 255:
                continue
            p = d / name
            if kind == "file":
                p.write_bytes(b"z" * size)
            elif kind == "dir":
                p.mkdir()
            else:
                p.symlink_to(f"target-{size}")
        assert sorted(scan_dir(str(d))) == _reference(str(d))  # (scan_dir: many entries
        # are stat'ed without the GIL, few with it held)
    finally:
        shutil.rmtree(d)


def test_a_directory_that_cannot_be_listed_raises_as_scandir_does(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as gone:
        scan_dir(str(tmp_path / "missing"))
    assert gone.value.filename == str(tmp_path / "missing")
    (tmp_path / "f").write_bytes(b"f")
    with pytest.raises(NotADirectoryError):
        scan_dir(str(tmp_path / "f"))


def _bfs(root: str, limit: int) -> list[str]:
    """The directories a breadth-first listing of `root` reaches, up to `limit`."""
    out = [root]
    for d in out:
        for name in sorted(os.listdir(d), key=os.fsencode):  # listing order aside
            p = os.path.join(d, name)
            if os.path.isdir(p) and not os.path.islink(p) and len(out) < limit:
                out.append(p)
    return out


def _python_entries(path: str, rel: tuple[str, ...]) -> list[LocalEntry]:
    """The entries the walk's Python makes of directory `path` from scan_dir."""
    return walk_mod.list_local(LocalEntry((rel, path, LocalStat((0o40755, 0, 0, 0, 0, 0)))))


def _no_atime(entries: list[LocalEntry]) -> list[object]:
    """`entries` less their access times (listing a directory moves its atime)."""
    return [(e.rel, e.path, e.st[:4] + e.st[5:]) for e in entries]


@given(st.integers(1, 40))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_tree_listed_breadth_first_is_each_directory_as_the_walk_makes_it(
        tmp_path: Path, limit: int) -> None:
    root = tmp_path / "tree"
    if not root.exists():
        for k in range(4):
            sub = root / f"d{k}" / "deep" / "deeper"
            sub.mkdir(parents=True)
            (sub / "f").write_bytes(b"f" * k)
            (root / f"d{k}" / f"file{k}").write_bytes(b"x")
            (root / f"d{k}" / "dirlink").symlink_to("deep")  # not followed
            (root / f"d{k}" / "名前 ünï").write_bytes(b"u")
        (root / "top.txt").write_bytes(b"t")
    got = scan_entries(str(root), ("top",), limit)
    assert len(got) == min(limit, 1 + 4 * 3)
    assert got[0][0] == str(root)
    # breadth first: every level before the next; each directory once, its entries (in
    # name order, with their rels below the top) as the Python walk makes them
    dirs = [p for p, _, _ in got]
    assert [p.count(os.sep) for p in dirs] == sorted(p.count(os.sep) for p in dirs)
    assert set(dirs) <= set(_bfs(str(root), 1 + 4 * 3)) and len(set(dirs)) == len(dirs)
    for p, rows, made in got:
        rel = ("top", *Path(p).relative_to(root).parts)
        assert rows is None and made is not None
        assert all(isinstance(e, LocalEntry) and isinstance(e.st, LocalStat) for e in made)
        assert _no_atime(made) == _no_atime(_python_entries(p, rel))
    # a parent is listed before its children, and only directories reached are listed
    for p in dirs[1:]:
        assert os.path.dirname(p) in dirs[:dirs.index(p)]
    with pytest.raises(ValueError):
        scan_entries(str(root), (), 0)
    with pytest.raises(TypeError):
        scan_entries(str(root), ["top"], 4)  # type: ignore[arg-type]
    assert scan_entries(str(root / "top.txt"), (), 4) == [
        (str(root / "top.txt"), errno.ENOTDIR, None)]


def test_no_directory_is_queued_once_the_listings_hold_max_entries(tmp_path: Path) -> None:
    """scan_entries(max_entries=n): the directories queued before the listings reached n
    entries are listed, none after; breadth first as without the bound."""
    root = tmp_path / "tree"
    for k in range(5):  # top: 5 dirs (5 entries); each: 3 files and a subdirectory
        for f in range(3):
            (root / f"d{k}" / "sub").mkdir(parents=True, exist_ok=True)
            (root / f"d{k}" / f"f{f}").write_bytes(b"x")
        (root / f"d{k}" / "sub" / "leaf").write_bytes(b"y")
    def listed(max_entries: int) -> list[tuple[str, object]]:  # (atimes move as it lists)
        return [(p, _no_atime(made)) for p, _, made in
                scan_entries(str(root), (), 100, max_entries)]

    whole = listed(1 << 40)
    assert len(whole) == 11
    # the top's 5 entries reach a bound of 5: none of its directories is queued
    assert listed(5) == whole[:1]
    # 5 < 6: the top's directories are queued (and listed), none below them (9 >= 6)
    assert listed(6) == whole[:6]
    # 5 + 4 = 9 < 13 at the first listed below the top: its subdirectory is queued;
    # 13 at the second: no more
    assert listed(13) == whole[:7] and whole[6][0] == whole[1][0] + "/sub"
    assert [p for p, _, _ in scan_entries(str(root), (), 100)] == [p for p, _ in whole]
    with pytest.raises(ValueError):
        scan_entries(str(root), (), 4, 0)


def test_a_listing_with_an_entry_the_walk_must_check_is_left_to_it(tmp_path: Path) -> None:
    """A directory holding a name that is not valid UTF-8 comes back as scan_dir rows,
    so the walk raises what check_name raises; its subdirectories listed in the same
    call still come back made, with their rels."""
    root = tmp_path / "t"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "f").write_bytes(b"f")
    fd = os.open(os.fsencode(root) + b"/bad\xffname", os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    got = {p: (rows, made) for p, rows, made in scan_entries(str(root), (), 8)}
    rows, made = got[str(root)]
    assert made is None and isinstance(rows, list)
    assert sorted(r[0] for r in rows) == ["bad\udcffname", "sub"]
    assert [e.rel for e in got[str(root / "sub")][1] or []] == [("sub", "deeper")]
    assert [e.rel for e in got[str(root / "sub" / "deeper")][1] or []] == [
        ("sub", "deeper", "f")]
    listings = walk_mod.Listings()
    top = LocalEntry(((), str(root), LocalStat((0o40755, 0, 0, 0, 0, 0))))
    with pytest.raises(InvalidPathError, match="UTF-8"):
        walk_mod.list_local(top, listings)


@given(st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_name_is_made_natively_exactly_when_check_name_takes_it(
        tmp_path: Path, name: bytes) -> None:
    d = os.path.join(os.fsencode(tmp_path), b"n%d" % abs(hash(name)))
    os.mkdir(d)
    try:
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o600))
        ((_, rows, made),) = scan_entries(os.fsdecode(d), (), 1)
        try:
            paths.check_name(os.fsdecode(name))
            taken = True
        except InvalidPathError:
            taken = False
        assert (made is not None) == taken
        if taken:
            assert made is not None and [e.rel for e in made] == [(os.fsdecode(name),)]
        else:
            assert rows is not None and not isinstance(rows, int) and len(rows) == 1
    finally:
        shutil.rmtree(d)


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* fstatat fails with ENOENT for names holding "vanish" (gone since the listing);
   faccessat refuses R_OK for names holding "locked" (as for a user without read) */
int fstatat64(int dfd, const char *name, struct stat64 *st, int flags) {
    static int (*real)(int, const char *, struct stat64 *, int);
    if (!real) real = dlsym(RTLD_NEXT, "fstatat64");
    if (strstr(name, "vanish")) { errno = ENOENT; return -1; }
    return real(dfd, name, st, flags);
}

int fstatat(int dfd, const char *name, struct stat *st, int flags) {
    return fstatat64(dfd, name, (struct stat64 *)st, flags);
}

/* a directory whose path holds "sealed" cannot be opened (as for a user without x) */
static mode_t mode_of(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open64(const char *path, int flags, ...) {
    static int (*real)(const char *, int, ...);
    if (!real) real = dlsym(RTLD_NEXT, "open64");
    if ((flags & O_DIRECTORY) && strstr(path, "sealed")) { errno = EACCES; return -1; }
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    return real(path, flags, mode);
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    return open64(path, flags, mode);
}

int faccessat(int dfd, const char *name, int mode, int flags) {
    static int (*real)(int, const char *, int, int);
    if (!real) real = dlsym(RTLD_NEXT, "faccessat");
    if (strstr(name, "locked")) { errno = EACCES; return -1; }
    return real(dfd, name, mode, flags);
}
"""

CHILD = textwrap.dedent("""
    import os, sys
    from gfs.client import Client
    state, tree, name = sys.argv[1:]
    with Client(state) as fs:
        before = sorted(fs.ls("/"))
        try:
            fs.put(tree, "/t")
            print("PUT OK")
        except OSError as e:
            print(type(e).__name__, e.filename or "", str(e))
        print("UNCHANGED" if sorted(fs.ls("/")) == before else "CHANGED")
""")


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(SHIM, tmp_path_factory.mktemp("scanshim"))


def test_a_directory_that_cannot_be_opened_is_named_in_its_place_and_fails_the_put(
        tmp_path: Path, shim: Path) -> None:
    """scan_entries gives the errno of a directory below in its place (the rest listed),
    and a put of the tree fails naming it, with nothing written."""
    from gfs.client import Client

    state = tmp_path / "state"
    Client.init(state).close()
    tree = tmp_path / "tree"
    for d in ("a", "b/sealed", "c"):
        (tree / d).mkdir(parents=True)
        (tree / d / "f").write_bytes(b"f")
    env = {**os.environ, "LD_PRELOAD": str(shim)}
    listed = subprocess.run(
        [sys.executable, "-c", "import sys; from gfs._native import scan_entries; "
         "print(sorted((p, r if isinstance(r, int) else len(m)) "
         "for p, r, m in scan_entries(sys.argv[1], (), 16)))", str(tree)],
        env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert ast.literal_eval(listed) == sorted([
        (str(tree), 3), (str(tree / "a"), 1), (str(tree / "b"), 1),
        (str(tree / "b" / "sealed"), 13), (str(tree / "c"), 1)])  # EACCES
    out = subprocess.run([sys.executable, "-c", CHILD, str(state), str(tree), "sealed"],
                         env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.strip().splitlines()
    assert out[0].startswith("PermissionError") and str(tree / "b" / "sealed") in out[0], out
    assert "cannot read local directory" in out[0] and out[1] == "UNCHANGED", out


@pytest.mark.parametrize("bad,error", [("vanish.txt", "FileNotFoundError"),
                                       ("locked.txt", "PermissionError")])
def test_an_entry_that_fails_its_checks_fails_the_put_before_anything_is_written(
        tmp_path: Path, shim: Path, bad: str, error: str) -> None:
    from gfs.client import Client

    state = tmp_path / "state"
    Client.init(state).close()
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for k in range(100):  # a directory stat'ed without the GIL, and a small one
        (tree / "a" / f"f{k:03}").write_bytes(b"%d" % k)
    (tree / "a" / "b" / bad).write_bytes(b"gone")
    (tree / "a" / "b" / "z").write_bytes(b"z")
    env = {**os.environ, "LD_PRELOAD": str(shim)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(state), str(tree), bad], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith(error), out
    assert str(tree / "a" / "b" / bad) in lines[0], out
    assert lines[1] == "UNCHANGED", out
    listed = subprocess.run(
        [sys.executable, "-c", "import sys; from gfs._native import scan_dir; "
         "print(sorted(r for r in scan_dir(sys.argv[1]) if r[0] == sys.argv[2]))",
         str(tree / "a" / "b"), bad], env=env, capture_output=True, text=True, timeout=60,
        check=True).stdout
    row = ast.literal_eval(listed)[0]
    if error == "FileNotFoundError":
        assert row[1] == -1 and row[7] == 2  # ENOENT
    else:
        assert row[1] > 0 and row[7] == 0
