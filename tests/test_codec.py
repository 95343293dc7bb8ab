"""Blob codec: roundtrip, verification of every kind of damage, golden bytes."""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfs.codec import (
    BLOB_HEADER_LEN,
    CHUNK_ID_LEN,
    CODEC_RAW,
    CODEC_ZSTD,
    BlobHeader,
    chunk_id,
    decode_blob,
    encode_blob,
    encode_blobs,
    parse_blob_header,
)
from gfs.errors import CorruptChunkError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bytes that compress well, bytes that do not, and mixtures.
chunks = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=32), st.integers(1, 300)),
    st.builds(lambda n: os.urandom(n), st.integers(0, 3000)),
)


def blob_of(raw: bytes, level: int = 3) -> bytes:
    header, payload = encode_blob(raw, level)
    return header + bytes(payload)


def compressible(n: int = 20000) -> bytes:
    return (b"the quick brown fox jumps over the lazy dog %d\n" % 7) * (n // 47 + 1)


# -- constants and ids --------------------------------------------------------------


def test_constants() -> None:
    assert CHUNK_ID_LEN == 16 and BLOB_HEADER_LEN == 36
    assert (CODEC_RAW, CODEC_ZSTD) == (0, 1)


def test_chunk_id_is_canonical_xxh3_128() -> None:
    assert chunk_id(b"") == bytes.fromhex("99aa06d3014798d86001c324468d497f")
    data = b"abc" * 100
    assert chunk_id(data) == xxhash.xxh3_128(data).digest()
    assert chunk_id(memoryview(data)) == chunk_id(bytearray(data)) == chunk_id(data)
    assert len(chunk_id(data)) == CHUNK_ID_LEN


# -- roundtrip -----------------------------------------------------------------------


@FAST
@given(raw=chunks, level=st.integers(1, 9))
def test_roundtrip(raw: bytes, level: int) -> None:
    header, payload = encode_blob(raw, level)
    h = parse_blob_header(header)
    assert h.raw_len == len(raw) and h.payload_len == len(payload) and h.flags == 0
    assert h.chunk_id == chunk_id(raw)
    assert h.blob_len == BLOB_HEADER_LEN + len(payload)
    if h.codec == CODEC_ZSTD:
        assert len(payload) < len(raw) - len(raw) // 64
    else:
        assert bytes(payload) == raw
    blob = header + bytes(payload)
    assert decode_blob(blob) == raw
    assert decode_blob(memoryview(blob), expect_id=chunk_id(raw)) == raw
    assert decode_blob(bytearray(blob)) == raw


def test_compressible_uses_zstd_and_incompressible_raw() -> None:
    header, payload = encode_blob(compressible())
    assert parse_blob_header(header).codec == CODEC_ZSTD
    noise = os.urandom(65536)
    header, payload = encode_blob(noise)
    h = parse_blob_header(header)
    assert h.codec == CODEC_RAW and payload is noise  # stored as-is, not copied
    for tiny in (b"", b"a", b"abcdefghi"):  # a zstd frame takes at least 9 bytes
        assert parse_blob_header(encode_blob(tiny)[0]).codec == CODEC_RAW


def test_margin_rule() -> None:
    # zstd is kept only when it saves more than raw // 64 bytes.
    noise = os.urandom(6400)
    in_band = 0
    for tail in range(0, 400, 10):
        raw = noise + bytes(tail)
        packed = zstandard.ZstdCompressor(level=3, write_checksum=False).compress(raw)
        header, _ = encode_blob(raw)
        keep = len(packed) < len(raw) - len(raw) // 64
        assert parse_blob_header(header).codec == (CODEC_ZSTD if keep else CODEC_RAW)
        in_band += len(packed) < len(raw) and not keep
    assert in_band  # some inputs shrink a little and are still stored raw


def test_deterministic_and_caller_id() -> None:
    raw = compressible(50000)
    a = encode_blob(raw, 5)
    b = encode_blob(raw, 5)
    assert a[0] == b[0] and bytes(a[1]) == bytes(b[1])
    cid = chunk_id(raw)
    assert encode_blob(raw, 5, cid=cid)[0] == a[0]
    with pytest.raises(ValueError, match="16 bytes"):
        encode_blob(raw, 3, cid=b"short")


def test_thread_pool_encode_decode() -> None:
    inputs = [compressible(10000 + i) + os.urandom(i) for i in range(64)]

    def work(raw: bytes) -> bool:
        h, p = encode_blob(raw, 3)
        return decode_blob(h + bytes(p), chunk_id(raw)) == raw

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(work, inputs))


