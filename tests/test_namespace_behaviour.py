"""One behaviour suite, two back ends: the embedded `gfs.Client` and a `FederatedNamespace`
on real sites (registry and primary as processes on loopback). Each test runs on
both, under its own directory, and asserts the same Stat fields and the same
`gfs.errors` exceptions, so "same semantics" is tested, not claimed."""

from __future__ import annotations

import os
import stat as statmod
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.errors import (
    ExistsError,
    InvalidPathError,
    IsADirError,
    NotADirError,
    NotEmptyError,
    NotFoundError,
)
from gfs.federation.namespace import FederatedNamespace
from gfs.federation.testing import Federation
from gfs.namespace_api import Namespace


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with Federation(tmp_path_factory.mktemp("fed")) as fed:
        fed.registry()
        fed.site("lab-1", "lab", "cn-west", primary=True)
        yield fed


@pytest.fixture(params=["embedded", "federated"])
def ns(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Namespace, str]]:
    """(a namespace, a fresh directory in it for this test)."""
    name = request.node.name.split("[")[0]
    if request.param == "embedded":
        c = Client.init(tmp_path / "state")
        try:
            c.mkdir(f"/lab/{name}", parents=True)
            yield c, f"/lab/{name}"
        finally:
            c.close()
        return
    fed: Federation = request.getfixturevalue("federation")
    f = FederatedNamespace(fed.registry_url, keys=fed.keys("lab"), near="lab-1",
                           cache_dir=tmp_path / "cache", memory_bytes=8 << 20)
    try:
        f.mkdir(f"/lab/{name}")
        yield f, f"/lab/{name}"
    finally:
        f.close()


