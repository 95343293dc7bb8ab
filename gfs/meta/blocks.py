"""Packed blocks of cold metadata rows (docs/format.md, "Packed blocks").

Compaction packs the rows of the large LMDB tables into zstd blocks of
consecutive keys, kept in a block database beside each table (`inodes.z`);
rows written since stay in the table itself (hot). `BlockTxn` wraps a py-lmdb
transaction so that the engine reads the two as one table: the hot row first,
then the block holding the key; scans merge both in key order; a delete
removes the key from both. `pack` cuts a sorted row stream into blocks;
`encode_block` / `decode_block` are the block codec.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import zstandard

from gfs import _rowpack
from gfs.errors import FormatError, MetadataDamagedError
from gfs.meta.block_dicts import BlockDict, compressor, decompressor, meta_key
from gfs.meta.encoding import PACKED_FORMAT, _varints, _varints_to

__all__ = ["DECODED_BLOCKS", "MAX_BLOCK", "PACKED_FORMAT", "PACKED_TABLES", "TARGET_RAW",
           "BlockTxn", "RepackCount", "block_db", "block_rows", "decode_block",
           "encode_block", "pack", "repack"]

#: The tables compaction packs (the large ones; docs/format.md).
PACKED_TABLES = ("inodes", "dirents", "manifests", "chunks", "heat", "resemblance", "deltas")
#: A block is cut once its rows' raw bytes reach this (2 KiB blocks were 0.77 MB on
#: smallfiles where 16 KiB ones were 0.69 MB but overflowed leaf pages).
TARGET_RAW = 2048
#: A block of two or more rows is split while its frame plus key exceeds this, so it
#: stays inside an LMDB leaf page (a value over ~2,030 bytes takes overflow pages).
MAX_BLOCK = 2000
#: Bytes of an LMDB leaf page that hold nodes (4 KiB pages less their 16-byte header),
#: and the least room worth a block of its own (less starts a new page).
_PAGE_ROOM = 4096 - 16
_MIN_FILL = 320
#: Raw bytes two encodes must be apart to measure the compression ratio between them.
_SPAN = 256
#: Decoded blocks kept (keyed by the block's bytes: a rewritten block is a miss).
DECODED_BLOCKS = 256
#: Decoded blocks a transaction keeps per packed table for its lookups, by block
#: key (~2 KiB of rows each): past this its cache starts again.
TXN_DECODED_BLOCKS = 1024
#: Cursor seeks a transaction makes into one block database before it lists the block
#: keys once and finds a key's block by bisecting that list (a seek drops the GIL: a
#: put's dedup lookups made 3,429 on a small-files snapshot, 17 us each beside the
#: other threads) ...
INDEX_AFTER_SEEKS = 32
#: ... when the database has at most this many blocks (a list of ~50 bytes a block).
INDEX_MAX_BLOCKS = 16384
_LEVEL = 3
#: A block's body: its rows' key lengths (u16) and value lengths (u32), little-endian,
#: then its keys, then its values (built and split by gfs._rowpack).

Rows = tuple[tuple[bytes, ...], tuple[bytes, ...]]


def block_db(table: str) -> bytes:
    """The name of `table`'s block database."""
    return table.encode() + b".z"


def _zstd(dictionary: BlockDict | None = None
          ) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """This thread's zstd contexts for blocks with `dictionary` (or none)."""
    return compressor(dictionary, _LEVEL), decompressor(dictionary)


def encode_block(rows: Sequence[tuple[bytes, bytes]], dictionary: BlockDict | None = None
                 ) -> bytes:
    """One block of `rows` (at least one, keys strictly ascending, at most 65,535 bytes),
    compressed with `dictionary` if given (its frame then names the dictionary's id)."""
    if not rows:
        raise ValueError("a block holds at least one row")
    keys = [k for k, _ in rows]
    if not all(map(operator.lt, keys, keys[1:])):
        raise ValueError("block rows out of order (keys must be strictly ascending)")
    return _encode(keys, [v for _, v in rows], dictionary=dictionary)


