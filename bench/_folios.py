"""How a file's page cache is held: the share of its pages in large folios.

A warm read is a copy out of the kernel's page cache, and its speed depends on
the size of the folios holding the pages (ext4 caches in folios of up to 2 MiB,
FUSE in this kernel in single 4 KiB pages, each looked up, marked accessed and
copied on its own). `bench fuse` prints this next to the warm reads so that a
gap to local disk can be told apart from the daemon's own cost.

Reads /proc/self/pagemap and /proc/kpageflags (root only), for pages the file
already has in memory after a read.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from pathlib import Path

PAGE = mmap.PAGESIZE
_PFN_MASK = (1 << 55) - 1
_PRESENT = 1 << 63
_KPF_COMPOUND_HEAD = 1 << 15
_KPF_COMPOUND_TAIL = 1 << 16


def large_folio_share(path: Path, max_pages: int = 4096) -> float | None:
    """The share (0..1) of the first `max_pages` cached pages of `path` that sit in
    large folios; None if the kernel's page tables cannot be read (not root)."""
    size = min(path.stat().st_size, max_pages * PAGE) // PAGE * PAGE
    if size == 0:
        return None
    try:
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
        kflags = os.open("/proc/kpageflags", os.O_RDONLY)
    except OSError:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        # a private mapping that is only read maps the page cache's own pages
        with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as m:
            for off in range(0, size, PAGE):
                m[off]  # fault the page in (it is cached: no I/O)
            buf = ctypes.c_char.from_buffer(m)
            try:
                first = ctypes.addressof(buf) // PAGE
            finally:
                del buf
            pages = size // PAGE
            entries = struct.unpack(f"{pages}Q", os.pread(pagemap, 8 * pages, 8 * first))
            large = seen = 0
            for e in entries:
                pfn = e & _PFN_MASK
                if not e & _PRESENT or pfn == 0:
                    continue
                (flags,) = struct.unpack("Q", os.pread(kflags, 8, 8 * pfn))
                seen += 1
                large += bool(flags & (_KPF_COMPOUND_HEAD | _KPF_COMPOUND_TAIL))
            return large / seen if seen else None
    except OSError:
        return None
    finally:
        os.close(fd)
        os.close(pagemap)
        os.close(kflags)


__all__ = ["large_folio_share"]
