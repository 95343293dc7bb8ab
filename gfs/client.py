"""The gfs client: one object for everything a user does with a store.

    from gfs import Client
    with Client("~/.hutong") as fs:               # or Client.init(...) the first time
        fs.put("data/", "/lab/data")               # a local tree into the namespace
        fs.du("/lab/data").dedup_ratio
        with fs.open("/lab/data/a.csv") as f:      # seekable, ranged reads
            f.seek(100); f.read(10)

Paths in the namespace are absolute (`/a/b`); local paths are ordinary paths.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import logging
import os
import stat as statmod
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

from gfs import local_write, namespace, paths, pool_keys
from gfs._lazy import lazy_exports
from gfs.config import CONFIG_FILE, StoreConfig, state_dir
from gfs.env import META_ENV
from gfs.errors import (
    ChunkMissingError,
    ConfigError,
    CorruptChunkError,
    ExistsError,
    InvalidPathError,
    IsADirError,
    NotADirError,
    NotFoundError,
    NotPermittedError,
    StateError,
)
from gfs.groups import StoredShares
from gfs.meta import (
    ROOT_INO,
    ChunkRef,
    Inode,
    Kind,
    LmdbEngine,
    Manifest,
    MetaEngine,
    PoolRecord,
    WriteTxn,
    open_engine,
)
from gfs.namespace import XattrSource
from gfs.put_listings import Listings
from gfs.put_reads import READ_BATCH_BYTES, read_ahead
from gfs.put_walk import LocalEntry, LocalStat, NsDirs, PutWalk
from gfs.state import (
    check_identity,
    is_database_url,
    meta_location,
    meta_toml,
    pool_location,
    record_url,
    relocate,
)
from gfs.store import (
    ChunkStore,
    RunAction,
    WriteStats,
    prepared_of,
    read_ids,
    read_many,
    read_pieces,
    release,
)
from gfs.tiering import defaults as tier_defaults
from gfs.tiering.heat import HeatTracker

if TYPE_CHECKING:
    from gfs.disk_cache import DiskCache
    from gfs.namespace_api import DuReport, Stat
    from gfs.read.source import ChunkSource
    from gfs.tiering.policy import TierPolicy

# Imported where used (each `hutong` command pays for the modules it imports, and a
# put needs none of these): gfs.namespace_api (Stat, DuReport: ls, stat, du),
# gfs.read.reader and gfs.read.stack (file reads), gfs.files (file writes), gfs.get_plan
# (get), gfs.spill (du).

#: A transfer's progress callback: called with the bytes done since its previous call.
Progress = Callable[[int], None]
#: the block size of `iter_bytes` (read ahead by the manifest reader)
READ_BLOCK = 4 << 20
log = logging.getLogger("gfs.client")


def in_place(size: int, mtime_ns: int, mode: int, local: os.stat_result | LocalStat) -> bool:
    """Whether a namespace file with this size, mtime and mode is a copy of `local`
    already in place: the rule by which a repeated put resumes instead of re-reading."""
    return (size == local.st_size and mtime_ns == local.st_mtime_ns
            and statmod.S_IMODE(mode) == statmod.S_IMODE(local.st_mode))


def put_source(local: str | os.PathLike[str], path: str) -> tuple[Path, os.stat_result, str]:
    """(local source, its lstat, namespace destination) of a put: a `path` ending in "/"
    (or the root) means inside it under the source's name, unless the source ends in
    "/" (its contents, like rsync)."""
    src = Path(local)
    try:
        top = os.lstat(src)
    except FileNotFoundError:
        raise FileNotFoundError(f"local path not found: {src}") from None
    dest = paths.normalize(path)
    contents = str(local).endswith(os.sep)  # "dir/" means its contents, like rsync
    if (path.endswith("/") or dest == "/") and not contents and src.name:
        dest = paths.join([*paths.split(dest), paths.check_name(src.name)])
    return src, top, dest


@dataclass
class TransferReport:
    """What a put or get moved."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    bytes: int = 0
    #: files of a resumed put already in place (same size, mtime and mode): not re-read
    unchanged: int = 0
    #: files a get with skip_damaged could not restore (their chunks are damaged)
    damaged: list[str] = field(default_factory=list)
    write: WriteStats | None = None

    def to_dict(self) -> dict[str, Any]:
        """The form printed by `--json`."""
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "files", "dirs", "symlinks", "skipped", "bytes", "unchanged", "damaged")}
        if self.write is not None:
            out["new_raw_bytes"] = self.write.new_raw_bytes
            out["new_stored_bytes"] = self.write.new_stored_bytes
        return out


