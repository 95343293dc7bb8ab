"""Writes that record reads (`write_tick`: heat flushes) go through to the packed
blocks of a packed store, new keys too (blocks are made when there are none yet), so
reads of an unchanged store do not grow its metadata file by hot heat pages and the
pages their rewrites free; the values read back are the same as with hot rows."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs.client import Client
from gfs.meta import LmdbEngine
from gfs.meta import compact as compaction
from gfs.meta import encoding as enc
from gfs.meta.lmdb_engine import TICK_ROWS_SMALL
from gfs.tiering.heat import FLUSH_EVERY, HeatTracker, iter_chunk_heat

_KEYS = st.binary(min_size=1, max_size=24)
_ROWS = st.dictionaries(_KEYS, st.binary(max_size=60), max_size=150)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packed=_ROWS, hot=_ROWS, batch=_ROWS)
def test_tick_writes_through_blocks_read_as_a_plain_table(
        tmp_path_factory: pytest.TempPathFactory, packed: dict[bytes, bytes],
        hot: dict[bytes, bytes], batch: dict[bytes, bytes]) -> None:
    path = str(tmp_path_factory.mktemp("meta"))
    eng = LmdbEngine(path)
    try:
        with eng.write() as w:
            for k, v in hot.items():
                w.put_value("heat", k, v)  # hot rows, shadowing packed ones
    finally:
        eng.close()
    compaction.compact_now(path)  # packed: format 5, with `hot` in blocks
    eng = LmdbEngine(path)
    try:
        with eng.write_tick() as w:  # into the blocks: the first blocks of `packed`
            for k, v in packed.items():
                w.put_value("heat", k, v)
        with eng.write() as w:
            for k, v in hot.items():
                w.put_value("heat", k, v + b"!")  # hot again after the compaction
        with eng.write_tick() as w:
            for k, v in list(batch.items())[::-1]:  # any order
                w.put_value("heat", k, v)
        want = {**hot, **packed}
        want.update({k: v + b"!" for k, v in hot.items()})
        want.update(batch)
        with eng.read() as r:
            assert list(r.iter_values("heat")) == sorted(want.items())
            for k, v in want.items():
                assert r.get_value("heat", k) == v
    finally:
        eng.close()


FILES = 1200
GETS = 4


def _hot_heat_rows(data_dir: Path) -> int:
    env = lmdb.open(str(data_dir), readonly=True, lock=False, max_dbs=64)
    try:
        with env.begin() as txn:
            return int(txn.stat(env.open_db(b"heat", txn=txn, create=False))["entries"])
    finally:
        env.close()


def test_gets_of_an_unchanged_store_keep_the_metadata_file_small(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compaction, "MIN_BYTES", 0)  # the put's close packs the store
    src, state = tmp_path / "src", tmp_path / "state"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(FILES // 6):  # each file one distinct chunk
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(16) + b"%d/%d\n" % (d, i))
    with Client.init(state) as fs:
        fs.put(src, "/src")
    data = state / "meta" / "data.mdb"
    before = os.path.getsize(data)
    ino = os.stat(data).st_ino
    for n in range(GETS):
        with Client(state) as fs:
            assert fs.get("/src", tmp_path / f"out{n}").files == FILES
    assert os.stat(data).st_ino == ino  # reads did not compact: the rows went in packed
    grown = os.path.getsize(data) - before
    # measured: hot heat rows (~79 B of page each) and the pages their rewrites free
    # grew it by 170 B per chunk; packed rows and their rewritten blocks by 78
    assert grown <= 120 * FILES, f"{GETS} gets grew data.mdb by {grown} B"
    assert _hot_heat_rows(state / "meta") == 0
    with Client(state) as fs, fs.engine.read() as txn:
        heat = dict(iter_chunk_heat(txn))
    assert len(heat) == FILES and {h.reads for h in heat.values()} == {GETS}


def test_an_unpacked_store_keeps_heat_rows_hot(tmp_path: Path) -> None:
    """Blocks only in a store compaction made packed (format 5): code that reads format 4
    reads no blocks, so writing some there would hide the rows from it."""
    path = str(tmp_path / "meta")
    eng = LmdbEngine(path)
    try:
        with eng.write_tick() as w:
            w.put_value("heat", b"c1", b"x")
            w.put_value("heat", b"c2", b"y")
        with eng.read() as r:
            assert r.get_meta("format") not in enc.PACKED_FORMATS
            assert list(r.iter_values("heat")) == [(b"c1", b"x"), (b"c2", b"y")]
        env = eng._env
        with env.begin() as txn:
            assert txn.stat(env.open_db(b"heat.z", txn=txn))["entries"] == 0
            assert txn.stat(env.open_db(b"heat", txn=txn))["entries"] == 2
    finally:
        eng.close()


def _heat_blocks(path: str) -> tuple[dict[bytes, bytes], int]:
    """The heat table's blocks (key -> block) and its leaf pages."""
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=64)
    try:
        with env.begin() as txn:
            db = env.open_db(b"heat.z", txn=txn, create=False)
            return dict(txn.cursor(db=db).iternext()), int(txn.stat(db)["leaf_pages"])
    finally:
        env.close()


