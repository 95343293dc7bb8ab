"""The chunk-source protocol: what every reader of chunks asks of where chunks live.

A source hands out *verified* chunks: raw bytes whose xxh3-128 digest is the
chunk id, or stored blobs that decode to them. Errors name the file being
read (`path`): `ChunkMissingError` when no copy is readable, `CorruptChunkError`
when every copy failed verification. Implementations: `LocalSource` (the
store's pools), the federation's remote-site adapter; wrappers that take any
source: `MemoryTier`, `DiskTier`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

#: Names the file a chunk is read for, in errors.
PathOf = Callable[[bytes], str]


@runtime_checkable
class ChunkSource(Protocol):
    """Verified chunks by id (see the module docstring for the contract)."""

    def get(self, cid: bytes, *, path: str = "") -> bytes:
        """The verified raw bytes of chunk `cid`; `path` names the file in errors."""
        ...

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        """Verified raw bytes of every chunk in `cids`, by id (equal to `get` of each;
        batched where the source can). Raises the first chunk's error that has no copy."""
        ...

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        """The verified stored blob of chunk `cid` (header and payload, as in a pack):
        what a cache tier keeps and a store repairs or replicates from."""
        ...

    def worth_caching(self, cid: bytes) -> bool:
        """Whether a local cache tier gains by keeping chunk `cid` (False when the
        source already reads it from local disk)."""
        ...

    def close(self) -> None:
        """Release what the source holds (threads, files); the inner source stays open."""
        ...


@runtime_checkable
class BlobBatches(Protocol):
    """A source that can hand out many stored blobs in one request (a remote site):
    what a disk tier asks of it for a block of misses, instead of one `get_blob` each."""

    def get_blob_many(self, cids: Iterable[bytes], *,
                      path_of: PathOf | None = None) -> dict[bytes, bytes]:
        """The verified stored blobs of `cids` by id; raises like `get_blob`."""
        ...


def blobs_of(source: ChunkSource, cids: Iterable[bytes],
             path_of: PathOf | None) -> dict[bytes, bytes]:
    """The verified stored blobs of `cids`: batched when `source` is a `BlobBatches`,
    else one `get_blob` each."""
    if isinstance(source, BlobBatches):
        return source.get_blob_many(cids, path_of=path_of)
    return {cid: source.get_blob(cid, path=path_of(cid) if path_of else "")
            for cid in dict.fromkeys(cids)}


def one_by_one(source: ChunkSource, cids: Iterable[bytes],
               path_of: PathOf | None) -> dict[bytes, bytes]:
    """`get_many` for sources that cannot batch: `get` of each distinct id."""
    return {cid: source.get(cid, path=path_of(cid) if path_of else "")
            for cid in dict.fromkeys(cids)}


__all__ = ["BlobBatches", "ChunkSource", "PathOf", "blobs_of", "one_by_one"]
