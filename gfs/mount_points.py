"""Mount points of the FUSE mount: free, mounted or stale, and unmounting them.

A mount whose process died (kill -9, a crash) stays in the mount table, and every
access to it fails with ENOTCONN ("transport endpoint is not connected");
`os.path.ismount` and `os.path.isdir` then say False. Such a stale mount point is
recognised here and cleaned with `fusermount3 -u` (else `-uz`, a lazy unmount).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from typing import Literal

from gfs.errors import ExistsError, HutongError, InvalidPathError, NotADirError, NotFoundError

State = Literal["free", "mounted", "stale"]


class UnmountError(HutongError, OSError):
    """`fusermount3` could not unmount a mount point."""

    def __str__(self) -> str:
        return str(self.strerror)


def probe(mountpoint: str) -> State:
    """The state of directory `mountpoint`: free, mounted (live) or stale (its mount
    process is gone); raises NotFoundError/NotADirError if it is not a directory."""
    try:
        st = os.stat(mountpoint)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return "stale"
        if e.errno == errno.ENOENT:
            raise NotFoundError(mountpoint, "mount point does not exist; create the "
                                "directory first") from None
        raise
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirError(mountpoint, "mount point must be a directory")
    return "mounted" if os.path.ismount(mountpoint) else "free"


def _fusermount(mountpoint: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["fusermount3", *flags, mountpoint], capture_output=True,
                          text=True, check=False)


def clean_stale(mountpoint: str) -> str:
    """Unmount the stale mount at `mountpoint`; returns a one-line report."""
    r = _fusermount(mountpoint, "-u")
    how = "unmounted"
    if r.returncode != 0:
        r = _fusermount(mountpoint, "-u", "-z")
        how = "lazily unmounted (a program still had it open)"
    if r.returncode != 0:
        raise UnmountError(errno.EBUSY, f"cannot clean the stale mount at {mountpoint}: "
                           f"{r.stderr.strip() or 'fusermount3 failed'} (try `umount -l "
                           f"{mountpoint}` as root)")
    return (f"{mountpoint} was a stale mount (its mount process had died): {how}; files "
            "not closed before it died were not committed")


def prepare(mountpoint: str) -> tuple[str, str | None]:
    """Check that `mountpoint` can be mounted on, cleaning a stale mount there;
    returns the absolute path and the report of the cleaning (None if none)."""
    mp = os.path.abspath(mountpoint)
    state = probe(mp)
    if state == "mounted":
        raise ExistsError(mp, "something is already mounted here (`hutong umount "
                          f"{mp}` first)")
    report = clean_stale(mp) if state == "stale" else None
    return mp, report


def unmount(mountpoint: str) -> str | None:
    """Unmount the FUSE mount at `mountpoint` (`fusermount3 -u`); a stale one is
    cleaned. Returns the report of the cleaning of a stale mount, else None."""
    mp = os.path.abspath(mountpoint)
    state = probe(mp)
    if state == "stale":
        return clean_stale(mp)
    if state == "free":
        raise InvalidPathError(mp, "not a mount point")
    r = _fusermount(mp, "-u")
    if r.returncode != 0:
        raise UnmountError(errno.EBUSY, f"cannot unmount {mp}: "
                           f"{r.stderr.strip() or 'fusermount3 failed'} (is a program "
                           "still using it? see `fuser -m`)")
    return None


__all__ = ["State", "UnmountError", "clean_stale", "prepare", "probe", "unmount"]
