"""`QueuedPuts`: admissions to a `gfs.disk_cache.DiskCache` written by one background
thread, so the thread that fetched a chunk goes back to the network instead of
waiting for the cache's append lock and its `pwrite` (on a cold read over a WAN the
fetch threads waited more on those than on the link).

A queued chunk is found by `blob` until it is written (a reader asking the disk tier
for it meanwhile gets it from the queue, not from the network again); a chunk queued
twice is kept once; a full queue (by bytes) makes the caller write itself, so memory
stays bounded; a crash loses only what was queued, which is cache contents, never
data. `close` writes what is queued.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence

from gfs.disk_cache import DiskCache

log = logging.getLogger(__name__)

#: Bytes of blobs waiting to be written at most (beyond, the caller writes itself).
QUEUE_BYTES = 32 << 20


class QueuedPuts:
    """`put` of `disk`, done by a writer thread (see the module docstring)."""

    def __init__(self, disk: DiskCache, limit: int = QUEUE_BYTES) -> None:
        self.disk = disk
        self.limit = limit
        self._queue: deque[bytes] = deque()
        self._blobs: dict[bytes, bytes] = {}
        """The queued blobs by chunk id (each id once in `_queue`)."""
        self._bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.written_inline = 0
        """Blobs the caller wrote itself because the queue was full or closed."""

    def put(self, cid: bytes, blob: bytes) -> None:
        """Admit `blob` (verified by the caller) to the disk tier, soon."""
        self.put_many([(cid, blob)])

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Admit each (chunk id, blob) of `items` (verified by the caller), soon: queued
        under one lock with one wake of the writer (a fetched batch's chunks); those
        the full queue has no room for are written by the caller, in order."""
        if not self.disk.owner or not items:
            return
        inline: list[tuple[bytes, bytes]] = []
        with self._cond:
            added = False
            for cid, blob in items:
                if cid in self._blobs:
                    continue
                if self._closing or self._bytes + len(blob) > self.limit:
                    inline.append((cid, blob))
                    continue
                self._queue.append(cid)
                self._blobs[cid] = blob
                self._bytes += len(blob)
                added = True
            self.written_inline += len(inline)
            if added:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="hutong-disk-writer")
                    self._thread.start()
                self._cond.notify()
        for cid, blob in inline:
            self.disk.put(cid, blob)

    def blob(self, cid: bytes) -> bytes | None:
        """The blob of chunk `cid` if it is queued and not yet written, else None."""
        with self._cond:
            return self._blobs.get(cid)

    def queued(self, cids: list[bytes]) -> set[bytes]:
        """Those of `cids` queued and not yet written (one lock for all)."""
        with self._cond:
            blobs = self._blobs
            return {cid for cid in cids if cid in blobs}

    def pending(self) -> int:
        """Blobs queued and not yet written."""
        with self._cond:
            return len(self._queue)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued blob is written (at most `timeout` seconds); whether
        the queue is empty."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                cid = self._queue[0]
                blob = self._blobs[cid]
            try:
                self.disk.put(cid, blob)
            except Exception:  # a cache write failing must not stop the others
                log.exception("disk cache %s: cannot store chunk %s", self.disk.root,
                              cid.hex())
            with self._cond:  # dequeued once written: until then readers find it here
                self._queue.popleft()
                del self._blobs[cid]
                self._bytes -= len(blob)
                if not self._queue:
                    self._cond.notify_all()

    def close(self) -> None:
        """Write what is queued, then stop the writer (later puts are written inline)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()


__all__ = ["QUEUE_BYTES", "QueuedPuts"]
