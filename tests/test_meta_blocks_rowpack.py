"""The packer's per-row loops in C (gfs._rowpack): blocks cut and bytes written exactly
as the row-at-a-time Python packer they replaced (kept here as the reference, so a
compaction writes the same metadata bytes and old stores read as before), no Python
code run once a row, and the C codec's checks."""

from __future__ import annotations

import array
import bisect
import hashlib
import itertools
import operator
import sys
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs import _rowpack
from gfs.meta import blocks
from gfs.meta.blocks import _MIN_FILL, _PAGE_ROOM, _SPAN, MAX_BLOCK, TARGET_RAW, _node


def _ref_encode(rows: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The block codec before gfs._rowpack (arrays of lengths, joined in Python)."""
    keys, values = [k for k, _ in rows], [v for _, v in rows]
    klens, vlens = array.array("H", map(len, keys)), array.array("I", map(len, values))
    if sys.byteorder == "big":
        klens.byteswap()
        vlens.byteswap()
    return blocks._head(len(rows)) + blocks._zstd()[0].compress(
        b"".join((klens.tobytes(), vlens.tobytes(), *keys, *values)))


class _RefPacker:
    """The row-at-a-time packer gfs._rowpack replaced (one Python loop pass a row)."""

    def __init__(self) -> None:
        self.rows: list[tuple[bytes, bytes]] = []
        self.size, self.room = 0, _PAGE_ROOM
        self.slope, self.base, self.seen = 0.5, 0.0, 0

    def add(self, rows: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        for row in rows:
            self.rows.append(row)
            self.size += len(row[0]) + len(row[1]) + 2
            if self.size >= TARGET_RAW:
                yield from self._emit(final=False)

    def flush(self) -> Iterator[tuple[bytes, bytes]]:
        yield from self._emit(final=True)

    def passed(self, key: bytes, data: bytes) -> None:
        self._take(min(_node(key, data), _node(key, bytes(8))
                       if len(data) + len(key) > MAX_BLOCK else _PAGE_ROOM))

    def _take(self, node: int) -> None:
        if node > self.room:
            self.room = _PAGE_ROOM
        self.room -= node

    def _emit(self, final: bool) -> Iterator[tuple[bytes, bytes]]:
        while self.rows and (final or self.size >= TARGET_RAW):
            rows = self.rows
            if self.room < _MIN_FILL:
                self.room = _PAGE_ROOM
            budget = min(self.room, _node(b"", bytes(MAX_BLOCK)))
            raw = list(accumulate([len(k) + len(v) + 6 for k, v in rows]))
            n, data = self._fit(rows, raw, budget)
            if not n:
                if self.room < _PAGE_ROOM:
                    self.room = _PAGE_ROOM
                    continue
                n, data = 1, _ref_encode(rows[:1])
            key = rows[n - 1][0]
            self._take(_node(key, data) if n > 1 or len(data) + len(key) <= MAX_BLOCK
                       else _node(key, bytes(8)))
            yield key, data
            self.size -= raw[n - 1] - 4 * n
            self.rows = rows[n:]

    def _fit(self, rows: list[tuple[bytes, bytes]], raw: list[int], budget: int
             ) -> tuple[int, bytes]:
        lo, best, hi = 0, b"", len(rows) + 1
        for step in itertools.count():
            if hi - lo <= 1:
                return lo, best
            if step < 4:
                room = budget - 11 - len(rows[lo][0]) - self.base
                n = min(max(bisect.bisect_right(raw, room / self.slope), lo + 1), hi - 1)
            else:
                n = (lo + hi) // 2
            data = _ref_encode(rows[:n])
            if abs(raw[n - 1] - self.seen) >= _SPAN:
                self.slope = min(max((len(data) - self.base - self.slope * self.seen)
                                     / (raw[n - 1] - self.seen) if self.seen
                                     else len(data) / raw[n - 1], 0.05), 1.5)
            self.base, self.seen = len(data) - self.slope * raw[n - 1], raw[n - 1]
            if _node(rows[n - 1][0], data) <= budget:
                lo, best = n, data
            else:
                hi = n
        raise AssertionError("unreachable")


def _ref_repack(hot: list[tuple[bytes, bytes]], packed: list[tuple[bytes, bytes]]
                ) -> tuple[list[tuple[bytes, bytes]], int]:
    packer, out, shadowed, h = _RefPacker(), [], 0, 0
    for bkey, data in packed:
        mine = []
        while h < len(hot) and hot[h][0] <= bkey:
            mine.append(hot[h])
            h += 1
        if not mine and not packer.rows:
            packer.passed(bkey, data)
            out.append((bkey, data))
            continue
        keys, values = blocks.decode_block("t", bkey, data)
        merged = dict(zip(keys, values, strict=True))
        shadowed += sum(k in merged for k, _ in mine)
        merged.update(mine)
        out += packer.add(sorted(merged.items()))
    out += packer.add(hot[h:])
    out += packer.flush()
    return out, shadowed


def _ref_pack(rows: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    packer = _RefPacker()
    return [*packer.add(rows), *packer.flush()]


# rows of every size class: most small (table rows), some near or past a block or a page
_VALUE = st.one_of(st.binary(max_size=120), st.binary(min_size=300, max_size=2600))
_ROWS = st.dictionaries(st.binary(min_size=1, max_size=40), _VALUE,
                        max_size=300).map(lambda d: sorted(d.items()))


@settings(max_examples=150, deadline=None)
@given(_ROWS)
def test_pack_cuts_the_very_blocks_of_the_row_at_a_time_packer(
        rows: list[tuple[bytes, bytes]]) -> None:
    assert list(blocks.pack(rows)) == _ref_pack(rows)


@settings(max_examples=150, deadline=None)
@given(_ROWS, _ROWS, st.integers(1, 40))
def test_repack_writes_the_very_blocks_of_the_row_at_a_time_repack(
        packed_rows: list[tuple[bytes, bytes]], hot: list[tuple[bytes, bytes]], batch: int
        ) -> None:
    packed = _ref_pack(packed_rows)
    count = blocks.RepackCount()
    default, blocks._HOT_BATCH = blocks._HOT_BATCH, batch  # hot rows read in batches
    try:
        got = list(blocks.repack("t", iter(hot), packed, count))
    finally:
        blocks._HOT_BATCH = default
    want, shadowed = _ref_repack(hot, packed)
    assert got == want
    assert count.shadowed == shadowed


def _rows(n: int, tag: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"%s%08d" % (tag, i), b"v%d" % (i * 7919 % 1000) * 3) for i in range(n)]


def test_repack_runs_no_python_code_once_a_row() -> None:
    """The row-at-a-time repack made ~4 Python calls a row (generators, merge, loops):
    ~3/4 of a put's compaction at close. Counted with a profile hook, the repack of
    20,000 rows (half over packed blocks, half past them) makes a few a block."""
    rows = _rows(20000, b"k")
    packed = list(blocks.pack(rows[::2]))
    hot = [(k, v + b"!") for k, v in rows[1::2]]
    calls = 0

    def hook(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(hook)
    try:
        out = list(blocks.repack("t", iter(hot), packed))
    finally:
        sys.setprofile(None)
    assert sum(map(blocks.block_rows, dict(out).values())) == len(rows)
    assert calls < len(rows) / 2, (calls, len(out))


def test_rows_added_out_of_order_are_refused_and_change_nothing() -> None:
    packer = blocks._Packer()
    assert not list(packer.add_rows([b"a", b"c"], [b"1", b"2"]))
    for keys in ([b"b"], [b"c"], [b"d", b"d"], [b"e", b"d"]):
        with pytest.raises(ValueError, match="out of order"):
            list(packer.add_rows(keys, [b""] * len(keys)))
    assert [r for k, v in packer.flush()
            for r in zip(*blocks.decode_block("t", k, v), strict=True)] == [
        (b"a", b"1"), (b"c", b"2")]


def test_body_and_split_are_the_block_format_and_split_checks_it() -> None:
    keys, values = [b"a", b"bb", b"c"], [b"", b"xyz", b"q" * 70000]
    raw = _rowpack.body(keys, values, 0, 3)
    assert raw == (array.array("H", [1, 2, 1]).tobytes() + array.array("I", [0, 3, 70000])
                   .tobytes() + b"abbc" + b"xyz" + b"q" * 70000)  # little-endian host
    assert _rowpack.split(raw, 3) == (tuple(keys), tuple(values))
    assert _rowpack.body(keys, values, 1, 2) == b"\x02\x00\x03\x00\x00\x00bbxyz"
    with pytest.raises(ValueError, match="cannot hold the lengths of 3 rows"):
        _rowpack.split(raw[:17], 3)
    with pytest.raises(ValueError, match="the rows take"):
        _rowpack.split(raw + b"!", 3)
    with pytest.raises(ValueError, match="out of order"):
        _rowpack.split(_rowpack.body([b"b", b"a"], [b"", b""], 0, 2), 2)
    with pytest.raises(ValueError, match="out of order"):
        _rowpack.split(_rowpack.body([b"a", b"a"], [b"", b""], 0, 2), 2)
    with pytest.raises(OverflowError):
        _rowpack.body([b"k" * 65536], [b""], 0, 1)
    with pytest.raises(IndexError):
        _rowpack.body(keys, values, 2, 2)
    with pytest.raises(IndexError):
        _rowpack.body(keys, values, 0, 4)


def test_merge_and_sums() -> None:
    keys, values, shadowed = _rowpack.merge((b"a", b"c", b"e"), (b"1", b"3", b"5"),
                                            [b"0", b"c", b"d", b"z"], [b"h0", b"hc", b"hd", b"hz"],
                                            1, 3)
    assert (keys, values, shadowed) == ([b"a", b"c", b"d", b"e"], [b"1", b"hc", b"hd", b"5"], 1)
    c2, c6 = [10], [20]
    _rowpack.sums([b"ab", b"b"], [b"xyz", b""], c2, c6, b"a")
    assert (c2, c6) == ([10, 17, 20], [20, 31, 38])
    assert list(map(operator.sub, c6[1:], c6)) == [11, 7]
    for keys, last in (([b"c", b"c"], None), ([b"d", b"c"], None), ([b"c"], b"c"),
                       ([b"c", b"d"], b"ca")):
        with pytest.raises(ValueError, match="out of order"):
            _rowpack.sums(keys, [b""] * len(keys), c2, c6, last)
    with pytest.raises(TypeError):
        _rowpack.sums([b"x", 5], [b"", b""], c2, c6, None)
    assert (c2, c6) == ([10, 17, 20], [20, 31, 38])  # unchanged


def test_take_moves_up_to_n_rows_into_two_lists() -> None:
    rows = iter([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    keys, values = [b"z"], [b"0"]
    assert _rowpack.take(rows, 2, keys, values) == 2
    assert _rowpack.take(rows, 2, keys, values) == 1
    assert _rowpack.take(rows, 2, keys, values) == 0
    assert (keys, values) == ([b"z", b"a", b"b", b"c"], [b"0", b"1", b"2", b"3"])
    with pytest.raises(ValueError, match="pairs"):
        _rowpack.take(iter([(b"a",)]), 1, keys, values)


@pytest.mark.parametrize("n", [1, 127, 128, 300, 20000])
def test_block_rows_reads_one_and_two_byte_heads(n: int) -> None:
    rows = [(b"%06d" % i, b"") for i in range(n)]
    block = blocks.encode_block(rows)
    assert blocks.block_rows(block) == n == len(blocks.decode_block("t", rows[-1][0], block)[0])


def _metadata_like_rows(count: int) -> list[tuple[bytes, bytes]]:
    """Sorted rows like a chunk table's: a hash key, then fields that partly repeat."""
    rows = []
    for i in range(count):
        key = hashlib.sha256(i.to_bytes(4, "big")).digest()[:16]
        value = (hashlib.sha256(key).digest()[: 8 + i % 9] + b"\x01\x00" * (i % 5)
                 + (5000 + i % 977).to_bytes(4, "big") + b"pool-%d" % (i % 3))
        rows.append((key, value))
    return sorted(rows)


class _BisectingPacker(_RefPacker):
    """The packer before its guessed cuts: it bisected every block that did not fit."""

    encodes = 0

    def _fit(self, rows: list[tuple[bytes, bytes]], raw: list[int], budget: int
             ) -> tuple[int, bytes]:
        self.encodes += 1
        data = _ref_encode(rows)
        if _node(rows[-1][0], data) <= budget:
            return len(rows), data
        lo, hi, best = 1, len(rows) - 1, (0, b"")
        while lo <= hi:
            mid = (lo + hi) // 2
            self.encodes += 1
            data = _ref_encode(rows[:mid])
            if _node(rows[mid - 1][0], data) <= budget:
                best, lo = (mid, data), mid + 1
            else:
                hi = mid - 1
        return best


class _Counted:
    """A compressor counting its calls."""

    def __init__(self, compress: Any) -> None:
        self.compress_, self.calls = compress, 0

    def compress(self, data: bytes) -> bytes:
        self.calls += 1
        return bytes(self.compress_(data))


def _stored_pages(path: Path, out: list[tuple[bytes, bytes]]) -> int:
    env = lmdb.open(str(path), max_dbs=2, map_size=1 << 26)
    try:
        db = env.open_db(b"blocks")
        with env.begin(write=True) as t:
            for key, data in out:
                assert t.put(key, data, db=db, append=True)
        with env.begin() as t:
            st_ = t.stat(db)
        return int(st_["leaf_pages"] + st_["overflow_pages"] + st_["branch_pages"])
    finally:
        env.close()


def test_blocks_are_cut_with_about_one_encode_each_and_no_more_pages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bisecting each block that overflowed its page's room took ~2.4 zstd encodes a
    block on smallfiles metadata (the bulk of a put's close); guessing the cut from the
    last blocks' ratio takes ~1.5, and leaves the blocks as many pages."""
    rows = _metadata_like_rows(6000)
    bisecting = _BisectingPacker()
    old = [*bisecting.add(rows), *bisecting.flush()]
    compressor, decompressor = blocks._zstd()
    counted = _Counted(compressor.compress)
    monkeypatch.setattr(blocks, "_zstd", lambda *_: (counted, decompressor))
    new = list(blocks.pack(rows))
    monkeypatch.undo()
    got = [r for k, v in new for r in zip(*blocks.decode_block("chunks", k, v), strict=True)]
    assert got == rows
    assert all(len(blocks.decode_block("chunks", k, v)[0]) == 1 or len(k) + len(v)
               <= blocks.MAX_BLOCK for k, v in new)
    assert counted.calls / len(new) <= 1.7 < bisecting.encodes / len(old), (
        counted.calls, bisecting.encodes)
    assert _stored_pages(tmp_path / "new", new) <= _stored_pages(tmp_path / "old", old)
    assert sum(map(len, dict(new).values())) <= sum(map(len, dict(old).values())) * 1.005


def test_a_failing_compressor_or_a_bad_state_leaves_the_rows_buffered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(300, b"r")
    packer = blocks._Packer()

    class Broken:
        def compress(self, data: bytes) -> bytes:
            raise MemoryError("no room")

    monkeypatch.setattr(blocks, "_zstd", lambda *_: (Broken(), None))
    with pytest.raises(MemoryError, match="no room"):
        list(packer.add(rows))
    monkeypatch.undo()
    assert len(packer.keys) == len(rows) and packer.c2[-1] == sum(
        len(k) + len(v) + 2 for k, v in rows)
    assert [r for k, v in packer.flush()
            for r in zip(*blocks.decode_block("t", k, v), strict=True)] == rows
    with pytest.raises(ValueError, match="wrong shape"):
        _rowpack.cut([b"a"], [b"1"], [0, 3], [0, 7], 0, 1, True, [4080, 0.5, 0.0],
                     blocks._zstd()[0].compress, blocks._LIMITS)
    with pytest.raises(ValueError, match="wrong shape"):
        _rowpack.cut([b"a"], [b"1"], [0, 3], [0], 0, 1, True, [4080, 0.5, 0.0, 0],
                     blocks._zstd()[0].compress, blocks._LIMITS)
