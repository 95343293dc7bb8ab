"""Reads answered without waiting: `MemoryTier.peek_all`, `ManifestReader.cached` and
the global mount's reads of chunks already in memory, answered on its event loop
with no hop to a pool thread (gfs.mount_global)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.meta import Manifest
from gfs.mount_global import GlobalOperations
from gfs.mount_inodes import one_scope
from gfs.read import LocalSource, ManifestReader, MemoryTier


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    c = Client.init(tmp_path / "state", min_size=1024, avg_size=4096, max_size=16384)
    c.write_bytes("/f", random.Random(5).randbytes(300_000))
    yield c
    c.close()


class Counting(LocalSource):
    """A local source that counts the chunks asked of it, and refuses them once
    `closed_for_reads` is set."""

    asked = 0
    closed_for_reads = False

    def get(self, cid: bytes, *, path: str = "") -> bytes:
        return self.get_many([cid])[cid]

    def get_many(self, cids, *, path_of=None):  # type: ignore[no-untyped-def]
        cids = list(cids)
        if self.closed_for_reads:
            raise OSError("read after the test closed the source")
        self.asked += len(cids)
        return super().get_many(cids, path_of=path_of)


def test_peek_all_counts_nothing_unless_every_chunk_is_there(client: Client) -> None:
    refs = list(client.manifest("/f").chunks)
    tier = MemoryTier(LocalSource(client.store), 8 << 20)
    try:
        tier.get(refs[0].id)
        assert tier.peek_all([refs[0].id, refs[1].id]) is None
        assert tier.stats().hits == 0
        tier.get(refs[1].id)
        assert tier.peek_all([refs[0].id, refs[1].id]) == [
            client.store.read_chunk(refs[0].id), client.store.read_chunk(refs[1].id)]
        assert tier.stats().hits == 2
    finally:
        tier.close()


def test_cached_never_reads_and_matches_the_file_once_in_memory(client: Client) -> None:
    m = client.manifest("/f")
    data = client.read_bytes("/f")
    source = Counting(client.store)
    tier = MemoryTier(source, 8 << 20)
    try:
        f = ManifestReader(tier, "/f", Manifest(m.version, m.chunks), read_ahead=1 << 30)
        assert f.cached(0, 50_000) is None
        assert source.asked == 0  # nothing read, no read-ahead started
        k = next(i for i, end in enumerate(f._ends) if end >= 120_000)
        tier.get_many(f._ids[:k + 1])  # chunks 0..k in memory: bytes [0, _ends[k])
        source.closed_for_reads = True  # (the read-ahead cached() starts fails quietly)
        rnd = random.Random(1)
        for off, size in [(0, 120_000), (1, 5), (4095, 70_000), (119_999, 1),
                          *[(rnd.randrange(100_000), rnd.randrange(20_000))
                            for _ in range(50)]]:
            assert f.cached(off, size) == data[off:off + size], (off, size)
        assert f.cached(f._ends[k] - 10, 100) is None  # chunk k + 1 is not in memory
        assert f.cached(len(data), 10) == b""
    finally:
        tier.close()


def test_cached_starts_the_read_ahead_of_a_forward_read(client: Client) -> None:
    m = client.manifest("/f")
    tier = MemoryTier(Counting(client.store), 8 << 20)
    try:
        f = ManifestReader(tier, "/f", Manifest(m.version, m.chunks), read_ahead=64 << 10)
        tier.get(f._ids[0])  # the first chunk in memory, no read-ahead yet
        assert tier.stats().prefetched == 0
        assert f.cached(0, 10) is not None
        assert tier.stats().prefetched > 0  # the rest of block 0 and block 1
    finally:
        tier.close()


class NoPool:
    """A mount's pool that must not be used."""

    def submit(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the read hopped to a pool thread")

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_mount_answers_a_read_of_chunks_in_memory_on_its_loop(client: Client) -> None:
    data = client.read_bytes("/f")
    client.cache_reads(8 << 20)  # (as `hutong mount` of the embedded store does)
    ops = GlobalOperations(client, scope=one_scope)
    try:
        h = ops._open("/f", os.O_RDONLY, False, None, 7)
        fh = ops._new_fh(h, 7)
        assert ops._read_cached(h, 0, 4096) is None  # nothing in memory yet
        assert ops._read(h, 0, 100_000) == data[:100_000]  # on a pool thread: read
        pool, ops._pool = ops._pool, NoPool()  # type: ignore[assignment]
        try:
            got = asyncio.run(ops.read(fh, 1000, 50_000))
        finally:
            ops._pool = pool
        assert got == data[1000:51_000]
        with h.lock:  # a reader busy on a pool thread is never waited for on the loop
            assert ops._read_cached(h, 0, 4096) is None
    finally:
        ops.close(commit=False)
