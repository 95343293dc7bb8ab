"""Block dictionaries of packed tables (docs/format.md, "Block dictionaries")."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs.errors import MetadataDamagedError
from gfs.meta import ROOT_INO, Inode, Kind, LmdbEngine, block_dicts, blocks
from gfs.meta import compact as compaction
from gfs.meta import encoding as enc
from gfs.meta.records import ChunkRecord, ChunkRef, Location, Manifest
from gfs.testing.meta_suite import dump_store

FILES = 1500


@pytest.fixture(autouse=True)
def _small_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train on tables of test size (the defaults want 256 KiB of rows)."""
    monkeypatch.setattr(block_dicts, "TRAIN_MIN_RAW", 24 << 10)
    monkeypatch.setattr(block_dicts, "EVAL_MIN_RAW", 16 << 10)
    monkeypatch.setattr(block_dicts, "TRAIN_SAMPLE", 64 << 10)


def _cid(i: int) -> bytes:
    return random.Random(i).randbytes(16)


def _snapshot(path: str, snap: int) -> None:
    """One snapshot of a versioned tree: FILES files in a new directory, nine in ten of
    them with one of 300 contents (chunks) found in every snapshot, one in ten new."""
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with eng.write() as w:
            d = 10 + snap
            w.put_inode(Inode(d, ROOT_INO, Kind.DIR, 0o755, 0, 0, 0, 1, 1, 1))
            w.link(ROOT_INO, f"v{snap}", d)
            for i in range(FILES):
                ino = 1000 + snap * FILES + i
                cid = _cid(i % 300 if i % 10 else snap * FILES + i)
                w.put_inode(Inode(ino, d, Kind.FILE, 0o644, 0, 0, 100 + i % 7, 5, 4, 5, 1))
                w.link(d, f"file-{i:05d}.py", ino)
                w.put_manifest(ino, Manifest(1, (ChunkRef(cid, 100 + i % 7),)))
                if (snap == 0 and i < 300) or i % 10 == 0:
                    w.put_chunk(ChunkRecord(cid, 100 + i % 7, 60, 1, 1,
                                            (Location(0, b"p" * 16, i * 60, 60),)))
    finally:
        eng.close()


def _versioned(path: str, snapshots: int) -> None:
    """`snapshots` snapshots, each compacted after (as a put's close does)."""
    for snap in range(snapshots):
        _snapshot(path, snap)
        compaction.compact_now(path)


def _dump(path: str) -> dict[str, Any]:
    """Every record, but the root's (its times are those of the store's making)."""
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r:
            got = dump_store(r, (ROOT_INO, *range(10, 20)))
    finally:
        eng.close()
    got["inodes"] = [i for i in got["inodes"] if i.ino != ROOT_INO]
    got["meta"].pop("store_id", None)
    return got


def _stored_dicts(path: str) -> dict[str, bytes]:
    env = lmdb.open(path, readonly=True, max_dbs=64, lock=False)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            return {bytes(k)[5:].decode(): bytes(v) for k, v in txn.cursor(db=meta)
                    if bytes(k).startswith(b"dict.")}
    finally:
        env.close()


