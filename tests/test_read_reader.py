"""The manifest reader against a bytes model: random manifests over real stored
chunks, random ranged reads, seeks and reads, over the local source and over a
memory tier (hypothesis)."""

from __future__ import annotations

import io
import random
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs.client import Client
from gfs.meta import ChunkRef, Manifest
from gfs.read import LocalSource, ManifestReader, MemoryTier
from gfs.read.source import ChunkSource


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, list[ChunkRef],
                                                                       dict[bytes, bytes]]]:
    c = Client.init(tmp_path_factory.mktemp("reader") / "state", pack_size=1 << 20, workers=2,
                    min_size=1024, avg_size=4096, max_size=16384)
    rnd = random.Random(3)
    c.write_bytes("/pool", rnd.randbytes(200_000) + bytes(30_000))
    refs = list(c.manifest("/pool").chunks)
    raw = {r.id: c.store.read_chunk(r.id) for r in refs}
    yield c, refs, raw
    c.close()


ops = st.lists(st.one_of(
    st.tuples(st.just("pread"), st.integers(-10, 300_000), st.integers(0, 120_000)),
    st.tuples(st.just("seek"), st.integers(0, 300_000), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("read"), st.integers(-1, 70_000), st.just(0)),
), max_size=12)


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, 10_000), max_size=40), script=ops,
       tier=st.booleans(), ahead=st.sampled_from([1, 5000, 60_000, 4 << 20]))
def test_reader_matches_bytes_model(stored: tuple[Client, list[ChunkRef], dict[bytes, bytes]],
                                    picks: list[int], script: list[tuple[str, int, int]],
                                    tier: bool, ahead: int) -> None:
    c, refs, raw = stored
    chosen = tuple(refs[i % len(refs)] for i in picks)  # any list of stored chunks is a file
    model = b"".join(raw[r.id] for r in chosen)
    source: ChunkSource = LocalSource(c.store)
    if tier:
        source = MemoryTier(source, 64 << 10)
    f = ManifestReader(source, "/m", Manifest(1, chosen), read_ahead=ahead)
    buffered = io.BufferedReader(f, 8192)
    pos = 0
    try:
        assert f.size == len(model)
        for op, a, b in script:
            if op == "pread":
                if a < 0:
                    with pytest.raises(ValueError, match="/m"):
                        f.pread(a, b)
                else:
                    assert f.pread(a, b) == model[a:a + b]
            elif op == "seek":
                base = {0: 0, 1: pos, 2: len(model)}[b]
                target = base + (a if b == 0 else -(a % (len(model) + 1)) if b == 2 else
                                 (a % 1000) - 500)
                if target < 0:
                    with pytest.raises(ValueError):
                        buffered.seek(target - base, b)
                    continue
                pos = buffered.seek(target - base, b)
                assert pos == target
            else:
                got = buffered.read(a)
                want = model[pos:] if a < 0 else model[pos:pos + a]
                assert got == want
                pos += len(want)
                assert buffered.tell() == pos
        assert f.read_range(0, len(model) + 10) == model
    finally:
        buffered.close()
        if tier:
            source.close()


def test_blocks_stream_the_whole_file(stored: tuple[Client, list[ChunkRef],
                                                    dict[bytes, bytes]]) -> None:
    c, refs, raw = stored
    f = ManifestReader(c.store.source, "/pool", Manifest(1, tuple(refs)), read_ahead=20_000)
    pieces = list(f.blocks(30_000))
    assert b"".join(pieces) == b"".join(raw[r.id] for r in refs)
    assert all(len(p) == 30_000 for p in pieces[:-1])


def test_forward_reads_fetch_the_next_block_ahead(stored: tuple[Client, list[ChunkRef],
                                                                dict[bytes, bytes]]) -> None:
    """Reading block k forward starts block k+1: the memory tier holds it before the
    reader asks (it was prefetched, not read on demand)."""
    c, refs, _ = stored
    tier = MemoryTier(c.store.source, 8 << 20)
    try:
        f = ManifestReader(tier, "/pool", Manifest(1, tuple(refs)), read_ahead=50_000)
        f.pread(0, 1000)
        nxt = refs[f._block_starts[1]].id
        deadline = time.monotonic() + 30
        while nxt not in tier:
            assert time.monotonic() < deadline, "next block never prefetched"
            time.sleep(0.001)
        assert tier.stats().prefetched >= 1
    finally:
        tier.close()
