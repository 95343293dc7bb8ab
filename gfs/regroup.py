"""Re-grouping: the live members of mostly dead groups compressed into new groups.

A group stays while any member lives (docs/format.md "Group blobs"), so the
bytes of its dead members stay too. gc re-groups: the live members of groups
whose live raw bytes are under `REGROUP_LIVE_SHARE` of the group are read
(verified), encoded as new groups, and relocated (`gfs.relocate`: the new
packs are written durably, then one transaction per pack records the new
group and makes each member a folded member of it, dropping a member blob's
copies and `deltas` entry and moving the reference to the new group). The old
groups fall to refcount 0 and gc deletes them.

gc also upgrades a format 3 store's member blobs of the other groups: each is
folded into its record in place (`fold_moves`: no data written).

In a store that groups (`[store] delta`), gc also groups *loose* small chunks:
chunks under `groups.MEMBER_MAX` stored whole one by one (files written one
commit at a time, by `write_bytes` or the mount), once there are at least
`LOOSE_MIN_BYTES` of them, unless they are a base of another chunk.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from gfs import delta, groups
from gfs.codec import BLOB_HEADER_LEN, CODEC_MEMBER, CODEC_RAW, CODEC_ZSTD
from gfs.errors import CorruptChunkError, PoolError
from gfs.meta import ChunkRecord, ReadTxn
from gfs.relocate import Move

if TYPE_CHECKING:
    from gfs.store import ChunkStore

#: A group is re-grouped when less than this share of its raw bytes is live.
REGROUP_LIVE_SHARE = 0.5
#: Loose small chunks are grouped once at least this many raw bytes of them exist.
LOOSE_MIN_BYTES = 256 << 10


def sparse_groups(txn: ReadTxn) -> dict[bytes, list[ChunkRecord]]:
    """Groups under the live share (nothing but their members referencing them), with
    their live members in the order they were written."""
    members: dict[bytes, list[ChunkRecord]] = defaultdict(list)
    for rec in txn.iter_chunks():
        if rec.group:
            members[rec.group].append(rec)
    for cid, base in txn.iter_values(delta.DELTAS):  # member blobs (format 3 stores)
        blob = txn.get_chunk(cid)
        if blob is not None and blob.codec == CODEC_MEMBER and blob.locations:
            members[base].append(blob)
    out = {}
    for gid, recs in members.items():
        group = txn.get_chunk(gid)
        if (group is not None and group.locations and group.refcount == len(recs)
                and sum(r.raw_len for r in recs) < REGROUP_LIVE_SHARE * group.raw_len):
            out[gid] = sorted(recs, key=_written)
    return out


def _written(rec: ChunkRecord) -> tuple[int, bytes, int]:
    """A member's place in the order its group was written."""
    if rec.group:
        return 0, b"", rec.group_offset
    return 1, rec.locations[0].pack, rec.locations[0].offset


def member_blobs(txn: ReadTxn, skip: set[bytes]) -> list[ChunkRecord]:
    """The member blobs (format 3 stores) of the groups not in `skip`, in the order they
    were written: gc folds them into their records in place (`fold_moves`)."""
    out = []
    for cid, base in txn.iter_values(delta.DELTAS):
        if base not in skip:
            rec = txn.get_chunk(cid)
            if rec is not None and rec.codec == CODEC_MEMBER and rec.locations:
                out.append(rec)
    return sorted(out, key=_written)


def fold_moves(store: ChunkStore, recs: Iterable[ChunkRecord]) -> Iterator[Move]:
    """The moves that fold each member blob of `recs` into its record, on the same
    group at the same offset, read from its first copy that verifies (no data is
    written; the blobs become dead bytes that the repack reclaims). A member blob
    with no good copy is left to repair."""
    for rec in recs:
        for loc in rec.locations:
            try:
                blob = store.source.blob_at(loc, rec.id)[0]
            except (CorruptChunkError, PoolError):
                continue
            payload = memoryview(blob)[BLOB_HEADER_LEN:]
            yield Move(rec.id, None, b"", member=groups.member_place(payload))
            break


def loose_chunks(txn: ReadTxn) -> list[ChunkRecord]:
    """Small chunks stored whole that no other chunk is based on, in the order they
    were written, if there are at least LOOSE_MIN_BYTES of them (else none)."""
    bases = {base for _, base in txn.iter_values(delta.DELTAS)}
    small = []
    for r in txn.iter_chunks():
        if r.group:
            bases.add(r.group)  # a small group of folded members is no loose chunk
        elif (r.codec in (CODEC_RAW, CODEC_ZSTD) and r.raw_len < groups.MEMBER_MAX
              and r.refcount and r.locations):
            small.append(r)
    loose = [r for r in small if r.id not in bases]
    if sum(r.raw_len for r in loose) < LOOSE_MIN_BYTES:
        return []
    return sorted(loose, key=lambda r: (r.locations[0].pack, r.locations[0].offset))


def regroup_moves(store: ChunkStore, sparse: Iterable[list[ChunkRecord]]
                  ) -> Iterator[Move]:
    """The moves that group the chunks of each list in `sparse` (in order, lists
    sharing groups): each new group (a new record), then its members (folded into
    it, every copy replaced). The chunks are read verified first."""
    batch: list[tuple[bytes, bytes]] = []
    size = 0

    def flush() -> Iterator[Move]:
        raws, ids = [raw for _, raw in batch], [cid for cid, _ in batch]
        group = groups.encode_group(raws, ids, store.config.zstd_level)
        yield Move(group.id, None, group.header + bytes(group.payload), new=True)
        for cid, _, at in group.members:
            yield Move(cid, None, b"", member=(group.id, at))

    for recs in sparse:
        got = store.source.get_many([r.id for r in recs])
        for r in recs:
            batch.append((r.id, got[r.id]))
            size += r.raw_len
            if size >= groups.GROUP_BYTES:
                yield from flush() if len(batch) > 1 else ()
                batch, size = [], 0
    if len(batch) > 1:
        yield from flush()
