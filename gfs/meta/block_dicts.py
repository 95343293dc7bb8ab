"""Zstd dictionaries of packed tables (docs/format.md, "Block dictionaries").

A table's blocks compress alone (about 2 KiB of rows each, to fit a leaf page), so
what repeats from block to block is stored again in each: above all the chunk ids in
the manifests of files that recur in every snapshot of a versioned tree. Once a table
holds `TRAIN_MIN_RAW` bytes of packed rows, the next compaction that packs at least
`EVAL_MIN_RAW` bytes of new (hot) rows trains a dictionary on the packed rows and
tries it on the new ones: it is kept where it compresses them by `PAYS` and its own
bytes are made good within three such compactions, else the table is marked as having
none. Either way the decision is stored in the `meta` table under `dict.<table>` and
never changes; blocks compressed with the dictionary name it by its zstd dictionary
id, and blocks without it still read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import xxhash
import zstandard

from gfs.zstd_contexts import Context, ContextCache

__all__ = ["DICT_MAX", "EVAL_MIN_RAW", "PAYS", "TRAIN_MIN_RAW", "TRAIN_SAMPLE", "BlockDict",
           "meta_key", "train"]

#: A table's dictionary is decided once its packed rows hold this many bytes ...
TRAIN_MIN_RAW = 256 << 10
#: ... at a compaction that packs at least this many bytes of new rows.
EVAL_MIN_RAW = 64 << 10
#: At most this many bytes of rows are sampled, of the packed and of the new ones.
TRAIN_SAMPLE = 512 << 10
#: A dictionary is at most this large, and at most a quarter of its samples: the larger
#: it is, the more recurring chunk ids it holds (trained on the first snapshot's
#: manifests of `bench ingest --shape smallfiles`, 353 KB of rows, and tried on the
#: second's: with an eighth 0.76 of their bytes, a quarter 0.52, a half 0.40).
DICT_MAX = 128 << 10
_SHARE = 4
#: Kept where the new rows' blocks with it take at most this share of their bytes
#: without it (and it saves there at least a third of its size). Trained on the first
#: snapshot's rows of `bench ingest --shape smallfiles` and tried on the second's:
#: manifests 0.52 (their chunk ids recur) keep theirs; directory entries 0.86 (16 KB
#: saved by a 104 KB dictionary), chunks 0.86, inodes 0.96 and resemblance 1.00 have
#: none.
PAYS = 0.88
#: fastcover's segment and d-mer sizes (no parameter search: 15-20 ms a table).
_SEGMENT, _DMER = 1024, 8
_LEVEL = 3


@dataclass(frozen=True, eq=False)
class BlockDict:
    """One table's dictionary: its zstd id and bytes (equal and hashed by content)."""

    raw: bytes
    id: int = field(init=False)
    digest: bytes = field(init=False, repr=False)
    zdict: zstandard.ZstdCompressionDict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        zdict = zstandard.ZstdCompressionDict(self.raw, dict_type=zstandard.DICT_TYPE_FULLDICT)
        object.__setattr__(self, "zdict", zdict)
        object.__setattr__(self, "id", zdict.dict_id())
        object.__setattr__(self, "digest", xxhash.xxh3_128_digest(self.raw))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockDict) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @classmethod
    def load(cls, raw: bytes | None, table: str) -> BlockDict | None:
        """The dictionary stored for `table` (None if none, or b"": a compaction found
        none pays); ValueError if `raw` is not a zstd dictionary with an id."""
        if not raw:
            return None
        try:
            d = cls(bytes(raw))
        except zstandard.ZstdError as e:
            raise ValueError(f"the dictionary of table {table} is not a zstd dictionary "
                             f"({e})") from None
        if not d.id:
            raise ValueError(f"the dictionary of table {table} is not a zstd dictionary "
                             "(it has no dictionary id)")
        return d


def meta_key(table: str) -> bytes:
    """The `meta` key a table's dictionary is stored under."""
    return b"dict." + table.encode()


#: Dictionary bytes of the block contexts one thread keeps (a table's dictionary is at
#: most 128 KiB; contexts without one count a byte).
BLOCK_CONTEXT_BYTES = 2 << 20
_contexts = ContextCache(BLOCK_CONTEXT_BYTES)


def _cached(kind: bytes, d: BlockDict | None, level: int, make: Callable[[], Context]) -> Context:
    """This thread's context `kind` for blocks with `d` (or none) at `level`, made once."""
    key = kind + level.to_bytes(1, "big", signed=True) + (d.digest if d is not None else b"")
    return _contexts.get(key, len(d.raw) if d is not None else 1, make)


def compressor(d: BlockDict | None, level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor of blocks with `d` (or none) at `level`."""
    ctx = _cached(b"c", d, level, lambda: zstandard.ZstdCompressor(
        level=level, write_checksum=True, dict_data=d.zdict if d is not None else None))
    assert isinstance(ctx, zstandard.ZstdCompressor)
    return ctx


def decompressor(d: BlockDict | None) -> zstandard.ZstdDecompressor:
    """This thread's decompressor of blocks with `d` (or none)."""
    ctx = _cached(b"d", d, 0, lambda: zstandard.ZstdDecompressor(
        dict_data=d.zdict if d is not None else None))
    assert isinstance(ctx, zstandard.ZstdDecompressor)
    return ctx


def train(samples: Sequence[bytes], trial: Sequence[bytes]) -> BlockDict | None:
    """A dictionary trained on `samples` (raw blocks of the packed rows) that pays on
    `trial` (raw blocks of the new rows), or None: the trial's blocks with it take at
    most `PAYS` of their bytes without it, and three times what it saves there is at
    least its own size. None too where zstd cannot train one."""
    size = min(DICT_MAX, sum(map(len, samples)) // _SHARE)
    if size < 1024 or len(samples) < 8 or not trial:
        return None
    try:
        d = BlockDict(zstandard.train_dictionary(size, list(samples), k=_SEGMENT, d=_DMER,
                                                 level=_LEVEL).as_bytes())
    except zstandard.ZstdError:
        return None
    plain, with_dict = compressor(None, _LEVEL), compressor(d, _LEVEL)
    without = sum(len(plain.compress(s)) for s in trial)
    using = sum(len(with_dict.compress(s)) for s in trial)
    return d if using <= without * PAYS and 3 * (without - using) >= len(d.raw) else None
