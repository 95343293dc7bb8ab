"""A fresh filesystem for one bench run: an ext4 image on the real disk, loop-mounted.

Why: on ext4 without a journal (this project's CI machines' root filesystem), creating
a file scans past every inode freed in the last 60-300 s (`recently_deleted` in the
kernel's inode allocator). A restore that follows the removal of an earlier run's tree
pays that scan on every file: measured here, 7,000 small files took 0.18 s to create
in a quiet directory and 1.83 s right after 7,000 others were deleted. So a restore's
time depended on what the machine deleted in the minutes before, not on the tool. A
filesystem made for the run has no such history; it is made like the one it sits on
(ext4, with a journal only if that one has one), on an image file on the same disk, so
data still goes to the real disk; removing it at the end deletes one file, and leaves
no freed inodes behind for the next run.

Needs root (mount) and e2fsprogs; otherwise `scratch_fs` yields None and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Seconds any one of mkfs, mount or umount may take.
_TIMEOUT = 120


def unavailable() -> str | None:
    """Why a scratch filesystem cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not root (mount needs it)"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian packages e2fsprogs, mount)"
    return None


def has_journal(path: Path) -> bool | None:
    """Whether the ext4 filesystem holding `path` has a journal (None: not ext4, or not
    known)."""
    dev = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    try:
        name = block.resolve().name
        task = (Path("/sys/fs/ext4") / name / "journal_task").read_text().strip()
    except OSError:
        return None
    return task != "<none>"


@contextmanager
def scratch_fs(parent: Path, size: int, name: str, *, inodes: int | None = None,
               block_size: int | None = None) -> Iterator[Path | None]:
    """A fresh ext4 filesystem of `size` bytes (sparse image under `parent`), mounted at
    `parent/name`, with at least `inodes` inodes and blocks of `block_size` bytes when
    given (mkfs's defaults otherwise); yields its mount point, or None when one cannot be
    made (`unavailable`). Unmounted and deleted at the end, whatever happens inside."""
    why = unavailable()
    if why is not None:
        print(f"scratch filesystem: none ({why}); working on {parent} as it is")
        yield None
        return
    parent.mkdir(parents=True, exist_ok=True)
    image, mnt = parent / f"{name}.img", parent / name
    journal = has_journal(parent)
    features = ["-O", "^has_journal"] if journal is False else []
    if inodes is not None:
        features += ["-N", str(inodes)]
    if block_size is not None:
        features += ["-b", str(block_size)]
    try:
        with open(image, "wb") as f:
            f.truncate(size)
        _run(["mkfs.ext4", "-q", "-F", *features, str(image)])
        mnt.mkdir(exist_ok=True)
        # noinit_itable: no kernel thread zeroing the inode tables mkfs left for later
        # beside the first tool's run (ext4 initialises them lazily after a mount)
        _run(["mount", "-o", "loop,noinit_itable", str(image), str(mnt)])
    except (OSError, RuntimeError) as exc:  # root without mount rights (a container)
        _remove(image, mnt)
        print(f"scratch filesystem: none ({exc}); working on {parent} as it is")
        yield None
        return
    print(f"scratch filesystem: fresh ext4 ({'no journal, as' if journal is False else 'like'} "
          f"the disk it sits on) of {size >> 30} GiB, image {image}, mounted at {mnt}")
    try:
        yield mnt
    finally:
        try:
            _run(["umount", str(mnt)])
        except RuntimeError:  # still busy: detach now, the kernel frees it when idle
            try:
                _run(["umount", "-l", str(mnt)])
            except RuntimeError as exc:
                print(f"scratch filesystem: {mnt} could not be unmounted ({exc}); "
                      f"remove it and {image} by hand")
                return  # (the image stays: it is still mounted)
        _remove(image, mnt)


def _remove(image: Path, mnt: Path) -> None:
    if mnt.is_dir():
        mnt.rmdir()
    image.unlink(missing_ok=True)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
