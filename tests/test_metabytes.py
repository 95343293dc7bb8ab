"""`python -m bench metabytes`: per-database figures of an LMDB environment, including
the bytes its rows would take as zstd blocks (the `z64 B` column)."""

from __future__ import annotations

from pathlib import Path

import lmdb
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
