"""Namespace operations inside a metadata transaction: resolution and POSIX rules.

Every function takes a transaction and either completes or raises one of the
`gfs.errors` OS-like errors; since the transaction then aborts, a refused
operation changes nothing. Symlinks are stored and listed; paths given to this
API are not resolved through them (the FUSE mount resolves them in the kernel).
"""

from __future__ import annotations

import os
import stat as statmod
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from gfs import paths
from gfs.errors import (
    ExistsError,
    InvalidPathError,
    IsADirError,
    NotADirError,
    NotEmptyError,
    NotFoundError,
    NotPermittedError,
    TooManyLinksError,
    _OSLike,
)
from gfs.meta import ROOT_INO, ChunkRef, Inode, Kind, Manifest, ReadTxn, WriteTxn
from gfs.meta.records import NewFile, inode_with, new_inode

DEFAULT_DIR_MODE = 0o755
DEFAULT_FILE_MODE = 0o644
_UID = os.getuid()
_GID = os.getgid()


def now_ns() -> int:
    """The current time in nanoseconds, as stored in inodes."""
    return time.time_ns()


def get(txn: ReadTxn, ino: int, path: str = "") -> Inode:
    """Inode `ino`; a dangling reference is reported as NotFoundError."""
    node = txn.get_inode(ino)
    if node is None:
        node = _DEFERRED.get(id(txn), {}).get(ino)  # made in a `versions_coalesced` block
        if node is None:
            raise NotFoundError(path or f"<inode {ino}>")
    return node


def read_ahead(txn: ReadTxn, *many: str, manifests: bool = False) -> None:
    """Tell `txn` the entries along each of the paths `many` are about to be looked up
    (`ReadTxn.read_ahead`: one round trip on a database server); a malformed path is
    left out (its own use reports it)."""
    walks: list[tuple[int, Sequence[str]]] = []
    for path in many:
        try:
            walks.append((ROOT_INO, paths.split(path)))
        except InvalidPathError:
            continue
    txn.read_ahead(walks, manifests=manifests)


def resolve(txn: ReadTxn, path: str) -> Inode:
    """The inode at `path` (not following symlinks)."""
    parts = paths.split(path)
    ino = ROOT_INO
    if parts:
        txn.read_ahead([(ROOT_INO, parts)])
    for i, name in enumerate(parts):
        child_ino = txn.lookup(ino, name)
        if child_ino is None:
            # only directories have entries: tell "missing" from "not a directory"
            if get(txn, ino, path).kind != Kind.DIR:
                raise NotADirError(paths.join(parts[:i]))
            raise NotFoundError(path)
        ino = child_ino
    return get(txn, ino, path)


def resolve_parent(txn: ReadTxn, path: str) -> tuple[Inode, str]:
    """The directory that holds `path`, and the last component's name."""
    parts = paths.split(path)
    if not parts:
        raise InvalidPathError(path, "the root directory has no parent")
    txn.read_ahead([(ROOT_INO, parts)])  # the last name too: it is looked up next
    parent = resolve(txn, paths.join(parts[:-1]))
    if parent.kind != Kind.DIR:
        raise NotADirError(paths.join(parts[:-1]))
    return parent, parts[-1]


def child(txn: ReadTxn, parent: Inode, name: str) -> Inode | None:
    """The entry `name` of directory `parent`, or None."""
    ino = txn.lookup(parent.ino, name)
    return None if ino is None else get(txn, ino)


def path_of(txn: ReadTxn, ino: int) -> str:
    """The path of inode `ino`, from its parent chain (for messages and fsck)."""
    names: list[str] = []
    seen = set()
    node = txn.get_inode(ino)
    while node is not None and node.ino != ROOT_INO and node.ino not in seen:
        seen.add(node.ino)
        if node.parent == 0:
            return f"<hard-linked inode {node.ino}>"
        parent = txn.get_inode(node.parent)
        if parent is None:
            return f"<orphan inode {ino}>"
        name = next((n for n, i in txn.list_dir(parent.ino) if i == node.ino), None)
        if name is None:
            return f"<unlinked inode {ino}>"
        names.append(name)
        node = parent
    return "/" + "/".join(reversed(names))


def _touch_dir(txn: WriteTxn, parent: Inode, now: int, subdirs: int = 0) -> Inode:
    """Stamp directory `parent` changed (times and change version); `subdirs` added to
    its link count (kept only once known: a directory with nlink 1 predates link
    counts)."""
    cur = get(txn, parent.ino)  # the caller's copy may predate changes in this txn
    nlink = cur.nlink + subdirs if cur.nlink >= 2 else cur.nlink
    new = inode_with(cur, mtime_ns=now, ctime_ns=now, nlink=nlink, version=cur.version + 1)
    _put_dir(txn, new)
    return new


