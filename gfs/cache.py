"""Local cache tiers for readers: decompressed chunks in memory.

A `ChunkCache` wraps a `ChunkStore` (it does not change it): `get(cid)` returns
the verified raw bytes of a chunk from memory when it can and from the store
otherwise, and `prefetch(cids)` reads chunks ahead on worker threads. Chunks
are immutable and named by their digest, so a cached chunk never goes stale;
a cache needs no invalidation, only eviction.

Eviction is LRU by bytes. Concurrent requests for the same chunk share one
read (single flight), so read-ahead and the reader never fetch a chunk twice.
Statistics (hits, misses, bytes read from the store, evictions) are kept per
cache and reported by `stats()`.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from gfs.meta import Manifest
from gfs.store import ChunkStore

#: Chunks read ahead of the ones a read touches.
READ_AHEAD_CHUNKS = 8
#: Default capacity of the memory tier.
DEFAULT_MEMORY_BYTES = 256 << 20


@dataclass
class CacheStats:
    """Counters of one cache."""

    hits: int = 0
    misses: int = 0
    prefetched: int = 0
    evictions: int = 0
    bytes_from_store: int = 0
    bytes_cached: int = 0
    entries: int = 0
    capacity: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChunkCache:
    """Memory tier of decompressed chunks in front of a `ChunkStore` (LRU by bytes)."""

    def __init__(self, store: ChunkStore, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 threads: int = 4) -> None:
        if memory_bytes < 0:
            raise ValueError(f"cache capacity must be >= 0, got {memory_bytes}")
        self.store = store
        self.capacity = memory_bytes
        self._lru: OrderedDict[bytes, bytes] = OrderedDict()
        self._size = 0
        self._inflight: dict[bytes, Future[bytes]] = {}
        self._lock = threading.Lock()
        self._stats = CacheStats(capacity=memory_bytes)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hutong-prefetch")

    def close(self) -> None:
        """Stop the prefetch threads and drop the cached chunks."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._lru.clear()
            self._size = 0

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            s = CacheStats(**asdict(self._stats))
            s.bytes_cached, s.entries = self._size, len(self._lru)
        return s

    def _lookup(self, cid: bytes) -> tuple[bytes | None, Future[bytes] | None, bool]:
        """(data, future, owner): cached bytes, or the future of the read to wait on;
        `owner` is True when the caller must perform the read itself."""
        with self._lock:
            data = self._lru.get(cid)
            if data is not None:
                self._lru.move_to_end(cid)
                return data, None, False
            fut = self._inflight.get(cid)
            if fut is not None:
                return None, fut, False
            fut = Future()
            self._inflight[cid] = fut
            return None, fut, True

    def _fill(self, cid: bytes, fut: Future[bytes], path: str) -> bytes:
        try:
            data = self.store.read_chunk(cid, path)
        except BaseException as e:
            with self._lock:
                self._inflight.pop(cid, None)
            fut.set_exception(e)
            raise
        with self._lock:
            self._inflight.pop(cid, None)
            self._stats.bytes_from_store += len(data)
            if len(data) <= self.capacity:
                self._lru[cid] = data
                self._size += len(data)
                while self._size > self.capacity:
                    _, old = self._lru.popitem(last=False)
                    self._size -= len(old)
                    self._stats.evictions += 1
        fut.set_result(data)
        return data

    def get(self, cid: bytes, path: str = "") -> bytes:
        """The verified raw bytes of chunk `cid` (`path` names the file in errors)."""
        data, fut, owner = self._lookup(cid)
        if data is not None:
            with self._lock:
                self._stats.hits += 1
            return data
        assert fut is not None
        with self._lock:
            self._stats.misses += 1
        if owner:
            return self._fill(cid, fut, path)
        return fut.result()

    def prefetch(self, cids: Iterable[bytes], path: str = "") -> None:
        """Start reading `cids` in the background (those not cached nor in flight)."""
        for cid in cids:
            _, fut, owner = self._lookup(cid)
            if owner and fut is not None:
                with self._lock:
                    self._stats.prefetched += 1
                try:
                    self._pool.submit(self._quiet_fill, cid, fut, path)
                except RuntimeError:  # shut down
                    with self._lock:
                        self._inflight.pop(cid, None)
                    fut.cancel()
                    return

    def _quiet_fill(self, cid: bytes, fut: Future[bytes], path: str) -> None:
        with contextlib.suppress(Exception):  # the reader that needs the chunk reports it
            self._fill(cid, fut, path)


class CachedReader:
    """Ranged reads of one pinned manifest, through the chunk cache, with read-ahead."""

    def __init__(self, cache: ChunkCache, path: str, manifest: Manifest) -> None:
        self.cache = cache
        self.path = path
        self.chunks = manifest.chunks
        self.ends = list(itertools.accumulate(c.length for c in manifest.chunks))
        self.size = self.ends[-1] if self.ends else 0

    def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        first = bisect.bisect_right(self.ends, off)
        last = bisect.bisect_left(self.ends, end)
        ahead = self.chunks[last + 1:last + 1 + READ_AHEAD_CHUNKS]
        if ahead:
            self.cache.prefetch((c.id for c in ahead), self.path)
        parts = []
        for i in range(first, last + 1):
            data = self.cache.get(self.chunks[i].id, self.path)
            start = self.ends[i] - self.chunks[i].length
            lo, hi = max(off, start) - start, min(end, self.ends[i]) - start
            parts.append(data if lo == 0 and hi == len(data) else data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)


__all__ = ["DEFAULT_MEMORY_BYTES", "CacheStats", "CachedReader", "ChunkCache"]
