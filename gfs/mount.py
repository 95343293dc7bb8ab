"""The FUSE mount of a Hutong store (pyfuse3 on asyncio).

    hutong mount /mnt/hutong              # foreground until unmounted (Ctrl-C unmounts)
    hutong mount --background /mnt/hutong
    hutong umount /mnt/hutong

Design:

* Inode numbers are the store's inode numbers (the root is 1 in both).
* Every blocking store call runs on a thread pool, never on the event loop, so
  one slow read does not stall the mount. Requests answered from memory alone
  (attributes and lookups of files created here, small writes to a memory
  spool, non-`user.` xattr names) and lookup/getattr, which are one LMDB
  snapshot read (no lock, microseconds), are answered on the loop: a thread
  trip costs more than they do.
* Reads: a handle pins the version committed when it was opened. Chunks come
  through the cache tiers (`ChunkCache` in memory, `DiskCache` on disk; see
  `gfs.disk_cache.open_tier`); each read starts read-ahead of the next
  chunks. The kernel page cache is kept across opens while the committed
  version is unchanged (`keep_cache`), dropped otherwise (close-to-open).
* Writes: the first write (or truncate) of an inode copies its committed
  content into a spool shared by the inode's writable handles (memory up to
  1 MiB, then an unlinked temporary file);
  writes go there, and the whole file is committed as a new version on
  flush/fsync/release (close-to-open). Reads through the mount see the
  uncommitted bytes; other clients see them after the close.
* Creates: a new file gets an inode number from a block reserved in the store
  (one transaction per 256 creates) and lives in memory until its first
  flush/fsync/close, which commits it with its content: one pack write and one
  metadata transaction, instead of a transaction at create too. This mount
  sees the file at once; other clients see it when it is closed (close-to-open,
  as for its content). A change that must see it first (a listing of its
  directory, rename, unlink, mkdir, setxattr, ...) commits the pending files
  (empty unless written) before it runs. If another client makes the same name
  meanwhile, the close replaces that file (logged).
* Group commit: flush, fsync and release hand the file to one committer thread
  and wait until it is committed (a close never returns before its file is
  durable). Files queued while a commit runs are committed together in one
  writer session (one pack, one metadata transaction), so parallel writers
  share the fsyncs; a lone sequential writer pays one pack write and one
  transaction per file.
* Extended attributes: `user.*` names are stored in the `xattrs` value table
  (key: ino u64 BE + name). `user.hutong.*` are read-only facts computed from
  the index (chunks, stored bytes, replicas, version); they are not listed by
  listxattr, so copies of the tree do not carry them, but can be read by name.
* Shutting down: the first SIGINT/SIGTERM makes new opens, creates and namespace
  changes fail with ESHUTDOWN and commits the content written so far of every
  file open for writing (each a whole version as of its last completed write,
  never a torn one). Then it waits up to `drain_timeout` seconds for the writers
  to close; each close commits the file's full content as usual. Files still
  open then have what was written meanwhile committed, further writes fail
  (ESHUTDOWN, then ENOTCONN once unmounted), and the mount unmounts and exits 0.
  A second signal unmounts at once: what was written after the first is lost.
  A mount whose process died leaves a stale mount point (ENOTCONN);
  `hutong mount` and `hutong umount` clean it (`gfs.mount_points`).
* Errors: gfs errors carry an errno and become that errno; a chunk that cannot
  be read gives EIO for that read and a log line naming the file.

Limits: no hard links (EPERM), no device nodes or fifos, no RENAME_EXCHANGE;
a write through an open handle rewrites the file's chunk list on commit
(unchanged chunks are deduplicated, not stored again), so small writes to huge
files cost a read and chunking of the whole file (a truncate(2) of a file not
open for writing here keeps the chunks before the cut: `Client.truncate`);
metadata changed by other clients is seen after `attr_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import queue
import signal
import struct
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, TypeVar

import pyfuse3
import pyfuse3.asyncio

from gfs import namespace, paths
from gfs.cache import DEFAULT_POLICY, ChunkCache
from gfs.cache import CachedReader as _Reader
from gfs.client import Client
from gfs.disk_cache import open_tier
from gfs.errors import ExistsError, HutongError, NotFoundError
from gfs.meta import ROOT_INO, ChunkRef, Inode, Kind, Manifest, ReadTxn, WriteTxn
from gfs.mount_points import prepare, unmount
from gfs.store import WriteSession, release

log = logging.getLogger("hutong.mount")

T = TypeVar("T")

#: Prefix of the read-only extended attributes.
HUTONG_XATTR = b"user.hutong."
_XATTR_KEY = struct.Struct(">Q")


@dataclass
class MountOptions:
    """Tunables of a mount."""

    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    cache_bytes: int = 256 << 20
    #: Disk tier: "auto" (chunks of pools not on local disk), "on" (every chunk), "off".
    disk_cache: str = "auto"
    disk_cache_dir: str | None = None
    disk_cache_bytes: int | None = None
    cache_policy: str = DEFAULT_POLICY
    threads: int = 8
    debug: bool = False
    allow_other: bool = False
    #: Seconds SIGINT/SIGTERM wait for open files to be closed before unmounting.
    drain_timeout: float = 5.0


#: Uncommitted content up to this size stays in memory; larger spills to a temp file.
SPOOL_MEMORY = 1 << 20


class _Spool:
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
        self._spill(off + len(data))
        if self.mem is not None:
            if off > len(self.mem):
                self.mem.extend(bytes(off - len(self.mem)))
            self.mem[off:off + len(data)] = data
            return len(data)
        assert self.file is not None
        return _pwrite_all(self.file.fileno(), data, off)

    def pread(self, size: int, off: int) -> bytes:
        if self.mem is not None:
            return bytes(self.mem[off:off + size])
        assert self.file is not None
        return os.pread(self.file.fileno(), size, off)

    def truncate(self, size: int) -> None:
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
        self.mem = None
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class _Dirty:
    """The uncommitted content of one inode, shared by its writable handles."""

    ino: int
    writers: int = 0
    tmp: _Spool | None = None
    size: int = 0
    dirty: bool = False
    mtime_ns: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Handle:
    ino: int
    reader: _Reader
    writable: bool


def _pwrite_all(fd: int, data: bytes, off: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], off + done)
    return done


def _name(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    if len(raw) > 255:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    return name


class HutongOperations(pyfuse3.Operations):
    """pyfuse3 request handlers over an embedded store."""

    enable_writeback_cache = False

    def __init__(self, client: Client, options: MountOptions | None = None) -> None:
        super().__init__()
        self.client = client
        self.opts = options or MountOptions()
        self.cache = ChunkCache(client.store, self.opts.cache_bytes,
                                policy=self.opts.cache_policy, disk=open_tier(
                                    client.state, self.opts.disk_cache, self.opts.disk_cache_dir,
                                    self.opts.disk_cache_bytes, self.opts.cache_policy))
        self._pool = ThreadPoolExecutor(self.opts.threads, thread_name_prefix="hutong-fuse")
        self._handles: dict[int, _Handle] = {}
        self._dirty: dict[int, _Dirty] = {}
        self._dirs: dict[int, list[tuple[bytes, Inode]]] = {}
        self._seen_version: dict[int, int] = {}
        self._names: dict[int, tuple[int, str]] = {}  # ino -> (parent, name), a hint
        self._next_fh = itertools.count(1)
        self._lock = threading.Lock()
        # files created here and not yet committed (see "Creates" in the module doc)
        self._pending: dict[int, Inode] = {}
        self._pending_names: dict[tuple[int, str], int] = {}
        self._free_inos: list[int] = []
        self._commits: queue.SimpleQueue[tuple[_Dirty, Future[None]] | None] = \
            queue.SimpleQueue()
        self._committer = threading.Thread(target=self._commit_loop, name="hutong-commit",
                                           daemon=True)
        self._committer.start()
        #: Shutting down: new opens and namespace changes are refused (ESHUTDOWN).
        self.draining = False
        #: Shut down: writes are refused too (what they would add could not be committed).
        self.frozen = False
        self._writers_closed: asyncio.Event | None = None

    def close(self, commit: bool = True) -> None:
        """Stop the threads; with `commit`, commit the files created and never closed."""
        self._pool.shutdown(wait=True)
        try:
            if commit:
                self._settle()  # files created and never closed (the mount went away)
        except Exception:
            log.exception("could not commit the files created before the unmount")
        self._commits.put(None)
        self._committer.join()
        self.cache.close()

    # -- shutting down -------------------------------------------------------
    def _admit(self) -> None:
        """Refuse a new open or namespace change while shutting down."""
        if self.draining:
            raise pyfuse3.FUSEError(errno.ESHUTDOWN)

    def open_writers(self) -> int:
        """The number of handles open for writing."""
        return sum(1 for h in list(self._handles.values()) if h.writable)

    def commit_open(self) -> int:
        """Commit the content written so far of every file open for writing and every
        file created here (a blocking call); returns how many files were committed."""
        with self._lock:
            todo = {**{ino: _Dirty(ino) for ino in self._pending}, **self._dirty}
        done = 0
        for d in todo.values():
            with self._lock:
                new = d.ino in self._pending
            if new or (d.dirty and d.tmp is not None):
                self._commit(d)
                done += 1
        return done

    async def writers_closed(self) -> None:
        """Return once no handle is open for writing."""
        self._writers_closed = asyncio.Event()
        if self.open_writers():
            await self._writers_closed.wait()

    # -- plumbing ------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call on the pool; map gfs errors to their errno."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except pyfuse3.FUSEError:
            raise
        except (HutongError, OSError) as e:
            code = getattr(e, "errno", None) or errno.EIO
            if code == errno.EIO:
                log.error("I/O error: %s", e)
            else:
                log.debug("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short metadata read on the loop itself (an LMDB snapshot lookup takes
        microseconds, a trip to a worker thread far more); errors as in `_run`."""
        try:
            return fn(*args)
        except pyfuse3.FUSEError:
            raise
        except (HutongError, OSError) as e:
            code = getattr(e, "errno", None) or errno.EIO
            if code == errno.EIO:
                log.error("I/O error: %s", e)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", fn))
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _path(self, txn: ReadTxn, ino: int) -> str:
        """The current path of `ino` (from the name hints, checked; else from the index)."""
        parts: list[str] = []
        cur = ino
        while cur != ROOT_INO:
            hint = self._names.get(cur)
            if hint is None or txn.lookup(hint[0], hint[1]) != cur:
                if txn.get_inode(ino) is None:
                    raise NotFoundError(f"<inode {ino}>")
                p = namespace.path_of(txn, ino)
                if p.startswith("<"):
                    raise NotFoundError(p)
                return p
            parts.append(hint[1])
            cur = hint[0]
        return "/" + "/".join(reversed(parts))

    def _child_path(self, txn: ReadTxn, parent: int, name: str) -> str:
        base = self._path(txn, parent)
        return paths.join([*paths.split(base), paths.check_name(name)])

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.opts.entry_timeout
        a.attr_timeout = self.opts.attr_timeout
        a.st_mode = namespace.st_mode(node)
        a.st_nlink = 1
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = 0
        size = node.size
        mtime = node.mtime_ns
        d = self._dirty.get(node.ino)
        if d is not None and d.tmp is not None:
            size = d.size
            if d.mtime_ns is not None:
                mtime = d.mtime_ns
        a.st_size = size
        a.st_blksize = 1 << 17
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = mtime
        a.st_ctime_ns = node.ctime_ns
        return a

    def _node(self, ino: int) -> Inode:
        pending = self._pending.get(ino)
        if pending is not None:
            return pending
        with self.client.engine.read() as txn:
            node = txn.get_inode(ino)
        if node is None:
            raise NotFoundError(f"<inode {ino}>")
        return node

    # -- looking -------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with contextlib.suppress(pyfuse3.FUSEError):
            ino = self._pending_names.get((parent_inode, _name(name)))
            new = self._pending.get(ino) if ino is not None else None
            if new is not None:  # a file created here, in memory: answered on the loop
                return self._attr(new)

        def op() -> Inode:
            pending_ino = self._pending_names.get((parent_inode, _name(name)))
            pending = self._pending.get(pending_ino) if pending_ino is not None else None
            if pending is not None:
                return pending
            with self.client.engine.read() as txn:
                parent = namespace.get(txn, parent_inode)
                if name == b".":
                    return parent
                if name == b"..":
                    return namespace.get(txn, parent.parent)
                ino = txn.lookup(parent_inode, _name(name))
                node = txn.get_inode(ino) if ino is not None else None
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            self._names[node.ino] = (parent_inode, _name(name))
            return node
        return self._attr(self._now(op))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        pending = self._pending.get(inode)
        if pending is not None:  # in memory: answered on the loop
            return self._attr(pending)
        return self._attr(self._now(self._node, inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self._run(self._node, inode)
        if node.kind != Kind.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target.encode()

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        def op() -> list[tuple[bytes, Inode]]:
            self._settle()
            with self.client.engine.read() as txn:
                node = namespace.get(txn, inode)
                if node.kind != Kind.DIR:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                out = []
                for n, i in txn.list_dir(inode):
                    kid = txn.get_inode(i)
                    if kid is not None:
                        out.append((n.encode(), kid))
                        self._names[i] = (inode, n)
                return out
        entries = await self._run(op)
        fh = next(self._next_fh)
        self._dirs[fh] = entries
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh, [])
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._attr(node), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        def op() -> pyfuse3.StatvfsData:
            st = os.statvfs(self.client.state)
            with self.client.engine.read() as txn:
                raw = txn.get_meta("next_ino")
            used = int.from_bytes(raw, "little") if raw else 0
            s = pyfuse3.StatvfsData()
            s.f_bsize = st.f_bsize
            s.f_frsize = st.f_frsize
            s.f_blocks = st.f_blocks
            s.f_bfree = st.f_bfree
            s.f_bavail = st.f_bavail
            s.f_files = used + st.f_ffree
            s.f_ffree = st.f_ffree
            s.f_favail = st.f_favail
            s.f_namemax = 255
            return s
        return await self._run(op)

    # -- namespace changes ---------------------------------------------------
    def _write_txn(self, fn: Callable[[WriteTxn], T]) -> T:
        """Run a namespace change; files created here but not yet committed are
        committed (empty) first, so the change sees them."""
        self._settle()
        with self.client.engine.write() as txn:
            return fn(txn)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._admit()
        n = _name(name)

        def op(txn: WriteTxn) -> Inode:
            path = self._child_path(txn, parent_inode, n)
            return namespace.mkdir(txn, path, mode & 0o7777, uid=ctx.uid, gid=ctx.gid)
        node = await self._run(self._write_txn, op)
        self._names[node.ino] = (parent_inode, n)
        return self._attr(node)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._admit()
        n = _name(name)

        def op(txn: WriteTxn) -> Inode:
            path = self._child_path(txn, parent_inode, n)
            return namespace.symlink(txn, path, os.fsdecode(target), uid=ctx.uid, gid=ctx.gid)
        node = await self._run(self._write_txn, op)
        self._names[node.ino] = (parent_inode, n)
        return self._attr(node)

    def _remove(self, parent_inode: int, name: bytes, is_dir: bool) -> None:
        n = _name(name)

        def op(txn: WriteTxn) -> None:
            path = self._child_path(txn, parent_inode, n)
            node = namespace.resolve(txn, path)
            if is_dir and node.kind != Kind.DIR:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            release(txn, namespace.remove(txn, path, dir_ok=is_dir))
        self._write_txn(op)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._admit()
        await self._run(self._remove, parent_inode, name, False)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._admit()
        await self._run(self._remove, parent_inode, name, True)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._admit()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = _name(name_old), _name(name_new)

        def op(txn: WriteTxn) -> int:
            src = self._child_path(txn, parent_inode_old, old)
            dst = self._child_path(txn, parent_inode_new, new)
            moving = namespace.resolve(txn, src)
            target = txn.lookup(parent_inode_new, new)
            if target is not None and flags & pyfuse3.RENAME_NOREPLACE:
                raise ExistsError(dst)
            release(txn, namespace.rename(txn, src, dst))
            return moving.ino
        ino = await self._run(self._write_txn, op)
        self._names[ino] = (parent_inode_new, new)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        def op() -> Inode:
            if fields.update_size:
                self._truncate(inode, attr.st_size)
            mode = attr.st_mode & 0o7777 if fields.update_mode else None
            uid = attr.st_uid if fields.update_uid else None
            gid = attr.st_gid if fields.update_gid else None
            atime = attr.st_atime_ns if fields.update_atime else None
            mtime = attr.st_mtime_ns if fields.update_mtime else None
            if mtime is not None:
                d = self._dirty.get(inode)
                if d is not None and d.tmp is not None:
                    d.mtime_ns = mtime  # applied again when the content is committed
            if any(v is not None for v in (mode, uid, gid, atime, mtime)):
                with self._lock:
                    pending = self._pending.get(inode)
                    if pending is not None:  # applied when the file is committed
                        pending = self._pending[inode] = replace(
                            pending, mode=pending.mode if mode is None else mode,
                            uid=pending.uid if uid is None else uid,
                            gid=pending.gid if gid is None else gid,
                            atime_ns=pending.atime_ns if atime is None else atime,
                            mtime_ns=pending.mtime_ns if mtime is None else mtime,
                            ctime_ns=namespace.now_ns())
                        return pending

                def change(txn: WriteTxn) -> Inode:
                    return namespace.set_attrs(txn, self._path(txn, inode), mode=mode,
                                               uid=uid, gid=gid, atime_ns=atime,
                                               mtime_ns=mtime)
                return self._write_txn(change)
            return self._node(inode)
        return self._attr(await self._run(op))

    # -- files ---------------------------------------------------------------
    def _open_reader(self, ino: int) -> tuple[_Reader, bool]:
        """A reader of the committed version, and whether the page cache may be kept."""
        pending = self._pending.get(ino)
        if pending is not None:
            return _Reader(self.cache, f"<new inode {ino}>", Manifest(0, ())), False
        node = self._node(ino)
        if node.kind == Kind.DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if node.kind != Kind.FILE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        m = self.client.manifest_ino(ino)
        with self.client.engine.read() as txn:
            path = self._path(txn, ino)
        keep = self._seen_version.get(ino) == m.version
        self._seen_version[ino] = m.version
        return _Reader(self.cache, path, m), keep

    def _new_handle(self, ino: int, reader: _Reader, flags: int) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        fh = next(self._next_fh)
        with self._lock:
            self._handles[fh] = _Handle(ino, reader, writable)
            if writable:
                d = self._dirty.setdefault(ino, _Dirty(ino))
                d.writers += 1
        if writable and flags & os.O_TRUNC:
            self._truncate(ino, 0, reader)
        return fh

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        self._admit()
        def op() -> pyfuse3.FileInfo:
            reader, keep = self._open_reader(inode)
            fh = self._new_handle(inode, reader, flags)
            return pyfuse3.FileInfo(fh=fh, keep_cache=keep and not flags & os.O_TRUNC)
        return await self._run(op)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._admit()
        n = _name(name)

        def op() -> tuple[pyfuse3.FileInfo, Inode]:
            with self.client.engine.read() as txn:
                parent = namespace.get(txn, parent_inode)
                if parent.kind != Kind.DIR:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                path = self._child_path(txn, parent_inode, n)
                exists = txn.lookup(parent_inode, n) is not None
            now = namespace.now_ns()
            with self._lock:
                if exists or (parent_inode, n) in self._pending_names:
                    raise ExistsError(path)
                node = Inode(self._take_ino(), parent_inode, Kind.FILE, mode & 0o7777,
                             ctx.uid, ctx.gid, 0, now, now, now, 0)
                self._pending[node.ino] = node
                self._pending_names[(parent_inode, n)] = node.ino
            self._names[node.ino] = (parent_inode, n)
            self._seen_version[node.ino] = 1
            reader = _Reader(self.cache, path, Manifest(0, ()))
            fh = self._new_handle(node.ino, reader, flags)
            return pyfuse3.FileInfo(fh=fh), node
        fi, node = await self._run(op)
        return fi, self._attr(node)

    #: Inode numbers reserved at a time for creates.
    INO_BLOCK = 256

    def _take_ino(self) -> int:
        """An inode number for a new file, from a block reserved in the store (numbers
        of a block left unused are skipped forever, which is harmless). `_lock` held."""
        if not self._free_inos:
            with self.client.engine.write() as txn:
                block = [txn.alloc_ino() for _ in range(self.INO_BLOCK)]
            self._free_inos = block[::-1]
        return self._free_inos.pop()

    def _create_action(self, ino: int) -> Callable[[WriteTxn, list[ChunkRef]], Manifest | None]:
        """The commit action of a file created here: link it under its reserved number."""
        def action(txn: WriteTxn, refs: list[ChunkRef]) -> Manifest | None:
            with self._lock:
                node = self._pending.get(ino)
            if node is None:  # committed meanwhile: an ordinary new version
                return self._update_action(ino, None)(txn, refs)
            name = self._names.get(ino, (0, ""))[1]
            parent = txn.get_inode(node.parent)
            if parent is None or parent.kind != Kind.DIR:
                log.info("directory of new inode %d was removed before the file was "
                         "committed", ino)
                return Manifest(0, tuple(refs))  # releases what was just referenced
            now = namespace.now_ns()
            old: Manifest | None = None
            existing = txn.lookup(node.parent, name)
            if existing is not None:  # made meanwhile by another client: replaced
                log.warning("%s was created by another client too; replaced by this one",
                            name)
                old = namespace.unlink_in(txn, parent, name, touch=False)
            new = replace(node, size=sum(r.length for r in refs), version=1, ctime_ns=now)
            txn.put_inode(new)
            txn.link(node.parent, name, ino)
            txn.put_manifest(ino, Manifest(1, tuple(refs)))
            txn.put_inode(replace(parent, mtime_ns=now, ctime_ns=now))
            return old
        return action

    def _update_action(self, ino: int, mtime: int | None
                       ) -> Callable[[WriteTxn, list[ChunkRef]], Manifest | None]:
        def action(txn: WriteTxn, r: list[ChunkRef]) -> Manifest | None:
            node = txn.get_inode(ino)
            if node is None or node.kind != Kind.FILE:
                log.info("inode %d was removed before its writes were committed", ino)
                return Manifest(0, tuple(r))  # releases what was just referenced
            old = namespace.write_file(txn, self._path(txn, ino), r, mtime_ns=mtime)
            new = txn.get_inode(ino)
            if new is not None:
                self._seen_version[ino] = new.version
            return old
        return action

    def _settle(self) -> None:
        """Commit every file created here and not committed yet (with its content so
        far: empty unless written), before a change that must see them."""
        with self._lock:
            inos = list(self._pending)
        for ino in inos:
            d = self._dirty.get(ino) or _Dirty(ino)
            self._commit(d)

    def _materialize(self, d: _Dirty, reader: _Reader | None, size: int | None = None) -> None:
        """Give `d` a temporary file holding the committed content (or its first `size`
        bytes). Called with `d.lock` held."""
        if d.tmp is not None:
            return
        tmp = _Spool()
        if reader is None:
            reader, _ = self._open_reader(d.ino)  # empty for a file not committed yet
        keep = reader.size if size is None else min(size, reader.size)
        off = 0
        while off < keep:
            data = reader.read(off, min(8 << 20, keep - off))
            tmp.pwrite(data, off)
            off += len(data)
        d.tmp, d.size = tmp, keep

    def _truncate(self, ino: int, size: int, reader: _Reader | None = None) -> None:
        with self._lock:
            d = self._dirty.get(ino)
            if d is None and ino not in self._pending:
                # truncate(2) of a file nobody writes here: a new version that keeps
                # the chunks before the cut (no copy of the file)
                with self.client.engine.read() as txn:
                    path = self._path(txn, ino)
                self.client.truncate(path, size)
                m = self.client.manifest_ino(ino)
                self._seen_version[ino] = m.version
                return
            temporary = d is None
            if d is None:
                d = self._dirty[ino] = _Dirty(ino, writers=1)
        try:
            with d.lock:
                self._materialize(d, reader, size)
                assert d.tmp is not None
                d.tmp.truncate(size)
                d.size = size
                d.dirty = True
            if temporary:  # truncate(2) by path: commit now
                self._commit(d)
        finally:
            if temporary:
                self._drop_writer(d)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)

        def op() -> bytes:
            d = self._dirty.get(h.ino)
            if d is not None and d.tmp is not None:
                with d.lock:
                    if d.tmp is not None:
                        return d.tmp.pread(min(size, max(d.size - off, 0)), off)
            try:
                return h.reader.read(off, size)
            except HutongError as e:
                log.error("read of %s failed at offset %d: %s", h.reader.path, off, e)
                raise pyfuse3.FUSEError(errno.EIO) from None
        return await self._run(op)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles.get(fh)
        if h is None or not h.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        if self.frozen:
            raise pyfuse3.FUSEError(errno.ESHUTDOWN)

        def write_locked(d: _Dirty) -> int:
            self._materialize(d, h.reader)
            assert d.tmp is not None
            n = d.tmp.pwrite(buf, off)
            d.size = max(d.size, off + n)
            d.dirty = True
            d.mtime_ns = None
            return n

        def op() -> int:
            d = self._dirty[h.ino]
            with d.lock:
                return write_locked(d)

        d = self._dirty.get(h.ino)
        if (d is not None and d.tmp is not None and d.tmp.mem is not None
                and off + len(buf) <= SPOOL_MEMORY and d.lock.acquire(blocking=False)):
            try:  # a small write to memory: no trip to a worker thread
                if d.tmp is not None and d.tmp.mem is not None:
                    return write_locked(d)
            finally:
                d.lock.release()
        return await self._run(op)

    def _commit(self, d: _Dirty) -> None:
        """Commit the content of `d` (and create its file if it is new here); returns
        once committed. Commits queued meanwhile by other threads share one writer
        session: one pack write and one metadata transaction for all of them."""
        with self._lock:
            pending = d.ino in self._pending
        if not pending and (not d.dirty or d.tmp is None):
            return
        fut: Future[None] = Future()
        self._commits.put((d, fut))
        fut.result()

    def _commit_loop(self) -> None:
        """The committer thread: takes every queued commit and commits them together."""
        while True:
            item = self._commits.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    more = self._commits.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._commits.put(None)  # stop after this batch
                    break
                batch.append(more)
            try:
                self._commit_batch([d for d, _ in batch])
            except BaseException as e:
                if len(batch) == 1:
                    batch[0][1].set_exception(e)
                    continue
                for d, fut in batch:  # one by one, so each error reaches its file
                    try:
                        self._commit_batch([d])
                    except BaseException as e1:
                        fut.set_exception(e1)
                    else:
                        fut.set_result(None)
                continue
            for _, fut in batch:
                fut.set_result(None)

    def _commit_batch(self, items: list[_Dirty]) -> None:
        """Commit `items` in one writer session (their locks held throughout)."""
        unique = list({id(d): d for d in items}.values())
        locked: list[_Dirty] = []
        try:
            for d in unique:
                d.lock.acquire()
                locked.append(d)
            work = []
            for d in unique:
                with self._lock:
                    new = d.ino in self._pending
                if new or (d.dirty and d.tmp is not None):
                    work.append((d, new))
            if not work:
                return
            with self.client.store.writer() as session:
                for d, new in work:
                    refs = d.tmp.store(session) if d.tmp is not None else []
                    if new:
                        action = self._create_action(d.ino)
                        if d.mtime_ns is not None:
                            with self._lock:
                                self._pending[d.ino] = replace(self._pending[d.ino],
                                                               mtime_ns=d.mtime_ns)
                    else:
                        action = self._update_action(d.ino, d.mtime_ns)
                    session.add_file(refs, action)
                session.commit()
            for d, new in work:
                d.dirty = False
                if new:
                    with self._lock:
                        node = self._pending.pop(d.ino, None)
                        if node is not None:
                            name = self._names.get(d.ino, (0, ""))[1]
                            self._pending_names.pop((node.parent, name), None)
                    self._seen_version[d.ino] = 1
        finally:
            for d in locked:
                d.lock.release()

    def _drop_writer(self, d: _Dirty) -> None:
        with self._lock:
            d.writers -= 1
            if d.writers > 0:
                return
            self._dirty.pop(d.ino, None)
        if d.tmp is not None:
            d.tmp.close()
            d.tmp = None

    async def flush(self, fh: int) -> None:
        h = self._handles.get(fh)
        if h is None:
            return
        d = self._dirty.get(h.ino) if h.writable else None
        if d is None and h.ino in self._pending:
            d = _Dirty(h.ino)
        if d is not None:
            await self._run(self._commit, d)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        try:
            await self._release(fh)
        finally:
            if self._writers_closed is not None and not self.open_writers():
                self._writers_closed.set()

    async def _release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is not None and not h.writable and h.ino in self._pending:
            await self._run(self._commit, _Dirty(h.ino))
        if h is None or not h.writable:
            return
        d = self._dirty.get(h.ino)
        if d is None:
            return

        def op() -> None:
            try:
                self._commit(d)
            finally:
                self._drop_writer(d)
        await self._run(op)

    # -- extended attributes -------------------------------------------------
    def _facts(self, ino: int) -> dict[bytes, bytes]:
        if ino in self._pending:
            self._settle()
        with self.client.engine.read() as txn:
            node = namespace.get(txn, ino)
            out = {b"version": str(node.version).encode(), b"ino": str(ino).encode(),
                   b"cache": json.dumps(self.cache.stats().to_dict()).encode()}
            m = txn.get_manifest(ino) if node.kind == Kind.FILE else None
            if m is None:
                return out
            pools: dict[int, int] = {}
            stored = 0
            copies = []
            for ref in m.chunks:
                rec = txn.get_chunk(ref.id)
                locs = rec.locations if rec is not None else ()
                copies.append(len(locs))
                for loc in locs:
                    pools[loc.pool] = pools.get(loc.pool, 0) + 1
                if locs:
                    stored += locs[0].length
            names = {}
            for pid in pools:
                rec_p = txn.get_pool(pid)
                names[pid] = rec_p.name if rec_p is not None else str(pid)
        out[b"chunks"] = str(len(m.chunks)).encode()
        out[b"stored_bytes"] = str(stored).encode()
        out[b"replicas"] = str(min(copies) if copies else 0).encode()
        out[b"pools"] = ",".join(f"{names[p]}:{n}" for p, n in sorted(pools.items())).encode()
        out[b"chunk_ids"] = "\n".join(f"{r.id.hex()} {r.length}" for r in m.chunks).encode()
        return out

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user.") or (inode in self._pending
                                               and not name.startswith(HUTONG_XATTR)):
            # only user.* names are stored (the kernel asks security.capability on
            # every write); a new file has none yet: answered on the loop
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

        def op() -> bytes:
            if name.startswith(HUTONG_XATTR):
                value = self._facts(inode).get(name[len(HUTONG_XATTR):])
            elif inode in self._pending or not name.startswith(b"user."):
                value = None  # a new file has none yet (setxattr commits it first)
            else:
                with self.client.engine.read() as txn:
                    namespace.get(txn, inode)
                    raw = txn.get_value("xattrs", _XATTR_KEY.pack(inode) + name)
                value = raw[1:] if raw is not None else None
            if value is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return value
        return await self._run(op)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        def op() -> list[bytes]:
            prefix = _XATTR_KEY.pack(inode)
            if inode in self._pending:
                return []
            with self.client.engine.read() as txn:
                namespace.get(txn, inode)
                return [k[len(prefix):] for k, _ in txn.iter_values("xattrs", prefix)]
        return await self._run(op)

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self._admit()
        if name.startswith(HUTONG_XATTR):
            raise pyfuse3.FUSEError(errno.EPERM)
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if len(name) > 255 or len(value) > 500:
            raise pyfuse3.FUSEError(errno.E2BIG)

        def op(txn: WriteTxn) -> None:
            namespace.get(txn, inode)
            txn.put_value("xattrs", _XATTR_KEY.pack(inode) + name, b"\x01" + value)
        await self._run(self._write_txn, op)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._admit()
        if name.startswith(HUTONG_XATTR):
            raise pyfuse3.FUSEError(errno.EPERM)

        def op(txn: WriteTxn) -> None:
            key = _XATTR_KEY.pack(inode) + name
            if txn.get_value("xattrs", key) is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            txn.delete_value("xattrs", key)
        await self._run(self._write_txn, op)


