"""Upkeep a command leaves to a child process that outlives it, as git's auto gc does.

A store's upkeep after a write (the metadata compaction of `gfs.meta.compact`) is
work the command's user does not wait for: `hutong` turns deferral on (`allow`) when
it runs as the process's program, and the upkeep queued while the command ran
(`leave`) is run by `finish` at the process's exit, in a forked child that puts its
standard streams on /dev/null (a caller reading the command's output sees the end
of it when the command exits) and starts a session of its own. Each queued item is
prepared in the exiting process (it takes the locks its work needs, so anything
opened after the command returns waits for the work, never races it) and run in the
child. Library callers never allow it: their closes do their upkeep themselves.
The child holds the store's files open until it ends (the automatic compaction
copies files of at most 64 MiB; on the 62,793-file small-file series, 3.5 MB, it took
50-160 ms): a script that unmounts the store's file system right after a
command waits for it with any `hutong` command on the store, or sets
HUTONG_DETACH=0 (`gfs.env.DETACH_ENV`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["Prepare", "Work", "allow", "finish", "leave"]

#: Upkeep to run, made ready by a `Prepare` in the exiting process (None: nothing to do).
Work = Callable[[], None]
Prepare = Callable[[], Work | None]

#: The queued preparations; None while this process does not allow deferral.
_queued: list[Prepare] | None = None


def allow() -> None:
    """Let upkeep be queued for `finish` (the `hutong` program, once, at its start)."""
    global _queued
    if _queued is None:
        _queued = []


def leave(prepare: Prepare) -> bool:
    """Queue `prepare` for `finish`; False (queuing nothing) when this process does not
    allow deferral, and the caller does its upkeep now."""
    if _queued is None:
        return False
    _queued.append(prepare)
    return True


def finish(*, fork: bool) -> None:
    """Prepare the queued upkeep and run it: in one child process that outlives this
    one with `fork` (the caller is about to exit and has no other thread), else here.
    Nothing queued: nothing is done. A fork that fails runs the work here."""
    global _queued
    queued, _queued = _queued or [], None
    work = [w for w in (prepare() for prepare in queued) if w is not None]
    if not work:
        return
    if fork and hasattr(os, "fork"):
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid > 0:
            return
        if pid == 0:
            _run_detached(work)
    for w in work:
        w()


def _run_detached(work: list[Work]) -> None:
    """The child: its own session, standard streams on /dev/null, the work, then exit
    without the interpreter's teardown (the parent's atexit handlers already ran)."""
    code = 0
    try:
        os.setsid()
        os.chdir("/")  # the command's working directory stays free to unmount
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
        for w in work:
            try:
                w()
            except Exception:  # nobody is left to tell: a later close tries again
                code = 1
    except BaseException:
        code = 1
    finally:
        os._exit(code)
