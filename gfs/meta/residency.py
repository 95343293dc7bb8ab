"""Keep the resident part of LMDB's memory map bounded during long scans.

LMDB reads through a shared, file-backed memory map: every page a scan or a
lookup touches stays in the process's resident set (RSS) until the kernel
reclaims it, so the RSS of an fsck, du or put grows with the metadata file
(measured: +38 MB of RSS for a 38 MB metadata file of 10^5 files). Those pages
are clean page cache, but they count against the process. `MapTrimmer`
drops the map's pages from this process's page tables with
`madvise(MADV_DONTNEED)` at most once per interval: for a shared file mapping
that only unmaps them (the data stays in the file and the page cache, and a
later access faults the same page back in), so it is safe while other threads
read through the map. Where madvise is unavailable (not Linux), it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import threading
import time
from typing import Any

#: Seconds between two trims of one map.
TRIM_INTERVAL = 0.1
#: Lookups, writes or scanned rows between two trims. A random lookup or write
#: faults in about one page, but the kernel maps up to 16 cached neighbours with
#: it (fault-around, 64 KiB; MADV_RANDOM does not turn it off), and a tick's B-tree
#: descent may fault in a branch page too, so this bounds the map's resident part to
#: about 128 * 64 KiB = 8 MiB, a few times that when two threads tick at once. Writes
#: count too: one transaction that records a pack's thousands of chunks touched 20 MiB
#: between two trims when only reads counted (measured on put of 10^5 files). At 256,
#: a put of 10^6 files, whose commits run on a thread beside the lookups of the next
#: batch, held 36 MiB of the map and peaked at 93 MiB (2.09x its 10^4 figure); at 128,
#: 79 MiB, for 1.5x the minor faults (+37,000 at 10^5 files, ~1% of its CPU).
TRIM_TICKS = 128
#: The clock is read for the interval once every this many ticks (+1): a tick comes
#: with every lookup and write, and reading the clock was most of its cost.
_CLOCK_TICKS = 15
#: The kernel's fault-around: a fault maps up to this many bytes of cached neighbours.
_FAULT_AROUND = 64 << 10
_MADV_DONTNEED = 4

_libc: Any = None
if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _libc.madvise.restype = ctypes.c_int


class MapTrimmer:
    """Trims the resident pages of one LMDB environment's map (see the module doc)."""

    __slots__ = ("_env", "_lock", "_map", "_next", "_ticks", "trims")

    def __init__(self, env: Any) -> None:
        self._env = env
        self._ticks = 0
        self._map: tuple[int, int] | None = None
        self._next = time.monotonic() + TRIM_INTERVAL
        self._lock = threading.Lock()
        self.trims = 0

    def tick(self, n: int = 1) -> None:
        """Note activity; trim the map if TRIM_TICKS ticks or TRIM_INTERVAL seconds have
        passed since the last trim (`n`: lookups or rows read since the last tick)."""
        ticks = self._ticks = self._ticks + n  # approximate across threads: it only
        # paces the trims
        if _libc is None or (ticks < TRIM_TICKS and (
                ticks & _CLOCK_TICKS or time.monotonic() < self._next)):
            return
        with self._lock:
            if self._ticks < TRIM_TICKS and time.monotonic() < self._next:
                return
            self.trim()
            self._ticks = 0
            self._next = time.monotonic() + TRIM_INTERVAL

    def trim(self) -> None:
        """Drop the map's resident pages from this process now (unless the whole file
        is no larger than TRIM_TICKS fault-arounds, the bound the trims keep)."""
        if _libc is None:
            return
        if self._map is None:
            self._map = _find_map(os.path.join(self._env.path(), "data.mdb"))
        start, size = self._map
        used = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        length = min(size, -(-used // mmap.PAGESIZE) * mmap.PAGESIZE)
        if length <= TRIM_TICKS * _FAULT_AROUND:
            return  # the whole file is within what the trims bound the map to: a trim
            # would only fault the same pages in again
        if start and length:
            _libc.madvise(start, length, _MADV_DONTNEED)
            self.trims += 1


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
