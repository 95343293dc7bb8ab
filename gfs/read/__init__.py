"""The one chunk-read stack: sources of verified chunks, cache tiers that wrap any
source, and the manifest reader over a source (docs/architecture.md, "Reading").

    source = MemoryTier(DiskTier(LocalSource(store), disk), 256 << 20)
    with ManifestReader(source, "/f", manifest) as f:
        f.seek(1 << 20); f.read(4096)
"""

from gfs.read.disk import DiskTier
from gfs.read.local import LocalSource
from gfs.read.memory import MemoryTier, TierStats
from gfs.read.reader import ManifestReader
from gfs.read.source import ChunkSource
from gfs.read.stack import cached

__all__ = ["ChunkSource", "DiskTier", "LocalSource", "ManifestReader", "MemoryTier",
           "TierStats", "cached"]
