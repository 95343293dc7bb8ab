"""Resemblance detection: super-features of chunks and the index of bases.

Super-features are computed in C (`gfs._native.superfeatures`, next to the
chunker); `gfs.superfeatures_reference` is their executable specification.
The index is the `resemblance` value table (docs/format.md, "Resemblance and
delta chunks"): key `j` u8 + super-feature u64 BE, value a base chunk id.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence

from gfs import chunking
from gfs.codec import CODEC_RAW, CODEC_ZSTD, Buffer
from gfs.meta import ReadTxn, WriteTxn

#: The index's value table.
TABLE = "resemblance"
#: Super-features per chunk.
SUPER = 3
#: Chunks shorter than this are neither deltas nor bases (policy): their
#: saving cannot pay for an index entry and a second read.
MIN_CHUNK = 4096

_SF = struct.Struct("<3Q")


def superfeatures(buf: Buffer, cuts: list[int]) -> list[tuple[int, int, int]]:
    """The 3 super-features of each chunk of `buf` ending at `cuts` (native, GIL released)."""
    raw = chunking.superfeatures(buf, cuts)
    return [_SF.unpack_from(raw, 24 * k) for k in range(len(cuts))]


def cut_superfeatures(buf: Buffer, params: chunking.ChunkParams = chunking.DEFAULT_PARAMS
                      ) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Chunk `buf` and compute each chunk's super-features in one pass (native)."""
    cuts, raw = chunking.cut_superfeatures(buf, params)
    return cuts, [_SF.unpack_from(raw, 24 * k) for k in range(len(cuts))]


def chunk_superfeatures(chunk: Buffer) -> tuple[int, int, int]:
    """The 3 super-features of one chunk."""
    n = memoryview(chunk).nbytes
    return superfeatures(chunk, [n])[0] if n else (0, 0, 0)


def index_keys(sfs: Sequence[int]) -> list[bytes]:
    """The index keys of a chunk's super-features (none for a chunk without samples)."""
    return [bytes([j]) + sf.to_bytes(8, "big") for j, sf in enumerate(sfs) if sf]


def chunk_index_keys(chunks: Sequence[Buffer]) -> list[list[bytes]]:
    """`index_keys(chunk_superfeatures(c))` of each chunk of `chunks`, computed in one
    native call that lets the GIL go for the batch (a put's main thread computed them
    one chunk at a time holding it: ~0.06 s of the release series' first snapshot)."""
    return chunking.index_keys_many(chunks)


def find_base(txn: ReadTxn, keys: Iterable[bytes],
              known: Mapping[bytes, bytes | None] | None = None) -> bytes | None:
    """A stored chunk that may be a base (`usable_base`) sharing a super-feature, or None.

    Stale entries (chunk gone, lost, or not usable) are ignored. `known`: index values
    of some keys already read in `txn` (None: not in the index).
    """
    return next(candidates(txn, keys, known), None)


def candidates(txn: ReadTxn, keys: Iterable[bytes],
               known: Mapping[bytes, bytes | None] | None = None) -> Iterator[bytes]:
    """The distinct usable bases the index names under `keys`, in key order (stale
    entries skipped, as in `find_base`)."""
    seen: set[bytes] = set()
    for key in keys:
        base = known[key] if known is not None and key in known else txn.get_value(TABLE, key)
        if base is None or base in seen:
            continue
        seen.add(base)
        if usable_base(txn, base):
            yield base


def _whole(txn: ReadTxn, cid: bytes) -> bool | None:
    """True for a chunk stored whole with a copy, False for a delta with a copy, None
    for a chunk without a record or a copy."""
    rec = txn.get_chunk(cid)
    if rec is None or not rec.locations:
        return None
    return rec.codec in (CODEC_RAW, CODEC_ZSTD)


def usable_base(txn: ReadTxn, cid: bytes) -> bool:
    """Whether chunk `cid` may be a delta's base: stored whole, a folded group member
    of a group stored whole, or a delta against a chunk stored whole (the dictionary,
    or a group for a member blob), so that chains stay at most 2 deep."""
    rec = txn.get_chunk(cid)
    if rec is not None and rec.group:
        return bool(_whole(txn, rec.group))
    whole = _whole(txn, cid)
    if whole is None or whole:
        return bool(whole)
    from gfs.delta import DELTAS  # gfs.delta builds on this module

    base = txn.get_value(DELTAS, cid)
    return base is not None and bool(_whole(txn, base))


def record_bases(txn: WriteTxn, new: Iterable[tuple[bytes, Sequence[bytes]]]) -> int:
    """Enter each chunk of `new` ((chunk, its keys), in order) under each of its keys
    that has no live base yet (`find_base`), the index's values of all the keys read
    in one `get_values` (a commit of a first snapshot enters ~3 keys for each of
    thousands of new chunks: one lookup a key was ~10% of its committer's time);
    returns how many entries it made."""
    items = [(cid, keys) for cid, keys in new if keys]
    if not items:
        return 0
    found = txn.get_values(TABLE, {key for _, keys in items for key in keys})
    taken = 0
    for cid, keys in items:
        for key in keys:
            base = found.get(key)
            if base is None or not usable_base(txn, base):  # as find_base(txn, (key,))
                txn.put_value(TABLE, key, cid)
                found[key] = cid
                taken += 1
    return taken


def forget(txn: WriteTxn, cids: set[bytes]) -> int:
    """Drop the index entries that name one of `cids` (chunks gc deletes); returns how many."""
    stale = [key for key, value in txn.iter_values(TABLE) if value in cids]
    for key in stale:
        txn.delete_value(TABLE, key)
    return len(stale)
