"""Ending a party's process group (privacy.process_group): its resource tracker unlinks
the semaphores its workers made, a process that ignores SIGTERM is still killed, and a
group already gone is no error (real processes, real forkserver pools)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privacy.process_group import end_group

SHM = Path("/dev/shm")

#: A party in miniature: a forkserver pool (its semaphores are named files in /dev/shm)
#: that has run work, then a death with no clean-up at all.
_DYING_PARTY = """
import multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
if __name__ == "__main__":
    ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver"))
    assert ex.submit(pow, 3, 4).result() == 81
    print("READY", flush=True)
    sys.stdin.readline()
    os._exit(3)
"""


def _semaphores() -> set[str]:
    return {p.name for p in SHM.glob("sem.mp-*")}


def _start(script: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"READY"
    return p


def _die(p: subprocess.Popen[bytes]) -> None:
    assert p.stdin is not None
    p.stdin.write(b"\n")
    p.stdin.flush()
    assert p.wait(timeout=30) == 3


def _settled(before: set[str], seconds: float = 10.0) -> set[str]:
    """The semaphores made since `before` that are still there once the tracker had
    `seconds` to unlink them."""
    deadline = time.monotonic() + seconds
    while (left := _semaphores() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm")
def test_a_dead_partys_semaphores_are_unlinked() -> None:
    """A party that died with its pool's semaphores still named: ending its group lets
    the tracker unlink them all. A SIGKILL of the whole group (how parties were ended
    before) kills the tracker too, and they stay until a reboot; the test unlinks
    those itself."""
    before = _semaphores()
    p = _start(_DYING_PARTY)
    made = _semaphores() - before
    assert made, "the forkserver pool made no named semaphores: nothing to test"
    _die(p)
    end_group(p.pid)
    assert _settled(before) == set()

    p = _start(_DYING_PARTY)
    _die(p)
    os.killpg(p.pid, 9)
    leaked = _settled(before, 1.0)
    try:
        assert leaked, "a SIGKILL of the group left nothing behind: the test proves nothing"
    finally:
        for name in leaked:
            (SHM / name).unlink(missing_ok=True)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    p = _start("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "print('READY', flush=True)\n"
               "time.sleep(120)\n")
    t = time.monotonic()
    end_group(p.pid, grace=0.5)
    assert p.wait(timeout=10) == -9
    assert time.monotonic() - t < 10


def test_a_group_already_gone_is_no_error() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    p.wait(timeout=30)
    t = time.monotonic()
    end_group(p.pid)
    assert time.monotonic() - t < 1