#: Kernel read-ahead asked for the mount (KiB), so sequential reads arrive in large
#: requests; set through the mount's bdi when permitted (root), else left as is.
READ_AHEAD_KB = 8192


def _raise_read_ahead(mountpoint: str) -> None:
    """Raise the kernel read-ahead of the FUSE connection mounted at `mountpoint`.

    The device number comes from /proc/self/mountinfo: a stat of the mount point
    would be a FUSE request that this (not yet serving) process must answer.
    """
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == mountpoint:
                    dev = fields[2]
            bdi = f"/sys/class/bdi/{dev}/read_ahead_kb"
        with open(bdi, "w") as out:
            out.write(str(READ_AHEAD_KB))
    except (OSError, UnboundLocalError) as e:
        log.info("kernel read-ahead left as is (%s)", e)


class _Shutdown:
    """What SIGINT/SIGTERM do to a running mount (see "Shutting down" in the module doc)."""

    def __init__(self, ops: HutongOperations, grace: float) -> None:
        self.ops = ops
        self.grace = grace
        self.task: asyncio.Task[None] | None = None
        self.forced = False
        self.failed = False

    def signal(self) -> None:
        """The first signal drains and unmounts; a second one unmounts at once."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.drain())
            return
        if not self.forced:
            self.forced = True
            log.warning("second signal: unmounting now; what open files wrote since the "
                        "first signal is not committed")
            pyfuse3.terminate()

    async def _commit_open(self) -> int:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.ops.commit_open)
        except Exception as e:
            self.failed = True
            log.error("could not commit the open files: %s", e)
            return 0

    async def drain(self) -> None:
        """Refuse new opens, commit every open file, wait up to `grace` seconds for the
        writers to close, commit what they wrote meanwhile, then end the main loop."""
        self.ops.draining = True
        done = await self._commit_open()
        writers = self.ops.open_writers()
        log.warning("shutting down: committed %d open files; waiting up to %g s for %d "
                    "writers to close them (signal again to unmount now)", done, self.grace,
                    writers)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ops.writers_closed(), self.grace)
        self.ops.frozen = True
        left = self.ops.open_writers()
        done = await self._commit_open()
        if left:
            log.warning("%d files still open for writing: committed what was written to "
                        "them (%d files); their later writes and closes fail", left, done)
        if not self.forced:
            pyfuse3.terminate()


def run_mount(client: Client, mountpoint: str, options: MountOptions | None = None,
              ready: Callable[[], None] | None = None) -> None:
    """Mount `client`'s store at `mountpoint` and serve until unmounted or signalled.

    SIGINT and SIGTERM commit the open files and unmount (see "Shutting down" in the
    module doc); a stale mount at `mountpoint` is cleaned first. `ready` is called
    once the mount is live. Raises HutongError if committing at shutdown failed.
    """
    opts = options or MountOptions()
    mp, report = prepare(mountpoint)
    if report is not None:
        log.warning("%s", report)
    pyfuse3.asyncio.enable()
    ops = HutongOperations(client, opts)
    fuse_opts = set(pyfuse3.default_options)
    fuse_opts |= {"fsname=hutong", "subtype=hutong"}
    if opts.allow_other:
        fuse_opts.add("allow_other")
    if opts.debug:
        fuse_opts.add("debug")
    pyfuse3.init(ops, mp, fuse_opts)
    _raise_read_ahead(mp)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    shutdown = _Shutdown(ops, opts.drain_timeout)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.signal)
        if ready is not None:
            loop.call_soon(ready)
        log.info("mounted %s at %s", client.state, mp)
        loop.run_until_complete(pyfuse3.main())
    finally:
        try:
            pyfuse3.close(unmount=True)
        finally:
            if shutdown.task is not None and not shutdown.task.done():
                shutdown.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(shutdown.task)
            ops.close(commit=not shutdown.forced)
            loop.close()
            log.info("unmounted %s", mp)
    if shutdown.failed:
        raise HutongError(f"unmounted {mp}, but some open files could not be committed "
                          "(see the log above); `hutong fsck` checks the store")


__all__ = ["HutongOperations", "MountOptions", "run_mount", "unmount"]
