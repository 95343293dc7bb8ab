"""The FUSE mount of a Hutong store: the pyfuse3 request handlers (on asyncio).

    hutong mount /mnt/hutong              # foreground until unmounted (Ctrl-C unmounts)
    hutong mount --background /mnt/hutong
    hutong umount /mnt/hutong

A thin adapter: it turns requests into calls of the write-back
(`gfs.mount_writeback`: spools, pending creates, group commit), the extended
attributes (`gfs.mount_xattr`), the namespace and the cache, and errors into
errnos. What it promises (close-to-open, creates, group commit, shutting down,
limits) is written in docs/architecture.md, "The FUSE mount".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar, cast

import pyfuse3
import pyfuse3.asyncio

from gfs import namespace
from gfs.client import Client
from gfs.disk_cache import open_tier
from gfs.errors import ExistsError, HutongError, NotFoundError
from gfs.eviction import DEFAULT_POLICY
from gfs.meta import Inode, Kind, WriteTxn
from gfs.mount_access import Caller, may_open, wanted
from gfs.mount_atime import AccessTimes
from gfs.mount_listings import DirListings
from gfs.mount_lookups import LookupBatcher
from gfs.mount_names import NameHints
from gfs.mount_points import prepare, unmount
from gfs.mount_recent import RecentDirs, RecentMisses
from gfs.mount_shutdown import Drain, Drainable
from gfs.mount_txn_batch import TxnBatcher, Walks
from gfs.mount_writeback import GATHER_WINDOW, DirtyFile, WriteBack
from gfs.mount_xattr import HUTONG_XATTR, Xattrs
from gfs.read import ManifestReader, cached
from gfs.store import release

log = logging.getLogger("hutong.mount")

T = TypeVar("T")


@dataclass
class ServeOptions:
    """Tunables every mount has (embedded or global)."""

    threads: int = 8
    debug: bool = False
    allow_other: bool = False
    #: Seconds SIGINT/SIGTERM wait for open files to be closed before unmounting.
    drain_timeout: float = 5.0


@dataclass
class MountOptions(ServeOptions):
    """Tunables of a mount of the embedded store."""

    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    cache_bytes: int = 256 << 20
    #: Disk tier: "auto" (chunks of pools not on local disk), "on" (every chunk), "off".
    disk_cache: str = "auto"
    disk_cache_dir: str | None = None
    disk_cache_bytes: int | None = None
    cache_policy: str = DEFAULT_POLICY
    #: Seconds a close waits for other files being written to commit with it.
    commit_window: float = GATHER_WINDOW
    #: 0: a close returns once its file is committed and durable. > 0: committed
    #: (visible, safe from kill -9) at close, durable at fsync(2), at unmount or
    #: within this many seconds (packs written without fsync, synced in batches).
    sync_interval: float = 0.0


@dataclass
class _Handle:
    ino: int
    reader: ManifestReader
    #: The inode's shared uncommitted content, for a handle open for writing.
    dirty: DirtyFile | None
    #: Whether a read through this handle has been counted as an access (atime).
    accessed: bool = False
    #: The first write must clear a setgid bit the kernel leaves (see `_sgid_left`).
    drop_sgid: bool = False


E = TypeVar("E")


def readdir_replies(token: pyfuse3.ReaddirToken, entries: Sequence[tuple[bytes, E]],
                    start_id: int, attr: Callable[[E], pyfuse3.EntryAttributes]
                    ) -> Iterator[pyfuse3.EntryAttributes]:
    """Reply `entries[start_id:]` to a readdir until the kernel's buffer is full; yields
    the attributes of each entry the kernel took (each is a lookup of its inode)."""
    for i in range(start_id, len(entries)):
        name, entry = entries[i]
        a = attr(entry)
        if not pyfuse3.readdir_reply(token, name, a, i + 1):
            return
        yield a


def _groups(pid: int) -> set[int]:
    """The supplementary groups of process `pid` (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def _sgid_left(node: Inode, ctx: pyfuse3.RequestContext) -> bool:
    """Whether a write by the caller of `ctx` must clear a setgid bit that the kernel's
    FUSE layer leaves and ext4 clears: setgid without group-execute, written by a
    caller who is neither root nor a member of the file's group."""
    if node.mode & (stat.S_ISGID | stat.S_IXGRP) != stat.S_ISGID:
        return False
    if ctx.uid == 0 or ctx.gid == node.gid:
        return False
    return node.gid not in _groups(ctx.pid)


#: The largest file (ext4's with 4 KiB blocks): larger sizes give EFBIG, as there
#: (the global mount's too).
MAX_FILE_SIZE = ((1 << 32) - 1) << 12


#: The request handlers counted per opcode (`user.hutong.requests`).
OPCODES = ("lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir",
           "unlink", "rmdir", "symlink", "rename", "link", "open", "read", "write",
           "statfs", "release", "fsync", "setxattr", "getxattr", "listxattr",
           "removexattr", "flush", "opendir", "readdir", "releasedir", "fsyncdir",
           "access", "create")


def count_requests(ops: object, counts: dict[str, int]) -> None:
    """Make each handler of `ops` named in OPCODES count its calls in `counts`.

    The wrapper is a plain function returning the handler's coroutine, so a request
    costs one dict update and no extra coroutine frame."""
    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            counts[name] += 1
            return fn(*args)
        return call
    for name in OPCODES:
        counts[name] = 0
        setattr(ops, name, counted(name, getattr(ops, name)))


def _name(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    if len(raw) > 255:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    return name


def fuse_error(e: BaseException, what: str) -> pyfuse3.FUSEError:
    """The FUSE error of exception `e` raised by `what` (logged unless expected)."""
    if isinstance(e, pyfuse3.FUSEError):
        return e
    if isinstance(e, (HutongError, OSError)):
        code = getattr(e, "errno", None) or errno.EIO
        if code == errno.EIO:
            log.error("I/O error: %s", e)
        else:
            log.debug("%s: %s", what, e)
        return pyfuse3.FUSEError(code)
    log.error("unexpected error in %s", what, exc_info=e)
    return pyfuse3.FUSEError(errno.EIO)


class HutongOperations(pyfuse3.Operations):
    """pyfuse3 request handlers over an embedded store."""

    enable_writeback_cache = False

    def __init__(self, client: Client, options: MountOptions | None = None) -> None:
        super().__init__()
        self.client = client
        self.opts = options or MountOptions()
        self.cache = cached(client.store.source, self.opts.cache_bytes,
                            policy=self.opts.cache_policy, disk=open_tier(
                                client.state, self.opts.disk_cache, self.opts.disk_cache_dir,
                                self.opts.disk_cache_bytes, self.opts.cache_policy))
        self._pool = ThreadPoolExecutor(self.opts.threads, thread_name_prefix="hutong-fuse")
        self._names = NameHints()
        self.wb = WriteBack(client, self.cache, self._names, self.opts.commit_window,
                            self.opts.sync_interval)
        #: FUSE requests served, by opcode.
        self.requests: dict[str, int] = {}
        count_requests(self, self.requests)
        self._xattrs = Xattrs(client.engine, lambda: self.cache.stats().to_dict(),
                              self.wb.stats.to_dict,
                              lambda: {k: v for k, v in self.requests.items() if v})
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, list[tuple[bytes, Inode]]] = {}
        self._next_fh = itertools.count(1)
        #: Shutting down: new opens and namespace changes are refused (ESHUTDOWN).
        self.draining = False
        #: Shut down: writes are refused too (what they would add could not be committed).
        self.frozen = False
        self._writers_closed: asyncio.Event | None = None
        self.atimes = AccessTimes()
        #: Namespace changes; access times ride along (a retry finds them gone).
        self._txns = TxnBatcher(client.engine, self.atimes.flush)
        #: Directories this mount's transactions just wrote (a server engine's only):
        #: GETATTR after a change in them is answered from memory (gfs.mount_recent).
        self._recent: RecentDirs | None = None
        #: Listings of directories read ahead for lookups (gfs.mount_listings).
        self._listings: DirListings | None = None
        if client.engine.REMOTE and self.opts.attr_timeout > 0:
            recent = RecentDirs(self.opts.attr_timeout)
            listings = DirListings(min(self.opts.attr_timeout, self.opts.entry_timeout)) \
                if self.opts.entry_timeout > 0 else None

            def committed(inodes: Mapping[int, Inode | None],
                          entries: Mapping[tuple[int, str], int | None] | None) -> None:
                try:  # listings first and whatever happens: else our change stays hidden
                    if listings is not None:
                        listings.committed(inodes, entries)
                finally:
                    if entries is None:  # of unknown outcome: what it wrote is unknown
                        recent.clear()
                    else:
                        recent.committed(inodes)
            if client.engine.watch_inodes(committed):
                self._recent, self._listings = recent, listings
        #: Names whose lookup just missed (the kernel's create follows) and their
        #: directory: a create of such a name with O_TRUNC reads nothing
        self._misses = RecentMisses(self.opts.entry_timeout)
        #: Lookups on a server engine: those of concurrent requests share one query.
        self._lookups: LookupBatcher | None = None
        if client.engine.REMOTE:
            self._lookups = LookupBatcher(client.engine, self._pool, self._misses.missed)
        #: The reply to a lookup of a missing name: inode 0 with the entry timeout
        #: (a negative dentry), so repeated misses stay in the kernel.
        self._absent: pyfuse3.EntryAttributes | None = None
        if self.opts.entry_timeout > 0:
            self._absent = pyfuse3.EntryAttributes()
            self._absent.st_ino = 0
            self._absent.entry_timeout = self.opts.entry_timeout

    def close(self, commit: bool = True) -> None:
        """Stop the threads; with `commit`, commit the files created and never closed."""
        self._pool.shutdown(wait=True)
        self._txns.close()
        self.wb.close(commit)
        try:
            self.client.engine.transact(self.atimes.flush, tick=True)  # a retry finds them flushed
            self.wb.changed()
            self.wb.sync()  # with --sync-interval: the last changes made durable
        except Exception:
            log.exception("could not record the access times of files read")
        self.cache.close()

    # -- shutting down -------------------------------------------------------
    def _admit(self) -> None:
        """Refuse a new open or namespace change while shutting down."""
        if self.draining:
            raise pyfuse3.FUSEError(errno.ESHUTDOWN)

    def open_writers(self) -> int:
        """The number of handles open for writing."""
        return sum(1 for h in list(self._handles.values()) if h.dirty is not None)

    def commit_open(self) -> int:
        """Commit what every open file holds (blocking); returns how many were."""
        return self.wb.commit_open()

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
        except Exception as e:
            raise fuse_error(e, getattr(fn, "__name__", str(fn))) from None

    async def _now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short metadata read on the loop itself (an LMDB snapshot lookup takes
        microseconds, a trip to a worker thread far more); errors as in `_run`. On an
        engine whose reads wait for a server (PostgreSQL) it goes to a thread, so the
        loop serves other requests meanwhile."""
        if self.client.engine.REMOTE:
            return await self._run(fn, *args)
        return self._here(fn, *args)

    def _here(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a call that never waits on the loop itself; errors as in `_run`."""
        try:
            return fn(*args)
        except Exception as e:
            raise fuse_error(e, getattr(fn, "__name__", str(fn))) from None

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.opts.entry_timeout
        a.attr_timeout = self.opts.attr_timeout
        a.st_mode = namespace.st_mode(node)
        a.st_nlink = node.nlink
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = node.rdev
        size, mtime = self.wb.apparent(node)
        a.st_size = size
        a.st_blksize = 1 << 17
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = self.atimes.get(node)
        a.st_mtime_ns = mtime
        a.st_ctime_ns = node.ctime_ns
        return a

    # -- looking -------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        n = _name(name)
        new = self.wb.pending.find(parent_inode, n)
        if new is not None:  # a file created here, in memory: answered on the loop
            return self._attr(new)

        def op() -> Inode:
            pending = self.wb.pending.find(parent_inode, n)
            if pending is not None:
                return pending
            with self.client.engine.read_once() as txn:  # an entry and its inode
                if name in (b".", b".."):
                    parent = namespace.get(txn, parent_inode)
                    return parent if name == b"." else namespace.get(txn, parent.parent)
                try:
                    node = namespace.lookup(txn, parent_inode, n)
                except NotFoundError:  # the directory came along (no round trip)
                    where = txn.get_inode(parent_inode)
                    if where is not None and where.kind == Kind.DIR:
                        self._misses.missed(where, n)
                    raise
            self._names.remember(node.ino, parent_inode, n)
            return node
        if self._listings is not None and name not in (b".", b".."):
            listed = self._listed(parent_inode, n)
            if listed is not None:
                return listed
        try:
            if self._lookups is not None and name not in (b".", b".."):
                try:
                    node = await self._lookups.lookup(parent_inode, n)
                except Exception as e:
                    raise fuse_error(e, "lookup") from None
                self._names.remember(node.ino, parent_inode, n)
                return self._attr(node)
            return self._attr(await self._now(op))
        except pyfuse3.FUSEError as e:
            if e.errno != errno.ENOENT or self._absent is None:
                raise
            return self._absent  # the kernel keeps the miss for the entry timeout

    def _listed(self, parent: int, name: str) -> pyfuse3.EntryAttributes | None:
        """The answer to a lookup from a listing read ahead (on the loop; timeouts cut to
        what is left of the TTL), or None; starts reading the directory ahead when
        lookups in it keep coming (gfs.mount_listings)."""
        assert self._listings is not None
        got = self._listings.answer(parent, name)
        if got is None:
            if self._listings.wanted(parent):
                asyncio.get_running_loop().run_in_executor(
                    self._pool, self._listings.read, self.client.engine, parent)
            return None
        node, left = got
        # the rows a rename or unlink that follows would read, as answered
        self.client.engine.note_lookup(parent, name, node)
        if node is None:  # a miss, kept by the kernel for what is left (listings exist
            # only with an entry timeout); in a directory this mount just changed, the
            # create that follows reads nothing (its inode as committed here)
            where = None if self._recent is None else self._recent.get(parent)
            if where is not None:
                self._misses.missed(where, name)
            a = pyfuse3.EntryAttributes()  # (misses are kept)
            a.st_ino = 0
            a.entry_timeout = left
            return a
        self._names.remember(node.ino, parent, name)
        a = self._attr(node)
        a.entry_timeout = min(a.entry_timeout, left)
        a.attr_timeout = min(a.attr_timeout, left)
        return a

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        # in memory, on the loop: a file created here, or a directory this mount's
        # own change just committed (the kernel dropped its attributes after it)
        node = self.wb.pending.get(inode)
        if node is None and self._recent is not None:
            node = self._recent.get(inode)
        if node is not None:
            return self._attr(node)
        return self._attr(await self._now(self.wb.node, inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self._run(self.wb.node, inode)
        if node.kind != Kind.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target.encode()

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        def op() -> list[tuple[bytes, Inode]]:
            self.wb.settle()
            with self.client.engine.read() as txn:
                entries = namespace.readdir(txn, inode)
            for n, kid in entries:
                self._names.remember(kid.ino, inode, n)
            return [(n.encode(), kid) for n, kid in entries]
        entries = await self._run(op)
        fh = next(self._next_fh)
        self._dirs[fh] = entries
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for _ in readdir_replies(token, self._dirs.get(fh, []), start_id, self._attr):
            pass

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
    def _write_txn(self, fn: Callable[[WriteTxn], T], walks: Walks = (),
                   manifests: bool = False) -> T:
        """Run a namespace change; files created here but not yet committed are
        committed (empty) first, so the change sees them. `walks`: entries it will
        look up (`TxnBatcher.run`)."""
        self.wb.settle()

        try:  # concurrent changes share one transaction (fn is pure: it may run again)
            return self._txns.run(fn, walks, manifests=manifests)
        finally:
            self.wb.changed()

    async def _change(self, fn: Callable[[WriteTxn], T], walks: Walks, what: str,
                      manifests: bool = False) -> T:
        """`_write_txn` for a request, its errors as in `_run`: queued from the loop to
        the batcher's committer thread (no worker thread waits for the commit), unless
        files created here wait to be committed first (then on a worker thread)."""
        if self.wb.pending:
            return await self._run(self._write_txn, fn, walks, manifests)
        try:
            return await self._txns.submit(fn, walks, manifests=manifests)
        except Exception as e:
            raise fuse_error(e, what) from None
        finally:
            self.wb.changed()

    def _dir(self, txn: WriteTxn, ino: int) -> Inode:
        node = namespace.get(txn, ino)
        if node.kind != Kind.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def _free(self, txn: WriteTxn, parent: int, name: str) -> Inode:
        """Directory `parent`, in which `name` must not exist yet (EEXIST)."""
        node = self._dir(txn, parent)
        if txn.lookup(parent, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        return node

    async def _make(self, parent_inode: int, name: bytes,
                    fn: Callable[[WriteTxn, Inode, str], Inode]) -> pyfuse3.EntryAttributes:
        """Create entry `name` of `parent_inode` with `fn(txn, parent, name)` (as in
        `_make_now`, queued from the loop)."""
        self._admit()
        n = _name(name)
        node = await self._change(lambda txn: fn(txn, self._free(txn, parent_inode, n), n),
                                  [(parent_inode, [n])], "create")
        self._names.remember(node.ino, parent_inode, n)
        return self._attr(node)

    def _make_now(self, parent_inode: int, n: str,
                  fn: Callable[[WriteTxn, Inode, str], Inode]) -> Inode:
        """Create entry `n` on a thread: the transaction fails on a name taken when it
        commits (EEXIST; a writer that committed the name first makes it conflict and run
        again)."""
        node = self._write_txn(lambda txn: fn(txn, self._free(txn, parent_inode, n), n),
                               [(parent_inode, [n])])
        self._names.remember(node.ino, parent_inode, n)
        return node

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        def op(txn: WriteTxn, parent: Inode, n: str) -> Inode:
            perm, gid = namespace.inherit(parent, Kind.DIR, mode & 0o7777, ctx.gid)
            return namespace.mkdir_in(txn, parent, n, perm, uid=ctx.uid, gid=gid)
        return await self._make(parent_inode, name, op)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        def op(txn: WriteTxn, parent: Inode, n: str) -> Inode:
            _, gid = namespace.inherit(parent, Kind.SYMLINK, 0o777, ctx.gid)
            return namespace.symlink_in(txn, parent, n, os.fsdecode(target), uid=ctx.uid,
                                        gid=gid)
        return await self._make(parent_inode, name, op)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        kind = namespace.KIND_OF_S_IFMT.get(stat.S_IFMT(mode))
        if kind is None or kind in (Kind.DIR, Kind.SYMLINK):
            raise pyfuse3.FUSEError(errno.EINVAL)

        def op(txn: WriteTxn, parent: Inode, n: str) -> Inode:
            if kind == Kind.FILE:
                return _empty_file(txn, parent, n, mode, ctx)
            perm, gid = namespace.inherit(parent, kind, mode & 0o7777, ctx.gid)
            return namespace.mknod_in(txn, parent, n, kind, perm, rdev=rdev, uid=ctx.uid,
                                      gid=gid)
        return await self._make(parent_inode, name, op)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        def op(txn: WriteTxn, parent: Inode, n: str) -> Inode:
            return namespace.link_in(txn, namespace.get(txn, inode), parent, n)
        return await self._make(new_parent_inode, new_name, op)

    async def _remove(self, parent_inode: int, name: bytes, is_dir: bool) -> None:
        self._admit()
        n = _name(name)

        def op(txn: WriteTxn) -> None:
            txn.read_ahead([(parent_inode, [n])], manifests=not is_dir)
            parent = self._dir(txn, parent_inode)
            if is_dir:
                namespace.rmdir_in(txn, parent, n)
                return
            m = namespace.unlink_in(txn, parent, n)
            release(txn, [m] if m is not None else [])
        await self._change(op, [(parent_inode, [n])], "rmdir" if is_dir else "unlink",
                           not is_dir)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, False)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, True)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._admit()
        old, new = _name(name_old), _name(name_new)

        # both entries and their directories, with those of the changes committed with
        # it, in one round trip on a database server
        walks = [(parent_inode_old, [old]), (parent_inode_new, [new])]

        def op(txn: WriteTxn) -> int:
            txn.read_ahead(walks)  # (known by then: nothing asked)
            moving = namespace.lookup(txn, parent_inode_old, old)
            sparent, dparent = self._dir(txn, parent_inode_old), self._dir(txn, parent_inode_new)
            release(txn, namespace.rename_in(
                txn, sparent, old, dparent, new,
                noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                exchange=bool(flags & pyfuse3.RENAME_EXCHANGE)))
            return moving.ino
        ino = await self._change(op, walks, "rename")
        self._names.remember(ino, parent_inode_new, new)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if not any(h.ino == inode for h in list(self._handles.values())):
            self._admit()  # while shutting down, only files open here may change

        if fields.update_size and attr.st_size > MAX_FILE_SIZE:
            raise pyfuse3.FUSEError(errno.EFBIG)

        mode = attr.st_mode & 0o7777 if fields.update_mode else None
        uid = attr.st_uid if fields.update_uid else None
        gid = attr.st_gid if fields.update_gid else None
        atime = attr.st_atime_ns if fields.update_atime else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None

        def pending_change(n: Inode) -> Inode:
            return replace(n, mode=n.mode if mode is None else mode,
                           uid=n.uid if uid is None else uid,
                           gid=n.gid if gid is None else gid,
                           atime_ns=n.atime_ns if atime is None else atime,
                           mtime_ns=n.mtime_ns if mtime is None else mtime,
                           ctime_ns=namespace.now_ns())

        if not fields.update_size:  # of a file created here, not committed: in memory
            if mtime is not None:
                self.wb.set_mtime(inode, mtime)
            pending = self.wb.pending.update(inode, pending_change)
            if pending is not None:  # applied when the file is committed
                return self._attr(pending)

        def op() -> Inode:
            if fields.update_size:
                self.wb.truncate(inode, attr.st_size)
            if mtime is not None:
                self.wb.set_mtime(inode, mtime)  # applied again when the content is committed
            if fields.update_size and all(v is None for v in (mode, uid, gid, atime, mtime)):
                return self.wb.node(inode)
            # else a change, or none at all (chown(f, -1, -1)): ctime moves, as on ext4
            pending = self.wb.pending.update(inode, pending_change)
            if pending is not None:  # applied when the file is committed
                return pending

            def change(txn: WriteTxn) -> Inode:
                # (a create here redirected to the file another client made of its name)
                node = namespace.get(txn, self.wb.redirects.get(inode, inode))
                return namespace.set_attrs_of(txn, node, mode=mode,
                                              uid=uid, gid=gid, atime_ns=atime,
                                              mtime_ns=mtime)
            return self._write_txn(change)
        return self._attr(await self._run(op))

    # -- files ---------------------------------------------------------------
    def _new_handle(self, ino: int, reader: ManifestReader, flags: int) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        fh = next(self._next_fh)
        self._handles[fh] = _Handle(ino, reader, self.wb.open_writer(ino) if writable else None)
        if writable and flags & os.O_TRUNC:
            self.wb.truncate(ino, 0, reader)
        return fh

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        self._admit()

        def op() -> pyfuse3.FileInfo:
            reader, keep = self.wb.reader(inode)
            fh = self._new_handle(inode, reader, flags)
            if self._handles[fh].dirty is not None and _sgid_left(self.wb.node(inode), ctx):
                self._handles[fh].drop_sgid = True
            return pyfuse3.FileInfo(fh=fh, keep_cache=keep and not flags & os.O_TRUNC)
        return await self._run(op)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._admit()
        n = _name(name)
        # O_CREAT|O_TRUNC right after the kernel's lookup missed: the directory that
        # lookup read serves, nothing is read; the commit finds a name taken meanwhile
        known = self._misses.take(parent_inode, n) \
            if flags & (os.O_TRUNC | os.O_EXCL) == os.O_TRUNC else None

        # who may write into a file another client makes of the name before the close
        # (its groups read from /proc, ~30 us: not for root nor for O_EXCL, which
        # never opens another's file)
        caller = Caller(ctx.uid, ctx.gid, frozenset()
                        if ctx.uid == 0 or flags & os.O_EXCL else frozenset(_groups(ctx.pid)))

        def op() -> tuple[pyfuse3.FileInfo, Inode]:
            sgid = False
            if flags & os.O_EXCL:  # the entry committed now, or EEXIST (see _make_now)
                node = self._make_now(parent_inode, n,
                                      lambda txn, parent, n: _empty_file(txn, parent, n,
                                                                         mode, ctx))
            else:
                try:
                    node = self.wb.create(parent_inode, n, mode, ctx.uid, ctx.gid,
                                          known=known, trunc=bool(flags & os.O_TRUNC),
                                          caller=caller, append=bool(flags & os.O_APPEND))
                except ExistsError:  # made elsewhere since the kernel's lookup: opened
                    with self.client.engine.read() as txn:
                        node = namespace.lookup(txn, parent_inode, n)
                    # the kernel checked only the directory: their file's mode, here
                    if not may_open(node, caller, wanted(flags)):
                        raise pyfuse3.FUSEError(errno.EACCES) from None
                    sgid = _sgid_left(node, ctx)
            reader, _ = self.wb.reader(node.ino)
            fh = self._new_handle(node.ino, reader, flags)
            if sgid and self._handles[fh].dirty is not None:
                self._handles[fh].drop_sgid = True
            return pyfuse3.FileInfo(fh=fh), node
        # in memory alone when nothing is read (or a read takes microseconds) and an
        # inode number is reserved: on the loop (a trip to a worker costs more than the
        # call); else on a thread
        alone = known is not None or not self.client.engine.REMOTE
        fi, node = self._here(op) if alone and not flags & os.O_EXCL and \
            self.wb.pending.can_add_now() else await self._run(op)
        return fi, self._attr(node)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)

        def op() -> bytes:
            if not h.accessed:
                h.accessed = True
                self.atimes.read(self.wb.node(h.ino))
            data = self.wb.read(h.ino, size, off)
            if data is not None:
                return data
            try:
                return h.reader.pread(off, size)
            except HutongError as e:
                log.error("read of %s failed at offset %d: %s", h.reader.path, off, e)
                raise pyfuse3.FUSEError(errno.EIO) from None
        return await self._run(op)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles.get(fh)
        if h is None or h.dirty is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if self.frozen:
            raise pyfuse3.FUSEError(errno.ESHUTDOWN)
        if off + len(buf) > MAX_FILE_SIZE:
            raise pyfuse3.FUSEError(errno.EFBIG)
        if h.drop_sgid and buf:
            h.drop_sgid = False
            await self._run(self._clear_sgid, h.ino)
        n = self.wb.write_nowait(h.dirty, h.reader, buf, off)  # memory only: on the loop
        if n is not None:
            return n
        return await self._run(self.wb.write, h.dirty, h.reader, buf, off)

    def _clear_sgid(self, ino: int) -> None:
        def change(txn: WriteTxn) -> None:
            node = namespace.get(txn, ino)
            namespace.set_attrs_of(txn, node, mode=node.mode & ~stat.S_ISGID)
        self._write_txn(change)

    async def _commit(self, d: DirtyFile) -> None:
        """Commit `d` through the group committer; the wait holds no pool thread, so
        the writers of other files keep going and join the same commit."""
        fut = self.wb.commit_future(d)
        if fut is None:
            return
        try:
            await asyncio.wrap_future(fut)
        except Exception as e:
            raise fuse_error(e, "commit") from None

    async def flush(self, fh: int) -> None:
        h = self._handles.get(fh)
        if h is not None and (h.dirty is not None or h.ino in self.wb.pending
                              or h.ino in self.wb.lost):
            await self._commit(self.wb.dirty_of(h.ino))

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.flush(fh)
        await self._run(self.wb.sync)  # what close and metadata changes left unsynced

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Make the directory's changes durable (and every other committed one)."""
        await self._run(self.wb.sync)

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        try:
            if h is not None:
                await self._release(h)
        finally:
            if self._writers_closed is not None and not self.open_writers():
                self._writers_closed.set()

    async def _release(self, h: _Handle) -> None:
        try:
            if h.dirty is None:
                if h.ino in self.wb.pending or h.ino in self.wb.lost:
                    await self._commit(self.wb.dirty_of(h.ino))
                return
            try:
                await self._commit(h.dirty)
            finally:
                self.wb.drop_writer(h.dirty)  # in memory (closes a spool file at most)
        finally:
            if h.ino in self.wb.lost and all(o.ino != h.ino for o in self._handles.values()):
                self.wb.forget_lost(h.ino)  # its last handle: the failure was reported

    # -- extended attributes -------------------------------------------------
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # the kernel dropped these inodes: a create's redirect is no longer asked for
        for ino, _ in inode_list:
            self.wb.redirects.pop(ino, None)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        inode = self.wb.redirects.get(inode, inode)
        if not name.startswith(b"user.") or (inode in self.wb.pending
                                               and not name.startswith(HUTONG_XATTR)):
            # only user.* names are stored (the kernel asks security.capability on
            # every write); a new file has none yet: answered on the loop
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

        def op() -> bytes:
            if inode in self.wb.pending:
                self.wb.settle()  # the facts of a new file: commit it first
            return self._xattrs.get(inode, name)
        return await self._run(op)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        inode = self.wb.redirects.get(inode, inode)
        if inode in self.wb.pending:
            return []
        return await self._run(self._xattrs.names, inode)

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self._admit()
        inode = self.wb.redirects.get(inode, inode)
        await self._run(self._write_txn, lambda txn: self._xattrs.set(txn, inode, name, value))

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._admit()
        inode = self.wb.redirects.get(inode, inode)
        await self._run(self._write_txn, lambda txn: self._xattrs.remove(txn, inode, name))


def _empty_file(txn: WriteTxn, parent: Inode, name: str, mode: int,
                ctx: pyfuse3.RequestContext) -> Inode:
    """Make empty file `name` in `parent` (mode and group as inherited) in `txn`."""
    perm, gid = namespace.inherit(parent, Kind.FILE, mode & 0o7777, ctx.gid)
    namespace.write_file_in(txn, parent, name, [], mode=perm, uid=ctx.uid, gid=gid)
    return namespace.lookup(txn, parent.ino, name)


#: Kernel read-ahead asked for the mount (KiB), so sequential reads arrive in large
#: requests; set through the mount's bdi when permitted (root), else left as is.
READ_AHEAD_KB = 8192


def _raise_read_ahead(mountpoint: str) -> None:
    """Raise the kernel read-ahead of the FUSE connection mounted at `mountpoint`.

    Called on a thread once the mount is live: the kernel sets the connection's
    read-ahead when it gets the reply to FUSE_INIT (at most what it proposed,
    128 KiB), so a value written before that is undone. The stat of the mount
    point returns once the loop serves requests, which is after FUSE_INIT; the
    device number comes from /proc/self/mountinfo.
    """
    try:
        os.stat(mountpoint)
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


class Served(Drainable, Protocol):
    """What `serve` needs of a mount's request handlers (a pyfuse3.Operations)."""

    def close(self, commit: bool = True) -> None:
        """Stop the handlers' threads; with `commit`, commit what open files hold."""
        ...


def serve(ops: Served, mp: str, opts: ServeOptions, *, fsname: str,
          ready: Callable[[], None] | None, label: str) -> None:
    """Serve the handlers `ops` at mount point `mp` (checked by `prepare`) until
    unmounted or signalled: SIGINT and SIGTERM drain, commit and unmount (see
    gfs.mount_shutdown); `ready` is called once the mount is live. Raises HutongError
    if committing at shutdown failed."""
    pyfuse3.asyncio.enable()
    fuse_opts = set(pyfuse3.default_options)
    fuse_opts |= {f"fsname={fsname}", "subtype=hutong"}
    if opts.allow_other:
        fuse_opts.add("allow_other")
    if opts.debug:
        fuse_opts.add("debug")
    pyfuse3.init(cast(pyfuse3.Operations, ops), mp, fuse_opts)
    threading.Thread(target=_raise_read_ahead, args=(mp,), name="hutong-read-ahead",
                     daemon=True).start()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    shutdown = Drain(ops, opts.drain_timeout, pyfuse3.terminate)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.signal)
        if ready is not None:
            loop.call_soon(ready)
        log.info("mounted %s at %s", label, mp)
        loop.run_until_complete(pyfuse3.main())
    finally:
        try:
            pyfuse3.close(unmount=True)
        finally:
            if shutdown.task is not None:  # unmounted from outside while draining
                shutdown.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(shutdown.task)
            ops.close(commit=not shutdown.forced)
            loop.close()
            log.info("unmounted %s", mp)
    if shutdown.failed:
        raise HutongError(f"unmounted {mp}, but some open files could not be committed "
                          "(see the log above); `hutong fsck` checks the store")


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
    ops = HutongOperations(client, opts)
    serve(ops, mp, opts, fsname="hutong", ready=ready, label=str(client.state))


__all__ = ["HutongOperations", "MountOptions", "ServeOptions", "Served", "fuse_error",
           "readdir_replies", "run_mount", "serve",
           "unmount"]
