"""`verify_blob`: decode_blob's checks for a reader that keeps the blob (a disk tier's
fetch): every damage decode_blob refuses is refused, a raw blob is hashed in place."""

from __future__ import annotations

import os

import pytest

from gfs.codec import BLOB_HEADER_LEN, chunk_id, decode_blob, encode_blob, verify_blob
from gfs.errors import CorruptChunkError


def _blob(raw: bytes) -> bytes:
    return b"".join(bytes(p) for p in encode_blob(raw, cid=chunk_id(raw)))


RANDOM = os.urandom(70_000)  # stored raw: zstd does not pay
TEXT = b"hutong " * 10_000  # stored compressed


@pytest.mark.parametrize("raw", [RANDOM, TEXT], ids=["raw", "zstd"])
def test_a_whole_blob_verifies(raw: bytes) -> None:
    verify_blob(_blob(raw), chunk_id(raw))


def _flip(b: bytes, at: int) -> bytes:
    return b[:at] + bytes([b[at] ^ 1]) + b[at + 1:]


@pytest.mark.parametrize("raw", [RANDOM, TEXT], ids=["raw", "zstd"])
@pytest.mark.parametrize("damage", ["payload", "header", "truncated", "trailing", "other id"])
def test_every_damage_decode_blob_refuses_is_refused(raw: bytes, damage: str) -> None:
    blob, cid = _blob(raw), chunk_id(raw)
    bad = {"payload": lambda: _flip(blob, len(blob) - 5),
           "header": lambda: _flip(blob, 8),
           "truncated": lambda: blob[:-1],
           "trailing": lambda: blob + b"\0",
           "other id": lambda: _blob(raw + b"x")}[damage]()
    with pytest.raises(CorruptChunkError):
        decode_blob(bad, expect_id=cid)
    with pytest.raises(CorruptChunkError):
        verify_blob(bad, cid)


def test_a_raw_blob_is_hashed_in_place() -> None:
    blob = bytearray(_blob(RANDOM))
    assert blob[BLOB_HEADER_LEN:] == RANDOM
    verify_blob(memoryview(blob), chunk_id(RANDOM))  # a view: nothing asked of bytes
