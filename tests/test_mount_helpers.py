"""A FUSE mount of a fresh store in a tmp dir, for the mount tests (always unmounted)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gfs.client import Client

HAVE_FUSE = (os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)
             and shutil.which("fusermount3") is not None)
needs_fuse = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse and fusermount3")


@dataclass
class Mounted:
    state: Path
    mnt: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `cond` until true; fail naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def errno_of(fn: object, *args: object) -> int:
    """The errno `fn(*args)` fails with (0 if it does not)."""
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        return e.errno or 0
    return 0


def assert_posix_errnos(mnt: Path) -> None:
    """The errnos of the usual mistakes, after making file f (b"x"), directory d and d/g."""
    (mnt / "f").write_bytes(b"x")
    (mnt / "d").mkdir()
    (mnt / "d" / "g").write_bytes(b"y")
    assert errno_of(os.stat, mnt / "nope") == errno.ENOENT
    assert errno_of(os.stat, mnt / "f" / "x") == errno.ENOTDIR
    assert errno_of(open, mnt / "d", "wb") == errno.EISDIR
    assert errno_of(os.rmdir, mnt / "d") == errno.ENOTEMPTY
    assert errno_of(os.mkdir, mnt / "f") == errno.EEXIST
    assert errno_of(os.rmdir, mnt / "f") == errno.ENOTDIR
    assert errno_of(os.unlink, mnt / "d") == errno.EISDIR
    assert errno_of(os.rename, mnt / "d", mnt / "f") == errno.ENOTDIR
    assert errno_of(os.open, mnt / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


def assert_edits(d: Path) -> None:
    """Create, append to and overwrite the middle of d/a.txt, then replace it by a rename."""
    (d / "a.txt").write_bytes(b"hello")
    assert (d / "a.txt").read_bytes() == b"hello"
    with open(d / "a.txt", "ab") as f:
        f.write(b" world")
    assert (d / "a.txt").read_bytes() == b"hello world"
    with open(d / "a.txt", "r+b") as f:  # write in the middle
        f.seek(2)
        f.write(b"XY")
    assert (d / "a.txt").read_bytes() == b"heXYo world"
    (d / "b.txt").write_bytes(b"other")
    os.rename(d / "b.txt", d / "a.txt")  # over an existing file
    assert (d / "a.txt").read_bytes() == b"other" and not (d / "b.txt").exists()


def init_store(state: Path) -> None:
    Client.init(state, pack_size=1 << 20, workers=2).close()


@contextmanager
def mount(state: Path, mnt: Path, *extra: str, timeout: float = 30.0) -> Iterator[Mounted]:
    """Run `hutong mount` in the foreground in a child process; unmount and reap it after."""
    argv = [sys.executable, "-m", "gfs.cli", "--state", str(state), "-v", "mount", str(mnt),
            "--attr-timeout", "0", *extra]
    with serve_child(argv, state, mnt, timeout=timeout) as mounted:
        yield mounted


@contextmanager
def serve_child(argv: list[str], state: Path, mnt: Path, *, timeout: float = 30.0,
                env: dict[str, str] | None = None) -> Iterator[Mounted]:
    """Run the mount command `argv` (serving at `mnt`) in a child process until the
    mount is live; unmount and reap it after."""
    with contextlib.suppress(FileExistsError):  # not exist_ok: a stale mount point
        mnt.mkdir(parents=True)                     # cannot be stat'ed (ENOTCONN)
    log = mnt.parent / f"{mnt.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=env)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                raise RuntimeError(f"mount exited {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount not ready: {log.read_text()}")
            time.sleep(0.02)
        yield Mounted(state, mnt, proc, log)
    finally:
        # always: a mount whose process died is not seen by ismount (ENOTCONN)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False,
                       capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
