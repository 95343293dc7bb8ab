"""Who created a file here, and whether that caller may open another client's file.

The mount leaves permission checks to the kernel (`default_permissions`), but for a
FUSE create the kernel checks only the directory. A create whose name another client
took meanwhile ends up opening (or, at its close, writing into) their file, so the
mount checks that file's mode and owner itself, as open(2) of it would.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from gfs.meta import Inode


@dataclass(frozen=True)
class Caller:
    """The credentials of the process that made a request."""

    uid: int
    gid: int
    #: Supplementary groups.
    groups: frozenset[int] = frozenset()


def wanted(flags: int) -> int:
    """The permission bits (4 read, 2 write) open(2) with `flags` needs on a file."""
    acc = flags & os.O_ACCMODE
    want = 4 if acc in (os.O_RDONLY, os.O_RDWR) else 0
    if acc in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC:
        want |= 2
    return want


def may_open(node: Inode, caller: Caller, want: int) -> bool:
    """Whether `caller` has the access `want` (4 read, 2 write) to file `node`: the
    owner's, group's or others' bits of its mode; root always (as the kernel)."""
    if caller.uid == 0:
        return True
    if caller.uid == node.uid:
        bits = (node.mode & stat.S_IRWXU) >> 6
    elif node.gid == caller.gid or node.gid in caller.groups:
        bits = (node.mode & stat.S_IRWXG) >> 3
    else:
        bits = node.mode & stat.S_IRWXO
    return bits & want == want


def sgid_left(node: Inode, caller: Caller) -> bool:
    """Whether a write by `caller` into `node` must clear its setgid bit, as ext4
    does: setgid without group-execute, the caller neither root nor in its group."""
    if node.mode & (stat.S_ISGID | stat.S_IXGRP) != stat.S_ISGID:
        return False
    return caller.uid != 0 and node.gid != caller.gid and node.gid not in caller.groups


__all__ = ["Caller", "may_open", "sgid_left", "wanted"]
