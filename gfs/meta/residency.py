"""Keep the resident part of LMDB's memory map bounded during long scans.

LMDB reads through a shared, file-backed memory map: every page a scan or a
lookup touches stays in the process's resident set (RSS) until the kernel
reclaims it, so the RSS of an fsck, du or put grows with the metadata file
(measured: +38 MB of RSS for a 38 MB metadata file of 10^5 files). Those pages
are clean page cache, but they count against the process. `MapTrimmer`
drops the map's pages from this process's page tables with
`madvise(MADV_DONTNEED)` every TRIM_TICKS ticks, TRIM_INTERVAL seconds or TRIM_BYTES of
file pages newly mapped (whichever comes first; the last is not checked while the file
itself is no larger than TRIM_BYTES): for a shared file mapping
that only unmaps them (the data stays in the file and the page cache, and a
later access faults the same page back in), so it is safe while other threads
read through the map. Where madvise is unavailable (not Linux), it does nothing.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from typing import Any

#: Seconds between two trims of one map.
TRIM_INTERVAL = 0.1
#: Lookups, writes or scanned rows between two trims. A random lookup or write
#: faults in at least one page, and the kernel maps cached neighbours with it
#: (fault-around, 64 KiB, or a whole large folio; MADV_RANDOM does not turn it off).
#: Writes count too: one transaction that records a pack's thousands of chunks touched
#: 20 MiB between two trims when only reads counted (measured on put of 10^5 files).
#: At 256, a put of 10^6 files, whose commits run on a thread beside the lookups of
#: the next batch, held 36 MiB of the map and peaked at 93 MiB (2.09x its 10^4 figure).
TRIM_TICKS = 128
#: ... or once TRIM_BYTES of file pages were mapped since the last trim, whatever the
#: ticks: a fault maps a whole large folio of the page cache, not only 64 KiB (Linux
#: 6.18 on ext4: 64 faults one MiB apart in a cached file mapped 48 MiB), so counted
#: ticks alone do not bound the map.
TRIM_BYTES = 8 << 20
#: The clock and the process's mapped file pages (/proc/self/statm, ~3 us) are read
#: whenever the tick count passes a multiple of this (+1): a tick comes with every lookup
#: and write, and a part of a batched read or write (PART) ticks once for all its keys.
_CHECK_TICKS = 7
#: Keys a batched read or write (`present_chunks`, `get_values`, `add_refcounts`) looks
#: up between two ticks. Each lookup may map ~90 KiB to MiBs (above), so a part of 128
#: mapped 11-14 MiB past TRIM_BYTES before the next check could see it (a put of 10^6
#: files held 22 MiB of the map, sampled; peak RSS 78-85 MiB against 45 at 10^4).
PART = 32
_MADV_DONTNEED = 4

_LINUX = sys.platform.startswith("linux")
_libc: Any = None  # bound by the first trim that madvises (see _madvise)


def _madvise() -> Any:
    """libc's madvise, bound on first use: importing ctypes cost ~2 ms of every
    command's start-up, and a store whose metadata is within TRIM_BYTES never calls it."""
    global _libc
    if _libc is None:
        import ctypes

        # the C library the interpreter is linked with (its symbols are in the process's
        # global namespace): `ctypes.util.find_library("c")` ran `ldconfig -p` in a child
        # process, ~7 ms of every CLI command's start-up
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.madvise.restype = ctypes.c_int
        _libc = libc
    return _libc.madvise


class MapTrimmer:
    """Trims the resident pages of one LMDB environment's map (see the module doc)."""

    __slots__ = ("_env", "_floor", "_lock", "_map", "_next", "_small", "_ticks", "trims")

    def __init__(self, env: Any) -> None:
        self._env = env
        self._ticks = 0
        self._map: tuple[int, int] | None = None
        self._next = time.monotonic() + TRIM_INTERVAL
        self._small = self._used() <= TRIM_BYTES  # as of the last trim (see _due)
        self._floor = 0 if self._small else file_pages()  # mapped bytes after the last trim
        self._lock = threading.Lock()
        self.trims = 0

    def tick(self, n: int = 1) -> None:
        """Note activity; trim the map if TRIM_TICKS ticks or TRIM_INTERVAL seconds have
        passed, or TRIM_BYTES of file pages were mapped, since the last trim (`n`:
        lookups or rows read since the last tick)."""
        prev = self._ticks
        ticks = self._ticks = prev + n  # approximate across threads: it only paces the
        # trims; the clock and the mapped bytes are read when a multiple of
        # _CHECK_TICKS + 1 is passed, however many ticks came at once
        if not _LINUX or (ticks < TRIM_TICKS
                             and (ticks <= prev | _CHECK_TICKS or not self._due())):
            return
        with self._lock:
            if self._ticks < TRIM_TICKS and not self._due():
                return
            self.trim()
            self._ticks = 0
            self._next = time.monotonic() + TRIM_INTERVAL
            # (a file within the bound: the floor is not read, see _due; once the file
            # outgrows it, the first check finds the floor 0 and trims once early)
            self._floor = 0 if self._small else file_pages()

    def _due(self) -> bool:
        if time.monotonic() >= self._next:
            return True
        # the map of a file no larger than TRIM_BYTES (as of the last trim, at most
        # TRIM_TICKS ticks or TRIM_INTERVAL ago) cannot pass the bound: its mapped bytes
        # are not read. /proc/self/statm, like any call that lets the GIL go, then waits
        # for the GIL back behind the compression and commit threads: 0.15 s of a put's
        # main thread over 7,000 files on a 1.4 MB metadata file, measured.
        return not self._small and file_pages() - self._floor >= TRIM_BYTES

    def _used(self) -> int:
        """Bytes of the environment's file in use (LMDB's own figures)."""
        return int((self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"])

    def trim(self) -> None:
        """Drop the map's resident pages from this process now (unless the whole file
        is no larger than TRIM_BYTES, the bound the trims keep)."""
        if not _LINUX:
            return
        if self._map is None:
            self._map = _find_map(os.path.join(self._env.path(), "data.mdb"))
        start, size = self._map
        used = self._used()
        self._small = used <= TRIM_BYTES
        length = min(size, -(-used // mmap.PAGESIZE) * mmap.PAGESIZE)
        if length <= TRIM_BYTES:
            return  # the whole file is within what the trims bound the map to: a trim
            # would only fault the same pages in again
        if start and length:
            _madvise()(start, length, _MADV_DONTNEED)
            self.trims += 1


_statm: int | None = None  # this process's /proc/self/statm, open (reset in a fork's child)


def _forget_statm() -> None:
    global _statm
    _statm = None  # the parent's: the child opens its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_statm)


def file_pages() -> int:
    """Bytes of file (and shared) pages this process has mapped (0 where unknown)."""
    global _statm
    try:
        if _statm is None:
            _statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_statm, 128, 0).split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return 0


def _find_map(path: str) -> tuple[int, int]:
    """(start address, length) of this process's mapping of file `path` ((0, 0) if
    none): LMDB does not report where it mapped its file, /proc/self/maps does."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == real:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    return lo, hi - lo
    except OSError:
        pass
    return 0, 0
