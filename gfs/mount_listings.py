"""Directory listings read ahead by the mount on a server engine, for lookups within the TTL.

A program that stats many names of one directory (`ls -l` without readdirplus,
`find`, `rsync`, a build) makes the kernel send one LOOKUP per name once its entries
expire: on a database server each is a round trip and a thread hop. After `after`
lookups in one directory within `ttl` seconds, `DirListings` reads the whole
directory (entries and their inodes: one query on PostgreSQL) on a worker thread,
and later lookups in it are answered on the event loop from that listing, positive
or negative, with entry and attribute timeouts cut to what is left of `ttl` since
the listing's snapshot began: the kernel keeps no answer longer than `ttl` after it
was read, so another client's change shows within `ttl`, as with the kernel's own
caches. Not read ahead for `SKIP_FOR` seconds: a directory found longer than
`max_entries` entries (only its first page is read to tell) or empty.

Every write transaction of this process is applied to the listings as it commits
(`MetaEngine.watch_inodes`: the inodes and directory entries it wrote), so the
mount's own changes show at once and a directory it keeps changing (a program
renaming or creating file after file) keeps its listing: the entries it wrote are
set or removed, the inodes it wrote replaced. A listing the change cannot be applied
to exactly (an entry naming an inode neither the transaction nor the listing holds,
a deleted inode still named, the directory itself deleted, a commit of unknown
outcome) is dropped. The commits made while a listing is read are applied to it
once read (those its snapshot already saw are applied again, to the same effect; a
later change by another client it saw may be hidden by one of ours, an answer at
least as new as the listing's start, so still within `ttl`). The mount hands each
answer to the engine as rows a write may assume (`MetaEngine.note_lookup`), and a
miss in a directory it just changed to the create that follows (gfs.mount_recent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from gfs.meta import Inode, MetaEngine

log = logging.getLogger(__name__)

#: Lookups in one directory within the TTL after which it is read ahead.
READ_AHEAD_AFTER = 3
#: Directories with more entries are not read ahead (nor kept once grown past it).
MAX_ENTRIES = 1000
#: Listings kept at most (the oldest are dropped first; with MAX_ENTRIES, about 64,000
#: inodes at most, tens of MB).
MAX_LISTINGS = 64
#: An answer with less than this left of the TTL is not given from a listing.
MIN_LEFT = 0.05
#: Seconds a directory found too long or empty is not read ahead again (else a busy
#: large directory would be read, one page of it, every few lookups).
SKIP_FOR = 60.0

#: What one commit of this process wrote: inodes by number (None: deleted), and
#: directory entries by (directory, name) (the inode named, None: removed), or None
#: when the commit's outcome is unknown (everything is dropped).
Commit = tuple[Mapping[int, Inode | None], Mapping[tuple[int, str], int | None] | None]


class _Listing:
    """One directory's entries (name -> inode number) and their inodes, from a snapshot
    that began at `began` (monotonic), with this mount's later commits applied."""

    __slots__ = ("began", "names", "nodes")

    def __init__(self, entries: Mapping[str, Inode], began: float) -> None:
        self.began = began
        self.names = {name: node.ino for name, node in entries.items()}
        self.nodes = {node.ino: node for node in entries.values()}

    def apply(self, ino: int, inodes: Mapping[int, Inode | None],
              changes: list[tuple[str, int | None]] | None) -> bool:
        """Apply one commit (`changes`: its entries in this directory `ino`); False when
        it cannot be applied exactly (the caller drops the listing)."""
        if ino in inodes and inodes[ino] is None:  # the directory itself is gone
            return False
        if changes:
            named: dict[int, Inode] = {}
            for _, target in changes:  # every inode named is known first, or nothing
                if target is None:
                    continue
                node = inodes[target] if target in inodes else self.nodes.get(target)
                if node is None:
                    return False
                named[target] = node
            for name, target in changes:
                if target is None:
                    self.names.pop(name, None)
                else:
                    self.names[name] = target
            self.nodes.update(named)
        for target, node in inodes.items():
            if target not in self.nodes:
                continue
            if node is not None:
                self.nodes[target] = node
                continue
            del self.nodes[target]
            if target in self.names.values():  # deleted, still named: not exact
                return False
        return True

    def get(self, name: str) -> tuple[bool, Inode | None]:
        """(known, the inode of `name` or None: no such entry)."""
        target = self.names.get(name)
        if target is None:
            return True, None
        node = self.nodes.get(target)  # (None: changing meanwhile; ask the server)
        return node is not None, node


