"""Packs: builder + scanner roundtrip, keys, damage detection."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs.codec import BLOB_HEADER_LEN, chunk_id, decode_blob, encode_blob, parse_blob_header
from gfs.errors import CorruptChunkError, FormatError
from gfs.packs import (
    PACK_HEADER_LEN,
    PackBuilder,
    iter_pack_blobs,
    new_pack_id,
    owner_tag,
    pack_header,
    pack_key,
    parse_pack_head,
    parse_pack_header,
    parse_pack_key,
)
from gfs.pools import LocalPool

FAST = settings(max_examples=40, deadline=None)

chunk_lists = st.lists(
    st.one_of(
        st.binary(max_size=2000),
        st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=16), st.integers(1, 200)),
    ),
    max_size=20,
)


def build(raws: list[bytes], pack_id: bytes | None = None) -> tuple[PackBuilder, list[int]]:
    b = PackBuilder(pack_id)
    offsets = []
    for raw in raws:
        header, payload = encode_blob(raw)
        off, n = b.add(header, payload)
        assert n == BLOB_HEADER_LEN + len(payload)
        offsets.append(off)
    return b, offsets


def test_keys() -> None:
    pid = bytes.fromhex("ab" + "01" * 15)
    key = pack_key(pid)
    assert key == "packs/ab/ab" + "01" * 15 + ".pack"
    assert parse_pack_key(key) == pid
    for bad in (
        "packs/ac/ab" + "01" * 15 + ".pack",  # fan-out disagrees with the id
        "packs/ab/ab" + "01" * 14 + ".pack",
        "packs/AB/AB" + "01" * 15 + ".pack",
        "packs/ab/ab" + "01" * 15 + ".pak",
        "tmp/x",
        "",
    ):
        assert parse_pack_key(bad) is None, bad
    with pytest.raises(ValueError):
        pack_key(b"short")
    a, b = new_pack_id(), new_pack_id()
    assert len(a) == 16 and a != b
    assert parse_pack_key(pack_key(a)) == a


def test_header() -> None:
    pid = new_pack_id()
    h = pack_header(pid)
    assert len(h) == PACK_HEADER_LEN == 32
    assert h[:8] == b"HTPACK01" and h[8:24] == pid and h[24:] == bytes(8)
    assert parse_pack_header(h) == pid
    assert parse_pack_head(h) == (pid, bytes(8))  # version 1: no owner


def test_header_v2_carries_owner() -> None:
    pid, store_id = new_pack_id(), os.urandom(16)
    tag = owner_tag(store_id)
    h = pack_header(pid, tag)
    assert len(h) == PACK_HEADER_LEN
    assert h[:8] == b"HTPACK02" and h[8:24] == pid and h[24:] == store_id[:8]
    assert parse_pack_head(h) == (pid, tag)
    b = PackBuilder(owner=tag)
    b.add(*encode_blob(b"owned", 3))
    data = b"".join(b.parts())
    assert parse_pack_head(data) == (b.pack_id, tag)
    assert [h.chunk_id for _, h in iter_pack_blobs(data)] == [chunk_id(b"owned")]
    with pytest.raises(FormatError, match="without an owner"):
        parse_pack_head(b"HTPACK02" + pid + bytes(8))
    with pytest.raises(ValueError, match="owner tag"):
        pack_header(pid, b"short")


@FAST
@given(raws=chunk_lists)
def test_roundtrip(raws: list[bytes]) -> None:
    b, offsets = build(raws)
    assert b.nblobs == len(raws)
    data = b"".join(b.parts())
    assert len(data) == b.size
    assert data[:PACK_HEADER_LEN] == pack_header(b.pack_id)
    found = list(iter_pack_blobs(data, expect_id=b.pack_id))
    assert [off for off, _ in found] == offsets
    for (off, h), raw in zip(found, raws, strict=True):
        assert h.chunk_id == chunk_id(raw)
        assert decode_blob(data[off : off + h.blob_len], h.chunk_id) == raw


def test_empty_pack() -> None:
    b = PackBuilder()
    assert b.size == PACK_HEADER_LEN and b.nblobs == 0
    assert list(iter_pack_blobs(b"".join(b.parts()))) == []


def test_pack_through_a_pool(tmp_path: os.PathLike[str]) -> None:
    pool = LocalPool(os.fspath(tmp_path))
    raws = [os.urandom(1000), b"z" * 5000, b""]
    b, offsets = build(raws)
    key = pack_key(b.pack_id)
    pool.put(key, b.parts())
    assert pool.size(key) == b.size
    for off, raw in zip(offsets, raws, strict=True):
        h = parse_blob_header(pool.get(key, off, off + BLOB_HEADER_LEN))
        assert decode_blob(pool.get(key, off, off + h.blob_len)) == raw
    assert [o for o, _ in iter_pack_blobs(pool.get(key))] == offsets
    assert list(pool.list("packs/")) == [key]


def test_builder_rejects_inconsistent_blobs() -> None:
    b = PackBuilder()
    header, payload = encode_blob(b"some bytes")
    with pytest.raises(ValueError, match="payload has"):
        b.add(header, bytes(payload) + b"x")
    with pytest.raises(ValueError, match="36 bytes"):
        b.add(header[:35], payload)
    bad = bytearray(header)
    bad[10] ^= 1
    with pytest.raises(CorruptChunkError):
        b.add(bytes(bad), payload)
    assert b.nblobs == 0 and b.size == PACK_HEADER_LEN


def test_bad_pack_header() -> None:
    b, _ = build([b"abc"])
    data = bytearray(b"".join(b.parts()))
    with pytest.raises(FormatError, match="bad magic"):
        list(iter_pack_blobs(b"HTPACK09" + bytes(data[8:])))
    with pytest.raises(FormatError, match="too short"):
        list(iter_pack_blobs(data[:20]))
    with pytest.raises(FormatError, match="reserved"):
        list(iter_pack_blobs(data[:24] + b"\x01" + data[25:]))
    with pytest.raises(FormatError, match="expected"):
        list(iter_pack_blobs(data, expect_id=new_pack_id()))


def test_damaged_blob_header_names_offset() -> None:
    b, offsets = build([b"first" * 50, b"second" * 50, b"third" * 50])
    data = bytearray(b"".join(b.parts()))
    data[offsets[1] + 9] ^= 0x40  # raw length of the second blob
    seen = []
    with pytest.raises(CorruptChunkError) as ei:
        for off, _ in iter_pack_blobs(data):
            seen.append(off)
    assert seen == offsets[:1]
    msg = str(ei.value)
    assert f"offset {offsets[1]}" in msg and b.pack_id.hex() in msg
    assert chunk_id(b"second" * 50).hex() in msg


@FAST
@given(raws=chunk_lists.filter(bool), data=st.data())
def test_truncated_pack(raws: list[bytes], data: st.DataObject) -> None:
    b, _ = build(raws)
    whole = b"".join(b.parts())
    cut = data.draw(st.integers(PACK_HEADER_LEN, len(whole) - 1))
    blob_ends = set()
    for off, h in iter_pack_blobs(whole):
        blob_ends.add(off + h.blob_len)
    if cut in blob_ends or cut == PACK_HEADER_LEN:
        # A cut exactly between blobs looks like a shorter, valid pack.
        assert len(list(iter_pack_blobs(whole[:cut]))) <= len(raws)
        return
    with pytest.raises(CorruptChunkError, match=r"offset \d+"):
        list(iter_pack_blobs(whole[:cut]))


def test_trailing_garbage_in_pack() -> None:
    b, _ = build([b"abc" * 30])
    whole = b"".join(b.parts())
    with pytest.raises(CorruptChunkError, match="truncated header"):
        list(iter_pack_blobs(whole + b"junk"))
    with pytest.raises(CorruptChunkError, match="bad magic"):
        list(iter_pack_blobs(whole + bytes(64)))
