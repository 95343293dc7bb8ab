"""Delta transfer: a chunk a receiver lacks, sent as a delta against a base it holds.

docs/format.md, "Delta transfer". The sender looks each missing chunk up in its
resemblance index, asks the receiver which candidate bases it holds (its
have-list), and sends a delta blob (codec 2, `gfs.delta.encode_delta`) where the
delta pays (`gfs.delta.pays`) against the whole blob. The receiver decodes it
against its own verified copy of the base (`gfs.codec.decode_blob` with a base
reader), so the chunk id of the plain content is checked before anything is
stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from gfs import delta, resemblance
from gfs.codec import BLOB_HEADER_LEN, BaseReader
from gfs.errors import HutongError
from gfs.store import ChunkStore

#: Asks the receiver which of these chunk ids it holds (its have-list).
Holds = Callable[[list[bytes]], list[bool]]
#: What is sent for a delta: (plain delta blob, the chunk's whole blob length) -> the
#: bytes to send, or None when the delta does not pay (then the chunk goes whole).
Wrap = Callable[[bytes, int], bytes | None]


def plain(delta_blob: bytes, whole_blob_len: int) -> bytes | None:
    """The delta blob itself, when its payload pays against the whole blob's."""
    if delta.pays(len(delta_blob) - BLOB_HEADER_LEN, whole_blob_len - BLOB_HEADER_LEN):
        return delta_blob
    return None


class MissingBaseError(HutongError, LookupError):
    """A delta names a base the receiver does not hold; the sender sends the chunk whole."""


#: Raw bytes of missing chunks examined per round (bounds the sender's memory).
BATCH_BYTES = 32 << 20
#: A delta whose payload at the store's level is over DEEP_OVER bytes carries much new
#: content (a delta that is mostly matches is far smaller and gains nothing from a higher
#: level): it is encoded again at DEEP_LEVEL, and the smaller is sent.
DEEP_OVER = 4096
DEEP_LEVEL = 19
#: A delta whose payload is over PAIR_OVER bytes is tried against two bases (when the
#: sender knows the chunk's neighbours); a smaller one has too little left to gain (a
#: sealed delta is padded to 512 bytes anyway).
PAIR_OVER = 512


#: Neighbours kept per chunk (a chunk found in many files, a common header, would
#: otherwise gather two from each, all asked about in the `has` question).
NEAR_MOST = 4


def neighbours(files: Iterable[Sequence[bytes]], of: Iterable[bytes]) -> dict[bytes, list[bytes]]:
    """The chunks before and after each chunk of `of` in `files` (each a file's chunk ids,
    in order), at most NEAR_MOST a chunk, first found first: where a delta against one
    base leaves much to send, the second base of a two-base delta is looked for there."""
    out: dict[bytes, list[bytes]] = {cid: [] for cid in of}
    for ids in files:
        for k, cid in enumerate(ids):
            near = out.get(cid)
            if near is None:
                continue
            for j in (k - 1, k + 1):
                if len(near) < NEAR_MOST and 0 <= j < len(ids) and ids[j] != cid \
                        and ids[j] not in near:
                    near.append(ids[j])
    return out


def delta_blobs(store: ChunkStore, missing: Sequence[bytes], holds: Holds,
                wrap: Wrap = plain,
                near: Mapping[bytes, Sequence[bytes]] | None = None) -> dict[bytes, bytes]:
    """The delta blob (as `wrap` makes it to send: plain, or sealed for another entity's
    site) of each chunk of `missing` that has a base the receiver holds and whose delta
    pays; chunks not in the result are sent whole. `near`: each chunk's `neighbours`,
    where second bases are looked for (two-base deltas; without it, one base each). A
    store without delta chunks (`[store] delta`) has no resemblance index: nothing is
    examined."""
    out: dict[bytes, bytes] = {}
    if not store.config.delta:
        return out
    batch: list[bytes] = []
    size = 0
    with store.engine.read() as txn:
        for cid in missing:
            rec = txn.get_chunk(cid)
            if rec is None or rec.raw_len < resemblance.MIN_CHUNK:
                continue
            batch.append(cid)
            size += rec.raw_len
            if size >= BATCH_BYTES:
                out |= _round(store, batch, holds, wrap, near)
                batch, size = [], 0
    if batch:
        out |= _round(store, batch, holds, wrap, near)
    return out


def _round(store: ChunkStore, cids: list[bytes], holds: Holds, wrap: Wrap,
           near: Mapping[bytes, Sequence[bytes]] | None) -> dict[bytes, bytes]:
    raws, cands = candidates(store, cids)
    asked = {b for found in cands.values() for b in found}
    if near is not None:  # a neighbour the receiver holds is a second base itself
        asked |= {n for cid in cands for n in near.get(cid, ())}
    ordered = sorted(asked)
    held = {b for b, h in zip(ordered, holds(ordered) if ordered else [], strict=True) if h}
    return encode(store, raws, cands, held, wrap, near)


