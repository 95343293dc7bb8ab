"""What a get restores: the namespace tree read in ONE snapshot, spilled to disk.

A get must be a point-in-time copy (a file renamed from a directory not yet walked
into one already walked is neither lost nor restored twice) and must not pin a read
snapshot while it writes (LMDB could then reuse no page the get's own heat records
free: the metadata file grew 17 -> 112 MB for a get of 10^5 files). So the walk
reads every entry (path, inode, manifest) in one snapshot into an unlinked temporary
file (not memory: blocks of PLAN_BATCH entries, appended and read back in order),
checking each local path for a conflict on the way; the snapshot is released before
anything is written, and the restore reads the entries back in walk order. Chunks
are read after the release: each is verified by its id, and a file whose chunks were
collected meanwhile fails whole (see `Client.get`), never partly written.
"""

from __future__ import annotations

import itertools
import marshal
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from gfs.errors import IsADirError, NotADirError
from gfs.meta import Inode, Kind, Manifest
from gfs.meta.engine import ReadTxn
from gfs.meta.records import ChunkRef, ManifestEntries, new_inode
from gfs.spill import spill_dir

#: A walk lists a directory this many entries at a time (engine-neutral: no cursor
#: per level left open on the server).
LIST_PAGE = 1024
#: Entries a plan buffers before writing them as one block (and reads back at a time)
PLAN_BATCH = 1000
#: ... or fewer, once their manifests name this many chunks: a chunk costs ~140 bytes
#: in the buffer (and again read back), so a block of 1,000 files of 1 GiB would hold
#: 2.3 GB; this bounds a block to ~2.3 MB whatever the files' sizes.
PLAN_CHUNKS = 16_384


class _Level:
    """One directory of a namespace walk: its path, inode and the page of entries
    listed but not yet visited."""

    __slots__ = ("done", "last", "node", "page", "path")

    def __init__(self, path: str, node: Inode) -> None:
        self.path, self.node = path, node
        self.page: deque[tuple[str, int]] = deque()
        self.last = ""
        self.done = False

    def next(self, txn: ReadTxn) -> tuple[str, int] | None:
        """The next entry, listing the next page when this one is used up."""
        if not self.page and not self.done:
            self.page.extend(itertools.islice(txn.list_dir_after(self.node.ino, self.last),
                                              LIST_PAGE))
            self.done = len(self.page) < LIST_PAGE
            if self.page:
                self.last = self.page[-1][0]
        return self.page.popleft() if self.page else None


def walk_ns(txn: ReadTxn, top: Inode, dest: str) -> Iterator[tuple[bool, str, Inode]]:
    """(leaving, local path, inode) for a namespace tree restored at `dest`: each entry
    as it is entered (parents first, by name), each directory again (leaving=True)
    after everything below it, all read in `txn`. Holds a page of each directory's
    entries per level, not the tree."""
    yield False, dest, top
    if top.kind != Kind.DIR:
        return
    stack = [_Level(dest, top)]
    while stack:
        level = stack[-1]
        nxt = level.next(txn)
        if nxt is None:
            stack.pop()
            yield True, level.path, level.node
            continue
        kid = txn.scan_inode(nxt[1])
        if kid is None:
            continue  # a dangling entry: nothing to restore
        kp = os.path.join(level.path, nxt[0])
        yield False, kp, kid
        if kid.kind == Kind.DIR:
            stack.append(_Level(kp, kid))


def check_local(path: str, node: Inode, *, below: bool = True) -> None:
    """Refuse to restore `node` at local `path` when what is there cannot be replaced
    (a directory by a non-directory, or a non-directory by a directory), or when a
    directory `below` the destination is a symbolic link there: the get would write
    through it, outside the destination (the destination itself may be a link)."""
    if node.kind == Kind.DIR:
        if below and os.path.islink(path):
            raise NotADirError(path, "local path is a symbolic link; a get does not "
                                     "write through links below its destination")
        if os.path.lexists(path) and not os.path.isdir(path):
            raise NotADirError(path, "local path exists and is not a directory")
    elif os.path.isdir(path) and not os.path.islink(path):
        raise IsADirError(path, "local path is a directory")


