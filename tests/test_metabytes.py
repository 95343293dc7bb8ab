"""`python -m bench metabytes`: per-database figures of an LMDB environment, including
the bytes its rows would take as zstd blocks (the `z64 B` column)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lmdb
import pytest
import zstandard

from bench import metabytes


def test_rows_are_counted_and_compressed_in_blocks_of_64(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    env = lmdb.open(str(meta), max_dbs=4, map_size=1 << 24)
    db = env.open_db(b"inodes")
    rows = [(i.to_bytes(8, "big"), b"file-%06d" % i + bytes(20)) for i in range(200)]
    with env.begin(write=True, db=db) as w:
        for k, v in rows:
            w.put(k, v)
    env.close()
    f = metabytes.measure(meta)
    d = f.db("inodes")
    assert d is not None and d.entries == 200
    assert (d.key_bytes, d.value_bytes) == (8 * 200, sum(len(v) for _, v in rows))
    comp = zstandard.ZstdCompressor(level=3)
    want = sum(len(comp.compress(b"".join(k + v for k, v in rows[i:i + 64])))
               for i in range(0, 200, 64))
    assert d.block_bytes == want < d.key_bytes + d.value_bytes
    assert f.block_bytes == want


def test_a_packed_store_counts_the_rows_of_its_blocks(tmp_path: Path) -> None:
    from gfs.meta import LmdbEngine, compact
    from gfs.meta.records import ChunkRef, Manifest

    meta = tmp_path / "meta"
    eng = LmdbEngine(str(meta), sync=False, compact_at_close=False)
    with eng.write() as w:
        for ino in range(2, 502):
            w.put_manifest(ino, Manifest(1, (ChunkRef(ino.to_bytes(16, "big"), 10),)))
    eng.close()
    compact.compact_now(str(meta))
    f = metabytes.measure(meta)
    packed, hot = f.db("manifests.z"), f.db("manifests")
    assert packed is not None and hot is not None
    assert (packed.entries, hot.entries, metabytes.files_of(f)) == (500, 0, 500)


def test_a_store_with_block_dictionaries_counts_the_rows_of_its_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks compressed with their table's dictionary (format 6) are counted from their
    heads: decoding them without the dictionary failed."""
    from gfs.meta import LmdbEngine, block_dicts, compact
    from gfs.meta.records import ChunkRef, Manifest

    monkeypatch.setattr(block_dicts, "TRAIN_MIN_RAW", 8 << 10)
    monkeypatch.setattr(block_dicts, "EVAL_MIN_RAW", 4 << 10)
    meta = tmp_path / "meta"
    for rnd in range(2):  # 150 chunks named by every 150 files: a dictionary pays
        eng = LmdbEngine(str(meta), sync=False, compact_at_close=False)
        with eng.write() as w:
            for i in range(600):
                cid = hashlib.sha256(b"%d" % (i % 150)).digest()[:16]
                w.put_manifest(2 + rnd * 600 + i, Manifest(1, (ChunkRef(cid, 10),)))
        eng.close()
        compact.compact_now(str(meta))
    env = lmdb.open(str(meta), readonly=True, lock=False, max_dbs=64)
    with env.begin() as txn:
        assert txn.get(block_dicts.meta_key("manifests"), db=env.open_db(b"meta", txn=txn))
    env.close()
    f = metabytes.measure(meta)
    packed = f.db("manifests.z")
    assert packed is not None and packed.entries == 1200
