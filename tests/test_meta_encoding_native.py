"""The C record encoders (native/metarec.c, `gfs._native.inode_compact` and
`chunk_refcount`) against the Python references in gfs.meta.encoding: the same bytes
for every record they take, None (the reference decides) for everything else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gfs import _native
from gfs.errors import FormatError, MetadataDamagedError
from gfs.meta import encoding as enc
from gfs.meta.records import CHUNK_ID_LEN, ChunkRecord, ChunkRef, Inode, Kind, Location, Manifest
from tests.test_meta_encoding import CID, U32, U64, chunks, inodes, manifests

U32_MAX, U64_MAX = (1 << 32) - 1, (1 << 64) - 1

#: Integers around and past every bound an inode or chunk field has.
WIDE = st.one_of(st.integers(-(1 << 70), 1 << 70),
                 st.sampled_from([-1, 0, 1, (1 << 16) - 1, 1 << 16, (1 << 32) - 1, 1 << 32,
                                  (1 << 63) - 1, 1 << 63, -(1 << 63), -(1 << 63) - 1,
                                  (1 << 64) - 1, 1 << 64]))

members = st.builds(ChunkRecord, id=CID, raw_len=U32, stored_len=st.just(0), codec=st.just(3),
                    refcount=U64, locations=st.just(()), group=CID, group_offset=U32
                    ).filter(lambda r: r.group != r.id)


def _outcome(fn: Callable[[], bytes]) -> tuple[str, object]:
    """('ok', bytes) or (exception type, message): what a call gave."""
    try:
        return "ok", fn()
    except (ValueError, FormatError, TypeError, OverflowError) as exc:
        return type(exc).__name__, str(exc)


def _c_inode(i: Inode) -> bytes | None:
    return _native.inode_compact(i.kind, i.mode, i.uid, i.gid, i.parent, i.size, i.version,
                                 i.atime_ns, i.mtime_ns, i.ctime_ns, i.nlink, i.rdev,
                                 i.target.encode("utf-8"))


@given(inodes)
@example(Inode(1, 0, Kind.FILE, 0, 0, 0, 0, -(1 << 63), (1 << 63) - 1, -(1 << 63)))
def test_c_inode_is_the_reference_and_round_trips(inode: Inode) -> None:
    data = _c_inode(inode)
    assert data == enc.encode_inode_reference(inode)
    assert enc.decode_inode(inode.ino, data) == inode


@given(inodes, st.sampled_from(["mode", "uid", "gid", "parent", "size", "version", "nlink",
                                "rdev", "atime_ns", "mtime_ns", "ctime_ns"]), WIDE)
def test_inode_out_of_range_fields_get_the_references_error(inode: Inode, field: str,
                                                            value: int) -> None:
    inode = replace(inode, **{field: value})
    ref = _outcome(lambda: enc.encode_inode_reference(inode))
    assert _outcome(lambda: enc.encode_inode(inode)) == ref
    data = _c_inode(inode)
    assert (data is None) == (ref[0] != "ok")
    if data is not None:
        assert ref == ("ok", data)


def test_encode_inode_runs_the_reference_only_for_errors(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    def refused(inode: Inode) -> bytes:
        raise AssertionError("the Python reference ran for a valid inode")

    inode = Inode(7, 1, Kind.FILE, 0o644, 1000, 1000, 5, 3, 2, 3, 1)
    expected = enc.encode_inode_reference(inode)
    monkeypatch.setattr(enc, "encode_inode_reference", refused)
    assert enc.encode_inode(inode) == expected
    with pytest.raises(AssertionError, match="reference ran"):
        enc.encode_inode(replace(inode, uid=1 << 32))


@given(st.one_of(chunks, members), WIDE)
@example(ChunkRecord(bytes(16), 1 << 28, 1 << 28, 0, 1 << 21, ()), 0)  # padded record
@example(ChunkRecord(bytes(16), 5, 5, 0, (1 << 64) - 1, ()), 1)
def test_c_refcount_change_is_the_references(rec: ChunkRecord, delta: int) -> None:
    data = enc.encode_chunk(rec)
    ref = _outcome(lambda: enc.with_refcount_delta_reference(rec.id, data, delta))
    assert _outcome(lambda: enc.with_refcount_delta(rec.id, data, delta)) == ref
    out = _native.chunk_refcount(rec.id, data, delta)
    in_c = -(1 << 63) <= delta < 1 << 63  # C takes an i64 delta; a wider one is Python's
    assert (out is None) == (ref[0] != "ok" or not in_c)
    if out is not None:
        assert ref == ("ok", out)
        assert enc.decode_chunk(rec.id, out) == replace(rec, refcount=rec.refcount + delta)


def test_c_refcount_takes_compact_and_member_records() -> None:
    rec = ChunkRecord(b"c" * 16, 100, 60, 1, 2, (Location(1, b"p" * 16, 1 << 40, 60),))
    member = ChunkRecord(b"m" * 16, 100, 0, 3, 1, (), b"g" * 16, 300)
    for r in (rec, member):
        out = _native.chunk_refcount(r.id, enc.encode_chunk(r), 200)
        assert out is not None
        assert enc.decode_chunk(r.id, out) == replace(r, refcount=r.refcount + 200)
    assert _native.chunk_refcount(rec.id, enc.encode_chunk(rec), -3) is None  # below zero
    fixed = enc._CHUNK_HEAD.pack(2, 100, 60, 1, 0)
    assert _native.chunk_refcount(rec.id, fixed, 1) is None  # the fixed form: Python's
    assert _native.chunk_refcount(member.group, enc.encode_chunk(member), 1) is None


def _mutations(data: bytes, pos: int, byte: int) -> list[bytes]:
    pos %= len(data)
    return [data[:pos], data + bytes((byte,)), data[:pos] + bytes((byte,)) + data[pos + 1:],
            data[:pos] + bytes((byte | 0x80,)) + data[pos:]]


@given(st.one_of(chunks, members), st.integers(0, 200), st.integers(0, 255),
       st.integers(-3, 3))
def test_damaged_records_get_the_references_answer(rec: ChunkRecord, pos: int, byte: int,
                                                   delta: int) -> None:
    for data in _mutations(enc.encode_chunk(rec), pos, byte):
        ref = _outcome(lambda d=data: enc.with_refcount_delta_reference(rec.id, d, delta))
        assert _outcome(lambda d=data: enc.with_refcount_delta(rec.id, d, delta)) == ref


@given(CID, st.sampled_from([b"\xfd", b"\xfc"]), st.binary(max_size=80), st.integers(-3, 3))
@example(bytes(16), b"\xfd", b"\x80\x80\x00\x05\x05\x00\x00", 1)  # non-canonical varint
def test_garbage_gets_the_references_answer(cid: bytes, mark: bytes, rest: bytes,
                                            delta: int) -> None:
    data = mark + rest
    ref = _outcome(lambda: enc.with_refcount_delta_reference(cid, data, delta))
    assert _outcome(lambda: enc.with_refcount_delta(cid, data, delta)) == ref
    assert len(cid) == CHUNK_ID_LEN


@given(manifests, U64)
@example(Manifest(0, ()), 1)
def test_c_manifests_are_the_references_and_round_trip(m: Manifest, ino: int) -> None:
    fixed, compact = _native.manifest_fixed(m.version, m.chunks), \
        _native.manifest_compact(m.version, m.chunks)
    assert fixed == enc.encode_manifest_reference(m)
    assert compact == enc.encode_manifest_compact_reference(m)
    assert enc.decode_manifest(ino, fixed) == m
    assert enc.decode_manifest(ino, compact) == m


def _entries_outcome(fn: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", fn()
    except MetadataDamagedError as exc:
        return "damaged", str(exc)


@settings(deadline=None)
@given(manifests, st.data())
@example(Manifest(0, ()), None)
def test_manifest_entries_are_the_decoders_and_damage_gets_its_error(
        m: Manifest, data: st.DataObject | None) -> None:
    """`manifest_entries` (C for the compact form) gives what `decode_manifest` gives,
    as plain values, for both forms; a damaged or cut record gets the decoder's error."""
    want = (m.version, tuple((c.id, c.length) for c in m.chunks))
    for record in (enc.encode_manifest(m), enc.encode_manifest_compact(m)):
        assert enc.manifest_entries(7, record) == want
        if data is None:
            continue
        pos = data.draw(st.integers(0, len(record)))
        bad = (record[:pos] + bytes([data.draw(st.integers(0, 255))]) + record[pos + 1:],
               record[:pos], record + b"\0")
        for damaged in bad:
            ref = _entries_outcome(lambda d=damaged: enc.decode_manifest(7, d))  # type: ignore[misc]
            if ref[0] == "ok":
                ref = ("ok", (ref[1].version,  # type: ignore[attr-defined]
                              tuple((c.id, c.length) for c in ref[1].chunks)))  # type: ignore[attr-defined]
            assert _entries_outcome(lambda d=damaged: enc.manifest_entries(7, d)) == ref  # type: ignore[misc]


