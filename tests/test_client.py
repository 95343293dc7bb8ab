"""End-to-end tests of the gfs client on a real embedded store (LMDB + local pool)."""

from __future__ import annotations

import os
import random
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
    StateError,
)
from tests.conftest import make_tree, tree_digest


def test_open_uninitialised_state_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="hutong init"):
        Client(tmp_path / "nothing")


def test_init_twice_refuses(tmp_path: Path) -> None:
    Client.init(tmp_path / "s").close()
    with pytest.raises(ExistsError):
        Client.init(tmp_path / "s")


def test_put_get_tree_roundtrip(fs: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=1)
    r = fs.put(src, "/data")
    assert r.files > 0 and r.symlinks == 2
    out = tmp_path / "out"
    fs.get("/data", out)
    assert tree_digest(out) == tree_digest(src)
    # file times come back
    for f in src.rglob("file*.bin"):
        back = out / f.relative_to(src)
        assert back.stat().st_mtime_ns == f.stat().st_mtime_ns


def test_put_inside_a_directory_with_trailing_slash(fs: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "tree", seed=2, files=5)
    fs.mkdir("/in")
    fs.put(src, "/in/")
    assert {s.name for s in fs.ls("/in")} == {"tree"}
    out = tmp_path / "out"
    out.mkdir()
    fs.get("/in/tree", out)
    assert tree_digest(out / "tree") == tree_digest(src)


def test_dedup_across_versions(fs: Client, tmp_path: Path) -> None:
    rnd = random.Random(5)
    base = rnd.randbytes(3_000_000)
    v1 = tmp_path / "v1"
    v2 = tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "big").write_bytes(base)
    (v2 / "big").write_bytes(base[:1_000_000] + b"inserted" + base[1_000_000:])
    fs.put(v1, "/v1")
    fs.put(v2, "/v2")
    du = fs.du("/")
    assert du.logical_bytes == 2 * len(base) + 8
    assert du.unique_bytes < 1.2 * len(base)  # the edit re-stores only nearby chunks
    assert du.dedup_ratio > 1.6
    assert fs.read_bytes("/v2/big") == base[:1_000_000] + b"inserted" + base[1_000_000:]


def test_compression_figures(fs: Client) -> None:
    fs.write_bytes("/text", b"hello compressible world\n" * 100_000)
    du = fs.du("/text")
    assert du.compression_ratio > 10
    assert du.files == 1


def test_ranged_reads_and_seek(fs: Client) -> None:
    data = random.Random(3).randbytes(1_500_000)
    fs.write_bytes("/f", data)
    for start, end in [(0, 10), (65_000, 70_000), (1_499_990, 1_600_000), (5, 5), (0, None)]:
        assert fs.read_bytes("/f", start, end) == data[start:end]
    with fs.open("/f") as f:
        f.seek(123_456)
        assert f.read(1000) == data[123_456:124_456]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        assert f.read() == b""


def test_streaming_writer_matches_whole_buffer(fs: Client) -> None:
    data = random.Random(4).randbytes(20_000_000)
    with fs.open("/streamed", "wb") as f:
        for i in range(0, len(data), 777_777):
            f.write(data[i:i + 777_777])
    fs.write_bytes("/whole", data)
    with fs.engine.read() as txn:
        a = txn.get_manifest(fs.stat("/streamed").ino)
        b = txn.get_manifest(fs.stat("/whole").ino)
    assert a is not None and b is not None and a.chunks == b.chunks
    assert fs.read_bytes("/streamed") == data


def test_writer_invisible_until_close_and_abort(fs: Client) -> None:
    fs.write_bytes("/f", b"old")
    w = fs.open("/f", "wb")
    w.write(b"new content")
    assert fs.read_bytes("/f") == b"old"
    w.close()
    assert fs.read_bytes("/f") == b"new content"
    with pytest.raises(RuntimeError), fs.open("/f", "wb") as w2:
        w2.write(b"never")
        raise RuntimeError("fail mid-write")
    assert fs.read_bytes("/f") == b"new content"


def test_reader_keeps_version_open_at(fs: Client) -> None:
    fs.write_bytes("/f", b"A" * 100_000)
    with fs.open("/f") as r:
        fs.write_bytes("/f", b"B" * 100_000)
        assert r.read() == b"A" * 100_000
    assert fs.read_bytes("/f") == b"B" * 100_000