# -- damage -------------------------------------------------------------------------


@FAST
@given(raw=chunks, data=st.data())
def test_any_byte_flip_is_detected(raw: bytes, data: st.DataObject) -> None:
    blob = blob_of(raw)
    positions = data.draw(
        st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8, unique=True)
    )
    mask = data.draw(st.integers(1, 255))
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= mask
        with pytest.raises(CorruptChunkError):
            decode_blob(bad)


def test_every_byte_flip_of_small_blobs() -> None:
    for raw in (b"hutong", compressible(600)):
        blob = blob_of(raw)
        for pos in range(len(blob)):
            for mask in (0x01, 0x80):
                bad = bytearray(blob)
                bad[pos] ^= mask
                with pytest.raises(CorruptChunkError):
                    decode_blob(bad)


@FAST
@given(raw=chunks, data=st.data())
def test_truncation_and_trailing_bytes(raw: bytes, data: st.DataObject) -> None:
    blob = blob_of(raw)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CorruptChunkError):
        decode_blob(blob[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(CorruptChunkError, match="trailing"):
        decode_blob(blob + extra)


def test_expect_id_mismatch() -> None:
    blob = blob_of(b"one chunk")
    other = chunk_id(b"another chunk")
    with pytest.raises(CorruptChunkError, match="expected") as ei:
        decode_blob(blob, expect_id=other)
    assert other.hex() in str(ei.value)


def _reheader(blob: bytes, **changes: int | bytes) -> bytes:
    """Rewrite header fields and recompute the header check (damage a check cannot see)."""
    magic, ver, codec, flags, raw_len, pay_len, cid = struct.unpack_from("<4sBBHII16s", blob)
    fields = {"magic": magic, "version": ver, "codec": codec, "flags": flags}
    fields |= {"raw_len": raw_len, "payload_len": pay_len, "cid": cid} | changes
    head = struct.pack("<4sBBHII16s", *fields.values())
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head)) + blob[BLOB_HEADER_LEN:]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"magic": b"HTCX"}, "bad magic"),
        ({"version": 2}, "version 2"),
        ({"codec": 7}, "unknown codec 7"),
        ({"flags": 1}, "flags"),
        ({"raw_len": 1}, "zstd frame declares"),
        ({"raw_len": 0xFFFF_FFFF}, "zstd frame declares"),
        ({"payload_len": 10}, "trailing"),
        ({"payload_len": 10**6}, "truncated"),
        ({"cid": bytes(16)}, "digest"),
        ({"codec": CODEC_RAW}, "raw blob with payload length"),
    ],
)
def test_consistent_header_lies_are_caught(changes: dict[str, int | bytes], message: str) -> None:
    blob = blob_of(compressible(5000))
    assert parse_blob_header(blob).codec == CODEC_ZSTD
    with pytest.raises(CorruptChunkError, match=message):
        decode_blob(_reheader(blob, **changes))


def test_zstd_payload_of_wrong_content() -> None:
    # A valid zstd frame of other bytes of the same length: only the digest catches it.
    raw = compressible(5000)
    other = raw.replace(b"fox", b"cat")
    h = parse_blob_header(blob_of(raw))
    _, payload = encode_blob(other)
    forged = BlobHeader(CODEC_ZSTD, 0, len(raw), len(payload), h.chunk_id).to_bytes()
    with pytest.raises(CorruptChunkError, match="digest"):
        decode_blob(forged + bytes(payload))


def test_error_names_chunk_and_problem() -> None:
    raw = b"named chunk" * 10
    blob = bytearray(blob_of(raw))
    blob[33] ^= 0xFF  # header check
    with pytest.raises(CorruptChunkError) as ei:
        parse_blob_header(blob)
    msg = str(ei.value)
    assert "header check" in msg and chunk_id(raw).hex() in msg and "fsck" in msg
    assert ei.value.errno == 5
    with pytest.raises(CorruptChunkError, match="truncated header"):
        parse_blob_header(b"HTCB")