_KINDS = {k.value: k for k in Kind}
_Fields = tuple[Any, ...]


def _fields(node: Inode, m: ManifestEntries | None) -> _Fields:
    """`node` (less its number) and its manifest (`ReadTxn.scan_manifest`'s plain
    values) as plain values, spilled with `marshal` (the plan is this process's own
    temporary file): decoding the stored record forms again (varints, a frozen
    dataclass per chunk) cost a get ~13 us an entry, these ~6."""
    return (node.parent, int(node.kind), node.mode, node.uid, node.gid, node.size,
            node.atime_ns, node.mtime_ns, node.ctime_ns, node.version, node.target,
            node.nlink, node.rdev, None if m is None else m[0], None if m is None else m[1])


def _entry(ino: int, fields: _Fields) -> tuple[Inode, Manifest | None]:
    """The inode `ino` and its manifest from its `_fields`."""
    (parent, kind, mode, uid, gid, size, atime, mtime, ctime, version, target, nlink, rdev,
     mversion, chunks) = fields
    node = new_inode(ino, parent, _KINDS[kind], mode, uid, gid, size, atime, mtime, ctime,
                     version, target, nlink, rdev)
    if mversion is None:
        return node, None
    return node, Manifest(mversion, tuple(itertools.starmap(ChunkRef, chunks)))


class GetPlan:
    """The entries of one get, in walk order, on disk:

        with GetPlan() as plan:
            with engine.read() as txn:
                plan.read(txn, top, dest, check=True)   # one snapshot, then released
            for leaving, path, node, manifest in plan.entries():
                ...

    The entries are written in blocks of PLAN_BATCH entries or PLAN_CHUNKS chunks (one
    `marshal` record each, its length first) to an unlinked temporary file (in
    `spill_dir`), which nothing outlives: a SQLite
    table's inserts and reads were a quarter of the walk's time, and a plan is only
    appended and read back in order.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(dir=spill_dir())  # noqa: SIM115 (closed by close())
        self._buffer: list[tuple[bool, str, int, _Fields]] = []
        self._dest = ""
        #: entries spilled (a directory counts twice: entering and leaving)
        self.rows = 0

    def _flush(self) -> None:
        if self._buffer:
            block = marshal.dumps(self._buffer)
            self._file.write(len(block).to_bytes(8, "little"))
            self._file.write(block)
            self._buffer = []

    def read(self, txn: ReadTxn, top: Inode, dest: str, *, check: bool) -> None:
        """Spill the tree at `top` (to be restored at `dest`) as seen by `txn`; with
        `check`, refuse (before anything is written) a local path in the way."""
        self._dest = dest
        cut = len(os.path.join(dest, ""))  # "out" and "out/" alike
        buffer, chunks = self._buffer, 0
        for leaving, p, node in walk_ns(txn, top, dest):
            if check and not leaving:
                check_local(p, node, below=p != dest)
            m = txn.scan_manifest(node.ino) if node.kind == Kind.FILE else None
            buffer.append((leaving, p[cut:], node.ino, _fields(node, m)))
            self.rows += 1
            if m is not None:
                chunks += len(m[1])
            if len(buffer) >= PLAN_BATCH or chunks >= PLAN_CHUNKS:
                self._flush()
                buffer, chunks = self._buffer, 0
        self._flush()

    def entries(self) -> Iterator[tuple[bool, str, Inode, Manifest | None]]:
        """(leaving, local path, inode, manifest of a file) in walk order, streamed."""
        dest = self._dest
        prefix = os.path.join(dest, "")  # os.path.join(dest, rel), without its checks
        f = self._file
        f.seek(0)
        while head := f.read(8):
            block = marshal.loads(f.read(int.from_bytes(head, "little")))
            for leaving, rel, ino, fields in block:
                node, m = _entry(ino, fields)
                yield leaving, prefix + rel if rel else dest, node, m

    def close(self) -> None:
        """Delete the spill."""
        self._file.close()

    def __enter__(self) -> GetPlan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
