"""File objects over the namespace: a seekable reader and a streaming writer.

A reader sees the version that was committed when it was opened; a writer's
content becomes visible, whole, when it is closed (close-to-open).
"""

from __future__ import annotations

import bisect
import io
import itertools
from contextlib import ExitStack
from typing import TYPE_CHECKING

from gfs import namespace
from gfs.meta import ChunkRef, Manifest, WriteTxn
from gfs.namespace import XattrSource

if TYPE_CHECKING:
    from gfs.store import ChunkStore, WriteSession

#: Bytes a writer gathers before it chunks and stores them.
WRITE_SPOOL = 8 << 20


class _Aborted(Exception):
    """Raised into a write session to abandon it without committing."""


class NsReader(io.RawIOBase):
    """Seekable, read-only view of one file version."""

    def __init__(self, store: ChunkStore, path: str, manifest: Manifest) -> None:
        super().__init__()
        self._store = store
        self.name = path
        self._chunks = manifest.chunks
        self._ends = list(itertools.accumulate(c.length for c in manifest.chunks))
        self.size = self._ends[-1] if self._ends else 0
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos} in {self.name}")
        self._pos = pos
        return pos

    def _chunk(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        data = self._store.read_chunk(self._chunks[index].id, self.name)
        self._cached = (index, data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self.size:
            index = bisect.bisect_right(self._ends, self._pos)
            start = self._ends[index] - self._chunks[index].length
            data = self._chunk(index)
            take = min(len(out) - done, self._ends[index] - self._pos)
            off = self._pos - start
            out[done:done + take] = data[off:off + take]
            done += take
            self._pos += take
        return done

    def readall(self) -> bytes:
        return self.read_range(self._pos, self.size)

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file (clipped to its size); moves the position to end."""
        end = min(end, self.size)
        if start >= end:
            self._pos = max(start, 0)
            return b""
        first = bisect.bisect_right(self._ends, start)
        last = bisect.bisect_left(self._ends, end)
        sub = Manifest(0, self._chunks[first:last + 1])
        base = self._ends[first] - self._chunks[first].length
        data = b"".join(self._store.iter_manifest(sub, self.name))
        self._pos = end
        return data[start - base:end - base]


class NsWriter(io.RawIOBase):
    """Streaming writer; the file appears (or is replaced) atomically on close."""

    def __init__(self, store: ChunkStore, path: str, mode: int | None = None) -> None:
        super().__init__()
        self.name = path
        self._mode = mode
        self._stack = ExitStack()
        self._session: WriteSession = self._stack.enter_context(store.writer())
        self._spool = bytearray()
        self._refs: list[ChunkRef] = []
        self._size = 0
        self._failed = False
        self._xattrs: XattrSource | None = None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError(f"write to closed file {self.name}")
        n = len(memoryview(b).cast("B"))
        self._spool += b
        self._size += n
        if len(self._spool) >= WRITE_SPOOL:
            self._store_spool(eof=False)
        return n

    def _store_spool(self, *, eof: bool) -> None:
        data = bytes(self._spool)  # immutable: chunk views outlive the spool
        refs, used = self._session.store_prefix(data, eof=eof)
        self._refs.extend(refs)
        del self._spool[:used]

    def set_xattrs(self, values: XattrSource) -> None:
        """Extended attributes committed with the file on close, replacing all it had
        (a function of the new inode when they depend on its version)."""
        self._xattrs = values

    def abort(self) -> None:
        """Close without committing: the file is left as it was."""
        self._failed = True
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._failed:
                self._store_spool(eof=True)
                refs, path, mode, xattrs = self._refs, self.name, self._mode, self._xattrs

                def action(txn: WriteTxn, r: list[ChunkRef]) -> Manifest | None:
                    return namespace.write_file(txn, path, r, mode=mode, xattrs=xattrs)

                self._session.add_file(refs, action)
                self._session.commit()
        except BaseException:
            self._failed = True
            raise
        finally:
            try:
                if self._failed:  # leave the session by an exception: nothing is committed
                    self._stack.__exit__(_Aborted, _Aborted(self.name), None)
                else:
                    self._stack.close()
            finally:
                super().close()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self._failed = True
        self.close()
