"""Building the usual read stack: memory tier -> optional disk tier -> a source."""

from __future__ import annotations

from collections.abc import Callable

from gfs.disk_cache import DiskCache
from gfs.eviction import DEFAULT_POLICY
from gfs.read.disk import DiskTier
from gfs.read.memory import MemoryTier
from gfs.read.source import ChunkSource


def cached(source: ChunkSource, memory_bytes: int, *, policy: str = DEFAULT_POLICY,
           disk: DiskCache | None = None, threads: int = 4,
           batch: Callable[[], int] | None = None) -> MemoryTier:
    """`source` behind a disk tier (when `disk` is given) and a memory tier of
    `memory_bytes` (`threads`, `batch`: its prefetch); closing the result closes the
    disk tier too."""
    inner: ChunkSource = source if disk is None else DiskTier(source, disk)
    return MemoryTier(inner, memory_bytes, policy=policy, threads=threads, batch=batch)


__all__ = ["cached"]
