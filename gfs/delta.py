"""Delta blobs (codec 2): a chunk stored as zstd with a base chunk as prefix.

docs/format.md, "Resemblance and delta chunks". The payload is the base id
(16 bytes) and one zstd frame compressed with the base chunk's raw bytes as a
raw-content dictionary (zstd's prefix, what `zstd --patch-from` does). The
chunk id stays the id of the plain content; decoding verifies it. A two-base
delta (codec 4, sent and sealed only) names two bases and uses both, one after
the other, as the prefix ("Two-base delta blob (codec 4)").
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import xxhash
import zstandard

from gfs import resemblance
from gfs.codec import (
    BASED_CODECS,
    BLOB_HEADER_LEN,
    CHUNK_ID_LEN,
    CODEC_DELTA,
    CODEC_DELTA2,
    CODEC_RAW,
    CODEC_ZSTD,
    BaseReader,
    BlobHeader,
    Buffer,
    _corrupt,
    chunk_id,
    encode_blobs,
    parse_blob_header,
)
from gfs.errors import ChunkMissingError, CorruptChunkError
from gfs.meta import ChunkRecord, ReadTxn, WriteTxn
from gfs.zstd_contexts import ContextCache

log = logging.getLogger("hutong.delta")

#: The value table of delta chunks: delta chunk id -> base id.
DELTAS = "deltas"

#: A delta is kept only when its payload is below this fraction of the chunk
#: stored whole (policy; docs/format.md): every read of a delta also reads its
#: base, so a small saving is not worth it. A starting point, not yet measured.
SAVING_NUM, SAVING_DEN = 3, 4


def _dictionary(base_raw: Buffer) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(bytes(base_raw),
                                         dict_type=zstandard.DICT_TYPE_RAWCONTENT)


#: Bytes of bases whose prepared zstd contexts one thread keeps (LRU). Building a
#: context loads the base into zstd's match tables; on the release series' small
#: files against a 64 KiB dictionary that cost 124 us per chunk, reusing it 17 us.
CONTEXT_CACHE_BYTES = 4 << 20


_contexts = ContextCache(CONTEXT_CACHE_BYTES)


def _compressor(base_raw: Buffer, level: int, base_id: bytes | None) -> zstandard.ZstdCompressor:
    def make() -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(level=level, dict_data=_dictionary(base_raw),
                                        write_content_size=True, write_checksum=False,
                                        write_dict_id=False)
    if base_id is None:
        return make()
    key = b"c" + level.to_bytes(1, "big", signed=True) + _content_key(base_raw)
    ctx = _contexts.get(key, len(base_raw), make)
    assert isinstance(ctx, zstandard.ZstdCompressor)
    return ctx


def _content_key(base_raw: Buffer) -> bytes:
    """The cache key of a base: a 128-bit digest of its bytes (xxh3 runs at memory
    speed, ~100x cheaper than loading the base into a zstd context)."""
    return xxhash.xxh3_128_digest(base_raw)


def _decompressor(base_raw: Buffer) -> zstandard.ZstdDecompressor:
    ctx = _contexts.get(b"d" + _content_key(base_raw), len(base_raw),
                        lambda: zstandard.ZstdDecompressor(dict_data=_dictionary(base_raw)))
    assert isinstance(ctx, zstandard.ZstdDecompressor)
    return ctx


def delta_frame(raw: Buffer, base_raw: Buffer, level: int, base_id: bytes | None = None
                ) -> bytes:
    """One zstd frame of `raw` with `base_raw` as prefix (content size, no checksum).

    With `base_id` (the chunk id of `base_raw`) the zstd context loaded with the
    base is kept for the next delta against it on this thread.
    """
    return _compressor(base_raw, level, base_id).compress(raw)


def encode_delta(raw: Buffer, cid: bytes, base_id: bytes, base_raw: Buffer,
                 level: int) -> tuple[bytes, bytes]:
    """The (header, payload) of a delta blob of chunk `cid` against `base_id`."""
    _check_bases(cid, (base_id,))
    return _delta_blob(CODEC_DELTA, raw, cid, (base_id,),
                       delta_frame(raw, base_raw, level, base_id))


def encode_delta2(raw: Buffer, cid: bytes, bases: tuple[bytes, bytes],
                  base_raws: tuple[Buffer, Buffer], level: int) -> tuple[bytes, bytes]:
    """The (header, payload) of a two-base delta blob (codec 4) of chunk `cid` against
    `bases`, whose raw bytes are `base_raws` (the prefix: the first, then the second)."""
    _check_bases(cid, bases)
    prefix = bytes(base_raws[0]) + bytes(base_raws[1])
    return _delta_blob(CODEC_DELTA2, raw, cid, bases, delta_frame(raw, prefix, level))


def _check_bases(cid: bytes, bases: Sequence[bytes]) -> None:
    """ValueError unless `cid` and `bases` are chunk ids and the bases are distinct others."""
    if any(len(b) != CHUNK_ID_LEN for b in (cid, *bases)):
        raise ValueError(f"chunk ids must be {CHUNK_ID_LEN} bytes")
    if cid in bases or len(set(bases)) != len(bases):
        raise ValueError(f"chunk {cid.hex()} cannot be a delta against itself"
                         if len(bases) == 1 else
                         f"chunk {cid.hex()}: a two-base delta needs two other bases")


def _delta_blob(codec: int, raw: Buffer, cid: bytes, bases: Sequence[bytes],
                frame: bytes) -> tuple[bytes, bytes]:
    """(header, payload) of a delta blob: the base ids, then the frame."""
    payload = b"".join(bases) + frame
    return BlobHeader(codec, 0, len(raw), len(payload), cid).to_bytes(), payload


def bases_in(header: BlobHeader, payload: Buffer) -> tuple[bytes, ...]:
    """The base ids a delta payload (codec 2 or 4) names; `CorruptChunkError` when a
    two-base delta names one base twice or itself."""
    n = 2 if header.codec == CODEC_DELTA2 else 1
    ids = tuple(bytes(payload[k * CHUNK_ID_LEN:(k + 1) * CHUNK_ID_LEN]) for k in range(n))
    if n == 2 and (ids[0] == ids[1] or header.chunk_id in ids):
        raise _corrupt("two-base delta names a base twice or itself", header.chunk_id)
    return ids


def pays(delta_payload_len: int, whole_payload_len: int) -> bool:
    """Whether a delta of this size is worth its extra read (the saving threshold)."""
    return delta_payload_len * SAVING_DEN < whole_payload_len * SAVING_NUM


def base_of(blob: Buffer) -> bytes:
    """The base id named by a delta or member blob (its header is checked)."""
    head = parse_blob_header(blob)
    if head.codec not in BASED_CODECS:
        raise ValueError(f"chunk {head.chunk_id.hex()} is not stored as a delta")
    if len(blob) < BLOB_HEADER_LEN + CHUNK_ID_LEN:
        raise _corrupt("truncated delta payload", head.chunk_id)
    return bytes(blob[BLOB_HEADER_LEN:BLOB_HEADER_LEN + CHUNK_ID_LEN])


def decode_delta_payload(header: BlobHeader, payload: Buffer, base_raw: Buffer,
                         second_raw: Buffer | None = None) -> bytes:
    """The raw chunk of a delta payload given its base's verified raw bytes (a two-base
    delta: both bases', `second_raw` the second's).

    Checks the frame's declared size before decompressing (bounded by the raw
    length) and the digest of the result; raises `CorruptChunkError` naming
    the chunk and its base.
    """
    cid = header.chunk_id
    view = memoryview(payload)
    ids = bases_in(header, view)
    if (second_raw is None) != (len(ids) == 1):
        raise ValueError(f"chunk {cid.hex()}: a delta against {len(ids)} bases decoded "
                         f"with {1 if second_raw is None else 2}")
    if second_raw is not None:
        base_raw = bytes(base_raw) + bytes(second_raw)
    frame = view[len(ids) * CHUNK_ID_LEN:]
    of = "delta against base " + " and ".join(b.hex() for b in ids)
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise _corrupt(f"{of}: bad zstd frame header ({e})", cid) from e
    if size != header.raw_len:
        raise _corrupt(f"{of}: frame declares {size} bytes, header says {header.raw_len}", cid)
    try:
        raw = _decompressor(base_raw).decompress(
            frame, max_output_size=header.raw_len, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise _corrupt(f"{of}: does not decompress ({e})", cid) from e
    digest = chunk_id(raw)
    if len(raw) != header.raw_len or digest != cid:
        raise _corrupt(f"{of}: reconstructed digest {digest.hex()} does not match the id "
                       "(the delta or its base is damaged)", cid)
    return raw


# -- writing: choosing bases and encoding (used by gfs.store.WriteSession) ----------------

#: The dictionary is trained on chunks under this size (small files are one chunk
#: each). Once there is one, every new chunk that finds no resembling base is tried
#: as a delta against it: on the release series' Django chunks of 16 KiB and more
#: (28.9 MB) that stores 7.88 MB at level 3 where plain zstd stores 8.54 MB.
DICT_SMALL = 16 << 10
#: The dictionary is trained on about this many bytes of a session's first small
#: chunks, and is this large. `python -m bench dictionaries` on the release series
#: (5,415 small chunks): 64 KiB trained on 1 MiB stores the small chunks in 83.6%
#: of their whole size, in 0.23 s of training; 16 KiB saves half as much.
DICT_TRAIN_BYTES = 1 << 20
DICT_SIZE = 64 << 10
#: The COVER segment and d-mer sizes the dictionary is trained with. Left at 0, zstd
#: searches for the best pair, which cost 0.095 s of CPU on the release series' 1 MiB of
#: samples and 0.057 s on the small files' (on the put's main thread); this fixed pair
#: trains in 0.012-0.015 s and compresses the held-out small chunks of the releases
#: 0.2% smaller, of the small files 0.4% larger than the searched one.
DICT_SEGMENT = 2048
DICT_DMER = 6
#: Chunks smaller than this are not worth a dictionary (nor a sample).
DICT_MIN = 64
#: meta key: the id of the dictionary the last session that trained one stored; later
#: sessions use it instead of training again (docs/format.md, "Dictionary chunks").
DICTIONARY_KEY = "delta_dictionary"


def current_dictionary(txn: ReadTxn) -> bytes | None:
    """The id of the store's current dictionary chunk, if it is still stored whole."""
    cid = txn.get_meta(DICTIONARY_KEY)
    if cid is None:
        return None
    rec = txn.get_chunk(cid)
    if rec is None or not rec.locations or rec.codec not in (CODEC_RAW, CODEC_ZSTD):
        return None
    return cid


