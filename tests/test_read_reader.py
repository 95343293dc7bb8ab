"""The manifest reader against a bytes model: random manifests over real stored
chunks, random ranged reads, seeks and reads, over the local source and over a
memory tier (hypothesis)."""

from __future__ import annotations

import io
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfs.client import Client
from gfs.disk_cache import DiskCache
from gfs.meta import ChunkRef, Manifest
from gfs.read import DiskTier, LocalSource, ManifestReader, MemoryTier, reader
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
       tier=st.sampled_from(["none", "memory", "disk"]),
       ahead=st.sampled_from([1, 5000, 60_000, 4 << 20]))
def test_reader_matches_bytes_model(stored: tuple[Client, list[ChunkRef], dict[bytes, bytes]],
                                    picks: list[int], script: list[tuple[str, int, int]],
                                    tier: str, ahead: int) -> None:
    """With a disk tier every `readinto` takes the direct path (chunks from memory,
    from disk into the buffer, and the rest through the tiers)."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(reader, "DIRECT_MIN", 1):
        _check_model(stored, picks, script, tier, ahead, Path(tmp))


def _check_model(stored: tuple[Client, list[ChunkRef], dict[bytes, bytes]], picks: list[int],
                 script: list[tuple[str, int, int]], tier: str, ahead: int, tmp: Path) -> None:
    c, refs, raw = stored
    chosen = tuple(refs[i % len(refs)] for i in picks)  # any list of stored chunks is a file
    model = b"".join(raw[r.id] for r in chosen)
    source: ChunkSource = LocalSource(c.store)
    if tier == "disk":
        source = DiskTier(source, DiskCache(tmp / "cache", 40_000, admit_local=True))
    if tier != "none":
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
        if tier != "none":
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


def test_warm_reads_go_from_disk_into_the_buffer(stored: tuple[Client, list[ChunkRef],
                                                              dict[bytes, bytes]],
                                                 tmp_path: Path) -> None:
    """A re-read through a fresh memory tier over a warm disk tier: the chunks come off
    disk in runs (one preadv each, far fewer than the chunks), straight into the
    caller's buffer, and nothing is read from the store or kept in memory."""
    c, refs, raw = stored
    m = Manifest(1, tuple(refs))
    model = b"".join(raw[r.id] for r in refs)
    root = tmp_path / "cache"
    cold = MemoryTier(DiskTier(LocalSource(c.store), DiskCache(root, 64 << 20,
                                                               admit_local=True)), 1 << 20)
    try:
        assert ManifestReader(cold, "/pool", m).pread(0, len(model)) == model
    finally:
        cold.close()
    calls: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(len(buffers))
        return real(fd, buffers, offset)

    warm = MemoryTier(DiskTier(LocalSource(c.store), DiskCache(root, 64 << 20)), 1 << 20)
    try:
        with mock.patch.object(os, "preadv", counting), \
                mock.patch.object(reader, "DIRECT_MIN", 64 << 10):  # the file is 230 kB
            f = io.BufferedReader(ManifestReader(warm, "/pool", m), 1 << 20)
            assert f.read() == model
        s = warm.stats()
        assert s.bytes_from_store == 0 and s.entries == 0
        assert s.disk is not None and s.disk["hits"] >= len(refs) - 2
        assert 1 <= len(calls) <= 4 and sum(calls) >= 2 * (len(refs) - 2)
    finally:
        warm.close()


def test_a_file_within_one_read_ahead_is_fetched_ahead_of_its_first_read(
        stored: tuple[Client, list[ChunkRef], dict[bytes, bytes]]) -> None:
    """A file smaller than the read-ahead is one block: the first read starts the rest
    of it (a cold 32 MiB gfs:// read over a 32 MiB read-ahead had no read-ahead)."""
    c, refs, raw = stored
    tier = MemoryTier(c.store.source, 8 << 20)
    try:
        f = ManifestReader(tier, "/pool", Manifest(1, tuple(refs)), read_ahead=1 << 30)
        assert len(f._block_starts) == 1
        f.pread(0, 1000)
        last = refs[-1].id
        deadline = time.monotonic() + 30
        while last not in tier:
            assert time.monotonic() < deadline, "the rest of the block never prefetched"
            time.sleep(0.001)
        assert f.read_range(0, f.size) == b"".join(raw[r.id] for r in refs)
    finally:
        tier.close()


def test_read_ahead_is_asked_once_per_block(stored: tuple[Client, list[ChunkRef],
                                                          dict[bytes, bytes]]) -> None:
    """Many small forward reads ask the memory tier to prefetch each next block once,
    not its ids again at every read; a seek back starts the read-ahead again."""
    c, refs, raw = stored
    model = b"".join(raw[r.id] for r in refs)
    tier = MemoryTier(c.store.source, 8 << 20)
    asked: list[int] = []
    real = tier.prefetch

    def counting(cids: list[bytes], path: str = "") -> None:
        asked.append(len(cids))
        real(cids, path)

    try:
        with mock.patch.object(tier, "prefetch", counting):
            f = ManifestReader(tier, "/pool", Manifest(1, tuple(refs)), read_ahead=50_000)
            got = b"".join(f.pread(off, 1000) for off in range(0, 120_000, 1000))
            assert got == model[:120_000]
            blocks = f._block_of(f._ends.index(next(e for e in f._ends if e >= 120_000)))
            assert len(asked) == blocks + 1
            f.pread(0, 1000)  # back to the start: the next forward read fetches ahead
            f.pread(1000, 1000)
            assert len(asked) == blocks + 2
    finally:
        tier.close()
