"""The namespace writes of a put's commit: a directory's inode is written once per
commit batch, not once per entry, and its version still advances on every change."""

from __future__ import annotations

from pathlib import Path

import pytest

from gfs import namespace
from gfs.client import Client


def _tree(root: Path, n: int) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(n):
        (src / f"f{i:03d}").write_bytes(b"x" * i)
        (src / "sub" / f"g{i:03d}").write_bytes(b"y" * i)
    return src


def test_a_put_advances_a_directory_version_once_per_batch(tmp_path: Path) -> None:
    src = _tree(tmp_path, 60)
    with Client.init(tmp_path / "s") as fs:
        fs.mkdir("/d")
        before = fs.stat("/d").version
        fs.put(str(src), "/d/src")
        top, sub = fs.stat("/d/src").version, fs.stat("/d/src/sub").version
        assert fs.stat("/d").version > before
        # one step per batch (plus the directory's own attributes), not one per entry
        assert top <= 4 and sub <= 4, (top, sub)
        assert sorted(s.path for s in fs.ls("/d/src/sub")) == [f"/d/src/sub/g{i:03d}"
                                                              for i in range(60)]
        (src / "sub" / "g000").write_bytes(b"changed")
        fs.put(str(src), "/d/src")
        assert fs.stat("/d/src/sub").version > sub  # a changed entry still advances it
        assert fs.read_bytes("/d/src/sub/g000") == b"changed"


