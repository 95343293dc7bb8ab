"""A put's walk of its local tree, on a thread of its own beside the put's pipeline.

Listing and stat-ing a tree of small files is about a tenth of a put (0.11 s for the
16,000 entries of a smallfiles snapshot: ~7 us of system calls an entry on this
kind of machine). The walk also checks the tree against the namespace (conflicts,
unreadable or badly named entries) before anything is written. `PutWalk` runs it on
its own thread and hands the entries to the put as they are listed, so the reading,
cutting and compressing of the first files overlap the walk of the rest; the put's
first commit waits for the whole walk (`PutWalk.wait` is its write session's gate),
so a conflict anywhere in the tree still means nothing is committed. On a local disk
the put is bound by the GIL and the overlap gains little (measured: no change); where
listings are slow, as on a network filesystem, the pipeline runs behind the walk.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gfs import namespace, paths
from gfs._native import LocalEntry as LocalEntry
from gfs._native import LocalStat as LocalStat
from gfs._native import scan_dir
from gfs.errors import IsADirError, NotADirError, NotFoundError
from gfs.meta import Inode, Kind, MetaEngine, ReadTxn
from gfs.put_listings import Listings as Listings

#: A put's walk hands over at most this many entries (~510 B each: ~10 MB, held until
#: the put takes them): the walk of a bigger tree stops handing entries over there,
#: checks the rest of the tree, and the put then walks on from where it stopped
#: (`walk_local(after=...)`). At 50,000 the kept part was the 31 MiB by which put's
#: peak grew from 10^4 to 10^5 files.
PUT_WALK_KEPT = 20_000
#: Entries handed over at a time: the first hand-overs are small, so the put starts
#: on the first files while the walk goes on; later ones cost less an entry.
HAND_OVER_FIRST = 8
HAND_OVER_MAX = 256
#: ... and at least this often (s), however slow the listings (a network filesystem).
HAND_OVER_EVERY = 0.005
#: A walk's `found` callback gets the sizes of this many regular files summed, at most.
FOUND_EVERY = 1024

Step = tuple[bool, LocalEntry]


def local_stat(st: os.stat_result) -> LocalStat:
    """The fields of `st` a put uses (gfs._native.LocalStat)."""
    return LocalStat((st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_atime_ns,
                      st.st_mtime_ns))


def list_local(entry: LocalEntry, listings: Listings | None = None) -> list[LocalEntry]:
    """The entries of local directory `entry`, by name (checked: names, readability),
    from `listings` if given.

    One native call lists, lstats and access-checks the directory (`scan_dir`): per
    entry, os.scandir, DirEntry.stat and os.access cost ~8 us of Python (0.11 s over
    the 13,000 entries of a release). With `listings`, the entries of a directory
    whose every entry is plain (stat'ed, readable, a name valid as it is) are made in
    that call too; the others are checked here, raising what the first bad entry
    in name order gives."""
    try:
        if listings is None:
            rows = scan_dir(entry.path)
        else:
            rows, made = listings.listing(entry)
            if made is not None:
                return made
    except PermissionError:
        raise PermissionError(f"cannot read local directory {entry.path}") from None
    rows.sort()  # by name: names are unique
    prefix = entry.path if entry.path.endswith(os.sep) else entry.path + os.sep
    rel, check_name = entry.rel, paths.check_name
    out = []
    for name, mode, uid, gid, size, atime_ns, mtime_ns, flag in rows:
        path = prefix + name  # os.path.join(entry.path, name), as DirEntry.path
        check_name(name, path)
        if mode < 0:  # lstat failed (the entry went meanwhile): as DirEntry.stat raises
            raise OSError(flag, os.strerror(flag), path)
        if not flag:
            raise PermissionError(f"cannot read local file {path}")
        out.append(LocalEntry(((*rel, name), path,
                               LocalStat((mode, uid, gid, size, atime_ns, mtime_ns)))))
    return out


def walk_local(src: Path, top: os.stat_result, *,
               after: tuple[tuple[str, ...], bool] | None = None,
               listings: Listings | None = None) -> Iterator[Step]:
    """(leaving, entry) for a local tree: each entry as it is entered (parents before
    children, by name within a directory), and each directory again (leaving=True)
    after everything below it. Holds one directory listing per level, not the tree.

    With `after` = (rel, leaving), a step of an earlier walk of the tree, the walk
    goes on right after that step: the steps up to it are left out, and a directory
    wholly before it is not listed again. A whole walk lists ahead (`listings`, else
    its own `Listings`)."""
    root = LocalEntry(((), str(src), local_stat(top)))
    # (a resumed walk skips, unread)
    ahead = (listings or Listings()) if after is None else None
    if after is None:
        yield False, root
    elif after == ((), True):  # the last step
        return
    if not statmod.S_ISDIR(top.st_mode):
        return
    stack: list[tuple[LocalEntry, Iterator[LocalEntry]]] = [(root, iter(list_local(root, ahead)))]
    while stack:
        entry, kids = stack[-1]
        kid = next(kids, None)
        if kid is None:
            stack.pop()
            yield True, entry
            continue
        is_dir = statmod.S_ISDIR(kid.st.st_mode)
        if after is not None and kid.rel <= after[0]:
            # entered before; below it too, unless `after` is inside it (or its entering)
            rel, left = after
            if is_dir and rel[:len(kid.rel)] == kid.rel and not (left and rel == kid.rel):
                stack.append((kid, iter(list_local(kid, ahead))))
            continue
        yield False, kid
        if is_dir:
            stack.append((kid, iter(list_local(kid, ahead))))


class NsDirs:
    """Looks up the namespace entries a local tree maps to under `base`, remembering
    the last parent directory (a walk visits a directory's entries together)."""

    def __init__(self, base: list[str]) -> None:
        self.base = base
        self._parent: tuple[tuple[str, ...] | None, int | None] = (None, None)

    def entry(self, txn: ReadTxn, rel: tuple[str, ...]) -> Inode | None:
        """The namespace entry at `base`/`rel`, or None."""
        if not rel:
            try:
                return namespace.resolve(txn, paths.join(self.base))
            except (NotFoundError, NotADirError):
                return None
        prel = rel[:-1]
        if self._parent[0] != prel:
            try:
                node: Inode | None = namespace.resolve(txn, paths.join([*self.base, *prel]))
            except (NotFoundError, NotADirError):
                node = None
            self._parent = (prel, node.ino if node is not None and node.kind == Kind.DIR
                            else None)
        parent = self._parent[1]
        ino = None if parent is None else txn.lookup(parent, rel[-1])
        return None if ino is None else txn.get_inode(ino)


def check_conflict(txn: ReadTxn, parents: NsDirs, e: LocalEntry) -> None:
    """Refuse a local entry that would replace a directory with a non-directory or the
    other way round."""
    found = parents.entry(txn, e.rel)
    if found is None:
        return
    is_dir = statmod.S_ISDIR(e.st.st_mode)
    ns = paths.join([*parents.base, *e.rel])
    if is_dir and found.kind != Kind.DIR:
        raise NotADirError(ns, "cannot replace a non-directory with a directory")
    if not is_dir and found.kind == Kind.DIR:
        hint = "; to put it inside, end the destination with '/'" if not e.rel else ""
        raise IsADirError(ns, f"cannot replace a directory with a file{hint}")


class WalkCancelled(Exception):
    """The put stopped (interrupted) before its walk ended: nothing may commit."""


class PutWalk:
    """The walk of a put's local tree `src` (stat `top`) onto namespace path `base`,
    on a thread named "hutong-walk" from construction on.

    `steps()` gives the walk's steps in order, as they are listed; `wait()` returns
    once the whole tree was walked and checked (`check_conflict`, and names and
    readability in `list_local`), or raises what the walk found. Where
    `dest_exists` is false nothing below `base` exists and only the local tree is
    checked. `listings`: the tree's listings begun before (`list_ahead`). `found(n)`,
    if given, is called on the walk's thread with the summed sizes of the regular files
    the walk has met, at least every FOUND_EVERY files and once at its end, so a
    progress display knows the whole tree's size without walking it first. Use it as
    a context manager: leaving stops the walk."""

    def __init__(self, engine: MetaEngine, src: Path, top: os.stat_result, base: list[str],
                 dest_exists: bool, *, kept: int | None = None,
                 listings: Listings | None = None,
                 found: Callable[[int], None] | None = None) -> None:
        if kept is not None and kept < 1:
            raise ValueError("a put's walk hands over at least one entry")
        self._engine, self._src, self._top = engine, src, top
        self._base, self._dest_exists = base, dest_exists
        self._kept = PUT_WALK_KEPT if kept is None else kept
        self._listings = listings  # begun before the walk (gfs.put_listings.list_ahead)
        self._found = found
        self._handed: queue.SimpleQueue[list[Step] | None] = queue.SimpleQueue()
        self._after: tuple[tuple[str, ...], bool] | None = None  # the last step handed over
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="hutong-walk", daemon=True)
        self._thread.start()

    def __enter__(self) -> PutWalk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def _run(self) -> None:
        try:
            with contextlib.ExitStack() as stack:
                txn = stack.enter_context(self._engine.read()) if self._dest_exists else None
                parents = NsDirs(self._base)
                block: list[Step] = []
                size, handed = HAND_OVER_FIRST, 0
                last: tuple[tuple[str, ...], bool] = ((), False)
                due = time.monotonic() + HAND_OVER_EVERY
                found, met, met_bytes = self._found, 0, 0
                for step in walk_local(self._src, self._top, listings=self._listings):
                    if self._stop:
                        raise WalkCancelled("the put stopped before its walk ended")
                    leaving, e = step
                    if found is not None and not leaving and statmod.S_ISREG(e.st.st_mode):
                        met, met_bytes = met + 1, met_bytes + e.st.st_size
                        if met == FOUND_EVERY:
                            found(met_bytes)
                            met, met_bytes = 0, 0
                    if txn is not None and not leaving:
                        check_conflict(txn, parents, e)
                    if self._after is not None:
                        continue  # checked only: the put walks again from `_after`
                    if not leaving and handed == self._kept:  # a big tree: hand over no more
                        self._after = last
                        continue
                    block.append(step)
                    handed += not leaving
                    last = (e.rel, leaving)
                    if len(block) >= size or time.monotonic() >= due:
                        self._handed.put(block)
                        block, size = [], min(2 * size, HAND_OVER_MAX)
                        due = time.monotonic() + HAND_OVER_EVERY
                if found is not None and met:  # before the last steps reach the put
                    found(met_bytes)
                if block:
                    self._handed.put(block)
        except BaseException as e:  # for the put: at its next step, or its first commit
            self._error = e
        finally:
            self._handed.put(None)

    def steps(self) -> Iterator[Step]:
        """The walk's steps in order; raises what the walk found once the steps before
        it were given (a bigger tree than `kept` entries is walked again from where
        handing over stopped, once the whole tree was checked)."""
        while (block := self._handed.get()) is not None:
            yield from block
        self.wait()
        if self._after is not None:
            yield from walk_local(self._src, self._top, after=self._after)

    def wait(self) -> None:
        """Wait for the whole walk; raise what it found (again at every call)."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop the walk where it is (a walk that had not ended fails: `wait` raises
        WalkCancelled) and wait for its thread."""
        self._stop = True
        self._thread.join()
