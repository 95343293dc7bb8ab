"""Name hints of the FUSE mount: the (parent, name) this mount last saw for an inode.

The mount calls the namespace by inode; a path is only needed to name a file in
messages (read errors). A hint turns an inode back into its path without a walk
of the index; every hop is checked against the index first, and a stale hint
falls back to `namespace.path_of`.
"""

from __future__ import annotations

from gfs import namespace
from gfs.errors import NotFoundError
from gfs.meta import ROOT_INO, ReadTxn


class NameHints:
    """inode -> (parent inode, name), as last seen by lookups, listings and changes."""

    def __init__(self) -> None:
        self._names: dict[int, tuple[int, str]] = {}

    def remember(self, ino: int, parent: int, name: str) -> None:
        """Record that `ino` is `name` in directory `parent`."""
        self._names[ino] = (parent, name)

    def path(self, txn: ReadTxn, ino: int) -> str:
        """The current path of `ino` (from the hints, checked; else from the index)."""
        parts: list[str] = []
        cur = ino
        while cur != ROOT_INO:
            hint = self._names.get(cur)
            if hint is None or txn.lookup(hint[0], hint[1]) != cur:
                if txn.get_inode(ino) is None:
                    raise NotFoundError(f"<inode {ino}>")
                p = namespace.path_of(txn, ino)
                if p.startswith("<"):
                    raise NotFoundError(p)
                return p
            parts.append(hint[1])
            cur = hint[0]
        return "/" + "/".join(reversed(parts))


__all__ = ["NameHints"]
