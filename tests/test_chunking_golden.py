"""Frozen chunk boundaries: the chunker is part of the on-disk format.

If one of these fails, the gear table, the masks or the cut rule changed, and
every stored file would chunk differently: that is a format change
(docs/format.md, "Content-defined chunking"), not a refactoring. The expected
values were computed with gfs.cdc_reference and agree with the native chunker.
"""

from __future__ import annotations

import io
import random
import struct

import pytest
import xxhash

from gfs import cdc_reference, chunking
from gfs.chunking import ChunkParams

DEFAULT = ChunkParams()
SMALL = ChunkParams(256, 1024, 4096)
TINY = ChunkParams(64, 128, 512)


def lines() -> bytes:
    return b"".join(b"line %d: value=%d\n" % (i, i * i) for i in range(20000))


def digest(cuts: list[int]) -> str:
    """xxh3-64 of the cut points as little-endian uint64."""
    return xxhash.xxh3_64_hexdigest(struct.pack(f"<{len(cuts)}Q", *cuts))


GOLDEN: list[tuple[str, bytes, ChunkParams, bool, list[int]]] = [
    ("random-20k-small", random.Random(1).randbytes(20_000), SMALL, True,
     [813, 1904, 2942, 4188, 5293, 6320, 7660, 8909, 10703, 11808, 12859, 13122, 13613, 15094,
      16818, 18012, 19081, 20000]),
    ("random-300k-default", random.Random(2).randbytes(300_000), DEFAULT, True,
     [45469, 182664, 212427, 281424, 300000]),
    ("random-300k-default-not-eof", random.Random(2).randbytes(300_000), DEFAULT, False,
     [45469]),
    ("random-3k-tiny", random.Random(3).randbytes(3_000), TINY, True,
     [129, 267, 401, 524, 670, 832, 977, 1111, 1244, 1350, 1475, 1610, 1751, 1886, 2034, 2191,
      2312, 2451, 2585, 2721, 2850, 2953, 3000]),
    ("repeated-text-small", b"Hutong stores chunks, not files.\n" * 1000, SMALL, True,
     [*range(1026, 33000, 1056), 33000]),
    ("lines-default", lines(), DEFAULT, True,
     [68227, 144647, 229614, 301696, 389350, 495849, 532122, 534264]),
    ("zeros-small", bytes(10_000), SMALL, True, [4096, 8192, 10000]),
    ("empty", b"", DEFAULT, True, []),
]


@pytest.mark.parametrize(("data", "params", "eof", "expected"),
                         [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_golden_small(data: bytes, params: ChunkParams, eof: bool, expected: list[int]) -> None:
    assert chunking.cut_points(data, params, eof=eof) == expected
    assert cdc_reference.cut_points(
        data, params.min_size, params.avg_size, params.max_size, eof
    ) == expected


def test_golden_lines_small_digest() -> None:
    cuts = chunking.cut_points(lines(), SMALL)
    assert (len(cuts), digest(cuts)) == (459, "3e1e9d27f354b54b")


def test_golden_16mib_digest() -> None:
    data = random.Random(16).randbytes(16 << 20)
    cuts = chunking.cut_points(data, DEFAULT)
    assert (len(cuts), digest(cuts)) == (230, "016b82540f5aab2f")
    # The streaming form must give the same boundaries.
    streamed = [len(c) for c in chunking.iter_stream_chunks(io.BytesIO(data), DEFAULT, 1 << 20)]
    assert streamed == [e - s for s, e in chunking.spans(cuts)]
