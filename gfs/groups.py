"""Group blobs: small chunks compressed together as one frame (docs/format.md,
"Group blobs").

A group is an ordinary whole chunk whose raw bytes are its members' raw bytes
concatenated; each member is stored as a member blob (codec 3) naming the
group and its offset in it. Members are recorded like deltas whose base is the
group (gfs.delta: a `deltas` entry and one reference each), so gc, relocation,
fsck and repair treat a group as a base. Decoding verifies the group's id and
then the member's.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gfs.codec import (
    CHUNK_ID_LEN,
    CODEC_MEMBER,
    MEMBER_PAYLOAD_LEN,
    BlobHeader,
    Buffer,
    _corrupt,
    chunk_id,
    encode_blobs,
)

if TYPE_CHECKING:
    from gfs.delta import Plan
    from gfs.meta import ChunkRecord, ReadTxn

#: Chunks under this many bytes without a resembling base are grouped (policy).
MEMBER_MAX = 64 << 10
#: A group is closed once it holds this many raw bytes (policy; at most 2^32 - 1).
#: 4 MiB frames store small files ~5% smaller than 1 MiB ones (`bench ingest
#: --shape smallfiles`); one member's read decompresses ~3 ms of group, once per
#: group in a restore batch or in the readers' group cache.
GROUP_BYTES = 4 << 20
#: Groups are compressed this many zstd levels above the store's level: level 9
#: (window 4 MiB, the whole group) costs ~1.5x level 6's CPU on a group and
#: stores ~3% less; level 12 another 2% for 2.2x more CPU.
GROUP_LEVEL_STEP = 6

_OFFSET = struct.Struct("<I")


def member_blob(cid: bytes, raw_len: int, group: bytes, offset: int) -> tuple[bytes, bytes]:
    """The (header, payload) of the member blob of chunk `cid` at `offset` in `group`."""
    if len(cid) != CHUNK_ID_LEN or len(group) != CHUNK_ID_LEN:
        raise ValueError(f"chunk ids must be {CHUNK_ID_LEN} bytes")
    if cid == group:
        raise ValueError(f"chunk {cid.hex()} cannot be a member of itself")
    payload = group + _OFFSET.pack(offset)
    return BlobHeader(CODEC_MEMBER, 0, raw_len, len(payload), cid).to_bytes(), payload


def encode_group(raws: Sequence[Buffer], ids: Sequence[bytes], level: int
                 ) -> list[tuple[bytes, Buffer]]:
    """The blobs of one group of the chunks `raws` (ids `ids`, in this order): the
    group chunk's (header, payload) first, then each member's."""
    if len(raws) != len(ids):
        raise ValueError(f"{len(raws)} chunks but {len(ids)} ids")
    raw = b"".join(raws)
    gid = chunk_id(raw)
    out = list(encode_blobs([raw], [gid], min(level + GROUP_LEVEL_STEP, 22)))
    at = 0
    for piece, cid in zip(raws, ids, strict=True):
        out.append(member_blob(cid, len(piece), gid, at))
        at += len(piece)
    return out


def decode_member_payload(header: BlobHeader, payload: Buffer, group_raw: Buffer) -> bytes:
    """The raw member of a member blob given its group's verified raw bytes; checks
    the slice's bounds and its digest, raising `CorruptChunkError` naming the member
    and its group."""
    cid = header.chunk_id
    view = memoryview(payload)
    if len(view) != MEMBER_PAYLOAD_LEN:
        raise _corrupt(f"member payload of {len(view)} bytes", cid)
    group = bytes(view[:CHUNK_ID_LEN])
    (offset,) = _OFFSET.unpack_from(view, CHUNK_ID_LEN)
    of = f"member of group {group.hex()}"
    if offset + header.raw_len > len(group_raw):
        raise _corrupt(f"{of}: bytes {offset}..{offset + header.raw_len} past the group's "
                       f"{len(group_raw)}", cid)
    raw = bytes(memoryview(group_raw)[offset:offset + header.raw_len])
    digest = chunk_id(raw)
    if digest != cid:
        raise _corrupt(f"{of}: digest {digest.hex()} does not match the id "
                       "(the member blob or its group is damaged)", cid)
    return raw


def groupable(raw_len: int, plan: Plan | None) -> bool:
    """Whether a new chunk of `raw_len` bytes with `plan` goes into a group: a small
    chunk without a resembling base (one with a base is tried as a delta first)."""
    return raw_len < MEMBER_MAX and (plan is None or plan.base is None or plan.dictionary)


class StoredShares:
    """Stored bytes a chunk accounts for (`hutong du`): its own copies, plus for a
    member its share of its group's copies by raw length (groups looked up once)."""

    def __init__(self, txn: ReadTxn) -> None:
        self._txn = txn
        self._groups: dict[bytes, tuple[int, int]] = {}  # id -> (raw, stored)

    def __call__(self, rec: ChunkRecord) -> int:
        own = sum(loc.length for loc in rec.locations)
        if rec.codec != CODEC_MEMBER:
            return own
        from gfs.delta import DELTAS

        gid = self._txn.get_value(DELTAS, rec.id)
        if gid is None:
            return own
        group = self._groups.get(gid)
        if group is None:
            grec = self._txn.get_chunk(gid)
            group = (grec.raw_len, sum(x.length for x in grec.locations)) if grec else (0, 0)
            self._groups[gid] = group
        raw, stored = group
        return own + (stored * rec.raw_len // raw if raw else 0)
