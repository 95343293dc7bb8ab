"""A FUSE mount of a fresh store in a tmp dir, for the mount tests (always unmounted)."""

from __future__ import annotations

import contextlib
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


def init_store(state: Path) -> None:
    Client.init(state, pack_size=1 << 20, workers=2).close()


@contextmanager
def mount(state: Path, mnt: Path, *extra: str, timeout: float = 30.0) -> Iterator[Mounted]:
    """Run `hutong mount` in the foreground in a child process; unmount and reap it after."""
    with contextlib.suppress(FileExistsError):  # not exist_ok: a stale mount point
        mnt.mkdir(parents=True)                     # cannot be stat'ed (ENOTCONN)
    log = mnt.parent / f"{mnt.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gfs.cli", "--state", str(state), "-v", "mount", str(mnt),
             "--attr-timeout", "0", *extra],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
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