def _put_dir(txn: WriteTxn, node: Inode) -> None:
    """Write directory `node`, or update its copy if its write is deferred (mkdir_in)."""
    deferred = _DEFERRED.get(id(txn))
    if deferred is not None and node.ino in deferred:
        deferred[node.ino] = node
    else:
        txn.put_inode(node)


def _count_subdirs(txn: WriteTxn, parent: int, delta: int) -> None:
    """Add `delta` to directory `parent`'s link count (if known), times unchanged."""
    pending = _COALESCED.get(id(txn))
    if pending is not None:
        pending[parent] = pending.get(parent, 0) + delta
        return
    cur = get(txn, parent)
    nlink = cur.nlink + delta if cur.nlink >= 2 else cur.nlink
    txn.put_inode(inode_with(cur, nlink=nlink, version=cur.version + 1))


def entries_changed(txn: WriteTxn, parent: int) -> None:
    """Advance directory `parent`'s change version, times unchanged.

    A directory's `version` changes whenever an entry is added, removed, renamed or
    replaced in it, or an entry's content or attributes are replaced (docs/format.md):
    a listing cached with its version is revalidated by comparing it. Every function
    of this module that changes entries does it; call this after changing entries
    with the engine's primitives (`txn.link`, `txn.unlink`) directly.
    """
    pending = _COALESCED.get(id(txn))
    if pending is not None:
        pending.setdefault(parent, 0)
        return
    cur = txn.get_inode(parent)
    if cur is not None and cur.kind == Kind.DIR:
        txn.put_inode(inode_with(cur, version=cur.version + 1))


#: By transaction (id) in `versions_coalesced`: the directories whose version
#: `entries_changed` and `_count_subdirs` owe, with the link count change owed.
_COALESCED: dict[int, dict[int, int]] = {}
#: By transaction (id) in `versions_coalesced`: directories `mkdir_in(touch=False)`
#: made there, written once when the block ends (with their link count and version).
_DEFERRED: dict[int, dict[int, Inode]] = {}


@contextmanager
def versions_coalesced(txn: WriteTxn) -> Iterator[None]:
    """In the block, `entries_changed` advances each directory's version once, when the
    block ends, however many of its entries change, and the subdirectories added
    (`mkdir_in(touch=False)`) reach its link count in the same write; readers only ever
    see committed versions, so one step per transaction is enough. A put's commit
    batch rewrote a directory's inode once per entry (6,111 + 2,454 inode writes for
    3,656 files in 2,454 directories of the small-files bench). Inside the block a
    directory's link count lags; on an exception nothing is written (the transaction
    aborts). A directory `mkdir_in(touch=False)` makes in the block is written once, at
    its end, with its entries' version step and link count (it was written twice);
    `get` finds it meanwhile."""
    key = id(txn)
    if key in _COALESCED:  # nested: the outer block advances them
        yield
        return
    pending: dict[int, int] = {}
    deferred: dict[int, Inode] = {}
    _COALESCED[key] = pending
    _DEFERRED[key] = deferred
    try:
        yield
    finally:
        del _COALESCED[key]
        del _DEFERRED[key]
    for ino, node in deferred.items():
        subdirs = pending.pop(ino, None)
        if subdirs is not None:
            node = inode_with(node, nlink=node.nlink + subdirs, version=node.version + 1)
        txn.put_inode(node)
    for ino, subdirs in sorted(pending.items()):
        cur = txn.get_inode(ino)
        if cur is not None and cur.kind == Kind.DIR:
            nlink = cur.nlink + subdirs if cur.nlink >= 2 else cur.nlink
            txn.put_inode(inode_with(cur, nlink=nlink, version=cur.version + 1))


def _new_inode(txn: WriteTxn, parent: int, kind: Kind, mode: int, now: int,
               uid: int | None = None, gid: int | None = None, target: str = "",
               mtime_ns: int | None = None, size: int = 0, version: int = 0,
               rdev: int = 0, atime_ns: int | None = None) -> Inode:
    return new_inode(
        txn.alloc_ino(), parent, kind, mode & 0o7777, _UID if uid is None else uid,
        _GID if gid is None else gid, len(target.encode()) if kind == Kind.SYMLINK else size,
        now if atime_ns is None else atime_ns, now if mtime_ns is None else mtime_ns, now,
        version, target, 2 if kind == Kind.DIR else 1, rdev)


