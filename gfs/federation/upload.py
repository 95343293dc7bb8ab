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

import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from gfs import chunking
from gfs.codec import encode_blobs
from gfs.federation.http import HttpClient
from gfs.meta import ChunkRef
from gfs.store import prepare

#: Files up to this size go in one request (`POST /v1/ns/write`), unless a mode is set.
SMALL_FILE = 1 << 20
#: Bytes of the spool cut into chunks at a time.
BLOCK = 16 << 20
#: Bytes of encoded chunks per `POST /v1/chunks/put`.
PUT_BATCH_BYTES = 16 << 20
#: Chunk ids per `POST /v1/chunks/has` (the site's limit).
HAS_BATCH = 4096


class SpoolWriter(io.RawIOBase):
    """A write-only file spooled to local disk; `close()` hands the spool to `commit`
    (rewound, with its size); leaving a `with` block by an exception commits nothing."""

    def __init__(self, path: str, commit: Callable[[BinaryIO, int], None],
                 spool_dir: Path | None = None) -> None:
        super().__init__()
        self.name = path
        self._commit = commit
        self._spool: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115 (closed by close)
            prefix="hutong-spool-", dir=None if spool_dir is None else str(spool_dir))
        self._size = 0
        self._failed = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError(f"write to closed file {self.name}")
        n = self._spool.write(b)
        self._size += n
        return n

    def abort(self) -> None:
        """Close without committing: the file is left as it was."""
        self._failed = True
        self.close()

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

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self._failed = True
        self.close()


def upload(site: HttpClient, norm: str, f: BinaryIO, size: int, *, owner: bool,
           mode: int | None, params: chunking.ChunkParams, level: int) -> dict[str, Any]:
    """Create or replace file `norm` at its primary `site` with the `size` bytes of `f`;
    `owner`: the caller may put chunks and commit manifests (the entity itself).
    Returns the site's answer (the new stat)."""
    if not owner or (size <= SMALL_FILE and mode is None):
        out = dict(site.call("POST", "/v1/ns/write", body=f.read(), query={"path": norm},
                             content_type="application/octet-stream"))
        if mode is not None:
            out = dict(site.call("POST", "/v1/ns/setattr", {"path": norm, "mode": mode}))
        return out
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
    body: dict[str, Any] = {"path": norm, "chunks": [[r.id.hex(), r.length] for r in refs]}
    if mode is not None:
        body["mode"] = mode
    return dict(site.call("POST", "/v1/ns/commit", body))


def put_missing(site: HttpClient, refs: list[ChunkRef], pieces: list[memoryview],
                level: int) -> None:
    """Store at `site` the chunks of `refs` (raw bytes `pieces`) it does not hold yet."""
    from gfs.federation.site import pack_frames

    uniq = list(dict.fromkeys(r.id for r in refs))
    have: list[bool] = []
    for i in range(0, len(uniq), HAS_BATCH):
        have += site.call("POST", "/v1/chunks/has",
                          {"ids": [c.hex() for c in uniq[i:i + HAS_BATCH]]})["have"]
    need = {c for c, h in zip(uniq, have, strict=True) if not h}
    todo = {r.id: p for r, p in zip(refs, pieces, strict=True) if r.id in need}
    order = list(todo)
    batch: list[bytes | None] = []
    size = 0
    for head, payload in encode_blobs([todo[c] for c in order], order, level):
        blob = head + bytes(payload)
        batch.append(blob)
        size += len(blob)
        if size >= PUT_BATCH_BYTES or len(batch) >= HAS_BATCH:
            site.call("POST", "/v1/chunks/put", body=pack_frames(batch),
                      content_type="application/octet-stream")
            batch, size = [], 0
    if batch:
        site.call("POST", "/v1/chunks/put", body=pack_frames(batch),
                  content_type="application/octet-stream")


__all__ = ["SpoolWriter", "put_missing", "upload"]