def test_namespace_errors_change_nothing(fs: Client, tmp_path: Path) -> None:
    fs.mkdir("/d")
    fs.write_bytes("/d/f", b"x")
    before = [s.path for s in fs.walk("/")]
    with pytest.raises(NotFoundError):
        fs.stat("/missing")
    with pytest.raises(NotADirError):
        fs.stat("/d/f/below")
    with pytest.raises(IsADirError):
        fs.read_bytes("/d")
    with pytest.raises(IsADirError):
        fs.write_bytes("/d", b"no")
    with pytest.raises(ExistsError):
        fs.mkdir("/d")
    with pytest.raises(NotEmptyError):
        fs.rm("/d")
    with pytest.raises(NotFoundError):
        fs.mkdir("/x/y")
    for bad in ["relative", "/a/../b", "/./a", "/a\0b", "/" + "n" * 256]:
        with pytest.raises(InvalidPathError):
            fs.mkdir(bad)
    with pytest.raises(InvalidPathError):
        fs.mv("/d", "/d/inside")
    assert [s.path for s in fs.walk("/")] == before


def test_put_conflicts_refused_before_writing(fs: Client, tmp_path: Path) -> None:
    fs.mkdir("/dst/src/sub", parents=True)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 1000)
    (src / "sub").write_bytes(b"file where a directory is")
    with pytest.raises(IsADirError):
        fs.put(src, "/dst/")  # goes to /dst/src, whose "sub" is a directory
    assert fs.du("/").files == 0
    assert not fs.exists("/dst/src/a")


def test_put_onto_file_with_directory_refused(fs: Client, tmp_path: Path) -> None:
    fs.write_bytes("/target", b"i am a file")
    src = make_tree(tmp_path / "src", seed=9, files=3)
    with pytest.raises(NotADirError):
        fs.put(src, "/target/below")
    assert fs.read_bytes("/target") == b"i am a file"
    assert fs.du("/").files == 1


def test_rm_mv_and_rename_rules(fs: Client) -> None:
    fs.write_bytes("/a", b"a")
    fs.write_bytes("/b", b"b")
    fs.mv("/a", "/b")  # replaces a file
    assert fs.read_bytes("/b") == b"a"
    assert not fs.exists("/a")
    fs.mkdir("/d1")
    fs.mkdir("/d2")
    fs.mv("/b", "/d1")  # into an existing dir
    assert fs.read_bytes("/d1/b") == b"a"
    fs.mkdir("/empty")
    fs.mv("/d2", "/empty2")
    fs.symlink("/l", "/d1/b")
    assert fs.readlink("/l") == "/d1/b"
    fs.rm("/d1", recursive=True)
    assert not fs.exists("/d1")
    assert fs.du("/").files == 0


def test_chmod_chown_utime(fs: Client) -> None:
    fs.write_bytes("/f", b"x")
    fs.chmod("/f", 0o600)
    fs.chown("/f", 1234, 5678)
    fs.utime("/f", 1, 2)
    st = fs.stat("/f")
    assert st.mode & 0o7777 == 0o600 and (st.uid, st.gid) == (1234, 5678)
    assert (st.atime_ns, st.mtime_ns) == (1, 2)


def test_gc_reclaims_deleted_and_keeps_referenced(fs: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=7, files=40)
    fs.put(src, "/keep")
    fs.put(src, "/drop")  # all chunks shared with /keep
    fs.write_bytes("/solo", random.Random(1).randbytes(2_000_000))
    fs.rm("/drop", recursive=True)
    fs.rm("/solo")
    r = fs.gc()
    assert r.chunks_removed > 0
    report = fs.fsck()
    assert report.ok, report.problems
    assert report.unreferenced_chunks == 0 and report.orphan_packs == 0
    out = tmp_path / "out"
    fs.get("/keep", out)
    assert tree_digest(out) == tree_digest(src)


def test_gc_repacks_sparse_packs(fs: Client) -> None:
    rnd = random.Random(2)
    for i in range(10):
        fs.write_bytes(f"/f{i}", rnd.randbytes(150_000))
    keep = {i: fs.read_bytes(f"/f{i}") for i in (0, 9)}
    for i in range(1, 9):
        fs.rm(f"/f{i}")
    r = fs.gc()
    assert r.packs_deleted + r.packs_repacked > 0
    for i, data in keep.items():
        assert fs.read_bytes(f"/f{i}") == data
    assert fs.fsck().ok


def test_du_counts(fs: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", seed=3, files=20)
    fs.put(src, "/t")
    du = fs.du("/t")
    local_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()
                      and not p.is_symlink())
    assert du.logical_bytes == local_bytes
    assert du.symlinks == 2
    assert du.stored_bytes > 0


def test_two_clients_on_one_store_in_one_process(fs: Client) -> None:
    other = Client(fs.state)
    try:
        other.write_bytes("/from-other", b"hello")
        assert fs.read_bytes("/from-other") == b"hello"
    finally:
        other.close()
    fs.write_bytes("/still-open", b"yes")  # closing one client left the other working
    assert fs.read_bytes("/still-open") == b"yes"