def candidates(store: ChunkStore, cids: Sequence[bytes]
               ) -> tuple[dict[bytes, bytes], dict[bytes, list[bytes]]]:
    """The plain content and the candidate bases (resemblance index) of each chunk of
    `cids` that has any: the whole chunk's first, then those of its halves (a chunk
    holding the tail of one old chunk and the next resembles each in one half); a chunk
    this store cannot read is left out."""
    raws: dict[bytes, bytes] = {}
    cands: dict[bytes, list[bytes]] = {}
    with store.engine.read() as txn:
        for cid in cids:
            try:
                raw = store.read_chunk(cid)
            except HutongError:
                continue  # sent (or reported) by the whole-blob path
            half = len(raw) // 2
            pieces = [raw] + ([raw[:half], raw[half:]] if half >= resemblance.MIN_CHUNK
                              else [])
            keys = [k for p in pieces
                    for k in resemblance.index_keys(resemblance.chunk_superfeatures(p))]
            found = [b for b in resemblance.candidates(txn, keys) if b != cid]
            if found:
                raws[cid], cands[cid] = raw, found
    return raws, cands


def encode(store: ChunkStore, raws: dict[bytes, bytes], cands: dict[bytes, list[bytes]],
           held: set[bytes], wrap: Wrap = plain,
           near: Mapping[bytes, Sequence[bytes]] | None = None) -> dict[bytes, bytes]:
    """The delta blob (as `wrap` makes it) of each chunk of `cands` against its first
    candidate in `held`, where the delta pays; a chunk missing from `raws` is read.
    With `near` (`neighbours`), a delta over PAIR_OVER bytes is also tried against two
    bases, the second from its neighbours (`_second_bases`), and the smallest is kept
    (then compressed harder if still literal-heavy)."""
    out: dict[bytes, bytes] = {}
    level = store.config.zstd_level
    for cid, found in cands.items():
        base = next((b for b in found if b in held), None)
        if base is None:
            continue
        try:
            raw = raws[cid] if cid in raws else store.read_chunk(cid)
            base_raw = store.read_chunk(base)
            whole = len(store.read_blob(cid))
        except HutongError:
            continue
        pair: tuple[tuple[bytes, bytes], tuple[bytes, bytes]] | None = None
        header, payload = delta.encode_delta(raw, cid, base, base_raw, level)
        if near is not None and len(payload) > PAIR_OVER:
            for second in _second_bases(cid, base, near, cands, held):
                try:
                    second_raw = store.read_chunk(second)
                except HutongError:
                    continue
                # the second first: it comes from before the chunk more often
                bases, base_raws = (second, base), (second_raw, base_raw)
                two = delta.encode_delta2(raw, cid, bases, base_raws, level)
                if len(two[1]) < len(payload):
                    (header, payload), pair = two, (bases, base_raws)
        if len(payload) > DEEP_OVER and level < DEEP_LEVEL:  # literal-heavy: compress harder
            deep = (delta.encode_delta(raw, cid, base, base_raw, DEEP_LEVEL) if pair is None
                    else delta.encode_delta2(raw, cid, *pair, DEEP_LEVEL))
            if len(deep[1]) < len(payload):
                header, payload = deep
        sent = wrap(header + payload, whole)
        if sent is not None:
            out[cid] = sent
    return out


def _second_bases(cid: bytes, base: bytes, near: Mapping[bytes, Sequence[bytes]],
                  cands: Mapping[bytes, list[bytes]], held: set[bytes]) -> list[bytes]:
    """Second bases for `cid`'s delta against `base`: its other held candidates (those of
    its halves), each neighbour the receiver holds, else the neighbour's own first held
    candidate (a new chunk before it, itself a delta against the old chunk whose tail
    `cid` holds)."""
    out = [b for b in cands.get(cid, ()) if b in held and b not in (cid, base)]
    for n in near.get(cid, ()):
        second = n if n in held else next((b for b in cands.get(n, ()) if b in held), None)
        if second is not None and second not in (cid, base) and second not in out:
            out.append(second)
    return out


def base_reader(store: ChunkStore) -> BaseReader:
    """Reads a received delta's base from this store: `MissingBaseError` when it holds
    none, `gfs.delta.BaseChunkError` when its copy is damaged."""
    verified = delta.verified_base_reader(store.read_chunk)

    def read(base: bytes) -> bytes:
        with store.engine.read() as txn:
            rec = txn.get_chunk(base)
        if rec is None or not (rec.locations or rec.group):  # a folded member reads
            raise MissingBaseError(f"delta against base {base.hex()}, which this store does "
                                   "not hold; send the chunk whole")
        return verified(base)
    return read