def set_dictionary(txn: WriteTxn, cid: bytes) -> None:
    """Make `cid` (a dictionary chunk recorded in this transaction) the current one."""
    txn.set_meta(DICTIONARY_KEY, cid)


@dataclass(slots=True)
class Plan:
    """What a write session decided for one new chunk before encoding it."""

    keys: list[bytes]  #: its resemblance index keys
    base: bytes | None = None  #: the base to try a delta against
    base_raw: Buffer | None = None  #: the base's bytes when it is new in this session
    dictionary: bool = False  #: the base is the store's dictionary (base_raw is set)


class DeltaPlanner:
    """Finds bases for a write session's new chunks and encodes them.

    `read_base` reads a committed chunk's verified raw bytes (`ChunkStore.read_chunk`).
    Bases are chunks stored whole: committed ones found in the resemblance
    index, or chunks new in this session (kept until the next commit). Small
    chunks use the dictionary `stored` (the store's current one) when it can be
    read, else one the session trains.
    """

    #: The least length of a chunk `look_ahead` and `plan` look up bases for.
    min_chunk = resemblance.MIN_CHUNK

    def __init__(self, read_base: BaseReader, stored: bytes | None = None) -> None:
        self._read_base = read_base
        self._stored = stored
        self._local: dict[bytes, tuple[bytes, Buffer]] = {}
        self._keys_of: dict[bytes, list[bytes]] = {}  # a local base's keys in `_local`
        self._samples: list[bytes | bytearray | memoryview] = []
        self._sampled = 0
        self._dict: tuple[bytes, bytes] | None = None  # (id, raw) once trained
        self._dict_new = False
        self._dict_failed = False
        # `look_ahead`: index keys of announced chunks, and the index's values of them as
        # of one snapshot (None: not in the index)
        self._ahead_keys: dict[bytes, list[bytes]] = {}
        self._ahead_values: tuple[ReadTxn, dict[bytes, bytes | None]] | None = None

    def look_ahead(self, txn: ReadTxn, new: Iterable[tuple[bytes, Buffer]]) -> None:
        """Announce new chunks (id, bytes) that the next `plan` calls bring: the index
        keys of all of them are looked up in one `get_values` on snapshot `txn` (the one
        those calls pass), not one `get_value` each (~12 us a key, 3,860 keys on the
        main thread of a smallfiles snapshot's put)."""
        keys_of: dict[bytes, list[bytes]] = {}
        todo: dict[bytes, Buffer] = {}
        for cid, piece in new:
            if len(piece) >= resemblance.MIN_CHUNK and cid not in keys_of:
                keys = self._ahead_keys.get(cid)  # computed at an earlier snapshot
                if keys is not None:
                    keys_of[cid] = keys
                else:
                    todo[cid] = piece
        keys_of.update(zip(todo, resemblance.chunk_index_keys(list(todo.values())),
                           strict=True))
        self._ahead_keys = keys_of
        wanted = {k for keys in keys_of.values() for k in keys}
        found = txn.get_values(resemblance.TABLE, wanted)
        self._ahead_values = (txn, {k: found.get(k) for k in wanted})

    def plan(self, txn: ReadTxn, cid: bytes, piece: Buffer) -> Plan | None:
        """The plan for a new chunk, or None when it takes no part."""
        if len(piece) < resemblance.MIN_CHUNK:
            return self._small(piece, [])
        keys = self._ahead_keys.pop(cid, None)
        if keys is None:
            keys = resemblance.index_keys(resemblance.chunk_superfeatures(piece))
        if not keys:
            return self._small(piece, [])
        for key in keys:
            local = self._local.get(key)
            if local is not None:
                return Plan(keys, local[0], local[1])
        known = self._ahead_values
        base = resemblance.find_base(txn, keys, known[1] if known and known[0] is txn else None)
        if base is None:
            for key in keys:
                self._local[key] = (cid, piece)
            self._keys_of.setdefault(cid, []).extend(keys)  # all its keys, if planned twice
            return self._small(piece, keys)
        return Plan(keys, base)

    def _small(self, piece: Buffer, keys: list[bytes]) -> Plan | None:
        """A chunk without a base: a delta against the dictionary once there is one;
        before that, a small chunk is a sample for it."""
        if self._dict is None and self._stored is not None:
            self._load_stored()
        if self._dict is not None:
            return Plan(keys, *self._dict, dictionary=True)
        if DICT_MIN <= len(piece) < DICT_SMALL and not self._dict_failed:
            self._samples.append(bytes(piece))
            self._sampled += len(piece)
            if self._sampled >= DICT_TRAIN_BYTES:
                self._train()
        return Plan(keys) if keys else None

    def _load_stored(self) -> None:
        cid, self._stored = self._stored, None
        assert cid is not None
        try:
            self._dict = (cid, self._read_base(cid))
        except (CorruptChunkError, ChunkMissingError) as e:
            log.warning("the store's dictionary %s cannot be read (%s): training another",
                        cid.hex(), e)

    def _train(self) -> None:
        samples, self._samples, self._sampled = self._samples, [], 0
        try:
            raw = zstandard.train_dictionary(DICT_SIZE, samples, k=DICT_SEGMENT, d=DICT_DMER,
                                             level=3).as_bytes()
        except zstandard.ZstdError as e:
            log.info("no dictionary for this session's small chunks: %s", e)
            self._dict_failed = True
            return
        self._dict = (chunk_id(raw), raw)
        self._dict_new = True

    @property
    def dictionary_id(self) -> bytes | None:
        """The id of the dictionary this session uses, once it has one."""
        return self._dict[0] if self._dict is not None else None

    def take_dictionary(self) -> tuple[bytes, bytes] | None:
        """(id, raw bytes) of a dictionary trained since the last call: the session
        stores it as a chunk (whole) in the same commit as the deltas against it."""
        if not self._dict_new:
            return None
        self._dict_new = False
        return self._dict

    def clear(self) -> None:
        """Forget the session's own bases (at commit: they are in the index then)."""
        self._local.clear()
        self._keys_of.clear()

    def forget(self, cids: AbstractSet[bytes]) -> None:
        """Forget the session's own bases among `cids` (committed: the index has them)."""
        if cids:
            # by each base's own keys: rebuilding `_local` at each commit cost the put's
            # main thread O(bases held) per batch (0.03-0.04 s on the release series)
            local = self._local
            for cid in cids:
                for key in self._keys_of.pop(cid, ()):
                    held = local.get(key)
                    if held is not None and held[0] == cid:
                        del local[key]

    def encode(self, raws: Sequence[Buffer], ids: Sequence[bytes],
               plans: Sequence[Plan | None], level: int) -> list[tuple[bytes, Buffer]]:
        """Each chunk as a delta where it pays, else as `encode_blobs` stores it.

        A delta against the dictionary is made first and kept when it saves 1/64
        of the raw bytes (the rule `encode_blobs` applies to compression): the
        chunk is then not compressed a second time to compare, and a restore reads
        the dictionary once per batch, so its extra read costs next to nothing.
        A delta against another base must beat the whole blob by `pays`.
        """
        done: dict[int, tuple[bytes, Buffer]] = {}
        for i, plan in enumerate(plans):
            if plan is not None and plan.dictionary and plan.base and plan.base_raw:
                # at the store's level: only chunks too large for a group get here
                # (`groups.groupable`); at level + 3 the first snapshot of `bench ingest
                # --quick` spent 0.165 s of CPU on them where level 3 takes 0.075 s, for
                # 1% fewer bytes (the store's pools: 0.54%), numpy's binaries among them
                header, payload = encode_delta(raws[i], ids[i], plan.base, plan.base_raw,
                                               level)
                raw_len = len(raws[i])
                if len(payload) < raw_len - raw_len // 64:
                    done[i] = (header, payload)
        rest = [i for i in range(len(raws)) if i not in done]
        whole = encode_blobs([raws[i] for i in rest], [ids[i] for i in rest], level)
        done.update(zip(rest, whole, strict=True))
        out = [done[i] for i in range(len(raws))]
        for i, plan in enumerate(plans):
            if plan is None or plan.base is None or plan.dictionary:
                continue
            try:
                base_raw = (plan.base_raw if plan.base_raw is not None
                            else self._read_base(plan.base))
            except (CorruptChunkError, ChunkMissingError) as e:
                log.warning("chunk %s stored whole: its base %s cannot be read (%s)",
                            ids[i].hex(), plan.base.hex(), e)
                continue
            header, payload = encode_delta(raws[i], ids[i], plan.base, base_raw, level)
            if pays(len(payload), len(out[i][1])):
                out[i] = (header, payload)
        return out