def raw_block(rows: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The bytes a block of `rows` compresses: its body (lengths, keys and values)."""
    return _rowpack.body([k for k, _ in rows], [v for _, v in rows], 0, len(rows))


def _encode(keys: Sequence[bytes], values: Sequence[bytes], lo: int = 0, hi: int = -1,
            dictionary: BlockDict | None = None) -> bytes:
    """The block of rows `lo` to `hi` (default: the last) of `keys` (strictly ascending:
    the caller checked) and `values`."""
    if hi < 0:
        hi = len(keys)
    n = hi - lo
    head = bytes((n,)) if n < 0x80 else _head(n)
    return head + _zstd(dictionary)[0].compress(_rowpack.body(keys, values, lo, hi))


def _head(n: int) -> bytes:
    out = bytearray()
    _varints_to(out, (n,))
    return bytes(out)


def block_rows(data: bytes) -> int:
    """The row count of a block, read from its head (no decompression)."""
    n = data[0]  # most blocks hold fewer than 128 rows: a one-byte varint
    return n if n < 0x80 else _varints(data, 0, 1)[0][0]


def _decode_raw(data: bytes, dictionary: BlockDict | None = None) -> Rows:
    (n,), pos = _varints(data, 0, 1)
    if not n:
        raise ValueError("no rows")
    frame = data[pos:]
    wants = zstandard.get_frame_parameters(frame).dict_id
    if wants and (dictionary is None or dictionary.id != wants):
        has = "none" if dictionary is None else f"dictionary {dictionary.id}"
        raise ValueError(f"its frame needs block dictionary {wants}, the table has {has}")
    if not wants:
        dictionary = None
    size = zstandard.frame_content_size(frame)
    # A zstd block of at most 128 KiB takes a 3-byte header, so no frame decodes to
    # more than 2**16 times its length: a damaged header's size is refused before it
    # is allocated (it could name up to 2**64 bytes).
    if not 0 <= size <= len(frame) << 16:
        raise ValueError(f"the frame declares {size} bytes in {len(frame)}")
    raw = _zstd(dictionary)[1].decompress(frame, max_output_size=size)
    rows: Rows = _rowpack.split(raw, n)  # lengths, sizes and key order checked
    return rows


#: Decoded blocks by their bytes and dictionary (a repack, which decodes each once,
#: goes past it).
_decode = lru_cache(maxsize=DECODED_BLOCKS)(_decode_raw)


def decode_block(table: str, block_key: bytes, data: bytes,
                 dictionary: BlockDict | None = None, *, cached: bool = True) -> Rows:
    """(keys, values) of block `block_key` of `table` (whose dictionary is `dictionary`);
    FormatError when it does not decode or its last key is not `block_key`. `cached`:
    kept among the blocks decoded last (a repack, which decodes each once, is not)."""
    try:
        rows = (_decode if cached else _decode_raw)(bytes(data), dictionary)
    except (ValueError, IndexError, zstandard.ZstdError) as e:
        raise MetadataDamagedError(f"packed block {block_key.hex()} of table {table}: {e}; the "
                                   "metadata is damaged, run `hutong fsck`") from None
    if rows[0][-1] != block_key:
        raise MetadataDamagedError(f"packed block {block_key.hex()} of table {table}: its last row "
                                   "is not its key; the metadata is damaged, run `hutong fsck`")
    return rows


_first, _second = operator.itemgetter(0), operator.itemgetter(1)
#: The packer's limits, as gfs._rowpack.cut takes them.
_LIMITS = (TARGET_RAW, MAX_BLOCK, _PAGE_ROOM, _MIN_FILL, _SPAN)


def _node(key: bytes, data: bytes) -> int:
    """Bytes a row takes in an LMDB leaf page: its pointer, header, key and value."""
    return 2 + ((8 + len(key) + len(data) + 1) & ~1)


class _Packer:
    """Rows in, blocks out, cut to fill LMDB leaf pages: compaction appends the blocks
    in key order, so each leaf page takes blocks until the next does not fit. A block
    is cut once its rows reach TARGET_RAW bytes, shorter where that fills the rest of
    the current page (a block's rows then decide its length, not a fixed count).

    Rows come in runs (`add_rows`: a block's merged rows, a batch of hot rows) and are
    buffered as parallel lists with running byte counts (gfs._rowpack.sums); the
    cuts, found by bisecting those counts, and the blocks' bodies are made in C
    (gfs._rowpack.cut), zstd called from there: no Python code runs once a row or
    once an encode (the row-at-a-time packer this replaced spent ~3/4 of a put's
    compaction there). It cuts exactly where that one did: when the buffer first
    reaches TARGET_RAW bytes, from the rows buffered until then."""

    __slots__ = ("base", "c2", "c6", "dictionary", "keys", "room", "seen", "slope", "values")

    def __init__(self, dictionary: BlockDict | None = None) -> None:
        self.dictionary = dictionary  # blocks are compressed with it
        #: The buffered rows, and running sums of their bytes from the first: c2[i] is
        #: the first i rows' keys and values plus 2 a row (the cut's measure), c6[i]
        #: plus 6 a row (a block's raw bytes: its lengths' too).
        self.keys: list[bytes] = []
        self.values: list[bytes] = []
        self.c2, self.c6 = [0], [0]
        self.room = _PAGE_ROOM  # bytes left in the leaf page being filled
        # The line guessing a block's frame bytes from its rows' raw bytes (_emit), and
        # the raw bytes of the last encode, which it passes through.
        self.slope, self.base, self.seen = 0.5, 0.0, 0

    def add(self, rows: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        """The blocks cut as `rows` (ascending, after every row added before) come in."""
        batch = list(rows)
        yield from self.add_rows(list(map(_first, batch)), list(map(_second, batch)))

    def add_rows(self, keys: Sequence[bytes], values: Sequence[bytes]
                 ) -> Iterator[tuple[bytes, bytes]]:
        """`add` for rows given as their keys (ascending, after every key added
        before; ValueError if not) and values."""
        if not keys:
            return
        ks, c2, c6 = self.keys, self.c2, self.c6
        _rowpack.sums(keys, values, c2, c6, ks[-1] if ks else None)  # checks their order
        first = len(ks)
        ks += keys
        self.values += values
        s, end, added = 0, len(ks), first
        while True:
            # the rows buffered when the buffer first reaches TARGET_RAW (the rows
            # before `added` stayed below it), then the blocks cut from them
            m = bisect.bisect_left(c2, c2[s] + TARGET_RAW, added + 1)
            if m > end:
                break
            s = yield from self._emit(s, m, final=False)
            added = m
        del ks[:s], self.values[:s], c2[:s], c6[:s]

    def flush(self) -> Iterator[tuple[bytes, bytes]]:
        s = yield from self._emit(0, len(self.keys), final=True)
        del self.keys[:s], self.values[:s], self.c2[:s], self.c6[:s]

    def passed(self, key: bytes, data: bytes) -> None:
        """Account a block passed on as it is (repack) in the page fill."""
        size = len(key) + len(data)  # as _node, inlined (once a block passed)
        node = 2 + ((9 + size) & ~1)
        if size > MAX_BLOCK:  # on overflow pages: the node holds their page number
            node = min(node, _node(key, bytes(8)))
        if node > self.room:
            self.room = _PAGE_ROOM
        self.room -= node

    def _emit(self, s: int, m: int, final: bool) -> Generator[tuple[bytes, bytes], None, int]:
        """Blocks of the buffered rows from `s` to `m` while they hold TARGET_RAW bytes
        (all, if `final`); returns where the rows not cut start.

        Each block takes the most leading rows whose node fits the rest of the page
        (or a fresh one): a bracketed search (lo rows fit, hi do not) whose guesses
        come from a line through the last blocks encoded (frame bytes against raw
        bytes), so most blocks take one encode when all their rows fit and two or
        three when they do not, where bisecting took ~4 to 8; after four guesses it
        bisects. gfs._rowpack.cut runs it (the line's state passes through)."""
        state: list[float] = [self.room, self.slope, self.base, self.seen]
        s, out = _rowpack.cut(self.keys, self.values, self.c2, self.c6, s, m, final, state,
                              _zstd(self.dictionary)[0].compress, _LIMITS)
        self.room, self.seen = int(state[0]), int(state[3])
        self.slope, self.base = state[1], state[2]
        yield from out
        return s


def pack(rows: Iterable[tuple[bytes, bytes]], dictionary: BlockDict | None = None
         ) -> Iterator[tuple[bytes, bytes]]:
    """(block key, block) for `rows` (keys strictly ascending), in key order, compressed
    with `dictionary` if given."""
    packer = _Packer(dictionary)
    yield from packer.add(rows)
    yield from packer.flush()


@dataclass
class RepackCount:
    """What `repack` met: hot rows that replaced a packed row of the same key."""

    shadowed: int = 0


#: Hot rows `repack` takes from its stream at a time.
_HOT_BATCH = 1024


class _Hot:
    """A stream of ascending (key, value) rows read in batches as keys and values."""

    __slots__ = ("done", "i", "keys", "rows", "values")

    def __init__(self, rows: Iterator[tuple[bytes, bytes]]) -> None:
        self.rows = rows
        self.keys: list[bytes] = []
        self.values: list[bytes] = []
        self.i = 0  # the first row not taken
        self.done = False

    def upto(self, key: bytes) -> int:
        """The end of the rows with keys at or before `key` (from `i`, reading more)."""
        while True:
            j = bisect.bisect_right(self.keys, key, self.i)
            if j < len(self.keys) or not self._more():
                return j

    def _more(self) -> bool:
        """Read another batch (the rows taken dropped); whether there was one."""
        if self.done:
            return False
        if not _rowpack.take(self.rows, _HOT_BATCH, self.keys, self.values):
            self.done = True
            return False
        del self.keys[:self.i], self.values[:self.i]
        self.i = 0
        return True

    def rest(self) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The rows not taken, as (keys, values) batches."""
        while self.i < len(self.keys) or self._more():
            yield self.keys[self.i:], self.values[self.i:]
            self.i = len(self.keys)


def repack(table: str, hot: Iterator[tuple[bytes, bytes]],
           packed: Iterable[tuple[bytes, bytes]], count: RepackCount | None = None,
           dictionary: BlockDict | None = None, *, recode: bool = False
           ) -> Iterator[tuple[bytes, bytes]]:
    """The blocks of `table` once its `hot` rows (ascending) are merged into its `packed`
    blocks ((block key, block), ascending): a block no hot row falls in is passed on as
    it is (not decoded), so a compaction re-encodes only where rows changed. `count`
    (if given) counts the packed rows the hot ones replaced. `dictionary`: the table's
    (blocks it encodes use it; the packed ones may or may not); with `recode`, every
    block is decoded and encoded again (none passed on as it is)."""
    packer = _Packer(dictionary)
    h = _Hot(hot)
    for bkey, data in packed:
        j = h.upto(bkey)  # reading more hot rows moves `h.i`: read it after
        i = h.i
        if i == j and not packer.keys and not recode:
            packer.passed(bkey, data)
            yield bkey, data
            continue
        keys, values = decode_block(table, bkey, data, dictionary, cached=False)
        if i == j:
            yield from packer.add_rows(keys, values)
            continue
        mkeys, mvalues, shadowed = _rowpack.merge(keys, values, h.keys, h.values, i, j)
        if count is not None:
            count.shadowed += shadowed
        h.i = j
        yield from packer.add_rows(mkeys, mvalues)
    for hkeys, hvalues in h.rest():
        yield from packer.add_rows(hkeys, hvalues)
    yield from packer.flush()


def _merge(hot: Iterator[tuple[bytes, bytes]], cold: Iterator[tuple[bytes, bytes]]
           ) -> Iterator[tuple[bytes, bytes]]:
    """Two ascending row streams as one; a hot row shadows a cold one of the same key."""
    h = next(hot, None)
    c = next(cold, None)
    while h is not None and c is not None:
        if h[0] <= c[0]:
            if h[0] == c[0]:
                c = next(cold, None)
            yield h
            h = next(hot, None)
        else:
            yield c
            c = next(cold, None)
    rest, last = (hot, h) if h is not None else (cold, c)
    if last is not None:
        yield last
        yield from rest


class BlockTxn:
    """A py-lmdb transaction seen through packed blocks: `get`, `put`, `delete` and
    `rows` of a packed table's handle read and change its hot rows and its blocks as
    one table (other handles pass straight through). `cold` maps each packed table's
    handle to (table name, block database handle)."""

    __slots__ = ("_cold", "_curs", "_decoded", "_dicts", "_empty", "_full", "_hot", "_index",
                 "_last", "_meta", "_pending", "_seeks", "through", "txn")

    def __init__(self, txn: Any, cold: dict[Any, tuple[str, Any]], *,
                 through: bool = False, meta: Any = None) -> None:
        self.txn = txn
        self._cold = cold
        #: the `meta` table's handle (the tables' dictionaries), and those read
        self._meta = meta
        self._dicts: dict[str, BlockDict | None] = {}
        #: write through: a put of a packed key changes its block (once per block, at
        #: `flush`) instead of adding a hot row; for transactions that rewrite many
        #: existing rows and add few (heat and access times after reads)
        self.through = through
        self._pending: dict[Any, dict[bytes, bytes]] = {}
        self._empty: set[Any] = set()  # block databases seen empty in this transaction
        self._full: set[Any] = set()  # ... and seen not empty (a delete may empty one)
        #: the block a `get` decoded last, per block database: a key inside its range
        #: can be in no other block (ranges do not overlap), so the next `get` of a
        #: neighbour skips the cursor (a restore reads inodes and manifests in runs)
        self._last: dict[Any, Rows] = {}
        #: whether a packed table's hot part has rows (a compacted store's have none:
        #: reads then skip the hot lookup and the merge)
        self._hot: dict[Any, bool] = {}
        self._curs: dict[Any, Any] = {}  # a cursor per block database, for lookups
        #: blocks lookups decoded, per block database, by block key (at most
        #: TXN_DECODED_BLOCKS each): lookups of random keys (chunk ids: a put's dedup
        #: checks, its refcounts) each fell in another block and decoded it again;
        #: dropped for a block database whenever this transaction rewrites its blocks
        self._decoded: dict[Any, dict[bytes, Rows]] = {}
        #: per block database: the seeks `_lookup_block` made, and once they reach
        #: INDEX_AFTER_SEEKS its block keys in order (dropped with `_decoded`)
        self._seeks: dict[Any, int] = {}
        self._index: dict[Any, list[bytes]] = {}

    def dictionary(self, table: str) -> BlockDict | None:
        """`table`'s block dictionary (read once per transaction), or None."""
        try:
            return self._dicts[table]
        except KeyError:
            pass
        raw = None if self._meta is None else self.txn.get(meta_key(table), db=self._meta)
        try:
            d = self._dicts[table] = BlockDict.load(raw, table)
        except ValueError as e:
            raise MetadataDamagedError(f"{e}; the metadata is damaged, run `hutong fsck`"
                                       ) from None
        return d

    def _decode(self, table: str, bkey: bytes, data: bytes) -> Rows:
        return decode_block(table, bkey, data, self.dictionary(table))

    def _has_hot(self, db: Any) -> bool:
        hot = self._hot.get(db)
        if hot is None:
            hot = self._hot[db] = bool(self.txn.stat(db)["entries"])
        return hot

    def _blocks(self, db: Any) -> tuple[str, Any] | None:
        pair = self._cold.get(db)
        if pair is None or pair[1] in self._empty:
            return None
        if pair[1] in self._full:
            return pair
        if not self.txn.stat(pair[1])["entries"]:  # writes never add blocks: stays empty
            self._empty.add(pair[1])
            return None
        self._full.add(pair[1])
        return pair

    def _cursor_at(self, db: Any, key: bytes) -> tuple[str, Any, Any] | None:
        """(table, block db, cursor on it) positioned on the block whose range could
        hold `key` (the first whose last key is at or after it), or None."""
        pair = self._blocks(db)
        if pair is None:
            return None
        table, bdb = pair
        cur = self._curs.get(bdb)
        if cur is None:
            cur = self._curs[bdb] = self.txn.cursor(db=bdb)
        if not cur.set_range(key):
            return None
        return table, bdb, cur

    def _block_at(self, db: Any, key: bytes) -> tuple[str, Any, Any, Rows] | None:
        """(table, block db, cursor on the block, its rows) of the block whose range
        could hold `key`, as `_cursor_at` finds it, or None."""
        at = self._cursor_at(db, key)
        if at is None:
            return None
        table, bdb, cur = at
        return table, bdb, cur, self._decode(table, cur.key(), cur.value())

    def _lookup_block(self, db: Any, key: bytes) -> Rows | None:
        """The rows of the block whose range could hold `key`, as `_cursor_at` finds it
        (or, after INDEX_AFTER_SEEKS seeks, a bisection of the listed block keys),
        decoded once per transaction (until its blocks are rewritten)."""
        pair = self._blocks(db)
        if pair is None:
            return None
        table, bdb = pair
        index = self._index.get(bdb)
        if index is None:
            at = self._cursor_at(db, key)
            seeks = self._seeks[bdb] = self._seeks.get(bdb, 0) + 1
            if seeks == INDEX_AFTER_SEEKS and self.txn.stat(bdb)["entries"] <= INDEX_MAX_BLOCKS:
                self._index[bdb] = list(self.txn.cursor(db=bdb).iternext(values=False))
            if at is None:
                return None
            cur = at[2]
            bkey = cur.key()
        else:
            i = bisect.bisect_left(index, key)
            if i == len(index):
                return None
            bkey, cur = index[i], None
        decoded = self._decoded.get(bdb)
        if decoded is None:
            decoded = self._decoded[bdb] = {}
        rows = decoded.get(bkey)
        if rows is None:
            data = cur.value() if cur is not None else self.txn.get(bkey, db=bdb)
            rows = self._decode(table, bkey, data)
            if len(decoded) >= TXN_DECODED_BLOCKS:
                decoded.clear()  # bounded: start again
            decoded[bkey] = rows
        return rows

    def _rewrites(self, bdb: Any) -> None:
        """Forget what lookups decoded of `bdb`: this transaction rewrites its blocks."""
        self._last.pop(bdb, None)
        self._decoded.pop(bdb, None)
        self._index.pop(bdb, None)
        self._seeks.pop(bdb, None)

    def _find(self, db: Any, key: bytes) -> tuple[str, Any, Any, Rows, int] | None:
        """(table, block db, cursor on the block, its rows, the key's index) of the
        block that holds `key`, or None."""
        at = self._block_at(db, key)
        if at is None:
            return None
        table, bdb, cur, rows = at
        i = bisect.bisect_left(rows[0], key)
        if i < len(rows[0]) and rows[0][i] == key:
            return table, bdb, cur, rows, i
        return None

    def get(self, key: bytes, db: Any) -> bytes | None:
        """The current value of `key` in `db`, hot or packed, or None."""
        pair = self._cold.get(db)
        if self._pending and pair is not None:
            pend = self._pending.get(db, {}).get(key)
            if pend is not None:
                return pend
        if pair is None or self._has_hot(db):
            data: bytes | None = self.txn.get(key, db=db)
            if data is not None or pair is None:
                return data
        rows = self._last.get(pair[1])  # inlined packed_get: the common read
        if rows is not None and rows[0][0] <= key <= rows[0][-1]:
            keys = rows[0]
            i = bisect.bisect_left(keys, key)
            return rows[1][i] if i < len(keys) and keys[i] == key else None
        return self.packed_get(db, key)

    def get_many(self, keys: Iterable[bytes], db: Any) -> dict[bytes, bytes]:
        """The current values of those of `keys` that `db` has, as `get` finds them one
        by one: the packed lookups in key order, so keys in one block take one cursor
        seek and one bisect each, not a seek, a decode-cache probe and the call chain of
        `get` (a put's dedup checks and refcounts: a batch of chunk ids)."""
        pair = self._cold.get(db)
        get = self.txn.get
        if pair is None:
            return {k: v for k in keys if (v := get(k, db=db)) is not None}
        found: dict[bytes, bytes] = {}
        pend = self._pending.get(db) if self._pending else None
        hot = self._has_hot(db)
        rest: list[bytes] = []
        for k in keys:
            v = pend.get(k) if pend else None
            if v is None and hot:
                v = get(k, db=db)
            if v is not None:
                found[k] = v
            else:
                rest.append(k)
        rows = self._last.get(pair[1])
        bisect_left = bisect.bisect_left
        for k in sorted(rest):
            if rows is None or not rows[0][0] <= k <= rows[0][-1]:
                looked = self._lookup_block(db, k)
                if looked is None:
                    break  # past the last block, as every later key is
                rows = self._last[pair[1]] = looked
            bkeys = rows[0]
            i = bisect_left(bkeys, k)
            if i < len(bkeys) and bkeys[i] == k:
                found[k] = rows[1][i]
        return found

    def packed_get(self, db: Any, key: bytes) -> bytes | None:
        """The packed value of `key` in packed table `db` (shadowed or not), or None."""
        pair = self._cold[db]
        rows = self._last.get(pair[1])
        if rows is None or not rows[0][0] <= key <= rows[0][-1]:
            rows = self._lookup_block(db, key)
            if rows is None:
                return None
            self._last[pair[1]] = rows
        keys = rows[0]
        i = bisect.bisect_left(keys, key)
        return rows[1][i] if i < len(keys) and keys[i] == key else None

    def put(self, key: bytes, value: bytes, db: Any) -> None:
        """Write `key` hot (a packed copy of it is shadowed from now on); writing
        through, a key that is not hot goes to the block its range falls in, at
        `flush`."""
        if self.through and db in self._cold:
            pending = self._pending.get(db)
            if (pending is not None and key in pending) or (
                    not self._has_hot(db) or self.txn.get(key, db=db) is None):
                self._pending.setdefault(db, {})[key] = value
                return
        self.txn.put(key, value, db=db)
        if db in self._cold:
            self._hot[db] = True

    def flush(self) -> None:
        """Write the pending write-through rows into their blocks. Rows for a table
        whose blocks they mostly fall in (a restore's heat: chunk ids are random)
        rewrite it in one appended pass (`_rebuild`: full leaf pages, blocks no row
        falls in kept as they are); otherwise each block they fall in (the first whose
        last key is at or after them, or the last block) is decoded once, changed and
        cut again (`pack`), and a block that would take one new row only (a decode and
        an encode for one row) gets it as a hot row."""
        pending, self._pending = self._pending, {}
        for db, rows in pending.items():
            table, bdb = self._cold[db]
            self._rewrites(bdb)
            keys = sorted(rows)
            if self._mostly_touched(bdb, keys):
                self._rebuild(table, bdb, [(k, rows[k]) for k in keys])
                continue
            i = 0
            while i < len(keys):
                at = self._block_at(db, keys[i])
                tail = at is None
                if at is None:  # past the last block: it takes them
                    cur = self.txn.cursor(db=bdb)
                    cur.last()  # there is one: an empty table is rebuilt above
                    at = (table, bdb, cur, self._decode(table, cur.key(), cur.value()))
                _table, _bdb, cur, (bkeys, bvalues) = at
                j = i + 1
                while j < len(keys) and (keys[j] <= bkeys[-1] or keys[i] > bkeys[-1]):
                    j += 1
                if j == i + 1 and keys[i] not in bkeys:
                    self.txn.put(keys[i], rows[keys[i]], db=db)
                    self._hot[db] = True
                    i = j
                    continue
                changed = dict(zip(bkeys, bvalues, strict=True))
                changed.update((k, rows[k]) for k in keys[i:j])
                cur.delete()
                if tail:  # past every other block: appended, so leaf pages fill
                    self._append(table, bdb, pack(sorted(changed.items()),
                                                  self.dictionary(table)))
                else:
                    for bkey, data in pack(sorted(changed.items()), self.dictionary(table)):
                        self.txn.put(bkey, data, db=bdb)
                i = j

    def _mostly_touched(self, bdb: Any, keys: list[bytes]) -> bool:
        """Whether `keys` (ascending) fall in at least half of the blocks of `bdb` (or
        it has none): one cursor seek per block they fall in, no decoding."""
        blocks: int = self.txn.stat(bdb)["entries"]
        if len(keys) * 2 < blocks:
            return False  # they cannot
        cur = self.txn.cursor(db=bdb)
        touched, i = 0, 0
        while i < len(keys) and touched * 2 < blocks:
            touched += 1
            if not cur.set_range(keys[i]):
                break  # the rest go past the last block, into it
            bkey = cur.key()
            i = bisect.bisect_right(keys, bkey, i)
        return touched * 2 >= blocks

    def _rebuild(self, table: str, bdb: Any, rows: list[tuple[bytes, bytes]]) -> None:
        """Merge `rows` (ascending; they replace packed rows of the same keys) into the
        blocks of `bdb` and write them anew by appending: the old blocks' pages are
        freed at once and the new ones come out full (puts in the middle of a table
        split its pages half full)."""
        old = [(bytes(k), bytes(v)) for k, v in self.txn.cursor(db=bdb).iternext()]
        self._rewrites(bdb)
        self._curs.pop(bdb, None)
        self.txn.drop(bdb, delete=False)
        self._append(table, bdb, repack(table, iter(rows), old,
                                        dictionary=self.dictionary(table)))
        self._empty.discard(bdb)
        self._full.add(bdb)

    def _append(self, table: str, bdb: Any, blocks: Iterator[tuple[bytes, bytes]]) -> None:
        """Append `blocks` (ascending, past every block of `bdb`); LMDB refuses a key out
        of order without an error, so a count short of them raises."""
        offered, added = self.txn.cursor(db=bdb).putmulti(blocks, append=True)
        if added != offered:
            raise FormatError(f"packed blocks of table {table}: {offered - added} of "
                              f"{offered} blocks out of key order were not written")

    def delete(self, key: bytes, db: Any) -> bool:
        """Delete `key` from `db`: the hot row, and the packed row (its block is
        rewritten without it). Whether there was one."""
        if self._pending:
            self.flush()
        hot: bool = self.txn.delete(key, db=db)
        if db not in self._cold:
            return hot
        found = self._find(db, key)
        if found is None:
            return hot
        _table, bdb, cur, (keys, values), i = found
        self._rewrites(bdb)
        cur.delete()
        rest = [(k, v) for j, (k, v) in enumerate(zip(keys, values, strict=True)) if j != i]
        if rest:
            self.txn.put(rest[-1][0], encode_block(rest, self.dictionary(_table)), db=bdb)
        return True

    def cursor(self, db: Any) -> Any:
        """A plain cursor (for tables that are not packed)."""
        return self.txn.cursor(db=db)

    def stat(self, db: Any) -> Any:
        return self.txn.stat(db)

    def rows(self, db: Any, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every current (key, value) of `db` from `start` on, in key order: hot rows
        and packed rows merged, a hot row shadowing a packed one of the same key."""
        if self._pending:
            self.flush()
        pair = self._blocks(db)
        if pair is not None and not self._has_hot(db):
            return self._packed_rows(pair, start)
        cur = self.txn.cursor(db=db)
        hot = cur.iternext() if (cur.set_range(start) if start else cur.first()) else iter(())
        return hot if pair is None else _merge(hot, self._packed_rows(pair, start))

    def _packed_rows(self, pair: tuple[str, Any], start: bytes
                     ) -> Iterator[tuple[bytes, bytes]]:
        table, bdb = pair
        cur = self.txn.cursor(db=bdb)
        rows = self._last.get(bdb)
        if rows is not None and rows[0][0] <= start <= rows[0][-1]:
            # the block a lookup decoded last holds `start` (a listing after a lookup
            # in the same directory): no cursor until the scan runs past it
            keys, values = rows
            i = bisect.bisect_left(keys, start)
            yield from zip(keys[i:], values[i:], strict=True)
            if not cur.set_range(keys[-1]) or (cur.key() == keys[-1] and not cur.next()):
                return
            start = b""
        elif not (cur.set_range(start) if start else cur.first()):
            return
        first = True
        for bkey, data in cur.iternext():
            keys, values = self._decode(table, bkey, data)
            if first:  # lookups in the range just listed skip the cursor
                self._last[bdb] = (keys, values)
            i = bisect.bisect_left(keys, start) if first else 0
            first = False
            yield from zip(keys[i:], values[i:], strict=True)
