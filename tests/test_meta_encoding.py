"""Binary encodings of the metadata records: roundtrips, bad bytes, golden bytes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gfs.errors import FormatError
from gfs.meta import encoding as enc
from gfs.meta.records import (
    CHUNK_ID_LEN,
    PACK_ID_LEN,
    ChunkRecord,
    ChunkRef,
    Inode,
    Kind,
    Location,
    Manifest,
    PackRecord,
    PendingPack,
    PoolRecord,
)

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFF_FFFF)
U64 = st.integers(0, (1 << 64) - 1)
I64 = st.integers(-(1 << 63), (1 << 63) - 1)
CID = st.binary(min_size=CHUNK_ID_LEN, max_size=CHUNK_ID_LEN)
PID = st.binary(min_size=PACK_ID_LEN, max_size=PACK_ID_LEN)

inodes = st.builds(
    Inode,
    ino=U64,
    parent=U64,
    kind=st.sampled_from(Kind),
    mode=U16,
    uid=U32,
    gid=U32,
    size=U64,
    atime_ns=I64,
    mtime_ns=I64,
    ctime_ns=I64,
    version=U64,
    target=st.text(max_size=50),
    nlink=U32,
    rdev=U64,
)
manifests = st.builds(
    Manifest,
    version=U64,
    chunks=st.lists(st.builds(ChunkRef, id=CID, length=U32), max_size=40).map(tuple),
)
locations = st.builds(Location, pool=U16, pack=PID, offset=U64, length=U32)
chunks = st.builds(
    ChunkRecord,
    id=CID,
    raw_len=U32,
    stored_len=U32,
    codec=U8,
    refcount=U64,
    locations=st.lists(locations, max_size=6).map(tuple),
)
packs = st.builds(
    PackRecord,
    id=PID,
    pool=U16,
    size=U64,
    nchunks=U32,
    live_chunks=U32,
    live_bytes=U64,
    created_ns=I64,
)
pendings = st.builds(PendingPack, id=PID, pool=U16, writer=st.text(max_size=40), created_ns=I64)
pools = st.builds(
    PoolRecord,
    id=U16,
    name=st.text(max_size=20),
    url=st.text(max_size=60),
    tier=st.text(max_size=10),
    capacity=U64,
)


# -- roundtrips -------------------------------------------------------------------------


@given(inodes)
def test_inode_roundtrip(inode: Inode) -> None:
    assert enc.decode_inode(inode.ino, enc.encode_inode(inode)) == inode


@given(manifests, U64)
def test_manifest_roundtrip(m: Manifest, ino: int) -> None:
    data = enc.encode_manifest(m)
    assert len(data) == 12 + 20 * len(m.chunks)
    assert enc.decode_manifest(ino, data) == m


@given(chunks)
def test_chunk_roundtrip(rec: ChunkRecord) -> None:
    data = enc.encode_chunk(rec)
    assert data[0] == enc.CHUNK_COMPACT and len(data) % 30 != 18  # never the fixed form
    assert enc.decode_chunk(rec.id, data) == rec
    for delta in (0, 1, -rec.refcount):
        if rec.refcount + delta >= 1 << 64:  # past the format's u64: refused, not wrapped
            with pytest.raises(ValueError, match="out of range"):
                enc.with_refcount_delta(rec.id, data, delta)
            continue
        assert enc.decode_chunk(rec.id, enc.with_refcount_delta(rec.id, data, delta)) == \
            replace(rec, refcount=rec.refcount + delta)
    with pytest.raises(FormatError, match="below zero"):
        enc.with_refcount_delta(rec.id, data, -rec.refcount - 1)


@given(packs)
def test_pack_roundtrip(rec: PackRecord) -> None:
    assert enc.decode_pack(rec.id, enc.encode_pack(rec)) == rec


@given(pendings)
def test_pending_roundtrip(rec: PendingPack) -> None:
    assert enc.decode_pending(rec.id, enc.encode_pending(rec)) == rec


@given(pools)
def test_pool_roundtrip(rec: PoolRecord) -> None:
    assert enc.decode_pool(rec.id, enc.encode_pool(rec)) == rec
    assert enc.decode_pool_key(enc.pool_key(rec.id)) == rec.id


@given(U64, st.text(min_size=1, max_size=40))
def test_dirent_key_roundtrip(parent: int, name: str) -> None:
    key = enc.dirent_key(parent, name)
    assert key[:8] == parent.to_bytes(8, "big")
    assert enc.decode_dirent_key(key) == (parent, name)


@given(U64, U64)
def test_ino_keys_sort_as_numbers(a: int, b: int) -> None:
    assert enc.decode_ino(enc.encode_ino(a)) == a
    assert (enc.encode_ino(a) < enc.encode_ino(b)) == (a < b)
    assert enc.decode_u64("x", enc.encode_u64(a)) == a


# -- bad bytes -------------------------------------------------------------------------------


def _all_truncations(data: bytes) -> list[bytes]:
    return [data[:n] for n in range(len(data))]


def test_inode_links_extension() -> None:
    """nlink 1 and rdev 0 are not stored; others set the kind's high bit and follow."""
    base = Inode(5, 1, Kind.FILE, 0o644, 0, 0, 3, 1, 2, 3, 1)
    plain = enc.encode_inode(base)
    assert plain[0] == Kind.FILE | enc.INODE_COMPACT_BIT
    linked = enc.encode_inode(Inode(5, 0, Kind.CHARDEV, 0o600, 0, 0, 0, 1, 2, 3, 0, "",
                                    nlink=3, rdev=0x0103))
    assert linked[0] == Kind.CHARDEV | enc.INODE_HAS_LINKS | enc.INODE_COMPACT_BIT
    assert linked[-3:] == bytes([3, 0x83, 0x02])  # nlink 3, rdev 0x0103 as varints
    with pytest.raises(FormatError, match="inode 5: compact record truncated"):
        enc.decode_inode(5, linked[:-1])
    narrow = enc.INODE_NARROW.pack(Kind.CHARDEV | enc.INODE_NARROW_BIT | enc.INODE_HAS_LINKS,
                                   0o600, 0, 0, 0, 0, 0, 1, 2, 3)
    with pytest.raises(FormatError, match="link count field truncated"):
        enc.decode_inode(5, narrow + (3).to_bytes(4, "little"))


