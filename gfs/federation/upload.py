"""Close-to-open writes to an entity's primary site: spool locally, commit on close.

`SpoolWriter` is the file object `FederatedNamespace.open(path, "wb")` returns:
bytes go to a local temporary file and nothing reaches the site before
`close()`. Then `upload` sends the spool: small files (and every file of a
grantee, which may not name chunks) in one `POST /v1/ns/write`; an owner's
larger files chunk by chunk — cut block by block from the spool (never whole in
memory), only the chunks the primary lacks are put, then one manifest commit.
Until the commit nothing of the new version is visible; after it, all of it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, BinaryIO

from gfs import chunking
from gfs.codec import encode_blobs
from gfs.federation.site_client import SiteClient
from gfs.federation.wire import MAX_IDS
from gfs.files import CloseToOpenWriter
from gfs.meta import ChunkRef
from gfs.namespace_api import Stat
from gfs.store import prepare

#: Files up to this size go in one request (`POST /v1/ns/write`), unless a mode is set.
SMALL_FILE = 1 << 20
#: Bytes of the spool cut into chunks at a time.
BLOCK = 16 << 20
#: Bytes of encoded chunks per `POST /v1/chunks/put`.
PUT_BATCH_BYTES = 16 << 20


class SpoolWriter(CloseToOpenWriter):
    """A write-only file spooled to local disk; `close()` hands the spool to `commit`
    (rewound, with its size); leaving a `with` block by an exception commits nothing."""

    def __init__(self, path: str, commit: Callable[[BinaryIO, int], None],
                 spool_dir: Path | None = None) -> None:
        super().__init__(path)
        self._commit = commit
        self._spool: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115 (closed by close)
            prefix="hutong-spool-", dir=None if spool_dir is None else str(spool_dir))

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError(f"write to closed file {self.name}")
        n = self._spool.write(b)
        self._size += n
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._failed:
                self._spool.seek(0)
                self._commit(self._spool, self._size)  # type: ignore[arg-type]
        finally:
            self._spool.close()
            super().close()


def upload(site: SiteClient, norm: str, f: BinaryIO, size: int, *, owner: bool,
           mode: int | None, params: chunking.ChunkParams, level: int,
           xattrs: Mapping[str, bytes] | None = None,
           keyed: Mapping[str, bytes] | None = None) -> Stat:
    """Create or replace file `norm` at its primary `site` with the `size` bytes of `f`;
    `owner`: the caller may put chunks and commit manifests (the entity itself); with
    `xattrs` and `keyed` (stored as "VERSION VALUE"), the file's attributes replaced in
    the same commit. Returns the new stat."""
    if not owner or (size <= SMALL_FILE and mode is None):
        st = site.write(norm, f.read(), xattrs=xattrs, keyed=keyed)
        return st if mode is None else site.setattr(norm, mode=mode)
    refs: list[ChunkRef] = []
    buf = bytearray()
    while True:
        block = f.read(BLOCK)
        buf += block
        prep = prepare(bytes(buf), params, eof=not block)
        put_missing(site, prep.refs, prep.pieces, level)
        refs += prep.refs
        del buf[:prep.consumed]
        if not block:
            break
    return site.commit(norm, refs, mode, xattrs=xattrs, keyed=keyed)


def put_missing(site: SiteClient, refs: list[ChunkRef], pieces: list[memoryview],
                level: int) -> None:
    """Store at `site` the chunks of `refs` (raw bytes `pieces`) it does not hold yet."""
    uniq = list(dict.fromkeys(r.id for r in refs))
    need = {c for c, h in zip(uniq, site.has(uniq), strict=True) if not h}
    todo = {r.id: p for r, p in zip(refs, pieces, strict=True) if r.id in need}
    order = list(todo)
    batch: list[bytes] = []
    size = 0
    for head, payload in encode_blobs([todo[c] for c in order], order, level):
        blob = head + bytes(payload)
        batch.append(blob)
        size += len(blob)
        if size >= PUT_BATCH_BYTES or len(batch) >= MAX_IDS:
            site.put(batch)
            batch, size = [], 0
    if batch:
        site.put(batch)


__all__ = ["SpoolWriter", "put_missing", "upload"]