# -- golden bytes (a change here is a format change) ----------------------------------

GOLDEN_RAW = b"Hutong golden chunk 0123456789\n" * 40
GOLDEN_HEADER = "4854434201010000d8040000310000002b8680fff4a026a90b1f9587220db07a47663116"
GOLDEN_BLOB = (
    GOLDEN_HEADER + "28b52ffd60d8033d0100f84875746f6e6720676f6c64656e206368756e6b2030313233"
    "3435363738390a0100db227ee504"
)
GOLDEN_RAW_BLOB = "48544342010000000600000006000000db0ce4331f60839b6d1aea4d6c02ef37fd426fc8"


def test_golden_zstd_blob() -> None:
    header, payload = encode_blob(GOLDEN_RAW, 3)
    assert header.hex() == GOLDEN_HEADER
    assert (header + bytes(payload)).hex() == GOLDEN_BLOB
    assert decode_blob(bytes.fromhex(GOLDEN_BLOB)) == GOLDEN_RAW
    assert parse_blob_header(header) == BlobHeader(
        CODEC_ZSTD, 0, 1240, 49, bytes.fromhex("2b8680fff4a026a90b1f9587220db07a")
    )


def test_golden_raw_blob() -> None:
    header, payload = encode_blob(b"hutong")
    assert (header + bytes(payload)).hex() == GOLDEN_RAW_BLOB + b"hutong".hex()
    assert decode_blob(bytes.fromhex(GOLDEN_RAW_BLOB) + b"hutong") == b"hutong"


@given(raws=st.lists(chunks, max_size=20), level=st.integers(1, 9))
def test_encode_blobs_equals_encode_blob(raws: list[bytes], level: int) -> None:
    ids = [chunk_id(r) for r in raws]
    many = encode_blobs(raws, ids, level)
    assert [(h, bytes(p)) for h, p in many] == [
        (h, bytes(p)) for h, p in (encode_blob(r, level, i) for r, i in zip(raws, ids, strict=True))
    ]
    for (h, p), r, i in zip(many, raws, ids, strict=True):
        assert decode_blob(h + bytes(p), expect_id=i) == r


class _CountingCompressor:
    """A thread's compressor that counts the calls of each kind."""

    def __init__(self, real: zstandard.ZstdCompressor) -> None:
        self.real, self.calls = real, {"compress": 0, "multi": 0}

    def compress(self, data: bytes) -> bytes:
        self.calls["compress"] += 1
        return self.real.compress(data)

    def multi_compress_to_buffer(self, data: list[bytes], threads: int = 0) -> object:
        self.calls["multi"] += 1
        return self.real.multi_compress_to_buffer(data, threads=threads)


def test_one_chunk_is_compressed_with_the_threads_own_context(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone chunk (a 4 MiB group) uses the thread's compressor: `multi_compress_to_buffer`
    made a new zstd context per call, its tables zeroed and faulted in each time (about
    600 page faults a level-8 group); the frame is the same either way."""
    from gfs import codec

    spies: dict[int, _CountingCompressor] = {}
    real = codec._compressor
    monkeypatch.setattr(codec, "_compressor", lambda level, window_log=0: spies.setdefault(
        level, _CountingCompressor(real(level, window_log))))
    raw = os.urandom(1000) * 300
    ((_, payload),) = encode_blobs([raw], [chunk_id(raw)], 8)
    assert spies[8].calls == {"compress": 1, "multi": 0}
    frame = real(8).multi_compress_to_buffer([raw], threads=1)[0].tobytes()
    assert bytes(payload) == frame and len(frame) < len(raw) // 100
    encode_blobs([raw, raw[1:]], [chunk_id(raw), chunk_id(raw[1:])], 8)
    assert spies[8].calls == {"compress": 1, "multi": 1}  # many: one call for all


def test_encode_blobs_rejects_mismatched_ids() -> None:
    with pytest.raises(ValueError):
        encode_blobs([b"a", b"b"], [chunk_id(b"a")])
    with pytest.raises(ValueError):
        encode_blobs([b"a"], [b"short"])
