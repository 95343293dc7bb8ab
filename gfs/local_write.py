"""Restored files written to the local filesystem in batches, in C without the GIL.

A get writes each small file under a temporary name, sets its mode and times and
renames it into place: six system calls a file. Python released and took back the
GIL around each of them, and with eight writer threads that handing over cost more
than the writes (346,000 futex calls, 3-6 s of system time, for the 7,314 files of
smallfiles --quick). `write_files` does a whole slice of a batch in one native call.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

from gfs import _native
from gfs.errors import StateError
from gfs.meta import Inode

_counter = itertools.count()
#: This process's id, kept (a get names a temporary file per file restored, and
#: os.getpid is a system call each time); a forked child takes its own.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def tmp_name(path: str) -> str:
    """A fresh temporary name next to `path` (unique within this process)."""
    d, name = os.path.split(path)
    return os.path.join(d, f".{name}.hutong-{_pid}-{next(_counter)}")


def write_files(files: Sequence[tuple[str, Inode, Sequence[bytes]]]) -> tuple[int, int]:
    """Write each (local path, inode, blocks) as `_write_local` does, in order, in one
    native call; returns (files, bytes). The first failure stops the slice: its
    temporary file is removed and OSError names its path (the files before it are
    in place, those after it untouched)."""
    items = []
    total = 0
    for path, node, blocks in files:
        n = sum(len(b) for b in blocks)
        if n != node.size:
            raise StateError(f"{path}: restored {n} bytes, expected {node.size}")
        total += n
        items.append((tmp_name(path), path, blocks, node.mode & 0o7777, node.atime_ns,
                      node.mtime_ns))
    done, err = _native.write_files(items)
    if err:
        raise OSError(err, os.strerror(err), files[done][0])
    return done, total


def make_dirs(dirs: Sequence[str]) -> None:
    """Make each directory of `dirs` (parents first; one that is a directory already is
    kept) in one native call: a get's mkdirs, one by one in Python, handed the GIL
    over twice each to the writer threads. OSError names the first that failed (those
    before it are made, those after it untouched)."""
    done, err = _native.make_dirs(dirs)
    if err:
        raise OSError(err, os.strerror(err), dirs[done])


def set_dir_attrs(dirs: Sequence[tuple[str, Inode]]) -> None:
    """Give each (local directory, inode) its mode and times, in one native call (as
    os.chmod and os.utime do, in order). OSError names the first that failed."""
    done, err = _native.set_dir_attrs([(p, node.mode, node.atime_ns, node.mtime_ns)
                                       for p, node in dirs])
    if err:
        raise OSError(err, os.strerror(err), dirs[done][0])


__all__ = ["make_dirs", "set_dir_attrs", "tmp_name", "write_files"]
