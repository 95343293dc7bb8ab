"""A memory tier keeps what a reader fetched ahead until it is read: a sequential read
of a file larger than the tier, with a read-ahead larger than S3-FIFO's small queue,
reads each chunk from the source once (the global mount's cold 1 GiB read lost a
tenth of its prefetched chunks and read them again from its disk tier)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.eviction import S3FIFOPolicy
from gfs.meta import ChunkRef, Manifest
from gfs.read import LocalSource, ManifestReader, MemoryTier
from gfs.read.source import PathOf


class Counting(LocalSource):
    """A local source counting the reads of each chunk."""

    def __init__(self, client: Client) -> None:
        super().__init__(client.store)
        self.reads: Counter[bytes] = Counter()

    def get(self, cid: bytes, *, path: str = "") -> bytes:
        self.reads[cid] += 1
        return super().get(cid, path=path)

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        ids = list(cids)
        self.reads.update(ids)
        return super().get_many(ids, path_of=path_of)


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Client, list[ChunkRef]]]:
    c = Client.init(tmp_path / "state", pack_size=1 << 20, workers=2,
                    min_size=1024, avg_size=4096, max_size=16384)
    c.write_bytes("/f", random.Random(5).randbytes(400_000))
    refs = list({r.id: r for r in c.manifest("/f").chunks}.values())  # each chunk once
    yield c, refs
    c.close()


def _settle(tier: MemoryTier) -> None:
    """Wait until the tier's prefetches are done (the read-ahead ran as far as it may)."""
    deadline = time.monotonic() + 30
    while True:
        with tier._lock:
            flights = list(tier._inflight.values())
        if not flights:
            return
        assert time.monotonic() < deadline, "prefetch never finished"
        for fut in flights:
            fut.exception(timeout=30)


def test_prefetched_chunks_are_read_from_the_source_once(
        stored: tuple[Client, list[ChunkRef]]) -> None:
    c, refs = stored
    size = sum(r.length for r in refs)
    source = Counting(c)
    tier = MemoryTier(source, 128 << 10)  # S3-FIFO's small queue: 13 kB
    read_ahead = 20_000  # up to 2 x 20 kB fetched ahead of the reader
    assert size > 3 * tier.capacity and 2 * read_ahead > S3FIFOPolicy.SMALL * tier.capacity
    try:
        f = ManifestReader(tier, "/f", Manifest(1, tuple(refs)), read_ahead=read_ahead)
        got = bytearray()
        while piece := f.read(4096):
            got += piece
            _settle(tier)  # the worst case: every read-ahead done before the next read
        assert bytes(got) == c.read_bytes("/f")
        assert set(source.reads) == {r.id for r in refs}
        assert max(source.reads.values()) == 1, (
            f"{sum(n > 1 for n in source.reads.values())} of {len(refs)} chunks read again")
        assert tier.stats().evictions > 0  # the tier was too small for the file
    finally:
        tier.close()


def test_keep_new_is_bounded_by_half_the_capacity() -> None:
    """A read-ahead larger than the tier cannot leave S3-FIFO without a main queue."""
    p = S3FIFOPolicy(1000)
    p.keep_new(50)
    assert p.small_bytes == 100
    p.keep_new(5000)
    assert p.small_bytes == 500
    for i in range(20):
        p.admit(i.to_bytes(2, "big"), 100)
    assert p.size <= 1000
