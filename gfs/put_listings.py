"""Listings of a put's local directories, made ahead of its walk (gfs.put_walk).

A directory the walk enters is listed with up to PREFETCH_DIRS - 1 of the directories
below it, breadth first, in one native call (`scan_entries`). `list_ahead(path)`
begins the listings of a whole tree on a thread of its own before the put's modules
are imported, so a command's start-up (imports, opening the store: about a tenth of
a small put) and the first listings run side by side. This module imports nothing
heavier than the native extension, so the program can start it first.
"""

from __future__ import annotations

import contextlib
import os
import threading

from gfs._native import LocalEntry, scan_entries

#: Directories a walk lists at a time.
PREFETCH_DIRS = 64
#: `list_ahead` lists at most this many directories ...
AHEAD_DIRS = 4096
#: ... and queues no more once its listings hold this many entries (~500 B each, held
#: until the walk enters their directories; a put's walk hands over as many at most).
AHEAD_ENTRIES = 20_000

#: A scan_dir row: (name, st_mode, st_uid, st_gid, st_size, st_atime_ns, st_mtime_ns,
#: flag); see gfs._native.scan_dir.
Row = tuple[str, int, int, int, int, int, int, int]
_Listed = tuple[list[Row] | int | None, list[LocalEntry] | None]


class Listings:
    """Listings of the directories a walk enters, made ahead: a directory not listed
    yet is listed with up to PREFETCH_DIRS - 1 of the directories below it, breadth
    first (the walk enters them next), in one native call (`scan_entries`): on the
    walk's own thread each listing let the GIL go and waited to take it back from the
    put's main thread, once a directory instead of once per 64. The call also makes
    the entries of each listing, checked and in name order, where every one of them
    is plain (see gfs.put_walk.list_local). Holds listings of directories the walk has
    still to enter: at most PREFETCH_DIRS - 1 for each directory that was not listed
    ahead, all below it, and those `list_ahead` made."""

    def __init__(self, ahead_of: str | None = None) -> None:
        """`ahead_of`: a tree whose listings begin now, on a thread (`list_ahead`)."""
        self._ready: dict[str, _Listed] = {}
        self._early_listed: list[tuple[str, *_Listed]] = []
        self._early: threading.Thread | None = None
        if ahead_of is not None:
            self._early = threading.Thread(target=self._list_early, args=(ahead_of,),
                                           name="hutong-list-ahead", daemon=True)
            self._early.start()

    def listing(self, entry: LocalEntry) -> tuple[list[Row], list[LocalEntry] | None]:
        """(scan_dir rows, None), or (empty, the entries made natively) of directory
        `entry`, listed ahead or now (OSError as scan_dir raises it)."""
        if self._early is not None:  # the listings begun before the walk: wait for them
            self._early.join()
            self._early = None
            listed, self._early_listed = self._early_listed, []
            # taken by the walk of that tree only (the first listing a walk asks is its
            # top's): another's entries would have other rels
            if listed and entry.rel == () and entry.path == listed[0][0]:
                self._ready.update((path, (rows, made)) for path, rows, made in listed)
        got = self._ready.pop(entry.path, None)
        if got is None:
            listed = scan_entries(entry.path, entry.rel, PREFETCH_DIRS)
            got = listed[0][1:]
            self._ready.update((path, (rows, made)) for path, rows, made in listed[1:])
        rows, entries = got
        if entries is not None:
            return [], entries
        if isinstance(rows, int):
            raise OSError(rows, os.strerror(rows), entry.path)
        assert rows is not None
        return rows, None

    def _list_early(self, path: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # the walk lists it again, and
            self._early_listed = scan_entries(path, (), AHEAD_DIRS, AHEAD_ENTRIES)  # raises


def list_ahead(local: str | os.PathLike[str]) -> Listings:
    """Listings of the local tree `local` (a put's source, as given), begun now on a
    thread of their own: up to AHEAD_DIRS directories breadth first, AHEAD_ENTRIES
    entries. Hand them to the put's walk (`Client.put(listed_ahead=...)`), which
    waits for them at its first listing; a source that is not a directory lists
    nothing."""
    path = os.fspath(local)
    if not isinstance(path, str):
        return Listings()
    from pathlib import PurePath

    return Listings(str(PurePath(path)))  # the walk's top entry is str(Path(local))
