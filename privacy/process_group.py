"""Ending what is left of a party's process group (its own session).

A party computes with a forkserver `ProcessPoolExecutor` (privacy.ec.GroupPool), whose
semaphores are named files in /dev/shm that multiprocessing's resource tracker (a
process of the same group) unlinks once every process holding its pipe is gone. A
SIGKILL of the whole group killed the tracker with the rest, so each party that died
or was stopped left its semaphores behind until the host rebooted (5 a party, 10 a
failed job). The group first gets SIGTERM, which the tracker ignores and the party's
other processes do not: they end, the tracker sees its pipe close, unlinks what they
left and exits. Whatever still runs after `GRACE` seconds is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

__all__ = ["GRACE", "end_group"]

#: Seconds the group has to end after SIGTERM before it is killed.
GRACE = 3.0


def _alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. Zombies do not count: orphans of a
    party are reaped by whatever adopts them (PID 1 of a container may never do it)."""
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: a zombie then counts
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # there, but not ours to signal
            pass
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after the command, which may hold ")"
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def end_group(pgid: int, grace: float = GRACE) -> None:
    """End process group `pgid` (a party started in its own session): SIGTERM, then
    SIGKILL to what is left after `grace` seconds. Blocks until the group is gone or
    killed; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    delay = 0.005
    while _alive(pgid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
