"""Re-grouping: the live members of mostly dead groups compressed into new groups.

A group stays while any member lives (docs/format.md "Group blobs"), so the
bytes of its dead members stay too. gc re-groups: the live members of groups
whose live raw bytes are under `REGROUP_LIVE_SHARE` of the group are read
(verified), encoded as new groups, and relocated (`gfs.relocate`: the new
packs are written durably, then one transaction per pack records the new
group and moves each member's location, `deltas` entry and reference to it).
The old groups fall to refcount 0 and gc deletes them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gfs import delta, groups
from gfs.codec import CODEC_MEMBER, parse_blob_header
from gfs.meta import ChunkRecord, ReadTxn
from gfs.relocate import Move

if TYPE_CHECKING:
    from gfs.store import ChunkStore

#: A group is re-grouped when less than this share of its raw bytes is live.
REGROUP_LIVE_SHARE = 0.5


def sparse_groups(txn: ReadTxn) -> dict[bytes, list[ChunkRecord]]:
    """Groups under the live share (nothing but their members referencing them), with
    their live members in the order they were written."""
    members: dict[bytes, list[ChunkRecord]] = defaultdict(list)
    for cid, base in txn.iter_values(delta.DELTAS):
        rec = txn.get_chunk(cid)
        if rec is not None and rec.codec == CODEC_MEMBER and rec.locations:
            members[base].append(rec)
    out = {}
    for gid, recs in members.items():
        group = txn.get_chunk(gid)
        if (group is not None and group.locations and group.refcount == len(recs)
                and sum(r.raw_len for r in recs) < REGROUP_LIVE_SHARE * group.raw_len):
            out[gid] = sorted(recs, key=lambda r: (r.locations[0].pack, r.locations[0].offset))
    return out


def regroup_moves(store: ChunkStore, sparse: dict[bytes, list[ChunkRecord]]
                  ) -> Iterator[Move]:
    """The moves that re-group the members of `sparse`: each new group (a new record),
    then its members (every copy replaced). Members are read verified first."""
    batch: list[tuple[bytes, bytes]] = []
    size = 0

    def flush() -> Iterator[Move]:
        raws, ids = [raw for _, raw in batch], [cid for cid, _ in batch]
        blobs = groups.encode_group(raws, ids, store.config.zstd_level)
        (gh, gp), rest = blobs[0], blobs[1:]
        yield Move(parse_blob_header(gh).chunk_id, None, gh + bytes(gp), new=True)
        for cid, (h, p) in zip(ids, rest, strict=True):
            yield Move(cid, None, h + bytes(p))

    for recs in sparse.values():
        got = store.source.get_many([r.id for r in recs])
        for r in recs:
            batch.append((r.id, got[r.id]))
            size += r.raw_len
            if size >= groups.GROUP_BYTES:
                yield from flush() if len(batch) > 1 else ()
                batch, size = [], 0
    if len(batch) > 1:
        yield from flush()
