"""Cache tiers: eviction policies, the disk tier (verification, crash safety, capacity,
ownership, saved statistics) and the memory tier in front of it."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from gfs.client import Client
from gfs.codec import CODEC_RAW, BlobHeader, encode_blob
from gfs.disk_cache import (
    DiskCache,
    _Entry,
    _index_bytes,
    cache_capacity,
    cache_dir,
    offline_stats,
)
from gfs.errors import ConfigError
from gfs.eviction import POLICIES, make_policy
from gfs.read import DiskTier, ManifestReader, cached


def _key(i: int) -> bytes:
    return i.to_bytes(16, "little")


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_keeps_capacity_and_reports_evictions(name: str) -> None:
    rnd = random.Random(1)
    p = make_policy(name, 1000)
    resident: set[bytes] = set()
    for _ in range(5000):
        k = _key(rnd.randrange(60))
        if rnd.random() < 0.05:
            p.discard(k)
            resident.discard(k)
        elif p.hit(k):
            assert k in resident
        else:
            evicted = p.admit(k, rnd.randrange(1, 120))
            resident.add(k)
            resident.difference_update(evicted)
        assert p.size <= 1000
        assert resident == set(p.keys())
        assert len(p) == len(resident)
    assert p.admit(_key(999), 2000) == [_key(999)]  # larger than the cache: refused


@pytest.mark.parametrize("name", ["arc", "s3fifo"])
def test_scan_resistant_policies_keep_the_hot_set(name: str) -> None:
    p = make_policy(name, 100)
    hot = [_key(i) for i in range(50)]
    for _ in range(3):
        for k in hot:
            if not p.hit(k):
                p.admit(k, 1)
    for i in range(1000, 1500):  # a scan five times the cache
        p.admit(_key(i), 1)
    assert sum(1 for k in hot if k in p) >= 45
    assert sum(1 for k in hot if k in make_policy("lru", 100)) == 0
    with pytest.raises(ConfigError, match="unknown cache policy"):
        make_policy("mru", 10)


def _blob(data: bytes) -> tuple[bytes, bytes]:
    header, payload = encode_blob(data)
    blob = header + bytes(payload)
    return header[16:32], blob


def test_disk_tier_roundtrip_eviction_and_restart(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    items = [_blob(os.urandom(2000 * (i + 1))) for i in range(6)]
    d = DiskCache(root, capacity=13_000, policy="lru", admit_local=True)
    for cid, blob in items[:3]:
        assert d.put(cid, blob)
    assert d.get(items[0][0]) == decode(items[0][1])
    for cid, blob in items[3:]:
        d.put(cid, blob)
    s = d.stats()
    assert s.bytes_cached <= 13_000 and s.evictions >= 1 and s.hits == 1
    kept = [cid for cid, _ in items if cid in d]
    d.close()
    again = DiskCache(root, capacity=13_000, policy="lru")  # found on disk at start-up
    assert sorted(cid for cid, _ in items if cid in again) == sorted(kept)
    assert again.stats().hits == 1  # counters carried over from stats.json
    again.close()
    off = offline_stats(root)
    assert off is not None and off.entries == len(kept) and off.mode == "offline"


def decode(blob: bytes) -> bytes:
    from gfs.codec import decode_blob

    return decode_blob(blob)


def _segment_with(root: Path, blob: bytes) -> tuple[Path, int]:
    """The segment file holding `blob`, and its offset there."""
    for p in sorted((root / "segments").iterdir()):
        at = p.read_bytes().find(blob)
        if at >= 0:
            return p, at
    raise AssertionError("blob not in any segment")


def test_damaged_cache_record_is_dropped_never_served(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    d = DiskCache(root, capacity=1 << 20, admit_local=True)
    cid, blob = _blob(os.urandom(5000))
    cid2, blob2 = _blob(os.urandom(5000))
    d.put(cid, blob)
    d.put(cid2, blob2)
    for b in (blob, blob2):
        p, at = _segment_with(root, b)
        with open(p, "r+b") as f:  # bit rot in the payload
            f.seek(at + len(b) - 10)
            f.write(bytes(10))
    view = memoryview(bytearray(5000))
    assert d.read_into([(cid2, view)]) == [False]  # the direct path checks it too
    assert d.get(cid) is None and d.get(cid2) is None
    assert d.stats().corrupt_dropped == 2 and cid not in d and cid2 not in d
    assert d.put(cid, blob) and d.get(cid) == decode(blob)  # admitted again, whole
    d.close()


def test_torn_tail_of_an_open_segment_is_cut_at_restart(tmp_path: Path) -> None:
    """A crash while appending: the open segment ends inside a record. The next owner
    keeps the whole records before it, cuts the tail and seals the segment."""
    root = tmp_path / "cache"
    d = DiskCache(root, capacity=1 << 20, admit_local=True)
    items = [_blob(os.urandom(4000)) for _ in range(3)]
    for cid, blob in items:
        d.put(cid, blob)
    (seg,) = (root / "segments").glob("*.open")
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 100)  # the last record torn
    os.close(d._lock_fd)  # the owner dies without closing (kill -9): lock released
    again = DiskCache(root, capacity=1 << 20)
    assert again.owner
    assert [cid in again for cid, _ in items] == [True, True, False]
    assert again.get(items[1][0]) == decode(items[1][1])
    assert not list((root / "segments").glob("*.open"))
    assert (root / "segments" / seg.name.replace(".open", ".seg")).stat().st_size == size - 4036
    again.close()


def test_read_into_reads_a_run_with_one_preadv(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks admitted in order lie back to back: a run of them is one preadv into the
    caller's buffer, verified in place."""
    root = tmp_path / "cache"
    d = DiskCache(root, capacity=64 << 20, admit_local=True)
    raws = [os.urandom(3000 + i) for i in range(20)]
    for raw in raws:
        cid, blob = _blob(raw)
        d.put(cid, blob)
    calls: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(len(buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    out = bytearray(sum(map(len, raws)))
    views, at = [], 0
    for raw in raws:
        views.append((_blob(raw)[0], memoryview(out)[at:at + len(raw)]))
        at += len(raw)
    assert d.read_into(views) == [True] * 20
    assert bytes(out) == b"".join(raws) and calls == [40]
    d.close()


class _CountingLock:
    """A lock that counts its acquisitions."""

    def __init__(self, inner: threading.Lock) -> None:
        self.inner, self.taken = inner, 0

    def __enter__(self) -> None:
        self.inner.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def test_read_into_looks_chunks_up_together(tmp_path: Path) -> None:
    """A large read looks up all its chunks and counts their hits under the tier's lock
    a few times, not once or twice per chunk (~16,000 chunks a warm GiB); a header
    that is not the one the chunk's raw blob must have is refused."""
    d = DiskCache(tmp_path / "cache", capacity=64 << 20, admit_local=True)
    raws = [os.urandom(3000 + i) for i in range(50)]
    for raw in raws:
        d.put(*_blob(raw))
    lock = _CountingLock(d._lock)
    d._lock = lock  # type: ignore[assignment]
    out = bytearray(sum(map(len, raws)))
    views, at = [], 0
    for raw in raws:
        views.append((_blob(raw)[0], memoryview(out)[at:at + len(raw)]))
        at += len(raw)
    missing = (os.urandom(16), memoryview(bytearray(10)))
    assert d.read_into([*views, missing]) == [True] * 50 + [False]
    assert bytes(out) == b"".join(raws)
    assert lock.taken <= 4, lock.taken
    assert d.stats().hits == 50 and d.stats().misses == 1
    d._lock = lock.inner
    cid, blob = _blob(os.urandom(4000))
    d.put(cid, blob)
    p, off = _segment_with(tmp_path / "cache", blob)
    with open(p, "r+b") as f:  # the header's length fields say 3999, the check matches
        f.seek(off)
        f.write(BlobHeader(CODEC_RAW, 0, 3999, 3999, cid).to_bytes())
    assert d.read_into([(cid, memoryview(bytearray(4000)))]) == [False]
    assert cid not in d
    d.close()


def test_second_process_uses_the_tier_read_only(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    owner = DiskCache(root, capacity=1 << 20, admit_local=True)
    cid, blob = _blob(os.urandom(3000))
    owner.put(cid, blob)
    other = DiskCache(root, capacity=1 << 20, admit_local=True)  # lock held: read-only
    assert not other.owner and other.stats().mode == "read-only"
    assert other.get(cid) == decode(blob)
    cid2, blob2 = _blob(os.urandom(3000))
    assert not other.put(cid2, blob2) and cid2 not in other
    other.close()
    owner.close()


def test_capacity_and_directory_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setenv("HUTONG_DISK_CACHE_BYTES", "12345")
    assert cache_capacity() == 12345 and cache_capacity(7) == 7
    monkeypatch.setenv("HUTONG_DISK_CACHE_BYTES", "2GiB")  # the sizes of gfs.units
    assert cache_capacity() == 2 << 30
    monkeypatch.setenv("HUTONG_DISK_CACHE_BYTES", "lots")
    with pytest.raises(ConfigError, match="HUTONG_DISK_CACHE_BYTES"):
        cache_capacity()
    monkeypatch.setenv("HUTONG_DISK_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir(tmp_path) == tmp_path / "elsewhere"
    assert cache_dir(tmp_path, tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("HUTONG_DISK_CACHE")
    assert cache_dir(tmp_path) == tmp_path / "cache"
    with pytest.raises(ConfigError, match="capacity"):
        DiskCache(tmp_path / "c", capacity=-1)


def test_memory_tier_in_front_of_the_disk_tier(fs: Client) -> None:
    data = random.Random(2).randbytes(900_000)
    fs.write_bytes("/f", data)
    m = fs.manifest("/f") if hasattr(fs, "manifest") else fs._manifest("/f")[1]
    root = fs.state / "cache"
    disk = DiskCache(root, capacity=64 << 20, admit_local=True)
    cache = cached(fs.store.source, 1 << 20, disk=disk)  # memory smaller than the file
    try:
        assert ManifestReader(cache, "/f", m).pread(0, len(data)) == data
        assert isinstance(cache.inner, DiskTier) and cache.inner.puts.flush(30)
        s = cache.stats()
        assert s.disk is not None and s.disk["admitted"] == len(m.chunks)
        assert s.bytes_from_store == len(data) and s.bytes_cached <= 1 << 20
    finally:
        cache.close()
    disk2 = DiskCache(root, capacity=64 << 20)
    cache2 = cached(fs.store.source, 1 << 20, disk=disk2)
    try:
        assert ManifestReader(cache2, "/f", m).pread(100, 800_000) == data[100:800_100]
        s = cache2.stats()
        assert s.bytes_from_store == 0 and s.disk is not None and s.disk["hits"] >= 1
    finally:
        cache2.close()


def test_disk_tier_skips_local_pools_by_default(fs: Client) -> None:
    fs.write_bytes("/g", os.urandom(200_000))
    m = fs._manifest("/g")[1]
    cache = cached(fs.store.source, 1 << 20, disk=DiskCache(fs.state / "cache", 1 << 20))
    try:
        ManifestReader(cache, "/g", m).pread(0, 200_000)
        s = cache.stats()
        assert s.disk is not None and s.disk["admitted"] == 0
    finally:
        cache.close()


def test_eviction_takes_whole_segments_least_recently_used(tmp_path: Path) -> None:
    """Segments of 3 chunks; over capacity, the segment read least recently goes whole
    (its file deleted, every chunk of it gone), a recently read one stays."""
    root = tmp_path / "cache"
    d = DiskCache(root, capacity=40_000, policy="lru", admit_local=True,
                  segment_bytes=3 * 4036)
    items = [_blob(os.urandom(4000)) for _ in range(12)]  # 4 segments of 3
    for cid, blob in items[:9]:
        assert d.put(cid, blob)
    suffixes = sorted(p.suffix for p in (root / "segments").iterdir())
    assert suffixes == [".idx"] * 3 + [".seg"] * 3  # each sealed segment with its index
    assert d.get(items[0][0]) is not None  # segment 1 read: segment 2 is now the oldest
    for cid, blob in items[9:]:  # segment 4 sealed: 4 x 12,108 bytes exceed 40 kB
        d.put(cid, blob)
    held = [cid in d for cid, _ in items]
    d.close()
    assert held[:3] == [True] * 3 and held[3:6] == [False] * 3 and all(held[6:])
    assert not (root / "segments" / "000000000002.seg").exists()
    assert not (root / "segments" / "000000000002.idx").exists()
    s = offline_stats(root)
    assert s is not None and s.evictions == 3


def test_read_only_user_finds_segments_written_after_it_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gfs.disk_cache.RESCAN_EVERY", 0.0)
    root = tmp_path / "cache"
    owner = DiskCache(root, capacity=1 << 20, admit_local=True)
    other = DiskCache(root, capacity=1 << 20)
    cid, blob = _blob(os.urandom(3000))
    assert other.get(cid) is None
    owner.put(cid, blob)
    assert other.get(cid) == decode(blob)
    other.close()
    owner.close()


def _reopen_counting(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[DiskCache, int]:
    """The tier at `root` opened again, and the header reads (pread) that took."""
    calls = [0]
    real = os.pread

    def counting(fd: int, n: int, off: int) -> bytes:
        calls[0] += 1
        return real(fd, n, off)
    monkeypatch.setattr(os, "pread", counting)
    d = DiskCache(root, capacity=1 << 20, admit_local=True, segment_bytes=3 * 4036)
    monkeypatch.setattr(os, "pread", real)
    return d, calls[0]


def test_open_reads_each_sealed_segments_index_and_rebuilds_a_damaged_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sealed segment's .idx file makes opening one read per segment instead of one
    per record; a damaged one (or one of another size) is ignored, the segment's
    headers walked and the file written again; nothing is ever served wrong."""
    root = tmp_path / "cache"
    d = DiskCache(root, capacity=1 << 20, admit_local=True, segment_bytes=3 * 4036)
    items = [_blob(os.urandom(4000)) for _ in range(30)]  # 10 segments of 3
    for cid, blob in items:
        assert d.put(cid, blob)
    d.close()
    d, reads = _reopen_counting(root, monkeypatch)
    assert reads == 0 and all(d.get(cid) == decode(blob) for cid, blob in items)
    d.close()
    idx = sorted((root / "segments").glob("*.idx"))
    assert len(idx) == 10
    damaged = bytearray(idx[4].read_bytes())
    damaged[30] ^= 1
    idx[4].write_bytes(bytes(damaged))
    idx[5].write_bytes(idx[5].read_bytes()[:-1])
    d, reads = _reopen_counting(root, monkeypatch)
    assert reads == 2 * 3  # the two segments' headers, walked
    assert all(d.get(cid) == decode(blob) for cid, blob in items)
    d.close()
    d, reads = _reopen_counting(root, monkeypatch)
    assert reads == 0  # written again
    d.close()


def test_a_lying_segment_index_never_serves_a_wrong_chunk(tmp_path: Path) -> None:
    """An index file with a good checksum that puts chunk A where chunk B lies: the
    read of A verifies the record, drops it and misses; B's bytes are not served."""
    root = tmp_path / "cache"
    d = DiskCache(root, capacity=1 << 20, admit_local=True, segment_bytes=3 * 4036)
    items = [_blob(os.urandom(4000)) for _ in range(3)]
    for cid, blob in items:
        d.put(cid, blob)
    d.close()
    (idx,) = (root / "segments").glob("*.idx")
    seg = int(idx.stem)
    size = (root / "segments" / f"{idx.stem}.seg").stat().st_size
    a, b = items[0][0], items[1][0]
    lie = [(a, _Entry(seg, 4036, 4036, True)), (b, _Entry(seg, 0, 4036, True))]
    idx.write_bytes(_index_bytes(seg, size, lie))
    d = DiskCache(root, capacity=1 << 20, admit_local=True, segment_bytes=3 * 4036)
    out = memoryview(bytearray(4000))
    assert d.get(a) is None and d.read_into([(b, out)]) == [False]
    assert d.stats().corrupt_dropped == 2 and a not in d and b not in d
    assert items[2][0] not in d  # not in the (lying) index: a miss, read elsewhere
    d.close()