def inherit(parent: Inode, kind: Kind, mode: int, gid: int) -> tuple[int, int]:
    """(mode, gid) of a new `kind` made in `parent` by a caller of group `gid`: in a
    setgid directory it takes the directory's group, and a directory keeps setgid."""
    if not parent.mode & statmod.S_ISGID:
        return mode, gid
    return (mode | statmod.S_ISGID if kind == Kind.DIR else mode), parent.gid


def mkdir(txn: WriteTxn, path: str, mode: int = DEFAULT_DIR_MODE, *, parents: bool = False,
          exist_ok: bool = False, uid: int | None = None, gid: int | None = None,
          mtime_ns: int | None = None) -> Inode:
    """Create directory `path` (`parents`: also missing ancestors, like mkdir -p)."""
    parts = paths.split(path)
    if not parts:
        if exist_ok or parents:
            return get(txn, ROOT_INO, "/")
        raise ExistsError("/")
    node = get(txn, ROOT_INO, "/")
    now = now_ns()
    for i, name in enumerate(parts):
        last = i == len(parts) - 1
        here = paths.join(parts[: i + 1])
        existing = child(txn, node, name)
        if existing is not None:
            if existing.kind != Kind.DIR:
                raise (ExistsError(here) if last else NotADirError(here))
            if last and not (exist_ok or parents):
                raise ExistsError(here)
            if last and mtime_ns is not None:
                existing = inode_with(existing, mode=mode & 0o7777, mtime_ns=mtime_ns)
                txn.put_inode(existing)
            node = existing
            continue
        if not last and not parents:
            raise NotFoundError(paths.join(parts[:i + 1]))
        new = _new_inode(txn, node.ino, Kind.DIR, mode if last else DEFAULT_DIR_MODE, now,
                         uid, gid, mtime_ns=mtime_ns if last else None)
        txn.put_inode(new)
        txn.link(node.ino, name, new.ino)
        _touch_dir(txn, node, now, subdirs=1)
        node = new
    return node


def write_file(txn: WriteTxn, path: str, refs: list[ChunkRef], *, mode: int | None = None,
               uid: int | None = None, gid: int | None = None,
               mtime_ns: int | None = None, xattrs: XattrSource | None = None
               ) -> Manifest | None:
    """Create or replace file `path` with content `refs`; returns the manifest it replaced.

    Replacing a directory raises IsADirError; a symlink at `path` is replaced.
    `xattrs` replace the file's extended attributes in the same transaction.
    """
    parent, name = resolve_parent(txn, path)
    old = write_file_in(txn, parent, name, refs, mode=mode, uid=uid, gid=gid,
                        mtime_ns=mtime_ns, path=path)
    if xattrs is not None:
        node = child(txn, parent, name)
        assert node is not None
        set_xattrs_of(txn, node, xattrs)
    return old


def write_file_in(txn: WriteTxn, parent: Inode, name: str, refs: list[ChunkRef], *,
                  mode: int | None = None, uid: int | None = None, gid: int | None = None,
                  mtime_ns: int | None = None, touch: bool = True, path: str = "",
                  now: int | None = None) -> Manifest | None:
    """`write_file` of entry `name` in directory `parent` (`touch`: update its mtime;
    `now`: the time a new file is made at, default the current time)."""
    pino = parent.ino
    found = txn.lookup(pino, name)
    if found is not None:
        existing = get(txn, found)
        if existing.kind == Kind.DIR:
            raise IsADirError(path or name)
        if existing.kind == Kind.FILE:
            return write_content(txn, inode_with(
                existing, mode=existing.mode if mode is None else mode & 0o7777,
                uid=existing.uid if uid is None else uid,
                gid=existing.gid if gid is None else gid), refs, mtime_ns=mtime_ns)
    if now is None:
        now = time.time_ns()
    if found is not None:  # a symlink or special file: replaced by the file
        _drop_link(txn, existing, now)
    # a new file: what `_new_inode` does, called straight (a put makes one a file)
    size = 0
    for r in refs:
        size += r.length
    node = new_inode(txn.alloc_ino(), pino, Kind.FILE,
                     (DEFAULT_FILE_MODE if mode is None else mode) & 0o7777,
                     _UID if uid is None else uid, _GID if gid is None else gid, size, now,
                     now if mtime_ns is None else mtime_ns, now, 1, "", 1, 0)
    txn.link(pino, name, node.ino)
    if touch:
        _touch_dir(txn, parent, now)
    else:
        entries_changed(txn, pino)
    txn.put_inode(node)
    txn.put_manifest(node.ino, Manifest(1, tuple(refs)))
    return None


