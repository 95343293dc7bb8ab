"""The put path's per-file costs: the local tree is listed once (real LMDB, real pools)."""

from __future__ import annotations

import io
import os
import random
import threading
from pathlib import Path

import pytest

from gfs import client as client_mod
from gfs import put_walk as walk_mod
from gfs.client import Client
from gfs.meta import blocks
from gfs.meta import encoding as enc


def _tree(root: Path, dirs: int, files: int) -> dict[str, bytes]:
    out = {}
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(files):
            data = f"{d}/{f} ".encode() * (f + 1)
            (sub / f"f{f}.txt").write_bytes(data)
            out[f"d{d}/f{f}.txt"] = data
    return out


#: kept -> directories listed: the walk lists the top and d0..d3 once; past `kept`
#: entries the put walks on from the last step handed over, listing again only the
#: directories on the way to it and after it (15: d1 left -> top, d2, d3; 5: d0/f2 ->
#: top, d0, d1, d2, d3); a tree of exactly `kept` entries is not walked again
LISTED = {50_000: 5, 1 + 4 + 4 * 6: 5, 15: 5 + 3, 5: 5 + 5}


@pytest.mark.parametrize("kept", sorted(LISTED))
def test_put_lists_each_local_directory_once(fs: Client, tmp_path: Path, kept: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The put's walk hands its entries to the put; past PUT_WALK_KEPT entries (the
    top, 4 directories and 24 files here: the walk's steps, a directory entered and
    left, were counted and a tree of exactly that many was walked twice) the put walks
    on from where the hand-over stopped (bounded memory) and stores the same tree."""
    src = tmp_path / "src"
    want = _tree(src, 4, 6)
    assert len(want) == 4 * 6
    listed: list[str] = []
    real = walk_mod.list_local

    def counting(entry: walk_mod.LocalEntry, *rest: walk_mod.Listings | None,
                 ) -> list[walk_mod.LocalEntry]:
        listed.append(entry.path)
        return real(entry, *rest)

    monkeypatch.setattr(walk_mod, "list_local", counting)
    monkeypatch.setattr(walk_mod, "PUT_WALK_KEPT", kept)
    report = fs.put(src, "/dst")
    assert report.files == len(want) and report.dirs == 1 + 4
    assert len(listed) == LISTED[kept]
    for rel, data in want.items():
        assert fs.read_bytes(f"/dst/{rel}") == data
        assert fs.stat(f"/dst/{rel}").mtime_ns == os.stat(src / rel).st_mtime_ns


@pytest.mark.parametrize("batch", [8000, 5])
def test_a_commit_batch_reads_each_parent_directory_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """Files of one directory in one commit read their parent's inode once (not once
    a file); across batches each batch reads it again, and the tree, link counts and
    fsck come out as before."""
    src = tmp_path / "src"
    want = _tree(src, 3, 10)
    (src / "d1" / "sub").mkdir()
    (src / "d1" / "sub" / "x").write_bytes(b"x")
    want["d1/sub/x"] = b"x"
    with Client.init(tmp_path / "s", commit_files=batch) as fs:
        fs.mkdir("/dst")
        reads: list[int] = []
        real = client_mod.namespace.get

        def counting(txn: object, ino: int, *rest: str) -> object:
            reads.append(ino)
            return real(txn, ino, *rest)  # type: ignore[arg-type]

        monkeypatch.setattr(client_mod.namespace, "get", counting)
        report = fs.put(src, "/dst/")
        monkeypatch.undo()
        assert report.files == len(want) and report.write is not None
        d1 = fs.stat("/dst/src/d1").ino
        commits = report.write.commits
        # d1 is the parent of 10 files and 1 directory, and gets its attributes once
        assert reads.count(d1) <= (2 if batch > 100 else commits + 1) < 12
        for rel, data in want.items():
            assert fs.read_bytes(f"/dst/src/{rel}") == data
        with fs.engine.read() as txn:  # link counts: subdirectories + 2
            assert txn.get_inode(d1).nlink == 3
            assert txn.get_inode(fs.stat("/dst/src").ino).nlink == 5
        assert fs.fsck().ok


def test_files_in_a_directory_made_in_the_same_batch_do_not_read_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inode mkdir made is the parent its files are linked into (no read of the
    directory back from the transaction); a directory made in an earlier batch is read
    once a batch. The tree comes out the same and fsck is clean."""
    src = tmp_path / "src"
    want = _tree(src, 4, 8)
    reads: list[int] = []
    real = client_mod.namespace.get

    def counting(txn: object, ino: int, *rest: str) -> object:
        reads.append(ino)
        return real(txn, ino, *rest)  # type: ignore[arg-type]

    for batch in (8000, 5):
        with Client.init(tmp_path / f"s{batch}", commit_files=batch) as fs:
            reads.clear()
            monkeypatch.setattr(client_mod.namespace, "get", counting)
            report = fs.put(src, "/t")
            monkeypatch.undo()
            made = [fs.stat(f"/t/d{d}").ino for d in range(4)]
            if batch > 100:
                assert not set(reads) & set(made), reads
            else:
                assert report.write is not None and report.write.commits > 4
                assert all(reads.count(ino) <= 3 for ino in made), reads
            for rel, data in want.items():
                assert fs.read_bytes(f"/t/{rel}") == data
            assert fs.fsck().ok


