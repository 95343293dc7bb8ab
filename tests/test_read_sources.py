"""The chunk-source conformance suite (gfs.testing.source_suite) run by the local
store's source and by every wrapper stack over it: memory tier, disk tier, both."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.disk_cache import DiskCache
from gfs.meta import Location, PackRecord
from gfs.packs import pack_key
from gfs.read import DiskTier, LocalSource, MemoryTier
from gfs.read.source import ChunkSource, PathOf
from gfs.testing import source_suite as suite
from gfs.testing.faults import flip_byte

STACKS = ["local", "memory", "disk", "memory+disk"]


def _second_copies(c: Client) -> None:
    """Give every chunk a second copy: each pack copied under a new id, its blobs'
    locations added after the original ones (so reads try the original first)."""
    with c.engine.read() as txn:
        packs = list(txn.iter_packs())
        chunks = list(txn.iter_chunks())
    new_id = {p.id: os.urandom(16) for p in packs}
    for p in packs:
        pool = c.store.pool(p.pool)
        pool.put(pack_key(new_id[p.id]), [pool.get(pack_key(p.id))])
    with c.engine.write() as txn:
        for p in packs:
            txn.put_pack(replace(p, id=new_id[p.id]))
        for rec in chunks:
            extra = tuple(Location(loc.pool, new_id[loc.pack], loc.offset, loc.length)
                          for loc in rec.locations)
            txn.put_chunk(replace(rec, locations=rec.locations + extra))


def _damage(c: Client, cid: bytes, *, every: bool) -> None:
    with c.engine.read() as txn:
        rec = txn.get_chunk(cid)
    assert rec is not None
    for loc in rec.locations if every else rec.locations[:1]:
        flip_byte(c.store.pool(loc.pool), pack_key(loc.pack), loc.offset + loc.length - 1)


def _stack(kind: str, c: Client, tmp: Path) -> tuple[ChunkSource, suite.CountingSource | None]:
    if kind == "local":
        return LocalSource(c.store), None
    bottom = suite.CountingSource(LocalSource(c.store))
    inner: ChunkSource = bottom
    if "disk" in kind:
        inner = DiskTier(inner, DiskCache(tmp / "disk", 64 << 20, admit_local=True))
    if "memory" in kind:
        inner = MemoryTier(inner, 32 << 20)
    return inner, bottom


def _case(kind: str, fs: Client, tmp_path: Path) -> suite.SourceCase:
    data = random.Random(7).randbytes(600_000)
    fs.write_bytes("/f", data)
    _second_copies(fs)
    m = fs.manifest("/f")
    chunks = {r.id: fs.store.read_chunk(r.id) for r in m.chunks}
    source, bottom = _stack(kind, fs, tmp_path)
    return suite.SourceCase(source, chunks,
                            damage_one_copy=lambda cid: _damage(fs, cid, every=False),
                            damage_all=lambda cid: _damage(fs, cid, every=True),
                            bottom=bottom)


@pytest.fixture(params=STACKS)
def case(request: pytest.FixtureRequest, fs: Client, tmp_path: Path) -> Iterator[suite.SourceCase]:
    c = _case(request.param, fs, tmp_path)
    yield c
    c.source.close()


class TestLocalStacks(suite.SourceConformance):
    """The shared conformance tests, on every stack of this module."""


def test_corrupt_copy_skipped_and_reported_once(case: suite.SourceCase,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "hutong.store")

    def reports(cid: bytes) -> int:
        return sum(1 for r in caplog.records
                   if "skipped bad copies" in r.getMessage() and cid.hex() in r.getMessage())

    suite.check_corrupt_copy_skipped(case, reports)
    cid = next(iter(case.chunks))
    assert reports(cid) == 1  # nothing was cached before: the first read reported it


def test_all_copies_corrupt(case: suite.SourceCase) -> None:
    suite.check_all_copies_corrupt(case, list(case.chunks)[-1])


@pytest.mark.parametrize("kind", [k for k in STACKS if "memory" in k])
def test_single_flight(kind: str, fs: Client, tmp_path: Path) -> None:
    case = _case(kind, fs, tmp_path)
    try:
        suite.check_single_flight(case)
    finally:
        case.source.close()


def test_disk_tier_keeps_verified_blobs_and_serves_them(fs: Client, tmp_path: Path) -> None:
    """A disk tier admits what it read; a new stack over the same directory reads
    nothing from the store."""
    fs.write_bytes("/g", random.Random(8).randbytes(300_000))
    ids = [r.id for r in fs.manifest("/g").chunks]
    first = DiskTier(LocalSource(fs.store), DiskCache(tmp_path / "d", 8 << 20, admit_local=True))
    want = first.get_many(ids)
    first.close()
    bottom = suite.CountingSource(LocalSource(fs.store))
    again = DiskTier(bottom, DiskCache(tmp_path / "d", 8 << 20, admit_local=True))
    try:
        assert again.get_many(ids) == want and bottom.calls == []
        assert again.stats().hits == len(set(ids))
    finally:
        again.close()


class _BatchedBlobs(suite.CountingSource):
    """A counted source that also hands out blobs in batches (as a remote site does)."""

    def get_blob_many(self, cids: Iterable[bytes], *,
                      path_of: PathOf | None = None) -> dict[bytes, bytes]:
        ids = tuple(dict.fromkeys(cids))
        self._enter("get_blob_many", ids)
        return {c: self.inner.get_blob(c) for c in ids}


@pytest.mark.parametrize("batched", [True, False])
def test_disk_tier_fetches_a_block_of_misses_in_one_batch(batched: bool, fs: Client,
                                                          tmp_path: Path) -> None:
    """A block of misses costs one request to a source that batches blobs (one round
    trip over a WAN, not one per chunk); any other source is asked chunk by chunk."""
    fs.write_bytes("/g", random.Random(9).randbytes(600_000))
    ids = [r.id for r in fs.manifest("/g").chunks]
    assert len(set(ids)) > 2
    bottom = (_BatchedBlobs if batched else suite.CountingSource)(LocalSource(fs.store))
    tier = DiskTier(bottom, DiskCache(tmp_path / "d", 8 << 20, admit_local=True))
    try:
        got = tier.get_many(ids)
        assert got == {c: fs.store.source.get(c) for c in ids}
        kinds = [k for k, _ in bottom.calls]
        assert kinds == (["get_blob_many"] if batched else ["get_blob"] * len(set(ids)))
        bottom.calls.clear()
        assert tier.puts.flush(30)  # written by the tier's writer thread
        assert tier.get_many(ids) == got and bottom.calls == []  # kept on disk
    finally:
        tier.close()


def test_local_source_is_a_chunk_source(fs: Client) -> None:
    assert isinstance(fs.store.source, ChunkSource)
    assert isinstance(MemoryTier(fs.store.source, 1 << 20), ChunkSource)


def test_pack_record_copy_keeps_counts(fs: Client) -> None:
    """The second-copy helper above really adds copies (else the suite tests nothing)."""
    fs.write_bytes("/h", b"x" * 100_000)
    _second_copies(fs)
    cid = fs.manifest("/h").chunks[0].id
    assert fs.store.source.good_copies(cid) == 2
    with fs.engine.read() as txn:
        assert all(isinstance(p, PackRecord) for p in txn.iter_packs())


def test_memory_tier_peeks_many_chunks_at_once(fs: Client) -> None:
    """`peek_many` is `peek` of each id (hits counted, nothing read) under one lock."""
    fs.write_bytes("/pm", os.urandom(300_000))
    ids = [c.id for c in fs.manifest("/pm").chunks]
    bottom = suite.CountingSource(fs.store.source)
    tier = MemoryTier(bottom, 32 << 20)
    try:
        tier.get(ids[0])
        absent = os.urandom(16)
        assert tier.peek_many([ids[0], absent, ids[0]]) == [tier.peek(ids[0]), None,
                                                            tier.peek(ids[0])]
        assert tier.stats().hits == 4 and len(bottom.calls) == 1
    finally:
        tier.close()
