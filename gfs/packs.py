"""Pack objects: a pack header and blobs back to back (docs/format.md, "Pack").

A version 2 header carries the owner tag of the store that wrote the pack;
version 1 packs (no owner) are still read.

`PackBuilder` assembles a pack as a list of buffers (no big concatenation)
for `Pool.put`; `iter_pack_blobs` scans a whole pack and yields every blob's
offset and header, which is how fsck and index rebuild recover chunk ids from
the pools alone.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator

from gfs.codec import BLOB_HEADER_LEN, BlobHeader, Buffer, _corrupt, _parse_header
from gfs.errors import FormatError

PACK_MAGIC = b"HTPACK02"
PACK_MAGIC_V1 = b"HTPACK01"
PACK_HEADER_LEN = 32
PACK_ID_LEN = 16
OWNER_TAG_LEN = 8
#: The owner of a version 1 pack (it has none): owned by whoever's index references it.
NO_OWNER = bytes(OWNER_TAG_LEN)

_PACK_HEAD = struct.Struct("<8s16s8s")
#: compiled (and cached by `re`) when first used: a put or a get never parses a key
_KEY_RE = r"packs/([0-9a-f]{2})/([0-9a-f]{32})\.pack"


def new_pack_id() -> bytes:
    """Return a fresh random pack id (16 bytes)."""
    return os.urandom(PACK_ID_LEN)


def _check_id(pack_id: bytes) -> None:
    if len(pack_id) != PACK_ID_LEN:
        raise ValueError(f"pack id must be {PACK_ID_LEN} bytes, got {len(pack_id)}")


def pack_key(pack_id: bytes) -> str:
    """Return the pool key of a pack: ``packs/<id[0] hex>/<id hex>.pack``."""
    _check_id(pack_id)
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}.pack"


def parse_pack_key(key: str) -> bytes | None:
    """Return the pack id named by a pool key, or None if `key` is not a pack key."""
    m = re.fullmatch(_KEY_RE, key)
    if m is None or not m.group(2).startswith(m.group(1)):
        return None
    return bytes.fromhex(m.group(2))


def owner_tag(store_id: bytes) -> bytes:
    """The owner tag a store writes into its packs: the first 8 bytes of its store id."""
    if len(store_id) < OWNER_TAG_LEN:
        raise ValueError(f"store id must have at least {OWNER_TAG_LEN} bytes, "
                         f"got {len(store_id)}")
    return bytes(store_id[:OWNER_TAG_LEN])


def pack_header(pack_id: bytes, owner: bytes = NO_OWNER) -> bytes:
    """Return the 32-byte header of pack `pack_id`: version 2 with `owner` (an owner
    tag), or version 1 when `owner` is NO_OWNER."""
    _check_id(pack_id)
    if len(owner) != OWNER_TAG_LEN:
        raise ValueError(f"owner tag must be {OWNER_TAG_LEN} bytes, got {len(owner)}")
    magic = PACK_MAGIC_V1 if owner == NO_OWNER else PACK_MAGIC
    return _PACK_HEAD.pack(magic, pack_id, owner)


def parse_pack_header(buf: Buffer) -> bytes:
    """Check a pack header (the first 32 bytes of `buf`) and return the pack id.

    Raises `FormatError` on a short buffer, bad magic or (version 1) a non-zero
    reserved field.
    """
    return parse_pack_head(buf)[0]


def parse_pack_head(buf: Buffer) -> tuple[bytes, bytes]:
    """Like `parse_pack_header`, returning (pack id, owner tag); a version 1 pack's
    owner is NO_OWNER."""
    if len(buf) < PACK_HEADER_LEN:
        raise FormatError(f"pack too short for its header ({len(buf)} of {PACK_HEADER_LEN} bytes)")
    magic, pack_id, owner = _PACK_HEAD.unpack_from(buf, 0)
    if magic == PACK_MAGIC_V1:
        if owner != NO_OWNER:
            raise FormatError(f"pack {pack_id.hex()}: reserved header field is "
                              f"{owner.hex()}, not 0")
    elif magic == PACK_MAGIC:
        if owner == NO_OWNER:
            raise FormatError(f"pack {pack_id.hex()}: version 2 header without an owner tag")
    else:
        raise FormatError(f"not a pack: bad magic {magic!r} (expected {PACK_MAGIC!r} "
                          f"or {PACK_MAGIC_V1!r})")
    return bytes(pack_id), bytes(owner)


class PackBuilder:
    """Collects encoded blobs for one pack.

    Buffers passed to `add` are kept by reference until the pack is written;
    callers must not modify them in between.
    """

    def __init__(self, pack_id: bytes | None = None, owner: bytes = NO_OWNER) -> None:
        self.pack_id = new_pack_id() if pack_id is None else bytes(pack_id)
        self.owner = owner
        self._header = pack_header(self.pack_id, owner)
        self._parts: list[Buffer] = []
        self.size = PACK_HEADER_LEN
        self.nblobs = 0
        #: Bytes of the pack already in its pool object (an appended pack, see
        #: `unwritten`); 0 until the first write.
        self.written = 0

    def add(self, header: Buffer, payload: Buffer) -> tuple[int, int]:
        """Append one blob (as returned by `encode_blob`); return `(offset, blob_len)`.

        The header is checked and must agree with the payload length
        (`ValueError` otherwise), so a builder never produces a damaged pack.
        """
        if len(header) != BLOB_HEADER_LEN:
            raise ValueError(f"blob header must be {BLOB_HEADER_LEN} bytes, got {len(header)}")
        h = _parse_header(header, "PackBuilder.add")
        if len(payload) != h.payload_len:
            raise ValueError(
                f"chunk {h.chunk_id.hex()}: payload has {len(payload)} bytes, "
                f"header says {h.payload_len}"
            )
        offset = self.size
        self._parts.append(header)
        if h.payload_len:
            self._parts.append(payload)
        self.size += h.blob_len
        self.nblobs += 1
        return offset, h.blob_len

    def parts(self) -> list[Buffer]:
        """Return the pack as buffers (pack header, then each blob's header and payload)."""
        return [self._header, *self._parts]

    def release(self) -> None:
        """Drop the blob buffers once the pack is written; `size` and `nblobs` stay."""
        self._parts = []

    def unwritten(self) -> list[Buffer]:
        """The bytes not in the pool object yet (the header too before the first write),
        to append at offset `written`; `wrote` records that they were."""
        return [self._header, *self._parts] if self.written == 0 else list(self._parts)

    def wrote(self) -> None:
        """Note that `unwritten()` was appended: the builder now continues the pack."""
        self.written = self.size
        self._parts = []


def iter_pack_blobs(
    data: Buffer, expect_id: bytes | None = None
) -> Iterator[tuple[int, BlobHeader]]:
    """Scan a whole pack; yield `(offset, header)` for every blob in order.

    Verifies the pack header (and that its id is `expect_id` when given) and
    every blob header, and that the last blob ends exactly at the end of
    `data`. Payloads are not decoded: pass ``data[offset:offset + h.blob_len]``
    to `decode_blob` to verify content. Raises `FormatError` for a bad pack
    header and `CorruptChunkError` (with the pack id and offset) for a damaged
    or truncated blob; blobs before the damage have been yielded by then.
    """
    view = memoryview(data)
    pack_id = parse_pack_header(view)
    if expect_id is not None and pack_id != expect_id:
        raise FormatError(f"pack header holds id {pack_id.hex()}, expected {expect_id.hex()}")
    end = len(view)
    off = PACK_HEADER_LEN
    while off < end:
        where = f"pack {pack_id.hex()} offset {off}"
        h = _parse_header(view[off : off + BLOB_HEADER_LEN], where)
        if off + h.blob_len > end:
            raise _corrupt(
                f"blob of {h.blob_len} bytes runs past the end of the pack ({end} bytes)",
                h.chunk_id,
                where,
            )
        yield off, h
        off += h.blob_len
