"""`MemoryTier`: decompressed chunks in memory in front of any chunk source.

Chunks are immutable and named by their digest, so a cached chunk never goes
stale: the tier needs no invalidation, only eviction — by bytes, with a policy
of gfs.eviction (S3-FIFO by default; the figures that chose it are in that
module's docstring). Concurrent requests for one chunk share one
read of the inner source (single flight), so read-ahead and readers never
fetch a chunk twice. `prefetch` reads chunks in the background, many at once
through the inner source's `get_many`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from gfs.errors import ConfigError
from gfs.eviction import DEFAULT_POLICY, make_policy
from gfs.read.source import ChunkSource, PathOf

#: Default capacity of the memory tier.
DEFAULT_MEMORY_BYTES = 256 << 20
#: Chunks one prefetch thread reads with one `get_many` (a read-ahead of more is
#: split, so that the tier's threads read and decode it in parallel).
PREFETCH_BATCH = 16


@dataclass
class TierStats:
    """Counters of a memory tier; `disk` holds the counters of a disk tier below it."""

    hits: int = 0
    misses: int = 0
    prefetched: int = 0
    evictions: int = 0
    bytes_from_store: int = 0
    """Bytes read from the source at the bottom of the stack (not from a cache tier)."""
    bytes_cached: int = 0
    entries: int = 0
    capacity: int = 0
    policy: str = DEFAULT_POLICY
    disk: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryTier:
    """Verified raw chunks of `inner` kept in memory, evicted by bytes with `policy`."""

    def __init__(self, inner: ChunkSource, capacity: int = DEFAULT_MEMORY_BYTES, *,
                 policy: str = DEFAULT_POLICY, threads: int = 4,
                 batch: Callable[[], int] | None = None) -> None:
        """`batch` says how many chunks one prefetch thread asks for at a time (default
        PREFETCH_BATCH; a remote source sizes it to the link, `gfs.federation.inflight`)."""
        if capacity < 0:
            raise ConfigError(f"memory cache capacity must be >= 0 bytes, got {capacity}")
        self.inner = inner
        self.capacity = capacity
        self._policy = make_policy(policy, capacity)
        self._data: dict[bytes, bytes] = {}
        self._inflight: dict[bytes, Future[bytes]] = {}
        self._lock = threading.Lock()
        self._stats = TierStats(capacity=capacity, policy=policy)
        self._from_inner = 0
        self._threads = threads
        self._batch = batch
        self._pool: ThreadPoolExecutor | None = None
        self._ahead = 0

    def keep_ahead(self, nbytes: int) -> None:
        """A reader prefetches up to `nbytes` ahead of its reads: the tier keeps that
        many bytes of chunks admitted and not yet read (`Policy.keep_new`; the most any
        reader asked, never less)."""
        with self._lock:
            if nbytes > self._ahead:
                self._ahead = nbytes
                self._policy.keep_new(nbytes)

    def close(self) -> None:
        """Stop the prefetch threads, drop the cached chunks and close the inner source."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._data.clear()
            self._policy = make_policy(self._policy.name, self.capacity)
            self._policy.keep_new(self._ahead)
        self.inner.close()

    def stats(self) -> TierStats:
        """A snapshot of the counters (and of a disk tier's right below, if any)."""
        with self._lock:
            s = TierStats(**asdict(self._stats))
            s.bytes_cached, s.entries = self._policy.size, len(self._data)
            s.bytes_from_store = self._from_inner
        from gfs.read.disk import DiskTier  # here: most memory tiers (a get's) have none below

        if isinstance(self.inner, DiskTier):
            disk = self.inner.stats()
            s.bytes_from_store, s.disk = disk.bytes_from_store, disk.to_dict()
        return s

    def __contains__(self, cid: object) -> bool:
        with self._lock:
            return cid in self._data

    def peek(self, cid: bytes) -> bytes | None:
        """Chunk `cid` if it is in memory now (a hit), else None; never reads."""
        with self._lock:
            data = self._data.get(cid)
            if data is not None:
                self._policy.hit(cid)
                self._stats.hits += 1
            return data

    def peek_many(self, cids: list[bytes]) -> list[bytes | None]:
        """`peek` of each of `cids` under one lock (a large read's chunks)."""
        with self._lock:
            data = self._data
            out = [data.get(cid) for cid in cids]
            hit = self._policy.hit
            n = 0
            for cid, d in zip(cids, out, strict=True):
                if d is not None:
                    hit(cid)
                    n += 1
            self._stats.hits += n
        return out

    def peek_all(self, cids: list[bytes]) -> list[bytes] | None:
        """Every one of `cids` if all are in memory now (each a hit), else None and
        nothing counted: a caller that cannot wait (an event loop) reads them only
        when it need not wait for any."""
        with self._lock:
            data = self._data
            out = [data.get(cid) for cid in cids]
            if None in out:
                return None
            hit = self._policy.hit
            for cid in cids:
                hit(cid)
            self._stats.hits += len(cids)
        return out  # type: ignore[return-value]

    # -- single flight -----------------------------------------------------------------
    def _lookup(self, cid: bytes) -> tuple[bytes | None, Future[bytes] | None, bool]:
        """(data, future, owner): cached bytes, or the future of the read to wait on;
        `owner` is True when the caller must perform the read itself."""
        with self._lock:
            data = self._data.get(cid)
            if data is not None:
                self._policy.hit(cid)
                self._stats.hits += 1
                return data, None, False
            self._stats.misses += 1
            fut = self._inflight.get(cid)
            if fut is not None:
                return None, fut, False
            fut = Future()
            self._inflight[cid] = fut
            return None, fut, True

    def _admit(self, cid: bytes, data: bytes) -> None:
        """Keep `data` (under the lock) and end its flight."""
        self._inflight.pop(cid, None)
        self._from_inner += len(data)
        for old in self._policy.admit(cid, len(data)):
            if self._data.pop(old, None) is not None:
                self._stats.evictions += 1
        if cid in self._policy:
            self._data[cid] = data

    def _fill(self, cid: bytes, fut: Future[bytes], path: str) -> bytes:
        try:
            data = self.inner.get(cid, path=path)
        except BaseException as e:
            with self._lock:
                self._inflight.pop(cid, None)
            fut.set_exception(e)
            raise
        with self._lock:
            self._admit(cid, data)
        fut.set_result(data)
        return data

    def _fill_many(self, owned: list[tuple[bytes, Future[bytes]]], path_of: PathOf | None,
                   *, quiet: bool) -> None:
        """Read `owned` with one `get_many` and complete their futures. Without `quiet`
        an error is raised; with it, each chunk is read alone, and a failure is left
        to the reader that waits for that chunk (it reads again itself)."""
        got: dict[bytes, bytes] = {}
        if len(owned) > 1:
            try:
                got = self.inner.get_many([cid for cid, _ in owned], path_of=path_of)
            except Exception:
                if not quiet:
                    raise  # get_many's caller ends the flights it owns
                got = {}
        for cid, fut in owned:
            data = got.get(cid)
            if data is None:
                path = path_of(cid) if path_of else ""
                if quiet:
                    with contextlib.suppress(Exception):
                        self._fill(cid, fut, path)
                else:
                    self._fill(cid, fut, path)
                continue
            with self._lock:
                self._admit(cid, data)
            fut.set_result(data)

    # -- the ChunkSource protocol --------------------------------------------------------
    def get(self, cid: bytes, *, path: str = "") -> bytes:
        """The verified raw bytes of chunk `cid` (`path` names the file in errors)."""
        data, fut, owner = self._lookup(cid)
        if data is not None:
            return data
        assert fut is not None
        if owner:
            return self._fill(cid, fut, path)
        return _wait(fut, lambda: self.get(cid, path=path))

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        """Verified raw bytes of `cids`: cached ones from memory, the rest with one
        `get_many` of the inner source (chunks in flight elsewhere are waited for)."""
        out: dict[bytes, bytes] = {}
        owned: list[tuple[bytes, Future[bytes]]] = []
        waiting: list[tuple[bytes, Future[bytes]]] = []
        for cid in dict.fromkeys(cids):
            data, fut, owner = self._lookup(cid)
            if data is not None:
                out[cid] = data
            elif fut is not None:
                (owned if owner else waiting).append((cid, fut))
        try:
            self._fill_many(owned, path_of, quiet=False)
        finally:
            for cid, fut in owned:  # a raise above must not leave others waiting forever
                if not fut.done():
                    with self._lock:
                        self._inflight.pop(cid, None)
                    fut.cancel()
        for cid, fut in (*owned, *waiting):
            out[cid] = _wait(fut, partial(self.get, cid, path=path_of(cid) if path_of else ""))
        return out

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        """The stored blob of chunk `cid`, from the inner source (the tier keeps raw bytes)."""
        return self.inner.get_blob(cid, path=path)

    def worth_caching(self, cid: bytes) -> bool:
        return self.inner.worth_caching(cid)

    # -- read-ahead ------------------------------------------------------------------------
    def prefetch(self, cids: Iterable[bytes], path: str = "") -> None:
        """Start reading `cids` in the background (those not cached nor in flight)."""
        owned: list[tuple[bytes, Future[bytes]]] = []
        for cid in cids:
            with self._lock:
                if cid in self._data or cid in self._inflight:
                    continue
                fut: Future[bytes] = Future()
                self._inflight[cid] = fut
            owned.append((cid, fut))
        if not owned:
            return
        with self._lock:
            self._stats.prefetched += len(owned)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads,
                                                thread_name_prefix="hutong-prefetch")
            pool = self._pool
        try:
            if self._batch is None:
                for i in range(0, len(owned), PREFETCH_BATCH):  # batches read in parallel
                    pool.submit(self._fill_many, owned[i:i + PREFETCH_BATCH],
                                (lambda _: path), quiet=True)
            else:  # each task sizes its batch as it starts (what was measured by then)
                todo = deque(owned)
                for _ in range(0, len(owned), PREFETCH_BATCH):
                    pool.submit(self._fill_next, todo, path)
        except RuntimeError:  # shut down
            with self._lock:
                for cid, fut in owned:
                    if self._inflight.get(cid) is fut:
                        self._inflight.pop(cid, None)
                        fut.cancel()

    def _fill_next(self, todo: deque[tuple[bytes, Future[bytes]]], path: str) -> None:
        """Prefetch the next `batch()` chunks of `todo`, again until none is left."""
        assert self._batch is not None
        while todo:
            take: list[tuple[bytes, Future[bytes]]] = []
            with contextlib.suppress(IndexError):
                for _ in range(max(1, self._batch())):
                    take.append(todo.popleft())
            if take:
                self._fill_many(take, (lambda _: path), quiet=True)


def _wait(fut: Future[bytes], again: Callable[[], bytes]) -> bytes:
    """The result of another thread's read; `again` when that read was cancelled (a
    prefetch dropped at close, a batch that failed for another chunk)."""
    try:
        return fut.result()
    except CancelledError:
        return again()


__all__ = ["DEFAULT_MEMORY_BYTES", "MemoryTier", "TierStats"]
