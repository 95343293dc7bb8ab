"""The one chunk-read stack: sources of verified chunks, cache tiers that wrap any
source, and the manifest reader over a source (docs/architecture.md, "Reading").

    source = MemoryTier(DiskTier(LocalSource(store), disk), 256 << 20)
    with ManifestReader(source, "/f", manifest) as f:
        f.seek(1 << 20); f.read(4096)

The names are exported lazily: the store imports `gfs.read.local` for every
command, which must not load the cache tiers (disk cache, xxhash) with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gfs._lazy import lazy_exports

if TYPE_CHECKING:
    from gfs.read.disk import DiskTier
    from gfs.read.local import LocalSource
    from gfs.read.memory import MemoryTier, TierStats
    from gfs.read.reader import ManifestReader
    from gfs.read.source import ChunkSource
    from gfs.read.stack import cached

__all__ = ["ChunkSource", "DiskTier", "LocalSource", "ManifestReader", "MemoryTier",
           "TierStats", "cached"]

__getattr__ = lazy_exports(__name__, {
    "ChunkSource": "gfs.read.source", "DiskTier": "gfs.read.disk",
    "LocalSource": "gfs.read.local", "ManifestReader": "gfs.read.reader",
    "MemoryTier": "gfs.read.memory", "TierStats": "gfs.read.memory",
    "cached": "gfs.read.stack",
})
