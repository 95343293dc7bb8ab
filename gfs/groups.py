"""Group blobs: small chunks compressed together as one frame (docs/format.md,
"Group blobs").

A group is an ordinary whole chunk whose raw bytes are its members' raw bytes
concatenated. Writers record each member as a folded member record (format 4:
its chunk record names the group and its offset, with no blob of its own), one
reference on the group each, so gc keeps a group while any member lives.
Stores written before format 4 hold member blobs (codec 3, a 20-byte payload
naming the group and offset) recorded like deltas on the group; both forms
read. Decoding verifies the group's id and then the member's.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
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
#: Groups are compressed this many zstd levels above the store's level: level 7. Group
#: compression is most of the workers' CPU on the release series' first snapshot
#: (0.62 s of 0.76), and that snapshot's put is
#: bound by CPU on 2 cores: level 8 stored the groups 0.9% smaller for 1.18x level
#: 7's CPU (32 MiB of its Django groups), the whole store 0.18% smaller (releases)
#: and 0.6% (small files, pools); in 6 alternating pairs of both puts, level 7 took
#: 0.93x level 8's wall and CPU. Level 9 stored 0.5% less than 8 for 1.19x its CPU;
#: level 6 2.7% more than 8 for 0.8x; level 12 2% less than 9 for 2.2x.
GROUP_LEVEL_STEP = 4
#: ... with a window of the whole group: level 7's own is 2 MiB, so a small file that
#: repeats one 2 to 4 MiB before it in the group was stored again. The release series'
#: first Django snapshot cut into 9 such groups (34.5 MB of small files) compressed
#: 0.28% smaller for no more CPU (0.42-0.46 s either way); in `bench ingest --quick`,
#: where most small chunks are deltas against the dictionary, not members, the store
#: was 0.03% smaller (32,026,813 -> 32,016,853 bytes).
GROUP_WINDOW_LOG = (GROUP_BYTES - 1).bit_length()

_OFFSET = struct.Struct("<I")


def member_blob(cid: bytes, raw_len: int, group: bytes, offset: int) -> tuple[bytes, bytes]:
    """The (header, payload) of the member blob (formats 3 and before; no longer
    written) of chunk `cid` at `offset` in `group`."""
    if len(cid) != CHUNK_ID_LEN or len(group) != CHUNK_ID_LEN:
        raise ValueError(f"chunk ids must be {CHUNK_ID_LEN} bytes")
    if cid == group:
        raise ValueError(f"chunk {cid.hex()} cannot be a member of itself")
    payload = group + _OFFSET.pack(offset)
    return BlobHeader(CODEC_MEMBER, 0, raw_len, len(payload), cid).to_bytes(), payload


@dataclass(frozen=True, slots=True)
class Group:
    """One encoded group: its chunk's blob and its members as (id, raw length, offset)."""

    id: bytes
    header: bytes
    payload: Buffer
    members: list[tuple[bytes, int, int]]

    def records(self) -> list[ChunkRecord]:
        """The folded member records of the members (refcount 0: the caller adds the
        references)."""
        from gfs.meta.records import chunk_record  # (one per member: no dataclass init)

        gid = self.id
        return [chunk_record(cid, raw_len, 0, CODEC_MEMBER, 0, (), gid, at)
                for cid, raw_len, at in self.members]


def encode_group(raws: Sequence[Buffer], ids: Sequence[bytes], level: int) -> Group:
    """The group of the chunks `raws` (ids `ids`, in this order): the group chunk's
    blob, compressed at `level` + GROUP_LEVEL_STEP with a window of the whole group
    (GROUP_WINDOW_LOG), and where each member lies in it."""
    if len(raws) != len(ids):
        raise ValueError(f"{len(raws)} chunks but {len(ids)} ids")
    raw = b"".join(raws)
    gid = chunk_id(raw)
    ((header, payload),) = encode_blobs([raw], [gid], min(level + GROUP_LEVEL_STEP, 22),
                                        GROUP_WINDOW_LOG)
    members = []
    at = 0
    for piece, cid in zip(raws, ids, strict=True):
        if cid == gid:
            raise ValueError(f"chunk {cid.hex()} cannot be a member of itself")
        n = memoryview(piece).nbytes
        members.append((cid, n, at))
        at += n
    return Group(gid, header, payload, members)


def decode_member_payload(header: BlobHeader, payload: Buffer, group_raw: Buffer) -> bytes:
    """The raw member of a member blob given its group's verified raw bytes; checks
    the slice's bounds and its digest, raising `CorruptChunkError` naming the member
    and its group."""
    cid = header.chunk_id
    view = memoryview(payload)
    if len(view) != MEMBER_PAYLOAD_LEN:
        raise _corrupt(f"member payload of {len(view)} bytes", cid)
    return member_slice(cid, header.raw_len, *member_place(view), group_raw)


def member_place(payload: Buffer) -> tuple[bytes, int]:
    """(group id, offset) named by a member blob's payload of MEMBER_PAYLOAD_LEN bytes."""
    view = memoryview(payload)
    return bytes(view[:CHUNK_ID_LEN]), _OFFSET.unpack_from(view, CHUNK_ID_LEN)[0]


def member_slice(cid: bytes, raw_len: int, group: bytes, offset: int,
                 group_raw: Buffer) -> bytes:
    """The raw bytes of member `cid` (`raw_len` bytes at `offset` in `group`, whose
    verified raw bytes are `group_raw`), from a member blob or a folded member record;
    checks the bounds and the digest, raising `CorruptChunkError` naming the member
    and its group."""
    of = f"member of group {group.hex()}"
    if offset + raw_len > len(group_raw):
        raise _corrupt(f"{of}: bytes {offset}..{offset + raw_len} past the group's "
                       f"{len(group_raw)}", cid)
    raw = bytes(memoryview(group_raw)[offset:offset + raw_len])
    digest = chunk_id(raw)
    if digest != cid:
        raise _corrupt(f"{of}: digest {digest.hex()} does not match the id "
                       "(the member's record or blob, or its group, is damaged)", cid)
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

        gid = rec.group or self._txn.get_value(DELTAS, rec.id)  # folded, or a blob
        if gid is None:
            return own
        group = self._groups.get(gid)
        if group is None:
            grec = self._txn.get_chunk(gid)
            group = (grec.raw_len, sum(x.length for x in grec.locations)) if grec else (0, 0)
            self._groups[gid] = group
        raw, stored = group
        return own + (stored * rec.raw_len // raw if raw else 0)