def _packed_heat(path: str, rows: int) -> list[bytes]:
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    keys = [b"c" + os.urandom(16) for _ in range(rows)]
    try:
        with eng.write() as w:
            for k in keys:
                w.put_value("heat", k, b"%024d" % 0)
    finally:
        eng.close()
    compaction.compact_now(path)
    return keys


def test_a_flush_of_few_keys_rewrites_only_their_blocks(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    keys = sorted(_packed_heat(path, 4000))
    before, _ = _heat_blocks(path)
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with eng.write_tick() as w:
            for k in keys[::1000]:  # 4 reads, 4 blocks apart
                w.put_value("heat", k, b"%024d" % 1)
    finally:
        eng.close()
    after, _ = _heat_blocks(path)
    gone = {k for k, v in before.items() if after.get(k) != v}
    assert 1 <= len(gone) <= 4, f"{len(gone)} of {len(before)} blocks rewritten"
    # the rewritten blocks' leaf pages and their branch pages, copied on write
    assert os.path.getsize(os.path.join(path, "data.mdb")) - size <= 12 * 4096


def test_a_flush_into_most_blocks_rewrites_the_table_with_full_pages(
        tmp_path: Path) -> None:
    """A restore reads chunks all over the table (ids are random): each flush then
    changes nearly every heat block, and rewrites them appended (full leaf pages)
    rather than one by one in the middle (pages split half full)."""
    path = str(tmp_path / "meta")
    keys = _packed_heat(path, 4000)
    _, packed_pages = _heat_blocks(path)
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        for rnd in (1, 2):
            with eng.write_tick() as w:
                for k in keys[rnd::2]:  # half the rows, in no order
                    w.put_value("heat", k, b"%024d" % rnd)
                w.put_value("heat", b"c" + b"\xff" * 17, b"%024d" % rnd)  # a new key
        with eng.read() as r:
            got = dict(r.iter_values("heat"))
    finally:
        eng.close()
    assert len(got) == 4001 and got[keys[1]] == b"%024d" % 1 and got[keys[2]] == b"%024d" % 2
    _, pages = _heat_blocks(path)
    # measured: 19 pages packed; after the flushes 21 appended, 37 put one by one
    assert pages <= packed_pages + 3, f"{pages} leaf pages for {packed_pages} packed"
    assert _hot_heat_rows(Path(path)) == 0


def test_a_small_packed_store_folds_a_restore_s_reads_in_one_flush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each flush of a restore rewrites the small heat table whole (chunk ids are
    random): one flush instead of one per FLUSH_EVERY chunks leaves no pages free."""
    path = str(tmp_path / "meta")
    _packed_heat(path, 100)
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    ticks: list[int] = []
    real = eng.write_tick
    monkeypatch.setattr(eng, "write_tick", lambda: (ticks.append(1), real())[1])
    try:
        tracker = HeatTracker(eng, 3600.0, flush_interval=3600.0)
        cids = [os.urandom(16) for _ in range(2 * FLUSH_EVERY + 1)]
        for i in range(0, len(cids), 100):
            tracker.record(cids[i:i + 100])
        assert ticks == []  # a plain table would have flushed twice by now
        tracker.flush()
        assert len(ticks) == 1
        with eng.read() as r:
            assert len(dict(iter_chunk_heat(r))) == len(cids) + 100
    finally:
        eng.close()


def test_a_large_or_plain_heat_table_keeps_the_flush_bound(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        assert eng.tick_rows("heat", FLUSH_EVERY) == FLUSH_EVERY  # plain (format 4)
    finally:
        eng.close()
    _packed_heat(path, 20000)  # ~100 leaf pages of blocks
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        assert eng.tick_rows("heat", 128) == 128  # the table is over half of 128 pages
        assert eng.tick_rows("heat", FLUSH_EVERY) == TICK_ROWS_SMALL
    finally:
        eng.close()