#: Chunk ids and lengths a manifest must refuse, and ones only Python takes.
ODD_IDS = st.one_of(st.binary(max_size=20), st.binary(min_size=16, max_size=16).map(bytearray),
                    st.just("x" * 16))
ODD_LENGTHS = st.one_of(WIDE, st.just(1.5), st.just(True))


@given(manifests, WIDE, st.integers(0, 40), ODD_IDS, ODD_LENGTHS,
       st.sampled_from(["version", "id", "length"]))
def test_manifest_bad_fields_get_the_references_answer(m: Manifest, version: int, at: int,
                                                       cid: object, length: object,
                                                       which: str) -> None:
    chunks = list(m.chunks) or [ChunkRef(bytes(16), 1)]
    at %= len(chunks)
    if which == "version":
        m = Manifest(version, tuple(chunks))
    elif which == "id":
        chunks[at] = ChunkRef(cid, chunks[at].length)  # type: ignore[arg-type]
        m = Manifest(m.version, tuple(chunks))
    else:
        chunks[at] = ChunkRef(chunks[at].id, length)  # type: ignore[arg-type]
        m = Manifest(m.version, tuple(chunks))
    for fast, ref, c in ((enc.encode_manifest, enc.encode_manifest_reference,
                          _native.manifest_fixed),
                         (enc.encode_manifest_compact, enc.encode_manifest_compact_reference,
                          _native.manifest_compact)):
        want = _outcome(lambda r=ref: r(m))  # type: ignore[misc]
        assert _outcome(lambda f=fast: f(m)) == want  # type: ignore[misc]
        out = c(m.version, m.chunks)
        assert out is None or want == ("ok", out)


