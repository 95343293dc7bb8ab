"""Name hints of the FUSE mount: the (parent, name) this mount last saw for an inode.

FUSE addresses files by inode; the namespace functions take paths. A hint turns
an inode back into its path without a walk of the index; every hop is checked
against the index first, and a stale hint falls back to `namespace.path_of`.
"""

from __future__ import annotations

from gfs import namespace, paths
from gfs.errors import NotFoundError
from gfs.meta import ROOT_INO, ReadTxn


class NameHints:
    """inode -> (parent inode, name), as last seen by lookups, listings and changes."""

    def __init__(self) -> None:
        self._names: dict[int, tuple[int, str]] = {}

    def remember(self, ino: int, parent: int, name: str) -> None:
        """Record that `ino` is `name` in directory `parent`."""
        self._names[ino] = (parent, name)

    def name(self, ino: int) -> str:
        """The last name seen for `ino` ("" if none)."""
        return self._names.get(ino, (0, ""))[1]

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

    def child_path(self, txn: ReadTxn, parent: int, name: str) -> str:
        """The path of `name` in directory `parent` (the name checked)."""
        base = self.path(txn, parent)
        return paths.join([*paths.split(base), paths.check_name(name)])


__all__ = ["NameHints"]