def test_a_fault_mid_commit_loses_nothing_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put whose commit fails part way through its rows (the 23rd file's manifest,
    after its entry and inode, in commits of 5 files: new directories, their entries
    answered from the transaction, a directory's files written together) keeps
    every earlier commit whole and nothing of the failed one; fsck is clean, and a
    second put of a changed tree (new and replaced files, into the directories
    made before the fault) completes it."""
    src = tmp_path / "src"
    want = _tree(src, 5, 8)
    calls = [0]
    real = blocks.BlockTxn.put

    def failing(self: blocks.BlockTxn, key: bytes, value: bytes, db: object) -> None:
        if len(key) == 8 and value[:1] == enc.MANIFEST_COMPACT:  # a file's manifest
            calls[0] += 1
            if calls[0] == 23:
                raise OSError("injected fault in the commit")
        real(self, key, value, db)

    with Client.init(tmp_path / "s", commit_files=5) as fs:
        monkeypatch.setattr(blocks.BlockTxn, "put", failing)
        with pytest.raises(OSError, match="injected"):
            fs.put(src, "/t")
        monkeypatch.undo()
        kept = {rel for rel in want if fs.exists(f"/t/{rel}")}
        assert len(kept) == 20  # four commits of 5 files; the fifth lost whole
        assert all(fs.read_bytes(f"/t/{rel}") == want[rel] for rel in kept)
        assert fs.fsck().ok
        (src / "d0" / "f0.txt").write_bytes(b"changed")
        (src / "d4" / "new.txt").write_bytes(b"new")
        want.update({"d0/f0.txt": b"changed", "d4/new.txt": b"new"})
        fs.put(src, "/t")
        for rel, data in want.items():
            assert fs.read_bytes(f"/t/{rel}") == data
        assert sorted(s.path for s in fs.ls("/t/d4")) == sorted(
            f"/t/d4/{n}" for n in ["new.txt", *(f"f{f}.txt" for f in range(8))])
        assert fs.fsck().ok


def _counting_lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the dedup lookups (`present_chunks`) the calling thread makes."""
    from gfs.meta.lmdb_engine import _LmdbRead

    sizes: list[int] = []
    real = _LmdbRead.present_chunks

    def counting(self: _LmdbRead, cids: object) -> set[bytes]:
        found = real(self, cids)  # type: ignore[arg-type]
        if threading.current_thread() is threading.main_thread():
            sizes.append(len(set(cids)))  # type: ignore[call-overload]
        return found

    monkeypatch.setattr(_LmdbRead, "present_chunks", counting)
    return sizes


@pytest.mark.parametrize("batch", [10_000, 7])
def test_a_read_batch_looks_its_chunks_up_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """The put looks up a read batch's chunks in one `present_chunks` (again after each
    commit renews the snapshot), not once a file; dedup comes out as file by file:
    chunks repeated across files and commits are stored once, a second put of the
    tree stores nothing new."""
    src = tmp_path / "src"
    want = _tree(src, 4, 30)
    for k in range(20):  # the same content again, in later batches and commits
        (src / "d3" / f"copy{k}").write_bytes(want[f"d0/f{k}.txt"])
        want[f"d3/copy{k}"] = want[f"d0/f{k}.txt"]
    distinct = len(set(want.values()))
    with Client.init(tmp_path / "s", commit_files=batch) as fs:
        fs.mkdir("/dst")
        sizes = _counting_lookups(monkeypatch)
        first = fs.put(src, "/dst/a")
        again = fs.put(src, "/dst/b")
        monkeypatch.undo()
        assert first.write is not None and again.write is not None
        assert first.write.new_chunks == distinct and again.write.new_chunks == 0
        # one lookup of the batch's 120 distinct chunks per snapshot, none per file
        assert len(sizes) <= 2 * (first.write.commits + again.write.commits) < len(want)
        assert max(sizes) == distinct
        for rel, data in want.items():
            assert fs.read_bytes(f"/dst/a/{rel}") == data == fs.read_bytes(f"/dst/b/{rel}")
        assert fs.fsck().ok


@pytest.mark.parametrize("use_delta", [False, True])
def test_a_streamed_file_is_looked_up_a_block_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_delta: bool) -> None:
    """A file over WHOLE_READ_LIMIT is read, cut and hashed a block at a time: its chunks
    are the whole file's, each block's are looked up together, and the read batch it
    sits in is announced again after it (the files after it are not looked up one by
    one). A second file equal to it but for a few edits stores only what changed (as
    deltas, with delta chunks on)."""
    from gfs import chunking
    from gfs import store as store_mod
    from gfs.codec import chunk_id

    monkeypatch.setattr(store_mod, "WHOLE_READ_LIMIT", 200_000)
    monkeypatch.setattr(store_mod, "STREAM_BLOCK_BYTES", 300_000)
    src = tmp_path / "src"
    want = _tree(src, 4, 30)
    rnd = random.Random(5)
    parts = [rnd.randbytes(50_000) for _ in range(12)]
    big = b"".join(parts[k % 12] if k % 5 else rnd.randbytes(70_000) for k in range(40))
    edited = bytearray(big)
    for at in (100_000, 900_000, 1_700_000):
        edited[at:at + 40] = rnd.randbytes(40)
    for rel, data in (("d0/f15big", big), ("d1/f15big", bytes(edited))):
        (src / rel).write_bytes(data)
        want[rel] = data
    params = chunking.ChunkParams()
    ids = {chunk_id(memoryview(data)[a:b]) for data in want.values()
           for a, b in chunking.spans(chunking.cut_points(data, params))}
    blocks = sum(1 for data in (big, edited)
                 for _ in chunking.iter_stream_blocks(io.BytesIO(data), params, 300_000))
    with Client.init(tmp_path / "s", delta=use_delta) as fs:
        fs.mkdir("/dst")
        sizes = _counting_lookups(monkeypatch)
        report = fs.put(src, "/dst/a")
        monkeypatch.undo()
        assert report.write is not None
        # (a group of small chunks counts as a chunk besides its members)
        assert report.write.new_chunks - report.write.groups == len(ids)
        assert (report.write.delta_chunks > 0) is use_delta
        # a lookup a block and one of each read batch (again after each streamed file)
        # per snapshot: not one for each of the 50 files after the first streamed one
        assert len(sizes) <= 2 * report.write.commits + blocks + 2 < 50
        for rel, data in want.items():
            assert fs.read_bytes(f"/dst/a/{rel}") == data
        assert fs.fsck().ok


