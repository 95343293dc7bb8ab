"""The streaming writer over the namespace: a file's content becomes visible,
whole, when it is closed (close-to-open). Readers are `gfs.read.ManifestReader`.
"""

from __future__ import annotations

import io
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


class CloseToOpenWriter(io.RawIOBase):
    """A write-only file whose new content becomes visible all at once when `close()`
    commits it; `abort()`, or leaving a `with` block by an exception, commits nothing.
    Subclasses count written bytes in `_size` and commit in `close()` unless `_failed`."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.name = path
        self._size = 0
        self._failed = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def abort(self) -> None:
        """Close without committing: the file is left as it was."""
        self._failed = True
        self.close()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self._failed = True
        self.close()


class NsWriter(CloseToOpenWriter):
    """Streaming writer; the file appears (or is replaced) atomically on close."""

    def __init__(self, store: ChunkStore, path: str, mode: int | None = None) -> None:
        super().__init__(path)
        self._mode = mode
        self._stack = ExitStack()
        self._session: WriteSession = self._stack.enter_context(store.writer())
        self._spool = bytearray()
        self._refs: list[ChunkRef] = []
        self._xattrs: XattrSource | None = None

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