@settings(max_examples=30)
@given(inodes)
def test_truncated_inode(inode: Inode) -> None:
    data = enc.encode_inode(inode)
    head = len(data) - len(inode.target.encode("utf-8"))  # the target may be cut
    for cut in _all_truncations(data)[:head]:
        with pytest.raises(FormatError, match=f"inode {inode.ino}"):
            enc.decode_inode(inode.ino, cut)


@settings(max_examples=30)
@given(manifests)
def test_truncated_or_extended_manifest(m: Manifest) -> None:
    data = enc.encode_manifest(m)
    for cut in [*_all_truncations(data), data + b"\x00"]:
        if cut[:1] == enc.MANIFEST_COMPACT:  # version 253 mod 256: the cut may read as a
            with contextlib.suppress(FormatError):  # compact record, never as `m`
                assert enc.decode_manifest(3, cut) != m
            continue
        with pytest.raises(FormatError, match="manifest of inode 3"):
            enc.decode_manifest(3, cut)


@settings(max_examples=30)
@given(chunks)
@example(ChunkRecord(bytes(16), 1 << 28, 1 << 28, 0, 1 << 21, ()))  # drawn in CI: + b"\0"
def test_truncated_or_extended_chunk(rec: ChunkRecord) -> None:
    for data in (enc.encode_chunk(rec), _fixed_chunk(rec)):
        for cut in [*_all_truncations(data), data + b"\x00"]:
            compact = data[0] == enc.CHUNK_COMPACT
            if (not compact and cut[:1] in (b"\xfd", b"\xfc")) or (compact and _fixed_length(cut)):
                # refcount 252/253 mod 256: the cut of a fixed record may read as a compact
                # or folded one; a compact record cut or extended to a fixed record's length
                # may read as a fixed one (docs/format.md): never as `rec`
                with contextlib.suppress(FormatError):
                    assert enc.decode_chunk(rec.id, cut) != rec
                continue
            with pytest.raises(FormatError, match=f"chunk record {rec.id.hex()}"):
                enc.decode_chunk(rec.id, cut)


def _fixed_length(data: bytes) -> bool:
    """True when `data` is as long as the fixed chunk record its own header describes."""
    if len(data) < enc._CHUNK_HEAD.size:
        return False
    n = enc._CHUNK_HEAD.unpack_from(data)[4]
    return len(data) == enc._CHUNK_HEAD.size + n * enc._LOCATION.size