def _decoded(fn: Callable[[int, bytes], Inode], data: bytes) -> tuple[str, object]:
    try:
        return "ok", fn(7, data)
    except MetadataDamagedError as exc:
        return "damaged", str(exc)


@given(inodes)
@example(Inode(1, 0, Kind.FILE, 0, 0, 0, 0, -(1 << 63), (1 << 63) - 1, -(1 << 63)))
@example(Inode(1, U64_MAX, Kind.CHARDEV, 0xFFFF, U32_MAX, U32_MAX, U64_MAX,
               (1 << 62), -(1 << 62), (1 << 62) - 1, U64_MAX, "é字", U32_MAX, U64_MAX))
def test_c_inode_decoder_is_the_reference(inode: Inode) -> None:
    data = enc.encode_inode(inode)
    assert enc._decode_compact(inode.ino, data) == inode
    assert enc._decode_compact_reference(inode.ino, data) == inode
    # decoded in C, not deferred, unless a time gap's varint needs over 64 bits
    wide = any(enc._zigzag(gap) >> 64 for gap in (inode.ctime_ns - inode.mtime_ns,
                                                   inode.atime_ns - inode.ctime_ns))
    assert (_native.inode_fields(data) is None) == wide


@given(inodes, st.binary(max_size=40), st.integers(0, 80))
@example(Inode(1, 0, Kind.FILE, 0, 0, 0, 0, 1, 2, 3), b"\xff\xfe", 0)  # target not UTF-8
def test_c_inode_decoder_defers_every_damaged_record(inode: Inode, junk: bytes,
                                                     cut: int) -> None:
    """Truncated, extended or overwritten records: the C path gives what the reference
    gives, the same inode or the same MetadataDamagedError."""
    good = enc.encode_inode(inode)
    for data in (good[:cut], good + junk, good[:cut] + junk,
                 bytes([good[0]]) + junk + good[1 + len(junk):]):
        if not data or not data[0] & enc.INODE_COMPACT_BIT:
            continue
        assert _decoded(enc._decode_compact, data) == \
            _decoded(enc._decode_compact_reference, data)


