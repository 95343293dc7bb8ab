"""`hutong meta dump` / `meta load`: a store moved LMDB -> PostgreSQL -> LMDB loses nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import zstandard

from gfs.cli import main
from gfs.client import Client
from gfs.errors import FormatError, StateError
from gfs.meta import LmdbEngine
from gfs.meta.dump import dump, load, read_header
from gfs.meta.pg_engine import PgEngine
from gfs.testing.meta_suite import _populate, dump_store
from tests.conftest import make_tree, tree_digest


def _fsck_and_compare(state: Path, tree: Path, out: Path) -> None:
    with Client(state) as fs:
        report = fs.fsck()
        assert report.ok, report.problems
        fs.get("/t", out)
    assert tree_digest(out) == tree_digest(tree)


def test_move_a_store_lmdb_to_postgresql_and_back(tmp_path: Path, pg_url: str) -> None:
    state = tmp_path / "s"
    tree = make_tree(tmp_path / "src", seed=9, files=30, max_size=150_000)
    with Client.init(state, pack_size=1 << 18) as fs:
        fs.put(tree, "/t")
        with fs.engine.write() as txn:
            txn.put_value("xattrs", b"probe", b"\x00\xff")
        sid = fs.store.owner
    dump1 = tmp_path / "one.jsonl.zst"
    assert main(["--state", str(state), "meta", "dump", str(dump1)]) == 0
    assert main(["--state", str(state), "meta", "load", str(dump1), "--meta", pg_url]) == 0
    with Client(state) as fs:
        assert isinstance(fs.engine, PgEngine)
        assert fs.store.owner == sid  # same store: its packs are still its own
        with fs.engine.read() as txn:
            assert txn.get_value("xattrs", b"probe") == b"\x00\xff"
        fs.write_bytes("/t/after-move", b"on postgres now" * 500)
    (tree / "after-move").write_bytes(b"on postgres now" * 500)  # what /t must hold now
    assert list(state.glob("meta.replaced-*"))  # the LMDB metadata is kept aside
    _fsck_and_compare(state, tree, tmp_path / "out1")
    dump2 = tmp_path / "two.jsonl.zst"
    assert main(["--state", str(state), "meta", "dump", str(dump2)]) == 0
    for old in state.glob("meta.replaced-*"):
        old.rename(tmp_path / old.name)
    assert main(["--state", str(state), "meta", "load", str(dump2)]) == 0
    with Client(state) as fs:
        assert isinstance(fs.engine, LmdbEngine)
        assert fs.read_bytes("/t/after-move") == b"on postgres now" * 500
        fs.rm("/t/after-move")
        fs.gc()
    (tree / "after-move").unlink()
    _fsck_and_compare(state, tree, tmp_path / "out2")


def test_dump_load_roundtrip_of_every_table(tmp_path: Path, pg_url: str) -> None:
    src = LmdbEngine(str(tmp_path / "a"), sync=False)
    _populate(src)
    buf = io.BytesIO()
    counts = dump(src, buf)
    assert counts["inode"] == 4 and counts["value"] >= 7
    dst = PgEngine(pg_url)
    try:
        _, recs = read_header(io.BytesIO(buf.getvalue()))
        load(dst, recs)
        with src.read() as r, dst.read() as w:
            want = dump_store(r, (1, 2))
            want["meta"]["suite_fact"] = None  # a dump carries the documented facts only
            assert dump_store(w, (1, 2)) == want
            assert w.get_meta("loading") == b""
        with pytest.raises(StateError, match="not empty"):
            load(dst, read_header(io.BytesIO(buf.getvalue()))[1])
    finally:
        dst.close()
        src.close()


def test_damaged_dumps_are_refused_and_change_nothing(tmp_path: Path) -> None:
    src = LmdbEngine(str(tmp_path / "a"), sync=False)
    _populate(src)
    buf = io.BytesIO()
    dump(src, buf)
    src.close()
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(buf.getvalue())).read()
    lines = raw.splitlines(keepends=True)

    def z(data: bytes) -> io.BytesIO:
        return io.BytesIO(zstandard.ZstdCompressor().compress(data))

    with pytest.raises(FormatError, match="not a Hutong metadata dump"):
        read_header(io.BytesIO(b"garbage"))
    with pytest.raises(FormatError, match="truncated"):
        list(read_header(z(b"".join(lines[:-3])))[1])
    with pytest.raises(FormatError, match="trailer counts"):
        list(read_header(z(b"".join(lines[:3] + lines[4:])))[1])
    with pytest.raises(FormatError, match="version"):
        read_header(z(lines[0].replace(b'"version": 1', b'"version": 7') + b"".join(lines[1:])))
    dst = LmdbEngine(str(tmp_path / "b"), sync=False)
    try:
        bad = [*lines[:-1], b'{"t":"bogus","k":1,"v":"AA=="}\n', lines[-1]]
        with pytest.raises(FormatError):
            load(dst, read_header(z(b"".join(bad)))[1])
        # a record that does not decode is the dump's damage, not the store's: a plain
        # FormatError (the CLI's hint for MetadataDamagedError would send to fsck)
        at = next(i for i, line in enumerate(lines) if json.loads(line).get("t") == "inode")
        rec = json.loads(lines[at])
        inode = [*lines[:at], json.dumps({**rec, "v": "/w=="}).encode() + b"\n",
                 *lines[at + 1:]]
        with pytest.raises(FormatError, match="metadata dump: bad record") as bad_inode:
            load(dst, read_header(z(b"".join(inode)))[1])
        assert type(bad_inode.value) is FormatError
        with dst.read() as r:  # the marker says the load did not finish
            assert r.get_meta("loading") == b"1"
            assert [i.ino for i in r.iter_inodes()] == [1]  # the failed batch left nothing
    finally:
        dst.close()


def test_interrupted_load_is_refused_when_opened(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s") as fs, fs.engine.write() as txn:
        txn.set_meta("loading", b"1")
    with pytest.raises(StateError, match="not loaded completely"):
        Client(tmp_path / "s")


def test_load_into_a_new_state_directory_keeps_the_settings(tmp_path: Path) -> None:
    with Client.init(tmp_path / "s", avg_size=32768, min_size=8192) as fs:
        fs.mkdir("/d")
    assert main(["--state", str(tmp_path / "s"), "meta", "dump", str(tmp_path / "d.zst")]) == 0
    assert main(["--state", str(tmp_path / "n"), "meta", "load", str(tmp_path / "d.zst")]) == 0
    with Client(tmp_path / "n") as fs:
        assert fs.config.avg_size == 32768 and fs.stat("/d").is_dir


def test_folded_group_members_move_to_postgresql_and_read(tmp_path: Path, pg_url: str) -> None:
    """The folded member records (format 4) are dumped and loaded as they are."""
    from tests.test_group_blobs import _files, _put

    state = tmp_path / "s"
    files = _files(150, 40)
    with Client.init(state, pack_size=1 << 20, workers=2, delta=True) as fs:
        _put(fs, tmp_path / "src", files, "/t")
        with fs.engine.read() as txn:
            folded = sorted((r for r in txn.iter_chunks() if r.group), key=lambda r: r.id)
    assert len(folded) >= 100
    out = tmp_path / "d.jsonl.zst"
    assert main(["--state", str(state), "meta", "dump", str(out)]) == 0
    assert main(["--state", str(state), "meta", "load", str(out), "--meta", pg_url]) == 0
    with Client(state) as fs:
        assert isinstance(fs.engine, PgEngine)
        with fs.engine.read() as txn:
            assert sorted((r for r in txn.iter_chunks() if r.group),
                          key=lambda r: r.id) == folded
        assert all(fs.read_bytes(f"/t/{n}") == d for n, d in files.items())
        report = fs.fsck()
        assert report.ok, report.problems
