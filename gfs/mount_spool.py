"""Close-to-open writes of the global mount: a local spool file per file open for writing.

A file opened for writing in the global mount (gfs.mount_global) is written to an
anonymous local file; flush (every close), fsync and release commit the whole
spool to the namespace as one new version (`Namespace.open(path, "wb")`), so other
mounts see either the previous version or all of this one. A commit's error is
raised to the call that asked for it, so close() and fsync() of the writer see it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import BinaryIO

from gfs.namespace_api import Namespace

COPY_BLOCK = 1 << 20


class Spool:
    """The uncommitted content of one file of the mount (thread-safe)."""

    def __init__(self, path: str, *, directory: str | None = None, created: bool = False,
                 perm: int | None = None) -> None:
        #: The namespace path (follows renames made through the mount).
        self.path = path
        #: Created by this mount and not committed yet: no version exists in the namespace.
        self.created = created
        self.perm = perm
        self.dirty = created
        self.mtime_ns = time.time_ns()
        #: Handles of the mount that use this spool (readers and writers).
        self.handles = 0
        # unbuffered: every access but load and commit is a pread/pwrite on the descriptor
        self._file = tempfile.TemporaryFile(buffering=0, dir=directory,  # noqa: SIM115
                                            prefix="hutong-spool-")
        self._lock = threading.Lock()
        #: Kept apart from the file so that a stat never waits for a commit in progress.
        self._size = 0

    def load(self, src: BinaryIO) -> None:
        """Fill the spool with the committed content (opening an existing file for writing)."""
        with self._lock:
            self._file.seek(0)
            self._file.truncate()
            while block := src.read(COPY_BLOCK):
                view = memoryview(block)
                while view:
                    view = view[self._file.write(view) or 0:]
            self._size = self._file.tell()

    @property
    def size(self) -> int:
        return self._size

    def read(self, off: int, size: int) -> bytes:
        with self._lock:
            return os.pread(self._file.fileno(), size, off)

    def write(self, off: int, data: bytes) -> int:
        with self._lock:
            n = os.pwrite(self._file.fileno(), data, off)
            self._size = max(self._size, off + n)
            self.dirty = True
            self.mtime_ns = time.time_ns()
            return n

    def truncate(self, size: int) -> None:
        with self._lock:
            os.ftruncate(self._file.fileno(), size)
            self._size = size
            self.dirty = True
            self.mtime_ns = time.time_ns()

    def commit(self, ns: Namespace) -> bool:
        """Write the spool to the namespace as one new version if it changed since the
        last commit; returns whether it did. Errors propagate (nothing was committed)."""
        with self._lock:
            if not self.dirty:
                return False
            self._file.seek(0)
            with ns.open(self.path, "wb", perm=self.perm if self.created else None) as out:
                shutil.copyfileobj(self._file, out, COPY_BLOCK)
            self.dirty = False
            self.created = False
            return True

    def close(self) -> None:
        self._file.close()


__all__ = ["Spool"]