def _block_rows(draw_rows: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return sorted(dict(draw_rows).items())


rows_st = st.lists(st.tuples(st.binary(min_size=1, max_size=24), st.binary(max_size=80)),
                   min_size=1, max_size=60).map(_block_rows)


def _vocabulary_blocks(seed: int, n: int = 40) -> list[bytes]:
    """Raw blocks whose values come from a vocabulary of 150 random strings: each block
    holds few of them twice, the blocks together hold them all many times (as
    manifests name the chunks of files that recur in every snapshot)."""
    rng = random.Random(seed)
    vocabulary = [rng.randbytes(24) for _ in range(150)]
    return [blocks.raw_block(sorted({rng.randbytes(8): rng.choice(vocabulary)
                                     for _ in range(60)}.items())) for _ in range(n)]


def _trained(seed: int = 5) -> block_dicts.BlockDict:
    blocks_ = _vocabulary_blocks(seed, 80)
    d = block_dicts.train(blocks_[:40], blocks_[40:])
    assert d is not None
    return d


DICT = _trained()


@settings(max_examples=150, deadline=None)
@given(rows=rows_st)
def test_a_block_with_a_dictionary_decodes_to_its_rows(rows: list[tuple[bytes, bytes]]) -> None:
    import zstandard

    data = blocks.encode_block(rows, DICT)
    _, pos = enc._varints(data, 0, 1)
    assert zstandard.get_frame_parameters(data[pos:]).dict_id == DICT.id
    keys, values = blocks.decode_block("t", rows[-1][0], data, DICT)
    assert list(zip(keys, values, strict=True)) == rows
    # a block without one reads whatever dictionary the table has
    plain = blocks.encode_block(rows)
    assert list(zip(*blocks.decode_block("t", rows[-1][0], plain, DICT), strict=True)) == rows


def test_block_contexts_are_made_once_per_dictionary_and_level_and_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread's compressor and decompressor of a dictionary are built once (loading
    a dictionary is the cost) and kept within BLOCK_CONTEXT_BYTES of dictionaries,
    least recently used evicted (gfs.zstd_contexts, shared with the delta codec)."""
    from gfs.zstd_contexts import ContextCache

    monkeypatch.setattr(block_dicts, "_contexts", ContextCache(2 * len(DICT.raw) + 2))
    c = block_dicts.compressor(DICT, 3)
    assert block_dicts.compressor(DICT, 3) is c
    assert block_dicts.compressor(DICT, 5) is not c
    assert block_dicts.decompressor(DICT) is block_dicts.decompressor(DICT)
    assert block_dicts.compressor(None, 3) is block_dicts.compressor(None, 3)
    other = _trained(9)
    assert block_dicts.compressor(other, 3) is not c
    cache = block_dicts._contexts
    assert cache.policy.size <= 2 * len(DICT.raw) + 2
    assert set(cache.entries) == set(cache.policy.keys())
    assert block_dicts.compressor(DICT, 3) is not c  # least recently used: evicted


def test_a_block_needs_its_own_dictionary() -> None:
    rows = [(b"k%03d" % i, b"value %d" % i) for i in range(50)]
    data = blocks.encode_block(rows, DICT)
    with pytest.raises(MetadataDamagedError, match=f"needs block dictionary {DICT.id}"):
        blocks.decode_block("manifests", rows[-1][0], data)
    other = _trained(9)
    assert other.id != DICT.id
    with pytest.raises(MetadataDamagedError, match="the table has dictionary"):
        blocks.decode_block("manifests", rows[-1][0], data, other)


def test_a_versioned_tree_packs_smaller_with_dictionaries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_dicts, without = str(tmp_path / "with"), str(tmp_path / "without")
    _versioned(with_dicts, 4)
    stored = _stored_dicts(with_dicts)
    assert stored["manifests"], stored  # the recurring chunk ids pay
    monkeypatch.setattr(block_dicts, "TRAIN_MIN_RAW", 1 << 40)
    _versioned(without, 4)
    assert _stored_dicts(without) == {}
    assert _dump(with_dicts) == _dump(without)
    small, large = (os.path.getsize(f"{p}/data.mdb") for p in (with_dicts, without))
    assert small < large * 0.9, (small, large)
    eng = LmdbEngine(with_dicts, readonly=True)
    try:
        with eng.read() as r:
            assert r.get_meta("format") == enc.PACKED_FORMAT
            assert not list(r.damaged_records())
    finally:
        eng.close()
    # once decided, every block of the table names it: the first snapshot's too
    wanted = block_dicts.BlockDict.load(stored["manifests"], "manifests")
    assert wanted is not None
    assert set(_frame_dicts(with_dicts, "manifests")) == {wanted.id}
    assert set(_frame_dicts(with_dicts, "inodes")) == {0}  # it has none


def _frame_dicts(path: str, table: str) -> list[int]:
    """The dictionary id each block of `table` names in its frame (0: none)."""
    import zstandard

    env = lmdb.open(path, readonly=True, max_dbs=64, lock=False)
    try:
        with env.begin() as txn:
            db = env.open_db(blocks.block_db(table), txn=txn, create=False)
            out = []
            for _, data in txn.cursor(db=db):
                _, pos = enc._varints(bytes(data), 0, 1)
                out.append(zstandard.get_frame_parameters(bytes(data)[pos:]).dict_id)
            return out
    finally:
        env.close()


def test_a_dictionary_that_does_not_pay_is_not_kept_nor_trained_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "meta")
    rng = random.Random(3)
    trained: list[int] = []
    train = block_dicts.train

    def counted(samples: list[bytes], trial: list[bytes]) -> block_dicts.BlockDict | None:
        trained.append(len(samples))
        return train(samples, trial)

    monkeypatch.setattr(block_dicts, "train", counted)
    for rnd in range(3):
        eng = LmdbEngine(path, sync=False, compact_at_close=False)
        try:
            with eng.write() as w:  # random values: nothing a dictionary could hold
                for i in range(1500):
                    w.put_value("heat", (rnd * 1500 + i).to_bytes(8, "big"), rng.randbytes(32))
        finally:
            eng.close()
        compaction.compact_now(path)
        # the first packs its rows with nothing to try a dictionary on; the second
        # trains one on them, tries it on its own rows and keeps none; the third does
        # not train again
        assert len(trained) == (0 if rnd == 0 else 1), rnd
        assert _stored_dicts(path).get("heat") == (None if rnd == 0 else b"")


def test_a_dictionary_pays_only_on_rows_like_its_samples() -> None:
    base = _vocabulary_blocks(5, 80)
    assert block_dicts.train(base[:40], base[40:]) is not None
    assert block_dicts.train(base[:40], _vocabulary_blocks(6, 40)) is None  # other ids
    assert block_dicts.train(base[:4], base[40:]) is None  # too few samples
    assert block_dicts.train(base[:40], []) is None


def test_writes_into_dictionary_blocks_keep_every_row(tmp_path: Path) -> None:
    """Deletes and write-through rewrites of blocks compressed with a dictionary."""
    path = str(tmp_path / "meta")
    _versioned(path, 2)
    assert _stored_dicts(path)["manifests"]
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        gone = range(1000, 1000 + FILES, 3)
        with eng.write() as w:
            for ino in gone:
                w.delete_manifest(ino)
        with eng.read() as r:
            for ino in range(1000, 1000 + 2 * FILES):
                m = r.get_manifest(ino)
                assert (m is None) == (ino in gone), ino
    finally:
        eng.close()
    compaction.compact_now(path)  # repacked with the table's dictionary again
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r:
            assert sum(1 for _ in r.iter_manifests()) == 2 * FILES - len(gone)
            assert not list(r.damaged_records())
    finally:
        eng.close()


def _set_meta(path: str, key: bytes, value: bytes | None) -> None:
    env = lmdb.open(path, max_dbs=64)
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            if value is None:
                txn.delete(key, db=meta)
            else:
                txn.put(key, value, db=meta)
    finally:
        env.close()


@pytest.mark.parametrize("damage", [None, b"not a dictionary"])
def test_fsck_names_a_lost_or_damaged_dictionary_and_its_blocks(tmp_path: Path,
                                                               damage: bytes | None) -> None:
    path = str(tmp_path / "meta")
    _versioned(path, 2)
    assert _stored_dicts(path)["manifests"]
    _set_meta(path, block_dicts.meta_key("manifests"), damage)
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r:
            with pytest.raises(MetadataDamagedError):
                list(r.iter_manifests())
            lines = list(r.damaged_records())
    finally:
        eng.close()
    blocks_named = [x for x in lines if "needs block dictionary" in x]
    assert blocks_named and all("table manifests" in x for x in blocks_named), lines
    if damage is not None:
        assert any("block dictionary" in x and "not a zstd dictionary" in x
                   for x in lines), lines
        with pytest.raises(compaction.FormatError, match="not a zstd dictionary"):
            compaction.compact_now(path)  # refused: the store is unchanged
    else:  # its blocks are copied as they are: the damage stays for fsck to name
        compaction.compact_now(path)
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r:
            assert [x for x in r.damaged_records() if "needs block dictionary" in x
                    ] == blocks_named
    finally:
        eng.close()


def _samples_row_by_row(rows: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The sampling's specification, a row at a time: raw blocks cut once they hold
    TARGET_RAW bytes (key, value and 6 bytes a row), until TRAIN_SAMPLE bytes."""
    samples: list[bytes] = []
    run: list[tuple[bytes, bytes]] = []
    total = size = 0
    for key, value in rows:
        run.append((key, value))
        size += len(key) + len(value) + 6
        if size >= blocks.TARGET_RAW:
            samples.append(blocks.raw_block(run))
            total += size
            run, size = [], 0
            if total >= block_dicts.TRAIN_SAMPLE:
                return samples
    if run:
        samples.append(blocks.raw_block(run))
    return samples


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3000), st.lists(st.sampled_from([0, 1, 7, 60, 700, 5000]), min_size=1,
                                      max_size=6),
       st.lists(st.integers(1, 300), min_size=1, max_size=8), st.integers(0, 2**32))
def test_sampling_in_batches_cuts_as_row_by_row(count: int, sizes: list[int],
                                                 steps: list[int], seed: int) -> None:
    rng = random.Random(seed)
    rows = [(i.to_bytes(4, "big") + rng.randbytes(rng.randrange(3)),
             rng.randbytes(rng.choice(sizes))) for i in range(count)]
    batches, at, i = [], 0, 0
    while at < len(rows):  # batches of any sizes, as blocks and cursor takes come
        step = steps[i % len(steps)]
        part = rows[at:at + step]
        batches.append(([k for k, _ in part], [v for _, v in part]))
        at, i = at + step, i + 1
    want = _samples_row_by_row(rows)
    assert compaction._samples(iter(batches)) == want
    assert compaction._samples(compaction._hot_rows(iter(rows))) == want