def write_files_in(txn: WriteTxn, parent: Inode, files: Sequence[NewFile], *,
                   now: int) -> list[Manifest | None]:
    """`write_file_in(touch=False, now=now)` of each of `files` in directory `parent`,
    in order, with the same results (the manifests they replaced) and the same rows:
    the names not there yet are linked together by the engine's `add_new_files` (a
    put commits a directory's files in runs), the others one by one in their turn."""
    pino = parent.ino
    out: list[Manifest | None] = []
    new: list[NewFile] = []
    names: set[str] = set()

    def add_new() -> None:
        txn.add_new_files(pino, new, now)
        for _ in new:  # as each `write_file_in` does (coalesced: one step in all)
            entries_changed(txn, pino)
        new.clear()
        names.clear()

    lookup = txn.lookup
    for file in files:
        name = file[0]
        if name in names or lookup(pino, name) is not None:
            if new:  # in order: a replaced entry sees the entries before it
                add_new()
            _, refs, mode, uid, gid, mtime_ns = file
            out.append(write_file_in(txn, parent, name, refs, mode=mode, uid=uid, gid=gid,
                                     mtime_ns=mtime_ns, touch=False, now=now))
            continue
        new.append(file)
        names.add(name)
        out.append(None)
    if new:
        add_new()
    return out


def write_content(txn: WriteTxn, node: Inode, refs: list[ChunkRef], *,
                  mtime_ns: int | None = None) -> Manifest | None:
    """Make `refs` the content of file `node` (by inode, whatever its links); returns
    the manifest it replaced."""
    if node.kind == Kind.DIR:
        raise IsADirError(f"<inode {node.ino}>")
    if node.kind != Kind.FILE:
        raise InvalidPathError(f"<inode {node.ino}>", "not a regular file")
    now = now_ns()
    old = txn.get_manifest(node.ino)
    new = inode_with(node, size=sum(r.length for r in refs), version=node.version + 1,
                  ctime_ns=now, mtime_ns=now if mtime_ns is None else mtime_ns)
    txn.put_inode(new)
    txn.put_manifest(new.ino, Manifest(new.version, tuple(refs)))
    if node.parent:  # a hard-linked file (parent 0) changes no one listing
        entries_changed(txn, node.parent)
    return old


def mkdir_in(txn: WriteTxn, parent: Inode, name: str, mode: int = DEFAULT_DIR_MODE, *,
             uid: int | None = None, gid: int | None = None, exist_ok: bool = False,
             touch: bool = True, atime_ns: int | None = None,
             mtime_ns: int | None = None, now: int | None = None) -> Inode:
    """Create directory `name` in `parent`; an existing directory is returned (unchanged)
    if `exist_ok`. `atime_ns` and `mtime_ns` are the new directory's times (default:
    `now`, the time it is made at: default the current time)."""
    pino = parent.ino
    found = txn.lookup(pino, paths.check_name(name))
    if found is not None:
        existing = get(txn, found)
        if existing.kind == Kind.DIR and exist_ok:
            return existing
        raise ExistsError(name) if existing.kind == Kind.DIR else NotADirError(name)
    if now is None:
        now = time.time_ns()
    # what `_new_inode` does, called straight (a put makes one a directory)
    new = new_inode(txn.alloc_ino(), pino, Kind.DIR, mode & 0o7777,
                    _UID if uid is None else uid, _GID if gid is None else gid, 0,
                    now if atime_ns is None else atime_ns,
                    now if mtime_ns is None else mtime_ns, now, 0, "", 2, 0)
    deferred = None if touch else _DEFERRED.get(id(txn))
    if deferred is not None:
        deferred[new.ino] = new  # written when the versions_coalesced block ends
    else:
        txn.put_inode(new)
    txn.link(pino, name, new.ino)
    if touch:
        _touch_dir(txn, parent, now, subdirs=1)
    else:
        _count_subdirs(txn, pino, 1)
    return new


def symlink(txn: WriteTxn, path: str, target: str, *, uid: int | None = None,
            gid: int | None = None, mtime_ns: int | None = None) -> Inode:
    """Create symlink `path` pointing at `target` (any string; stored as is)."""
    parent, name = resolve_parent(txn, path)
    return symlink_in(txn, parent, name, target, uid=uid, gid=gid, mtime_ns=mtime_ns,
                      path=path)


def symlink_in(txn: WriteTxn, parent: Inode, name: str, target: str, *,
               uid: int | None = None, gid: int | None = None, mtime_ns: int | None = None,
               touch: bool = True, path: str = "", now: int | None = None) -> Inode:
    """`symlink` of entry `name` in directory `parent` (made at `now`, default the
    current time)."""
    if not target or "\0" in target or len(target.encode()) > paths.MAX_PATH_BYTES:
        raise InvalidPathError(path or name, "symlink target must be 1-4096 bytes without NUL")
    if child(txn, parent, name) is not None:
        raise ExistsError(path or name)
    if now is None:
        now = now_ns()
    node = _new_inode(txn, parent.ino, Kind.SYMLINK, 0o777, now, uid, gid, target=target,
                      mtime_ns=mtime_ns)
    txn.put_inode(node)
    txn.link(parent.ino, name, node.ino)
    if touch:
        _touch_dir(txn, parent, now)
    else:
        entries_changed(txn, parent.ino)
    return node


