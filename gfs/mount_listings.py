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
caches. Directories this mount changed within `ttl` (their listing would be
dropped at once) are not read ahead, nor for `SKIP_FOR` seconds one found longer
than `max_entries` entries (only its first page is read to tell) or empty.
Every write transaction of this process drops every listing when it commits
(`MetaEngine.watch_inodes`), and a listing whose read began before such a commit
is not kept, so the mount's own changes always show.
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
#: Directories with more entries are not read ahead.
MAX_ENTRIES = 1000
#: Listings kept at most (the oldest are dropped first; with MAX_ENTRIES, about 64,000
#: inodes at most, tens of MB).
MAX_LISTINGS = 64
#: An answer with less than this left of the TTL is not given from a listing.
MIN_LEFT = 0.05
#: Seconds a directory found too long or empty is not read ahead again (else a busy
#: large directory would be read, one page of it, every few lookups).
SKIP_FOR = 60.0


class DirListings:
    """Listings of directories read ahead, each served for `ttl` seconds after its
    snapshot began (thread-safe)."""

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
        self._gen = 0  # commits seen: a listing read across one is not kept
        self._lists: dict[int, tuple[dict[str, Inode], float]] = {}
        self._seen: dict[int, tuple[int, float]] = {}  # dir -> (lookups, since when)
        self._reading: set[int] = set()
        self._skip: dict[int, float] = {}  # dir -> until when it is not read ahead
        #: Listings read and lookups answered from them (for tests and stats).
        self.reads = 0
        self.answered = 0

    def committed(self, inodes: Mapping[int, Inode | None]) -> None:
        """A write transaction of this process committed: drop every listing."""
        with self._lock:
            self._gen += 1
            self._lists.clear()

    def answer(self, parent: int, name: str) -> tuple[Inode | None, float] | None:
        """(the inode of `name`, or None: no such entry; seconds left of the TTL) from
        a listing of `parent`, or None when no fresh listing holds the answer."""
        got = self._lists.get(parent)
        if got is None:
            return None
        left = self.ttl - (time.monotonic() - got[1])
        if left < MIN_LEFT:
            with self._lock:
                if self._lists.get(parent) is got:
                    del self._lists[parent]
            return None
        self.answered += 1
        return got[0].get(name), left

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
            self._reading.add(parent)
            return True

    def read(self, engine: MetaEngine, parent: int) -> None:
        """Read `parent`'s listing (blocking; after `wanted` said so) and keep it, unless
        it is too long, empty (no telling a directory from a file), names a missing
        inode, or this process committed a change while it was read."""
        try:
            self._read(engine, parent)
        except Exception:  # a read ahead: the lookups go to the server as before
            log.debug("reading directory %d ahead failed", parent, exc_info=True)
        finally:
            with self._lock:
                self._reading.discard(parent)

    def _read(self, engine: MetaEngine, parent: int) -> None:
        with self._lock:
            gen = self._gen
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
        with self._lock:
            if self._gen != gen:
                return
            self.reads += 1
            self._lists[parent] = (names, began)  # (none yet: "reading" until now)
            now = time.monotonic()
            # the oldest first: over the limit, or expired (this one too, if its read
            # outlasted the TTL)
            while self._lists and (len(self._lists) > self.limit or
                                   now - next(iter(self._lists.values()))[1] >= self.ttl):
                del self._lists[next(iter(self._lists))]


__all__ = ["DirListings"]
