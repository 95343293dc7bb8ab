"""`ManifestReader`: bytes [a, b) of one pinned file version over any chunk source,
as a seekable binary file object, with read-ahead.

The manifest's chunks are grouped into blocks of about READ_AHEAD_BYTES. A read
fetches the blocks it touches with one `get_many` each; when the reads move
forward, the next block is fetched ahead — by the source itself when it is a
`MemoryTier` (`prefetch`, nothing held by the reader), else on a shared pool of
read-ahead threads into the reader's window (the current and the next block).
"""

from __future__ import annotations

import bisect
import io
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from gfs.meta import Manifest
from gfs.read.disk import DiskTier
from gfs.read.memory import MemoryTier
from gfs.read.source import ChunkSource

#: Bytes of chunks fetched together, and ahead of a forward-moving reader. Small
#: enough that what a memory tier prefetches stays in S3-FIFO's small queue (10%
#: of the tier) until it is read: with 4 MiB, `gfs://` sequential reads through a
#: 32 MiB tier fell from ~900 to ~550 MiB/s (chunks evicted before their read).
READ_AHEAD_BYTES = 1 << 20
#: Reads of at least this many bytes over a disk tier go straight from disk into the
#: caller's buffer (`ManifestReader._direct`): a buffered reader's 1 MiB refills, gfs://
#: blocks.
DIRECT_MIN = 256 << 10
#: Blocks a reader without a memory tier keeps (the one being read, the next).
WINDOW_BLOCKS = 3

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _ahead_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(4, thread_name_prefix="hutong-readahead")
        return _pool