def unlink_in(txn: WriteTxn, parent: Inode, name: str, *, touch: bool = True,
              path: str = "") -> Manifest | None:
    """Remove the file or symlink `name` of `parent`; returns the file's manifest."""
    txn.read_ahead([(parent.ino, [name])], manifests=True)
    node = child(txn, parent, name)
    if node is None:
        raise NotFoundError(path or name)
    if node.kind == Kind.DIR:
        raise IsADirError(path or name)
    now = now_ns()
    m = _drop_link(txn, node, now)
    txn.unlink(parent.ino, name)
    if touch:
        _touch_dir(txn, parent, now)
    else:
        entries_changed(txn, parent.ino)
    return m


def _drop_link(txn: WriteTxn, node: Inode, now: int) -> Manifest | None:
    """One directory entry of non-directory `node` goes (the caller removes the entry):
    its link count falls, and the last link deletes it. Returns the manifest of a
    deleted file (to release)."""
    if node.nlink > 1:
        txn.put_inode(inode_with(node, nlink=node.nlink - 1, ctime_ns=now))
        return None
    m = txn.get_manifest(node.ino) if node.kind == Kind.FILE else None
    txn.delete_manifest(node.ino)
    txn.delete_inode(node.ino)
    drop_inode_values(txn, [node.ino])
    return m


def mknod_in(txn: WriteTxn, parent: Inode, name: str, kind: Kind, mode: int, *,
             rdev: int = 0, uid: int | None = None, gid: int | None = None) -> Inode:
    """Create special file `name` in `parent` (a FIFO, socket or device node: metadata
    only); an existing entry raises ExistsError."""
    if kind in (Kind.FILE, Kind.DIR, Kind.SYMLINK):
        raise InvalidPathError(name, f"mknod makes special files, not {kind.name.lower()}")
    if child(txn, parent, paths.check_name(name)) is not None:
        raise ExistsError(name)
    now = now_ns()
    node = _new_inode(txn, parent.ino, kind, mode, now, uid, gid,
                      rdev=rdev if kind in (Kind.CHARDEV, Kind.BLOCKDEV) else 0)
    txn.put_inode(node)
    txn.link(parent.ino, name, node.ino)
    _touch_dir(txn, parent, now)
    return node


#: The largest link count of an inode (ext4's).
LINK_MAX = 65000


def link_in(txn: WriteTxn, node: Inode, parent: Inode, name: str) -> Inode:
    """Make `name` in directory `parent` another link to non-directory `node`."""
    if node.kind == Kind.DIR:
        raise NotPermittedError(name, "hard links to directories are not allowed")
    if parent.kind != Kind.DIR:
        raise NotADirError(name)
    if child(txn, parent, paths.check_name(name)) is not None:
        raise ExistsError(name)
    if node.nlink >= LINK_MAX:
        raise TooManyLinksError(name)
    now = now_ns()
    new = inode_with(node, nlink=node.nlink + 1, ctime_ns=now, parent=0)
    txn.put_inode(new)
    txn.link(parent.ino, name, node.ino)
    _touch_dir(txn, parent, now)
    return new


def readdir(txn: ReadTxn, ino: int) -> list[tuple[str, Inode]]:
    """The (name, inode) entries of directory `ino`, in name byte order (an entry
    naming a missing inode is left out: fsck reports it).

    The entries are read first: only directories have entries, so a directory with
    any needs no read of itself (on a database server one query, which brings the
    entries' inodes along, instead of two)."""
    out = []
    listed = False
    for n, i in txn.list_dir(ino):
        listed = True
        kid = txn.get_inode(i)
        if kid is not None:
            out.append((n, kid))
    if not listed and get(txn, ino).kind != Kind.DIR:
        raise NotADirError(f"<inode {ino}>")
    return out


def lookup(txn: ReadTxn, parent: int, name: str) -> Inode:
    """The entry `name` of directory `parent` (NotFoundError, NotADirError).

    The entry is looked up first: only directories have entries, so a found entry
    needs no read of `parent` (one query on a database server, which brings the
    entry's inode along)."""
    ino = txn.lookup(parent, paths.check_name(name))
    if ino is None:
        if get(txn, parent).kind != Kind.DIR:
            raise NotADirError(f"<inode {parent}>")
        raise NotFoundError(name)
    return get(txn, ino)


