"""Packed blocks of cold metadata rows (gfs.meta.blocks): the codec, and an LMDB
engine whose tables compaction packed reading, overwriting and deleting exactly as
before, through fsck-visible scans and further compactions."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gfs.meta.residency as residency
from gfs.errors import FormatError
from gfs.meta import ROOT_INO, Inode, Kind, LmdbEngine, blocks, lmdb_engine
from gfs.meta import compact as compaction
from gfs.meta import encoding as enc
from gfs.meta.records import ChunkRecord, ChunkRef, Location, Manifest

_ROWS = st.dictionaries(st.binary(min_size=1, max_size=40), st.binary(max_size=300),
                        max_size=120).map(lambda d: sorted(d.items()))


@settings(max_examples=200, deadline=None)
@given(_ROWS)
def test_pack_cuts_rows_into_blocks_that_decode_to_them(rows: list[tuple[bytes, bytes]]
                                                        ) -> None:
    out = list(blocks.pack(rows))
    got: list[tuple[bytes, bytes]] = []
    for bkey, data in out:
        keys, values = blocks.decode_block("heat", bkey, data)
        assert keys[-1] == bkey
        assert len(keys) == 1 or len(data) + len(bkey) <= blocks.MAX_BLOCK
        got += zip(keys, values, strict=True)
    assert got == rows
    assert [k for k, _ in out] == sorted({k for k, _ in out})  # ascending, no overlap


@settings(max_examples=200, deadline=None)
@given(_ROWS.filter(bool), st.data())
def test_a_damaged_block_is_a_format_error_or_its_own_rows(
        rows: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    block = blocks.encode_block(rows)
    pos = data.draw(st.integers(0, len(block) - 1))
    bad = block[:pos] + bytes([block[pos] ^ data.draw(st.integers(1, 255))]) + block[pos + 1:]
    cut = block[:data.draw(st.integers(0, len(block) - 1))]
    for damaged in (bad, cut):
        try:
            got = blocks.decode_block("inodes", rows[-1][0], damaged)
        except FormatError as e:
            assert "of table inodes" in str(e)
        else:  # e.g. the frame's checksum flag cleared: the same rows, never others
            assert list(zip(*got, strict=True)) == rows
    with pytest.raises(FormatError, match="last row is not its key"):
        blocks.decode_block("inodes", rows[-1][0] + b"x", block)


def test_a_frame_header_declaring_a_huge_size_is_a_format_error_not_an_allocation() -> None:
    # Found by the test above in CI: one flipped bit of the frame header descriptor
    # made the frame declare 2**60 bytes and decompress() raised MemoryError.
    block = bytearray(blocks.encode_block([(b"k", b"v" * 40)]))
    header = block.index(b"\x28\xb5\x2f\xfd") + 4
    block[header] = 0xE4  # single segment, checksum, an 8-byte content size next
    block[header + 1:header + 9] = (1 << 60).to_bytes(8, "little")
    with pytest.raises(FormatError, match="declares 1152921504606846976 bytes"):
        blocks.decode_block("inodes", b"k", bytes(block))


@settings(max_examples=200, deadline=None)
@given(_ROWS, _ROWS)
def test_repack_merges_hot_rows_into_blocks_and_keeps_untouched_blocks_as_they_are(
        packed_rows: list[tuple[bytes, bytes]], hot: list[tuple[bytes, bytes]]) -> None:
    packed = list(blocks.pack(packed_rows))
    count = blocks.RepackCount()
    out = list(blocks.repack("deltas", iter(hot), packed, count))
    assert count.shadowed == len(dict(packed_rows).keys() & dict(hot).keys())
    got = [row for bkey, data in out
           for row in zip(*blocks.decode_block("deltas", bkey, data), strict=True)]
    assert got == sorted({**dict(packed_rows), **dict(hot)}.items())
    assert sum(blocks.block_rows(data) for _, data in out) == len(got)
    if not hot:
        assert out == packed  # nothing to merge: every block passed on, not re-encoded
    elif packed and hot[0][0] > packed[0][0]:
        assert out[0] == packed[0]  # the first block holds no hot row


def test_encode_refuses_rows_out_of_order() -> None:
    with pytest.raises(ValueError, match="out of order"):
        blocks.encode_block([(b"b", b""), (b"a", b"")])
    with pytest.raises(ValueError, match="at least one row"):
        blocks.encode_block([])


def _inode(ino: int, parent: int = ROOT_INO, size: int = 0) -> Inode:
    return Inode(ino, parent, Kind.FILE, 0o644, 0, 0, size, 5, 4, 5, 1)


def _store(path: str, files: int) -> None:
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with eng.write() as w:
            for i in range(files):
                ino = 100 + i
                w.put_inode(_inode(ino, size=i))
                w.link(ROOT_INO, f"f{i:05d}", ino)
                cid = i.to_bytes(16, "big")
                w.put_chunk(ChunkRecord(cid, 100, 60, 1, 1, (Location(0, b"p" * 16, i, 60),)))
                w.put_manifest(ino, Manifest(1, (ChunkRef(cid, 100),)))
                w.put_value("heat", b"c" + cid, b"h%d" % i)
    finally:
        eng.close()


def _packed_rows(path: str, table: str) -> int:
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=64)
    try:
        db = env.open_db(blocks.block_db(table), create=False)
        with env.begin() as t:
            return sum(len(blocks.decode_block(table, k, v)[0]) for k, v in t.cursor(db=db))
    finally:
        env.close()


def test_a_packed_store_reads_changes_and_repacks_as_a_plain_one(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    _store(path, 600)
    plain = os.path.getsize(f"{path}/data.mdb")
    done = compaction.compact_now(path)
    assert done is not None and done.after < 0.75 * plain, done
    assert _packed_rows(path, "inodes") == 601 and _packed_rows(path, "heat") == 600
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with eng.read() as r:
            assert r.get_meta("format") == enc.PACKED_FORMAT
            assert r.get_inode(350) == _inode(350, size=250)
            assert r.lookup(ROOT_INO, "f00250") == 350
            assert r.lookup(ROOT_INO, "f00250x") is None and r.get_inode(99) is None
            assert [n for n, _ in r.list_dir(ROOT_INO)] == [f"f{i:05d}" for i in range(600)]
            assert r.get_chunk((7).to_bytes(16, "big")) is not None
            assert r.get_manifest(107) == Manifest(1, (ChunkRef((7).to_bytes(16, "big"), 100),))
            assert len(list(r.iter_values("heat", b"c"))) == 600
        with eng.write() as w:  # overwrite packed rows, delete some, add new ones
            w.put_inode(_inode(350, size=9999))
            w.unlink(ROOT_INO, "f00010")
            w.delete_inode(110)
            w.delete_manifest(110)
            w.delete_chunk((10).to_bytes(16, "big"))
            w.delete_value("heat", b"c" + (10).to_bytes(16, "big"))
            w.delete_value("heat", b"c" + (599).to_bytes(16, "big"))  # a block's last row
            w.link(ROOT_INO, "f00010b", 900)
            w.put_inode(_inode(900))
            assert w.get_inode(110) is None and w.lookup(ROOT_INO, "f00010") is None
        with eng.read() as r:
            assert r.get_inode(350) == _inode(350, size=9999)
            assert r.get_inode(110) is None and r.get_manifest(110) is None
            assert r.get_chunk((10).to_bytes(16, "big")) is None
            assert r.get_value("heat", b"c" + (599).to_bytes(16, "big")) is None
            names = [n for n, _ in r.list_dir(ROOT_INO)]
            assert "f00010" not in names and "f00010b" in names and len(names) == 600
            inodes = {i.ino: i for i in r.iter_inodes()}
            assert len(inodes) == 601 and inodes[350].size == 9999 and 110 not in inodes
            assert len(list(r.iter_values("heat", b"c"))) == 598
            before = (names, inodes, list(r.iter_manifests()), list(r.iter_chunks()))
    finally:
        eng.close()
    assert compaction.compact_now(path) is not None  # the hot rows and the blocks merge
    assert _packed_rows(path, "inodes") == 601 and _packed_rows(path, "heat") == 598
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r:
            after = ([n for n, _ in r.list_dir(ROOT_INO)], {i.ino: i for i in r.iter_inodes()},
                     list(r.iter_manifests()), list(r.iter_chunks()))
            assert r.get_inode(350) == _inode(350, size=9999)
    finally:
        eng.close()
    assert after == before


def test_a_damaged_block_is_reported_by_name(tmp_path: Path) -> None:
    path = str(tmp_path / "meta")
    _store(path, 300)
    compaction.compact_now(path)
    env = lmdb.open(path, max_dbs=64)
    db = env.open_db(blocks.block_db("inodes"), create=False)
    with env.begin(write=True) as w:
        key, value = next(iter(w.cursor(db=db)))
        w.put(key, value[:-3], db=db)
    env.close()
    eng = LmdbEngine(path, readonly=True)
    try:
        with eng.read() as r, pytest.raises(FormatError, match="table inodes"):
            r.get_inode(ROOT_INO)
    finally:
        eng.close()


_OPS = st.lists(st.tuples(st.sampled_from(["put", "del", "compact", "tick", "tick-del"]),
                          st.integers(0, 300), st.binary(max_size=24)), max_size=60)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_OPS)
def test_a_value_table_matches_a_dict_through_puts_deletes_and_compactions(
        tmp_path: Path, ops: list[tuple[str, int, bytes]]) -> None:
    path = str(tmp_path / f"m{os.urandom(4).hex()}")
    model: dict[bytes, bytes] = {}
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    with eng.write() as w:  # a packed start: 200 rows in blocks
        for i in range(200):
            w.put_value("deltas", b"k%05d" % (i * 3), b"v%d" % i)
            model[b"k%05d" % (i * 3)] = b"v%d" % i
    eng.close()
    compaction.compact_now(path)
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        for op, n, value in ops:
            key = b"k%05d" % n
            if op == "compact":
                eng.close()
                compaction.compact_now(path)
                eng = LmdbEngine(path, sync=False, compact_at_close=False)
                continue
            if op.startswith("tick"):  # write-through: packed keys change in their block
                other = b"k%05d" % (n * 7 % 301)
                with eng.write_tick() as w:
                    w.put_value("deltas", key, value)
                    w.put_value("deltas", other, value + b"!")
                    assert w.get_value("deltas", key) == (value if key != other
                                                          else value + b"!")
                    model[key], model[other] = value, value + b"!"
                    if op == "tick-del":
                        w.delete_value("deltas", other)
                        del model[other]
                    assert dict(w.iter_values("deltas")) == model
                    probe = [b"k%05d" % m for m in range(0, 305, 4)] + [key, other, b"zz"]
                    assert w.get_values("deltas", probe) == {  # pending rows too
                        k: model[k] for k in probe if k in model}
                continue
            with eng.write() as w:
                if op == "put":
                    w.put_value("deltas", key, value)
                    model[key] = value
                else:
                    w.delete_value("deltas", key)
                    model.pop(key, None)
            with eng.read() as r:
                assert r.get_value("deltas", key) == model.get(key)
                probe = [*reversed([b"k%05d" % m for m in range(n % 3, 305, 3)]), key, b""]
                assert r.get_values("deltas", probe) == {k: model[k] for k in probe
                                                         if k in model}
        with eng.read() as r:
            assert list(r.iter_values("deltas")) == sorted(model.items())
            assert list(r.iter_values("deltas", b"k001")) == sorted(
                (k, v) for k, v in model.items() if k.startswith(b"k001"))
    finally:
        eng.close()


def test_a_packed_store_dumps_and_loads_into_a_plain_one(tmp_path: Path) -> None:
    import io

    from gfs.meta.dump import dump, load, read_header
    from gfs.testing.meta_suite import dump_store

    path, other = str(tmp_path / "meta"), str(tmp_path / "other")
    _store(path, 400)
    compaction.compact_now(path)
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    with eng.write() as w:  # hot rows over the blocks too
        w.put_inode(_inode(150, size=77))
        w.delete_inode(151)
    buf = io.BytesIO()
    counts = dump(eng, buf)
    assert counts["inode"] == 400 and counts["chunk"] == 400
    with eng.read() as r:
        want = dump_store(r, (ROOT_INO,))
    eng.close()
    dst = LmdbEngine(other, sync=False, compact_at_close=False)
    try:
        load(dst, read_header(io.BytesIO(buf.getvalue()))[1])
        with dst.read() as r:
            got = dump_store(r, (ROOT_INO,))
            assert r.get_meta("format") == enc.FORMAT_VERSION  # loaded plain
    finally:
        dst.close()
    for d in (got, want):
        d["meta"].pop("format")
    assert got == want


def test_older_code_refuses_a_packed_store(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from gfs.errors import StateError

    path = str(tmp_path / "meta")
    _store(path, 50)
    compaction.compact_now(path)
    # the formats code before packed blocks read: it must not open a store it would
    # see as nearly empty
    monkeypatch.setattr(enc, "READABLE_FORMATS", (b"1", b"2", b"3"))
    with pytest.raises(StateError, match="format version 6"):
        LmdbEngine(path, readonly=True)
    # nor the code of format 5, which reads no block dictionaries
    monkeypatch.setattr(enc, "READABLE_FORMATS", (b"1", b"2", b"3", b"4", b"5"))
    with pytest.raises(StateError, match="format version 6"):
        LmdbEngine(path, readonly=True)


def test_compaction_cuts_blocks_that_fill_leaf_pages(tmp_path: Path) -> None:
    """Blocks cut at a fixed raw size left leaf pages ~90% full; cut to the room left
    in the page, they fill them to 95% and more."""
    path = str(tmp_path / "meta")
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    with eng.write() as w:
        for i in range(6000):
            cid = (i * 0x9E3779B97F4A7C15 % (1 << 128)).to_bytes(16, "big")
            w.put_chunk(ChunkRecord(cid, 5000 + i % 977, 900 + i % 311, 1, 1,
                                    (Location(0, bytes(16), i * 1000, 900 + i % 311),)))
    eng.close()
    compaction.compact_now(path)
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=64)
    try:
        db = env.open_db(blocks.block_db("chunks"), create=False)
        with env.begin() as t:
            st_ = t.stat(db)
            used = sum(blocks._node(k, v) for k, v in t.cursor(db=db))
    finally:
        env.close()
    assert st_["overflow_pages"] == 0
    assert used / (st_["leaf_pages"] * (st_["psize"] - 16)) >= 0.95, st_


def test_namespace_model_on_a_store_packed_between_steps() -> None:
    """The namespace model (tree, contents, links, refcounts, fsck and gc at the end)
    with a rule that closes the store, packs it (`hutong meta compact`) and reopens
    it: every later step reads and changes a store whose rows are hot, packed or
    both."""
    from hypothesis.stateful import rule, run_state_machine_as_test

    from gfs.client import Client
    from tests.test_namespace_model import NamespaceModel

    class Packed(NamespaceModel):
        @rule()
        def pack(self) -> None:
            state = self.tmp / "state"
            self.fs.close()
            assert compaction.compact_now(str(state / "meta")) is not None
            self.fs = Client(state)
            with self.fs.engine.read() as r:
                assert r.get_meta("format") == enc.PACKED_FORMAT

    run_state_machine_as_test(Packed, settings=settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


def test_a_write_that_records_reads_changes_packed_rows_in_their_blocks(
        tmp_path: Path) -> None:
    """Heat flushes after reads (`write_tick`) rewrite the blocks of the rows they
    change instead of adding a hot copy of each: the hot table stays empty but for a
    lone new key in a small flush."""
    path = str(tmp_path / "meta")
    _store(path, 2000)
    compaction.compact_now(path)
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        for rnd in range(3):
            with eng.write_tick() as w:
                for i in range(0, 2000, 2):
                    w.put_value("heat", b"c" + i.to_bytes(16, "big"), b"r%d-%d" % (rnd, i))
                w.put_value("heat", b"new", b"packed")  # into a block: most are rewritten
        with eng.write_tick() as w:  # one new key a block would take alone: a hot row
            w.put_value("heat", b"c" + (13).to_bytes(16, "big") + b"+", b"hot")
        with eng.read() as r:
            assert r.get_value("heat", b"c" + (10).to_bytes(16, "big")) == b"r2-10"
            assert r.get_value("heat", b"c" + (11).to_bytes(16, "big")) == b"h11"
            assert r.get_value("heat", b"new") == b"packed"
            assert r.get_value("heat", b"c" + (13).to_bytes(16, "big") + b"+") == b"hot"
            assert len(list(r.iter_values("heat", b"c"))) == 2001
        with eng.write() as w:  # an ordinary write still adds hot rows
            w.put_value("heat", b"c" + (12).to_bytes(16, "big"), b"plain")
        env = eng._env
        assert env is not None
        with env.begin() as t:
            assert t.stat(env.open_db(b"heat", txn=t, create=False))["entries"] == 2
    finally:
        eng.close()
    assert _packed_rows(path, "heat") == 2001


def test_blocks_appended_out_of_key_order_are_refused_by_name(tmp_path: Path) -> None:
    """LMDB drops an appended key out of order without an error; the count short of
    the blocks offered raises FormatError (it raised NameError: FormatError was not
    imported)."""
    env = lmdb.open(str(tmp_path / "m"), max_dbs=2, map_size=1 << 24)
    try:
        bdb = env.open_db(blocks.block_db("heat"))
        with env.begin(write=True) as t:
            txn = blocks.BlockTxn(t, {})
            with pytest.raises(FormatError, match="1 of 2 blocks out of key order"):
                txn._append("heat", bdb, iter(list(blocks.pack([(b"b", b"2")]))
                                              + list(blocks.pack([(b"a", b"1")]))))
    finally:
        env.close()


def test_lookups_of_random_keys_decode_each_block_once_and_see_rewrites(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk lookups in random order (a put's dedup checks, its refcounts) decode each
    block once per transaction (`decode_block`: copy, shared-cache lookup, checks;
    past the shared cache's 256 blocks, a decompression), not once a lookup; a block
    the transaction rewrites (delete) is decoded again, so no lookup sees it stale."""
    path = str(tmp_path / "meta")
    _store(path, 600)
    assert compaction.compact_now(path) is not None
    decodes: list[bytes] = []
    real = blocks.decode_block

    def counting(table: str, key: bytes, data: bytes, *rest: object) -> blocks.Rows:
        decodes.append(key)
        return real(table, key, data, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(blocks, "decode_block", counting)
    order = [(i * 337) % 600 for i in range(600)]  # every chunk, far apart each time
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with eng.read() as r:
            assert r.present_chunks(i.to_bytes(16, "big") for i in order) == {
                i.to_bytes(16, "big") for i in range(600)}
            blocks_read = len(set(decodes))
            assert 1 < blocks_read == len(decodes) < 100
            assert r.get_chunk((5).to_bytes(16, "big")) is not None
            assert len(decodes) == blocks_read
        with eng.write() as w:
            seven, eight = (7).to_bytes(16, "big"), (8).to_bytes(16, "big")
            assert w.get_chunk(seven) is not None and w.get_chunk(eight) is not None
            w.delete_chunk(seven)  # rewrites the block that held 7 (and 8)
            assert w.get_chunk(seven) is None and w.get_chunk(eight) is not None
            w.add_refcounts({eight: 2})
            assert w.get_chunk(eight).refcount == 3
        with eng.read() as r:
            assert r.get_chunk(seven) is None and r.get_chunk(eight).refcount == 3
            assert len(r.present_chunks(i.to_bytes(16, "big") for i in order)) == 599
    finally:
        eng.close()


def test_a_batch_of_chunk_lookups_seeks_each_block_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`present_chunks` and `get_chunks` look their ids up in id order
    (`BlockTxn.get_many`): one block lookup (cursor seek, decode-cache probe) per
    block the ids fall in, however scattered their order; one by one, nearly every
    id took one."""
    path = str(tmp_path / "meta")
    _store(path, 600)
    assert compaction.compact_now(path) is not None
    seeks: list[bytes] = []
    real = blocks.BlockTxn._lookup_block

    def counting(self: blocks.BlockTxn, db: object, key: bytes) -> blocks.Rows | None:
        seeks.append(key)
        return real(self, db, key)

    monkeypatch.setattr(blocks.BlockTxn, "_lookup_block", counting)
    order = [(i * 337) % 700 for i in range(700)]  # 100 ids past the last chunk
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with eng.read() as r:
            assert r.present_chunks(i.to_bytes(16, "big") for i in order) == {
                i.to_bytes(16, "big") for i in range(600)}
            nblocks = r._txn.stat(r._txn._cold[r._d.chunks][1])["entries"]
            # ... plus one per part of residency.PART ids (a lookup each) that reaches
            # past the last block
            past = len({k // residency.PART for k in range(600, 700)})
            assert 1 < len(seeks) <= nblocks + past
        seeks.clear()  # and `get_chunks` (a get's batch of chunk records) the same way
        with eng.read() as r:
            got = r.get_chunks(i.to_bytes(16, "big") for i in order)
            assert 1 < len(seeks) <= nblocks + past
            assert sorted(got) == [i.to_bytes(16, "big") for i in range(600)]
            assert all(rec == r.get_chunk(cid) for cid, rec in got.items())
    finally:
        eng.close()


@pytest.mark.parametrize("tick", [False, True])
def test_lookups_past_a_few_seeks_bisect_the_listed_blocks_and_see_rewrites(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tick: bool) -> None:
    """After INDEX_AFTER_SEEKS cursor seeks into a block database, a transaction finds a
    key's block by bisecting its listed block keys (no more seeks) with the same
    answers; a write that rewrites blocks (a delete of a packed row, write-through rows
    flushed into their blocks) drops the list, and the lookups after it see the change."""
    path = str(tmp_path / "meta")
    _store(path, 600)
    assert compaction.compact_now(path) is not None
    seeks: list[bytes] = []
    real = blocks.BlockTxn._cursor_at

    def counting(self: blocks.BlockTxn, db: object, key: bytes) -> object:
        seeks.append(key)
        return real(self, db, key)

    monkeypatch.setattr(blocks.BlockTxn, "_cursor_at", counting)
    ids = [((i * 337) % 700).to_bytes(16, "big") for i in range(700)]  # 100 past the last
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with (eng.write_tick() if tick else eng.write()) as w:
            got = {cid: w.get_chunk(cid) for cid in ids}
            assert len(seeks) == blocks.INDEX_AFTER_SEEKS  # then bisections only
            assert {cid for cid, rec in got.items() if rec is not None} == {
                i.to_bytes(16, "big") for i in range(600)}
            gone, heated = ids[5], ids[7]
            assert got[gone] is not None and got[heated] is not None
            w.delete_chunk(gone)  # its block rewritten without it
            w.put_value("heat", b"c" + heated, b"new")  # through: pending, then flushed
            assert w.get_value("heat", b"c" + heated) == b"new"
            del seeks[:]
            assert {cid: w.get_chunk(cid) for cid in ids} == {**got, gone: None}
            assert 0 < len(seeks) <= blocks.INDEX_AFTER_SEEKS  # listed again
            assert w.get_value("heat", b"c" + heated) == b"new"
        with eng.read() as r:
            assert r.get_chunk(gone) is None and r.get_chunk(heated) == got[heated]
            assert r.get_value("heat", b"c" + heated) == b"new"
    finally:
        eng.close()


_CHUNK_OPS = st.lists(st.tuples(st.sampled_from(["put", "delete", "ref", "heat"]),
                                st.integers(0, 320)), max_size=40)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_CHUNK_OPS, st.booleans())
def test_batch_lookups_equal_lookups_one_by_one(
        tmp_path: Path, ops: list[tuple[str, int]], tick: bool) -> None:
    """`present_chunks`, `get_chunks` and `add_refcounts` (batch lookups, `get_many`)
    answer as
    `has_chunk` and `get_chunk` do one id at a time, over packed rows, hot rows that
    shadow or add to them, deleted ones and write-through rows not yet flushed."""
    path = str(tmp_path / f"m{os.urandom(4).hex()}")
    _store(path, 300)
    compaction.compact_now(path)
    ids = [i.to_bytes(16, "big") for i in range(321)]
    eng = LmdbEngine(path, sync=False, compact_at_close=False)
    try:
        with (eng.write_tick() if tick else eng.write()) as w:
            for op, n in ops:
                cid = ids[n]
                known = w.get_chunk(cid)
                if op == "put":
                    w.put_chunk(ChunkRecord(cid, 9, 9, 1, 1, (Location(0, b"q" * 16, n, 9),)))
                elif op == "delete":
                    w.delete_chunk(cid)
                elif op == "ref" and known is not None:
                    other = ids[(n * 7) % 300]
                    if w.has_chunk(other):
                        w.add_refcounts({cid: 1, other: 1})  # other == cid: one key
                        assert w.get_chunk(cid).refcount == known.refcount + 1
                elif op == "heat":  # write-through rows pending in a write_tick
                    w.put_value("heat", b"c" + cid, b"x%d" % n)
                assert w.present_chunks(reversed(ids)) == {c for c in ids if w.has_chunk(c)}
                assert w.get_chunks([*reversed(ids), ids[n]]) == {
                    c: rec for c in ids if (rec := w.get_chunk(c)) is not None}
            heat = lmdb_engine._value_db(w._d, "heat")
            keys = [b"c" + c for c in ids]
            assert w._txn.get_many(keys, heat) == {
                k: v for k in keys if (v := w._txn.get(k, heat)) is not None}
    finally:
        eng.close()
