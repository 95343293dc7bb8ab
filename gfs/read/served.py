"""Stored blobs as a peer takes them: what a site serves for `/v1/chunks/get`.

Bytes are read at a chunk's location as stored and are not verified here: the
peer verifies every blob against its id before using it (architecture invariant
1), so hashing them on both sides would be work done twice. A chunk stored on a
base (a delta or a group member) is served whole, rebuilt and verified through
`LocalSource.get_blob`, because the peer may not hold its base.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from gfs.codec import BASED_CODECS
from gfs.errors import HutongError
from gfs.packs import pack_key

if TYPE_CHECKING:
    from gfs.meta import ChunkRecord
    from gfs.store import ChunkStore


def stored_blob(store: ChunkStore, cid: bytes) -> bytes | None:
    """The blob of chunk `cid` as stored (first readable location), or None."""
    with store.engine.read() as txn:
        rec = txn.get_chunk(cid)
    if rec is None:
        return None
    if rec.codec in BASED_CODECS:
        try:
            return store.read_blob(cid)
        except HutongError:
            return None
    for loc in rec.locations:
        try:
            return bytes(store.pool(loc.pool).get(
                pack_key(loc.pack), loc.offset, loc.offset + loc.length))
        except HutongError:
            continue
    return None


def _plain_records(store: ChunkStore, cids: list[bytes]) -> list[ChunkRecord | None] | None:
    """The records of `cids` (None: absent) with one metadata transaction; None when one
    is stored on a base or has no location (its blob is not a plain read)."""
    with store.engine.read() as txn:
        recs = [txn.get_chunk(c) for c in cids]
    if any(r is not None and (r.codec in BASED_CODECS or not r.locations) for r in recs):
        return None
    return recs


def frame_sizes(store: ChunkStore, cids: list[bytes], frame: struct.Struct
                ) -> list[int] | None:
    """Bytes of each chunk's frame in the `stored_frames` answer (header and blob; the
    header alone where absent), known before any blob is read; None where the answer's
    length is not known ahead (`stored_frames` would return None)."""
    recs = _plain_records(store, cids)
    if recs is None:
        return None
    return [frame.size + (0 if r is None else r.locations[0].length) for r in recs]


def stored_frames(store: ChunkStore, cids: list[bytes], frame: struct.Struct
                  ) -> tuple[bytearray, int] | None:
    """The blobs of `cids`, each after a `frame` header packing its length (0: absent),
    in one buffer read with one metadata transaction, and how many the store holds.

    None when the part holds a chunk stored on a base, or one whose first location
    cannot be read whole: the caller then reads it chunk by chunk with `stored_blob`.
    """
    recs = _plain_records(store, cids)
    if recs is None:
        return None
    lens = [0 if r is None else r.locations[0].length for r in recs]
    out = bytearray(frame.size * len(cids) + sum(lens))
    at = 0
    with memoryview(out) as view:
        for rec, n in zip(recs, lens, strict=True):
            frame.pack_into(out, at, n)
            at += frame.size
            if rec is not None:
                loc = rec.locations[0]
                try:
                    got = store.pool(loc.pool).readinto(
                        pack_key(loc.pack), loc.offset, view[at:at + n])
                except HutongError:
                    got = -1
                if got != n:
                    return None
            at += n
    return out, len(recs) - recs.count(None)