def test_put_single_file_makes_parents(fs: Client, tmp_path: Path) -> None:
    f = tmp_path / "one.txt"
    f.write_bytes(b"one")
    fs.put(f, "/deep/down/one.txt")
    assert fs.read_bytes("/deep/down/one.txt") == b"one"
    fs.put(f, "/deep/")  # inside an existing directory
    assert fs.read_bytes("/deep/one.txt") == b"one"
    with pytest.raises(IsADirError, match="end the destination with '/'"):
        fs.put(f, "/deep")  # a file cannot replace a directory


def test_put_again_resumes_and_never_nests(fs: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "big", seed=4, files=30)
    first = fs.put(src, "/big")
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file()
                   and not p.is_symlink())
    fs.rm(f"/big/{files[3]}")  # as if the first put had been interrupted before it
    again = fs.put(src, "/big")  # the same command again
    assert not fs.exists("/big/big")
    assert again.files == 1 and again.unchanged == first.files - 1
    out = tmp_path / "out"
    fs.get("/big", out)
    assert tree_digest(out) == tree_digest(src)
    (src / files[0]).write_bytes(b"changed")  # a changed file is written again
    assert fs.put(src, "/big").files == 1
    assert fs.read_bytes(f"/big/{files[0]}") == b"changed"
    assert fs.fsck().ok


@pytest.mark.parametrize("kept", [None, 5])  # 5: the walk checks on past what it hands over
def test_put_reports_the_tree_size_as_its_walk_finds_it(
        fs: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int | None) -> None:
    """`found` sums to the size of the tree's regular files, in several reports from
    the walk's thread; `progress` sums to the same, counting the files a resumed put
    keeps; symlinks, directories and empty files add nothing."""
    import threading

    from gfs import put_walk

    monkeypatch.setattr(put_walk, "FOUND_EVERY", 3)  # several reports on a small tree
    if kept is not None:
        monkeypatch.setattr(put_walk, "PUT_WALK_KEPT", kept)
    src = make_tree(tmp_path / "src", seed=11, files=40)
    (src / "zz-empty").write_bytes(b"")
    (src / "zz-link").symlink_to("zz-empty")
    size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    found: list[tuple[int, str]] = []
    done: list[int] = []
    report = fs.put(src, "/t", progress=done.append,
                    found=lambda n: found.append((n, threading.current_thread().name)))
    assert sum(n for n, _ in found) == size == sum(done) == report.bytes
    assert len(found) > 1 and {name for _, name in found} == {"hutong-walk"}
    rel = sorted(p.relative_to(src) for p in src.rglob("*")
                 if p.is_file() and not p.is_symlink())
    fs.rm(f"/t/{rel[0]}")
    found.clear()
    done.clear()
    again = fs.put(src, "/t", progress=done.append,
                   found=lambda n: found.append((n, threading.current_thread().name)))
    assert again.files == 1 and again.unchanged == len(rel) - 1
    assert sum(n for n, _ in found) == size == sum(done)


def test_pinned_chunks_survive_gc_until_the_pin_expires(fs: Client) -> None:
    from gfs.store import pin_chunks

    data = random.Random(8).randbytes(300_000)
    fs.write_bytes("/tmp-file", data)
    with fs.engine.read() as txn:
        m = txn.get_manifest(fs.stat("/tmp-file").ino)
    assert m is not None
    ids = [r.id for r in m.chunks]
    with fs.engine.write() as txn:
        pin_chunks(txn, ids, seconds=3600)
    fs.rm("/tmp-file")  # refcounts drop to 0: only the pin keeps the chunks
    report = fs.fsck()
    assert report.ok and report.pinned_chunks == len(set(ids)) and report.unreferenced_chunks == 0
    assert fs.gc().chunks_removed == 0
    with fs.engine.read() as txn:
        assert all(txn.has_chunk(c) for c in ids)
    with fs.engine.write() as txn:
        pin_chunks(txn, ids[:1], seconds=-1)  # an older pin does not shorten a newer one
        for c in ids:
            txn.put_value("pins", c, (0).to_bytes(8, "big"))  # expire them
    assert fs.gc().chunks_removed == len(set(ids))
    with fs.engine.read() as txn:
        assert not any(txn.has_chunk(c) for c in ids)
        assert not list(txn.iter_values("pins"))  # expired pins are cleared
    assert fs.fsck().ok


def test_removing_a_file_drops_its_inode_values(fs: Client) -> None:
    fs.write_bytes("/a", b"a")
    fs.write_bytes("/b", b"b")
    ino_a, ino_b = fs.stat("/a").ino, fs.stat("/b").ino
    with fs.engine.write() as txn:
        for ino in (ino_a, ino_b):
            txn.put_value("xattrs", ino.to_bytes(8, "big") + b"user.tag", b"x")
    fs.rm("/a")
    fs.write_bytes("/c", b"c")
    fs.mv("/c", "/b")  # replaces /b
    with fs.engine.read() as txn:
        assert list(txn.iter_values("xattrs")) == []