class ManifestReader(io.RawIOBase):
    """Seekable, read-only view of `manifest` (a version of file `path`) over `source`."""

    def __init__(self, source: ChunkSource, path: str, manifest: Manifest, *,
                 read_ahead: int = READ_AHEAD_BYTES) -> None:
        super().__init__()
        self.source = source
        self.name = self.path = path
        self.manifest = manifest
        self.chunks = manifest.chunks
        self._ends = list(itertools.accumulate(c.length for c in self.chunks))
        self._starts = [0, *self._ends[:-1]] if self._ends else []
        self._ids = [c.id for c in self.chunks]
        self.size = self._ends[-1] if self._ends else 0
        self._pos = 0
        self._block_starts: list[int] = []  # first chunk index of each block
        acc = read_ahead
        for i, c in enumerate(self.chunks):
            if acc >= read_ahead:
                self._block_starts.append(i)
                acc = 0
            acc += c.length
        self._memory = source if isinstance(source, MemoryTier) else None
        if self._memory is not None and self.chunks:
            # at most the rest of a block and the next one are fetched ahead of a read
            self._memory.keep_ahead(2 * (read_ahead + max(c.length for c in self.chunks)))
        self._disk = (self._memory.inner if self._memory is not None
                      and isinstance(self._memory.inner, DiskTier) else None)
        self._window: OrderedDict[int, Future[dict[bytes, bytes]]] = OrderedDict()
        self._lock = threading.Lock()
        self._last_block = -1
        self._ahead_block = -1  # the block the read-ahead last fetched

    # -- io.RawIOBase ----------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence {whence} in seek of {self.name}")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos} in {self.name}")
        self._pos = pos
        return pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        if self._disk is not None and len(out) >= DIRECT_MIN:
            n = self._direct(self._pos, out, self._disk)
        else:
            n = 0
            for piece in self._pieces(self._pos, len(out)):  # each chunk copied once
                out[n:n + len(piece)] = piece
                n += len(piece)
        self._pos += n
        return n

    def readall(self) -> bytes:
        data = self.pread(self._pos, max(self.size - self._pos, 0))
        self._pos += len(data)
        return data

    def close(self) -> None:
        with self._lock:
            for fut in self._window.values():
                fut.cancel()
            self._window.clear()
        super().close()

    # -- ranged reads --------------------------------------------------------------------
    def read_range(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file, clipped to its size (the position is unchanged)."""
        return self.pread(start, max(end - start, 0))

    def blocks(self, size: int = READ_AHEAD_BYTES) -> Iterator[bytes]:
        """The rest of the file from the position, in pieces of `size` bytes."""
        while data := self.pread(self._pos, size):
            self._pos += len(data)
            yield data

    def pread(self, off: int, size: int) -> bytes:
        """`size` bytes at offset `off` (fewer at the end of the file)."""
        if self._disk is not None and size >= DIRECT_MIN and 0 <= off < self.size:
            buf = bytearray(min(size, self.size - off))
            self._direct(off, memoryview(buf), self._disk)
            return bytes(buf)
        parts = self._pieces(off, size)
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def cached(self, off: int, size: int) -> bytes | None:
        """`size` bytes at offset `off` if every chunk they span is in the memory tier
        now, else None; never reads the source or the disk nor waits for a read, so an
        event loop may call it (the read-ahead starts as for any read)."""
        if self._memory is None or off < 0 or size < 0:
            return None
        end = min(off + size, self.size)
        if off >= end:
            return b""
        first = bisect.bisect_right(self._ends, off)
        last = bisect.bisect_left(self._ends, end)
        data = self._memory.peek_all(self._ids[first:last + 1])
        if data is None:
            return None
        ahead = self._ahead_ids(first, last)
        if ahead:
            self._memory.prefetch(ahead if self._disk is None else self._disk.missing(ahead),
                                  self.path)
        starts = self._starts
        if first == last:
            lo = off - starts[first]
            return data[0][lo:lo + end - off]
        parts = [memoryview(c) for c in data]
        parts[0] = parts[0][off - starts[first]:]
        parts[-1] = parts[-1][:end - starts[last]]
        return b"".join(parts)

    def _pieces(self, off: int, size: int) -> list[bytes | memoryview]:
        """The pieces of chunks that make up `size` bytes at `off`, in order (views,
        not copies, of partly read chunks)."""
        if off < 0 or size < 0:
            raise ValueError(f"read of {self.name}: offset {off} and size {size} must be >= 0")
        end = min(off + size, self.size)
        if off >= end:
            return []
        first = bisect.bisect_right(self._ends, off)
        last = bisect.bisect_left(self._ends, end)
        data = self._get(first, last)
        parts: list[bytes | memoryview] = []
        for i in range(first, last + 1):
            chunk = data[self.chunks[i].id]
            start = self._ends[i] - self.chunks[i].length
            lo, hi = max(off, start) - start, min(end, self._ends[i]) - start
            parts.append(chunk if lo == 0 and hi == len(chunk) else memoryview(chunk)[lo:hi])
        return parts

    def _block_of(self, index: int) -> int:
        return bisect.bisect_right(self._block_starts, index) - 1

    def _block_ids(self, k: int) -> list[bytes]:
        lo = self._block_starts[k]
        hi = self._block_starts[k + 1] if k + 1 < len(self._block_starts) else len(self.chunks)
        return [c.id for c in self.chunks[lo:hi]]

    def _direct(self, off: int, out: memoryview, disk: DiskTier) -> int:
        """Read bytes at `off` into `out` (a large read over a disk tier): chunks in
        memory are copied from there; whole chunks on disk are read straight into
        `out` (runs of them with one preadv); the rest through the memory tier. The
        read-ahead skips chunks already on disk."""
        assert self._memory is not None
        end = min(off + len(out), self.size)
        if off >= end:
            return 0
        first = bisect.bisect_right(self._ends, off)
        last = bisect.bisect_left(self._ends, end)
        ahead = self._ahead_ids(first, last)
        if ahead:
            self._memory.prefetch(disk.missing(ahead), self.path)
        ids = self._ids[first:last + 1]
        ends = self._ends
        whole: list[tuple[bytes, memoryview]] = []
        at: list[int] = []  # the chunk index of each of `whole`
        rest: list[tuple[int, int, int, memoryview]] = []  # (chunk, lo, hi, destination)
        for i, data in enumerate(self._memory.peek_many(ids), first):
            start = self._starts[i]
            lo = off - start if off > start else 0
            hi = (end if end < ends[i] else ends[i]) - start
            dst = out[start + lo - off:start + hi - off]
            if data is not None:
                dst[:] = memoryview(data)[lo:hi]
            elif lo == 0 and hi == ends[i] - start:
                whole.append((ids[i - first], dst))
                at.append(i)
            else:
                rest.append((i, lo, hi, dst))
        if whole:
            for i, (_, dst), ok in zip(at, whole, disk.read_into(whole), strict=True):
                if not ok:
                    rest.append((i, 0, len(dst), dst))
        if rest:
            got = self._memory.get_many([self._ids[i] for i, _, _, _ in rest],
                                        path_of=self._path_of)
            for i, lo, hi, dst in rest:
                dst[:] = memoryview(got[self._ids[i]])[lo:hi]
        return end - off

    def _ahead_ids(self, first: int, last: int) -> list[bytes]:
        """Notes a read of chunks first..last; the ids to fetch ahead of it (the rest
        of its block and the next one) when the reads move forward, once per next
        block (a read-ahead of 32 MiB is ~500 ids: asked again at every read, checking
        them cost a fifth of a warm read's time)."""
        kf, kl = self._block_of(first), self._block_of(last)
        forward = kf in (self._last_block, self._last_block + 1)
        self._last_block = kl
        if not forward:
            self._ahead_block = -1
        # the last block's rest too: a file within one read-ahead is all one block
        nxt = min(kl + 1, len(self._block_starts) - 1) if forward else None
        if nxt is None or nxt == self._ahead_block:
            return []
        self._ahead_block = nxt
        upto = (self._block_starts[nxt + 1] if nxt + 1 < len(self._block_starts)
                else len(self.chunks))
        return [c.id for c in self.chunks[last + 1:upto]]

    def _get(self, first: int, last: int) -> dict[bytes, bytes]:
        """The raw chunks first..last (inclusive), by id; starts the read-ahead."""
        ids = [c.id for c in self.chunks[first:last + 1]]
        if self._memory is not None:
            ahead = self._ahead_ids(first, last)
            if ahead:
                self._memory.prefetch(ahead, self.path)
            return self._memory.get_many(ids, path_of=self._path_of)
        kf, kl = self._block_of(first), self._block_of(last)
        forward = kf in (self._last_block, self._last_block + 1)
        self._last_block = kl
        nxt = kl + 1 if forward and kl + 1 < len(self._block_starts) else None
        out: dict[bytes, bytes] = {}
        for k in range(kf, kl + 1):
            out.update(self._block(k, ids if kf == kl else None))
        if nxt is not None:
            self._ahead(nxt)
        return out

    def _path_of(self, _cid: bytes) -> str:
        return self.path

    def _block(self, k: int, only: list[bytes] | None) -> dict[bytes, bytes]:
        """Block `k` from the window (waiting for its read-ahead), else read now; with
        `only`, a block not in the window is read for those ids alone."""
        with self._lock:
            fut = self._window.get(k)
        if fut is not None:
            try:
                got = fut.result()
                if only is None or all(cid in got for cid in only):
                    return got
            except Exception:
                pass
        ids = self._block_ids(k) if only is None else only
        got = self.source.get_many(ids, path_of=self._path_of)
        if only is None:
            done: Future[dict[bytes, bytes]] = Future()
            done.set_result(got)
            self._keep(k, done)
        return got

    def _ahead(self, k: int) -> None:
        with self._lock:
            if k in self._window:
                return
        try:
            fut = _ahead_pool().submit(self.source.get_many, self._block_ids(k),
                                       path_of=self._path_of)
        except RuntimeError:  # interpreter shutting down: no read-ahead
            return
        self._keep(k, fut)

    def _keep(self, k: int, fut: Future[dict[bytes, bytes]]) -> None:
        with self._lock:
            self._window[k] = fut
            self._window.move_to_end(k)
            while len(self._window) > WINDOW_BLOCKS:
                _, old = self._window.popitem(last=False)
                old.cancel()


__all__ = ["READ_AHEAD_BYTES", "ManifestReader"]
