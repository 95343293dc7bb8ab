"""Access times of the FUSE mount, kept as the kernel's `relatime` keeps them.

A read updates a file's atime when the atime is not newer than its mtime or
ctime, or is more than a day old (what ext4 does under the default
`relatime`). The new atime is shown by this mount at once and written to the
store with the mount's next metadata change, or at unmount: reading never
costs a metadata transaction of its own. An atime not yet written is lost if
the mount process dies (as an ext4 atime not yet written back would be).
"""

from __future__ import annotations

import threading
from dataclasses import replace

from gfs import namespace
from gfs.meta import Inode, WriteTxn

#: An atime older than this is refreshed by a read even if newer than mtime and ctime.
RELATIME_NS = 24 * 3600 * 10**9


def stale(node: Inode, now: int) -> bool:
    """Whether a read at `now` updates the atime of `node` under relatime."""
    return (node.atime_ns <= node.mtime_ns or node.atime_ns <= node.ctime_ns
            or now - node.atime_ns >= RELATIME_NS)


class AccessTimes:
    """Atimes set by reads and not yet written to the store. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._atimes: dict[int, int] = {}

    def read(self, node: Inode) -> None:
        """Count a read of `node` (the first of a handle)."""
        now = namespace.now_ns()
        with self._lock:
            shown = replace(node, atime_ns=self._atimes.get(node.ino, node.atime_ns))
            if stale(shown, now):
                self._atimes[node.ino] = now

    def get(self, node: Inode) -> int:
        """The atime of `node` as the mount shows it."""
        return max(node.atime_ns, self._atimes.get(node.ino, node.atime_ns))

    def flush(self, txn: WriteTxn) -> None:
        """Write the pending atimes in `txn` (of inodes that still exist); they are
        forgotten even if `txn` aborts (an atime is not worth a retry)."""
        with self._lock:
            todo, self._atimes = self._atimes, {}
        for ino, atime in todo.items():
            node = txn.get_inode(ino)
            if node is not None and node.atime_ns < atime:
                txn.put_inode(replace(node, atime_ns=atime))


__all__ = ["RELATIME_NS", "AccessTimes", "stale"]
