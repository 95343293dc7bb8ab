"""`DiskTier`: stored blobs on local disk (a `gfs.disk_cache.DiskCache`) in front of
any chunk source.

A hit is a stored blob that verifies (a damaged one is dropped, never served); a
miss reads the inner source and, when the chunk is worth caching (the inner
source does not read it from local disk, or the cache admits every chunk),
admits the verified blob. Only the process owning the directory admits. Admissions
are written by a background thread (`gfs.disk_writer.QueuedPuts`); a chunk queued
there and not yet written is a hit all the same (the queue is asked before the disk,
so a chunk moving from one to the other is always found in one of them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from gfs.codec import BLOB_HEADER_LEN, CODEC_RAW, decode_blob, parse_blob_header
from gfs.disk_cache import DiskCache, DiskStats
from gfs.disk_writer import QueuedPuts
from gfs.read.source import ChunkSource, PathOf, blobs_of


class DiskTier:
    """Chunks of `inner` cached as blobs in `disk` (see the module docstring)."""

    def __init__(self, inner: ChunkSource, disk: DiskCache) -> None:
        self.inner = inner
        self.disk = disk
        self.puts = QueuedPuts(disk)
        """Admissions, written off the fetching thread (`gfs.disk_writer`)."""
        self._lock = threading.Lock()
        self._from_inner = 0

    def close(self) -> None:
        """Write the queued admissions, save the disk tier's counters and give up
        ownership; close the inner source."""
        self.puts.close()
        self.disk.close()
        self.inner.close()

    def stats(self) -> DiskStats:
        """The disk tier's counters; `bytes_from_store`: bytes this run read below it."""
        s = self.disk.stats()
        with self._lock:
            s.bytes_from_store = self._from_inner
        return s

    def _admits(self, cid: bytes) -> bool:
        return self.disk.owner and (self.disk.admit_local or self.inner.worth_caching(cid))

    def _count(self, n: int) -> None:
        with self._lock:
            self._from_inner += n

    def _miss(self, cid: bytes, path: str) -> bytes:
        if self._admits(cid):
            blob = self.inner.get_blob(cid, path=path)
            raw = _raw_of(blob, cid)
            self.puts.put(cid, blob)
        else:
            raw = self.inner.get(cid, path=path)
        self._count(len(raw))
        return raw

    def _kept(self, cid: bytes) -> bytes | None:
        """The verified raw bytes of `cid` from the writer's queue, else from disk."""
        blob = self.puts.blob(cid)
        return _raw_of(blob, cid) if blob is not None else self.disk.get(cid)

    # -- the ChunkSource protocol --------------------------------------------------------
    def get(self, cid: bytes, *, path: str = "") -> bytes:
        """The verified raw bytes of chunk `cid`: from the disk tier (its writer's queue
        or its files), else from the inner source."""
        data = self._kept(cid)
        return data if data is not None else self._miss(cid, path)

    def get_many(self, cids: Iterable[bytes], *,
                 path_of: PathOf | None = None) -> dict[bytes, bytes]:
        """Disk hits, then the misses: the blobs of admitted ones in one batch where the
        inner source can (`blobs_of`; they are kept), the others with one `get_many`."""
        out: dict[bytes, bytes] = {}
        batch: list[bytes] = []
        admitted: list[bytes] = []
        for cid in dict.fromkeys(cids):
            data = self._kept(cid)
            if data is not None:
                out[cid] = data
            elif self._admits(cid):
                admitted.append(cid)
            else:
                batch.append(cid)
        if len(admitted) == 1:
            out[admitted[0]] = self._miss(admitted[0],
                                          path_of(admitted[0]) if path_of else "")
        elif admitted:
            blobs = blobs_of(self.inner, admitted, path_of)
            self.puts.put_many(list(blobs.items()))  # one wake of the writer for all
            for cid, blob in blobs.items():
                raw = _raw_of(blob, cid)
                self._count(len(raw))
                out[cid] = raw
        if batch:
            got = self.inner.get_many(batch, path_of=path_of)
            self._count(sum(len(v) for v in got.values()))
            out.update(got)
        return out

    def missing(self, cids: Iterable[bytes]) -> list[bytes]:
        """Those of `cids` in neither the writer's queue nor on disk now."""
        ids = list(cids)
        queued = self.puts.queued(ids)
        return self.disk.missing([c for c in ids if c not in queued] if queued else ids)

    def read_into(self, items: Sequence[tuple[bytes, memoryview]]) -> list[bool]:
        """Whole chunks copied from the writer's queue or read from disk straight into
        the given views (see `DiskCache.read_into`); False where a chunk must be read
        another way."""
        ok = [False] * len(items)
        on_disk: list[int] = []
        queued = self.puts.queued([cid for cid, _ in items])
        for i, (cid, view) in enumerate(items):
            blob = self.puts.blob(cid) if cid in queued else None
            if blob is None:
                on_disk.append(i)
                continue
            raw = _payload(blob, cid)
            data = raw if raw is not None else memoryview(decode_blob(blob, expect_id=cid))
            if len(data) == len(view):
                view[:] = data
                ok[i] = True
        if on_disk:
            got = self.disk.read_into([items[i] for i in on_disk])
            for i, hit in zip(on_disk, got, strict=True):
                ok[i] = hit
        return ok

    def get_blob(self, cid: bytes, *, path: str = "") -> bytes:
        """The stored blob of chunk `cid`: queued or cached if it verifies, else the inner's."""
        blob = self.puts.blob(cid)
        if blob is None:
            blob = self.disk.get_blob(cid)
        return blob if blob is not None else self.inner.get_blob(cid, path=path)

    def worth_caching(self, cid: bytes) -> bool:
        return self.inner.worth_caching(cid)


def _payload(blob: bytes, cid: bytes) -> memoryview | None:
    """The payload of a raw blob of `cid` a source handed out (verified by the source's
    contract, so not hashed again), as a view; None for a compressed blob."""
    head = parse_blob_header(blob)
    if head.codec == CODEC_RAW and head.chunk_id == cid and len(blob) == head.blob_len:
        return memoryview(blob)[BLOB_HEADER_LEN:]
    return None


def _raw_of(blob: bytes, cid: bytes) -> bytes:
    """The raw chunk of a blob a source handed out (verified, see `_payload`): the
    payload of a raw blob, else the decoded blob."""
    raw = _payload(blob, cid)
    return bytes(raw) if raw is not None else decode_blob(blob, expect_id=cid)


__all__ = ["DiskTier"]
