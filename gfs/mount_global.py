"""The global mount: a FUSE file system over any `Namespace` (the federation or the
embedded store), the pyfuse3 request handlers.

    hutong mount /mnt/global --profile work

Metadata comes through a TTL cache (gfs.meta_cache), inode numbers from a local
table (gfs.mount_inodes), writes go through local spools committed close-to-open
(gfs.mount_spool), reads through the namespace's own read stack. The start-up,
shutdown (SIGINT/SIGTERM drain) and stale-mount handling are the embedded mount's
(gfs.mount.serve). What it promises is in docs/globalmount.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import stat as statmod
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, TypeVar

import pyfuse3

from gfs.errors import (
    ExistsError,
    HutongError,
    IsADirError,
    NotADirError,
    NotEmptyError,
    NotFoundError,
    NotPermittedError,
    ReadOnlyError,
    UnavailableSiteError,
)
from gfs.meta_cache import DEFAULT_MAX_ENTRIES, DEFAULT_TTL, MetaCache
from gfs.mount import MAX_FILE_SIZE, ServeOptions, fuse_error, readdir_replies, serve
from gfs.mount_inodes import ROOT_INO, InodeTable, entity_scope, one_scope
from gfs.mount_points import prepare
from gfs.mount_spool import Spool
from gfs.namespace import DEFAULT_DIR_MODE  # a new directory's (others: a chmod after)
from gfs.namespace_api import SPECIAL_KINDS, Namespace, Stat
from gfs.paths import child_path, parent_of
from gfs.read import ManifestReader

log = logging.getLogger("hutong.mount")

T = TypeVar("T")

_KIND_BITS = {"file": statmod.S_IFREG, "dir": statmod.S_IFDIR, "symlink": statmod.S_IFLNK,
              "fifo": statmod.S_IFIFO, "socket": statmod.S_IFSOCK,
              "chardev": statmod.S_IFCHR, "blockdev": statmod.S_IFBLK}
_SPECIAL_KINDS = {bits: kind for kind, bits in _KIND_BITS.items() if kind in SPECIAL_KINDS}
#: Readers of committed versions kept for reuse by later opens of the same version.
KEPT_READERS = 64

#: (version, size, mtime_ns): what tells one committed version of a file from another.
Version = tuple[int, int, int]


@dataclass
class GlobalMountOptions(ServeOptions):
    """Tunables of a global mount."""

    #: Seconds metadata (stats, listings) is trusted, here and in the kernel.
    meta_ttl: float = DEFAULT_TTL
    #: Stats plus listed names the metadata cache keeps at most.
    meta_entries: int = DEFAULT_MAX_ENTRIES
    #: Seconds a metadata call or read may take before the caller gets EHOSTUNREACH.
    op_timeout: float = 60.0
    #: Directory of the write spools (the system's temporary directory if None).
    spool_dir: str | None = None
    #: Show every entry as owned by the user running the mount (True), or with the
    #: owner the back end records (False). Who may read or change what is decided by
    #: the federation (keys, tokens, grants), not by user ids of other machines.
    own_everything: bool = True


@dataclass
class _Shared:
    """A reader of one committed version of a file, kept after its handle is released:
    a later open that finds the same version (one stat) and the reader idle reuses it
    and fetches no manifest (a handle opened while it is in use gets its own, so that
    reads of several handles run in parallel)."""

    path: str
    version: Version
    reader: BinaryIO
    lock: threading.Lock
    users: int = 0


@dataclass
class _Handle:
    ino: int
    path: str
    #: The committed version being read (None when the handle uses the spool).
    reader: BinaryIO | None
    spool: Spool | None
    writable: bool
    lock: threading.Lock
    #: (version, size, mtime_ns) of the committed version `reader` reads, when known
    version: Version | None = None
    #: The shared reader `reader` belongs to (None: the handle's own).
    shared: _Shared | None = None


def _name(raw: bytes) -> str:
    if len(raw) > 255:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    if name in (".", "..") or "/" in name or "\0" in name:
        raise pyfuse3.FUSEError(errno.EINVAL)
    return name


class GlobalOperations(pyfuse3.Operations):
    """pyfuse3 request handlers over a `Namespace`."""

    enable_writeback_cache = False

    def __init__(self, ns: Namespace, options: GlobalMountOptions | None = None, *,
                 scope: Callable[[str], str] = entity_scope) -> None:
        super().__init__()
        self.ns = ns
        self.opts = options or GlobalMountOptions()
        self.meta = MetaCache(ns, ttl=self.opts.meta_ttl, max_entries=self.opts.meta_entries)
        self.inodes = InodeTable(scope)
        self._pool = ThreadPoolExecutor(self.opts.threads, thread_name_prefix="hutong-gfuse")
        self._handles: dict[int, _Handle] = {}
        #: inode -> the version whose pages the kernel may still cache (read-only opens)
        self._page_versions: dict[int, Version] = {}
        #: inode -> the reader of the version its read-only handles read (gfs.mount_global
        #: _Shared), least recently opened first
        self._shared: OrderedDict[int, _Shared] = OrderedDict()
        self._shared_lock = threading.Lock()
        self._dirs: dict[int, list[tuple[bytes, Stat]]] = {}
        #: Spools by namespace path (one per file open for writing in this mount).
        self._spools: dict[str, Spool] = {}
        self._spool_lock = threading.Lock()
        self._next_fh = itertools.count(1)
        self.draining = False
        self.frozen = False
        self._writers_closed: asyncio.Event | None = None
        self._uid, self._gid = os.getuid(), os.getgid()
        self._warned_link = False

    def close(self, commit: bool = True) -> None:
        """Stop the threads; with `commit`, commit what open files hold."""
        self._pool.shutdown(wait=True)
        if commit:
            try:
                self.commit_open()
            except Exception:
                log.exception("could not commit the files still open")
        for sp in list(self._spools.values()):
            sp.close()
        with self._shared_lock:
            kept, self._shared = list(self._shared.values()), OrderedDict()
        for sh in kept:
            sh.reader.close()

    # -- shutting down (gfs.mount_shutdown.Drainable) ------------------------------------
    def open_writers(self) -> int:
        return sum(1 for h in list(self._handles.values()) if h.writable)

    def commit_open(self) -> int:
        done = 0
        for sp in list(self._spools.values()):
            if sp.commit(self.ns):
                self.meta.invalidate(sp.path)
                done += 1
        return done

    async def writers_closed(self) -> None:
        self._writers_closed = asyncio.Event()
        if self.open_writers():
            await self._writers_closed.wait()

    def _admit(self) -> None:
        if self.draining:
            raise pyfuse3.FUSEError(errno.ESHUTDOWN)

    # -- plumbing -------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any, bounded: bool = True) -> T:
        """Run a blocking call on the pool, bounded by `op_timeout` unless it commits;
        gfs errors become their errno."""
        loop = asyncio.get_running_loop()
        what = getattr(fn, "__name__", str(fn))
        try:
            fut = loop.run_in_executor(self._pool, fn, *args)
            if not bounded:
                return await fut
            return await asyncio.wait_for(fut, self.opts.op_timeout)
        except TimeoutError:
            log.warning("%s gave no answer in %g s: EHOSTUNREACH", what, self.opts.op_timeout)
            raise pyfuse3.FUSEError(errno.EHOSTUNREACH) from None
        except UnavailableSiteError as e:
            log.warning("%s: %s", what, e)
            raise pyfuse3.FUSEError(errno.EHOSTUNREACH) from None
        except Exception as e:
            raise fuse_error(e, what) from None

    def _path(self, ino: int) -> str:
        try:
            return self.inodes.path(ino)
        except NotFoundError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _spool_at(self, path: str) -> Spool | None:
        with self._spool_lock:
            return self._spools.get(path)

    def _stat(self, path: str) -> Stat:
        """The Stat of `path` as this mount sees it: a file open for writing here shows
        its uncommitted size (a created one exists before its first commit)."""
        sp = self._spool_at(path)
        if sp is not None and sp.created:
            return Stat(path, "file", sp.size, statmod.S_IFREG | (sp.perm or 0o644),
                        os.getuid(), os.getgid(), sp.mtime_ns, sp.mtime_ns, sp.mtime_ns,
                        0, 0, "")
        st = self.meta.stat(path)
        if sp is not None:
            st = replace(st, size=sp.size, mtime_ns=sp.mtime_ns)
        return st

    async def _stat_now(self, path: str) -> Stat:
        """`_stat`, answered on the event loop when the metadata cache holds a fresh
        answer (most lookups and getattrs: no hop to a thread), else on the pool."""
        if self._spool_at(path) is None:
            try:
                st = self.meta.cached(path)
            except NotFoundError:
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            if st is not None:
                return st
        return await self._run(self._stat, path)

    def _owner(self, st: Stat) -> tuple[int, int]:
        if self.opts.own_everything:
            return self._uid, self._gid
        return st.uid, st.gid

    def _attr(self, st: Stat, ino: int | None = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino if ino is not None else self.inodes.ino_for(st)
        a.generation = 0
        a.entry_timeout = self.opts.meta_ttl
        a.attr_timeout = self.opts.meta_ttl
        mode = st.mode
        if not statmod.S_IFMT(mode):
            mode |= _KIND_BITS.get(st.kind, statmod.S_IFREG)
        a.st_mode = mode
        a.st_nlink = 2 if st.kind == "dir" else 1
        a.st_uid, a.st_gid = self._owner(st)
        a.st_rdev = 0
        a.st_size = len(st.target.encode()) if st.kind == "symlink" else st.size
        a.st_blksize = 1 << 17
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = st.atime_ns
        a.st_mtime_ns = st.mtime_ns
        a.st_ctime_ns = st.ctime_ns
        return a

    def _entry(self, st: Stat) -> pyfuse3.EntryAttributes:
        """Attributes of an entry handed to the kernel by lookup/create (counted)."""
        a = self._attr(st)
        self.inodes.looked_up(a.st_ino)
        return a

    # -- looking --------------------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._path(parent_inode)
        if name == b".":
            return self._entry(await self._run(self._stat, parent))
        if name == b"..":
            return self._entry(await self._run(self._stat, parent_of(parent)))
        path = child_path(parent, _name(name))
        return self._entry(await self._stat_now(path))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        return self._attr(await self._stat_now(self._path(inode)), inode)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        st = await self._run(self._stat, self._path(inode))
        if st.kind != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return st.target.encode()

    def _listing(self, path: str) -> list[tuple[bytes, Stat]]:
        """The entries of `path` in the back end's order (the federation's root: the
        caller's own entity first), then the files created here and not committed."""
        entries = {st.name: st for st in self.meta.ls(path)}
        prefix = path.rstrip("/") + "/"
        with self._spool_lock:
            created = [p for p, sp in self._spools.items() if sp.created]
        for p in created:
            if p.startswith(prefix) and "/" not in p[len(prefix):]:
                entries[p[len(prefix):]] = self._stat(p)
        return [(n.encode(), st) for n, st in entries.items()]

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self._path(inode)
        entries = await self._run(self._listing, path)
        fh = next(self._next_fh)
        self._dirs[fh] = entries
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for a in readdir_replies(token, self._dirs.get(fh, []), start_id, self._attr):
            self.inodes.looked_up(a.st_ino)  # readdirplus counts as a lookup

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)
            self._page_versions.pop(ino, None)
            self._unshare(ino)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 1 << 17
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 40  # the federation reports no limit
        s.f_files = s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    # -- namespace changes ----------------------------------------------------------------
    async def _change(self, fn: Callable[[], None], *paths: str,
                      subtree: bool = False) -> None:
        self._admit()

        def forget() -> None:
            for p in paths:
                self.meta.invalidate(p, subtree=subtree)

        def op() -> None:
            try:
                fn()
            except ReadOnlyError:
                raise  # refused before anything changed: what is cached stays true
            except BaseException:
                forget()  # it may have changed something before failing
                raise
            forget()
        await self._run(op)

    async def _made(self, path: str) -> pyfuse3.EntryAttributes:
        return self._entry(await self._run(self.meta.refresh, path))

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = child_path(self._path(parent_inode), _name(name))

        perm = mode & 0o7777 & ~ctx.umask

        def op() -> None:
            self.ns.mkdir(path)
            if perm != DEFAULT_DIR_MODE:
                self.ns.chmod(path, perm)
        await self._change(op, path)
        return await self._made(path)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = child_path(self._path(parent_inode), _name(name))
        await self._change(lambda: self.ns.symlink(path, os.fsdecode(target)), path)
        return await self._made(path)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = child_path(self._path(parent_inode), _name(name))
        perm = mode & 0o7777 & ~ctx.umask
        if statmod.S_ISREG(mode):
            await self._change(lambda: self.ns.write_bytes(path, b"", perm=perm), path)
            return await self._made(path)
        kind = _SPECIAL_KINDS.get(statmod.S_IFMT(mode))
        if kind is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        # a FIFO or socket (a device node where the back end makes them: the
        # federation refuses them with EPERM, see FederatedNamespace.mknod)
        await self._change(lambda: self.ns.mknod(path, kind, perm, rdev), path)
        return await self._made(path)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if not self._warned_link:
            self._warned_link = True
            log.warning("hard link refused (EPERM): the global mount names every entry by "
                        "its path, one per entry, across the federation; copy the file, "
                        "or make a symlink")
        raise pyfuse3.FUSEError(errno.EPERM)

    def _remove(self, path: str, is_dir: bool) -> None:
        st = self._stat(path)
        if is_dir and st.kind != "dir":
            raise NotADirError(path)
        if not is_dir and st.kind == "dir":
            raise IsADirError(path)
        sp = self._spool_at(path)
        if sp is not None and sp.created:  # never committed: nothing to remove remotely
            with self._spool_lock:
                self._spools.pop(path, None)
                sp.path = ""
            return
        self.ns.rm(path)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = child_path(self._path(parent_inode), _name(name))
        await self._change(lambda: self._remove(path, False), path)
        self.inodes.removed(path)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = child_path(self._path(parent_inode), _name(name))
        await self._change(lambda: self._remove(path, True), path, subtree=True)
        self.inodes.removed(path)

    def _rename(self, src: str, dst: str, flags: int) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise NotPermittedError(src, "atomic exchange is not supported by the "
                                    "global mount")
        sst = self._stat(src)
        sp = self._spool_at(src)
        if sp is not None and sp.commit(self.ns):  # open for writing here: content first
            self.meta.invalidate(src)  # (a created file is settled by the same commit)
        try:
            dst_st: Stat | None = self._stat(dst)
        except NotFoundError:
            dst_st = None
        if dst_st is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise ExistsError(dst)
            if sst.kind == "dir" and dst_st.kind != "dir":
                raise NotADirError(dst)
            if sst.kind != "dir" and dst_st.kind == "dir":
                raise IsADirError(dst)
            if dst_st.kind == "dir":
                if self.meta.ls(dst):
                    raise NotEmptyError(dst)
                self.ns.rm(dst)  # POSIX: a directory replaces an empty one
                self.meta.invalidate(dst, subtree=True)
        self.ns.mv(src, dst)
        with self._spool_lock:
            moved = self._spools.pop(src, None)
            if moved is not None:
                moved.path = dst
                self._spools[dst] = moved

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        src = child_path(self._path(parent_inode_old), _name(name_old))
        dst = child_path(self._path(parent_inode_new), _name(name_new))
        await self._change(lambda: self._rename(src, dst, flags), src, dst, subtree=True)
        self.inodes.removed(dst)
        self.inodes.moved(src, dst)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        if fields.update_size and attr.st_size > MAX_FILE_SIZE:
            raise pyfuse3.FUSEError(errno.EFBIG)

        def op() -> None:
            uid, gid = self._owner(self._stat(path))
            if (fields.update_uid and attr.st_uid != uid) or (
                    fields.update_gid and attr.st_gid != gid):
                raise NotPermittedError(path, "the global mount does not change owners")
            if fields.update_size:
                self._truncate(path, attr.st_size)
            sp = self._spool_at(path)
            created = sp is not None and sp.created  # nothing in the namespace yet
            if fields.update_mode:
                if sp is not None and created:
                    sp.perm = attr.st_mode & 0o7777  # given at its first commit
                else:
                    self.ns.chmod(path, attr.st_mode & 0o7777)
            if fields.update_atime or fields.update_mtime:
                if sp is not None and fields.update_mtime:
                    sp.mtime_ns = attr.st_mtime_ns
                if not created:
                    self.ns.utime(path, attr.st_atime_ns if fields.update_atime else None,
                                  attr.st_mtime_ns if fields.update_mtime else None)
        if not (fields.update_size and self._spool_at(path) is not None):
            self._admit()
        await self._change(op, path)
        return self._attr(await self._run(self._stat, path), inode)

    def _truncate(self, path: str, size: int) -> None:
        sp = self._spool_at(path)
        if sp is not None:
            sp.truncate(size)
            return
        if self.meta.refresh(path).kind == "dir":
            raise IsADirError(path)
        tmp = Spool(path, directory=self.opts.spool_dir)  # the file is not open here
        try:
            if size:
                with self.ns.open(path, "rb") as src:
                    tmp.load(src)
            tmp.truncate(size)
            tmp.commit(self.ns)
        finally:
            tmp.close()

    # -- files ----------------------------------------------------------------------------
    def _unshare(self, ino: int) -> None:
        """Stop keeping the reader of `ino` (closed now if no handle uses it)."""
        with self._shared_lock:
            sh = self._shared.pop(ino, None)
            idle = sh is not None and sh.users == 0
        if idle and sh is not None:
            sh.reader.close()

    def _committed(self, ino: int, path: str) -> tuple[BinaryIO, threading.Lock,
                                                       Version | None, _Shared | None]:
        """A reader of the version of `path` committed now (close-to-open), its lock,
        that version (None if not known) and the shared reader it is. When a reader of
        `ino` is kept and idle, one stat (none while a lease promises the file's stat)
        tells whether it still reads the committed version (then it is reused: no
        manifest fetched); else the file is opened."""
        with self._shared_lock:
            kept = self._shared.get(ino)
            idle = kept is not None and kept.users == 0
        if kept is not None and idle and kept.path == path:
            st = self.meta.current(path)  # a lease: no round trip (docs/leases.md)
            if st.kind == "dir":
                raise IsADirError(path)
            with self._shared_lock:
                if (st.version, st.size, st.mtime_ns) == kept.version and \
                        self._shared.get(ino) is kept and kept.users == 0:
                    kept.users += 1
                    self._shared.move_to_end(ino)
                    return kept.reader, kept.lock, kept.version, kept
        opened, reader = self.meta.open(path)
        if opened is None:  # (not known: the kernel's pages are dropped, nothing shared)
            return reader, threading.Lock(), None, None
        sh = _Shared(path, (opened.version, opened.size, opened.mtime_ns), reader,
                     threading.Lock(), users=1)
        closing: list[_Shared] = []
        with self._shared_lock:
            old = self._shared.pop(ino, None)
            if old is not None and old.users == 0:
                closing.append(old)
            self._shared[ino] = sh
            while len(self._shared) > KEPT_READERS:
                _, out = self._shared.popitem(last=False)
                if out.users == 0:
                    closing.append(out)
        for out in closing:
            out.reader.close()
        return reader, sh.lock, sh.version, sh

    def _let_go(self, h: _Handle) -> None:
        """Release the reader of handle `h`: its own is closed; a shared one is closed
        when its last user goes and it is no longer kept."""
        sh = h.shared
        if sh is None:
            if h.reader is not None:
                h.reader.close()
            return
        with self._shared_lock:
            sh.users -= 1
            idle = sh.users == 0 and self._shared.get(h.ino) is not sh
        if idle:
            sh.reader.close()

    def _open(self, path: str, flags: int, created: bool, perm: int | None,
              ino: int = 0) -> _Handle:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        with self._spool_lock:
            sp = self._spools.get(path)
            if sp is None and (writable or created):
                sp = Spool(path, directory=self.opts.spool_dir, created=created, perm=perm)
                self._spools[path] = sp
                fresh = not created
            else:
                fresh = False
            if sp is not None:
                sp.handles += 1
        try:
            reader: BinaryIO | None = None
            version: Version | None = None
            lock, shared = threading.Lock(), None
            if sp is None:  # close-to-open: the version committed now
                reader, lock, version, shared = self._committed(ino, path)
            elif fresh and not flags & os.O_TRUNC:
                st = self.meta.refresh(path)
                if st.kind == "dir":
                    raise IsADirError(path)
                with self.ns.open(path, "rb") as src:
                    sp.load(src)
            if sp is not None and writable and flags & os.O_TRUNC:
                sp.truncate(0)
        except BaseException:
            if sp is not None:
                self._drop_spool(sp)
            raise
        return _Handle(ino, path, reader, sp, writable, lock, version, shared)

    def _drop_spool(self, sp: Spool) -> None:
        with self._spool_lock:
            sp.handles -= 1
            if sp.handles > 0:
                return
            if self._spools.get(sp.path) is sp:
                del self._spools[sp.path]
        sp.close()

    def _new_fh(self, h: _Handle, ino: int) -> int:
        h.ino = ino
        fh = next(self._next_fh)
        self._handles[fh] = h
        return fh

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        self._admit()
        path = self._path(inode)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY  # copies the file: unbounded
        h = await self._run(self._open, path, flags, False, None, inode,
                            bounded=not writable)
        try:
            # close-to-open: what the kernel cached of the file's size may be older
            pyfuse3.invalidate_inode(inode, attr_only=True)
        except OSError as e:
            log.debug("attribute invalidation of %s: %s", path, e)
        if h.spool is None and any(o.ino == inode and o.spool is None
                                   and o.version != h.version
                                   for o in self._handles.values()):
            # Handles still open here read an older version through the kernel's pages,
            # which every handle of the inode shares: this one reads past them (direct
            # I/O) and leaves them be, so that each handle reads the version it opened.
            return pyfuse3.FileInfo(fh=self._new_fh(h, inode), keep_cache=True,
                                    direct_io=True)
        # The kernel's page cache of the file survives this open only if it holds the
        # version this handle reads (the last read-only open saw the same one).
        keep = h.version is not None and self._page_versions.get(inode) == h.version
        if h.version is None:
            self._page_versions.pop(inode, None)
        else:
            self._page_versions[inode] = h.version
        return pyfuse3.FileInfo(fh=self._new_fh(h, inode), keep_cache=keep)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._admit()
        path = child_path(self._path(parent_inode), _name(name))

        def op() -> tuple[_Handle, Stat]:
            try:
                self._stat(path)
            except NotFoundError:
                pass
            else:
                raise ExistsError(path)
            self._stat(parent_of(path))  # the parent must exist (ENOENT otherwise)
            h = self._open(path, flags, True, mode & 0o7777 & ~ctx.umask)
            return h, self._stat(path)  # the spool's: the cache is told at the commit
        h, st = await self._run(op)
        a = self._entry(st)
        return pyfuse3.FileInfo(fh=self._new_fh(h, a.st_ino)), a

    def _read(self, h: _Handle, off: int, size: int) -> bytes:
        if h.spool is not None:
            return h.spool.read(off, size)
        assert h.reader is not None
        with h.lock:
            h.reader.seek(off)
            return h.reader.read(size)

    def _read_cached(self, h: _Handle, off: int, size: int) -> bytes | None:
        """The bytes of a read of a committed version when every one is in the memory
        tier now (answered on the loop: no hop to a pool thread and back), else None.
        Never waits: a reader busy on a pool thread is left to it."""
        raw = getattr(h.reader, "raw", None) if h.spool is None else None
        if not isinstance(raw, ManifestReader) or not h.lock.acquire(blocking=False):
            return None
        try:
            return raw.cached(off, size)
        finally:
            h.lock.release()

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        data = self._read_cached(h, off, size)
        if data is not None:
            return data
        return await self._run(self._read, h, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles.get(fh)
        if h is None or not h.writable or h.spool is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if self.frozen:
            raise pyfuse3.FUSEError(errno.ESHUTDOWN)
        if off + len(buf) > MAX_FILE_SIZE:
            raise pyfuse3.FUSEError(errno.EFBIG)
        return await self._run(h.spool.write, off, buf)

    def _commit(self, h: _Handle) -> None:
        sp = h.spool
        if sp is None or not sp.path:
            return
        created = sp.created
        try:
            sp.commit(self.ns)
        except ReadOnlyError as e:  # refused before anything changed: the cache stays
            log.warning("commit of %s failed: %s", sp.path, e)
            raise
        except HutongError as e:
            log.warning("commit of %s failed: %s", sp.path, e)
            self.meta.invalidate(sp.path)
            raise
        self.meta.invalidate(sp.path)
        if created:  # it keeps the number it was created with
            self.inodes.expect(sp.path, h.ino)

    async def flush(self, fh: int) -> None:
        h = self._handles.get(fh)
        if h is not None and h.spool is not None:
            created = h.spool.created
            try:
                await self._run(self._commit, h, bounded=False)
            except pyfuse3.FUSEError as failed:
                if created:  # the file never came to be: the kernel must not keep it
                    # (a failure here is logged: the commit's error is the one to report)
                    with contextlib.suppress(pyfuse3.FUSEError):
                        await self._run(self._unmade, h.path)
                raise failed from None

    def _unmade(self, path: str) -> None:
        """Tell the kernel that `path`, created here but never committed, is not there:
        the entry our create answered would otherwise outlive the failure for the TTL.
        Run on a pool thread: the kernel may wait for the directory's lock."""
        with self._spool_lock:  # our own lookups must not find it either (the
            sp = self._spools.pop(path, None)  # release comes after close returns)
            if sp is not None:
                sp.path = ""
        parent = self.inodes.at(parent_of(path))
        if parent is None:
            return
        try:
            pyfuse3.invalidate_entry(parent, os.fsencode(path.rsplit("/", 1)[-1]))
        except OSError as e:  # the kernel no longer holds it
            log.debug("entry invalidation of %s: %s", path, e)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.flush(fh)

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        try:
            if h is not None:
                await self._run(self._release, h, bounded=False)
        finally:
            if self._writers_closed is not None and not self.open_writers():
                self._writers_closed.set()

    def _release(self, h: _Handle) -> None:
        try:
            self._let_go(h)
            if h.spool is not None:
                try:
                    self._commit(h)  # normally done by the flush of close()
                except HutongError as e:
                    log.error("%s: not committed at release: %s", h.path, e)
        finally:
            if h.spool is not None:
                self._drop_spool(h.spool)

    # -- extended attributes --------------------------------------------------------------
    def _xattrs(self, ino: int) -> dict[str, bytes]:
        path = self._path(ino)
        sp = self._spool_at(path)
        if sp is not None and sp.created:
            return {}
        return self.ns.xattrs(path)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # Only user.* names are stored: another namespace (security.*, system.*) is
            # not supported (ENOTSUP, as the kernel says of a namespace a file system has
            # no handler for), which `ls -l` remembers for the whole mount instead of
            # asking twice per entry (20,000 requests for a directory of 10,000).
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        values = await self._run(self._xattrs, inode)
        value = values.get(name.decode(errors="surrogateescape"))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        values = await self._run(self._xattrs, inode)
        return [n.encode(errors="surrogateescape") for n in sorted(values)]

    def _settle(self, path: str) -> None:
        """Commit a file created here and not committed yet (so that the namespace has
        it to attach attributes to)."""
        sp = self._spool_at(path)
        if sp is not None and sp.created and sp.commit(self.ns):
            self.meta.invalidate(path)

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        path = self._path(inode)
        key = name.decode(errors="surrogateescape")

        def op() -> None:
            self._settle(path)
            self.ns.set_xattrs(path, {key: value})
        await self._change(op, path)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._path(inode)
        key = name.decode(errors="surrogateescape")

        def op() -> None:
            self._settle(path)
            values = self.ns.xattrs(path)
            if key not in values:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            del values[key]
            self.ns.set_xattrs(path, values, replace_all=True)
        await self._change(op, path)


def run_global_mount(ns: Namespace, mountpoint: str,
                     options: GlobalMountOptions | None = None, *,
                     ready: Callable[[], None] | None = None, label: str = "namespace",
                     scope: Callable[[str], str] | None = None) -> None:
    """Mount namespace `ns` at `mountpoint` and serve until unmounted or signalled
    (as `gfs.mount.run_mount` does for the embedded store). `scope` picks how inode
    numbers are told apart (gfs.mount_inodes): per entity by default, one scope for
    the embedded store."""
    from gfs.client import Client

    opts = options or GlobalMountOptions()
    mp, report = prepare(mountpoint)
    if report is not None:
        log.warning("%s", report)
    if scope is None:
        scope = one_scope if isinstance(ns, Client) else entity_scope
    ops = GlobalOperations(ns, opts, scope=scope)
    serve(ops, mp, opts, fsname="hutong-global", ready=ready, label=label)


__all__ = ["ROOT_INO", "GlobalMountOptions", "GlobalOperations", "run_global_mount"]
