"""Write-back of the FUSE mount: uncommitted content, pending creates, group commit.

No FUSE here: `gfs.mount` calls it from its request handlers, and tests drive it
directly. The rules it keeps (close-to-open, pending creates, group commit, what
a shutdown commits) are written in docs/architecture.md, "The FUSE mount". Parts:

* `Spool`: the uncommitted content of one file (memory, then a temporary file);
* `DirtyFile`: a spool shared by an inode's writable handles;
* `PendingCreates`: files created here and not committed yet, and the inode
  numbers reserved for them;
* `GroupCommitter`: one thread committing queued items in batches;
* `WriteBack`: the above over one `Client`; a file is visible to other clients
  only after `commit`, and a crash before it leaves orphan packs (gc reclaims
  them), never a half-written file.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import BinaryIO

from gfs import namespace
from gfs.chunking import ChunkParams
from gfs.client import Client
from gfs.errors import (
    ExistsError,
    HutongError,
    InvalidPathError,
    IsADirError,
    NotADirError,
    NotFoundError,
    PermissionDeniedError,
)
from gfs.group_commit import GroupCommitter
from gfs.meta import ChunkRef, Inode, Kind, LmdbEngine, Manifest, MetaEngine, WriteTxn
from gfs.mount_access import Caller, may_open, sgid_left
from gfs.mount_names import NameHints
from gfs.mount_overlay import Written, copy_span
from gfs.pack_tail import TailPack, TailPackGoneError
from gfs.read import ManifestReader, MemoryTier
from gfs.store import Prepared, WriteSession, prepare

log = logging.getLogger("hutong.mount")

Action = Callable[[WriteTxn, list[ChunkRef]], Manifest | None]

#: Uncommitted content up to this size stays in memory; larger spills to a temp file.
SPOOL_MEMORY = 1 << 20
#: Seconds a commit waits for the closes of other files being written at the same
#: time, so that they share its pack write, fsyncs and metadata transaction.
GATHER_WINDOW = 0.01
#: A file open for writing counts as "being written" (worth waiting for) if it was
#: opened or written within this many seconds.
ACTIVE_WRITER = 0.05
#: Durable mode over an engine whose commits leave their flush to `sync()`: the
#: seconds within which a metadata-only change (mkdir, chmod, rename, ...) becomes
#: durable, if no close, fsync(2) or unmount made it durable sooner.
METADATA_SYNC = 1.0


def _pwrite_all(fd: int, data: bytes, off: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], off + done)
    return done


class Spool:
    """The uncommitted content of one file: a bytearray while small, else an
    unlinked temporary file (so small files cost no file creation)."""

    def __init__(self) -> None:
        self.mem: bytearray | None = bytearray()
        self.file: BinaryIO | None = None

    def _spill(self, need: int) -> None:
        if self.mem is not None and need > SPOOL_MEMORY:
            f = tempfile.TemporaryFile(prefix="hutong-fuse-", buffering=0)  # noqa: SIM115
            _pwrite_all(f.fileno(), bytes(self.mem), 0)
            self.file, self.mem = f, None

    def pwrite(self, data: bytes, off: int) -> int:
        """Write `data` at `off` (a gap before it reads as zeros; writing nothing
        changes nothing, as write(2) of 0 bytes)."""
        if not data:
            return 0
        self._spill(off + len(data))
        if self.mem is not None:
            if off > len(self.mem):
                self.mem.extend(bytes(off - len(self.mem)))
            self.mem[off:off + len(data)] = data
            return len(data)
        assert self.file is not None
        return _pwrite_all(self.file.fileno(), data, off)

    def pread(self, size: int, off: int) -> bytes:
        """Up to `size` bytes at `off`."""
        if self.mem is not None:
            return bytes(self.mem[off:off + size])
        assert self.file is not None
        return os.pread(self.file.fileno(), size, off)

    def truncate(self, size: int) -> None:
        """Cut or zero-extend to `size` bytes."""
        self._spill(size)
        if self.mem is not None:
            if size < len(self.mem):
                del self.mem[size:]
            else:
                self.mem.extend(bytes(size - len(self.mem)))
        else:
            assert self.file is not None
            self.file.truncate(size)

    def store(self, session: WriteSession) -> list[ChunkRef]:
        """Chunk and store the content in `session`."""
        if self.mem is not None:
            return session.store_buffer(bytes(self.mem)) if self.mem else []
        assert self.file is not None
        self.file.seek(0)
        return session.store_stream(self.file)

    def close(self) -> None:
        """Drop the content."""
        self.mem = None
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class DirtyFile:
    """The uncommitted content of one inode, shared by its writable handles."""

    ino: int
    #: Writable handles open on the inode.
    writers: int = 0
    #: The content (None until the first write or truncate).
    tmp: Spool | None = None
    size: int = 0
    #: Changed since the last commit.
    dirty: bool = False
    #: An mtime set while writing, applied at the commit.
    mtime_ns: int | None = None
    #: When a handle was opened or a write arrived (time.monotonic()).
    touched: float = field(default_factory=time.monotonic)
    #: A file created here without O_TRUNC: what was written (laid over the file of
    #: another client that takes the name before the commit).
    written: Written | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class CommitStats:
    """What the group committer did: batches (each one writer session: at most one
    pack write per pack filled and one metadata transaction), the files in them,
    the syncs (of packs written without fsync and of metadata commits left
    unflushed), and the commits not synced yet."""

    batches: int = 0
    files: int = 0
    syncs: int = 0
    unsynced: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counters as a JSON-ready dict."""
        return {"batches": self.batches, "files": self.files, "syncs": self.syncs,
                "unsynced": self.unsynced}


