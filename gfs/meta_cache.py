"""Metadata cache over any `Namespace`: Stats and directory listings for a bounded TTL.

Used by the global mount (gfs.mount_global). Rules (docs/globalmount.md):

* an answer is served from the cache for at most `ttl` seconds after it was fetched;
* one listing (`Namespace.ls`, every entry with its full Stat) answers the stats of
  all its entries and the absence of every other name in that directory, so
  `ls -l` of a directory costs one call, not one per entry;
* a stat that misses lists (or revalidates) the parent directory instead of asking
  for the one entry, so stats of the files of one directory cost one listing per
  TTL, not one request per file;
* a back end that offers `ls_if_changed(path, N)` (the federation's
  `GET /v1/ns/list?if_version=N`) revalidates an expired listing cheaply: a site
  changes a directory's version whenever an entry is added, removed, renamed or
  replaced in it, so while the version is unchanged the listing is renewed without
  being sent again (the embedded store, without `list_dir`, is simply re-read);
* a back end that holds open leases (`Leasing`: the federation's, docs/leases.md)
  answers past the TTL what a lease still promises, without asking;
* changes made through the cache's owner are followed by `invalidate`;
* while the back end cannot be reached (`UnavailableSiteError`: an entity's primary
  is down), the last answer known is served, however old, so that files already
  seen stay readable from the mirrors; what was never seen fails;
* at most `max_entries` entries (a listing weighs one per name) are kept, least
  recently used first out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import BinaryIO, Protocol, runtime_checkable

from gfs.errors import HutongError, IsADirError, NotFoundError, UnavailableSiteError
from gfs.eviction import LRUPolicy
from gfs.namespace_api import Namespace, Stat
from gfs.paths import child_path, parent_of

#: Seconds a cached Stat or listing is trusted (the mount's `--meta-ttl`).
DEFAULT_TTL = 1.0
#: Cached stats plus listed names kept at most.
DEFAULT_MAX_ENTRIES = 200_000


@runtime_checkable
class VersionedListing(Protocol):
    """A back end that can answer "directory unchanged since version N"."""

    def ls_if_changed(self, path: str, version: int | None
                      ) -> tuple[Stat, list[Stat] | None]:
        """The directory's Stat and its entries, or None for the entries when its
        version still equals `version`."""
        ...


@runtime_checkable
class StatOpener(Protocol):
    """A back end whose open for reading also tells the Stat of the version it reads."""

    def open_stat(self, path: str) -> tuple[Stat, BinaryIO]:
        """(Stat of the version committed now, a reader of that version)."""
        ...


@runtime_checkable
class Leasing(Protocol):
    """A back end that knows some stats without asking, while a site promises to tell
    it of their change first (an open lease)."""

    def leased(self, path: str) -> Stat | None:
        """The Stat of `path` while a lease promises it, else None."""
        ...


@dataclass
class _Entry:
    stat: Stat | None  # None: known not to exist
    at: float


@dataclass
class _Listing:
    names: dict[str, Stat]
    #: The directory's version when listed (0: unknown, no revalidation).
    version: int
    at: float
    #: When the entries' stats were fetched (or last revalidated).
    stats_at: float


@dataclass
class CacheCounters:
    """What the cache saved and what it asked the back end."""

    hits: int = 0
    misses: int = 0
    revalidated: int = 0
    #: Answers served past their TTL because the back end was unreachable.
    stale: int = 0
    #: Answers served past their TTL because a lease promised them.
    leased: int = 0


class MetaCache:
    """Stats and listings of `ns`, trusted for `ttl` seconds (see the module doc).

    Thread-safe; back-end calls are made outside the lock.
    """

    def __init__(self, ns: Namespace, *, ttl: float = DEFAULT_TTL,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 0:
            raise ValueError(f"metadata TTL must be >= 0 seconds, got {ttl}")
        if max_entries < 1:
            raise ValueError(f"metadata cache size must be >= 1 entry, got {max_entries}")
        self.ns = ns
        self.ttl = ttl
        self.clock = clock
        self.counters = CacheCounters()
        self._lock = threading.Lock()
        self._stats: dict[str, _Entry] = {}
        self._lists: dict[str, _Listing] = {}
        self._lru = LRUPolicy(max_entries)
        self._lease_of = ns.leased if isinstance(ns, Leasing) else None

    # -- bookkeeping (under the lock) -----------------------------------------------
    def _fresh(self, at: float) -> bool:
        return self.clock() - at < self.ttl

    def _admit(self, key: bytes, weight: int) -> None:
        self._lru.discard(key)
        for out in self._lru.admit(key, weight):
            kind, path = out[:1], out[2:].decode()
            if kind == b"s":
                self._stats.pop(path, None)
            else:
                self._lists.pop(path, None)

    def _put_stat(self, path: str, st: Stat | None, at: float) -> None:
        self._stats[path] = _Entry(st, at)
        self._admit(b"s:" + path.encode(), 1)

    def _put_listing(self, path: str, entries: list[Stat], version: int, at: float) -> None:
        names = {st.name: st for st in entries}
        self._lists[path] = _Listing(names, version, at, at)
        self._admit(b"l:" + path.encode(), len(names) + 1)

    def _from_listing(self, path: str) -> _Entry | None:
        """What a fresh listing of the parent says of `path` (None: no fresh listing)."""
        if path == "/":
            return None
        lst = self._lists.get(parent_of(path))
        if lst is None or not self._fresh(lst.at):
            return None
        st = lst.names.get(path.rsplit("/", 1)[1])
        if st is None:
            return _Entry(None, lst.at)
        if not self._fresh(lst.stats_at):
            return None  # the name is known, its stat must be fetched
        return _Entry(st, lst.stats_at)

    # -- reading ----------------------------------------------------------------------
    def cached(self, path: str) -> Stat | None:
        """The Stat of `path` if a fresh answer is cached (NotFoundError if that answer
        is that it does not exist), else None; never asks the back end, so it may run
        where blocking may not (the mount's event loop)."""
        with self._lock:
            hit = self._stats.get(path)
            if hit is None or not self._fresh(hit.at):
                hit = self._from_listing(path)
        if hit is None:
            st = self._promised(path)
            if st is None:
                return None
            hit = _Entry(st, 0.0)
        with self._lock:
            self.counters.hits += 1
        if hit.stat is None:
            raise NotFoundError(path)
        return hit.stat

    def _promised(self, path: str) -> Stat | None:
        """What a lease of the back end promises of `path` (None: no lease)."""
        st = None if self._lease_of is None else self._lease_of(path)
        if st is not None:
            with self._lock:
                self.counters.leased += 1
        return st

    def current(self, path: str) -> Stat:
        """The Stat of `path` as committed now (close-to-open): what a lease promises,
        else fetched now (`refresh`)."""
        st = self._promised(path)
        return st if st is not None else self.refresh(path)

    def stat(self, path: str) -> Stat:
        """The Stat of `path` (NotFoundError if it does not exist), cached."""
        hit = self.cached(path)
        if hit is not None:
            return hit
        with self._lock:
            self.counters.misses += 1
        listed = self._via_parent(path)
        if listed is not None:
            if listed.stat is None:
                raise NotFoundError(path)
            return listed.stat
        return self.refresh(path)

    def _via_parent(self, path: str) -> _Entry | None:
        """What a listing of the parent, fetched or revalidated now, says of `path`
        (None when the parent cannot be listed: then `path` is asked alone). A stat
        is rarely alone: programs stat the files of a directory one after another,
        and one listing answers them all."""
        if path == "/" or not isinstance(self.ns, VersionedListing):
            return None  # (the embedded store answers a stat as fast as a listing)
        parent = parent_of(path)
        try:
            self.ls(parent)
        except HutongError:
            return None
        with self._lock:
            dir_hit = self._stats.get(parent)
            if dir_hit is None or dir_hit.stat is None or dir_hit.stat.kind != "dir":
                return None  # a file, or not known
            return self._from_listing(path)

    def refresh(self, path: str) -> Stat:
        """The Stat of `path` fetched now (and cached); NotFoundError is cached too."""
        at = self.clock()
        try:
            st = self.ns.stat(path)
        except NotFoundError:
            with self._lock:
                self._put_stat(path, None, at)
            raise
        except UnavailableSiteError:
            last = self._last_known(path)
            if last is None:
                raise
            return last
        with self._lock:
            self._put_stat(path, st, at)
        return st

    def _last_known(self, path: str) -> Stat | None:
        """The last Stat known of `path`, however old (None if none); NotFoundError if
        what was last known is that it does not exist."""
        with self._lock:
            hit = self._stats.get(path)
            if hit is not None:
                self.counters.stale += 1
                if hit.stat is None:
                    raise NotFoundError(path)
                return hit.stat
            lst = self._lists.get(parent_of(path)) if path != "/" else None
            if lst is None:
                return None
            self.counters.stale += 1
            st = lst.names.get(path.rsplit("/", 1)[1])
            if st is None:
                raise NotFoundError(path)
            return st

    def open(self, path: str) -> tuple[Stat | None, BinaryIO]:
        """A reader of file `path`'s version committed now (close-to-open) and the Stat
        of that version (None if not known), cached: one request where the back end
        tells both (`StatOpener`), else a stat, then an open (if the sizes differ, a
        commit came between: the size of what is read is cached)."""
        if isinstance(self.ns, StatOpener):
            st, reader = self.ns.open_stat(path)
            self.put(st)
            return st, reader
        st = self.refresh(path)
        if st.kind == "dir":
            raise IsADirError(path)
        reader = self.ns.open(path, "rb")
        size = reader.seek(0, 2)
        reader.seek(0)
        if size != st.size:
            self.put(replace(st, size=size))
            return None, reader
        return st, reader

    def put(self, st: Stat) -> None:
        """Cache `st` as fetched now (what an open found out about the file)."""
        with self._lock:
            self._put_stat(st.path, st, self.clock())

    def ls(self, path: str) -> list[Stat]:
        """The entries of directory `path` with their Stats, in name order, cached."""
        with self._lock:
            lst = self._lists.get(path)
            if lst is not None and self._fresh(lst.stats_at):
                self.counters.hits += 1
                return list(lst.names.values())
        if lst is not None and lst.version:
            # a lease on the directory: nothing in it changed while its version holds
            st = self._promised(path)
            if st is not None and st.version == lst.version:
                return list(lst.names.values())
        with self._lock:
            self.counters.misses += 1
            version = lst.version if lst is not None else 0
        try:
            return self._fetch_listing(path, lst, version)
        except UnavailableSiteError:
            if lst is None:
                raise
            with self._lock:
                self.counters.stale += 1
            return list(lst.names.values())

    def _fetch_listing(self, path: str, lst: _Listing | None, version: int) -> list[Stat]:
        at = self.clock()
        if not isinstance(self.ns, VersionedListing):
            entries = self.ns.ls(path)
            with self._lock:
                self._put_listing(path, entries, 0, at)
            return entries
        dir_st, fetched = self.ns.ls_if_changed(path, version or None)
        with self._lock:
            self._put_stat(path, dir_st, at)
            if fetched is None and lst is not None:  # unchanged since `version`: renewed
                self.counters.revalidated += 1
                lst.at = lst.stats_at = at
                self._admit(b"l:" + path.encode(), len(lst.names) + 1)
                return list(lst.names.values())
        entries = fetched if fetched is not None else self.ns.ls(path)
        with self._lock:
            self._put_listing(path, entries, dir_st.version, at)
        return entries

    # -- after a change -----------------------------------------------------------------
    def invalidate(self, path: str, *, subtree: bool = False) -> None:
        """Forget what is cached of `path` and of its parent (after a change made to
        it); with `subtree` (a directory renamed or removed), of everything below it."""
        with self._lock:
            drop = {path, parent_of(path)}
            if subtree:
                below = path.rstrip("/") + "/"
                drop.update(p for p in self._stats if p.startswith(below))
                drop.update(p for p in self._lists if p.startswith(below))
            for p in drop:
                if self._stats.pop(p, None) is not None:
                    self._lru.discard(b"s:" + p.encode())
                if self._lists.pop(p, None) is not None:
                    self._lru.discard(b"l:" + p.encode())

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._stats.clear()
            self._lists.clear()
            self._lru = LRUPolicy(self._lru.capacity)


__all__ = ["DEFAULT_MAX_ENTRIES", "DEFAULT_TTL", "CacheCounters", "MetaCache",
           "VersionedListing", "child_path", "parent_of"]