def rmdir_in(txn: WriteTxn, parent: Inode, name: str) -> None:
    """Remove the empty directory `name` of `parent`."""
    node = child(txn, parent, name)
    if node is None:
        raise NotFoundError(name)
    if node.kind != Kind.DIR:
        raise NotADirError(name)
    if next(iter(txn.list_dir(node.ino)), None) is not None:
        raise NotEmptyError(name)
    drop_inode_values(txn, [node.ino])
    txn.delete_inode(node.ino)
    txn.unlink(parent.ino, name)
    _touch_dir(txn, parent, now_ns(), subdirs=-1)


def walk(txn: ReadTxn, top: Inode) -> Iterator[Inode]:
    """`top` and everything below it, parents before children."""
    stack = [top]
    while stack:
        node = stack.pop()
        yield node
        if node.kind == Kind.DIR:
            kids = [get(txn, ino) for _, ino in txn.list_dir(node.ino)]
            stack.extend(reversed(kids))


def remove(txn: WriteTxn, path: str, *, recursive: bool = False,
           dir_ok: bool = True) -> list[Manifest]:
    """Remove `path`; returns the manifests of the removed files (to release).

    A non-empty directory needs `recursive`; `dir_ok=False` refuses directories
    (unlink semantics). The root cannot be removed.
    """
    read_ahead(txn, path, manifests=True)
    parent, name = resolve_parent(txn, path)
    node = child(txn, parent, name)
    if node is None:
        raise NotFoundError(path)
    if node.kind == Kind.DIR:
        if not dir_ok:
            raise IsADirError(path)
        if not recursive and next(iter(txn.list_dir(node.ino)), None) is not None:
            raise NotEmptyError(path)
    removed: list[Manifest] = []
    now = now_ns()
    for n in list(walk(txn, node)):
        if n.kind == Kind.DIR:
            drop_inode_values(txn, [n.ino])  # e.g. xattrs: inodes are never reused
            for entry, _ in list(txn.list_dir(n.ino)):
                txn.unlink(n.ino, entry)
            txn.delete_inode(n.ino)
            continue
        m = _drop_link(txn, get(txn, n.ino), now)  # a hard link outside may keep it
        if m is not None:
            removed.append(m)
    txn.unlink(parent.ino, name)
    _touch_dir(txn, parent, now, subdirs=-1 if node.kind == Kind.DIR else 0)
    return removed


def rename(txn: WriteTxn, src: str, dst: str) -> list[Manifest]:
    """Move `src` to `dst` with POSIX rename rules; returns manifests it replaced.

    A file may replace a file or symlink; a directory may replace an empty
    directory; a directory cannot move below itself.
    """
    read_ahead(txn, src, dst)
    sparent, sname = resolve_parent(txn, src)
    if child(txn, sparent, sname) is None:  # the source is reported first
        raise NotFoundError(src)
    dparent, dname = resolve_parent(txn, dst)
    try:
        return rename_in(txn, sparent, sname, dparent, dname)
    except _OSLike as e:
        raise type(e)(dst, e.strerror) from None


def _inside(txn: ReadTxn, node: Inode, where: Inode) -> bool:
    """Whether directory `where` is `node` or below it."""
    anc: Inode | None = where
    while anc is not None:
        if anc.ino == node.ino:
            return True
        if anc.ino == ROOT_INO:
            return False
        anc = txn.get_inode(anc.parent)
    return False


