"""Sizing what a remote read keeps in flight (gfs.federation.inflight) and the memory
tier's prefetch asking in batches of that size."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import pytest

from gfs.federation.inflight import (
    DEFAULT_CHUNK,
    LEAST_CHUNKS,
    MEMORY_CAP,
    MOST_CHUNKS,
    REQUEST_CHUNKS,
    LinkMeter,
    RequestSizer,
    chunks_per_request,
    depth_for,
)
from gfs.read import MemoryTier
from gfs.read.source import PathOf

MiB = 1 << 20


def test_depth_is_ten_bandwidth_delay_products_within_floor_and_cap() -> None:
    # 117 MB/s over 40 ms: 4.68 MB in flight per product
    assert depth_for(117e6, 0.040, floor=8 * MiB, cap=64 * MiB) == 46_800_000
    assert depth_for(117e6, 0.0001, floor=8 * MiB, cap=64 * MiB) == 8 * MiB  # loopback
    assert depth_for(1e9, 0.2, floor=8 * MiB, cap=64 * MiB) == 64 * MiB  # the memory cap
    assert depth_for(117e6, 0.040, floor=8 * MiB, cap=4 * MiB) == 4 * MiB  # cap over floor
    assert depth_for(0.0, 0.0, floor=8 * MiB, cap=64 * MiB) == 8 * MiB  # nothing measured


def test_chunks_per_request_fills_the_depth_with_the_threads() -> None:
    """A request asks at least REQUEST_CHUNKS (fewer, larger requests: less CPU per MB
    at both ends), more when the depth needs it."""
    assert REQUEST_CHUNKS == 64 > LEAST_CHUNKS
    assert chunks_per_request(8 * MiB, 8, 64 << 10) == REQUEST_CHUNKS  # the depth floor
    assert chunks_per_request(32 * MiB, 8, 64 << 10) == 64
    assert chunks_per_request(64 * MiB, 8, 64 << 10) == 128
    assert chunks_per_request(1 * MiB, 8, 64 << 10) == REQUEST_CHUNKS
    assert chunks_per_request(1 << 40, 8, 64 << 10) == MOST_CHUNKS
    assert chunks_per_request(8 * MiB, 0, 0) == MOST_CHUNKS  # no division by zero


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_meter_takes_least_first_byte_time_and_windowed_rate() -> None:
    clock = Clock()
    m = LinkMeter(window=2.0, clock=clock)
    assert m.estimate() == (0.0, 0.0, DEFAULT_CHUNK)
    # two answers of 1 MiB (16 chunks) in parallel over 0.1 s; the second queued longer
    m.observe(100.0, 0.040, 100.1, MiB, 16)
    m.observe(100.0, 0.090, 100.1, MiB, 16)
    clock.t = 100.1
    rate, rtt, chunk = m.estimate()
    assert rate == pytest.approx(2 * MiB / 0.1)
    assert rtt == 0.040 and chunk == 64 << 10
    clock.t = 102.2  # both left the window
    assert m.estimate() == (0.0, 0.0, DEFAULT_CHUNK)


def _sizer(rate: float, rtt: float, *, window: int) -> RequestSizer:
    clock = Clock()
    m = LinkMeter(clock=clock)
    n = int(rate * 0.5) >> 16 << 16  # half a second of answers at `rate` (one here), 64 KiB chunks
    m.observe(99.5, rtt, 100.0, n, n >> 16)
    return RequestSizer(m, requests=8, window=window)


def test_sizer_asks_the_least_request_on_loopback_and_grows_over_a_long_link() -> None:
    loop = _sizer(500e6, 0.0002, window=32 * MiB)
    assert loop() == REQUEST_CHUNKS and loop.last_depth == 8 * MiB
    wan = _sizer(117e6, 0.040, window=32 * MiB)
    assert wan() > LEAST_CHUNKS
    assert wan.last_depth == depth_for(*wan.meter.estimate()[:2], floor=8 * MiB,
                                       cap=32 * MiB) > 8 * MiB
    far = _sizer(117e6, 0.300, window=256 * MiB)  # capped by memory, not the window
    far()
    assert far.last_depth == MEMORY_CAP
    near_window = _sizer(117e6, 0.300, window=4 * MiB)  # the read-ahead bounds it
    assert near_window() == REQUEST_CHUNKS and near_window.last_depth == 4 * MiB


@pytest.mark.parametrize(("rate", "rtt", "want"), [
    (118e6, 0.040, 0.85),  # the bench's WAN: bounded by the 32 MiB read-ahead
    (50e6, 0.040, 0.88),
    (118e6, 0.010, 0.88),
])
def test_depth_measured_through_its_own_pipeline_settles_near_the_link_rate(
        rate: float, rtt: float, want: float) -> None:
    """Each fetch thread waits a round trip between answers, so what a depth D delivers
    over a link of `rate` is D / (rtt + D / rate); that is what the meter sees, and the
    next depth is sized from it. Started from nothing measured, the pipeline must
    settle at `want` of the link, not at 0.75 (4 products settled at 3)."""
    floor = 8 * LEAST_CHUNKS * 75_000
    got = 0.0
    for _ in range(200):
        depth = depth_for(got, rtt, floor=floor, cap=min(MEMORY_CAP, 32 * MiB))
        got = depth / (rtt + depth / rate)
    assert got >= want * rate


class _Dict:
    """A chunk source over a dict, recording the ids of each get_many."""

    def __init__(self, chunks: dict[bytes, bytes]) -> None:
        self.chunks = chunks
        self.batches: list[int] = []
        self.done = threading.Semaphore(0)

    def get(self, cid: bytes, *, path: str = "") -> bytes:
        return self.chunks[cid]

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        ids = list(cids)
        self.batches.append(len(ids))
        out = {c: self.chunks[c] for c in ids}
        for _ in ids:
            self.done.release()
        return out

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        raise NotImplementedError

    def worth_caching(self, cid: bytes) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.mark.parametrize("batch", [None, 40, 5])
def test_memory_tier_prefetch_asks_in_batches_the_sizer_gives(batch: int | None) -> None:
    chunks = {i.to_bytes(16, "big"): bytes([i % 256]) * 100 for i in range(200)}
    src = _Dict(chunks)
    tier = MemoryTier(src, 64 * MiB, threads=2, batch=None if batch is None else lambda: batch)
    try:
        tier.prefetch(list(chunks), "/x")
        for _ in chunks:
            assert src.done.acquire(timeout=30)
        step = 16 if batch is None else batch
        assert sorted(src.batches, reverse=True) == [step] * (200 // step) + (
            [200 % step] if 200 % step else [])
        assert tier.get_many(list(chunks)) == chunks
    finally:
        tier.close()