class DirListings:
    """Listings of directories read ahead, each served for `ttl` seconds after its
    snapshot began, with this process's commits applied (thread-safe)."""

    def __init__(self, ttl: float, *, after: int = READ_AHEAD_AFTER,
                 max_entries: int = MAX_ENTRIES, limit: int = MAX_LISTINGS) -> None:
        if ttl <= 0 or after < 1 or max_entries < 1 or limit < 1:
            raise ValueError(f"DirListings: ttl {ttl}, after {after}, max_entries "
                             f"{max_entries} and limit {limit} must all be positive")
        self.ttl = ttl
        self.after = after
        self.max_entries = max_entries
        self.limit = limit
        self._lock = threading.Lock()
        self._lists: dict[int, _Listing] = {}
        self._seen: dict[int, tuple[int, float]] = {}  # dir -> (lookups, since when)
        #: directories being read -> the commits made since their read began
        self._reading: dict[int, list[Commit]] = {}
        self._skip: dict[int, float] = {}  # dir -> until when it is not read ahead
        #: Listings read, lookups answered from them, commits applied to a listing and
        #: listings dropped by a commit (for tests and stats).
        self.reads = 0
        self.answered = 0
        self.applied = 0
        self.dropped = 0

    def committed(self, inodes: Mapping[int, Inode | None],
                  entries: Mapping[tuple[int, str], int | None] | None) -> None:
        """A write transaction of this process committed these inodes and entries
        (`entries` None: it may or may not have): apply them to every listing, or
        drop the listings they cannot be applied to."""
        with self._lock:
            for pending in self._reading.values():
                pending.append((inodes, entries))
            if not self._lists:
                return
            if entries is None:
                self.dropped += len(self._lists)
                self._lists.clear()
                return
            try:
                by_dir = _by_dir(entries)
                for ino in list(self._lists):
                    if self._lists[ino].apply(ino, inodes, by_dir.get(ino)) and \
                            len(self._lists[ino].names) <= self.max_entries:
                        self.applied += ino in by_dir
                    else:
                        self.dropped += 1
                        del self._lists[ino]
            except BaseException:  # none may be left half applied
                self.dropped += len(self._lists)
                self._lists.clear()
                raise

    def answer(self, parent: int, name: str) -> tuple[Inode | None, float] | None:
        """(the inode of `name`, or None: no such entry; seconds left of the TTL) from
        a listing of `parent`, or None when no fresh listing holds the answer."""
        got = self._lists.get(parent)
        if got is None:
            return None
        left = self.ttl - (time.monotonic() - got.began)
        if left < MIN_LEFT:
            with self._lock:
                if self._lists.get(parent) is got:
                    del self._lists[parent]
            return None
        known, node = got.get(name)
        if not known:
            return None
        self.answered += 1
        return node, left

    def wanted(self, parent: int) -> bool:
        """Count a lookup in `parent` that went to the server; True (once) when the
        directory should now be read ahead (the caller then calls `read`)."""
        now = time.monotonic()
        with self._lock:
            n, since = self._seen.get(parent, (0, now))
            if now - since >= self.ttl:
                n, since = 0, now
            n += 1
            skip = self._skip.get(parent)
            if skip is not None and now >= skip:
                del self._skip[parent]
                skip = None
            if n < self.after or parent in self._reading or parent in self._lists or \
                    skip is not None:
                self._seen[parent] = (n, since)
                if len(self._seen) > 4 * self.limit:
                    del self._seen[next(iter(self._seen))]
                return False
            self._seen.pop(parent, None)
            self._reading[parent] = []
            return True

    def read(self, engine: MetaEngine, parent: int) -> None:
        """Read `parent`'s listing (blocking; after `wanted` said so) and keep it, unless
        it is too long, empty (no telling a directory from a file), names a missing
        inode, or a commit of this process made meanwhile cannot be applied to it."""
        mine: list[Commit] = []  # the commits from now on (its snapshot is later)
        with self._lock:
            self._reading[parent] = mine
        try:
            self._read(engine, parent, mine)
        except Exception:  # a read ahead: the lookups go to the server as before
            log.debug("reading directory %d ahead failed", parent, exc_info=True)
        finally:
            with self._lock:
                self._forget_read(parent, mine)

    def _forget_read(self, parent: int, mine: list[Commit]) -> None:
        """Stop recording commits for this read (not for a later read of the same
        directory, which registers a list of its own). Holding the lock."""
        if self._reading.get(parent) is mine:
            del self._reading[parent]

    def _read(self, engine: MetaEngine, parent: int, mine: list[Commit]) -> None:
        began = time.monotonic()
        names: dict[str, Inode] = {}
        with engine.read() as txn:
            entries: list[tuple[str, int]] = []
            for entry in txn.list_dir(parent):
                if len(entries) == self.max_entries:
                    entries = []  # too long: not read ahead for a while, as if empty
                    break
                entries.append(entry)
            for name, ino in entries:
                node = txn.get_inode(ino)
                if node is None:  # damaged: not read ahead for a while, as if empty
                    names = {}
                    break
                names[name] = node
        if not names:
            with self._lock:
                self._skip[parent] = time.monotonic() + SKIP_FOR
                while len(self._skip) > 4 * self.limit:
                    del self._skip[next(iter(self._skip))]
            return
        listing = _Listing(names, began)
        with self._lock:
            self._forget_read(parent, mine)
            for inodes, changed in mine:
                if changed is None or not listing.apply(parent, inodes,
                                                        _by_dir(changed).get(parent)):
                    return
            self.reads += 1
            self._lists[parent] = listing
            now = time.monotonic()
            # the oldest first: over the limit, or expired (this one too, if its read
            # outlasted the TTL)
            while self._lists and (len(self._lists) > self.limit or
                                   now - next(iter(self._lists.values())).began >= self.ttl):
                del self._lists[next(iter(self._lists))]


def _by_dir(entries: Mapping[tuple[int, str], int | None]
            ) -> dict[int, list[tuple[str, int | None]]]:
    """A commit's entries by directory."""
    out: dict[int, list[tuple[str, int | None]]] = {}
    for (parent, name), ino in entries.items():
        out.setdefault(parent, []).append((name, ino))
    return out


__all__ = ["Commit", "DirListings"]