def rename_in(txn: WriteTxn, sparent: Inode, sname: str, dparent: Inode, dname: str, *,
              noreplace: bool = False, exchange: bool = False) -> list[Manifest]:
    """rename(2) of entry `sname` of `sparent` to `dname` of `dparent`; returns the
    manifests of files it deleted (to release). `noreplace` and `exchange` are
    renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE."""
    if dparent.kind != Kind.DIR:
        raise NotADirError(dname)
    node = child(txn, sparent, sname)
    if node is None:
        raise NotFoundError(sname)
    target = child(txn, dparent, paths.check_name(dname))
    if exchange:
        if target is None:
            raise NotFoundError(dname)
        _exchange(txn, sparent, sname, node, dparent, dname, target)
        return []
    if target is not None and noreplace:
        raise ExistsError(dname)
    if sparent.ino == dparent.ino and sname == dname:
        return []
    if target is not None and target.ino == node.ino:
        return []  # two links to one inode: rename does nothing
    if node.kind == Kind.DIR and sparent.ino != dparent.ino:
        # the ancestors _inside reads are written by no one here: two such moves
        # could each pass the check and make a loop (Linux's s_vfs_rename_mutex)
        txn.serialize_on("directory-move")
        if _inside(txn, node, dparent):
            raise InvalidPathError(dname, "cannot move a directory inside itself")
    now = now_ns()
    replaced: list[Manifest] = []
    dst_subdirs = 1 if node.kind == Kind.DIR else 0
    if target is not None:
        if node.kind == Kind.DIR and target.kind != Kind.DIR:
            raise NotADirError(dname)
        if node.kind != Kind.DIR and target.kind == Kind.DIR:
            raise IsADirError(dname)
        if target.kind == Kind.DIR:
            if next(iter(txn.list_dir(target.ino)), None) is not None:
                raise NotEmptyError(dname)
            txn.delete_inode(target.ino)
            drop_inode_values(txn, [target.ino])
            dst_subdirs -= 1
        else:
            m = _drop_link(txn, target, now)
            if m is not None:
                replaced.append(m)
    txn.unlink(sparent.ino, sname)
    txn.link(dparent.ino, dname, node.ino)
    _moved(txn, node, dparent.ino, now)
    src_subdirs = -1 if node.kind == Kind.DIR else 0
    if dparent.ino == sparent.ino:
        _touch_dir(txn, sparent, now, subdirs=src_subdirs + dst_subdirs)
    else:
        _touch_dir(txn, sparent, now, subdirs=src_subdirs)
        _touch_dir(txn, dparent, now, subdirs=dst_subdirs)
    return replaced


def _moved(txn: WriteTxn, node: Inode, parent: int, now: int) -> None:
    """Record that `node` is now linked from `parent` (a hard-linked file keeps 0)."""
    cur = get(txn, node.ino)
    keep = cur.kind != Kind.DIR and cur.nlink > 1
    txn.put_inode(inode_with(cur, parent=cur.parent if keep else parent, ctime_ns=now))


def _exchange(txn: WriteTxn, sparent: Inode, sname: str, node: Inode, dparent: Inode,
              dname: str, target: Inode) -> None:
    """RENAME_EXCHANGE: swap the two entries atomically."""
    if node.ino == target.ino:
        return
    if sparent.ino != dparent.ino and Kind.DIR in (node.kind, target.kind):
        txn.serialize_on("directory-move")  # as in rename_in
    if (node.kind == Kind.DIR and _inside(txn, node, dparent)) or \
            (target.kind == Kind.DIR and _inside(txn, target, sparent)):
        raise InvalidPathError(dname, "cannot move a directory inside itself")
    now = now_ns()
    txn.link(sparent.ino, sname, target.ino)
    txn.link(dparent.ino, dname, node.ino)
    _moved(txn, node, dparent.ino, now)
    _moved(txn, target, sparent.ino, now)
    dirs = (node.kind == Kind.DIR) - (target.kind == Kind.DIR)
    if sparent.ino == dparent.ino:
        _touch_dir(txn, sparent, now)
    else:
        _touch_dir(txn, sparent, now, subdirs=-dirs)
        _touch_dir(txn, dparent, now, subdirs=dirs)


def set_attrs(txn: WriteTxn, path: str, *, mode: int | None = None, uid: int | None = None,
              gid: int | None = None, atime_ns: int | None = None,
              mtime_ns: int | None = None) -> Inode:
    """Change mode, owner or times of `path`."""
    return set_attrs_of(txn, resolve(txn, path), mode=mode, uid=uid, gid=gid,
                        atime_ns=atime_ns, mtime_ns=mtime_ns)


def set_attrs_of(txn: WriteTxn, node: Inode, *, mode: int | None = None, uid: int | None = None,
                 gid: int | None = None, atime_ns: int | None = None,
                 mtime_ns: int | None = None) -> Inode:
    """Change mode, owner or times of inode `node`."""
    new = inode_with(
        node,
        mode=node.mode if mode is None else mode & 0o7777,
        uid=node.uid if uid is None else uid,
        gid=node.gid if gid is None else gid,
        atime_ns=node.atime_ns if atime_ns is None else atime_ns,
        mtime_ns=node.mtime_ns if mtime_ns is None else mtime_ns,
        ctime_ns=now_ns())
    _put_dir(txn, new)
    if node.parent and node.parent != node.ino:
        entries_changed(txn, node.parent)
    return new


#: The file type bits of st_mode of each kind of inode.
S_IFMT_OF_KIND: dict[Kind, int] = {
    Kind.FILE: statmod.S_IFREG, Kind.DIR: statmod.S_IFDIR, Kind.SYMLINK: statmod.S_IFLNK,
    Kind.FIFO: statmod.S_IFIFO, Kind.SOCKET: statmod.S_IFSOCK, Kind.CHARDEV: statmod.S_IFCHR,
    Kind.BLOCKDEV: statmod.S_IFBLK}