def _fixed_chunk(rec: ChunkRecord) -> bytes:
    """The fixed chunk record of formats 1 and 2."""
    return enc._CHUNK_HEAD.pack(rec.refcount, rec.raw_len, rec.stored_len, rec.codec,
                                len(rec.locations)) + b"".join(
        enc._LOCATION.pack(x.pool, x.pack, x.offset, x.length) for x in rec.locations)


@settings(max_examples=30)
@given(packs, pendings)
def test_truncated_pack_and_pending(p: PackRecord, q: PendingPack) -> None:
    data = enc.encode_pack(p)
    for cut in [*_all_truncations(data), data + b"\x00"]:
        with pytest.raises(FormatError, match="pack record"):
            enc.decode_pack(p.id, cut)
    for cut in _all_truncations(enc.encode_pending(q))[:10]:
        with pytest.raises(FormatError, match="pending pack"):
            enc.decode_pending(q.id, cut)


@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_other_errors(data: bytes) -> None:
    """Random bytes either decode to a record or raise FormatError, nothing else."""
    decoders: list[Callable[[], object]] = [
        lambda: enc.decode_inode(9, data),
        lambda: enc.decode_manifest(9, data),
        lambda: enc.decode_chunk(b"\x01" * 16, data),
        lambda: enc.decode_pack(b"\x02" * 16, data),
        lambda: enc.decode_pending(b"\x03" * 16, data),
        lambda: enc.decode_pool(9, data),
        lambda: enc.decode_dirent_key(data),
        lambda: enc.decode_ino(data),
    ]
    for decode in decoders:
        with contextlib.suppress(FormatError):
            decode()


