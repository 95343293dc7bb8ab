"""Blob codec: one chunk as stored (docs/format.md, "Blob").

A blob is a 36-byte header followed by the payload (the raw chunk bytes, or
one zstd frame of them). `encode_blob` returns header and payload separately
so writers can hand both to a pool without concatenating; `decode_blob`
verifies everything and returns the raw bytes or raises `CorruptChunkError`.

Thread-safe: each thread uses its own zstd (de)compressor, and zstandard
releases the GIL, so callers may encode or decode in a thread pool.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import xxhash
import zstandard

from gfs.errors import CorruptChunkError

Buffer = bytes | bytearray | memoryview
"""Any contiguous byte buffer accepted by the codec, packs and pools."""

CHUNK_ID_LEN = 16
BLOB_HEADER_LEN = 36
BLOB_MAGIC = b"HTCB"
BLOB_VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
#: A delta against a base chunk (docs/format.md, "Resemblance and delta chunks"; gfs.delta).
CODEC_DELTA = 2
#: A member of a group chunk (docs/format.md, "Group blobs"; gfs.groups).
CODEC_MEMBER = 3
#: A delta against two base chunks, in transit and sealed only (docs/format.md, "Two-base
#: delta blob (codec 4)"; gfs.delta).
CODEC_DELTA2 = 4
#: Codecs whose payload starts with the id of another chunk the blob needs (its base).
BASED_CODECS = frozenset({CODEC_DELTA, CODEC_MEMBER})
#: Payload of a member blob: the group id and the member's offset in it.
MEMBER_PAYLOAD_LEN = 20
MAX_RAW_LEN = 0xFFFF_FFFF
DEFAULT_LEVEL = 3

# magic, version, codec, flags, raw length, payload length, chunk id; then the check.
_HEAD = struct.Struct("<4sBBHII16s")
_CHECK = struct.Struct("<I")
_CODECS = (CODEC_RAW, CODEC_ZSTD, CODEC_DELTA, CODEC_MEMBER, CODEC_DELTA2)
#: Reads the verified raw bytes of a base chunk, by id.
BaseReader = Callable[[bytes], bytes]


def chunk_id(data: Buffer) -> bytes:
    """Return the chunk id of `data`: its xxh3-128 digest, 16 bytes (big-endian canonical)."""
    return xxhash.xxh3_128_digest(data)


@dataclass(frozen=True, slots=True)
class BlobHeader:
    """The fixed header of a blob (format version 1; flags are always 0)."""

    codec: int
    flags: int
    raw_len: int
    payload_len: int
    chunk_id: bytes

    @property
    def blob_len(self) -> int:
        """Bytes of the whole blob: header plus payload."""
        return BLOB_HEADER_LEN + self.payload_len

    def to_bytes(self) -> bytes:
        """Serialise the header (36 bytes, header check included)."""
        head = _HEAD.pack(
            BLOB_MAGIC,
            BLOB_VERSION,
            self.codec,
            self.flags,
            self.raw_len,
            self.payload_len,
            self.chunk_id,
        )
        return head + _CHECK.pack(xxhash.xxh32_intdigest(head))


def _corrupt(what: str, cid: bytes | None, where: str = "") -> CorruptChunkError:
    name = f"chunk {cid.hex()}" if cid else "chunk (id unknown)"
    at = f" at {where}" if where else ""
    return CorruptChunkError(
        name, f"corrupt blob{at}: {what}; run `hutong fsck` to find the damaged files"
    )


def _parse_header(buf: Buffer, where: str = "") -> BlobHeader:
    """Parse and check a blob header; `where` names the location in error messages."""
    if len(buf) < BLOB_HEADER_LEN:
        cid = bytes(buf[16:32]) if len(buf) >= 32 else None
        raise _corrupt(f"truncated header ({len(buf)} of {BLOB_HEADER_LEN} bytes)", cid, where)
    head = bytes(buf[:32])
    magic, version, codec, flags, raw_len, payload_len, cid = _HEAD.unpack(head)
    if magic != BLOB_MAGIC:
        raise _corrupt(f"bad magic {magic!r} (expected {BLOB_MAGIC!r})", None, where)
    (check,) = _CHECK.unpack_from(buf, 32)
    expected = xxhash.xxh32_intdigest(head)
    if check != expected:
        raise _corrupt(
            f"header check mismatch (stored {check:#010x}, computed {expected:#010x})", cid, where
        )
    if version != BLOB_VERSION:
        raise _corrupt(f"unsupported blob version {version} (this build reads 1)", cid, where)
    if codec not in _CODECS:
        raise _corrupt(f"unknown codec {codec}", cid, where)
    if flags != 0:
        raise _corrupt(f"flags {flags:#06x} set (must be 0 in version 1)", cid, where)
    if codec == CODEC_DELTA and payload_len <= CHUNK_ID_LEN:
        raise _corrupt(f"delta blob with payload length {payload_len}", cid, where)
    if codec == CODEC_DELTA2 and payload_len <= 2 * CHUNK_ID_LEN:
        raise _corrupt(f"two-base delta blob with payload length {payload_len}", cid, where)
    if codec == CODEC_MEMBER and payload_len != MEMBER_PAYLOAD_LEN:
        raise _corrupt(f"member blob with payload length {payload_len}", cid, where)
    if codec == CODEC_RAW and payload_len != raw_len:
        raise _corrupt(
            f"raw blob with payload length {payload_len} != raw length {raw_len}", cid, where
        )
    return BlobHeader(codec, flags, raw_len, payload_len, cid)


def parse_blob_header(buf: Buffer) -> BlobHeader:
    """Parse the header at the start of `buf` (36 bytes or more; the rest is ignored).

    Checks magic, version, codec, flags, the header check and (for raw blobs)
    that the lengths agree. Raises `CorruptChunkError` naming the problem and
    the chunk id when it can be read.
    """
    return _parse_header(buf)


class _Local(threading.local):
    def __init__(self) -> None:
        self.compressors: dict[tuple[int, int], zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()


_tls = _Local()


def _compressor(level: int, window_log: int = 0) -> zstandard.ZstdCompressor:
    """This thread's compressor at `level`; with `window_log`, that level's parameters
    with a window of 2^window_log bytes (zstd still shrinks it to a smaller input)."""
    comp = _tls.compressors.get((level, window_log))
    if comp is None:
        # Content size in the frame (checked against raw_len on decode); no zstd
        # checksum: the chunk id already covers the raw bytes.
        if window_log:
            comp = zstandard.ZstdCompressor(compression_params=zstandard.
                                            ZstdCompressionParameters.from_level(
                level, window_log=window_log, write_content_size=True,
                write_checksum=False, write_dict_id=False))
        else:
            comp = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                            write_checksum=False, write_dict_id=False)
        _tls.compressors[(level, window_log)] = comp
    return comp


def encode_blob(
    raw: Buffer, level: int = DEFAULT_LEVEL, cid: bytes | None = None
) -> tuple[bytes, Buffer]:
    """Encode one chunk; return `(header, payload)`.

    The payload is a zstd frame of `raw` (at `level`) when that is smaller than
    `raw_len - raw_len // 64`, else `raw` itself (not copied). `cid` is the
    chunk id if the caller already computed it (it is trusted, not re-hashed).
    Deterministic for a given level and zstd library. Raises `ValueError` for
    a chunk over 2^32 - 1 bytes or an id that is not 16 bytes.
    """
    raw_len = len(raw)
    if raw_len > MAX_RAW_LEN:
        raise ValueError(f"chunk of {raw_len} bytes exceeds the blob limit of {MAX_RAW_LEN}")
    if cid is None:
        cid = chunk_id(raw)
    elif len(cid) != CHUNK_ID_LEN:
        raise ValueError(f"chunk id must be {CHUNK_ID_LEN} bytes, got {len(cid)}")
    codec = CODEC_RAW
    payload: Buffer = raw
    if raw_len > 9:  # an empty zstd frame alone takes 9 bytes
        packed = _compressor(level).compress(raw)
        if len(packed) < raw_len - raw_len // 64:
            codec = CODEC_ZSTD
            payload = packed
    header = BlobHeader(codec, 0, raw_len, len(payload), bytes(cid)).to_bytes()
    return header, payload


def encode_blobs(
    raws: Sequence[Buffer], ids: Sequence[bytes], level: int = DEFAULT_LEVEL,
    window_log: int = 0,
) -> list[tuple[bytes, Buffer]]:
    """`encode_blob` of many chunks whose ids are known, byte for byte the same
    (`window_log`: with that level's parameters but a window of 2^window_log bytes).

    The zstd frames are made in one call that releases the GIL once, not once
    per chunk: worker threads then seldom wait to get the GIL back from a busy
    main thread (which cost more than the compression itself on small files).
    """
    if len(raws) != len(ids):
        raise ValueError(f"{len(raws)} chunks but {len(ids)} ids")
    for raw, cid in zip(raws, ids, strict=True):
        if len(raw) > MAX_RAW_LEN:
            raise ValueError(f"chunk of {len(raw)} bytes exceeds the blob limit of {MAX_RAW_LEN}")
        if len(cid) != CHUNK_ID_LEN:
            raise ValueError(f"chunk id must be {CHUNK_ID_LEN} bytes, got {len(cid)}")
    todo = [i for i, raw in enumerate(raws) if len(raw) > 9]
    packed: dict[int, bytes] = {}
    if len(todo) == 1:  # (a group): this thread's context, not a new one per call
        packed = {todo[0]: _compressor(level, window_log).compress(raws[todo[0]])}
    elif todo:
        frames = _compressor(level, window_log).multi_compress_to_buffer(
            [raws[i] for i in todo], threads=1)
        packed = {i: frames[k].tobytes() for k, i in enumerate(todo)}
    out: list[tuple[bytes, Buffer]] = []
    for i, (raw, cid) in enumerate(zip(raws, ids, strict=True)):
        raw_len = len(raw)
        frame = packed.get(i)
        if frame is not None and len(frame) < raw_len - raw_len // 64:
            out.append((BlobHeader(CODEC_ZSTD, 0, raw_len, len(frame), bytes(cid)).to_bytes(),
                        frame))
        else:
            out.append((BlobHeader(CODEC_RAW, 0, raw_len, raw_len, bytes(cid)).to_bytes(), raw))
    return out


def decode_blob(blob: Buffer, expect_id: bytes | None = None,
                base: BaseReader | None = None) -> bytes:
    """Verify one whole blob (header + payload, nothing more) and return the raw chunk.

    Checks the header, that the blob length is exactly header + payload length
    (truncation, trailing garbage), the zstd frame size before decompressing
    (bounded by the raw length), the raw length, that xxh3-128 of the result
    equals the stored id, and that the id equals `expect_id` when given. Any
    failure raises `CorruptChunkError`; wrong bytes are never returned. A delta
    blob (codec 2) is decoded with its base read through `base`; without
    `base` it is refused with `CorruptChunkError`.
    """
    header = _parse_header(blob)
    cid = header.chunk_id
    if expect_id is not None and cid != expect_id:
        raise _corrupt(f"blob holds chunk {cid.hex()}, expected this one", expect_id)
    if len(blob) != header.blob_len:
        kind = "truncated" if len(blob) < header.blob_len else "trailing bytes after"
        raise _corrupt(
            f"{kind} payload (blob has {len(blob)} bytes, header says {header.blob_len})", cid
        )
    payload = memoryview(blob)[BLOB_HEADER_LEN:]
    if header.codec in BASED_CODECS:
        from gfs import delta, groups  # both build on this module

        base_id = bytes(payload[:CHUNK_ID_LEN])
        if base is None:
            raise _corrupt(f"blob based on chunk {base_id.hex()} read without its base "
                           "(this reader does not support delta or group chunks)", cid)
        if header.codec == CODEC_MEMBER:
            return groups.decode_member_payload(header, payload, base(base_id))
        return delta.decode_delta_payload(header, payload, base(base_id))
    if header.codec == CODEC_DELTA2:
        from gfs import delta

        ids = delta.bases_in(header, payload)
        if base is None:
            raise _corrupt(f"two-base delta against {ids[0].hex()} and {ids[1].hex()} read "
                           "without its bases", cid)
        return delta.decode_delta_payload(header, payload, base(ids[0]), base(ids[1]))
    if header.codec == CODEC_RAW:
        raw = bytes(payload)
    else:
        try:
            frame_size = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as e:
            raise _corrupt(f"bad zstd frame header ({e})", cid) from e
        if frame_size != header.raw_len:
            raise _corrupt(
                f"zstd frame declares {frame_size} bytes, header says {header.raw_len}", cid
            )
        try:
            raw = _tls.decompressor.decompress(
                payload, max_output_size=header.raw_len, allow_extra_data=False
            )
        except zstandard.ZstdError as e:
            raise _corrupt(f"zstd payload does not decompress ({e})", cid) from e
    if len(raw) != header.raw_len:
        raise _corrupt(f"decoded {len(raw)} bytes, header says {header.raw_len}", cid)
    digest = chunk_id(raw)
    if digest != cid:
        raise _corrupt(f"content digest {digest.hex()} does not match the id", cid)
    return raw


# -- sealed blobs (flag bit 0; docs/format.md "Sealed blobs", "Sealed delta blobs") --------

FLAG_ENCRYPTED = 1
#: With FLAG_ENCRYPTED: a sealed delta, its base's keyed id in clear after the header.
FLAG_DELTA = 2
FLAGS_SEALED_DELTA = FLAG_ENCRYPTED | FLAG_DELTA
#: With FLAGS_SEALED_DELTA: a two-base delta, the second base's keyed id after the first.
FLAG_SECOND_BASE = 4
FLAGS_SEALED_DELTA2 = FLAGS_SEALED_DELTA | FLAG_SECOND_BASE
#: The number of bases a sealed blob names in clear, by its flags.
_SEALED_BASES = {FLAG_ENCRYPTED: 0, FLAGS_SEALED_DELTA: 1, FLAGS_SEALED_DELTA2: 2}
#: The number of bases a plain delta blob names, by its codec.
_DELTA_BASES = {CODEC_DELTA: 1, CODEC_DELTA2: 2}
ENC_NONCE_LEN = 12
ENC_TAG_LEN = 16
#: Sealed blob lengths are whole multiples of this many bytes at least.
PAD_MIN = 4096
#: The least length of a sealed delta (deltas are often far below PAD_MIN).
DELTA_PAD_MIN = 512
#: Sealed blob lengths above the floor take 2^PAD_SHIFT values per power of two
#: (padding adds at most 1/2^PAD_SHIFT = 12.5 %).
PAD_SHIFT = 3
_ENC_OVERHEAD = ENC_NONCE_LEN + ENC_TAG_LEN


def verify_blob(blob: Buffer, expect_id: bytes) -> None:
    """`decode_blob`'s checks of a whole blob of chunk `expect_id` without keeping the raw
    chunk (a reader that keeps the blob): a raw blob is hashed in place, not copied;
    others are decoded. Raises `CorruptChunkError` as `decode_blob` does."""
    head = _parse_header(blob)
    if head.codec == CODEC_RAW and head.chunk_id == expect_id and len(blob) == head.blob_len \
            and chunk_id(memoryview(blob)[BLOB_HEADER_LEN:]) == expect_id:
        return
    decode_blob(blob, expect_id=expect_id)  # the precise error, or another codec's checks


def keyed_chunk_id(cid: bytes, id_key: bytes) -> bytes:
    """The keyed id of chunk `cid` under an owner's id key: HMAC-SHA256, first 16 bytes."""
    import hashlib
    import hmac

    return hmac.new(id_key, cid, hashlib.sha256).digest()[:CHUNK_ID_LEN]


def padded_blob_len(n: int, floor: int = PAD_MIN) -> int:
    """The length a sealed blob of `n` unpadded bytes is padded to.

    At most `floor`: `floor`. Above: the next multiple of 2^(e-3) where 2^e <= n, so a
    length is one of 8 values per power of two and padding adds at most 12.5 %. A host
    then learns only the bucket, which many chunks of different content share.
    """
    if n <= floor:
        return floor
    step = 1 << (n.bit_length() - 1 - PAD_SHIFT)
    return -(-n // step) * step


def sealed_blob_len(plain_blob_len: int) -> int:
    """Bytes of the whole sealed blob of a plain blob of `plain_blob_len` bytes."""
    return padded_blob_len(BLOB_HEADER_LEN + _ENC_OVERHEAD + plain_blob_len)


def _prefix_len(flags: int) -> int:
    """Clear bytes before the nonce: the header, and a sealed delta's base keyed ids."""
    return BLOB_HEADER_LEN + CHUNK_ID_LEN * _SEALED_BASES[flags]


def parse_encrypted_header(buf: Buffer) -> BlobHeader:
    """Parse and check the clear header of a sealed blob (flags 1, or 3 for a sealed
    delta; codec and raw length 0: both are inside the ciphertext). `chunk_id` of the
    result is the keyed id. Raises `CorruptChunkError`."""
    if len(buf) < BLOB_HEADER_LEN:
        raise _corrupt(f"truncated header ({len(buf)} of {BLOB_HEADER_LEN} bytes)", None)
    head = bytes(buf[:32])
    magic, version, codec, flags, raw_len, payload_len, kid = _HEAD.unpack(head)
    if magic != BLOB_MAGIC:
        raise _corrupt(f"bad magic {magic!r} (expected {BLOB_MAGIC!r})", None)
    (check,) = _CHECK.unpack_from(buf, 32)
    if check != xxhash.xxh32_intdigest(head):
        raise _corrupt("header check mismatch", kid)
    if flags not in _SEALED_BASES:
        raise _corrupt(f"flags {flags:#06x}: not a sealed blob (expected 0x0001, 0x0003 or "
                       "0x0007)", kid)
    if version != BLOB_VERSION or codec != 0 or raw_len != 0:
        raise _corrupt(f"sealed blob of an old layout (version {version}, codec {codec}, "
                       f"raw length {raw_len} in clear); place it again (`hutong rule "
                       "reconcile`) to re-seal it", kid)
    total = BLOB_HEADER_LEN + payload_len
    nbases = _SEALED_BASES[flags]
    least = _prefix_len(flags) - BLOB_HEADER_LEN + _ENC_OVERHEAD + BLOB_HEADER_LEN
    floor = DELTA_PAD_MIN if nbases else PAD_MIN
    if payload_len < least or padded_blob_len(total, floor) != total:
        raise _corrupt(f"sealed payload length {payload_len} is not a padded length", kid)
    if nbases and len(buf) >= _prefix_len(flags):
        bases = _clear_bases(buf, nbases)
        if kid in bases:
            raise _corrupt("sealed delta names itself as its base", kid)
        if len(set(bases)) != nbases:
            raise _corrupt("sealed delta names one base twice", kid)
    return BlobHeader(codec, flags, raw_len, payload_len, kid)


def _clear_bases(buf: Buffer, n: int) -> tuple[bytes, ...]:
    """The `n` base keyed ids in clear after a sealed delta's header."""
    return tuple(bytes(buf[BLOB_HEADER_LEN + k * CHUNK_ID_LEN:
                           BLOB_HEADER_LEN + (k + 1) * CHUNK_ID_LEN]) for k in range(n))


def check_encrypted_blob(blob: Buffer) -> BlobHeader:
    """Check what a site without the owner's key can: header and exact length."""
    header = parse_encrypted_header(blob)
    if len(blob) != header.blob_len:
        raise _corrupt(f"blob has {len(blob)} bytes, header says {header.blob_len}",
                       header.chunk_id)
    return header


def sealed_bases(blob: Buffer) -> tuple[bytes, ...]:
    """The base keyed ids a sealed delta names (in clear: one, or two for a two-base
    delta), none for a sealed whole blob; the header is checked (`CorruptChunkError`)."""
    header = parse_encrypted_header(blob)
    if len(blob) < _prefix_len(header.flags):
        raise _corrupt("truncated sealed delta", header.chunk_id)
    return _clear_bases(blob, _SEALED_BASES[header.flags])


def _seal(inner: Sequence[Buffer], inner_len: int, kid: bytes, enc_key: bytes,
          base_kids: Sequence[bytes] = ()) -> bytes:
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    flags = (FLAG_ENCRYPTED, FLAGS_SEALED_DELTA, FLAGS_SEALED_DELTA2)[len(base_kids)]
    prefix = _prefix_len(flags)
    n = prefix + _ENC_OVERHEAD + inner_len
    total = padded_blob_len(n, DELTA_PAD_MIN if base_kids else PAD_MIN)
    head = BlobHeader(0, flags, 0, total - BLOB_HEADER_LEN, kid).to_bytes()
    clear = head + b"".join(base_kids)
    nonce = os.urandom(ENC_NONCE_LEN)
    pad = bytes(total - n)
    sealed = AESGCM(enc_key).encrypt(nonce, b"".join((*inner, pad)), head[:32] + clear[36:])
    return clear + nonce + sealed


def encode_encrypted_blob(raw: Buffer, enc_key: bytes, id_key: bytes,
                          level: int = DEFAULT_LEVEL, cid: bytes | None = None) -> bytes:
    """Seal `raw`: its plain blob (header and payload) plus zero padding, encrypted with
    AES-256-GCM under a random nonce, behind a clear header holding only the keyed id and
    the padded length (`padded_blob_len`)."""
    header, payload = encode_blob(raw, level, cid)
    inner = parse_blob_header(header)
    return _seal((header, payload), inner.blob_len, keyed_chunk_id(inner.chunk_id, id_key),
                 enc_key)


def encode_sealed_delta(delta_blob: Buffer, enc_key: bytes, id_key: bytes) -> bytes:
    """Seal a plain delta blob (codec 2, `gfs.delta.encode_delta`, or codec 4,
    `encode_delta2`): the clear header names the keyed id and, after it, the keyed ids
    of its bases; padded to at least DELTA_PAD_MIN."""
    inner = parse_blob_header(delta_blob)
    if inner.codec not in _DELTA_BASES or len(delta_blob) != inner.blob_len:
        raise ValueError(f"chunk {inner.chunk_id.hex()}: not a whole delta blob")
    bases = _clear_bases(delta_blob, _DELTA_BASES[inner.codec])
    return _seal((delta_blob,), inner.blob_len, keyed_chunk_id(inner.chunk_id, id_key),
                 enc_key, [keyed_chunk_id(b, id_key) for b in bases])


def decode_encrypted_blob(blob: Buffer, cid: bytes, enc_key: bytes, id_key: bytes,
                          base: BaseReader | None = None) -> bytes:
    """Decrypt and verify a sealed blob of chunk `cid`; returns the raw bytes.

    A sealed delta is decoded against its base, read by plain id through `base` (the
    caller decrypts and verifies it); without `base` it is refused. A wrong keyed id, a
    bad tag (wrong key or damaged bytes), non-zero padding, a base keyed id that does not
    match the base inside, or content that does not hash to `cid` raises
    `CorruptChunkError`.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = check_encrypted_blob(blob)
    if header.chunk_id != keyed_chunk_id(cid, id_key):
        raise _corrupt("sealed blob holds another keyed id", cid)
    prefix = _prefix_len(header.flags)
    view = memoryview(blob)
    nonce = bytes(view[prefix:prefix + ENC_NONCE_LEN])
    try:
        plain = AESGCM(enc_key).decrypt(nonce, bytes(view[prefix + ENC_NONCE_LEN:]),
                                        bytes(view[:32]) + bytes(view[BLOB_HEADER_LEN:prefix]))
    except InvalidTag:
        raise _corrupt("sealed blob fails authentication (damaged, or sealed with another "
                       "key)", cid) from None
    inner = _parse_header(plain)
    if inner.blob_len > len(plain) or plain[inner.blob_len:].strip(b"\0"):
        raise _corrupt("sealed blob's inner blob does not fit its padding", cid)
    nbases = _SEALED_BASES[header.flags]
    if _DELTA_BASES.get(inner.codec, 0) != nbases:
        raise _corrupt("sealed blob's flags and inner codec disagree", cid)
    body = memoryview(plain)[:inner.blob_len]
    if not nbases:
        return decode_blob(body, expect_id=cid)
    base_ids = _clear_bases(body, nbases)
    if tuple(keyed_chunk_id(b, id_key) for b in base_ids) != _clear_bases(view, nbases):
        raise _corrupt("sealed delta's clear base keyed id does not match its base", cid)
    if base is None:
        raise _corrupt(f"sealed delta against base {base_ids[0].hex()} read without its base",
                       cid)
    return decode_blob(body, expect_id=cid, base=base)