def test_write_then_read_whole_and_ranges(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    data = os.urandom(3 << 20)  # several chunks: the owner's chunked upload
    n.write_bytes(f"{d}/big", data)
    n.write_bytes(f"{d}/small", b"hello world")
    assert n.read_bytes(f"{d}/big") == data
    assert n.read_bytes(f"{d}/big", 1000, 1_500_000) == data[1000:1_500_000]
    assert n.read_bytes(f"{d}/small", 6) == b"world"
    with n.open(f"{d}/big") as f:
        f.seek(2_000_000)
        assert f.read(10) == data[2_000_000:2_000_010]
        f.seek(-5, os.SEEK_END)
        assert f.read() == data[-5:]


def test_stat_of_files_and_dirs(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.write_bytes(f"{d}/f", b"abc", perm=0o600)
    st = n.stat(f"{d}/f")
    assert (st.path, st.name, st.kind, st.size) == (f"{d}/f", "f", "file", 3)
    assert statmod.S_ISREG(st.mode) and statmod.S_IMODE(st.mode) == 0o600
    v1 = st.version
    n.write_bytes(f"{d}/f", b"abcd")
    assert n.stat(f"{d}/f").version > v1 and n.stat(f"{d}/f").size == 4
    top = n.stat(d)
    assert top.kind == "dir" and top.is_dir and statmod.S_ISDIR(top.mode)
    assert n.exists(f"{d}/f") and not n.exists(f"{d}/nope")
    with pytest.raises(NotFoundError):
        n.stat(f"{d}/nope")


def test_ls_in_name_order_with_full_stats(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    for name in ["b", "a", "c"]:
        n.write_bytes(f"{d}/{name}", name.encode() * 3)
    n.mkdir(f"{d}/sub")
    got = n.ls(d)
    assert [s.name for s in got] == ["a", "b", "c", "sub"]
    assert [(s.path, s.kind, s.size) for s in got] == [
        (f"{d}/a", "file", 3), (f"{d}/b", "file", 3), (f"{d}/c", "file", 3),
        (f"{d}/sub", "dir", 0)]
    assert got[0] == n.stat(f"{d}/a")
    assert [s.path for s in n.ls(f"{d}/a")] == [f"{d}/a"]  # a file lists itself
    with pytest.raises(NotFoundError):
        n.ls(f"{d}/missing")


def test_mkdir_rules(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.mkdir(f"{d}/x")
    with pytest.raises(ExistsError):
        n.mkdir(f"{d}/x")
    n.mkdir(f"{d}/x", exist_ok=True)
    with pytest.raises(NotFoundError):
        n.mkdir(f"{d}/p/q")
    n.mkdir(f"{d}/p/q", parents=True)
    assert n.stat(f"{d}/p/q").kind == "dir"
    n.write_bytes(f"{d}/file", b"1")
    with pytest.raises(NotADirError):
        n.mkdir(f"{d}/file/sub")


def test_rm_rules(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.mkdir(f"{d}/full")
    n.write_bytes(f"{d}/full/f", b"1")
    with pytest.raises(NotEmptyError):
        n.rm(f"{d}/full")
    assert n.exists(f"{d}/full/f")
    n.rm(f"{d}/full", recursive=True)
    assert not n.exists(f"{d}/full")
    with pytest.raises(NotFoundError):
        n.rm(f"{d}/full")


def test_mv_renames_and_moves_into_a_directory(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.write_bytes(f"{d}/a", b"A")
    n.mv(f"{d}/a", f"{d}/b")
    assert not n.exists(f"{d}/a") and n.read_bytes(f"{d}/b") == b"A"
    n.mkdir(f"{d}/dir")
    n.mv(f"{d}/b", f"{d}/dir")
    assert n.read_bytes(f"{d}/dir/b") == b"A"
    with pytest.raises(NotFoundError):
        n.mv(f"{d}/gone", f"{d}/x")


def test_reading_what_is_not_a_file(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.mkdir(f"{d}/dir")
    with pytest.raises(IsADirError):
        n.read_bytes(f"{d}/dir")
    with pytest.raises(IsADirError):
        n.open(f"{d}/dir")
    with pytest.raises(NotFoundError):
        n.read_bytes(f"{d}/none")
    with pytest.raises(IsADirError):
        n.write_bytes(f"{d}/dir", b"x")
    with pytest.raises(NotFoundError):
        n.write_bytes(f"{d}/nodir/f", b"x")
    with pytest.raises(InvalidPathError):
        n.stat("relative/path")
    with pytest.raises(InvalidPathError):
        n.stat(f"{d}/../x")


def test_writer_is_close_to_open_and_abort_keeps_the_old(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.write_bytes(f"{d}/f", b"old")
    with n.open(f"{d}/f", "wb") as w:
        w.write(b"new ")
        w.write(b"content")
        assert n.read_bytes(f"{d}/f") == b"old"
    assert n.read_bytes(f"{d}/f") == b"new content"
    with pytest.raises(RuntimeError), n.open(f"{d}/f", "wb") as w:
        w.write(b"half")
        raise RuntimeError("the writer fails")
    assert n.read_bytes(f"{d}/f") == b"new content"
    with pytest.raises(ValueError, match="mode"):
        n.open(f"{d}/f", "ab")


def test_symlink_and_readlink(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.write_bytes(f"{d}/target", b"t")
    n.symlink(f"{d}/link", "target")
    st = n.stat(f"{d}/link")
    assert (st.kind, st.target) == ("symlink", "target")
    assert n.readlink(f"{d}/link") == "target"
    with pytest.raises(InvalidPathError):
        n.readlink(f"{d}/target")
    with pytest.raises(InvalidPathError):
        n.read_bytes(f"{d}/link")
    with pytest.raises(ExistsError):
        n.symlink(f"{d}/link", "other")


def test_chmod_and_utime(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.write_bytes(f"{d}/f", b"x")
    n.chmod(f"{d}/f", 0o640)
    assert statmod.S_IMODE(n.stat(f"{d}/f").mode) == 0o640
    n.utime(f"{d}/f", 1_000_000_000, 2_000_000_000)
    st = n.stat(f"{d}/f")
    assert (st.atime_ns, st.mtime_ns) == (1_000_000_000, 2_000_000_000)
    n.utime(f"{d}/f", None, 3_000_000_000)
    st = n.stat(f"{d}/f")
    assert (st.atime_ns, st.mtime_ns) == (1_000_000_000, 3_000_000_000)
    with pytest.raises(NotFoundError):
        n.chmod(f"{d}/nope", 0o600)


def test_xattrs(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.write_bytes(f"{d}/f", b"x")
    assert n.xattrs(f"{d}/f") == {}
    n.set_xattrs(f"{d}/f", {"user.a": b"1", "user.b": b"\x00\xff"})
    assert n.xattrs(f"{d}/f") == {"user.a": b"1", "user.b": b"\x00\xff"}
    n.set_xattrs(f"{d}/f", {"user.c": b"3"}, replace_all=True)
    assert n.xattrs(f"{d}/f") == {"user.c": b"3"}
    with pytest.raises(NotFoundError):
        n.xattrs(f"{d}/nope")


def test_du_counts_logical_and_deduplicated_bytes(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    data = os.urandom(200_000)
    n.write_bytes(f"{d}/one", data)
    n.write_bytes(f"{d}/two", data)
    n.mkdir(f"{d}/sub")
    r = n.du(d)
    assert (r.path, r.files, r.dirs, r.logical_bytes) == (d, 2, 2, 400_000)
    assert r.unique_bytes == 200_000 and r.dedup_ratio == 2.0


def test_walk_is_depth_first_parents_first(ns: tuple[Namespace, str]) -> None:
    n, d = ns
    n.mkdir(f"{d}/a/b", parents=True)
    n.write_bytes(f"{d}/a/b/f", b"1")
    n.write_bytes(f"{d}/a/g", b"2")
    n.write_bytes(f"{d}/z", b"3")
    assert [s.path for s in n.walk(d)] == [d, f"{d}/a", f"{d}/a/b", f"{d}/a/b/f",
                                           f"{d}/a/g", f"{d}/z"]


def test_both_back_ends_are_namespaces(ns: tuple[Namespace, str]) -> None:
    assert isinstance(ns[0], Namespace)