def test_specific_garbage() -> None:
    head = enc.INODE_HEADER.pack(9, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(FormatError, match="inode 4: unknown kind 9"):
        enc.decode_inode(4, head)
    good = enc.INODE_HEADER.pack(3, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(FormatError, match="not UTF-8"):
        enc.decode_inode(4, good + b"\xff\xfe")
    with pytest.raises(FormatError, match="header says 1000000 entries"):
        enc.decode_manifest(4, (7).to_bytes(8, "little") + (10**6).to_bytes(4, "little"))
    for bad in (b"", b"[]", b"{}", b"\xff", b'{"name":"a","url":"u","tier":"t","capacity":-1}'):
        with pytest.raises(FormatError, match="pool 3"):
            enc.decode_pool(3, bad)
    with pytest.raises(FormatError, match="directory entry"):
        enc.decode_dirent_key(b"\x00" * 8 + b"\xff")
    with pytest.raises(FormatError, match="next_ino"):
        enc.decode_u64("meta next_ino", b"\x01")


def test_unrepresentable_records_rejected() -> None:
    ok = Inode(5, 1, Kind.FILE, 0o644, 0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="inode 5"):
        enc.encode_inode(Inode(5, 1, Kind.FILE, 0o644, 1 << 32, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="inode 5"):
        enc.encode_inode(Inode(5, 1, 9, 0o644, 0, 0, 0, 0, 0, 0))  # type: ignore[arg-type]
    assert enc.encode_inode(ok)
    with pytest.raises(ValueError, match="manifest entry 1"):
        enc.encode_manifest(Manifest(1, (ChunkRef(b"a" * 16, 1), ChunkRef(b"b" * 15, 1))))
    with pytest.raises(ValueError, match="manifest"):
        enc.encode_manifest(Manifest(1, (ChunkRef(b"a" * 16, 1 << 32),)))
    loc = Location(0, b"p" * 16, 0, 1)
    with pytest.raises(ValueError, match="chunk"):
        enc.encode_chunk(ChunkRecord(b"c" * 16, 1, 1, 0, 1, (loc,) * 256))
    with pytest.raises(ValueError, match="pack id"):
        enc.encode_chunk(ChunkRecord(b"c" * 16, 1, 1, 0, 1, (Location(0, b"p", 0, 1),)))
    with pytest.raises(ValueError, match="pack record"):
        enc.encode_pack(PackRecord(b"p" * 16, 1 << 16, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="pool id"):
        enc.encode_pool(PoolRecord(1 << 16, "x", "u"))
    with pytest.raises(ValueError, match="empty name"):
        enc.dirent_key(1, "")


# -- golden bytes: these freeze format versions 1, 2 and 3 ----------------------------


def test_golden_inode() -> None:
    inode = Inode(5, 1, Kind.SYMLINK, 0o755, 1000, 100, 7, 1, 2, 3, version=4, target="é/x")
    golden = bytes.fromhex(
        "03"  # kind symlink
        "ed01"  # mode 0o755
        "e8030000"  # uid 1000
        "64000000"  # gid 100
        "0100000000000000"  # parent 1
        "0700000000000000"  # size 7
        "0100000000000000"  # atime_ns
        "0200000000000000"  # mtime_ns
        "0300000000000000"  # ctime_ns
        "0400000000000000"  # version
        "c3a92f78"  # target "é/x"
    )
    assert enc.decode_inode(5, golden) == inode  # format 1's record still reads
    narrow = bytes.fromhex(  # format 2 writes the narrow record
        "43"  # kind symlink | 0x40 (narrow)
        "ed01"  # mode 0o755
        "e803"  # uid 1000
        "6400"  # gid 100
        "01000000"  # parent 1
        "07000000"  # size 7
        "04000000"  # version
        "0100000000000000"  # atime_ns
        "0200000000000000"  # mtime_ns
        "0300000000000000"  # ctime_ns
        "c3a92f78"  # target "é/x"
    )
    assert enc.decode_inode(5, narrow) == inode  # format 2's record still reads
    compact = bytes.fromhex(  # format 3 writes the compact record
        "23"  # kind symlink | 0x20 (compact); 0x10 clear: atime != ctime
        "ed03"  # mode 0o755 (varint)
        "e807"  # uid 1000
        "64"  # gid 100
        "01"  # parent 1
        "07"  # size 7
        "04"  # version 4
        "0200000000000000"  # mtime_ns 2
        "02"  # ctime_ns - mtime_ns = 1 (zigzag)
        "03"  # atime_ns - ctime_ns = -2 (zigzag)
        "c3a92f78"  # target "é/x"
    )
    assert enc.encode_inode(inode) == compact
    assert enc.decode_inode(5, compact) == inode
    put = replace(inode, kind=Kind.FILE, target="", atime_ns=3)  # atime == ctime: not stored
    assert enc.encode_inode(put) == bytes.fromhex("31ed03e807640107040200000000000000" "02")
    assert enc.encode_ino(5) == bytes.fromhex("0000000000000005")
    assert enc.dirent_key(256, "é") == bytes.fromhex("0000000000000100c3a9")


def test_golden_manifest() -> None:
    m = Manifest(2, (ChunkRef(bytes(range(16)), 65536), ChunkRef(b"\xff" * 16, 1)))
    golden = bytes.fromhex(
        "0200000000000000"  # version 2
        "02000000"  # count 2
        "000102030405060708090a0b0c0d0e0f"
        "00000100"  # id, length 65536
        "ffffffffffffffffffffffffffffffff"
        "01000000"  # id, length 1
    )
    assert enc.encode_manifest(m) == golden
    assert enc.decode_manifest(1, golden) == m
    assert enc.encode_manifest(Manifest(0, ())) == bytes(12)


def test_golden_chunk_pack_pending_pool() -> None:
    rec = ChunkRecord(bytes(range(16)), 100, 60, 1, 3, (Location(1, b"\xaa" * 16, 32, 96),))
    golden = bytes.fromhex(
        "0300000000000000"  # refcount 3
        "64000000"  # raw 100
        "3c000000"  # stored 60
        "01"  # codec zstd
        "01"  # 1 location
        "0100" + "aa" * 16 + "2000000000000000"
        "60000000"  # pool, pack, offset, length
    )
    assert _fixed_chunk(rec) == golden
    assert enc.decode_chunk(rec.id, golden) == rec  # formats 1 and 2 still read
    assert enc.decode_chunk(rec.id, enc.with_refcount_delta(rec.id, golden, 2)) == \
        replace(rec, refcount=5)
    compact = bytes.fromhex(
        "fd"  # compact chunk record (format 3)
        "03" "64" "3c"  # refcount 3, raw 100, stored 60
        "01" "01"  # codec zstd, 1 location
        "01" + "aa" * 16 + "20" "60"  # pool 1, pack, offset 32, length 96
    )
    assert enc.encode_chunk(rec) == compact and len(compact) == 25  # 48 fixed
    assert enc.decode_chunk(rec.id, compact) == rec
    big = replace(rec, locations=(), refcount=1 << 56, raw_len=1 << 14, stored_len=1 << 14)
    padded = enc.encode_chunk(big)
    assert len(padded) == 19 and padded[-1] == 0  # 18 bytes padded: never the fixed form
    assert enc.decode_chunk(rec.id, padded) == big
    with pytest.raises(FormatError, match="compact record"):
        enc.decode_chunk(rec.id, padded[:-1] + b"\x01")
    pack = PackRecord(b"\x01" * 16, 2, 4096, 3, 2, 1000, -1)
    assert enc.encode_pack(pack) == bytes.fromhex(
        "020000100000000000000300000002000000e803000000000000ffffffffffffffff"
    )
    pending = PendingPack(b"\x01" * 16, 1, "w:1", 5)
    assert enc.encode_pending(pending) == bytes.fromhex("01000500000000000000") + b"w:1"
    pool = PoolRecord(0, "default", "file:///s/pools/default")
    assert enc.encode_pool(pool) == (
        b'{"capacity":0,"name":"default","tier":"warm","url":"file:///s/pools/default"}'
    )
    assert enc.pool_key(258) == b"\x01\x02"


# -- speed ------------------------------------------------------------------------------------


def test_large_manifest_is_fast() -> None:
    m = Manifest(1, tuple(ChunkRef(i.to_bytes(16, "big"), 65536) for i in range(100_000)))
    t0 = time.perf_counter()
    data = enc.encode_manifest(m)
    t1 = time.perf_counter()
    back = enc.decode_manifest(1, data)
    t2 = time.perf_counter()
    assert back == m
    # Generous bounds (shared CI machines); typical figures are ~10 ms and ~55 ms.
    assert t1 - t0 < 1.0
    assert t2 - t1 < 2.0


def test_narrow_and_wide_inode_records_still_read() -> None:
    """Format 3 writes only compact records; the narrow (format 2) and wide (format 1)
    ones that older stores hold read back exactly."""
    n = Inode(7, 2, Kind.FILE, 0o100644, 1000, 1000, (1 << 32) - 1, -5, 1 << 62, 3,
              (1 << 32) - 1)
    narrow = enc.INODE_NARROW.pack(Kind.FILE | enc.INODE_NARROW_BIT, n.mode, n.uid, n.gid,
                                   n.parent, n.size, n.version, n.atime_ns, n.mtime_ns,
                                   n.ctime_ns)
    assert enc.decode_inode(7, narrow) == n
    w = replace(n, uid=1 << 16, parent=1 << 32, size=1 << 40, version=1 << 33)
    wide = enc.INODE_HEADER.pack(Kind.FILE, w.mode, w.uid, w.gid, w.parent, w.size,
                                 w.atime_ns, w.mtime_ns, w.ctime_ns, w.version)
    assert enc.decode_inode(7, wide) == w


def test_compact_inode_record_of_a_put_file_is_small() -> None:
    """A file as a put writes it (atime = ctime, 16-bit ids, small size) takes 23 bytes,
    not 43; extreme values still round-trip (checked by the property test too)."""
    node = Inode(6, 5, Kind.FILE, 0o644, 0, 0, 43110, 1796472397279968834,
                 1796472382505441496, 1796472397279968834, 1)
    assert len(enc.encode_inode(node)) == 23
    for extreme in (replace(node, mtime_ns=-(1 << 63), ctime_ns=(1 << 63) - 1,
                            atime_ns=-(1 << 63)),
                    replace(node, size=(1 << 64) - 1, nlink=(1 << 32) - 1,
                            rdev=(1 << 64) - 1)):
        assert enc.decode_inode(6, enc.encode_inode(extreme)) == extreme


def test_damaged_compact_inode_records_are_format_errors() -> None:
    node = enc.encode_inode(Inode(6, 5, Kind.FILE, 0o644, 0, 0, 9, 1, 1, 1, 1))
    too_long = node[:1] + b"\xff" * 10 + b"\x01" + node[2:]  # mode varint of 11 bytes
    over = node[:1] + b"\xff\xff\x04" + node[3:]  # mode over 16 bits
    kind = bytes([node[0] | 0x08]) + node[1:]
    for bad, why in ((too_long, "over 64 bits"), (over, "out of range"),
                     (kind, "unknown kind")):
        with pytest.raises(FormatError, match=f"inode 6: .*{why}"):
            enc.decode_inode(6, bad)
    top = (1 << 63) - 1
    huge = enc.encode_inode(Inode(6, 5, Kind.FILE, 0o644, 0, 0, 9, top, top, top, 1))
    assert huge[-1] == 0  # ctime - mtime
    with pytest.raises(FormatError, match="out of range"):  # ctime = mtime + 1 overflows
        enc.decode_inode(6, huge[:-1] + b"\x02")


@given(U64)
def test_dirent_value_is_the_shortest_big_endian_ino(ino: int) -> None:
    data = enc.encode_dirent_ino(ino)
    assert 1 <= len(data) <= 8 and (len(data) == 1 or data[0])
    assert enc.decode_dirent_ino(data) == ino
    assert enc.decode_dirent_ino(enc.encode_ino(ino)) == ino  # formats 1 and 2: 8 bytes


def test_golden_dirent_value_and_damage() -> None:
    assert enc.encode_dirent_ino(0x1E240) == bytes.fromhex("01e240")  # 3 bytes, was 8
    edges = ((0, "00"), (1, "01"), (0xFF, "ff"), (0x100, "0100"), (0xFFFF, "ffff"),
             (0x10000, "010000"), (0xFFFFFF, "ffffff"), (0x1000000, "01000000"))
    for ino, want in edges:  # those of the shortcut for numbers below 2**24
        assert enc.encode_dirent_ino(ino) == bytes.fromhex(want)
    assert enc.encode_dirent_ino(0) == b"\x00"
    for bad in (b"", b"\x01" * 9):
        with pytest.raises(FormatError, match="directory entry value"):
            enc.decode_dirent_ino(bad)
    with pytest.raises(ValueError, match="not a u64"):
        enc.encode_dirent_ino(1 << 64)


@given(manifests, U64)
def test_compact_manifest_roundtrip_and_never_a_fixed_length(m: Manifest, ino: int) -> None:
    data = enc.encode_manifest_compact(m)
    assert enc.decode_manifest(ino, data) == m
    assert len(data) % 20 not in (8, 12)  # never read as the fixed or the shared form
    for cut in _all_truncations(data)[1:]:
        if len(cut) % 20 != 12:  # (a cut of that length reads as the fixed form: damaged)
            with pytest.raises(FormatError, match=f"manifest of inode {ino}"):
                enc.decode_manifest(ino, cut)
    with pytest.raises(FormatError, match=f"manifest of inode {ino}"):
        enc.decode_manifest(ino, data + b"\x00\x01")


def test_golden_compact_manifest() -> None:
    one = Manifest(1, (ChunkRef(bytes(range(16)), 3000),))
    golden = bytes.fromhex("fd" "01" "01" "b817" "000102030405060708090a0b0c0d0e0f")
    assert enc.encode_manifest_compact(one) == golden and len(golden) == 21  # fixed: 32
    assert enc.decode_manifest(9, golden) == one
    empty = enc.encode_manifest_compact(Manifest(7, ()))
    assert empty == bytes.fromhex("fd0700")
    padded = enc.encode_manifest_compact(Manifest(1 << 35, ()))  # 8 bytes: one pad byte
    assert padded == bytes.fromhex("fd" "8080808080" "01" "00" "00")
    assert enc.decode_manifest(9, padded) == Manifest(1 << 35, ())
    with pytest.raises(FormatError, match="manifest of inode 9"):
        enc.decode_manifest(9, padded[:-1] + b"\x01")  # the pad byte must be zero


# -- folded group members (format 4) -------------------------------------------------

members = st.builds(
    ChunkRecord,
    id=CID,
    raw_len=U32,
    stored_len=st.just(0),
    codec=st.just(3),
    refcount=U64,
    locations=st.just(()),
    group=CID,
    group_offset=U32,
).filter(lambda r: r.group != r.id)


@given(members)
def test_member_roundtrip(rec: ChunkRecord) -> None:
    data = enc.encode_chunk(rec)
    assert data[0] == enc.CHUNK_MEMBER and len(data) % 30 != 18
    assert len(data) <= 1 + 10 + 5 + 16 + 5 + 1
    assert enc.decode_chunk(rec.id, data) == rec
    if rec.refcount + 1 < 1 << 64:
        bumped = enc.with_refcount_delta(rec.id, data, 1)
        assert enc.decode_chunk(rec.id, bumped) == replace(rec, refcount=rec.refcount + 1)
    with pytest.raises(FormatError, match="below zero"):
        enc.with_refcount_delta(rec.id, data, -rec.refcount - 1)


@settings(max_examples=50)
@given(members)
def test_truncated_or_extended_member(rec: ChunkRecord) -> None:
    data = enc.encode_chunk(rec)
    for cut in [*_all_truncations(data), data + b"\x00", data + b"\x01"]:
        if len(cut) % 30 == 18:  # the fixed form's lengths: may read as a fixed record,
            with contextlib.suppress(FormatError):  # never as `rec`
                assert enc.decode_chunk(rec.id, cut) != rec
            continue
        with pytest.raises(FormatError, match=f"chunk record {rec.id.hex()}"):
            enc.decode_chunk(rec.id, cut)


@given(members, st.sampled_from(["codec", "stored", "location", "self", "short", "offset"]))
def test_malformed_member_refused(rec: ChunkRecord, what: str) -> None:
    bad = {
        "codec": replace(rec, codec=1),
        "stored": replace(rec, stored_len=1),
        "location": replace(rec, locations=(Location(1, b"p" * PACK_ID_LEN, 0, 1),)),
        "self": replace(rec, group=rec.id),
        "short": replace(rec, group=rec.group[:8]),
        "offset": replace(rec, group_offset=1 << 32),
    }[what]
    with pytest.raises(ValueError, match=f"chunk {rec.id.hex()}"):
        enc.encode_chunk(bad)


def test_golden_member() -> None:
    rec = ChunkRecord(b"\x01" * 16, 3000, 0, 3, 2, (), b"\x02" * 16, 70000)
    data = enc.encode_chunk(rec)
    assert data == bytes.fromhex("fc02b817" + "02" * 16 + "f0a204")
    assert enc.decode_chunk(rec.id, data) == rec


def test_member_decoded_against_its_own_id_is_refused() -> None:
    rec = ChunkRecord(b"\x01" * 16, 3000, 0, 3, 2, (), b"\x02" * 16, 7)
    with pytest.raises(FormatError, match="chunk record 0202"):
        enc.decode_chunk(b"\x02" * 16, enc.encode_chunk(rec))


@given(inodes, inodes, st.sets(st.sampled_from(
    ["parent", "kind", "mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns",
     "version", "target", "nlink", "rdev"])))
def test_inode_with_is_dataclasses_replace(node: Inode, other: Inode, changed: set[str]
                                           ) -> None:
    """`inode_with` (the namespace's fast replace) changes exactly the fields named."""
    from gfs.meta.records import inode_with

    changes = {k: getattr(other, k) for k in changed}
    assert inode_with(node, **changes) == replace(node, **changes)


@given(inodes)
def test_new_inode_is_the_dataclass_constructor(node: Inode) -> None:
    """`new_inode` (slots set straight) builds the same frozen, hashable record."""
    from dataclasses import FrozenInstanceError, astuple

    from gfs.meta.records import new_inode

    made = new_inode(*astuple(node))
    assert made == node and hash(made) == hash(node) and repr(made) == repr(node)
    assert enc.encode_inode(made) == enc.encode_inode(node)
    with pytest.raises(FrozenInstanceError):
        made.size = 1  # type: ignore[misc]


@given(chunks, st.integers(0, 1 << 40))
def test_chunk_record_and_with_refcount_are_the_dataclass(rec: ChunkRecord, count: int) -> None:
    """`chunk_record` and `with_refcount` (the commit's fast record builders) make the
    same frozen, hashable record as the constructor and `dataclasses.replace`."""
    from dataclasses import FrozenInstanceError, astuple

    from gfs.meta.records import chunk_record, with_refcount

    made = chunk_record(*astuple(rec)[:5], rec.locations, rec.group, rec.group_offset)
    assert made == rec and hash(made) == hash(rec) and repr(made) == repr(rec)
    assert enc.encode_chunk(made) == enc.encode_chunk(rec)
    short = chunk_record(rec.id, rec.raw_len, rec.stored_len, rec.codec, rec.refcount,
                         rec.locations)
    assert short == ChunkRecord(rec.id, rec.raw_len, rec.stored_len, rec.codec, rec.refcount,
                                rec.locations)
    counted = with_refcount(rec, count)
    assert counted == replace(rec, refcount=count)
    assert hash(counted) == hash(replace(rec, refcount=count))
    with pytest.raises(FrozenInstanceError):
        made.refcount = 1  # type: ignore[misc]