def test_small_files_the_store_holds_are_counted_and_not_stored_again(fs: Client,
                                                                     tmp_path: Path) -> None:
    """A put of one-chunk files the store already has (another snapshot of the same tree,
    and a copy inside the tree made in the same put) stores nothing new, counts each as
    a duplicate, and reads back whole; a changed file among them is stored."""
    src = tmp_path / "src"
    files = _tree(src, 3, 5)
    (src / "twin.txt").write_bytes(files["d1/f4.txt"])  # the same chunk twice in one put
    first = fs.put(src, "/a").write
    assert first is not None and first.files == 16 and first.dedup_chunks == 1
    (src / "d2" / "f0.txt").write_bytes(b"changed in the second snapshot")
    second = fs.put(src, "/b").write
    assert second is not None and second.files == 16
    assert second.new_chunks == 1 and second.dedup_chunks == 15
    assert second.new_raw_bytes == len(b"changed in the second snapshot")
    for rel, data in files.items():
        want = b"changed in the second snapshot" if rel == "d2/f0.txt" else data
        assert fs.read_bytes(f"/b/{rel}") == want and fs.read_bytes(f"/a/{rel}") == data
    assert fs.read_bytes("/b/twin.txt") == files["d1/f4.txt"]
    assert fs.fsck().ok
