"""`may_open`: the access check of a create that finds another client's file."""

from __future__ import annotations

import os

from gfs.meta import Inode, Kind
from gfs.mount_access import Caller, may_open, wanted


def _file(mode: int, uid: int = 2000, gid: int = 2000) -> Inode:
    return Inode(ino=5, parent=1, kind=Kind.FILE, mode=mode, uid=uid, gid=gid, size=0,
                 atime_ns=0, mtime_ns=0, ctime_ns=0)


def test_the_owner_group_or_other_bits_decide_and_root_always_may() -> None:
    a = Caller(1000, 1000)
    assert not may_open(_file(0o600), a, 2)
    assert not may_open(_file(0o604), a, 2) and may_open(_file(0o604), a, 4)
    assert may_open(_file(0o606), a, 6)
    assert not may_open(_file(0o066, uid=1000), a, 2)  # the owner's bits only, as Linux
    assert may_open(_file(0o620), Caller(1000, 2000), 2)
    assert may_open(_file(0o620), Caller(1000, 1000, frozenset({7, 2000})), 2)
    assert not may_open(_file(0o602), Caller(1000, 1000, frozenset({2000})), 2)
    assert may_open(_file(0o000), Caller(0, 0), 6)


def test_the_open_flags_ask_read_write_or_both() -> None:
    assert wanted(os.O_RDONLY) == 4
    assert wanted(os.O_WRONLY) == 2 and wanted(os.O_RDONLY | os.O_TRUNC) == 6
    assert wanted(os.O_RDWR | os.O_CREAT) == 6