def test_decode_inode_runs_the_reference_only_for_damaged_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    inode = Inode(7, 1, Kind.FILE, 0o644, 1000, 1000, 5, 3, 2, 3, 1)
    data = enc.encode_inode(inode)

    def refused(ino: int, data: bytes) -> Inode:
        raise AssertionError("the Python reference ran for a valid record")

    monkeypatch.setattr(enc, "_decode_compact_reference", refused)
    assert enc.decode_inode(7, data) == inode
    with pytest.raises(AssertionError, match="reference ran"):
        enc.decode_inode(7, data[:-1])


#: A put's new file: (name, refs, mode, uid, gid, mtime_ns), names of any code point
#: (lone surrogates: names that are not UTF-8) and length (past the key limit too).
new_files = st.tuples(
    st.one_of(st.text(max_size=12), st.text(min_size=500, max_size=520),
              st.sampled_from(["", "a\udcff", "é" * 252, "é" * 251])),
    st.lists(st.builds(ChunkRef, id=CID, length=st.one_of(U32, WIDE)), max_size=3),
    st.one_of(st.integers(0, 0o177777), WIDE), st.one_of(U32, WIDE), st.one_of(U32, WIDE),
    WIDE)


@settings(deadline=None)
@given(st.lists(new_files, max_size=5), st.one_of(U64, WIDE), st.one_of(U64, WIDE), WIDE,
       st.integers(0, 3))
@example([("f", [ChunkRef(b"\x01" * CHUNK_ID_LEN, 5)], 0o100644, 0, 0, 7)], 2, 10, 11, 2)
@example([("f", [], 0o100644, 0, 0, 7)] * 2, 2, U64_MAX, 11, 2)
def test_c_new_file_rows_are_the_references(files: list[enc.NewFile], parent: int, first: int,
                                            now: int, share_min: int) -> None:
    """`new_file_rows` (C) gives, byte for byte, what the row encoders give for each new
    file (`new_file_rows_reference`), or None where the reference raises: a field out of
    range, a name empty, not UTF-8 or over the key limit, numbers past 2^64."""
    c = enc.new_file_rows(parent, first, now, files, share_min, 511)
    try:
        ref = enc.new_file_rows_reference(parent, first, now, files, share_min, 511)
    except (ValueError, OverflowError) as exc:  # (UnicodeEncodeError is a ValueError)
        assert c is None, exc
        return
    if c is None:  # where the numbers run past 2^64, or an empty run's are out of range
        assert first + len(files) - 1 > U64_MAX or (not files and not (
            0 <= parent <= U64_MAX and 0 <= first <= U64_MAX and -(1 << 63) <= now < 1 << 63))
        return
    assert c == ref
    for k, (dkey, dval, ikey, ival, mval) in enumerate(c):
        assert enc.decode_dirent_ino(dval) == enc.decode_ino(ikey) == first + k
        assert enc.decode_dirent_key(dkey) == (parent, files[k][0])
        node = enc.decode_inode(first + k, ival)
        assert (node.kind, node.mode, node.size) == (
            Kind.FILE, files[k][2] & 0o7777, sum(r.length for r in files[k][1]))
        assert (mval is None) == (len(files[k][1]) >= share_min)
