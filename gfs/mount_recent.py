"""Directories the mount's own transactions just wrote, kept for the attribute timeout.

Each change of a directory's entries (a create, rename, unlink, ...) rewrites the
directory's inode, and the kernel then drops the directory's attributes; the next
operation in it (its permission check) asks GETATTR again. On a database server that
is a round trip and a thread hop per operation, for a record this mount has just
committed. `RecentDirs` keeps the directory inodes each committed write transaction
of the mount wrote (`MetaEngine.watch_inodes`) and answers such a GETATTR for
`ttl` seconds (the attribute timeout): an answer at most as old as one the kernel
itself may keep. Every write of this process passes through the watcher in commit
order, so an entry is never older than the mount's own last change of it; a change
by another client shows within `ttl`, as with the kernel's own attribute cache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from gfs.meta import Inode, Kind


class RecentDirs:
    """Directory inodes written by committed transactions, each served for `ttl` seconds
    (at most `limit` kept; thread-safe)."""

    def __init__(self, ttl: float, limit: int = 4096) -> None:
        self.ttl = ttl
        self.limit = limit
        self._lock = threading.Lock()
        self._dirs: dict[int, tuple[Inode, float]] = {}

    def committed(self, inodes: Mapping[int, Inode | None]) -> None:
        """Note the inodes a transaction committed (None: deleted); keeps directories."""
        now = time.monotonic()
        with self._lock:
            for ino, node in inodes.items():
                self._dirs.pop(ino, None)  # re-inserted last: the dict stays in time order
                if node is not None and node.kind == Kind.DIR:
                    self._dirs[ino] = (node, now)
            while len(self._dirs) > self.limit:
                del self._dirs[next(iter(self._dirs))]

    def clear(self) -> None:
        """Forget every directory (a commit of unknown outcome may have changed any)."""
        with self._lock:
            self._dirs.clear()

    def get(self, ino: int) -> Inode | None:
        """Directory `ino` as committed here less than `ttl` seconds ago, or None."""
        entry = self._dirs.get(ino)
        if entry is None:
            return None
        if time.monotonic() - entry[1] >= self.ttl:
            with self._lock:
                if self._dirs.get(ino) is entry:
                    del self._dirs[ino]
            return None
        return entry[0]




class RecentMisses:
    """Names whose lookup just missed, with their directory's inode as that lookup read
    it, each kept for `ttl` seconds (at most `limit`; thread-safe): the kernel sends a
    create right after such a miss, and the directory need not be read again."""

    def __init__(self, ttl: float, limit: int = 4096) -> None:
        self.ttl = ttl
        self.limit = limit
        self._lock = threading.Lock()
        self._misses: dict[tuple[int, str], tuple[Inode, float]] = {}

    def missed(self, parent: Inode, name: str) -> None:
        """Note that `name` was not found in directory `parent` (as just read)."""
        with self._lock:
            self._misses[(parent.ino, name)] = (parent, time.monotonic())
            while len(self._misses) > self.limit:
                del self._misses[next(iter(self._misses))]

    def take(self, parent: int, name: str) -> Inode | None:
        """The directory read by a miss of `name` less than `ttl` seconds ago (forgotten
        now), or None."""
        with self._lock:
            entry = self._misses.pop((parent, name), None)
        if entry is None or time.monotonic() - entry[1] >= self.ttl:
            return None
        return entry[0]


__all__ = ["RecentDirs", "RecentMisses"]