class Client:
    """A store opened from its state directory (embedded mode)."""

    def __init__(self, state: str | os.PathLike[str] | None = None, **settings: Any) -> None:
        """Open the store in `state`; settings override the config file and environment."""
        root = state_dir(state)
        meta = meta_location(root) if (root / CONFIG_FILE).exists() else None
        if meta is None or (meta == str(root / "meta") and not (root / "meta").is_dir()):
            raise StateError(f"no Hutong store at {root}; create one with `hutong init` "
                             f"(or pass --state / set HUTONG_STATE)")
        self.state = root
        self.config = StoreConfig.load(root, settings)
        self.engine = open_engine(meta)
        try:
            with self.engine.read() as txn:
                if txn.get_meta("loading"):
                    raise StateError(f"the metadata of {root} was not loaded completely; "
                                     "load the dump again into a new store "
                                     "(`hutong meta load`)")
            if isinstance(self.engine, LmdbEngine):  # a database server has no copies
                check_identity(self.engine, root)
        except BaseException:
            self.engine.close()
            raise
        self.store = ChunkStore(self.engine, root, self.config,
                                observer=HeatTracker(self.engine, self._policy_window()),
                                placement=self._write_tier)
        self.reads: ChunkSource = self.store.source
        """The chunk source file reads go through (the store; `cache_reads` adds tiers)."""

    def policy(self) -> TierPolicy:
        """The store's tiering policy (defaults until one is set)."""
        from gfs.tiering.policy import TierPolicy
        return TierPolicy.current(self.engine)

    def _policy_stored(self) -> bool:
        """Whether a tiering policy was set; until then its defaults apply without loading
        the policy model (pydantic: ~40 ms of each command's start-up)."""
        with self.engine.read() as txn:
            return txn.get_value("rules", tier_defaults.POLICY_KEY) is not None

    def _policy_window(self) -> float:
        return self.policy().window if self._policy_stored() else tier_defaults.WINDOW

    def _write_tier(self) -> str:
        return self.policy().write_tier if self._policy_stored() else tier_defaults.WRITE_TIER

    def cache_reads(self, memory_bytes: int, *, disk: DiskCache | None = None) -> None:
        """From now on, read chunks through a memory tier of `memory_bytes` (and the disk
        tier `disk`), as gfs:// and the mount do; `close()` closes the tiers."""
        from gfs.read.stack import cached  # lazy: see the imports

        if self.reads is not self.store.source:
            self.reads.close()
        self.reads = cached(self.store.source, memory_bytes, disk=disk)

    # -- lifecycle -------------------------------------------------------------
    @classmethod
    def init(cls, state: str | os.PathLike[str] | None = None, *, meta: str | None = None,
             encrypt: bool = False, **settings: Any) -> Client:
        """Create a store in `state` (see gfs.config.state_dir) and open it.

        `meta` (else $HUTONG_META): a ``postgresql://`` URL puts the metadata on
        that database; a store already there is joined, not replaced. By default
        the metadata is the embedded LMDB environment `state`/meta. `encrypt`: the
        default pool is encrypted at rest (see `add_pool`).
        """
        root = state_dir(state)
        if (root / CONFIG_FILE).exists():
            raise ExistsError(str(root), "a Hutong store is already initialised here")
        if root.exists() and not root.is_dir():
            raise NotADirError(str(root), "state path exists and is not a directory")
        config = StoreConfig.load(root, settings)
        meta = meta or os.environ.get(META_ENV) or None
        if meta is not None and not is_database_url(meta):
            raise ConfigError(f"metadata URL {meta!r}: use postgresql://USER@HOST/DB "
                              "(or leave it out for the embedded engine)")
        for sub in ("meta" if meta is None else "", "locks", "pools/default"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        key = pool_keys.load_or_create(root) if encrypt else None
        engine = open_engine(str(root / "meta") if meta is None else meta)
        try:
            def default_pool(txn: WriteTxn) -> None:
                if txn.get_pool(0) is None:
                    txn.put_pool(PoolRecord(0, "default", "pools/default", "warm", 0))
                    if key is not None:
                        pool_keys.mark_sealed(txn, 0, key)

            engine.transact(default_pool)
        finally:
            engine.close()
        tmp = root / f".{CONFIG_FILE}.{os.getpid()}.tmp"
        tmp.write_text(config.to_toml() + meta_toml(meta))
        os.replace(tmp, root / CONFIG_FILE)  # the config file marks the store as ready
        return cls(root, **settings)

    def close(self) -> None:
        """Release the store."""
        if self.reads is not self.store.source:
            self.reads.close()
        self.store.close()
        self.engine.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- looking -----------------------------------------------------------------
    def stat(self, path: str) -> Stat:
        """The entry at `path`."""
        from gfs.namespace_api import Stat  # lazy: see the imports

        with self.engine.read() as txn:
            return Stat.of(paths.normalize(path), namespace.resolve(txn, path))

    def exists(self, path: str) -> bool:
        """Whether `path` exists."""
        from gfs.namespace_api import exists  # lazy: see the imports

        return exists(self, path)

    def ls(self, path: str = "/") -> list[Stat]:
        """The entries of directory `path` (or the file itself), by name."""
        from gfs.namespace_api import Stat  # lazy: see the imports

        norm = paths.normalize(path)
        with self.engine.read() as txn:
            node = namespace.resolve(txn, norm)
            if node.kind != Kind.DIR:
                return [Stat.of(norm, node)]
            base = norm.rstrip("/")
            return [Stat.of(f"{base}/{name}", namespace.get(txn, ino))
                    for name, ino in txn.list_dir(node.ino)]

    def walk(self, path: str = "/") -> Iterator[Stat]:
        """`path` and everything below it, parents first, as of one snapshot: the walk
        holds a read transaction until it is exhausted or closed (on PostgreSQL a
        connection stays in that transaction), so a caller that stops early should
        close it (`contextlib.closing`) or take `list(...)`."""
        from gfs.namespace_api import Stat  # lazy: see the imports

        norm = paths.normalize(path)
        with self.engine.read() as txn:
            top = namespace.resolve(txn, norm)
            stack = [(norm, top)]
            while stack:
                p, node = stack.pop()
                yield Stat.of(p, node)
                if node.kind == Kind.DIR:
                    base = p.rstrip("/")
                    kids = [(f"{base}/{n}", namespace.get(txn, i))
                            for n, i in txn.list_dir(node.ino)]
                    stack.extend(reversed(kids))

    def readlink(self, path: str) -> str:
        """The target of symlink `path`."""
        st = self.stat(path)
        if st.kind != "symlink":
            raise InvalidPathError(path, "not a symlink")
        return st.target

    def du(self, path: str = "/") -> DuReport:
        """Logical bytes under `path`, the bytes of its distinct chunks, and their stored size.

        The chunk ids are spilled to a temporary table and counted once each in
        id order, so memory does not grow with the tree (gfs.spill).
        """
        from gfs.namespace_api import DuReport  # lazy: see the imports
        from gfs.spill import SpillTable

        norm = paths.normalize(path)
        files = dirs = links = logical = unique = stored = distinct = 0
        with self.engine.read() as txn, SpillTable("id BLOB") as ids:
            for node in namespace.walk(txn, namespace.resolve(txn, norm)):
                if node.kind == Kind.DIR:
                    dirs += 1
                elif node.kind == Kind.SYMLINK:
                    links += 1
                else:
                    files += 1
                    m = txn.get_manifest(node.ino)
                    if m is None:
                        continue
                    logical += m.size
                    ids.add_many((ref.id,) for ref in m.chunks)
            rows = ids.query("SELECT DISTINCT id FROM t ORDER BY id")
            share = StoredShares(txn)  # a group member counts its share of the group
            while batch := [row[0] for row in itertools.islice(rows, 1000)]:
                distinct += len(batch)
                for rec in txn.get_chunks(batch).values():
                    unique += rec.raw_len
                    stored += share(rec)
        return DuReport(norm, files, dirs, links, distinct, logical, unique, stored)

    # -- reading -------------------------------------------------------------------
    def _manifest(self, path: str) -> tuple[str, Manifest]:
        norm = paths.normalize(path)
        with self.engine.read() as txn:
            node = namespace.resolve(txn, norm)
            if node.kind == Kind.DIR:
                raise IsADirError(norm)
            if node.kind == Kind.SYMLINK:
                raise InvalidPathError(norm, "is a symlink (read its target instead)")
            if node.kind != Kind.FILE:
                raise InvalidPathError(norm, f"is a {node.kind.name.lower()}, not a regular "
                                       "file (special files hold no data in the store)")
            m = txn.get_manifest(node.ino)
        self.store.observer.record_file(node.ino)  # file heat, for the tierer and reports
        return norm, m if m is not None else Manifest(node.version, ())

    def open(self, path: str, mode: str = "rb", *, perm: int | None = None) -> BinaryIO:
        """A file object: "rb" reads the version committed now (seekable); "wb" writes a
        new version that becomes visible on close."""
        if mode in ("rb", "r"):
            from gfs.read.reader import ManifestReader  # lazy: see the imports

            norm, m = self._manifest(path)
            return io.BufferedReader(ManifestReader(self.reads, norm, m), 1 << 20)
        if mode in ("wb", "w"):
            from gfs.files import NsWriter  # lazy: see the imports

            norm = paths.normalize(path)
            with self.engine.read() as txn:
                parent, name = namespace.resolve_parent(txn, norm)
                existing = namespace.child(txn, parent, name)
                if existing is not None and existing.kind == Kind.DIR:
                    raise IsADirError(norm)
            return NsWriter(self.store, norm, perm)  # type: ignore[return-value]
        raise ValueError(f"mode must be 'rb' or 'wb', got {mode!r}")

    def read_bytes(self, path: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of file `path` (all of it by default)."""
        from gfs.read.reader import ManifestReader  # lazy: see the imports

        norm, m = self._manifest(path)
        reader = ManifestReader(self.reads, norm, m)
        return reader.read_range(max(start, 0), reader.size if end is None else end)

    def write_bytes(self, path: str, data: bytes, *, perm: int | None = None) -> None:
        """Create or replace file `path` with `data`, atomically."""
        with self.open(path, "wb", perm=perm) as f:
            f.write(data)

    def iter_bytes(self, path: str, start: int = 0, end: int | None = None, *,
                   manifest: Manifest | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of file `path` as a stream of blocks, read ahead in parallel;
        `manifest` pins a version (see `manifest()`), else the one committed now."""
        from gfs.read.reader import ManifestReader  # lazy: see the imports

        norm, m = (paths.normalize(path), manifest) if manifest is not None \
            else self._manifest(path)
        reader = ManifestReader(self.reads, norm, m)
        try:
            end = reader.size if end is None else min(end, reader.size)
            reader.seek(start)
            while reader.tell() < end:
                block = reader.pread(reader.tell(), min(READ_BLOCK, end - reader.tell()))
                if not block:
                    return
                reader.seek(reader.tell() + len(block))
                yield block
        finally:
            reader.close()

    def scan(self, path: str, *, start: str = "", recursive: bool = True) -> Iterator[Stat]:
        """Entries below directory `path` in the byte order of their relative keys, from
        the first key >= `start` (see gfs.namespace.scan: "a-1" before "a/b"); each
        Stat's path is absolute. Recursive: every file; else the direct entries."""
        from gfs.namespace_api import Stat  # lazy: see the imports

        norm = paths.normalize(path)
        base = norm.rstrip("/")
        with self.engine.read() as txn:
            top = namespace.resolve(txn, norm)
            if top.kind != Kind.DIR:
                raise NotADirError(norm)
            for key, node in namespace.scan(txn, top, start=start, recursive=recursive):
                yield Stat.of(f"{base}/{key.rstrip('/')}", node)

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of `path` by name ("user.author": b"...")."""
        with self.engine.read() as txn:
            return namespace.get_xattrs(txn, namespace.resolve(txn, path).ino)

    def set_xattrs(self, path: str, values: dict[str, bytes], *,
                   replace_all: bool = False) -> None:
        """Set extended attributes of `path`; `replace_all` drops the others first."""
        self.engine.transact(lambda txn: namespace.set_xattrs(
            txn, namespace.resolve(txn, path).ino, values, replace_all=replace_all))

    def concat(self, path: str, sources: list[str], *, xattrs: XattrSource | None = None,
               remove: list[str] | None = None) -> Stat:
        """Create or replace file `path` with the content of the files `sources` one after
        another, in one transaction and without reading or copying data (their chunk lists
        are joined). `xattrs` replace the attributes of `path`; the entries in `remove`
        (e.g. the directory of the sources) are removed in the same transaction."""
        from gfs.namespace_api import Stat  # lazy: see the imports

        norm = paths.normalize(path)

        def join(txn: WriteTxn) -> Stat:
            refs: list[ChunkRef] = []
            for src in sources:
                node = namespace.resolve(txn, src)
                if node.kind != Kind.FILE:
                    raise IsADirError(src) if node.kind == Kind.DIR else \
                        InvalidPathError(src, "is a symlink, not a file")
                m = txn.get_manifest(node.ino)
                refs.extend(m.chunks if m is not None else ())
            old = namespace.write_file(txn, norm, refs, xattrs=xattrs)
            node = namespace.resolve(txn, norm)
            deltas: Counter[bytes] = Counter(r.id for r in refs)
            if old is not None:
                deltas.subtract(r.id for r in old.chunks)
            txn.add_refcounts(deltas)
            for gone in remove or []:
                release(txn, namespace.remove(txn, gone, recursive=True))
            return Stat.of(norm, node)

        return self.engine.transact(join)

    def write_many(self, files: list[tuple[str, bytes, XattrSource | None]]) -> None:
        """Create or replace each (path, data, xattrs) file, in as few commits as the pack
        size allows (one for small files): many small writes pay for one pack and one
        metadata sync. Each file is atomic; if one cannot be written (a directory in the
        way, a missing parent) the commit it was in raises and none of its files change."""
        with self.store.writer() as session:
            for path, data, xattrs in files:
                norm = paths.normalize(path)
                refs = session.store_buffer(data) if data else []

                def action(txn: WriteTxn, r: list[ChunkRef], norm: str = norm,
                           xattrs: XattrSource | None = xattrs) -> Manifest | None:
                    return namespace.write_file(txn, norm, r, xattrs=xattrs)

                session.add_file(refs, action)

    # -- changing --------------------------------------------------------------------
    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False,
              mode: int = namespace.DEFAULT_DIR_MODE) -> None:
        """Create directory `path`."""
        self.engine.transact(
            lambda txn: namespace.mkdir(txn, path, mode, parents=parents, exist_ok=exist_ok))

    def symlink(self, path: str, target: str) -> None:
        """Create symlink `path` -> `target`."""
        self.engine.transact(lambda txn: namespace.symlink(txn, path, target))

    def link(self, src: str, dst: str) -> None:
        """Make `dst` a hard link to the file (or symlink, or special file) `src`."""
        def link(txn: WriteTxn) -> None:
            node = namespace.resolve(txn, src)
            parent, name = namespace.resolve_parent(txn, dst)
            try:
                namespace.link_in(txn, node, parent, name)
            except (ExistsError, NotPermittedError) as e:
                raise type(e)(dst, e.strerror) from None

        self.engine.transact(link)

    def mknod(self, path: str, kind: Kind | str, mode: int = 0o644, rdev: int = 0) -> None:
        """Create special file `path`: a FIFO, socket or device node (metadata only);
        `kind` a Kind or its name ("fifo", ...)."""
        from gfs.namespace_api import SPECIAL_KINDS  # lazy: see the imports

        if isinstance(kind, str):
            if kind not in SPECIAL_KINDS:
                allowed = ", ".join(SPECIAL_KINDS)
                raise InvalidPathError(path, f"mknod makes {allowed}, not {kind!r}")
            kind = Kind[kind.upper()]

        def mknod(txn: WriteTxn) -> None:
            parent, name = namespace.resolve_parent(txn, path)
            try:
                namespace.mknod_in(txn, parent, name, kind, mode, rdev=rdev)
            except (ExistsError, InvalidPathError) as e:
                raise type(e)(path, e.strerror) from None

        self.engine.transact(mknod)

    def rm(self, path: str, *, recursive: bool = False) -> None:
        """Remove `path` (a non-empty directory needs `recursive`)."""
        self.engine.transact(
            lambda txn: release(txn, namespace.remove(txn, path, recursive=recursive)))

    def mv(self, src: str, dst: str) -> None:
        """Rename `src` to `dst`; into `dst` when it is an existing directory (like mv)."""
        def rename(txn: WriteTxn) -> None:
            to = dst
            namespace.read_ahead(txn, src, dst)
            try:
                target = namespace.resolve(txn, dst)
            except (NotFoundError, NotADirError):
                target = None  # rename() reports what is wrong, source first
            if target is not None and target.kind == Kind.DIR:
                src_name = paths.split(src)
                if src_name:
                    to = paths.join([*paths.split(dst), src_name[-1]])
            release(txn, namespace.rename(txn, src, to))

        self.engine.transact(rename)

    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of `path`."""
        self.engine.transact(lambda txn: namespace.set_attrs(txn, path, mode=mode))

    def chown(self, path: str, uid: int | None, gid: int | None) -> None:
        """Set the owner of `path`."""
        self.engine.transact(lambda txn: namespace.set_attrs(txn, path, uid=uid, gid=gid))

    def utime(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set the access and modification times of `path`."""
        self.engine.transact(
            lambda txn: namespace.set_attrs(txn, path, atime_ns=atime_ns, mtime_ns=mtime_ns))

    # -- copying trees -----------------------------------------------------------------
    def put(self, local: str | os.PathLike[str], path: str,
            progress: Progress | None = None, *,
            listed_ahead: Listings | None = None,
            found: Progress | None = None) -> TransferReport:
        """Copy a local file or tree into the namespace, keeping modes and times.

        `path` becomes the copy: a tree put onto an existing directory merges into
        it, and files already there with the same size, modification time and mode
        are kept without being read again, so repeating an interrupted put resumes
        it (it never nests a second copy inside the first). A `path` ending in "/"
        means inside that directory, under the source's own name; a source ending
        in "/" means its contents (as in rsync). Conflicts (a file onto a
        directory, a directory onto a file) and unreadable local entries are found
        before anything is committed: the tree is walked beside the reading and
        storing of its first files, and the first commit waits for the whole walk.
        Files become visible in committed batches. `listed_ahead`: listings of `local`
        begun before (`gfs.put_listings.list_ahead`), for the walk to take.

        `progress(n)` is called with the size of each regular file once it is stored
        or kept unchanged; `found(n)`, on the walk's thread, with the summed sizes of
        the regular files the walk meets (`PutWalk`): the two add up to the same total,
        and `found` knows it long before the last file is stored, without a second walk.
        """
        src, top, dest = put_source(local, path)
        dest_exists = self._put_destination(dest)
        report = TransferReport()
        base = paths.split(dest)
        dirs = _Dirs()  # rel path -> ino, filled in as actions commit
        existing = _ExistingFiles(self.engine, base) if dest_exists else None

        def wanted(item: tuple[bool, LocalEntry]) -> tuple[str, int] | None:
            """The files to read: regular ones not already in place."""
            leaving, e = item
            if leaving or not statmod.S_ISREG(e.st.st_mode) or (
                    existing is not None and existing.unchanged(e)):
                return None
            return e.path, e.st.st_size

        params = self.store.params
        # a tree's batches commit on the session's thread while the next is compressed
        overlap = statmod.S_ISDIR(top.st_mode)
        # the walk goes on beside the pipeline; the first commit waits for all of it
        with PutWalk(self.engine, src, top, base, dest_exists,
                     listings=listed_ahead, found=found) as walk, \
                _fast_thread_switching(), \
                self.store.writer(overlap=overlap, gate=walk.wait) as session, \
                contextlib.closing(read_ahead(  # read, cut and hashed in C on a thread
                    walk.steps(), wanted, lambda ps: read_many(ps, params, READ_BATCH_BYTES),
                    on_batch=lambda loads: session.look_ahead(
                        read_ids(loads), lambda least: read_pieces(loads, least)))) as reads:
            try:
                if not statmod.S_ISDIR(top.st_mode) and base:
                    session.add_action(_ensure_dir_action(paths.join(base[:-1]), dirs))
                for (leaving, e), read, loaded in reads:
                    if leaving:  # directory modes and times, once its children are queued
                        session.add_action(_dir_attrs_action(dirs, e.rel, e.st))
                        continue
                    name = e.rel[-1] if e.rel else (base[-1] if base else "")
                    parent_rel = e.rel[:-1] if e.rel else None
                    if statmod.S_ISDIR(e.st.st_mode):
                        if e.rel:
                            session.add_action(_mkdir_action(dirs, e.rel, e.st))
                        else:
                            session.add_action(_ensure_dir_action(dest, dirs))
                        report.dirs += 1
                    elif statmod.S_ISLNK(e.st.st_mode):
                        session.add_action(_symlink_action(dirs, parent_rel, name,
                                                           os.readlink(e.path), e.st))
                        report.symlinks += 1
                    elif statmod.S_ISREG(e.st.st_mode) and not read:
                        report.unchanged += 1
                        if progress is not None:
                            progress(e.st.st_size)
                    elif statmod.S_ISREG(e.st.st_mode):
                        if isinstance(loaded, OSError):
                            raise loaded  # at this file's turn, as a read here would
                        held = session.held_refs(loaded) if loaded is not None else None
                        if held is not None:  # one chunk the store has: nothing to store
                            refs = held
                        else:
                            prepared = prepared_of(loaded)  # None: too big, streamed
                            refs = (session.store_file(e.path) if prepared is None
                                    else session.store_prepared(prepared))
                        session.add_file(refs, _FileAction(dirs, parent_rel, name, e.st))
                        report.files += 1
                        report.bytes += e.st.st_size
                        if progress is not None:
                            progress(e.st.st_size)
                    else:
                        report.skipped += 1
            except Exception:
                walk.wait()  # what the walk found in the tree comes first, as it came before
                raise
            except BaseException:
                walk.cancel()  # interrupted: nothing more commits
                raise
            session.commit()
        report.write = session.stats
        return report

    def _put_destination(self, dest: str) -> bool:
        """Whether a put's destination `dest` exists; refuses one below a non-directory.
        (The local tree is checked against what exists by the put's walk.)"""
        with self.engine.read() as txn:
            try:
                namespace.resolve(txn, dest)
                return True
            except NotFoundError:
                pass  # nothing exists below a missing destination
            # every existing ancestor must be a directory
            node = namespace.get(txn, ROOT_INO, "/")
            base = paths.split(dest)
            for i, name in enumerate(base[:-1] if base else []):
                kid = namespace.child(txn, node, name)
                if kid is None:
                    break
                if kid.kind != Kind.DIR:
                    raise NotADirError(paths.join(base[: i + 1]))
                node = kid
            return False

    def get(self, path: str, local: str | os.PathLike[str],
            progress: Progress | None = None, *, skip_damaged: bool = False,
            ) -> TransferReport:
        """Copy a namespace file or tree to a local path, keeping modes and times.

        If `local` is an existing directory the source goes inside it under its
        own name. Each file is written unnamed or under a temporary name and given
        its own name only once complete and verified; small files are restored in batches
        whose chunks are read from the packs with few large reads. With
        `skip_damaged`, a file whose chunks cannot be read is left out (nothing of
        it is written) and named in the report's `damaged`; otherwise the first
        damaged file stops the get.

        The copy is of the tree as it was when the get began (one snapshot, spilled
        to a temporary file); a local path in the way (a directory where a file
        goes, or the reverse) is refused before anything is written.
        """
        from gfs.get_plan import GetPlan  # lazy: see the imports

        norm = paths.normalize(path)
        dest = os.fspath(local)
        report = TransferReport()
        with GetPlan() as plan:
            # Every entry is read in ONE snapshot (a point-in-time copy) and spilled to
            # disk, every local conflict refused before anything is written; the
            # snapshot ends before the restore (one held while the get's heat records
            # are written kept LMDB from reusing pages: 17 -> 112 MB at 10^5 files).
            with self.engine.read() as txn:
                top = namespace.resolve(txn, norm)
                if os.path.isdir(dest) and norm != "/":
                    dest = os.path.join(dest, paths.split(norm)[-1])
                # nothing exists below a missing destination: no local path to check
                plan.read(txn, top, dest, check=os.path.lexists(dest))
            parent = os.path.dirname(dest)
            if parent and not os.path.isdir(parent):
                os.makedirs(parent)

            cut = len(os.path.join(dest, ""))

            def ns_of(p: str) -> str:  # the namespace path of local path `p`
                return norm if p == dest else paths.join(
                    [*paths.split(norm), *p[cut:].split(os.sep)])

            # closed before the plan, even on an error (it reads the plan's file)
            with _fast_thread_switching(), \
                    contextlib.closing(_restore_batches(plan.entries())) as batches:
                self._restore(batches, report, progress, skip_damaged=skip_damaged,
                              ns_of=ns_of)
        return report

    def _gone(self, e: ChunkMissingError, node: Inode, ns: str) -> ChunkMissingError:
        """`e` (a chunk of `node`, restored at namespace path `ns`, is missing), made
        clear when the file was removed or replaced after the get read the namespace
        (another client's rm and gc collected its chunks meanwhile)."""
        with self.engine.read() as txn:
            now = txn.get_inode(node.ino)
        if now is not None and now.version == node.version:
            return e
        return ChunkMissingError(
            e.filename or "", f"{ns} was removed or replaced after this get read the "
            "namespace, and its chunks were collected meanwhile: not restored, nothing "
            "of it written")

    def _restore(self, batches: Iterator[list[_RestoreItem]], report: TransferReport,
                 progress: Progress | None, *, skip_damaged: bool = False,
                 ns_of: Callable[[str], str]) -> None:
        """Carry out `batches` in order: directories made on entry and given their modes
        and times on leaving, symlinks made, files written. The chunks of each batch of
        small files are read ahead on a thread (two batches ahead), the plan's entries
        that make them on another; big files stream."""
        def fetch(b: list[_RestoreItem]) -> dict[bytes, bytes]:
            owners = {r.id: p for op, p, _, m in b if op == "file" and m is not None
                      for r in m.chunks}
            if not owners or _streamed(b):
                return {}  # streamed by the writer
            try:
                return self.store.source.get_many(owners, path_of=owners.__getitem__)
            except ChunkMissingError as e:
                if not skip_damaged:
                    node = next((n for op, p, n, _ in b if p == e.filename), None)
                    raise (e if node is None else
                           self._gone(e, node, ns_of(str(e.filename)))) from e
                return {}  # each file of the batch is then read alone, to find the bad ones
            except CorruptChunkError:
                if not skip_damaged:
                    raise
                return {}  # each file of the batch is then read alone, to find the bad ones

        def produce(planned: Future[list[_RestoreItem] | None],
                    ) -> tuple[list[_RestoreItem], dict[bytes, bytes]] | None:
            b = planned.result()
            return None if b is None else (b, fetch(b))

        # Each batch cut from the plan read back on one thread (so in order, and off the
        # thread that hands the files over), its directories made there, on threads of
        # their own (made by the thread handing the files over, it waited on every
        # level of them), its chunks fetched on another thread (the plan's decoding
        # runs while the fetch waits on the store's workers).
        with ThreadPoolExecutor(RESTORE_WRITERS,
                                thread_name_prefix="hutong-restore-dirs") as dir_makers, \
                ThreadPoolExecutor(1, thread_name_prefix="hutong-plan") as planner, \
                ThreadPoolExecutor(1, thread_name_prefix="hutong-prefetch") as prefetch, \
                ThreadPoolExecutor(RESTORE_WRITERS, thread_name_prefix="hutong-restore") as wr:
            def plan_next() -> list[_RestoreItem] | None:
                # the directories a batch enters are in no directory an earlier batch
                # leaves: made ahead, they change no time the restore has set
                if stopped.is_set():  # the get failed: nothing more made for it
                    return None
                b = next(batches, None)
                if b is not None:
                    _make_dirs([p for op, p, _, _ in b if op == "mkdir"], dir_makers)
                return b

            def ahead_one() -> Future[tuple[list[_RestoreItem], dict[bytes, bytes]] | None]:
                return prefetch.submit(produce, planner.submit(plan_next))

            stopped = threading.Event()
            ahead = deque(ahead_one() for _ in range(2))  # two batches ahead
            # the batch before: its writes (still running) and the directories it left
            behind: _Handed = ([], [])
            try:
                while (got := ahead.popleft().result()) is not None:
                    ahead.append(ahead_one())
                    handed: _Handed = ([], [])
                    try:
                        self._restore_items(*got, report, progress, skip_damaged=skip_damaged,
                                            writers=wr, handed=handed, ns_of=ns_of)
                        # the batch before is finished once this one is handed over: the
                        # writers are not left idle while the main thread waits
                        _finish(behind, report, progress)
                    except BaseException:
                        stopped.set()
                        futures.wait(handed[0])  # no write outlives the get
                        raise
                    behind = handed
                _finish(behind, report, progress)
            except BaseException:
                stopped.set()  # batches planned but not yet begun make no directories
                futures.wait(behind[0])
                raise
            finally:
                for fut in ahead:
                    fut.cancel()

    def _restore_items(self, batch: list[_RestoreItem], chunks: dict[bytes, bytes],
                       report: TransferReport, progress: Progress | None, *,
                       skip_damaged: bool, writers: ThreadPoolExecutor, handed: _Handed,
                       ns_of: Callable[[str], str]) -> None:
        """Carry out one batch (its directories already made): symlinks here, the files'
        writes handed to `writers` (file creation waits on the filesystem, not the CPU;
        a big file streams there too), into `handed` with the directories the batch
        leaves (given their modes and times once every write before them has ended)."""
        written, leaving = handed
        pending: list[tuple[str, Inode, list[bytes]]] = []  # files for the next slice
        report.dirs += sum(1 for op, _, _, _ in batch if op == "mkdir")
        for op, p, node, m in batch:
            if op == "mkdir":
                continue
            if op == "dirattrs":
                leaving.append((p, node))
                continue
            if len(pending) >= RESTORE_SLICE_FILES:
                written.append(writers.submit(local_write.write_files, pending))
                pending = []
            refs = m.chunks if m is not None else ()
            if op == "file" and (chunks or not refs):
                pending.append((p, node, [chunks[r.id] for r in refs]))
                continue
            if op == "symlink":
                if os.path.lexists(p):
                    os.unlink(p)
                os.symlink(node.target, p)
                os.utime(p, ns=(node.atime_ns, node.mtime_ns), follow_symlinks=False)
                report.symlinks += 1
                continue
            if node.size > RESTORE_BATCH_BYTES // 4:  # streamed alone, by a writer
                written.append(writers.submit(self._stream, p, node, refs, report,
                                              skip_damaged=skip_damaged, ns_of=ns_of))
                continue
            n = self._stream(p, node, refs, report, skip_damaged=skip_damaged, ns_of=ns_of)[1]
            if n >= 0:
                report.files += 1
                report.bytes += n
                if progress is not None:
                    progress(n)
        if pending:
            written.append(writers.submit(local_write.write_files, pending))

    def _stream(self, p: str, node: Inode, refs: Sequence[ChunkRef], report: TransferReport,
                *, skip_damaged: bool, ns_of: Callable[[str], str]) -> tuple[int, int]:
        """Write file `node` at `p`, its chunks read as it is written: (1, bytes), or
        with `skip_damaged` (0, -1) for a damaged file (named in the report)."""
        from gfs.read.reader import ManifestReader  # lazy: see the imports

        data = ManifestReader(self.store.source, p, Manifest(0, tuple(refs))).blocks()
        try:
            return 1, _write_local(p, node, data)
        except (CorruptChunkError, ChunkMissingError) as e:
            gone = self._gone(e, node, ns_of(p)) if isinstance(e, ChunkMissingError) else e
            if not skip_damaged:
                if gone is e:
                    raise
                raise gone from e
            log.error("not restored, damaged: %s", gone)
            report.damaged.append(ns_of(p))
            return 0, -1

    # -- pinned versions, inodes and in-place edits ------------------------------------
    def manifest(self, path: str, *, version: int | None = None) -> Manifest:
        """The committed manifest (version and chunk list) of file `path`.

        A manifest pins that version: `open_version` reads it even after the file
        is replaced (as long as gc has not reclaimed its chunks). With `version`,
        raises NotFoundError unless that version is the one committed now.
        """
        norm, m = self._manifest(path)
        if version is not None and m.version != version:
            raise NotFoundError(norm, f"version {version} is not the committed one "
                                f"(now {m.version}); open the current version")
        return m

    def open_version(self, path: str, manifest: Manifest) -> BinaryIO:
        """A seekable reader of `manifest`, a version of `path` pinned by `manifest()`."""
        from gfs.read.reader import ManifestReader  # lazy: see the imports

        return io.BufferedReader(ManifestReader(self.reads, paths.normalize(path),
                                                manifest), 1 << 20)

    def stat_ino(self, ino: int) -> Stat:
        """The entry with inode number `ino` (its path is looked up from its parents)."""
        from gfs.namespace_api import Stat  # lazy: see the imports

        with self.engine.read() as txn:
            node = namespace.get(txn, ino)
            return Stat.of(namespace.path_of(txn, ino), node)

    def manifest_ino(self, ino: int) -> Manifest:
        """The committed manifest of the file with inode number `ino`."""
        with self.engine.read() as txn:
            node = namespace.get(txn, ino)
            if node.kind == Kind.DIR:
                raise IsADirError(f"<inode {ino}>")
            if node.kind != Kind.FILE:
                raise InvalidPathError(f"<inode {ino}>",
                                       f"is a {node.kind.name.lower()}, not a regular file")
            m = txn.get_manifest(ino)
        return m if m is not None else Manifest(node.version, ())

    def path_of(self, ino: int) -> str:
        """The current path of inode `ino`."""
        with self.engine.read() as txn:
            namespace.get(txn, ino)
            return namespace.path_of(txn, ino)

    def truncate(self, path: str, size: int) -> None:
        """Cut file `path` to `size` bytes (or extend it with zeros), as a new version.

        The chunks wholly before the cut are kept as they are; only the chunk
        across the cut is read and stored again.
        """
        if size < 0:
            raise ValueError(f"truncate size must be >= 0, got {size}")
        self._edit(path, size, b"", size)

    def append(self, path: str, data: bytes) -> None:
        """Add `data` at the end of file `path` (created if missing), as a new version.

        The old chunk list is kept but for its last chunk, which is chunked again
        together with `data`.
        """
        if not self.exists(path):
            self.write_bytes(path, data)
            return
        self._edit(path, None, data, None)

    def write_at(self, path: str, offset: int, data: bytes) -> None:
        """Write `data` at `offset` of file `path` (zeros fill a gap), as a new version.

        Only the chunks the write touches are read and chunked again; the chunks
        before and after them are kept.
        """
        if offset < 0:
            raise ValueError(f"write offset must be >= 0, got {offset}")
        self._edit(path, offset, data, None)

    def _edit(self, path: str, offset: int | None, data: bytes, size: int | None) -> None:
        """Splice `data` at `offset` (None: the end) or cut at `size`; commit the result
        if the file did not change meanwhile (else StateError: retry)."""
        norm = paths.normalize(path)
        with self.engine.read() as txn:
            ino = namespace.resolve(txn, norm).ino
        self._edit_ino(ino, norm, offset, data, size)

    def truncate_ino(self, ino: int, size: int) -> None:
        """`truncate` of the file with inode number `ino` (whatever its names)."""
        if size < 0:
            raise ValueError(f"truncate size must be >= 0, got {size}")
        self._edit_ino(ino, f"<inode {ino}>", size, b"", size)

    def _edit_ino(self, ino: int, norm: str, offset: int | None, data: bytes,
                  size: int | None) -> None:
        """`_edit` of inode `ino` (`norm` names it in messages)."""
        from gfs.read.reader import ManifestReader  # lazy: see the imports

        with self.engine.read() as txn:
            node = namespace.get(txn, ino, norm)
            if node.kind == Kind.DIR:
                raise IsADirError(norm)
            if node.kind != Kind.FILE:
                raise InvalidPathError(norm, "is a symlink (edit its target instead)")
            m = txn.get_manifest(node.ino)
        refs = list(m.chunks) if m is not None else []
        ends = list(itertools.accumulate(r.length for r in refs))
        old_size = ends[-1] if ends else 0
        reader = ManifestReader(self.store.source, norm, Manifest(0, tuple(refs)))

        def old(lo: int, hi: int) -> bytes:
            return reader.read_range(lo, hi)

        keep_after: list[ChunkRef] = []
        if size is not None:
            if size <= old_size:  # keep the chunks that end at or before the cut
                first = bisect.bisect_right(ends, size)
                start = ends[first - 1] if first else 0
                mid = old(start, size)
            else:  # grow with zeros
                first, mid = len(refs), bytes(size - old_size)
        else:
            if offset is None:
                offset = old_size
            if not data and offset <= old_size:
                return
            end = offset + len(data)
            if offset >= old_size:  # at or past the end: chunk the last chunk again too
                first = max(len(refs) - 1, 0)
                start = ends[first - 1] if first else 0
                mid = old(start, old_size) + bytes(offset - old_size) + data
            else:
                first = bisect.bisect_right(ends, offset)
                start = ends[first - 1] if first else 0
                if end >= old_size:
                    mid = old(start, offset) + data
                else:
                    last = bisect.bisect_right(ends, end - 1)
                    mid = old(start, offset) + data + old(end, ends[last])
                    keep_after = refs[last + 1:]
        with self.store.writer() as session:
            new_refs = session.store_buffer(mid) if mid else []
            final = refs[:first] + new_refs + keep_after
            expect = node.version

            def action(txn: WriteTxn, r: list[ChunkRef]) -> Manifest | None:
                now = namespace.get(txn, ino, norm)
                if now.version != expect:
                    raise StateError(f"{norm} changed while it was being edited; retry")
                return namespace.write_content(txn, now, r)

            session.add_file(final, action)

    # -- pools ---------------------------------------------------------------------------
    def add_pool(self, name: str, url: str, *, tier: str = "warm", capacity: int = 0,
                 encrypt: bool = False) -> PoolRecord:
        """Register a storage pool (any fsspec URL; a plain path is a local directory)
        of `tier` ("hot", "warm" or "cold") holding at most `capacity` bytes (0: no limit).
        `encrypt`: every object is encrypted at rest under the store's at-rest key
        (gfs.pool_keys; created on first use, kept outside the pool)."""
        from gfs.pools import open_pool
        from gfs.tiering import TIERS

        if tier not in TIERS:
            raise ConfigError(f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}")
        if capacity < 0:
            raise ConfigError(f"capacity must be >= 0 bytes, got {capacity}")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"pool name must be letters, digits, '-' or '_', got {name!r}")
        url = record_url(self.state, url)
        with open_pool(pool_location(self.state, url)) as pool:  # refuses an unknown protocol
            if encrypt and next(iter(pool.list()), None) is not None:
                raise ConfigError(f"pool {name}: {url} already holds objects; an encrypted "
                                  "pool must start empty (give an empty location)")
        key = pool_keys.load_or_create(self.state) if encrypt else None
        def add(txn: WriteTxn) -> PoolRecord:
            pools = list(txn.iter_pools())
            if any(p.name == name for p in pools):
                raise ExistsError(name, "a pool with this name exists already")
            if any(p.url == url for p in pools):
                raise ExistsError(url, "this URL is a pool of the store already")
            rec = PoolRecord(max((p.id for p in pools), default=-1) + 1, name, url, tier,
                             capacity)
            txn.put_pool(rec)
            if key is not None:
                pool_keys.mark_sealed(txn, rec.id, key)
            return rec

        return self.engine.transact(add)

    def relocate(self, old: str, new: str) -> list[PoolRecord]:
        """Point the pools whose URL starts with `old` at `new` (pools that moved);
        returns the changed records. See gfs.state.relocate."""
        changed = relocate(self.engine, self.state, old, new)
        self.store.close()  # reopen pools at their new URLs
        return changed

    def pools(self) -> list[tuple[PoolRecord, int]]:
        """Every pool with the bytes its committed packs take."""
        used = self.store.usage()
        return [(rec, used.get(rec.id, 0)) for rec in self.store.pool_records()]

    def encrypted_pools(self) -> frozenset[int]:
        """Ids of the pools encrypted at rest."""
        with self.engine.read() as txn:
            return pool_keys.sealed_pools(txn)[0]

    # -- maintenance ---------------------------------------------------------------------
    def gc(self) -> Any:
        """Reclaim unreferenced chunks and orphan packs (see gfs.gc)."""
        from gfs.gc import collect

        return collect(self.store)

    def repair(self, sources: Iterable[str | os.PathLike[str]] = ()) -> Any:
        """Restore damaged chunks from good copies (other pools or tiers, then the stores
        at `sources`), mark the rest lost (see gfs.repair)."""
        from gfs.repair import repair

        others = [Client(s) for s in sources]
        try:
            return repair(self.store, [c.store for c in others])
        finally:
            for c in others:
                c.close()

    def fsck(self, *, verify_data: bool = True, progress: Progress | None = None) -> Any:
        """Check every manifest, index entry and (with verify_data) every chunk (see gfs.fsck)."""
        from gfs.fsck import check

        return check(self.store, verify_data=verify_data, progress=progress)


#: GIL switch interval while a put or get runs: the reader, compression and
#: writer threads hand the GIL over often, and the default 5 ms convoy left a
#: core idle (measured: 93 -> 132 MB/s ingest of the bench dataset).
FAST_SWITCH_INTERVAL = 0.001
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def _fast_thread_switching() -> Iterator[None]:
    """Lower the interpreter's GIL switch interval while any put or get runs."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, FAST_SWITCH_INTERVAL))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


#: Small files are restored in batches of up to this many bytes or files.
RESTORE_BATCH_BYTES = 32 << 20
RESTORE_BATCH_FILES = 2000
#: Threads writing a batch's small files. Creating a file waited 0.67 ms in openat on
#: the bench machine's shared disk (strace of a get of 3,650 files), so writes that
#: overlap restore faster; the CPU is not the limit there.
RESTORE_WRITERS = 8
#: Small files a writer thread writes in one native call (gfs.local_write).
RESTORE_SLICE_FILES = 64
#: Fewer directories than this (since the last slice) are made on the calling thread.
RESTORE_DIRS_INLINE = 16
#: Fewest directories of a level a writer thread makes in one call: a task per 3
#: directories (4,916 directories of the release series in 1,559 calls) spent more
#: on handing tasks and results between threads than on the mkdirs.
RESTORE_DIRS_PER_CALL = 32


#: A batch handed to the writers: its writes' futures ((files, bytes) each) and the
#: directories it leaves (local path, inode).
_Handed = tuple[list[Future[tuple[int, int]]], list[tuple[str, "Inode"]]]


def _finish(handed: _Handed, report: TransferReport, progress: Progress | None) -> None:
    """Count a handed batch's writes once each has ended (the first failure raised after
    all), then give the directories it left their modes and times."""
    written, leaving = handed
    first: BaseException | None = None
    for fut in written:
        try:
            files, n = fut.result()
        except BaseException as e:  # the first failure, once every write has ended
            first = first or e
            continue
        if files:
            report.files += files
            report.bytes += n
            if progress is not None:
                progress(n)
    if first is not None:
        raise first
    if leaving:
        local_write.set_dir_attrs(leaving)


def _make_dirs(dirs: list[str], makers: ThreadPoolExecutor) -> None:
    """Make `dirs` (a get's, parents first; emptied; one already a directory is kept)
    on the `makers` threads (not the writers: there they queued behind the writes),
    level by level so that each parent exists first: a mkdir
    waited 0.3-0.5 ms on the shared disk, and made one by one they were a fifth of a
    small-file get's time. Each thread's share is one native call (no GIL handed over
    per mkdir); a few are made on the calling thread."""
    if len(dirs) < RESTORE_DIRS_INLINE:
        if dirs:
            local_write.make_dirs(dirs)
        dirs.clear()
        return
    levels: dict[int, list[str]] = {}
    for p in dirs:
        levels.setdefault(os.path.normpath(p).count(os.sep), []).append(p)
    dirs.clear()
    for _, level in sorted(levels.items()):
        step = max(RESTORE_DIRS_PER_CALL, -(-len(level) // RESTORE_WRITERS))
        made = [makers.submit(local_write.make_dirs, level[k:k + step])
                for k in range(0, len(level), step)]
        futures.wait(made)
        for fut in made:
            fut.result()  # the first failure, once every mkdir of the level has ended


def _write_local(path: str, node: Inode, data: Iterable[bytes]) -> int:
    """Write a restored file under a temporary name, check its size, set mode and
    times, then rename it into place. Returns the bytes written."""
    tmp = local_write.tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    written = 0
    try:
        for block in data:
            view = memoryview(block)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                written += n
        if written != node.size:
            raise StateError(f"{path}: restored {written} bytes, expected {node.size}")
        os.fchmod(fd, node.mode)
        os.utime(fd, ns=(node.atime_ns, node.mtime_ns))
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return written


Action = Callable[[WriteTxn, list[ChunkRef]], Manifest | None]
class _Dirs(dict[tuple[str, ...], int]):
    """A put's directories (rel path -> ino), and those already read in the current
    transaction: a commit batch reads each parent once, not once per file. Also the
    time the entries a transaction makes are made at: one per transaction (its
    entries become visible together), so their inode records repeat it (the ctime of
    each file taken apart cost ~4 bytes of its packed record: the inodes of the full
    smallfiles set 1.65 -> 1.28 MB)."""

    def __init__(self) -> None:
        super().__init__()
        self._txn: WriteTxn | None = None
        self._read: dict[int, Inode] = {}
        self._now = 0
        #: directories this put made (with their final attributes) and not yet left
        self.made: set[tuple[str, ...]] = set()

    def _enter(self, txn: WriteTxn) -> None:
        if txn is not self._txn:
            self._txn, self._read, self._now = txn, {}, namespace.now_ns()

    def now(self, txn: WriteTxn) -> int:
        """The time entries made in `txn` are made at."""
        self._enter(txn)
        return self._now

    def made_in(self, txn: WriteTxn, node: Inode) -> None:
        """Directory `node` was just made in `txn`: its children need not read it."""
        self._enter(txn)
        self._read[node.ino] = node

    def parent(self, txn: WriteTxn, rel: tuple[str, ...] | None) -> Inode:
        """The directory at `rel` (None: the put's top) as read once in `txn`. Only its
        ino is current: callers pass it to `*_in(touch=False)`, which use nothing else
        (the directory's version and link count are coalesced at commit)."""
        ino = self[() if rel is None else rel]
        self._enter(txn)
        node = self._read.get(ino)
        if node is None:
            node = self._read[ino] = namespace.get(txn, ino)  # raises if it is gone
        return node


def _ensure_dir_action(ns: str, dirs: _Dirs) -> Action:
    """Make directory `ns` and its missing parents; record it as the put's top."""
    def action(txn: WriteTxn, _: list[ChunkRef]) -> Manifest | None:
        dirs[()] = namespace.mkdir(txn, ns, parents=True, exist_ok=True).ino
        return None
    return action


def _mkdir_action(dirs: _Dirs, rel: tuple[str, ...], st: LocalStat) -> Action:
    """Make directory `rel` with the local one's mode, owner and times: its entries are
    added without touching it, so a directory this put makes needs no second write
    when it is left (a third of a small-file put's inode writes). One that exists is
    kept as it is until then."""
    def action(txn: WriteTxn, _: list[ChunkRef]) -> Manifest | None:
        parent = dirs.parent(txn, rel[:-1])
        try:
            node = namespace.mkdir_in(txn, parent, rel[-1], st.st_mode, uid=st.st_uid,
                                      gid=st.st_gid, touch=False, atime_ns=st.st_atime_ns,
                                      mtime_ns=st.st_mtime_ns, now=dirs.now(txn))
        except ExistsError:  # raised before any write
            node = namespace.mkdir_in(txn, parent, rel[-1], exist_ok=True, touch=False)
        else:
            dirs.made.add(rel)
            dirs.made_in(txn, node)
        dirs[rel] = node.ino
        return None
    return action


def _dir_attrs_action(dirs: _Dirs, rel: tuple[str, ...], st: LocalStat) -> Action:
    def action(txn: WriteTxn, _: list[ChunkRef]) -> Manifest | None:
        if rel in dirs.made:  # made with these attributes (_mkdir_action)
            dirs.made.discard(rel)  # held only while the walk is inside it
            return None
        namespace.set_attrs_of(txn, namespace.get(txn, dirs[rel]), mode=st.st_mode,
                               uid=st.st_uid, gid=st.st_gid, atime_ns=st.st_atime_ns,
                               mtime_ns=st.st_mtime_ns)
        return None
    return action


def _symlink_action(dirs: _Dirs, parent_rel: tuple[str, ...] | None, name: str, target: str,
                    st: LocalStat) -> Action:
    def action(txn: WriteTxn, _: list[ChunkRef]) -> Manifest | None:
        parent = dirs.parent(txn, parent_rel)
        replaced = None
        if namespace.child(txn, parent, name) is not None:
            # conflicts with directories were refused before writing
            replaced = namespace.unlink_in(txn, parent, name, touch=False)
        namespace.symlink_in(txn, parent, name, target, uid=st.st_uid, gid=st.st_gid,
                             mtime_ns=st.st_mtime_ns, touch=False, now=dirs.now(txn))
        return replaced
    return action


class _FileAction(RunAction):
    """Write file `name` of the put's directory `parent_rel` with the local one's mode,
    owner and modification time. The files of a run in one directory are written
    together (`namespace.write_files_in`): the committer's calls a file were a third
    of its time on a small-file put."""

    __slots__ = ("dirs", "name", "st")

    def __init__(self, dirs: _Dirs, parent_rel: tuple[str, ...] | None, name: str,
                 st: LocalStat) -> None:
        super().__init__(parent_rel)
        self.dirs, self.name, self.st = dirs, name, st

    def apply_run(self, txn: WriteTxn, items: Sequence[tuple[list[ChunkRef], Action]],
                  ) -> list[Manifest | None]:
        mine = cast("Sequence[tuple[list[ChunkRef], _FileAction]]", items)
        files = [(a.name, refs, a.st.st_mode, a.st.st_uid, a.st.st_gid, a.st.st_mtime_ns)
                 for refs, a in mine]
        dirs, rel = self.dirs, cast("tuple[str, ...] | None", self.run)
        return namespace.write_files_in(txn, dirs.parent(txn, rel), files, now=dirs.now(txn))


class _ExistingFiles:
    """Whether a local file is in place already in the namespace (same size,
    modification time and mode), so a repeated put does not read it again."""

    def __init__(self, engine: MetaEngine, base: list[str]) -> None:
        self.engine, self.dirs = engine, NsDirs(base)

    def unchanged(self, e: LocalEntry) -> bool:
        """Whether local file `e` is in place unchanged."""
        with self.engine.read() as txn:
            found = self.dirs.entry(txn, e.rel)
        return (found is not None and found.kind == Kind.FILE
                and in_place(found.size, found.mtime_ns, found.mode, e.st))


_RestoreOp = Literal["mkdir", "dirattrs", "symlink", "file"]
#: One step of a get: (op, local path, inode, manifest of a file).
_RestoreItem = tuple[_RestoreOp, str, Inode, Manifest | None]


def _streamed(batch: list[_RestoreItem]) -> bool:
    """Whether `batch` is one big file, streamed rather than read ahead whole."""
    files = [node for op, _, node, _ in batch if op == "file"]
    return len(files) == 1 and files[0].size > RESTORE_BATCH_BYTES // 4


def _restore_batches(entries: Iterator[tuple[bool, str, Inode, Manifest | None]],
                     ) -> Generator[list[_RestoreItem], None, None]:
    """The steps of a get in order (`entries`: a `GetPlan`'s), in batches of up to
    RESTORE_BATCH_BYTES or RESTORE_BATCH_FILES of small files (a big file alone in
    its batch)."""
    batch: list[_RestoreItem] = []
    size = files = 0
    for leaving, p, node, m in entries:
        if node.kind == Kind.DIR:
            batch.append(("dirattrs" if leaving else "mkdir", p, node, None))
            continue
        if node.kind == Kind.SYMLINK:
            batch.append(("symlink", p, node, None))
            continue
        if node.kind != Kind.FILE:
            continue
        item: _RestoreItem = ("file", p, node, m)
        if node.size > RESTORE_BATCH_BYTES // 4:  # streamed alone
            if files:
                yield batch
                batch, size, files = [], 0, 0
            yield [*batch, item]
            batch = []
            continue
        batch.append(item)
        size += node.size
        files += 1
        if size >= RESTORE_BATCH_BYTES or files >= RESTORE_BATCH_FILES:
            yield batch
            batch, size, files = [], 0, 0
    if batch:
        yield batch


__all__ = ["Client", "DuReport", "Stat", "TransferReport"]

#: DuReport and Stat (gfs.namespace_api), still importable from here
__getattr__ = lazy_exports(__name__, {"DuReport": "gfs.namespace_api",
                                       "Stat": "gfs.namespace_api"})