def commit_records(txn: WriteTxn, new: Mapping[bytes, tuple[bytes | None, list[bytes]]]
                   ) -> Counter[bytes]:
    """Record a commit's new chunks: `deltas` entries, index entries for whole ones
    and for deltas against the dictionary (`resemblance.usable_base`).

    `new` maps each newly recorded chunk to (its base or None, its index keys; none
    for a delta that may not be a base).
    Returns the references the deltas add to their bases (added to refcounts
    by the caller, in the same transaction).
    """
    refs: Counter[bytes] = Counter()
    for cid, (base, _) in new.items():
        if base is not None:
            txn.put_value(DELTAS, cid, base)
            refs[base] += 1
    resemblance.record_bases(txn, ((cid, keys) for cid, (_, keys) in new.items()))
    return refs


def release_chain(txn: WriteTxn, deleted: Iterable[bytes],
                  pinned: set[bytes]) -> list[ChunkRecord]:
    """Before gc deletes the records of `deleted`: drop their `deltas` and index entries
    and the references their deltas hold on bases.

    Returns the records of bases that thereby fall to refcount 0 (and are not
    pinned): garbage too, for the caller to delete in the same transaction.
    """
    extra: list[ChunkRecord] = []
    todo = set(deleted)
    while todo:
        refs: Counter[bytes] = Counter()
        for cid in todo:
            base = txn.get_value(DELTAS, cid)
            if base is not None:
                txn.delete_value(DELTAS, cid)
                refs[base] -= 1
            elif (rec := txn.get_chunk(cid)) is not None and rec.group:
                refs[rec.group] -= 1  # a folded member pins its group by its record
        resemblance.forget(txn, todo)
        txn.add_refcounts(refs)
        todo = set()
        for base in refs:
            rec = txn.get_chunk(base)
            if rec is not None and rec.refcount == 0 and base not in pinned:
                extra.append(rec)
                todo.add(base)
    return extra


def base_refs(txn: ReadTxn) -> Iterator[bytes]:
    """The references delta chunks hold on their bases (one base id per delta), and
    folded group members on their groups (one group id per member)."""
    yield from (base for _, base in txn.iter_values(DELTAS))
    yield from (rec.group for rec in txn.iter_chunks() if rec.group)


class BaseChunkError(CorruptChunkError):
    """A delta chunk cannot be read because its base cannot; repair the base
    (`hutong fsck --repair --from STORE`): the delta's own bytes may be intact."""


def verified_base_reader(read: BaseReader) -> BaseReader:
    """`read`, with any failure to read a base raised as `BaseChunkError`, so a
    checker can tell a delta that is damaged from one whose base is."""
    def reader(base: bytes) -> bytes:
        try:
            return read(base)
        except (ChunkMissingError, CorruptChunkError) as e:
            raise BaseChunkError(f"base {base.hex()}",
                                 f"base chunk of a delta is unreadable: {e.strerror}") from e
    return reader