KIND_OF_S_IFMT: dict[int, Kind] = {v: k for k, v in S_IFMT_OF_KIND.items()}


def st_mode(node: Inode) -> int:
    """The POSIX st_mode of an inode (type bits and permission bits)."""
    return S_IFMT_OF_KIND[node.kind] | node.mode


#: Value tables whose keys start with an inode number (u64 BE): the entries of an
#: inode that leaves the namespace (remove, rename over it, unlink, replacement)
#: are dropped with it (the FUSE mount keeps user xattrs in "xattrs").
INODE_VALUE_TABLES: tuple[str, ...] = ("xattrs",)


def drop_inode_values(txn: WriteTxn, inos: Iterator[int] | list[int],
                      tables: tuple[str, ...] = INODE_VALUE_TABLES) -> None:
    """Delete every entry of `tables` keyed by one of `inos` (ino u64 BE + rest)."""
    for ino in inos:
        prefix = ino.to_bytes(8, "big")
        for table in tables:
            txn.delete_values(table, prefix)




#: First byte of an extended attribute's stored value (format of the "xattrs"
#: table: key = ino u64 BE + name, value = this byte + the attribute's bytes).
XATTR_TAG = b"\x01"


def get_xattrs(txn: ReadTxn, ino: int) -> dict[str, bytes]:
    """The extended attributes of inode `ino`, by name (e.g. "user.author")."""
    prefix = ino.to_bytes(8, "big")
    return {k[8:].decode("utf-8", "surrogateescape"): v[1:]
            for k, v in txn.iter_values("xattrs", prefix)}


#: Extended attributes to commit with a file: fixed, or computed from its new inode
#: (e.g. to record the version they describe).
XattrSource = Mapping[str, bytes] | Callable[[Inode], Mapping[str, bytes]]


def set_xattrs_of(txn: WriteTxn, node: Inode, values: XattrSource) -> None:
    """Replace every extended attribute of `node` with `values`."""
    set_xattrs(txn, node.ino, values(node) if callable(values) else values, replace_all=True)


def set_xattrs(txn: WriteTxn, ino: int, values: Mapping[str, bytes], *,
               replace_all: bool = False) -> None:
    """Set the extended attributes `values` of inode `ino`; with `replace_all` the
    attributes not in `values` are removed first."""
    prefix = ino.to_bytes(8, "big")
    if replace_all:
        drop_inode_values(txn, [ino], ("xattrs",))
    for name, value in values.items():
        txn.put_value("xattrs", prefix + name.encode("utf-8", "surrogateescape"),
                      XATTR_TAG + value)


def scan(txn: ReadTxn, top: Inode, *, start: str = "",
         recursive: bool = True) -> Iterator[tuple[str, Inode]]:
    """Entries below directory `top` as (relative key, inode), in the byte order of
    their keys, from the first key >= `start`.

    A key is the path relative to `top` ("a/b.csv"); a directory's key ends with
    "/" ("a/"), so "a-1" comes before "a/b" as object stores order them.
    `recursive` yields every file of the tree (directories are not yielded);
    otherwise the direct entries of `top`, directories included. Only the
    entries yielded and the subtrees that can hold keys >= `start` are read.
    """
    yield from _scan_dir(txn, top.ino, "", start, recursive)


def _scan_dir(txn: ReadTxn, ino: int, prefix: str, start: str,
              recursive: bool) -> Iterator[tuple[str, Inode]]:
    entries = list(txn.list_dir(ino))  # in name byte order
    # A directory's keys sort as name + "/": that differs from the name's own place
    # only when a sibling extends the name with a byte below "/" ("a" vs "a-1").
    keyed: list[tuple[str, str, int, Inode | None]] = []
    for i, (name, child_ino) in enumerate(entries):
        node: Inode | None = None
        nxt = entries[i + 1][0] if i + 1 < len(entries) else ""
        if nxt.startswith(name) and nxt[len(name)] < "/":
            node = get(txn, child_ino)
            sort = name + "/" if node.kind == Kind.DIR else name
        else:
            sort = name
        keyed.append((sort, name, child_ino, node))
    keyed.sort()
    for _, name, child_ino, node in keyed:
        key = prefix + name
        if key + "/" < start and not start.startswith(key + "/"):
            continue  # neither the file nor any key of the subtree is >= start
        node = node or get(txn, child_ino)
        if node.kind != Kind.DIR:
            if key >= start:
                yield key, node
        elif not recursive:
            if key + "/" >= start:
                yield key + "/", node
        elif key + "/" >= start or start.startswith(key + "/"):
            yield from _scan_dir(txn, child_ino, key + "/", start, recursive)
