"""What a create without O_TRUNC wrote, for laying it over another client's file.

A file created here is pending until its close. If another client creates the same
name meanwhile, POSIX reads the two as: their create came first, this open found
their file (without O_TRUNC: kept) and wrote into it. So the close lays the bytes
written here over their content, at the same offsets, instead of replacing it.
"""

from __future__ import annotations

import errno
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class _Readable(Protocol):
    size: int

    def pread(self, off: int, size: int) -> bytes: ...


class _Spool(Protocol):
    def pread(self, size: int, off: int) -> bytes: ...

    def pwrite(self, data: bytes, off: int) -> int: ...

    def truncate(self, size: int) -> None: ...


def _start(r: tuple[int, int]) -> int:
    return r[0]


def _end(r: tuple[int, int]) -> int:
    return r[1]


#: Bytes copied at a time when merging.
STEP = 8 << 20


@dataclass
class Written:
    """The byte ranges written since the create, and the smallest size set since."""

    #: Sorted, disjoint and not touching: overlapping or adjacent writes are merged,
    #: so random rewrites of the same bytes keep the list short.
    ranges: list[tuple[int, int]] = field(default_factory=list)
    #: The smallest size a truncate set (None: never truncated).
    cut: int | None = None

    def wrote(self, off: int, n: int) -> None:
        """`n` bytes were written at `off`."""
        if not n:
            return
        a, b = off, off + n
        r = self.ranges
        lo = bisect_left(r, a, key=_end)  # the first range ending at or after `a`
        hi = bisect_right(r, b, key=_start)  # past the last starting at or before `b`
        if lo < hi:  # ranges lo..hi-1 overlap or touch [a, b): one range
            a, b = min(a, r[lo][0]), max(b, r[hi - 1][1])
        r[lo:hi] = [(a, b)]

    def truncated(self, size: int) -> None:
        """The file was cut (or extended) to `size` bytes."""
        self.cut = size if self.cut is None else min(self.cut, size)
        self.ranges = [(a, min(b, size)) for a, b in self.ranges if a < size]

    def merge(self, theirs: _Readable, ours: _Spool, size: int, into: _Spool) -> int:
        """Write into `into` their content (cut as truncates here cut it) with the
        ranges written here (read from `ours`, `size` bytes) laid over it; its size."""
        keep = theirs.size if self.cut is None else min(theirs.size, self.cut)
        total = max(size, theirs.size) if self.cut is None else size
        _copy_theirs(theirs, keep, into)
        into.truncate(total)  # zeros past their kept bytes
        for a, b in self.ranges:
            copy_span(_spool_read(ours), into.pwrite, a, b)
        return total

    def appends_only(self, size: int) -> bool:
        """Whether what was written here is `size` bytes from offset 0 with no truncate:
        what O_APPEND writes to a new file give (so it can go after their content)."""
        return self.cut is None and self.ranges in ([], [(0, size)])

    def append(self, theirs: _Readable, ours: _Spool, size: int, into: _Spool) -> int:
        """Write into `into` their content, then the `size` bytes written here (read
        from `ours`), as appends to their file would have left it; its size."""
        base = theirs.size
        _copy_theirs(theirs, base, into)
        into.truncate(base)  # (zeros if their content came short)
        copy_span(_spool_read(ours), into.pwrite, 0, size, to=base)
        return base + size


def copy_span(read: Callable[[int, int], bytes], write: Callable[[bytes, int], int],
              a: int, b: int, *, to: int | None = None, short_ok: bool = False) -> int:
    """Copy bytes [a, b) read by `read(off, n)` with `write(data, off)` to offset `to`
    (default `a`), STEP bytes at a time; the bytes copied. A source that ends before
    `b` is an OSError (EIO) naming the offset, unless `short_ok` (then the copy stops
    there): a loop that waited for bytes that never come would spin forever."""
    shift = (a if to is None else to) - a
    pos = a
    while pos < b:
        data = read(pos, min(STEP, b - pos))
        if not data:
            if short_ok:
                break
            raise OSError(errno.EIO, f"the source ended at byte {pos:,} of {b:,} "
                                     "while copying a file's content")
        write(data, pos + shift)
        pos += len(data)
    return pos - a


def _spool_read(spool: _Spool) -> Callable[[int, int], bytes]:
    """`spool.pread` with the (offset, size) order of `copy_span`."""
    return lambda off, n: spool.pread(n, off)


def _copy_theirs(theirs: _Readable, n: int, into: _Spool) -> None:
    """Copy their first `n` bytes (fewer if their content comes short) into `into`."""
    copy_span(theirs.pread, into.pwrite, 0, n, short_ok=True)


__all__ = ["Written", "copy_span"]
