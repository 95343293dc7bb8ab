"""Local inode numbers of the global mount (gfs.mount_global).

A back end's inode numbers are not unique across the global tree (each entity's
metadata service numbers its own), and the synthetic directories of the
federation's root have none. The mount gives every entry a local number, stable
for the life of the mount: an entry is known by (scope, back-end inode), where the
scope is the entity (the first path component) on the federation and "" on the
embedded store, or by its path when the back end gives no inode number. A rename
keeps the number; the kernel's `forget` drops the numbers of removed entries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from gfs.errors import NotFoundError
from gfs.namespace_api import Stat

ROOT_INO = 1

Key = tuple[str, int | str]


def entity_scope(path: str) -> str:
    """The scope of `path` on the federation: its entity (first component)."""
    return path.split("/", 2)[1]


def one_scope(path: str) -> str:
    """The scope of every path on the embedded store (its inode numbers are unique)."""
    return ""


class InodeTable:
    """path <-> local inode number, with the kernel's lookup counts (thread-safe)."""

    def __init__(self, scope: Callable[[str], str] = entity_scope) -> None:
        self._scope = scope
        self._lock = threading.Lock()
        self._next = ROOT_INO + 1
        self._by_key: dict[Key, int] = {}
        self._key_of: dict[int, Key] = {}
        self._path: dict[int, str] = {ROOT_INO: "/"}
        #: path -> the inode number last seen there
        self._at: dict[str, int] = {"/": ROOT_INO}
        self._lookups: dict[int, int] = {}
        self._gone: set[int] = set()
        #: path -> number of a file created by the mount and committed, until the back
        #: end's inode number of it is first seen
        self._expected: dict[str, int] = {}

    def _key(self, st: Stat) -> Key:
        return (self._scope(st.path), st.ino) if st.ino else ("/", st.path)

    def ino_for(self, st: Stat) -> int:
        """The local inode number of the entry `st` (allocated on first sight)."""
        if st.path == "/":
            return ROOT_INO
        key = self._key(st)
        with self._lock:
            ino = self._by_key.get(key)
            if ino is None or ino in self._gone:  # a removed entry's number is not reused
                ino = self._expected.pop(st.path, None)
                if ino is None or ino in self._gone or ino not in self._path:
                    ino = self._next
                    self._next += 1
                self._by_key[key] = ino
                self._key_of[ino] = key
            self._path[ino] = st.path
            self._at[st.path] = ino
            self._gone.discard(ino)
            return ino

    def expect(self, path: str, ino: int) -> None:
        """The file created as local `ino` at `path` was committed: the back-end inode
        number seen next at `path` is `ino`'s (without asking for it now)."""
        with self._lock:
            old = self._key_of.pop(ino, None)
            if old is not None and self._by_key.get(old) == ino:
                del self._by_key[old]
            self._expected[path] = ino

    def path(self, ino: int) -> str:
        """The current path of local inode `ino` (NotFoundError if it was forgotten)."""
        with self._lock:
            p = self._path.get(ino)
        if p is None:
            raise NotFoundError(f"<inode {ino}>", "stale inode (forgotten by the mount)")
        return p

    def looked_up(self, ino: int, n: int = 1) -> None:
        """The kernel now holds `n` more references to `ino` (lookup, create, readdirplus)."""
        if ino == ROOT_INO:
            return
        with self._lock:
            self._lookups[ino] = self._lookups.get(ino, 0) + n

    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped `n` references to `ino`; a removed entry with none left
        is dropped from the table."""
        with self._lock:
            left = self._lookups.get(ino, 0) - n
            if left > 0:
                self._lookups[ino] = left
                return
            self._lookups.pop(ino, None)
            if ino in self._gone:
                self._drop(ino)

    def _drop(self, ino: int) -> None:
        self._gone.discard(ino)
        p = self._path.pop(ino, None)
        if p is not None and self._at.get(p) == ino:
            del self._at[p]
        key = self._key_of.pop(ino, None)
        if key is not None and self._by_key.get(key) == ino:
            del self._by_key[key]

    def at(self, path: str) -> int | None:
        """The local inode number last seen at `path`, if any."""
        with self._lock:
            return self._at.get(path)

    def removed(self, path: str) -> None:
        """Entry `path` was removed: its number lives on only while the kernel holds it."""
        with self._lock:
            self._expected.pop(path, None)
            ino = self._at.pop(path, None)
            if ino is None or ino == ROOT_INO or self._path.get(ino) != path:
                return
            if self._lookups.get(ino, 0) > 0:
                self._gone.add(ino)
            else:
                self._drop(ino)

    def moved(self, src: str, dst: str) -> None:
        """`src` was renamed to `dst`: it and everything below it keep their numbers."""
        below = src.rstrip("/") + "/"
        with self._lock:
            for p, ino in list(self._expected.items()):
                if p == src or p.startswith(below):
                    del self._expected[p]
                    self._expected[dst + p[len(src):]] = ino
            for ino, p in list(self._path.items()):
                if p == src:
                    new = dst
                elif p.startswith(below):
                    new = dst.rstrip("/") + "/" + p[len(below):]
                else:
                    continue
                self._path[ino] = new
                if self._at.get(p) == ino:
                    del self._at[p]
                self._at[new] = ino
                key = self._key_of.get(ino)
                if key is not None and key[0] == "/":  # keyed by path: re-key it
                    self._rekey(ino, key, ("/", new))

    def _rekey(self, ino: int, old: Key, new: Key) -> None:
        if self._by_key.get(old) == ino:
            del self._by_key[old]
        self._by_key[new] = ino
        self._key_of[ino] = new

    def __len__(self) -> int:
        with self._lock:
            return len(self._path)


__all__ = ["ROOT_INO", "InodeTable", "entity_scope", "one_scope"]