def test_coalesced_versions_advance_once_and_nothing_on_an_error(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s") as fs:
        fs.mkdir("/d")
        v0 = fs.stat("/d").version
        with fs.engine.write() as txn, namespace.versions_coalesced(txn):
            d = namespace.resolve(txn, "/d")
            for i in range(10):
                namespace.write_file_in(txn, d, f"f{i}", [], touch=False)
            with namespace.versions_coalesced(txn):  # nested: the outer one advances
                namespace.entries_changed(txn, d.ino)
            assert namespace.resolve(txn, "/d").version == v0
        assert fs.stat("/d").version == v0 + 1
        with pytest.raises(RuntimeError), fs.engine.write() as txn, \
                namespace.versions_coalesced(txn):
            namespace.write_file_in(txn, namespace.resolve(txn, "/d"), "g", [], touch=False)
            raise RuntimeError("abort")
        assert fs.stat("/d").version == v0 + 1
        assert "/d/g" not in [s.path for s in fs.ls("/d")]
        assert namespace._COALESCED == {}


def test_a_commit_batch_counts_files_not_directory_actions(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d:02d}").mkdir(parents=True)
        (src / f"d{d:02d}" / "f").write_bytes(b"%d" % d)
    with Client.init(tmp_path / "s", commit_files=21) as fs:
        report = fs.put(str(src), "/t")
        # 20 files and 41 directory actions (each directory entered and left): one
        # commit, at the end; counting the actions made three
        assert report.write is not None and report.write.commits == 1
        assert len(fs.ls("/t")) == 20
    with Client.init(tmp_path / "s2", commit_files=7) as fs:
        assert fs.put(str(src), "/t").write.commits == 3  # type: ignore[union-attr]


def test_a_put_counts_subdirectories_in_the_batch_write(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(5):
        (src / f"d{d}" / "inner").mkdir(parents=True)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        with fs.engine.read() as txn:
            top = namespace.resolve(txn, "/t")
            assert top.nlink == 2 + 5 and top.version <= 3
            assert all(namespace.resolve(txn, f"/t/d{d}").nlink == 3 for d in range(5))


def test_a_commit_writes_each_new_chunk_record_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New chunks get their record with the refcount already in it: the refcount pass
    touches only chunks committed before (re-reading a fresh record cost a sixth of a
    small-file commit). Refcounts and fsck come out as before."""
    from gfs.codec import chunk_id
    from gfs.meta import lmdb_engine

    src = tmp_path / "src"
    src.mkdir()
    old, new = b"old content " * 50, b"new content " * 60
    (src / "a").write_bytes(old)
    passed: list[bytes] = []
    real = lmdb_engine._LmdbWrite.add_refcounts

    def spying(self: lmdb_engine._LmdbWrite, deltas: dict[bytes, int]) -> None:
        passed.extend(deltas)
        real(self, deltas)

    monkeypatch.setattr(lmdb_engine._LmdbWrite, "add_refcounts", spying)
    with Client.init(tmp_path / "s") as fs:
        fs.put(str(src), "/t")
        assert chunk_id(old) not in passed  # new in that commit
        for name in ("a", "b", "c"):  # a replaced, b and c share one new chunk
            (src / name).write_bytes(new)
        (src / "d").write_bytes(old)
        passed.clear()
        fs.put(str(src), "/t")
        assert chunk_id(new) not in passed and chunk_id(old) in passed
        with fs.engine.read() as txn:
            assert txn.get_chunk(chunk_id(new)).refcount == 3  # type: ignore[union-attr]
            assert txn.get_chunk(chunk_id(old)).refcount == 1  # type: ignore[union-attr]
        assert fs.fsck().ok


def test_a_fresh_record_whose_refcount_would_go_negative_changes_nothing(
        tmp_path: Path) -> None:
    from collections import Counter

    from gfs.errors import FormatError
    from gfs.meta import ChunkRecord
    from gfs.store import apply_refcounts

    cid = b"\x01" * 16
    with Client.init(tmp_path / "s") as fs:
        with pytest.raises(FormatError, match=f"chunk {cid.hex()}: refcount would fall"), \
                fs.engine.write() as txn:
            apply_refcounts(txn, Counter({cid: -1}), {cid: ChunkRecord(cid, 5, 5, 0, 0, ())})
        with fs.engine.read() as txn:
            assert txn.get_chunk(cid) is None


def test_a_put_writes_a_directory_it_makes_once_a_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory the put makes gets the local one's mode and times when it is made,
    written once at the batch's end with its version step and link count, not again
    when it is left; a directory that
    existed still gets them when left. Modes and times match, read-only ones included."""
    import os
    import time
    from collections import Counter

    from gfs.meta import lmdb_engine

    src = tmp_path / "src"
    for d in ("a", "a/b", "ro"):
        (src / d).mkdir(parents=True)
        (src / d / "f").write_bytes(d.encode())
    (src / "empty").mkdir()
    os.chmod(src / "ro", 0o555)
    os.chmod(src / "a" / "b", 0o710)
    # atimes after mtime and ctime: listing a directory keeps its atime (relatime)
    now = time.time_ns() + 60_000_000_000
    for i, d in enumerate(("a/b", "a", "ro", "empty", "")):
        os.utime(src / d, ns=(now - i, now - 100_000_000_000 * (i + 1)))
    writes: Counter[int] = Counter()
    real = lmdb_engine._LmdbWrite.put_inode

    def counting(self: lmdb_engine._LmdbWrite, node: namespace.Inode) -> None:
        writes[node.ino] += 1
        real(self, node)

    def check(fs: Client, top: str) -> None:
        for d in ("a/b", "a", "ro", "empty", ""):
            st, got = os.stat(src / d), fs.stat(f"{top}/{d}".rstrip("/"))
            assert (got.mode & 0o7777, got.mtime_ns, got.atime_ns) == (
                st.st_mode & 0o7777, st.st_mtime_ns, st.st_atime_ns), d
            assert (got.uid, got.gid) == (st.st_uid, st.st_gid)

    try:
        with Client.init(tmp_path / "s") as fs:
            monkeypatch.setattr(lmdb_engine._LmdbWrite, "put_inode", counting)
            fs.put(str(src), "/t")
            monkeypatch.undo()
            check(fs, "/t")
            for d in ("a", "a/b", "ro", "empty"):  # one batch: one write each
                assert writes[fs.stat(f"/t/{d}").ino] == 1, (d, writes)
            # merging into the existing tree: the local attributes are applied again
            (src / "a" / "new").write_bytes(b"n")
            os.chmod(src / "a", 0o750)
            os.utime(src / "a", ns=(now - 9, now - 800_000_000_000))
            fs.put(str(src), "/t")
            check(fs, "/t")
            assert fs.read_bytes("/t/a/new") == b"n"
            assert fs.fsck().ok
    finally:
        os.chmod(src / "ro", 0o755)


def test_a_session_parses_each_new_blob_header_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouped small chunks: one header parse a blob when it goes into the pack (the
    group's ids were parsed a second time; folded members have no blob); the files read
    back and fsck is clean."""
    import os

    from gfs import store as store_mod

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}").write_bytes(os.urandom(300 + i))
    parsed: list[bytes] = []
    real = store_mod.parse_blob_header

    def counting(buf: bytes) -> object:
        parsed.append(bytes(buf[16:32]))
        return real(buf)

    monkeypatch.setattr(store_mod, "parse_blob_header", counting)
    with Client.init(tmp_path / "s", delta=True) as fs:
        report = fs.put(str(src), "/t")
        monkeypatch.undo()
        assert report.write is not None and report.write.groups >= 1
        # folded group members have no blob of their own: only the group's is parsed
        blobs = report.write.new_chunks - report.write.group_members
        assert len(parsed) == len(set(parsed)) == blobs
        for i in range(40):
            assert fs.read_bytes(f"/t/f{i}") == (src / f"f{i}").read_bytes()
        assert fs.fsck().ok


def test_a_directory_made_in_a_coalesced_block_is_written_once_at_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the block the new directory is found (get, child, nested mkdir, attribute
    changes); at its end it is written once with its link count and version; on an
    exception nothing of it is written."""
    from collections import Counter

    from gfs.meta import lmdb_engine

    writes: Counter[int] = Counter()
    real = lmdb_engine._LmdbWrite.put_inode

    def counting(self: lmdb_engine._LmdbWrite, node: namespace.Inode) -> None:
        writes[node.ino] += 1
        real(self, node)

    with Client.init(tmp_path / "s") as fs:
        fs.mkdir("/d")
        monkeypatch.setattr(lmdb_engine._LmdbWrite, "put_inode", counting)
        with fs.engine.write() as txn, namespace.versions_coalesced(txn):
            d = namespace.resolve(txn, "/d")
            a = namespace.mkdir_in(txn, d, "a", 0o750, touch=False)
            assert txn.get_inode(a.ino) is None  # deferred
            assert namespace.get(txn, a.ino) == a and namespace.child(txn, d, "a") == a
            b = namespace.mkdir_in(txn, a, "b", touch=False)
            namespace.write_file_in(txn, a, "f", [], touch=False)
            namespace.set_attrs_of(txn, namespace.get(txn, a.ino), mtime_ns=12345)
            assert namespace.mkdir_in(txn, d, "a", exist_ok=True, touch=False).ino == a.ino
        monkeypatch.undo()
        assert writes[a.ino] == 1 and writes[b.ino] == 1
        with fs.engine.read() as rtxn:
            got = namespace.resolve(rtxn, "/d/a")
            assert (got.mode, got.mtime_ns, got.nlink, got.version) == (0o750, 12345, 3, 1)
            assert namespace.resolve(rtxn, "/d/a/b").nlink == 2
            assert namespace.resolve(rtxn, "/d").nlink == 3
        assert sorted(s.name for s in fs.ls("/d/a")) == ["b", "f"]
        with pytest.raises(RuntimeError), fs.engine.write() as txn, \
                namespace.versions_coalesced(txn):
            namespace.mkdir_in(txn, namespace.resolve(txn, "/d"), "gone", touch=False)
            raise RuntimeError("abort")
        assert not fs.exists("/d/gone")
        assert namespace._DEFERRED == {} and namespace._COALESCED == {}
        assert fs.fsck().ok


def test_the_entries_a_commit_makes_share_its_time(tmp_path: Path) -> None:
    """A put's entries made in one commit transaction get one time (their ctime, and the
    atime of files): they become visible together, and their packed inode records
    repeat it instead of each carrying the nanoseconds of its own making."""
    src = tmp_path / "src"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(4):
            (src / f"d{d}" / f"f{i}").write_bytes(b"%d %d" % (d, i))
        (src / f"d{d}" / "link").symlink_to("f0")
    entries = [f"/t/d{d}" for d in range(6)] + [
        f"/t/d{d}/{n}" for d in range(6) for n in ("f0", "f1", "f2", "f3", "link")]
    with Client.init(tmp_path / "s") as fs:
        before = namespace.now_ns()
        fs.put(str(src), "/t")
        after = namespace.now_ns()
        times = {fs.stat(p).ctime_ns for p in entries}
        assert len(times) == 1 and before <= times.pop() <= after
        files = [fs.stat(p) for p in entries if "/f" in p]
        assert all(n.atime_ns == n.ctime_ns for n in files)
    with Client.init(tmp_path / "s2", commit_files=7) as fs:  # several commits
        report = fs.put(str(src), "/t")
        assert report.write is not None and report.write.commits > 2
        times = sorted({fs.stat(p).ctime_ns for p in entries})
        assert len(times) == report.write.commits, times