class PendingCreates:
    """Files created here and not committed yet (by inode and by name), and the
    block of inode numbers reserved in the store for them. Thread-safe."""

    #: Inode numbers reserved at a time.
    INO_BLOCK = 256

    def __init__(self, engine: MetaEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._nodes: dict[int, tuple[Inode, str]] = {}
        self._by_name: dict[tuple[int, str], int] = {}
        self._free_inos: list[int] = []

    def __contains__(self, ino: object) -> bool:
        return ino in self._nodes

    def __bool__(self) -> bool:
        """Whether any create waits for its commit (no copy of the list: a check per
        metadata change of the mount)."""
        return bool(self._nodes)

    def get(self, ino: int) -> Inode | None:
        """The inode of pending file `ino`, or None."""
        entry = self._nodes.get(ino)
        return entry[0] if entry is not None else None

    def find(self, parent: int, name: str) -> Inode | None:
        """The pending file `name` in directory `parent`, or None."""
        ino = self._by_name.get((parent, name))
        return self.get(ino) if ino is not None else None

    def name(self, ino: int) -> str:
        """The name of pending file `ino`."""
        return self._nodes[ino][1]

    def inos(self) -> list[int]:
        """The pending files' inode numbers."""
        with self._lock:
            return list(self._nodes)

    def add(self, parent: int, name: str, mode: int, uid: int, gid: int,
            exists: bool) -> Inode:
        """A new pending file; ExistsError if `exists` or one of that name is pending."""
        now = namespace.now_ns()
        with self._lock:
            if exists or (parent, name) in self._by_name:
                raise ExistsError(name)
            node = Inode(self._take_ino(), parent, Kind.FILE, mode & 0o7777, uid, gid, 0,
                         now, now, now, 0)
            self._nodes[node.ino] = (node, name)
            self._by_name[(parent, name)] = node.ino
        return node

    def update(self, ino: int, change: Callable[[Inode], Inode]) -> Inode | None:
        """Apply `change` to pending file `ino`; None if it is not pending."""
        with self._lock:
            entry = self._nodes.get(ino)
            if entry is None:
                return None
            node = change(entry[0])
            self._nodes[ino] = (node, entry[1])
            return node

    def remove(self, ino: int) -> None:
        """Forget `ino` (it was committed)."""
        with self._lock:
            entry = self._nodes.pop(ino, None)
            if entry is not None:
                self._by_name.pop((entry[0].parent, entry[1]), None)

    def can_add_now(self) -> bool:
        """Whether `add` needs no transaction (an inode number is reserved already)."""
        return bool(self._free_inos)

    def _take_ino(self) -> int:
        """An inode number from the reserved block (numbers of a block left unused are
        skipped forever, which is harmless). `_lock` held."""
        if not self._free_inos:
            block = self._engine.transact(
                lambda txn: [txn.alloc_ino() for _ in range(self.INO_BLOCK)])
            self._free_inos = block[::-1]
        return self._free_inos.pop()


class WriteBack:
    """The uncommitted state of a mount over `client`: dirty files, pending creates,
    and the group committer that makes them visible. Methods block (call them
    from worker threads); those named `*_nowait` never do."""

    def __init__(self, client: Client, cache: MemoryTier, names: NameHints,
                 gather_window: float = GATHER_WINDOW, sync_interval: float = 0.0) -> None:
        self.client = client
        self.cache = cache
        self.names = names
        self.dirty: dict[int, DirtyFile] = {}
        self.pending = PendingCreates(client.engine)
        #: The committed version this mount last opened or committed, per inode.
        self.seen_version: dict[int, int] = {}
        #: Files created here whose name another client took before the commit: the
        #: commit wrote into that file (pending inode -> the file's inode).
        self.redirects: dict[int, int] = {}
        #: Files created here whose name another client made a directory (or another
        #: kind) before the commit: nothing was committed; every later commit of the
        #: inode (the close's flush) raises this error, until its last handle closes.
        self.lost: dict[int, OSError] = {}
        #: Pending files created without O_TRUNC (see `_LayOver`).
        self.keep_theirs: set[int] = set()
        #: Of those, the ones opened with O_APPEND (see `_taken_action`).
        self.appends: set[int] = set()
        #: Who created each pending file (checked against a file that took its name).
        self.creators: dict[int, Caller] = {}
        self._lock = threading.Lock()
        self.stats = CommitStats()
        self._stats_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        #: > 0: packs are written without fsync and synced this often (and by `sync`).
        self.sync_interval = sync_interval
        engine = client.engine
        #: Metadata commits leave their flush to `sync` (an LMDB environment opened
        #: with `metasync=False`): in the durable mode a close syncs after its commit,
        #: and metadata-only changes are synced within METADATA_SYNC.
        self.lazy_meta = isinstance(engine, LmdbEngine) and not engine.durable_commits
        #: The pack successive commits append to (gfs.pack_tail): a lone writer's
        #: small files share one pack object instead of one each.
        self._tail = TailPack()
        self._committer: GroupCommitter[DirtyFile] = GroupCommitter(
            self._commit_batch, expected=self._writers_elsewhere, window=gather_window)
        self._stop_syncer = threading.Event()
        self._syncer: threading.Thread | None = None
        if sync_interval > 0 or self.lazy_meta:
            self._syncer = threading.Thread(target=self._sync_loop, name="hutong-sync",
                                            daemon=True)
            self._syncer.start()

    def close(self, commit: bool = True) -> None:
        """Stop the committer; with `commit`, commit the pending files first."""
        try:
            if commit:
                self.settle()
        except Exception:
            log.exception("could not commit the files created before the unmount")
        self._committer.close()
        self._stop_syncer.set()
        if self._syncer is not None:
            self._syncer.join()
        self.sync()

    # -- durability ------------------------------------------------------------
    def changed(self) -> None:
        """Note a metadata change made outside the committer (for the next `sync`)."""
        if self.sync_interval > 0 or self.lazy_meta:
            with self._stats_lock:
                self.stats.unsynced += 1

    def sync(self) -> None:
        """Make every committed change durable (with `sync_interval` or `lazy_meta`;
        nothing to do otherwise): fsync the packs written without it, then flush the
        metadata (an engine opened with `metasync=False` leaves its last commit to
        this). Syncs run one at a time, so a caller that finds nothing to sync knows
        that an earlier caller's flush has finished."""
        with self._sync_lock:
            with self._stats_lock:
                pending, self.stats.unsynced = self.stats.unsynced, 0
            if not pending:
                return
            try:
                self.client.store.sync_puts()
                if isinstance(self.client.engine, LmdbEngine):
                    self.client.engine.sync()
            except BaseException:
                with self._stats_lock:
                    self.stats.unsynced += pending
                raise
            with self._stats_lock:
                self.stats.syncs += 1

    def _sync_loop(self) -> None:
        every = self.sync_interval if self.sync_interval > 0 else METADATA_SYNC
        while not self._stop_syncer.wait(every):
            try:
                self.sync()
            except Exception:
                log.exception("could not sync the packs of committed files; retrying")

    # -- looking -------------------------------------------------------------
    def node(self, ino: int) -> Inode:
        """The inode `ino` (pending or committed); NotFoundError if none."""
        pending = self.pending.get(ino)
        if pending is not None:
            return pending
        ino = self.redirects.get(ino, ino)
        with self.client.engine.read_once() as txn:
            node = txn.get_inode(ino)
        if node is None:
            raise NotFoundError(f"<inode {ino}>")
        return node

    def apparent(self, node: Inode) -> tuple[int, int]:
        """(size, mtime) of `node` as this mount shows it: with uncommitted writes."""
        d = self.dirty.get(node.ino)
        if d is not None and d.tmp is not None:
            return d.size, node.mtime_ns if d.mtime_ns is None else d.mtime_ns
        return node.size, node.mtime_ns

    def reader(self, ino: int) -> tuple[ManifestReader, bool]:
        """A reader of the committed version of `ino`, and whether the page cache of
        earlier opens may be kept (the version is the one this mount saw last)."""
        if ino in self.pending:
            return ManifestReader(self.cache, f"<new inode {ino}>", Manifest(0, ())), False
        ino = self.redirects.get(ino, ino)
        node = self.node(ino)
        if node.kind == Kind.DIR:
            raise IsADirError(f"<inode {ino}>")
        if node.kind != Kind.FILE:
            raise InvalidPathError(f"<inode {ino}>", "not a regular file")
        m = self.client.manifest_ino(ino)
        with self.client.engine.read() as txn:  # the path names it in messages only
            try:
                path = self.names.path(txn, ino)
            except NotFoundError:  # a hard link whose name is not known here
                path = f"<inode {ino}>"
        keep = self.seen_version.get(ino) == m.version
        self.seen_version[ino] = m.version
        return ManifestReader(self.cache, path, m), keep

    def read(self, ino: int, size: int, off: int) -> bytes | None:
        """Up to `size` uncommitted bytes of `ino` at `off`; None if it has none."""
        d = self.dirty.get(ino)
        if d is not None and d.tmp is not None:
            with d.lock:
                if d.tmp is not None:
                    return d.tmp.pread(min(size, max(d.size - off, 0)), off)
        return None

    # -- creating and writing ------------------------------------------------
    def create(self, parent: int, name: str, mode: int, uid: int, gid: int, *,
               known: Inode | None = None, trunc: bool = True, caller: Caller | None = None,
               append: bool = False) -> Inode:
        """A new file `name` in `parent`, pending until its first commit (ExistsError if
        the name is taken). `known`: directory `parent` as the lookup of `name` that just
        missed read it; nothing is read then (a name taken since is found by the commit,
        which then writes into that file: `_create_action`; without `trunc` (O_TRUNC),
        over its content at the offsets written here; `caller` (None: anyone) must be
        allowed to write into that file; with `append` (O_APPEND) and without `trunc`,
        after its content: see `_lay_over`)."""
        exists = False
        if known is not None:
            parent_node = known
        else:
            with self.client.engine.read() as txn:
                # the entry first: on a database server the directory comes along
                exists = txn.lookup(parent, name) is not None
                parent_node = namespace.get(txn, parent)
        if parent_node.kind != Kind.DIR:
            raise NotADirError(name)
        mode, gid = namespace.inherit(parent_node, Kind.FILE, mode & 0o7777, gid)
        node = self.pending.add(parent, name, mode, uid, gid, exists)
        if not trunc:
            self.keep_theirs.add(node.ino)
            if append:
                self.appends.add(node.ino)
        if caller is not None:
            self.creators[node.ino] = caller
        self.names.remember(node.ino, parent, name)
        self.seen_version[node.ino] = 1
        return node

    def open_writer(self, ino: int) -> DirtyFile:
        """Count a writable handle of `ino`; its shared DirtyFile."""
        with self._lock:
            d = self.dirty.get(ino) or self.dirty.setdefault(ino, self._new_dirty(ino))
            d.writers += 1
            d.touched = time.monotonic()
        return d

    def _new_dirty(self, ino: int, writers: int = 0) -> DirtyFile:
        return DirtyFile(ino, writers=writers,
                         written=Written() if ino in self.keep_theirs else None)

    def _writers_elsewhere(self, batch: list[DirtyFile]) -> int:
        """How many files outside `batch` are being written now (uncommitted, opened or
        written in the last ACTIVE_WRITER seconds): closes worth a short wait."""
        inos = {d.ino for d in batch}
        since = time.monotonic() - ACTIVE_WRITER
        with self._lock:
            return sum(1 for d in self.dirty.values()
                       if d.writers > 0 and d.ino not in inos and d.touched >= since
                       and (d.dirty or d.ino in self.pending))

    def drop_writer(self, d: DirtyFile) -> None:
        """Uncount a writable handle; the last one drops the spool."""
        with self._lock:
            d.writers -= 1
            if d.writers > 0:
                return
            self.dirty.pop(d.ino, None)
        if d.tmp is not None:
            d.tmp.close()
            d.tmp = None

    def _write_locked(self, d: DirtyFile, reader: ManifestReader, data: bytes, off: int) -> int:
        self._materialize(d, reader)
        assert d.tmp is not None
        n = d.tmp.pwrite(data, off)
        if n:
            d.size = max(d.size, off + n)
            if d.written is not None:
                d.written.wrote(off, n)
        d.dirty = True
        d.mtime_ns = None
        d.touched = time.monotonic()
        return n

    def write(self, d: DirtyFile, reader: ManifestReader, data: bytes, off: int) -> int:
        """Write `data` at `off` into the spool of `d` (first copying the committed
        content of `reader` there)."""
        with d.lock:
            return self._write_locked(d, reader, data, off)

    def write_nowait(self, d: DirtyFile, reader: ManifestReader, data: bytes,
                     off: int) -> int | None:
        """`write` if it touches memory only and the spool is free; else None."""
        if (d.tmp is None or d.tmp.mem is None or off + len(data) > SPOOL_MEMORY
                or not d.lock.acquire(blocking=False)):
            return None
        try:
            if d.tmp is not None and d.tmp.mem is not None:
                return self._write_locked(d, reader, data, off)
            return None
        finally:
            d.lock.release()

    def _materialize(self, d: DirtyFile, reader: ManifestReader | None,
                     size: int | None = None) -> None:
        """Give `d` a spool holding the committed content (or its first `size` bytes).
        Called with `d.lock` held."""
        if d.tmp is not None:
            return
        tmp = Spool()
        if reader is None:
            reader, _ = self.reader(d.ino)  # empty for a file not committed yet
        keep = reader.size if size is None else min(size, reader.size)
        copy_span(reader.pread, tmp.pwrite, 0, keep)
        d.tmp, d.size = tmp, keep

    def truncate(self, ino: int, size: int, reader: ManifestReader | None = None) -> None:
        """Set the size of `ino`: in its spool if it is open for writing here (committed
        at its close), else at once as a new version."""
        with self._lock:
            d = self.dirty.get(ino)
            temporary = False
            if d is None and ino in self.pending:
                temporary = True
                d = self.dirty[ino] = self._new_dirty(ino, writers=1)
        if d is None:
            # truncate(2) of a file nobody writes here: a new version that keeps the
            # chunks before the cut (no copy of the file); of a create here redirected
            # to the file another client made of its name, of that file
            ino = self.redirects.get(ino, ino)
            self.client.truncate_ino(ino, size)
            self.changed()
            self.seen_version[ino] = self.client.manifest_ino(ino).version
            return
        try:
            with d.lock:
                self._materialize(d, reader, size)
                assert d.tmp is not None
                d.tmp.truncate(size)
                d.size = size
                d.dirty = True
                if d.written is not None:
                    d.written.truncated(size)
            if temporary:  # truncate(2) by path of a pending file: commit now
                self.commit(d)
        finally:
            if temporary:
                self.drop_writer(d)

    def set_mtime(self, ino: int, mtime_ns: int) -> None:
        """Remember an mtime set while `ino` has uncommitted writes (kept at commit)."""
        d = self.dirty.get(ino)
        if d is not None and d.tmp is not None:
            d.mtime_ns = mtime_ns

    # -- committing ------------------------------------------------------------
    def commit(self, d: DirtyFile) -> None:
        """Commit the content of `d` (and create its file if pending); returns once
        committed. Commits queued meanwhile share one writer session."""
        fut = self.commit_future(d)
        if fut is not None:
            fut.result()

    def commit_future(self, d: DirtyFile) -> Future[None] | None:
        """`commit` without waiting: a future done once `d` is committed, or None if
        it has nothing to commit. Never blocks."""
        if d.ino not in self.pending and d.ino not in self.lost and \
                (not d.dirty or d.tmp is None):
            return None
        return self._committer.submit_future(d)

    def commit_ino(self, ino: int) -> None:
        """Commit `ino` with its uncommitted content, if it has any or is pending."""
        self.commit(self.dirty_of(ino))

    def dirty_of(self, ino: int) -> DirtyFile:
        """The uncommitted state of `ino` (an empty one if it has none)."""
        return self.dirty.get(ino) or DirtyFile(ino)

    def settle(self) -> None:
        """Commit every pending file (with its content so far: empty unless written),
        before a change that must see them. A file whose name another client took for a
        directory is not committed; its close reports that, not this change."""
        for ino in self.pending.inos():
            try:
                self.commit_ino(ino)
            except OSError as e:
                if self.lost.get(ino) is not e:
                    raise

    def forget_lost(self, ino: int) -> None:
        """The last handle of `ino` closed: its lost create reported, forgotten."""
        self.lost.pop(ino, None)

    def commit_open(self) -> int:
        """Commit the content written so far of every dirty and every pending file;
        returns how many were committed."""
        with self._lock:
            todo = {**{ino: DirtyFile(ino) for ino in self.pending.inos()}, **self.dirty}
        done = 0
        for d in todo.values():
            if d.ino in self.pending or (d.dirty and d.tmp is not None):
                try:
                    self.commit(d)
                except OSError as e:
                    if self.lost.get(d.ino) is not e:
                        raise
                    continue
                done += 1
        return done

    def _commit_batch(self, items: list[DirtyFile]) -> None:
        """Commit `items` in one writer session (their locks held throughout); in the
        durable mode over an engine that leaves flushes to `sync`, then sync."""
        unique = list({id(d): d for d in items}.values())
        locked: list[DirtyFile] = []
        try:
            for d in unique:
                d.lock.acquire()
                locked.append(d)
            self._commit_locked(unique)
        finally:
            for d in locked:
                d.lock.release()
        if self.sync_interval <= 0:
            # a close returns once its commit is durable. If this sync fails, the
            # committer commits the items again one by one: each finds its file
            # committed, syncs again and gets the error if that fails too (`sync`
            # keeps the count of unsynced commits until it succeeds)
            self.sync()

    def _commit_locked(self, unique: list[DirtyFile]) -> None:
        work = [(d, d.ino in self.pending) for d in unique
                if d.ino in self.pending or (d.dirty and d.tmp is not None)]
        for attempt in range(len(work) + 2):  # each round lays over one file at most
            if not work:
                break
            try:
                self._commit_work(work)
                break
            except _LayOver as e:  # again, with their content (without what a commit
                # before the lay over committed: `WriteSession.add_action` commits midway)
                self._committed(e.done)
                if attempt > len(work):
                    raise ExistsError(self.pending.name(e.ino), "made and removed by other "
                                      "clients while this close committed; not committed, "
                                      "close again") from None
                self._lay_over(e.ino, e.taken)
                work = [(d, d.ino in self.pending) for d in unique
                        if d.ino in self.pending or (d.dirty and d.tmp is not None)]
        lost = [d for d in unique if d.ino in self.lost]
        if lost:  # the others are committed: the one-by-one retry reports each
            raise self.lost[lost[0].ino]

    def _commit_work(self, work: list[tuple[DirtyFile, bool]]) -> None:
        try:
            self._store_batch(work)
        except _TailGone as e:  # that commit changed nothing; the next pack is new
            self._committed(e.done)  # committed midway before it: not again
            rest = work[len(e.done):]
            log.info("%s: committing %d files again", e.error, len(rest))
            try:
                self._store_batch(rest)
            except _TailGone as again:
                self._committed(again.done)
                raise again.error from None
            work = rest
        self._committed(work)

    def _committed(self, work: list[tuple[DirtyFile, bool]]) -> None:
        """Count `work` committed and forget what was pending of it."""
        if not work:
            return
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.files += len(work)
            if self.sync_interval > 0 or self.lazy_meta:
                self.stats.unsynced += 1
        for d, new in work:
            d.dirty = False
            self.creators.pop(d.ino, None)  # (a laid over file's too)
            if new:
                self.pending.remove(d.ino)
                self.keep_theirs.discard(d.ino)
                self._forget_create(d.ino)
                if d.ino not in self.lost:
                    self.seen_version[d.ino] = 1

    def _store_batch(self, work: list[tuple[DirtyFile, bool]]) -> None:
        """Store and commit `work` ((file, pending create?)) in one writer session."""
        walks = self._create_walks([d.ino for d, new in work if new])
        ran: list[int] = []  # the files whose actions the commit under way ran
        done = 0  # work[:done] committed (a session commits midway: `add_action`)

        def tracked(i: int, action: Action) -> Action:
            def run(txn: WriteTxn, refs: list[ChunkRef]) -> Manifest | None:
                ran.append(i)
                return action(txn, refs)
            return run
        try:
            with self.client.store.writer(durable=self.sync_interval <= 0,
                                          tail=self._tail) as session:
                small = _store_small(session, [d for d, _ in work], self.client.store.params)
                for i, (d, new) in enumerate(work):
                    refs = small[i] if i in small else \
                        d.tmp.store(session) if d.tmp is not None else []
                    if new and d.mtime_ns is not None:
                        self.pending.update(d.ino, partial(replace, mtime_ns=d.mtime_ns))
                    action = self._create_action(d.ino, d.mtime_ns) if new else \
                        self._update_action(self.redirects.get(d.ino, d.ino), d.mtime_ns,
                                            self.creators.get(d.ino))
                    ran.clear()
                    session.add_file(refs, tracked(i, action))
                    if ran:  # this call committed every file queued so far
                        done = i + 1
                session.commit(walks)  # the names read ahead with the chunks and packs
        except _LayOver as e:
            e.done = work[:done]
            raise
        except TailPackGoneError as e:
            raise _TailGone(e, work[:done]) from e

    def _create_walks(self, inos: list[int]) -> list[tuple[int, list[str]]]:
        """The entries the create actions of pending files `inos` will look up."""
        walks: list[tuple[int, list[str]]] = []
        for ino in inos:
            node = self.pending.get(ino)
            if node is not None:
                walks.append((node.parent, [self.pending.name(ino)]))
        return walks

    def _create_action(self, ino: int, mtime: int | None) -> Action:
        """The commit action of a file created here: link it under its reserved number
        (`mtime`: set on it since the create, kept if the content goes elsewhere)."""
        def action(txn: WriteTxn, refs: list[ChunkRef]) -> Manifest | None:
            node = self.pending.get(ino)
            if node is None:  # committed meanwhile: an ordinary new version
                return self._update_action(ino, mtime)(txn, refs)
            name = self.pending.name(ino)
            self.lost.pop(ino, None)  # (set again if this run of the transaction finds it)
            parent = txn.get_inode(node.parent)
            if parent is None or parent.kind != Kind.DIR:
                log.info("directory of new inode %d was removed before the file was "
                         "committed", ino)
                return Manifest(0, tuple(refs))  # releases what was just referenced
            now = namespace.now_ns()
            taken = txn.lookup(node.parent, name)
            if taken is not None:  # made by another client since this create's lookup
                return self._taken_action(ino, name, taken, mtime)(txn, refs)
            new = replace(node, size=sum(r.length for r in refs), version=1, ctime_ns=now)
            txn.put_inode(new)
            txn.link(node.parent, name, ino)
            txn.put_manifest(ino, Manifest(1, tuple(refs)))
            txn.put_inode(replace(parent, mtime_ns=now, ctime_ns=now,
                                  version=parent.version + 1))
            return None
        return action

    def _taken_action(self, ino: int, name: str, taken: int, mtime: int | None) -> Action:
        """The commit of pending file `ino` whose name another client took meanwhile:
        as if this create had come after theirs and opened their file, the content is
        written into that file (a new version; their inode, mode and owner kept), never
        replacing it. A name taken by a directory or another kind changes nothing: the
        content is released and the close fails (EISDIR, or EEXIST for another kind: the
        open could not have succeeded after theirs), via `lost`."""
        def action(txn: WriteTxn, refs: list[ChunkRef]) -> Manifest | None:
            other = txn.get_inode(taken)
            if other is None or other.kind != Kind.FILE:
                kind = "a directory" if other is not None and other.kind == Kind.DIR \
                    else "not a regular file"
                err = (IsADirError if kind == "a directory" else ExistsError)(
                    name, f"another client made this name {kind} after this file was "
                    "created here; its content was not committed (write it under "
                    "another name)")
                log.warning("%s", err)
                self.lost[ino] = err
                return Manifest(0, tuple(refs))  # releases what was just referenced
            caller = self.creators.get(ino)
            refused: OSError | None = None
            if caller is not None and not may_open(other, caller, 2):
                refused = PermissionDeniedError(
                    name, "another client created this file after it was created here "
                    "and this user may not write to it; the content was not committed "
                    "(write it under another name)")
            elif ino in self.appends and not self._appends_only(ino):
                refused = ExistsError(  # an O_APPEND handle that also truncated
                    name, "another client created this file after it was opened here "
                    "with O_APPEND and the file was also truncated here; the content "
                    "was not committed (append again: the file exists now)")
            if refused is not None:
                log.warning("%s", refused)
                self.lost[ino] = refused
                return Manifest(0, tuple(refs))  # releases what was just referenced
            if ino in self.keep_theirs:  # no O_TRUNC: over their content (outside)
                raise _LayOver(ino, taken)
            log.info("%s was created meanwhile by another client; this close writes its "
                     "content into that file", name)
            self.redirects[ino] = taken
            return self._update_action(taken, mtime, caller)(txn, refs)
        return action

    def _appends_only(self, ino: int) -> bool:
        d = self.dirty.get(ino)
        return d is None or d.written is None or d.written.appends_only(d.size)

    def _forget_create(self, ino: int) -> None:
        self.appends.discard(ino)
        self.creators.pop(ino, None)

    def _lay_over(self, ino: int, taken: int) -> None:
        """Pending file `ino` (created without O_TRUNC) finds its name taken by file
        `taken`: from now on it is that file, and its content is theirs with the bytes
        written here laid over at their offsets (committed as a new version of it).
        Called with the file's lock held."""
        d = self.dirty.get(ino)
        if d is not None and d.written is not None and d.tmp is not None:
            try:
                theirs, _ = self.reader(taken)
            except NotFoundError:  # removed since: the commit creates the file again
                return
            merged = Spool()
            # O_APPEND: after their content, as appends to their file would have gone
            how = d.written.append if ino in self.appends else d.written.merge
            d.size = how(theirs, d.tmp, d.size, merged)
            d.tmp.close()
            d.tmp, d.written, d.dirty = merged, None, True
        log.info("%s was created meanwhile by another client; this close writes into "
                 "that file at the offsets written here", self.pending.name(ino))
        self.redirects[ino] = taken
        self.pending.remove(ino)
        self.keep_theirs.discard(ino)
        self.appends.discard(ino)  # (its creator kept for the commit: `_update_action`)

    def _update_action(self, ino: int, mtime: int | None, writer: Caller | None = None
                       ) -> Action:
        """The commit action of new content for a committed file (`writer`: who wrote
        it, when another client's file took the name of a file created here: a setgid
        bit they may not keep is cleared, as a write after open(2) of it would)."""
        def action(txn: WriteTxn, refs: list[ChunkRef]) -> Manifest | None:
            node = txn.get_inode(ino)
            if node is None or node.kind != Kind.FILE:
                log.info("inode %d was removed before its writes were committed", ino)
                return Manifest(0, tuple(refs))  # releases what was just referenced
            if writer is not None and sgid_left(node, writer):
                node = replace(node, mode=node.mode & ~stat.S_ISGID)
            old = namespace.write_content(txn, node, refs, mtime_ns=mtime)
            self.seen_version[ino] = node.version + 1
            return old
        return action


class _LayOver(HutongError):
    """A commit found the name of pending file `ino`, created without O_TRUNC, taken
    by file `taken`: the transaction is dropped and the commit laid over theirs."""

    def __init__(self, ino: int, taken: int) -> None:
        super().__init__(f"inode {ino}: name taken by inode {taken}")
        self.ino, self.taken = ino, taken
        #: The files of the batch committed before (see `_store_batch`).
        self.done: list[tuple[DirtyFile, bool]] = []


class _TailGone(HutongError):
    """A commit of `_store_batch` found its appended pack gone (`error`) and changed
    nothing; the files before it in the batch (`done`) were committed midway."""

    def __init__(self, error: TailPackGoneError, done: list[tuple[DirtyFile, bool]]) -> None:
        super().__init__(str(error))
        self.error, self.done = error, done


def _store_small(session: WriteSession, files: list[DirtyFile],
                 params: ChunkParams) -> dict[int, list[ChunkRef]]:
    """Store the content of the files of `files` spooled in memory as one piece, so
    the chunks of a batch of small files are looked up together (one round trip on a
    database server, not one per file); their refs, by index in `files`."""
    parts: dict[int, Prepared] = {}
    for i, d in enumerate(files):
        if d.tmp is not None and d.tmp.mem:
            parts[i] = prepare(bytes(d.tmp.mem), params)
    if parts:
        session.store_prepared(Prepared([r for p in parts.values() for r in p.refs],
                                        [b for p in parts.values() for b in p.pieces],
                                        sum(p.consumed for p in parts.values())))
    return {i: p.refs for i, p in parts.items()}


__all__ = ["ACTIVE_WRITER", "GATHER_WINDOW", "METADATA_SYNC", "SPOOL_MEMORY", "CommitStats",
           "DirtyFile", "GroupCommitter", "PendingCreates", "Spool", "WriteBack"]
